// Block-wide reductions shared by the CUDA kernels (device code only).
#pragma once

namespace airlock::engine::cuda {

// Sum of v over a block of kBlock threads (a multiple of 32), returned to
// every thread. Every thread of the block must call it.
template <int kBlock>
__device__ double block_sum(double v) {
  __shared__ double partial[kBlock / 32];
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  double s = 0;
  for (int w = 0; w < kBlock / 32; ++w) s += partial[w];
  __syncthreads();  // partial is reused by the next call
  return s;
}

}  // namespace airlock::engine::cuda
