#!/usr/bin/env bash
# The GPU check (issue 7), one command on a machine with an NVIDIA GPU:
#   bench/gpu-check.sh [BUILD_DIR]
# 1. Builds the CUDA code when BUILD_DIR lacks the binaries (needs the
#    project's build dependencies and nvcc), for this GPU's architecture
#    only unless CUDA_ARCHS is set.
# 2. Runs the GPU tests (`ctest -L gpu`: every CUDA operation and whole
#    forward passes against the CPU backend) and compute-sanitizer memcheck
#    on the operation tests.
# 3. Runs the GPU benchmark (bench/gpu_bench: Llama-3-8B shape, BF16 and
#    Q8_0) and, where PyTorch is installed, the same shapes in PyTorch
#    (bench/torch_decode.py), side by side in this run.
# 4. Unless GPU_CHECK_HTTP=0: serve_bench on an 8B-shaped Q8_0 model over
#    HTTP (airlockd's server in-process) against the engine alone.
# Prints a short table. Knobs: GPU_BENCH_LAYERS (default 32; fewer for a
# quick run, the roofline fraction stays meaningful), GPU_CHECK_BENCH=0 to
# run the tests only, GPU_CHECK_TESTS=0 the benchmarks only (each stage
# fits a 10-minute command; all of them together may not).
set -uo pipefail
build=${1:-build}
build=${build%/}
case "$build" in /*) ;; *) build="$PWD/$build" ;; esac  # the caller's directory, before the cd
cd "$(dirname "$0")/.."
[ "$#" -ge 1 ] || build="$PWD/build"
layers=${GPU_BENCH_LAYERS:-32}
status=0

gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
[ -n "$gpu" ] || gpu="none found by nvidia-smi"
if [ -z "${CUDA_ARCHS:-}" ]; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')
  CUDA_ARCHS=${cap:-"80;89;90"}
fi

targets="cuda_tests gpu_bench serve_bench airlock-gen-model"
# Configure once; build every time (incremental: a rerun after a fix tests
# the fixed code).
t0=$(date +%s)
if [ ! -f "$build/CMakeCache.txt" ]; then
  mkdir -p "$build"
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAIRLOCK_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS" \
    -DAIRLOCK_WERROR=ON > "$build/gpu-check.cmake.log" 2>&1 || { tail -30 "$build/gpu-check.cmake.log"; exit 2; }
fi
# shellcheck disable=SC2086
cmake --build "$build" -j "$(nproc)" --target $targets > "$build/gpu-check.build.log" 2>&1 || {
  tail -40 "$build/gpu-check.build.log"; exit 2; }
archs=$(grep -o 'CMAKE_CUDA_ARCHITECTURES:[A-Z]*=.*' "$build/CMakeCache.txt" | cut -d= -f2)
echo "build: $(( $(date +%s) - t0 )) s (CUDA architectures: ${archs:-the project default, 80;89;90})"

summary="not run (GPU_CHECK_TESTS=0)"; skipped=0; sanitizer="not run"
if [ "${GPU_CHECK_TESTS:-1}" != 0 ]; then
tests_out=$(cd "$build" && timeout 300 ctest -L gpu --output-on-failure 2>&1)
tests_rc=$?
[ "$tests_rc" -eq 0 ] || status=1
summary=$(printf '%s\n' "$tests_out" | grep -E "tests passed|tests failed" | tail -1)
skipped=$(printf '%s\n' "$tests_out" | grep -c '\*\*\*Skipped' || true)
# With a GPU present nothing may skip: a skip then means the runtime cannot
# see the device (a driver older than the toolkit, say).
# (Two skip by design: the no-device test, and the two-GPU one on a
# machine with one GPU.)
unexpected=$(printf '%s\n' "$tests_out" | grep '\*\*\*Skipped' | grep -v -c -E 'NoDeviceIsAnErrorNotACrash|TwoGpuRanksMatchTheCpu' || true)
if [ "$gpu" != "none found by nvidia-smi" ] && [ "$unexpected" -gt 0 ]; then
  echo "GPU present but $unexpected GPU tests skipped:"
  printf '%s\n' "$tests_out" | grep '\*\*\*Skipped' | head -5
  status=1
fi
printf '%s\n' "$tests_out" | grep -E "\*\*\*Failed|\*\*\*Exception|\*\*\*Timeout|tests passed|tests failed" | tail -25

sanitizer="not installed"
cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ -x "$cs" ]; then
  if timeout 300 "$cs" --tool memcheck --error-exitcode 1 "$build/tests/cuda_tests" \
      --gtest_filter='CudaOps*:CudaAttention*:CudaWeight*:CudaSampling*' > "$build/memcheck.log" 2>&1; then
    sanitizer="clean"
  else
    sanitizer="ERRORS (see $build/memcheck.log)"
    status=1
    tail -20 "$build/memcheck.log"
  fi
fi
fi

results=$(mktemp)
run_bench() {  # label, command...
  local label=$1
  shift
  echo
  echo "== $label"
  if ! timeout 420 "$@" 2>&1 | tee -a "$results"; then
    echo "$label: FAILED"
    status=1
  fi
}
if [ "${GPU_CHECK_BENCH:-1}" != 0 ]; then
  run_bench "gpu_bench BF16" "$build/bench/gpu_bench" --type BF16 --layers "$layers"
  sed -i 's/^RESULT \([a-z0-9_]*\) /RESULT bf16_\1 /' "$results"
  run_bench "gpu_bench Q8_0" "$build/bench/gpu_bench" --type Q8_0 --layers "$layers"
  sed -i 's/^RESULT \([a-z0-9_]*\) /RESULT q8_\1 /; s/^RESULT q8_bf16_/RESULT bf16_/; s/^RESULT q8_torch_/RESULT torch_/' "$results"
  if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    run_bench "PyTorch, same shapes" python3 bench/torch_decode.py --layers "$layers"
  else
    echo "PyTorch with CUDA not importable: no comparison" | tee -a "$results"
  fi
  if [ "${GPU_CHECK_HTTP:-1}" != 0 ]; then
    model=${TMPDIR:-/tmp}/airlock-8b-q8_0.gguf
    if "$build/tools/airlock-gen-model" "$model" --embd 4096 --layers "$layers" --ff 14336 --heads 32 --kv-heads 8 \
        --ctx 4096 --type Q8_0 --bench-weights > /dev/null; then
      run_bench "serve_bench, 8B-shaped Q8_0 over HTTP" "$build/bench/serve_bench" "$model" --device cuda \
        --clients 1,16 --tokens 64
      rm -f "$model"
    else
      echo "could not write $model"
      status=1
    fi
  fi
fi

get() { grep -E "^RESULT $1 " "$results" | tail -1 | awk '{print $3}'; }
ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b }'; }
echo
echo "| check | result |"
echo "|---|---|"
echo "| GPU | $gpu |"
echo "| commit | $(git rev-parse --short HEAD 2>/dev/null || echo unknown) |"
echo "| ctest -L gpu | ${summary:-no result} (skipped: $skipped) |"
echo "| compute-sanitizer memcheck, operation tests | $sanitizer |"
if [ "${GPU_CHECK_BENCH:-1}" != 0 ]; then
  echo "| copy bandwidth | $(get bf16_bandwidth_gbs) GB/s |"
  for t in bf16 q8; do
    echo "| $t batch-1 decode | $(get ${t}_tg1) tok/s, $(get ${t}_tg1_roofline_pct)% of roofline (target 90%) |"
    echo "| $t batch-1 without CUDA graphs | $(get ${t}_tg1_eager) tok/s (graphs: $(get ${t}_graphs_captured) captured, $(get ${t}_graphs_replayed) replayed) |"
    echo "| $t TTFT 2000 tokens | $(get ${t}_ttft_s) s |"
    echo "| $t aggregate 16 / 64 / 128 | $(get ${t}_tg16) / $(get ${t}_tg64) / $(get ${t}_tg128) tok/s |"
  done
  if [ -n "$(get torch_tg1_graph)" ]; then
    echo "| PyTorch BF16 batch-1 eager / CUDA graph | $(get torch_tg1_eager) / $(get torch_tg1_graph) tok/s |"
    echo "| airlock BF16 / PyTorch CUDA graph, batch 1 | $(ratio "$(get bf16_tg1)" "$(get torch_tg1_graph)") |"
    echo "| PyTorch / airlock BF16 TTFT (above 1: airlock faster) | $(ratio "$(get torch_ttft_s)" "$(get bf16_ttft_s)") |"
    for b in 16 64 128; do
      echo "| airlock BF16 / PyTorch, $b sequences | $(ratio "$(get bf16_tg$b)" "$(get torch_tg$b)") |"
    done
  fi
fi
rm -f "$results"
exit "$status"
