#!/usr/bin/env bash
# GPU readiness on one CUDA device, in under 8 minutes: the CPU-side checks of the training step
# (tests/test_compile.py: no host reads in any off-policy or offline update, compiled == eager),
# the CUDA tests (`pytest -m gpu`), then the speed table (fp32/bf16 × eager/step/graph).
#   bash benchmarks/gpu_check.sh [TABLE]     (TABLE defaults to docs/speed-gpu.md)
# Without a GPU it runs the CPU parts, a short CPU run of the speed script (which leaves the table
# alone), and says what it skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
table=${1:-docs/speed-gpu.md}
start=$SECONDS
failed=0
python -m pytest -q -p no:cacheprovider tests/test_compile.py || failed=1
if python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    python -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py || failed=1
    python benchmarks/gpu_speed.py --steps 200 --out "$table" || failed=1
else
    echo "gpu_check.sh: no CUDA device here: skipped the CUDA tests (pytest -m gpu) and the table"
    smoke=$(mktemp)
    python benchmarks/gpu_speed.py --device cpu --algos td3,odice --modes eager \
        --precisions fp32 --steps 5 --out "$smoke" || failed=1
    rm -f "$smoke"
fi
echo "gpu_check.sh: $((SECONDS - start)) s"
exit $failed
