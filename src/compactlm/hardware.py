"""What this device runs fast: native bf16, measured GEMM rates at a model's own shapes, the precision choice.

bf16 is not a free speed-up. CUDA GPUs with bf16 tensor cores and CPUs with AMX or AVX512-BF16
run a bf16 GEMM about twice as fast as fp32; a CPU with AVX-512 but neither runs it 5-8x
*slower* (oneDNN emulates it). So ``precision: auto`` (the default of every stage) chooses bf16
only where the device has it natively **and** a sub-second micro-benchmark of the model's own
linear-layer shapes confirms it is faster; otherwise fp32. The measured rates are cached per
device, torch version, thread count and shapes in ``~/.cache/compactlm/gemm_rates.json``
(``$COMPACTLM_CACHE`` moves it), and they are the machine's peak that model-FLOP utilisation
(MFU) is reported against.

Model FLOPs per token (the usual 2N/6N rule, Kaplan et al. 2020; attention's score and
value products, 4 * layers * T * (heads * head_dim) per forward token, are left out: for
SmolLM2-135M at T = 512 that is 13% of 2N, half of it with causal masking, so MFU is
understated by about that much): a forward pass costs
``2 * N`` where N counts the weights of every matmul (all linear layers and the LM head, not the
embedding lookup); a training step ``6 * N`` (forward + backward); a distillation step
``2 * N_teacher + 6 * N_student``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch

from .errors import CompactLMError
from .io import cache_dir, write_json_atomic

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")
NATIVE_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
SLOWER_WARNING = 1.5     # warn when an explicit precision is measured this much slower than the other
BENCH_TOKENS = 1024      # rows of each micro-benchmark GEMM: a training micro-batch of 2 x 512 (smaller M runs slower)


@cache
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return frozenset(line.split(":", 1)[-1].split())


@cache
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_kind(device: str | torch.device = "cpu") -> str:
    """A human-readable description: ``cpu: Intel Xeon ..., 2 threads, native bf16: amx_bf16/avx512_bf16``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}, bf16: {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
    native = [f for f in NATIVE_CPU_FLAGS if f in cpu_flags()]
    return f"cpu: {cpu_name()}, {torch.get_num_threads()} threads, native bf16: {'/'.join(native) or 'no'}"


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether the hardware has bf16 arithmetic (not emulation): bf16 tensor cores, AMX or AVX512-BF16.

    ``COMPACTLM_NATIVE_BF16=0`` (or ``1``) overrides the detection: to reproduce on a bf16 machine what
    a CPU without it chooses (the fp32 timings in docs/performance.md were taken this way).
    """
    override = os.environ.get("COMPACTLM_NATIVE_BF16")
    if override in ("0", "1"):
        return override == "1"
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return any(f in cpu_flags() for f in NATIVE_CPU_FLAGS)


def gemm_shapes(config) -> list[tuple[int, int]]:
    """(in, out) of every distinct linear layer of a decoder config: q, k/v, o, gate/up, down, LM head."""
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    return [(hidden, heads * head_dim), (hidden, kv * head_dim), (heads * head_dim, hidden),
            (hidden, config.intermediate_size), (config.intermediate_size, hidden), (hidden, config.vocab_size)]


def _time_gemms(shapes: list[tuple[int, int]], dtype: torch.dtype, device: torch.device, seconds: float,
                rows: int = BENCH_TOKENS) -> float:
    """GFLOP/s of ``F.linear`` over ``shapes`` with ``rows`` rows, in ``dtype``, for about ``seconds``."""
    gen = torch.Generator().manual_seed(0)
    ops = [(torch.randn(rows, k, generator=gen).to(device, dtype), torch.randn(n, k, generator=gen).to(device, dtype))
           for k, n in shapes]
    flops = sum(2 * rows * k * n for k, n in shapes)

    def one_pass() -> None:
        for x, w in ops:
            torch.nn.functional.linear(x, w)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    one_pass()                                   # warm-up: oneDNN/cuBLAS pick their kernels
    passes, start = 0, time.perf_counter()
    while passes < 1 or time.perf_counter() - start < seconds:
        one_pass()
        passes += 1
    return flops * passes / (time.perf_counter() - start) / 1e9


def measured_rates(config, device: str | torch.device = "cpu", *, seconds: float = 0.1, rows: int = BENCH_TOKENS,
                   use_cache: bool = True) -> dict[str, float]:
    """``{"fp32": GFLOP/s, "bf16": GFLOP/s}`` at ``config``'s shapes with ``rows`` token rows on ``device``.

    Cached per machine. The rate depends strongly on ``rows`` (AMX bf16 on 2 cores here: 241
    GFLOP/s at 256 rows, 545 at 1024, 1,098 at 2048; fp32 97 / 146 / 155), so MFU is reported
    against the rate at the rows a stage really multiplies (:func:`peak_gflops`).
    """
    device = torch.device(device)
    shapes = gemm_shapes(config)
    rows = max(16, min(int(rows), 4096))
    # the allocator is part of the machine: glibc page-faults every large GEMM output back in, tcmalloc does not
    malloc = Path(os.environ.get("LD_PRELOAD", "").split(":")[0]).name or "system malloc"
    key = (f"{device_kind(device)} | {malloc} | torch {torch.__version__} | {shapes}"
           + (f" | rows {rows}" if rows != BENCH_TOKENS else ""))
    path = cache_dir() / "gemm_rates.json"
    saved: dict = {}
    if use_cache:
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = {}
        if isinstance(saved, dict) and isinstance(saved.get(key), dict):
            return saved[key]
    rates = {"fp32": round(_time_gemms(shapes, torch.float32, device, seconds, rows), 1),
             "bf16": round(_time_gemms(shapes, torch.bfloat16, device, seconds, rows), 1)}
    if use_cache:
        try:
            write_json_atomic(path, {**(saved if isinstance(saved, dict) else {}), key: rates})
        except OSError as err:                   # a read-only home is not a reason to fail a run
            logger.debug("could not cache GEMM rates in %s: %s", path, err)
    return rates


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a stage runs in, and why."""

    precision: str               # "bf16" or "fp32": what runs
    requested: str               # "auto", "bf16" or "fp32": what was asked
    native_bf16: bool
    gflops: dict                 # measured {"fp32": ..., "bf16": ...} at the model's shapes
    device: str                  # device_kind()

    @property
    def bf16(self) -> bool:
        """Whether to run under bf16 autocast (a model held in bf16 needs none)."""
        return self.precision == "bf16" and bool(self.gflops)

    @property
    def peak_gflops(self) -> float | None:
        """The measured GEMM rate of the precision that runs: the yardstick of MFU."""
        return self.gflops.get(self.precision)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        rates = ", ".join(f"{k} {v:,.0f}" for k, v in self.gflops.items())
        return (f"precision {self.precision} (asked: {self.requested}; native bf16: "
                f"{'yes' if self.native_bf16 else 'no'}; GEMM GFLOP/s at this model's shapes: {rates}; {self.device})")


def peak_gflops(choice: "PrecisionChoice", config, device: str | torch.device, rows: int) -> float | None:
    """The yardstick of MFU: the measured GEMM rate of ``choice``'s precision at ``rows`` token rows."""
    if not choice.gflops:
        return None
    if rows == BENCH_TOKENS:
        return choice.gflops[choice.precision]
    return measured_rates(config, device, rows=rows)[choice.precision]


def check_precision(value: str, what: str = "precision") -> str:
    if value not in PRECISIONS:
        raise CompactLMError(f"{what} '{value}': expected one of {', '.join(PRECISIONS)} (auto: bf16 where the device "
                             f"runs it natively and measured faster, else fp32).")
    return value


def choose_precision(requested: str, config, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> PrecisionChoice:
    """Resolve ``auto`` (see the module docstring); honour an explicit choice, warning when it is much slower.

    ``dtype`` is the model's parameter dtype: autocast only changes fp32 weights, so a model held
    in another dtype runs in that dtype and nothing is measured (float64 test models stay exact).
    """
    check_precision(requested)
    device = torch.device(device)
    if dtype != torch.float32:
        name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype).removeprefix("torch."))
        return PrecisionChoice(name, requested, native_bf16(device), {}, device_kind(device))
    rates = measured_rates(config, device)
    native = native_bf16(device)
    if requested == "auto":
        precision = "bf16" if native and rates["bf16"] > rates["fp32"] else "fp32"
    else:
        precision = requested
        other = "fp32" if precision == "bf16" else "bf16"
        if rates[other] > SLOWER_WARNING * rates[precision]:
            logger.warning("precision %s is measured %.1fx slower than %s on this device (%s); "
                           "precision auto would choose %s", precision, rates[other] / rates[precision], other,
                           device_kind(device), other)
    choice = PrecisionChoice(precision, requested, native, rates, device_kind(device))
    logger.info("%s", choice.describe())
    return choice


def precision_for(requested: str, model) -> PrecisionChoice:
    """:func:`choose_precision` for ``model`` as it is held (its config, device and parameter dtype)."""
    param = next(model.parameters())
    return choose_precision(requested, model.config, param.device, param.dtype)


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on ``device`` when asked, else a no-op context (reusable: enter it any number of times)."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# ---- model FLOPs -----------------------------------------------------------------------------

def matmul_params(model) -> int:
    """Weights that take part in a matmul per token: every parameter except embedding lookups and 1-D tensors.

    A tied LM head shares the embedding matrix but is a matmul, so it counts once.
    """
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    total = sum(p.numel() for p in model.parameters() if p.dim() >= 2 and p is not embedding)
    if head is not None and head.weight is embedding:
        total += embedding.numel()
    return total


def forward_flops_per_token(model, lm_head: bool = True) -> int:
    """2N; without the LM head for passes that need no logits (importance)."""
    head = model.get_output_embeddings()
    return 2 * (matmul_params(model) - (0 if lm_head or head is None else head.weight.numel()))


def train_flops_per_token(model) -> int:
    return 6 * matmul_params(model)


def mfu(flops_per_token: float, tokens_per_second: float, peak_gflops: float) -> float:
    """Model-FLOP utilisation: achieved model FLOP/s over the measured GEMM peak."""
    return flops_per_token * tokens_per_second / (peak_gflops * 1e9)
