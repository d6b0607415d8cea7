#include "airlock/engine/backend_registry.h"

#include "airlock/engine/thread_pool.h"

#if AIRLOCK_HAVE_CUDA
#include "cuda_backend.h"
#include "cuda_ops.h"
#endif
#if AIRLOCK_HAVE_NCCL
#include "nccl_communicator.h"
#endif

namespace airlock::engine {

std::optional<Device> parse_device(std::string_view name) {
  if (name == "auto") return Device::kAuto;
  if (name == "cpu") return Device::kCpu;
  if (name == "cuda") return Device::kCuda;
  return std::nullopt;
}

const char* device_name(Device d) {
  switch (d) {
    case Device::kCpu: return "cpu";
    case Device::kCuda: return "cuda";
    case Device::kAuto: break;
  }
  return "auto";
}

bool cuda_built() {
#if AIRLOCK_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

Device resolve_device(Device device) {
  if (device != Device::kAuto) return device;
#if AIRLOCK_HAVE_CUDA
  if (cuda::device_count() > 0) return Device::kCuda;
#endif
  return Device::kCpu;
}

Result<std::shared_ptr<Backend>> make_backend(Device device, int n_threads, int index) {
  if (resolve_device(device) == Device::kCuda) {
#if AIRLOCK_HAVE_CUDA
    AIRLOCK_ASSIGN_OR_RETURN(std::unique_ptr<Backend> b, make_cuda_backend(index));
    return std::shared_ptr<Backend>(std::move(b));
#else
    (void)index;
    return unavailable("device = \"cuda\": this build has no CUDA backend (built without nvcc)");
#endif
  }
  return std::shared_ptr<Backend>(make_cpu_backend(std::make_shared<ThreadPool>(n_threads)));
}

Result<std::vector<std::unique_ptr<Communicator>>> make_group(Device device, int n_ranks) {
  if (n_ranks < 1) return invalid_argument("a tensor-parallel group needs one rank at least");
  if (resolve_device(device) == Device::kCpu) return make_in_process_group(n_ranks);
#if AIRLOCK_HAVE_NCCL
  std::vector<int> devices;
  for (int i = 0; i < n_ranks; ++i) devices.push_back(i);
  if (cuda::device_count() < n_ranks)
    return unavailable("tensor_parallel = " + std::to_string(n_ranks) + " needs that many GPUs; " +
                       std::to_string(cuda::device_count()) + " present");
  return make_nccl_group(devices);
#else
  return unavailable("tensor parallelism on GPUs needs NCCL, which this build does not have");
#endif
}

Result<std::vector<std::unique_ptr<Communicator>>> make_spread_group(Device device, int n_local, int first,
                                                                     int n_ranks, const std::string& root) {
  AIRLOCK_RETURN_IF_ERROR(check_group_root(root));
  if (resolve_device(device) == Device::kCpu)
    return invalid_argument("a tensor-parallel group spanning machines needs device = \"cuda\" (CPU ranks only meet "
                            "within one process)");
#if AIRLOCK_HAVE_NCCL
  if (cuda::device_count() < n_local)
    return unavailable("tensor_parallel = " + std::to_string(n_local) + " needs that many GPUs on this machine; " +
                       std::to_string(cuda::device_count()) + " present");
  std::vector<int> devices;
  for (int i = 0; i < n_local; ++i) devices.push_back(i);
  return make_nccl_spread_group(devices, first, n_ranks, root);
#else
  (void)n_local;
  (void)first;
  (void)n_ranks;
  return unavailable("tensor parallelism on GPUs needs NCCL, which this build does not have");
#endif
}

}  // namespace airlock::engine
