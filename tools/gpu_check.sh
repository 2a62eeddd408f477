#!/usr/bin/env bash
# Every GPU check in one call, for a lent GPU (README: "On a lent GPU"); tools/gpu_check.py does the work.
#   bash tools/gpu_check.sh --bundle gpu-bundle         on the GPU machine, results in $OUT (else ./gpu-check)
#   bash tools/gpu_check.sh --device cpu --smoke        the same steps at toy size on a CPU
# PYTHON picks the interpreter (default python3).
set -euo pipefail
exec "${PYTHON:-$(command -v python3 || command -v python)}" "$(dirname "$0")/gpu_check.py" "$@"
