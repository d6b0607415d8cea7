// The tensor-parallel communicator on GPUs (issue 7): NCCL's all-reduce
// among the devices of this machine, one rank per device, the ranks as
// threads of this process (TensorParallelDecoder). Built when the CUDA
// toolkit has NCCL (AIRLOCK_HAVE_NCCL).
//
// all_reduce_sum() takes device memory and only enqueues the reduction on
// the legacy default stream, after the kernels before it (the host does
// not wait); broadcast() takes host memory and waits. abort() calls
// ncclCommAbort on every rank's communicator of this process, which also
// ends collectives a device is already waiting in, so ranks blocked on
// their device return; every later call fails with the reason. A watcher
// thread polls NCCL's asynchronous errors and aborts likewise when a peer
// fails elsewhere (another machine's process cannot abort this one's
// communicators; NCCL's error reports the broken connection).
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
// A group may also span machines (make_nccl_spread_group): NCCL's own
// bootstrap, its root at an operator-given literal address; see there.
//
// Thread-safety: as Communicator (collective.h).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/engine/collective.h"

namespace airlock::engine {

// One communicator per device of `devices` (rank i uses devices[i]);
// kUnavailable when NCCL cannot set the group up (message says why).
Result<std::vector<std::unique_ptr<Communicator>>> make_nccl_group(const std::vector<int>& devices);

// Ranks first_rank .. first_rank + devices.size() - 1 (rank first_rank + i
// on devices[i]) of a group of n_ranks spread over several machines: the
// process holding rank 0 runs the TensorParallelDecoder, the others a
// TensorParallelFollower (decoder.h). Every process calls this with the
// same `root` and n_ranks; NCCL's bootstrap (NCCL_COMM_ID) has the process
// of rank 0 listen at `root` and the others connect to it, then NCCL's
// transports connect the ranks across machines on the interfaces
// NCCL_SOCKET_IFNAME names (the operator sets it, and
// NCCL_IB_DISABLE where InfiniBand is not to be used). This is the one
// place the product connects beyond its own listening sockets, and only
// when configured: the unit's IPAddressAllow= must admit the peers
// (docs/install.md). `root` is a literal address (check_group_root,
// collective.h): nothing is resolved by name. kInvalidArgument for a bad
// root or rank range, kUnavailable when NCCL cannot set the group up.
Result<std::vector<std::unique_ptr<Communicator>>> make_nccl_spread_group(const std::vector<int>& devices,
                                                                          int first_rank, int n_ranks,
                                                                          const std::string& root);

}  // namespace airlock::engine
