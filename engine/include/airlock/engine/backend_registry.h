// Which backend runs the model: the only place that knows whether this
// build has the CUDA backend (AIRLOCK_HAVE_CUDA).
//
// Thread-safety: the functions are safe to call from any thread.
#pragma once

#include <memory>
#include <optional>
#include <string_view>

#include "airlock/common/status.h"
#include "airlock/engine/backend.h"

namespace airlock::engine {

enum class Device {
  kAuto,  // CUDA device 0 when this build has CUDA and a GPU is present, else the CPU
  kCpu,
  kCuda,  // CUDA device 0, or an error
};

// "auto", "cpu", "cuda"; nullopt for anything else.
std::optional<Device> parse_device(std::string_view name);
const char* device_name(Device d);

// True when this build contains the CUDA backend.
bool cuda_built();

// The backend for `device`; n_threads sizes the CPU backend's pool (0: every
// allowed core). Errors: kUnavailable for kCuda when the build has no CUDA
// backend or no GPU is present (the message says which).
Result<std::shared_ptr<Backend>> make_backend(Device device, int n_threads);

}  // namespace airlock::engine
