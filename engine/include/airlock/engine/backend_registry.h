// Which backend runs the model: the only place that knows whether this
// build has the CUDA backend (AIRLOCK_HAVE_CUDA).
//
// Thread-safety: the functions are safe to call from any thread.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>
#include <string_view>

#include "airlock/common/status.h"
#include "airlock/engine/backend.h"
#include "airlock/engine/collective.h"

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

// kCpu or kCuda: what kAuto means on this machine with this build.
Device resolve_device(Device device);

// The backend for `device` (CUDA device `index`, 0 for the CPU); n_threads
// sizes the CPU backend's pool (0: every allowed core). Errors:
// kUnavailable for kCuda when the build has no CUDA backend or there is no
// such GPU (the message says which).
Result<std::shared_ptr<Backend>> make_backend(Device device, int n_threads, int index = 0);

// The communicators of a tensor-parallel group of n_ranks on `device`
// (resolved): CUDA devices 0..n_ranks-1 joined by NCCL, or CPU ranks
// joined in-process. kUnavailable when the GPUs or NCCL are missing.
Result<std::vector<std::unique_ptr<Communicator>>> make_group(Device device, int n_ranks);

// This machine's part of a tensor-parallel group spanning machines: CUDA
// devices 0..n_local-1 as ranks first..first+n_local-1 of n_ranks, joined
// through NCCL's bootstrap at `root` (check_group_root). kInvalidArgument
// for the CPU (its ranks only meet within one process) or a bad root;
// kUnavailable when the GPUs or NCCL are missing or the group cannot form.
Result<std::vector<std::unique_ptr<Communicator>>> make_spread_group(Device device, int n_local, int first,
                                                                     int n_ranks, const std::string& root);

}  // namespace airlock::engine
