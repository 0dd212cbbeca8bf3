# Sourced by the device scripts: repository root, $PY, and compactlm importable on the lent machine.
# Offline there: no build isolation (it would fetch setuptools), no dependencies (the device has its own torch).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PYTHON:-python}
if ! "$PY" -c "import compactlm" 2>/dev/null; then
    "$PY" -m pip install -q -e . --no-deps --no-build-isolation 2>/dev/null \
        || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
