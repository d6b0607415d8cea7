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
  const bool from_fault = info != nullptr && info->si_code > 0;  // not from kill()
  if (sigjmp_buf* jump = t_jump; jump != nullptr && from_fault) {
    t_jump = nullptr;
    siglongjmp(*jump, 1);
  }
  // Not a guarded read: as if the previous disposition had handled it. A
  // handler is called directly (ours stays installed); for the default
  // action, it is restored and the fault re-runs into it (or a signal from
  // kill() is raised again), ending the process as it would have. An
  // ignored SIGBUS from kill() stays ignored; a real fault cannot be.
  if ((g_previous.sa_flags & SA_SIGINFO) != 0 && g_previous.sa_sigaction != nullptr) {
    g_previous.sa_sigaction(sig, info, context);
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN && g_previous.sa_handler != nullptr) {
    g_previous.sa_handler(sig);
  } else if (g_previous.sa_handler == SIG_IGN && !from_fault) {
    // ignored, as before
  } else {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    ::sigaction(SIGBUS, &dfl, nullptr);
    if (!from_fault) ::raise(sig);
  }
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
  if (n_bytes == 0) return true;  // an empty mapping's data() may be null, which memcpy must not get
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
