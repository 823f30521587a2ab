#!/usr/bin/env bash
# GPU readiness on one CUDA device: the CUDA tests (`pytest -m gpu`), then the speed table.
#   bash benchmarks/gpu_check.sh [TABLE]     (TABLE defaults to docs/speed-gpu.md)
# The tests and the table both need CUDA; without it they skip / exit with one line.
set -uo pipefail
cd "$(dirname "$0")/.."
table=${1:-docs/speed-gpu.md}
python -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
tests=$?
python benchmarks/gpu_speed.py --out "$table"
speed=$?
exit $(( tests != 0 || speed != 0 ))
