"""The device a plan is for: memory per device, device count, peak FLOP rate, assumed MFU.

Named GPUs take their datasheet values: dense (no sparsity) peak TFLOP/s in bf16 (tensor cores)
and fp32 (no TF32), and memory as sold. ``cpu`` is this machine: its RAM (``MemTotal``), shared
by every process on it, and the GEMM rates measured at the model's own shapes
(:func:`compactlm.hardware.measured_rates`). ``cuda`` is the local GPU: its memory from
``torch.cuda.mem_get_info`` and the table's peak when its name is there.

MFU assumption: 40% on GPUs (well-tuned dense training reaches 35-50%); 50% on the CPU, against
the rate its GEMMs are measured at (docs/performance.md: ``make run`` measures 39-58%).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..config.fields import parse_bytes
from ..errors import CompactLMError, unknown_name
from ..hardware import cpu_name, measured_rates
from .memory import GiB

GB = 1000 ** 3
# name: (memory in bytes, dense peak bf16 TFLOP/s, peak fp32 TFLOP/s)
GPUS = {
    "H100": (80 * GB, 989.0, 67.0),      # H100 SXM
    "H200": (141 * GB, 989.0, 67.0),
    "A100": (80 * GB, 312.0, 19.5),      # A100 SXM 80 GB
    "L40S": (48 * GB, 362.0, 91.6),
}
GPU_MFU = 0.40
CPU_MFU = 0.50


@dataclass(frozen=True)
class DeviceSpec:
    """Devices a plan is for; ``memory`` is bytes usable by one process."""

    name: str
    type: str                      # cpu | cuda
    memory: int
    count: int = 1
    peak_tflops: dict | None = None  # {"bf16": ..., "fp32": ...}
    mfu: float = GPU_MFU

    def describe(self) -> str:
        peak = ", ".join(f"{k} {v:,.1f}" for k, v in (self.peak_tflops or {}).items())
        return (f"{self.count} x {self.name} ({self.memory / GiB:.1f} GiB per {'process' if self.type == 'cpu' else 'device'}"
                f"{f'; peak TFLOP/s {peak}' if peak else ''}; MFU {self.mfu:.0%} assumed)")


def host_memory() -> int:
    """This machine's RAM in bytes (``MemTotal``)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_memory(text: str) -> int:
    """``80GB``, ``80GiB``, ``24G`` (GiB), ``81920MiB`` → bytes; a plain number is GiB."""
    return parse_bytes(text, "device memory", bare_unit="GiB")


def device_spec(device: str = "cpu", count: int = 1, memory: str | int | None = None, mfu: float | None = None,
                model_config=None) -> DeviceSpec:
    """The :class:`DeviceSpec` of ``device`` (cpu, cuda, cuda:N or a GPU name from :data:`GPUS`)."""
    if count < 1:
        raise CompactLMError(f"device count {count}: expected at least 1.")
    if mfu is not None and not 0 < mfu <= 1:
        raise CompactLMError(f"--mfu {mfu}: expected the model-FLOP utilisation as a fraction in (0, 1], e.g. 0.4 "
                             f"for 40% of the peak rate.")
    mem = parse_memory(memory) if isinstance(memory, str) else memory
    name = device.upper()
    if name in GPUS:
        size, bf16, fp32 = GPUS[name]
        return DeviceSpec(name, "cuda", mem or size, count, {"bf16": bf16, "fp32": fp32}, GPU_MFU if mfu is None else mfu)
    if device == "cpu":
        peak = None
        if model_config is not None:
            peak = {k: v / 1e3 for k, v in measured_rates(model_config, "cpu").items()}

        return DeviceSpec(f"cpu ({cpu_name()})", "cpu", (mem or host_memory()) // count, count, peak,
                          CPU_MFU if mfu is None else mfu)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CompactLMError(f"device '{device}': no CUDA GPU here. Name one to plan for (--device "
                                 f"{'|'.join(GPUS)}) with --devices N.")
        gpu = torch.cuda.get_device_name(device)
        total = torch.cuda.mem_get_info(device)[1]
        known = next((GPUS[k] for k in GPUS if k in gpu.upper()), None)
        peak = {"bf16": known[1], "fp32": known[2]} if known else None
        return DeviceSpec(gpu, "cuda", mem or total, count, peak, GPU_MFU if mfu is None else mfu)
    raise unknown_name("device", device, ["cpu", "cuda", *GPUS])
