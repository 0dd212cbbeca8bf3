"""Subprocess of ``test_stream_memory_is_bounded_by_a_shard``: the peak RSS of streamed and in-memory pruning.

Usage: python rss_probe.py SRC PLAN OUT_DIR SHARD_SIZE WARM_SRC WARM_PLAN

Each way is first run on the tiny checkpoint WARM_SRC, so that lazy imports (the modelling module,
safetensors' writer) and the allocator are warm. Then, for each way in turn, the high-water mark is
reset (``/proc/self/clear_refs`` = 5), the baseline RSS read, the checkpoint SRC pruned, and
VmHWM read. Prints ``{"stream": extra_kb, "memory": extra_kb}``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def main() -> None:
    src, plan_path, out, shard, warm_src, warm_plan = sys.argv[1:7]
    import gc

    from compactlm.export import save_student
    from compactlm.models import load_model
    from compactlm.prune import PrunePlan, apply_plan, prune_checkpoint

    def prune(mode: str, source: str, plan: PrunePlan, dest: Path) -> None:
        if mode == "stream":
            prune_checkpoint(source, plan, dest, max_shard_size=shard)
        else:
            save_student(apply_plan(load_model(source, with_tokenizer=False), plan), None, dest, plan=plan)

    scratch = Path(tempfile.mkdtemp())
    for mode in ("stream", "memory"):
        prune(mode, warm_src, PrunePlan.load(warm_plan), scratch / mode)
    plan, extra = PrunePlan.load(plan_path), {}
    for mode in ("stream", "memory"):
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")   # VmHWM := VmRSS
        baseline = status_kb("VmRSS")
        prune(mode, src, plan, Path(out) / mode)
        extra[mode] = status_kb("VmHWM") - baseline
    print(json.dumps(extra))


if __name__ == "__main__":
    main()
