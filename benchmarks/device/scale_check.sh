#!/usr/bin/env bash
# Scale check (issue 14): on the lent GPU machine, importance -> search -> prune -> distillation with
# --strategy fsdp under torchrun -> eval, on the embedded teacher (or a random model of its config) and a
# random ~1B Llama built on the device; per stage tokens/s, MFU and peak GPU memory, and next to the peak
# the memory `compactlm plan` predicts for that stage (python -m benchmarks.device.gpu_check --strategy fsdp).
#
#   bash benchmarks/device/scale_check.sh              # NPROC GPUs (default: all visible); JSON to $OUT/scale_check.json
#   NPROC=1 SCALE_CHECK_TIMEOUT=280 bash benchmarks/device/scale_check.sh --steps 10
#
# With one GPU the trainer has nothing to shard and trains the plain model (distill/sharding.py
# resolve_strategy); with two or more the FSDP2 path (sharded student and teacher, DCP checkpoints,
# gathered export) runs on NCCL. Sized to stay under 5 minutes on one H100/H200-class GPU.
source "$(dirname "$0")/env.sh"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
NPROC=${NPROC:-$GPUS}
if [[ "$NPROC" -lt 1 ]]; then echo "scale_check: no CUDA GPU visible" >&2; exit 2; fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
args=(--device cuda --strategy fsdp)
if [[ -n "${OUT:-}" ]]; then args+=(--json "$OUT/scale_check.json"); fi
# the memory plan of the two paper-scale recipes on 8 of this machine's GPUs, from configs alone (seconds)
for recipe in llama31-8b-to-4b mistral-nemo-12b-to-8b; do
    "$PY" -m compactlm plan --recipe "$recipe" --device cuda --devices 8 --show 3 || true
done
timeout --signal=TERM --kill-after=15 "${SCALE_CHECK_TIMEOUT:-280}" \
    "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m benchmarks.device.gpu_check "${args[@]}" "$@"
