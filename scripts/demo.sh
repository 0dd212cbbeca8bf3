#!/usr/bin/env bash
# The main job on the embedded default (what `make demo` runs): score the embedded SmolLM2-135M
# teacher on packaged Wikipedia text, prune its MLP 1536 -> 1024, and compare perplexity before
# and after on held-out C4 text. Everything comes from PyPI packages; no network needed.
set -euo pipefail
BIN=${BIN:-.venv/bin}
RUN=${RUN:-runs/demo}
"$BIN/compactlm" importance --model smollm2-135m --data exllamav2:wiki --samples 128 --seq-len 512 \
  --out "$RUN/scores" --overwrite
"$BIN/compactlm" prune --model smollm2-135m --scores "$RUN/scores" --ffn-hidden-size 1024 \
  --out "$RUN/student" --overwrite
"$BIN/compactlm" info "$RUN/student"
"$BIN/compactlm" eval --model "$RUN/student" --baseline smollm2-135m --tasks ppl:exllamav2:c4 --window 512 --limit 48 \
  --json "$RUN/eval.json"
