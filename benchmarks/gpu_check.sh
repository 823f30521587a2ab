#!/usr/bin/env bash
# GPU readiness on one CUDA device (meant to take under 8 minutes): the CUDA tests (`pytest -m
# gpu`), the speed table (fp32/bf16 × eager/step/graph), then the CPU-side checks of the training
# step (tests/test_compile.py: no host reads in any off-policy or offline update, compiled ==
# eager). The tests go first: they are bounded and say whether the device path is right at all,
# while the table's compiled cells can run long; it is written row by row, so a run stopped by a
# time limit still keeps the figures it measured.
#   bash benchmarks/gpu_check.sh [TABLE]     (TABLE defaults to docs/speed-gpu.md)
# Without a GPU it runs the CPU parts, a short CPU run of the speed script (which leaves the table
# alone), and says what it skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
table=${1:-docs/speed-gpu.md}
start=$SECONDS
failed=0
if python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    python -m pytest -q -m gpu -p no:cacheprovider tests || failed=1
    python benchmarks/gpu_speed.py --steps 200 --out "$table" || failed=1
    python -m pytest -q -p no:cacheprovider tests/test_compile.py || failed=1
else
    python -m pytest -q -p no:cacheprovider tests/test_compile.py || failed=1
    echo "gpu_check.sh: no CUDA device here: skipped the CUDA tests (pytest -m gpu) and the table"
    smoke=$(mktemp)
    python benchmarks/gpu_speed.py --device cpu --algos td3,odice --modes eager \
        --precisions fp32 --steps 5 --out "$smoke" || failed=1
    rm -f "$smoke"
fi
echo "gpu_check.sh: $((SECONDS - start)) s"
exit $failed
