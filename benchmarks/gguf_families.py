"""GGUF export of every family, run by llama.cpp: perplexity next to transformers' on the same tokens.

    python -m benchmarks.gguf_families --threads 1
    python -m benchmarks.gguf_families --families gemma3_text,qwen3_moe --quants f16

For each family a small random model is built as the test suite builds it (``tests/helpers.py``
``make_tiny_model``, with the fixtures' byte-level BPE vocabulary of ``tests/export/gguf_fixtures.py``),
larger than the tests' (hidden 128, head_dim 32, 4 layers) and initialised with a wide spread so that
its predictions are far from uniform: a wrong layout (a norm without its +1, an unpermuted q/k, a
missing soft-cap or sliding window) then moves perplexity by far more than rounding does. Each model
samples its own token windows (longer than the Gemma sliding window of 6), is exported with
:func:`compactlm.export.gguf.export_gguf`, loaded by llama.cpp (llama-cpp-python, built by
``benchmarks/gguf_llamacpp.py``) and scored on those windows; the reference is the HF model in
float32 on the same ids. :data:`VARIANTS` add one model per rope scaling (Llama 3, YaRN, LongRoPE,
Gemma 3's linear global rope) and a hidden-pruned Qwen2 (written as llama.cpp's llama arch). A family
llama.cpp fails to load is recorded with its error. Writes ``benchmarks/results/gguf_families.json``;
a run of some ``--families`` replaces their rows there and keeps the others'.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, ROOT, run_script
from benchmarks.gguf_llamacpp import llama_cpp

F32_CACHE = 0   # GGML_TYPE_F32, for llama.cpp's type_k/type_v

# Larger than the tests' tiny models.
SHAPE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
             moe_intermediate_size=64, shared_expert_intermediate_size=96, max_position_embeddings=512)
# Gemma's query_pre_attn_scalar follows head_dim (llama.cpp scales attention by it); Gemma 3 at the common
# spread predicts its own samples almost surely (perplexity ~1.3), so it gets a narrower one.
FAMILY_SHAPE = {"gemma2": dict(query_pre_attn_scalar=32),
                "gemma3_text": dict(query_pre_attn_scalar=32, initializer_range=0.1),
                "olmoe": dict(num_key_value_heads=4)}     # llama.cpp's olmoe needs as many KV heads as query heads


# Rope scalings, each on one family that llama.cpp encodes it for (window 128 > original context 64, so
# LongRoPE's long factors are the ones both runtimes use: transformers picks by sequence, llama.cpp by n_ctx).
_ORIGINAL = 64
VARIANTS = {
    "llama+llama3_rope": ("llama", dict(rope_parameters={
        "rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": _ORIGINAL})),
    "qwen2+yarn": ("qwen2", dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0,
                                                  "original_max_position_embeddings": _ORIGINAL})),
    "phi3+longrope": ("phi3", dict(original_max_position_embeddings=_ORIGINAL, rope_parameters={
        "rope_type": "longrope", "rope_theta": 1e4, "original_max_position_embeddings": _ORIGINAL,
        "long_factor": [1.0 + i / 4 for i in range(16)], "short_factor": [1.0 + i / 32 for i in range(16)]})),
    "gemma3_text+linear": ("gemma3_text", dict(rope_parameters={
        "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
    # hidden 96 != 4 heads x head_dim 32, as after hidden pruning: llama.cpp's qwen2 sizes q/o as hidden x hidden,
    # so the export writes llama arch, its q/k rows and biases permuted for llama's interleaved rotary pairs
    "qwen2+hidden_pruned": ("qwen2", dict(hidden_size=96)),
}


def tiny_families() -> dict:
    """The test suite's family table and builder (one source of truth for what each tiny family is)."""
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "export")]
    from gguf_fixtures import VOCAB, save_bpe_tokenizer
    from helpers import FAMILIES, make_tiny_model

    return {"families": FAMILIES, "make": make_tiny_model, "vocab": VOCAB, "tokenizer": save_bpe_tokenizer}


def build(tiny: dict, name: str, seed: int, init_std: float):
    """The model of a tests/helpers.py family or of a :data:`VARIANTS` entry, at :data:`SHAPE`."""
    import torch

    family, extra = VARIANTS.get(name, (name, {}))
    shape = {"initializer_range": init_std, **SHAPE, **FAMILY_SHAPE.get(family, {}), **extra}
    return tiny["make"](family, dtype=torch.float32, seed=seed, vocab_size=tiny["vocab"], bos_token_id=1,
                        eos_token_id=2, **shape)


def sampled_windows(model, count: int, length: int, seed: int) -> list[list[int]]:
    """``count`` windows the model itself samples (temperature 1, from BOS): text it predicts, so its perplexity on
    them is its entropy, well below the vocabulary size, and both runtimes score the same ids."""
    import torch

    torch.manual_seed(seed)
    start = torch.full((count, 1), model.config.bos_token_id)
    with torch.no_grad():
        ids = model.generate(start, do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=length - 1,
                             min_new_tokens=length - 1, pad_token_id=0)
    return ids.tolist()


def hf_logits(model, windows) -> list:
    import torch

    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].double().numpy() for ids in windows]


def llamacpp_logits(llm, windows) -> list:
    import numpy as np

    out = []
    for ids in windows:
        llm.reset()
        llm.eval(ids)
        out.append(np.asarray(llm.scores[: len(ids)], dtype=np.float64))
    return out


def perplexity(logits: list, windows) -> float:
    """exp(mean NLL of each next token) over all windows."""
    import numpy as np

    total, count = 0.0, 0
    for scores, ids in zip(logits, windows):
        scores = scores - scores.max(axis=1, keepdims=True)
        logprobs = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
        total -= float(logprobs[np.arange(len(ids) - 1), ids[1:]].sum())
        count += len(ids) - 1
    return math.exp(total / count)


def score_family(module, tiny: dict, family: str, quants: list[str], args, tmp: Path) -> list[dict]:
    """One row per type: llama.cpp's perplexity of the exported file against the HF model's.

    An f32 file is run with an f32 KV cache, so that its row checks the layout alone (llama.cpp's default
    f16 cache adds rounding that a router's near-ties can turn into a different expert); other types run
    as llama.cpp runs them by default.
    """
    from compactlm.export.gguf import export_gguf

    model = build(tiny, family, args.seed, args.init_std)
    windows = sampled_windows(model, args.windows, args.window, args.seed)
    reference = hf_logits(model, windows)
    hf_ppl = perplexity(reference, windows)
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for quant in quants:
        row = {"family": family, "model_type": model.config.model_type, "quant": quant, "params": params,
               "hf_ppl": hf_ppl}
        path = tmp / f"{family}.{quant}.gguf"
        try:
            row["arch"] = export_gguf(model, path, quant=quant, hf_dir=tmp / "bpe", tokenizer_pre="default",
                                      overwrite=True).arch
        except Exception as err:   # noqa: BLE001 - a refused family is a result to record
            rows.append({**row, "error": f"export: {err}"})
            continue
        cache = {"type_k": F32_CACHE, "type_v": F32_CACHE} if quant == "f32" else {}
        try:
            llm = module.Llama(str(path), n_ctx=args.window, n_batch=args.window, logits_all=True, verbose=False,
                               n_threads=args.threads, n_threads_batch=args.threads, **cache)
        except Exception as err:   # noqa: BLE001 - llama.cpp's refusal is what this benchmark looks for
            rows.append({**row, "error": f"llama.cpp load: {err}"})
            continue
        start = time.time()
        logits = llamacpp_logits(llm, windows)
        seconds = time.time() - start
        del llm
        ppl = perplexity(logits, windows)
        rows.append({**row, "llamacpp_ppl": ppl, "rel_diff": ppl / hf_ppl - 1, "kv_cache": "f32" if cache else "f16",
                     "max_logit_diff": max(float(abs(a - b).max()) for a, b in zip(logits, reference)),
                     "seconds": seconds, "file_kb": path.stat().st_size / 1024})
    return rows


def print_table(rows: list[dict], target: float) -> None:
    print(f"\n{'family':<20}{'llama.cpp arch':<16}{'type':<6}{'KV':<5}{'HF ppl':>9}{'llama.cpp ppl':>15}"
          f"{'rel. diff':>12}{'max |dlogit|':>14}  ok")
    for r in rows:
        if "error" in r:
            print(f"{r['family']:<20}{r.get('arch', '-'):<16}{r['quant']:<6}{'':<5}{r['hf_ppl']:>9.3f}  {r['error']}")
            continue
        ok = "yes" if abs(r["rel_diff"]) <= target else "NO"
        print(f"{r['family']:<20}{r['arch']:<16}{r['quant']:<6}{r['kv_cache']:<5}{r['hf_ppl']:>9.3f}"
              f"{r['llamacpp_ppl']:>15.3f}{r['rel_diff']:>+12.4%}{r['max_logit_diff']:>14.2e}  {ok}")


def merged_rows(out: Path, rows: list[dict]) -> list[dict]:
    """The results file's rows with those of the families in ``rows`` replaced (in their place; new families
    last), so that rerunning a few ``--families`` updates the table without dropping the others."""
    old = json.loads(out.read_text())["rows"] if out.is_file() else []
    fresh = {r["family"] for r in rows}
    order = list(dict.fromkeys([r["family"] for r in old] + [r["family"] for r in rows]))
    return [r for family in order for r in (rows if family in fresh else old) if r["family"] == family]


def main(argv: list[str] | None = None) -> int:
    import torch

    from compactlm.hardware import cpu_name
    from compactlm.io import write_json_atomic

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default="", help="comma-separated tests/helpers.py families or VARIANTS (default: all)")
    p.add_argument("--quants", default="f32,f16")
    p.add_argument("--window", type=int, default=128, help="tokens per window (> Gemma's sliding window of 6)")
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--init-std", type=float, default=0.15, help="initializer_range: spreads the predictions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--target", type=float, default=0.01, help="largest relative perplexity difference called ok")
    p.add_argument("--out", default=str(RESULTS / "gguf_families.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    module = llama_cpp()
    tiny = tiny_families()
    families = [f for f in args.families.split(",") if f] or [*tiny["families"], *VARIANTS]
    rows = []
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tiny["tokenizer"](Path(tmp) / "bpe")
        for family in families:
            rows += score_family(module, tiny, family, args.quants.split(","), args, Path(tmp))
    print(f"\nperplexity on {args.windows} x {args.window} tokens each model sampled, random models (initializer_range "
          f"{args.init_std}), {cpu_name()}, {args.threads} thread(s), {time.time() - start:.0f} s")
    print_table(rows, args.target)
    write_json_atomic(args.out, {"rows": merged_rows(Path(args.out), rows) if args.families else rows,
                                 "window": args.window, "windows": args.windows,
                                 "init_std": args.init_std, "seed": args.seed, "shape": SHAPE,
                                 "family_shape": FAMILY_SHAPE, "variants": VARIANTS, "target": args.target, "cpu": cpu_name(),
                                 "threads": args.threads, "llama_cpp_python": module.__version__})
    return 0 if all("error" not in r and abs(r["rel_diff"]) <= args.target for r in rows) else 1


if __name__ == "__main__":
    run_script(main)
