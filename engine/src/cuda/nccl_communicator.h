// The tensor-parallel communicator on GPUs (issue 7): NCCL's all-reduce
// among the devices of this machine, one rank per device, the ranks as
// threads of this process (TensorParallelDecoder). Built when the CUDA
// toolkit has NCCL (AIRLOCK_HAVE_NCCL).
//
// all_reduce_sum() takes device memory and only enqueues the reduction on
// the legacy default stream, after the kernels before it (the host does
// not wait). abort() calls ncclCommAbort on every rank's communicator,
// which also ends reductions a device is already waiting in, so ranks
// blocked on their device return; every later call fails with the reason.
//
// Network: NCCL's bootstrap connects the ranks over TCP even inside one
// process. make_nccl_group() therefore restricts it to the loopback
// interface (NCCL_SOCKET_IFNAME=lo unless the operator set it): the
// process connects only to its own listening socket on 127.0.0.1, which
// IPAddressAllow=localhost and PrivateNetwork=yes both permit, and turns
// off its InfiniBand transport (NCCL_IB_DISABLE=1). Nothing is resolved by
// name. NCCL lists the interfaces with getifaddrs, which needs a netlink
// socket: under the shipped unit (RestrictAddressFamilies without
// AF_NETLINK) tensor_parallel > 1 needs that family added (docs/install.md).
// Multi-node groups (NCCL's own bootstrap across machines) are not built.
//
// Thread-safety: as Communicator (collective.h).
#pragma once

#include <memory>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/engine/collective.h"

namespace airlock::engine {

// One communicator per device of `devices` (rank i uses devices[i]);
// kUnavailable when NCCL cannot set the group up (message says why).
Result<std::vector<std::unique_ptr<Communicator>>> make_nccl_group(const std::vector<int>& devices);

}  // namespace airlock::engine
