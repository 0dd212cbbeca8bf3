"""Memory and latency budgets of the search: the filter, the table, ties within the noise, the frontier, the cache."""

from __future__ import annotations

import dataclasses
import json

import pytest

from compactlm.cli import main
from compactlm.config import SearchArgs, validate
from compactlm.config.options import LatencyBudget
from compactlm.deploy import Latency, measure, meets, pareto, shortfall, tied_ranks
from compactlm.deploy import latency as latency_module
from compactlm.deploy.runtimes import Run
from compactlm.errors import CompactLMError
from compactlm.search.search_dir import SearchLayout


def _importance(tmp_path, model, text):
    scores = tmp_path / "scores"
    assert main(["-q", "importance", "--model", str(model), "--data", str(text), "--samples", "8", "--seq-len", "32",
                 "--out", str(scores)]) == 0
    return scores


def _latency(*decode_s: float) -> Latency:
    """A measurement of 8 decoded tokens per run with the given decode durations (prefill 0.1 s)."""
    return Latency(tuple(Run(0.1, d) for d in decode_s), batch=1, prompt=16, new_tokens=8)


def test_metrics_medians_and_ranges():
    lat = _latency(0.08, 0.16, 0.096)
    assert lat.values("decode_ms") == pytest.approx([10, 20, 12])
    assert lat.median("decode_ms") == pytest.approx(12)
    assert lat.range("decode_ms") == pytest.approx((11, 16))          # quartiles: one outlier cannot stretch them
    assert lat.range("decode_tokens_per_s") == pytest.approx((200 / 3, 275 / 3))
    assert lat.median("prefill_tokens_per_s") == pytest.approx(160)
    assert lat.spread("decode_ms") == pytest.approx(5 / 24)
    assert Latency.from_dict(lat.to_dict(), LatencyBudget(decode_ms=1, prompt=16, new_tokens=8)) == lat


def test_budget_bounds_and_shortfall():
    lat = _latency(0.08, 0.08, 0.08)            # 10 ms per step, 100 tok/s
    assert meets(lat, LatencyBudget(decode_ms=10))
    assert not meets(lat, LatencyBudget(decode_ms=9.9))
    assert meets(lat, LatencyBudget(decode_tokens_per_s=100))
    assert not meets(lat, LatencyBudget(decode_ms=20, decode_tokens_per_s=120))   # every bound must hold
    assert shortfall(lat, LatencyBudget(decode_ms=8)) == pytest.approx(0.25)
    assert shortfall(lat, LatencyBudget(decode_tokens_per_s=200)) == pytest.approx(1.0)
    assert shortfall(lat, LatencyBudget(decode_ms=10)) == 0


def test_overlapping_runs_tie_and_the_frontier_respects_ties():
    fast, noisy = _latency(0.08, 0.085), _latency(0.08, 0.12, 0.084)   # quartiles 10.2-10.5 and 10.3-12.8 ms
    slow, slower = _latency(0.2, 0.21), _latency(0.3, 0.31)
    ranks = tied_ranks([fast, noisy, slow, None, slower], "decode_ms")
    assert ranks == [1, 1, 2, None, 3]          # fast and noisy overlap: a tie, not a ranking
    assert tied_ranks([fast, slow], "decode_tokens_per_s") == [1, 2]   # higher is better: the same order
    # losses: the tied pair's better loss dominates the other; slower is worse at a worse rank
    assert pareto([3.0, 2.0, 1.5, 9.0, 1.6], ranks) == [False, True, True, False, False]


def test_budget_options_are_validated():
    with pytest.raises(CompactLMError, match="give at least one bound"):
        validate(SearchArgs, {"latency": {"runtime": "hf"}})
    with pytest.raises(CompactLMError, match="llamacpp runtime decodes one sequence"):
        validate(SearchArgs, {"latency": {"decode_ms": 5, "batch": 4}})
    with pytest.raises(CompactLMError, match="'memory.limit'"):
        validate(SearchArgs, {"memory": "lots"})
    args = validate(SearchArgs, {"memory": "300MB", "latency": {"runtime": "hf", "prefill_tokens_per_s": 100}})
    assert args.memory.limit == 300_000_000 and args.memory.kv_dtype == "bfloat16"
    assert args.latency.metric == "prefill_tokens_per_s" and args.latency.measured_type == "float32"


def test_measurement_is_cached_per_shape(tiny_checkpoint, monkeypatch, tmp_path):
    from transformers import AutoConfig

    monkeypatch.setattr(latency_module, "cache_dir", lambda: tmp_path / "cache")
    config = AutoConfig.from_pretrained(tiny_checkpoint("llama"))
    budget = LatencyBudget(runtime="hf", decode_ms=1000, prompt=8, new_tokens=4, repeats=3)
    first = measure(config, budget)
    assert len(first.runs) == 3 and all(r.prefill_s > 0 and r.decode_s > 0 for r in first.runs)
    calls = []
    monkeypatch.setattr(latency_module, "time_runs", lambda *a, **k: calls.append(a) or [])
    assert measure(config, budget) == first and not calls            # same shape and settings: from the cache
    assert measure(config, LatencyBudget(runtime="hf", decode_ms=1000, prompt=8, new_tokens=4, repeats=2)).runs \
        == first.runs[:2]                                            # fewer repeats: the first of the cached ones
    other = config.__class__(**{**config.to_dict(), "num_hidden_layers": 1})
    with pytest.raises(ValueError):   # another shape is measured again (here: the stub returns no runs)
        measure(other, budget)
    assert len(calls) == 1


def _search_args(model, scores, text_file, out, *extra):
    return ["-q", "search", "--model", str(model), "--scores", str(scores), "--target-params", "0.7",
            "--tolerance", "0.15", "--data", str(text_file), "--seq-len", "32", "--heldout-samples", "4",
            "--top-k", "0", "--precision", "fp32", "--num-hidden-layers", "4,3,2",
            "--intermediate-size", "96,80,64,48,32", "--out", str(out), *extra]


def test_search_under_memory_and_latency_budgets(tmp_path, tiny_checkpoint, text_file, capsys, monkeypatch):
    monkeypatch.setattr(latency_module, "cache_dir", lambda: tmp_path / "cache")
    model = tiny_checkpoint("llama")
    scores = _importance(tmp_path, model, text_file)
    out = tmp_path / "search"
    args = _search_args(model, scores, text_file, out, "--memory", "limit=10MB,weights=float32,seq_len=64,batch=2",
                        "--latency", "runtime=hf,decode_ms=10000,prompt=8,new_tokens=4,repeats=2")
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "decode_ms (q1-q3)" in printed and "share a rank" in printed
    table = json.loads(SearchLayout(out).candidates_json.read_text())
    assert table["latency"]["metric"] == "decode_ms" and table["memory"]["seq_len"] == 64
    rows = table["candidates"]
    assert all(r["memory_bytes"] <= 10_000_000 and r["latency_q1"] <= r["latency_median"] <= r["latency_q3"]
               for r in rows)
    assert any(r["pareto"] for r in rows) and min(r["latency_rank"] for r in rows) == 1
    state = json.loads(SearchLayout(out).state.read_text())
    assert set(state["latency"]) >= {r["name"] for r in rows}
    # resume: nothing is measured again (the state holds every timing)
    monkeypatch.setattr(latency_module, "time_runs", lambda *a, **k: pytest.fail("measured again on resume"))
    assert main(args + ["--resume"]) == 0
    assert json.loads(SearchLayout(out).candidates_json.read_text())["candidates"] == rows


def test_budgets_no_candidate_meets_name_the_closest(tmp_path, tiny_checkpoint, text_file, capsys, monkeypatch):
    monkeypatch.setattr(latency_module, "cache_dir", lambda: tmp_path / "cache")
    model = tiny_checkpoint("llama")
    scores = _importance(tmp_path, model, text_file)
    code = main(_search_args(model, scores, text_file, tmp_path / "a", "--memory", "1KB"))
    assert code == 2
    assert "fits the memory budget" in capsys.readouterr().err
    code = main(_search_args(model, scores, text_file, tmp_path / "b",
                             "--latency", "runtime=hf,decode_tokens_per_s=1e12,prompt=8,new_tokens=4,repeats=2"))
    assert code == 2
    err = capsys.readouterr().err
    assert "No candidate meets the latency budget" in err and "the closest is" in err
    assert not SearchLayout(tmp_path / "b").candidates_csv.exists()


def test_memory_budget_without_a_parameter_target_takes_the_largest_that_fits(tmp_path, tiny_checkpoint, text_file,
                                                                               capsys):
    from transformers import AutoConfig

    from compactlm.arch import adapter_for
    from compactlm.arch.params import parameter_layout
    from compactlm.search import SearchSpace, candidates_of

    config = AutoConfig.from_pretrained(tiny_checkpoint("llama"))
    source = adapter_for(config).architecture(config)
    space = {"num_hidden_layers": [4, 3, 2], "intermediate_size": [96, 80, 64, 48, 32]}
    free = validate(SearchArgs, {"target_params": None, "memory": {"limit": 1, "weights": "float32"}, "space": space})
    with pytest.raises(CompactLMError, match="No architecture in the search space fits the memory budget"):
        candidates_of(free, source, parameter_layout(config), "llama", config=config)
    everything = SearchSpace.from_dict(space, source)
    from compactlm.deploy import deployed_memory

    sizes = sorted(deployed_memory(source.replace(num_hidden_layers=n, intermediate_size=f), config,
                                   free.memory).total for n in everything.num_hidden_layers
                   for f in everything.intermediate_size)
    limit = sizes[len(sizes) // 2]
    args = validate(SearchArgs, {"target_params": None, "memory": {"limit": limit, "weights": "float32"},
                                 "space": space, "tolerance": 0.05})
    _, candidates, target, _ = candidates_of(args, source, parameter_layout(config), "llama", config=config)
    assert candidates and all(deployed_memory(c.arch, config, args.memory).total <= limit for c in candidates)
    assert max(c.params for c in candidates) == target
    assert all(c.params >= target * 0.9 for c in candidates)


def test_llamacpp_runtime_times_a_gguf_file_of_the_shape(tmp_path, monkeypatch):
    """Skipped where llama-cpp-python is not built (`make llamacpp`); CI does not build it (6 minutes)."""
    from export.gguf_fixtures import VOCAB, save_bpe_tokenizer
    from transformers import LlamaConfig

    from compactlm.deploy import import_llama_cpp

    try:
        import_llama_cpp()
    except CompactLMError as err:
        pytest.skip(str(err))
    monkeypatch.setattr(latency_module, "cache_dir", lambda: tmp_path / "cache")
    tokenizer = save_bpe_tokenizer(tmp_path / "bpe")
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                         num_key_value_heads=2, num_hidden_layers=2, max_position_embeddings=128)
    budget = validate(SearchArgs, {"latency": {"weights": "q8_0", "decode_ms": 1000, "prompt": 16, "new_tokens": 4,
                                               "repeats": 2}}).latency
    lat = measure(config, budget, tokenizer_source=tokenizer)
    assert len(lat.runs) == 2 and lat.median("prefill_tokens_per_s") > 0 and meets(lat, budget)
    deeper = LlamaConfig(**{**config.to_dict(), "num_hidden_layers": 8, "intermediate_size": 1024})
    assert measure(deeper, budget, tokenizer_source=tokenizer).median("decode_ms") > lat.median("decode_ms")
    with pytest.raises(CompactLMError, match="tokenizer"):
        measure(config, dataclasses.replace(budget, repeats=3), tokenizer_source=None)


def test_run_recipe_with_budgets_records_them(tmp_path, tiny_checkpoint, text_file, capsys, monkeypatch):
    from recipes.run_fixtures import write_tiny_recipe

    from compactlm.recipes.run_dir import RunLayout

    monkeypatch.setattr(latency_module, "cache_dir", lambda: tmp_path / "cache")
    recipe = write_tiny_recipe(tmp_path, tiny_checkpoint("llama"), text_file)
    out = tmp_path / "run"
    assert main(["-q", "run", str(recipe), "--out", str(out), "--set",
                 "steps.0.search.latency={runtime: hf, decode_tokens_per_s: 1, prompt: 8, new_tokens: 4, repeats: 2}",
                 "--set", "steps.0.search.memory={limit: 20MB, weights: float32, seq_len: 64}"]) == 0
    step = RunLayout(out).step("student")
    table = json.loads(step.search.candidates_json.read_text())
    assert table["latency"]["metric"] == "decode_tokens_per_s" and table["memory"]["limit"] == 20_000_000
    assert all("latency_rank" in r and r["memory_bytes"] <= 20_000_000 for r in table["candidates"])
    report = RunLayout(out).report.read_text()
    assert "quality/speed frontier" in report
