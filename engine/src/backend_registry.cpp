#include "airlock/engine/backend_registry.h"

#include "airlock/engine/thread_pool.h"

#if AIRLOCK_HAVE_CUDA
#include "cuda_backend.h"
#include "cuda_ops.h"
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

Result<std::shared_ptr<Backend>> make_backend(Device device, int n_threads) {
#if AIRLOCK_HAVE_CUDA
  if (device == Device::kCuda || (device == Device::kAuto && cuda::device_count() > 0)) {
    AIRLOCK_ASSIGN_OR_RETURN(std::unique_ptr<Backend> b, make_cuda_backend(0));
    return std::shared_ptr<Backend>(std::move(b));
  }
#else
  if (device == Device::kCuda)
    return unavailable("device = \"cuda\": this build has no CUDA backend (built without nvcc)");
#endif
  return std::shared_ptr<Backend>(make_cpu_backend(std::make_shared<ThreadPool>(n_threads)));
}

}  // namespace airlock::engine
