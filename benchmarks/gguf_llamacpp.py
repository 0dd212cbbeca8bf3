"""GGUF export checked by llama.cpp itself: perplexity and greedy text next to transformers'.

    python -m benchmarks.gguf_llamacpp                                   # the embedded teacher
    python -m benchmarks.gguf_llamacpp --model runs/default/student/distilled --quants f16,q8_0,q4_0

For each type, ``MODEL`` is exported with ``compactlm export`` and the file is scored twice on
the same token windows (tokenised once by the Hugging Face tokenizer, so only the network is
compared): by llama.cpp (through its Python bindings, ``llama-cpp-python``) and by transformers'
GGUF loader; the HF checkpoint itself is the reference. Greedy continuations of fixed prompts
are printed side by side, and llama.cpp's own tokenisation of the text is compared with the
HF tokenizer's. Writes ``benchmarks/results/gguf_llamacpp.json``.

llama.cpp's bindings are built once (`make llamacpp`) from the PyPI source distribution into
``~/.cache/compactlm/llama_cpp_py`` (a portable AVX2 build: a native build segfaulted on an
AMX CPU here), outside the repository and the project's virtual environment; about 6 minutes
on 2 cores. Nothing here is run in CI.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, run_script
from compactlm.deploy.runtimes import build_llama_cpp, import_llama_cpp
from compactlm.errors import CompactLMError

PROMPTS = ["Photosynthesis is the process by which", "The capital of France is", "def fibonacci(n):"]


def llama_cpp():
    """Import ``llama_cpp``, building it into the cache folder the first time (``make llamacpp``)."""
    try:
        return import_llama_cpp()
    except CompactLMError:
        print("building llama-cpp-python into the cache (once; several minutes)...", flush=True)
        build_llama_cpp()
        return import_llama_cpp()


def llamacpp_nll(llm, windows: list[list[int]]) -> tuple[float, int]:
    """Total NLL (nats) and predicted tokens of llama.cpp over ``windows`` (each a list of token ids)."""
    import numpy as np

    total, count = 0.0, 0
    for ids in windows:
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)         # (W, V)
        logits -= logits.max(axis=1, keepdims=True)
        logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        total -= float(logprobs[np.arange(len(ids) - 1), ids[1:]].sum())
        count += len(ids) - 1
    return total, count


def hf_nll(model, windows: list[list[int]]) -> tuple[float, int]:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for ids in windows:
            x = torch.tensor([ids])
            logits = model(x).logits[0, :-1].double()
            total += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
            count += len(ids) - 1
    return total, count


def hf_greedy(model, tokenizer, prompt: str, new_tokens: int) -> str:
    import torch

    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:])


def main(argv: list[str] | None = None) -> int:
    import torch

    from compactlm.cli import main as cli
    from compactlm.data import read_documents
    from compactlm.errors import CompactLMError
    from compactlm.hardware import device_kind
    from compactlm.io import write_json_atomic
    from compactlm.models import load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="HF checkpoint dir, built-in name or .gguf to export")
    p.add_argument("--quants", default="f16,q8_0")
    p.add_argument("--text", default="exllamav2:c4", help="held-out text (compactlm data source)")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", default=str(RESULTS / "gguf_llamacpp.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    module = llama_cpp()

    reference, tokenizer = load_model(args.model)
    text = "\n\n".join(read_documents(args.text))      # the perplexity protocol of compactlm eval
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = [ids[i * args.window:(i + 1) * args.window] for i in range(args.windows)]
    if len(windows[-1]) < args.window:
        raise SystemExit(f"{args.text} has fewer than {args.windows} windows of {args.window} tokens")
    nll, count = hf_nll(reference, windows)
    rows = [{"model": f"HF checkpoint ({args.model})", "runtime": "transformers", "file_mb": None,
             "ppl": math.exp(nll / count)}]
    generations = {"HF checkpoint / transformers": [hf_greedy(reference, tokenizer, q, args.new_tokens)
                                                    for q in PROMPTS]}
    text_sample = text[:4000]
    tokenizer_match = None
    with tempfile.TemporaryDirectory() as tmp:
        for quant in args.quants.split(","):
            path = Path(tmp) / f"model.{quant}.gguf"
            start = time.time()
            if cli(["-q", "export", args.model, "--gguf", str(path), "--quant", quant]) != 0:
                raise SystemExit(f"export to {quant} failed")
            export_s = time.time() - start
            mb = path.stat().st_size / 1e6
            llm = module.Llama(str(path), n_ctx=args.window, n_batch=args.window, logits_all=True, verbose=False,
                               n_threads=args.threads, n_threads_batch=args.threads)   # batch default: every core
            if tokenizer_match is None:
                theirs = llm.tokenize(text_sample.encode(), add_bos=False, special=False)
                ours = tokenizer(text_sample, add_special_tokens=False)["input_ids"]
                tokenizer_match = {"identical": theirs == ours, "llamacpp_tokens": len(theirs), "hf_tokens": len(ours)}
            start = time.time()
            nll, count = llamacpp_nll(llm, windows)
            seconds = time.time() - start
            rows.append({"model": f"GGUF {quant}", "runtime": "llama.cpp", "file_mb": mb, "ppl": math.exp(nll / count),
                         "tokens_per_s": count / seconds, "export_s": export_s})
            generations[f"GGUF {quant} / llama.cpp"] = [
                llm.create_completion(q, max_tokens=args.new_tokens, temperature=0.0)["choices"][0]["text"]
                for q in PROMPTS]
            del llm
            try:
                loaded = load_model(str(path), with_tokenizer=False)
            except CompactLMError as err:   # e.g. a hidden-pruned Qwen2 written as llama with biases
                print(f"transformers' GGUF loader cannot read {quant}: {err}")
                continue
            nll, count = hf_nll(loaded, windows)
            rows.append({"model": f"GGUF {quant}", "runtime": "transformers GGUF loader", "file_mb": mb,
                         "ppl": math.exp(nll / count)})
            del loaded
    base = rows[0]["ppl"]
    print(f"\n{args.model}: perplexity on {args.windows} x {args.window} tokens of {args.text} ({device_kind('cpu')})\n")
    print(f"{'model':<30}{'runtime':<26}{'MB':>8}{'ppl':>10}{'vs HF':>9}")
    for r in rows:
        mb = f"{r['file_mb']:.1f}" if r["file_mb"] else "-"
        print(f"{r['model']:<30}{r['runtime']:<26}{mb:>8}{r['ppl']:>10.3f}{r['ppl'] / base - 1:>+9.2%}")
    print(f"\nllama.cpp tokenisation of the first 4,000 characters equals the HF tokenizer's: {tokenizer_match}")
    for i, prompt in enumerate(PROMPTS):
        print(f"\n{prompt!r}")
        for name, texts in generations.items():
            print(f"  {name:<30} {texts[i]!r}")
    write_json_atomic(args.out, {"model": args.model, "text": args.text, "window": args.window,
                                 "windows": args.windows, "rows": rows, "generations": generations,
                                 "prompts": PROMPTS, "tokenizer_match": tokenizer_match, "machine": device_kind("cpu"),
                                 "llama_cpp_python": module.__version__, "threads": args.threads})
    return 0


if __name__ == "__main__":
    run_script(main)
