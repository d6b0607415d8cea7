#!/usr/bin/env bash
# The GPU check (issue 7), one command on a machine with an NVIDIA GPU:
#   bench/gpu-check.sh [BUILD_DIR]
# Builds the CUDA code when BUILD_DIR has no test binaries yet (needs the
# project's build dependencies and nvcc; otherwise build here with
# `make build` and bring BUILD_DIR along), then runs the GPU tests
# (`ctest -L gpu`: every CUDA operation against the CPU backend) and
# compute-sanitizer memcheck on them, and prints a short table.
#
# The GPU tests include whole forward passes on the CUDA backend against the
# CPU backend for every weight type (CudaForwardTest). What it cannot check
# yet: the kernels are reference-speed and sampling, CUDA graphs and NCCL
# are not written, so there is no GPU decode benchmark to run; the table
# says so instead of printing numbers.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}

if [ ! -x "$build/tests/cuda_tests" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAIRLOCK_CUDA=ON -DAIRLOCK_WERROR=ON || exit 2
  cmake --build "$build" -j "$(nproc)" --target cuda_tests || exit 2
fi

gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
[ -n "$gpu" ] || gpu="none found by nvidia-smi"

tests_out=$(cd "$build" && ctest -L gpu --output-on-failure 2>&1)
tests_rc=$?
summary=$(printf '%s\n' "$tests_out" | grep -E "tests passed|tests failed" | tail -1)
skipped=$(printf '%s\n' "$tests_out" | grep -c '\*\*\*Skipped' || true)

sanitizer="not installed"
if command -v compute-sanitizer >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  if "$cs" --tool memcheck --error-exitcode 1 "$build/tests/cuda_tests" > "$build/memcheck.log" 2>&1; then
    sanitizer="clean"
  else
    sanitizer="ERRORS (see $build/memcheck.log)"
  fi
fi

printf '%s\n' "$tests_out" | tail -25
echo
echo "| check | result |"
echo "|---|---|"
echo "| GPU | $gpu |"
echo "| ctest -L gpu | ${summary:-no result} (skipped: $skipped) |"
echo "| compute-sanitizer memcheck, cuda_tests | $sanitizer |"
echo "| decode benchmark vs HBM roofline | not written yet (reference-speed kernels) |"
[ "$tests_rc" -eq 0 ] && [ "$sanitizer" != "ERRORS (see $build/memcheck.log)" ]
