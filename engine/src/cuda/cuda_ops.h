// The CUDA backend's elementwise and row operations (issue 7), on device
// memory, each the counterpart of a CpuBackend operation of the same name
// (backend.h) and checked against it (tests/engine/cuda_ops_test.cpp,
// `ctest -L gpu`). Not yet a Backend: matmul, paged attention, sampling,
// CUDA graphs and NCCL are still to be written, and nothing selects the
// GPU at run time yet.
//
// Every pointer is device memory unless its comment says otherwise. Calls
// run on the current device's default stream and return once the work is
// queued; a launch or a transfer that fails returns kInternal with CUDA's
// message (the request fails, the process never aborts).
//
// Thread-safety: calls on one device from several threads serialise on its
// default stream; nothing here holds state beyond DeviceBuffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "airlock/common/status.h"
#include "airlock/engine/backend.h"
#include "airlock/engine/ggml_types.h"

namespace airlock::engine::cuda {

// Usable CUDA devices: 0 without a driver or a device (never an error).
int device_count();
// "NVIDIA H200, 139 GiB, sm_90" for a device < device_count().
std::string describe_device(int device);

// Device memory, freed when destroyed. Move-only.
class DeviceBuffer {
 public:
  // kResourceExhausted when the device has not `bytes` free.
  static Result<DeviceBuffer> alloc(std::size_t bytes);
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();
  void* get() const { return p_; }
  template <typename T>
  T* as() const { return static_cast<T*>(p_); }
  std::size_t size() const { return bytes_; }

 private:
  void* p_ = nullptr;
  std::size_t bytes_ = 0;
};

// Copies between host and device memory; blocks until done.
Status to_device(void* device_dst, const void* host_src, std::size_t bytes);
Status to_host(void* host_dst, const void* device_src, std::size_t bytes);
// Waits for every queued operation; reports the first error among them.
Status synchronize();

// y (n_rows, dim) = x / rms(x) * w per row (sums in double, as the CPU).
Status rms_norm(const float* x, const float* w, std::int64_t n_rows, std::int64_t dim, float eps, float* y);
// y (n_rows, dim) = (x - mean) / sqrt(var + eps) * w + b per row. y may be x.
Status layer_norm(const float* x, const float* w, const float* b, std::int64_t n_rows, std::int64_t dim, float eps,
                  float* y);
// y (n) += x (n).
Status add(float* y, const float* x, std::int64_t n);
// y (n_rows, dim) += bias (dim).
Status add_bias(float* y, const float* bias, std::int64_t n_rows, std::int64_t dim);
// out (n) = silu(gate) * up. out may be gate.
Status swiglu(const float* gate, const float* up, std::int64_t n, float* out);
// y (n) = gelu(x), tanh form. y may be x.
Status gelu(const float* x, std::int64_t n, float* y);
// x (n_tokens, n_heads * head_dim) rotated in place at `positions`
// (n_tokens, device). p.freq_factors, when set, is device memory too.
Status rope(float* x, std::int64_t n_tokens, int n_heads, int head_dim, const std::int32_t* positions,
            const RopeParams& p);
// out (n, row_len) = rows `ids` (n, device) of `table`, dequantised. Types:
// F32, F16, BF16, Q8_0 (kInvalidArgument for others, named).
Status get_rows(GgmlType type, const void* table, std::int64_t row_len, const std::int32_t* ids, std::int64_t n,
                float* out);

}  // namespace airlock::engine::cuda
