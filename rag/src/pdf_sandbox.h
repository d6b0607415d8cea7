// Internal to airlock_rag: runs an untrusted-input filter program (pdftotext)
// as a confined child process. The child gets the input on stdin, an empty
// environment (PATH=/usr/bin:/bin, LANG=C.UTF-8), cwd "/", no other file
// descriptors, its own process group, PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG
// SIGKILL, rlimits (RLIMIT_AS memory_bytes, RLIMIT_CPU timeout rounded up to
// seconds, RLIMIT_FSIZE 0, RLIMIT_NOFILE 32, RLIMIT_CORE 0), a Landlock
// ruleset where the kernel has one (read and execute under /usr, read a few
// files of /etc and /dev, write nothing, no TCP, no signals out) and a
// seccomp filter (EPERM for sockets, ptrace and process_vm_*, bpf, io_uring,
// userfaultfd, keyrings, mounts and namespaces, chmod/chown/truncate/utimes/
// xattrs, and signals to airlockd or to any process group). If the filter
// cannot be built the program is not run (kInternal).
//
// The parent feeds stdin and drains stdout and stderr through one poll()
// loop (no deadlock whatever the child does first), SIGKILLs the child's
// process group at the wall-clock deadline or when stdout passes its cap,
// and always reaps the child before returning: no zombies on any path.
// SIGPIPE is blocked in the calling thread while the child runs, and a
// SIGPIPE the writes raised is consumed before the mask is restored.
//
// Thread-safety: safe to call from several threads at once; the child runs
// only async-signal-safe calls between fork and exec.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/common/status.h"

namespace airlock::rag::internal {

struct ChildLimits {
  int timeout_ms = 30000;
  std::size_t memory_bytes = 512 << 20;
  std::size_t max_stdout_bytes = 16 << 20;
  std::size_t max_stderr_bytes = 512;  // kept for messages; the rest is drained and dropped
};

struct ChildOutput {
  std::string out;
  std::string err;       // the first max_stderr_bytes of stderr
  int exit_status = -1;  // when it exited
  int term_signal = 0;   // when a signal ended it (SIGXCPU: the CPU limit)
};

// Runs argv[0] (an absolute path) with argv. Errors: kUnavailable when the
// program cannot be executed (the message has strerror), kResourceExhausted
// when it ran past timeout_ms or wrote more than max_stdout_bytes (it is
// killed), kIoError when pipes, fork or poll fail. A non-zero exit or a
// signal is not an error here: the caller reads ChildOutput.
Result<ChildOutput> run_sandboxed(const std::vector<std::string>& argv, std::string_view input,
                                  const ChildLimits& limits);

// One line for the log: which of the confinements above this process can
// apply (the kernel's Landlock ABI, the seccomp filter).
std::string sandbox_summary_line();

// Tests only: children started from now on use at most this Landlock ABI
// (INT_MAX: the kernel's), so the rulesets of older kernels (Debian 12's
// 6.1 has ABI 2) can be checked on a newer one. Nothing in the product
// calls it.
void limit_landlock_abi_for_testing(int abi);

// Lets the sandboxed program start processes (fork, vfork, clone without
// CLONE_THREAD), which the filter otherwise refuses: the tests' shell
// scripts that stand in for pdftotext fork. Nothing in the product calls it.
void allow_child_processes_for_testing(bool allow);

}  // namespace airlock::rag::internal
