"""Time one architecture on a serving runtime: transformers' ``generate`` or llama.cpp (docs/search.md).

Speed does not depend on the values of the weights, so each shape is built with random weights
(seeded) and timed on random prompt tokens: ``prompt`` tokens of prefill, then ``new_tokens``
decoding steps, ``repeats`` times after one warm-up run. Each run gives two durations:
the prefill (prompt in, first token out) and the decoding steps after it.

* ``hf``: ``model.generate`` (greedy, the family's cache) in the budget's dtype on its device,
  timed by a streamer that stamps every token as ``generate`` emits it.
* ``llamacpp``: the shape exported by :func:`compactlm.export.export_gguf` to the budget's GGUF
  type (with the teacher's tokenizer) and run by llama.cpp through ``llama-cpp-python``:
  ``Llama.eval`` of the prompt, then one ``eval`` per decoded token. One sequence.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.generation.streamers import BaseStreamer
from transformers.initialization import no_init_weights

from ..config.options import LatencyBudget
from ..errors import CompactLMError
from ..export.gguf import check_quant, export_gguf
from ..export.gguf_vocab import find_gguf_source
from ..io import cache_dir
from ..models import parse_dtype, resolve_model

logger = logging.getLogger(__name__)

LLAMA_CPP_VERSION = "0.3.36"
# Where `make llamacpp` builds the bindings (outside the virtual environment): a portable AVX2 build, since a
# native one segfaulted on an AMX CPU.
LLAMA_CPP_DIR = cache_dir() / "llama_cpp_py"
LLAMA_CPP_CMAKE = ("-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF "
                   "-DGGML_OPENMP=OFF")
LLAMA_CPP_BUILD = (f"CMAKE_ARGS='{LLAMA_CPP_CMAKE}' pip install --no-deps --target {LLAMA_CPP_DIR} "
                   f"llama-cpp-python=={LLAMA_CPP_VERSION} diskcache")


@dataclass(frozen=True)
class Run:
    """One timed run: seconds of the prefill and of the decoding steps after it."""

    prefill_s: float
    decode_s: float


def import_llama_cpp():
    """The ``llama_cpp`` module: installed in this environment, or built by ``make llamacpp`` into the cache folder."""
    with contextlib.suppress(ImportError):
        return importlib.import_module("llama_cpp")
    if LLAMA_CPP_DIR.is_dir() and str(LLAMA_CPP_DIR) not in sys.path:
        sys.path.append(str(LLAMA_CPP_DIR))   # appended: the environment's own numpy and jinja2 stay first
        importlib.invalidate_caches()
        with contextlib.suppress(ImportError):
            return importlib.import_module("llama_cpp")
    raise CompactLMError(f"The llamacpp latency runtime needs llama-cpp-python, which is not installed. Build it with "
                         f"`make llamacpp` (about 6 minutes on 2 cores), i.e. {LLAMA_CPP_BUILD}; or use "
                         f"latency.runtime: hf.")


def build_llama_cpp() -> None:
    """Build llama-cpp-python into :data:`LLAMA_CPP_DIR` (``make llamacpp``; several minutes)."""
    env = {**os.environ, "CMAKE_ARGS": LLAMA_CPP_CMAKE}
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(LLAMA_CPP_DIR),
                    f"llama-cpp-python=={LLAMA_CPP_VERSION}", "diskcache"], check=True, env=env)
    importlib.invalidate_caches()


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def random_model(config, dtype: str = "float32", seed: int = 0):
    """A model of ``config``'s shape with seeded random weights: matrices uniform in ±0.05, vectors (norms, biases) 1.

    Speed does not depend on the values (as long as none is denormal or NaN, which slow some CPU
    paths: hence the norms at 1, which keep activations at their usual scale); a fill is about
    twice as fast as transformers' own initialisation.
    """
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=parse_dtype(dtype))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim > 1:
                param.uniform_(-0.05, 0.05, generator=generator)
            else:
                param.fill_(1.0)
    return model.eval()


class _Clock(BaseStreamer):
    """Stamps each ``put`` of ``generate``: the prompt, then every decoded token."""

    def __init__(self):
        self.stamps: list[float] = []

    def put(self, value) -> None:
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


def _hf_runs(config, budget: LatencyBudget, runs: int) -> list[Run]:
    device = torch.device(budget.device)
    model = random_model(config, budget.measured_type).to(device)
    prompt = torch.randint(0, config.vocab_size, (budget.batch, budget.prompt),
                           generator=torch.Generator().manual_seed(0)).to(device)
    out = []
    with torch.inference_mode():
        for _ in range(runs):
            clock = _Clock()
            model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=budget.new_tokens + 1,
                           min_new_tokens=budget.new_tokens + 1, do_sample=False, streamer=clock, pad_token_id=0,
                           eos_token_id=None)
            first, *_, last = clock.stamps[1:]   # [0] is the prompt; [1] the first token, after the prefill
            out.append(Run(prefill_s=first - clock.stamps[0], decode_s=last - first))
    return out


def _llamacpp_runs(config, budget: LatencyBudget, runs: int, tokenizer_source: Path | None) -> list[Run]:
    llama_cpp = import_llama_cpp()
    quant = check_quant(budget.measured_type)
    if tokenizer_source is None:
        raise CompactLMError("The llamacpp latency runtime writes a GGUF file of each candidate, which needs the "
                             "teacher's tokenizer: give the teacher as a built-in, a .gguf file or a checkpoint folder.")
    gguf_source = tokenizer_source if tokenizer_source.suffix == ".gguf" else None
    model = random_model(config)
    with tempfile.TemporaryDirectory(prefix="compactlm-latency-") as tmp:
        path = Path(tmp) / f"shape.{quant}.gguf"
        export_gguf(model, path, quant=quant, gguf_source=gguf_source, hf_dir=None if gguf_source else tokenizer_source,
                    tokenizer_pre=None if gguf_source else "default",   # how text splits does not change the speed
                    name="latency probe")
        del model
        llm = llama_cpp.Llama(str(path), n_ctx=budget.prompt + budget.new_tokens + 8, n_batch=max(budget.prompt, 32),
                              n_ubatch=max(budget.prompt, 32), n_threads=budget.threads or torch.get_num_threads(),
                              n_threads_batch=budget.threads or torch.get_num_threads(),
                              swa_full=False,   # llama-cli's and llama-server's default: a window-sized SWA cache
                              verbose=False)
        generator = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, config.vocab_size, (budget.prompt,), generator=generator).tolist()
        following = torch.randint(0, config.vocab_size, (budget.new_tokens,), generator=generator).tolist()
        out = []
        try:
            for _ in range(runs):
                llm.reset()
                start = time.perf_counter()
                llm.eval(prompt)
                prefilled = time.perf_counter()
                for token in following:   # the tokens fed back do not change the cost of a step
                    llm.eval([token])
                out.append(Run(prefill_s=prefilled - start, decode_s=time.perf_counter() - prefilled))
        finally:
            llm.close()
    return out


def tokenizer_source(model: str) -> Path | None:
    """Where a GGUF file of ``model``'s shape takes its tokenizer: the GGUF file it descends from, else its folder."""
    found = find_gguf_source(model)
    if found is None:
        path = Path(resolve_model(model).path)
        found = path if path.is_dir() else None
    return found


def budget_problems(args) -> list[str]:
    """What is wrong with the memory and latency budgets of :class:`~compactlm.config.SearchArgs` ``args`` before any
    work starts: GGUF types this ``gguf`` package cannot write, a llama.cpp runtime that is not installed, a GPU that
    is not there."""
    problems = []
    for where, kind, gguf in (("memory.weights", args.memory and args.memory.weights, args.memory and args.memory.gguf),
                              ("latency.weights", args.latency and args.latency.measured_type,
                               args.latency and args.latency.runtime == "llamacpp")):
        if gguf:
            try:
                check_quant(kind)
            except CompactLMError as err:
                problems.append(f"{where}: {err}".rstrip("."))
    if args.latency is not None and args.latency.runtime == "llamacpp":
        try:
            import_llama_cpp()
        except CompactLMError as err:
            problems.append(f"latency.runtime: {err}".rstrip("."))
    if args.latency is not None and args.latency.runtime == "hf":
        device = args.latency.device
        if not (device == "cpu" or (device.startswith("cuda") and torch.cuda.is_available())):
            problems.append(f"latency.device={device!r}: expected cpu, or cuda/cuda:N on a machine with a GPU "
                            f"(CUDA available: {torch.cuda.is_available()})")
    return problems


def check_budgets(args) -> None:
    """Raise once with every :func:`budget_problems` of ``args``."""
    problems = budget_problems(args)
    if problems:
        raise CompactLMError("Search budget: " + "; ".join(problems) + ".")


def time_runs(config, budget: LatencyBudget, *, tokenizer_source: Path | None = None) -> list[Run]:
    """``budget.repeats`` timed runs of ``config``'s shape on ``budget.runtime``, after one warm-up (dropped)."""
    with _threads(budget.threads):
        if budget.runtime == "hf":
            runs = _hf_runs(config, budget, budget.repeats + 1)
        else:
            runs = _llamacpp_runs(config, budget, budget.repeats + 1, tokenizer_source)
    return runs[1:]


def runtime_version(budget: LatencyBudget) -> str:
    """What ran the timings, for the cache key: a new torch or llama.cpp build times differently."""
    if budget.runtime == "hf":
        device = torch.device(budget.device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        return f"torch {torch.__version__} on {name}"
    return f"llama-cpp-python {import_llama_cpp().__version__}"


__all__ = ["LLAMA_CPP_BUILD", "LLAMA_CPP_DIR", "Run", "budget_problems", "build_llama_cpp", "check_budgets",
           "import_llama_cpp",
           "random_model", "runtime_version", "time_runs", "tokenizer_source"]
