#include "guarded_read.h"

#include <signal.h>

#include <csetjmp>
#include <cstring>
#include <mutex>

namespace airlock::verifier {
namespace {

// Where the current thread's guarded read jumps on SIGBUS; null outside one.
// A plain pointer in static TLS: safe to read in a signal handler.
thread_local sigjmp_buf* t_jump = nullptr;

struct sigaction g_previous {};

void on_sigbus(int sig, siginfo_t* info, void* context) {
  if (sigjmp_buf* jump = t_jump; jump != nullptr && info != nullptr && info->si_code > 0) {
    t_jump = nullptr;
    siglongjmp(*jump, 1);
  }
  // Not a guarded read: hand the signal back to whoever had it. For a fault,
  // returning re-runs the faulting instruction, which faults again into the
  // previous handler (by default: the process ends with SIGBUS, as without
  // this handler). A SIGBUS from kill() is raised again, pending until return.
  ::sigaction(SIGBUS, &g_previous, nullptr);
  if (info == nullptr || info->si_code <= 0) ::raise(sig);
  (void)context;
}

void install_handler_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, &g_previous);
  });
}

}  // namespace

bool read_guarded(void (*read)(void* context), void* context) {
  install_handler_once();
  sigjmp_buf jump;
  // savesigs = 1: the jump out of the handler restores the signal mask, so
  // SIGBUS is not left blocked for the next guarded read.
  if (sigsetjmp(jump, 1) != 0) return false;  // t_jump was cleared by the handler
  t_jump = &jump;
  read(context);
  t_jump = nullptr;
  return true;
}

bool copy_guarded(void* to, const std::uint8_t* from, std::size_t n_bytes) {
  auto copy = [&] { std::memcpy(to, from, n_bytes); };
  return read_guarded(copy);
}

Result<Sha256Digest> sha256_guarded(std::span<const std::uint8_t> mapped, const std::string& what) {
  Sha256 h;
  auto update = [&] { h.update(mapped.data(), mapped.size()); };
  if (!read_guarded(update)) return file_shrank(what);
  return h.finish();
}

Status file_shrank(const std::string& what) {
  return Status(StatusCode::kIoError,
                what + ": the file became shorter while it was being read (truncated, or the medium was removed)");
}

}  // namespace airlock::verifier
