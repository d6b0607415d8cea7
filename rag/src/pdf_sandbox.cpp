#include "pdf_sandbox.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <algorithm>
#include <cstring>
#include <ctime>

#include "text_builder.h"

namespace airlock::rag::internal {
namespace {

using Clock = std::chrono::steady_clock;

constexpr rlim_t kChildMaxFiles = 32;

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  bool open() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int* out() { return &fd_; }

 private:
  int fd_ = -1;
};

bool make_pipe(Fd* read_end, Fd* write_end) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return false;
  *read_end->out() = p[0];
  *write_end->out() = p[1];
  return true;
}

// Kills and reaps the child when a return path forgets to.
class Child {
 public:
  explicit Child(pid_t pid) : pid_(pid) {}
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (!reaped_) {
      kill();
      wait(nullptr);
    }
  }
  void kill() const {
    ::kill(-pid_, SIGKILL);  // its process group: anything it started
    ::kill(pid_, SIGKILL);   // in case it had not yet called setpgid
  }
  // Blocks until the child ends; *status as from waitpid.
  void wait(int* status) {
    int s = 0;
    while (::waitpid(pid_, &s, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
    if (status != nullptr) *status = s;
  }
  // True (and *status) when the child has ended.
  bool try_wait(int* status) {
    int s = 0;
    pid_t r = ::waitpid(pid_, &s, WNOHANG);
    if (r == pid_ || (r < 0 && errno == ECHILD)) {
      reaped_ = true;
      *status = s;
      return true;
    }
    return false;
  }

 private:
  pid_t pid_;
  bool reaped_ = false;
};

// Blocks SIGPIPE in this thread for its lifetime; on the way out consumes a
// SIGPIPE that our writes left pending, then restores the mask.
class SigpipeBlock {
 public:
  SigpipeBlock() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGPIPE);
    sigset_t pending;
    sigemptyset(&pending);
    ::sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    ::pthread_sigmask(SIG_BLOCK, &set_, &old_);
  }
  SigpipeBlock(const SigpipeBlock&) = delete;
  SigpipeBlock& operator=(const SigpipeBlock&) = delete;
  ~SigpipeBlock() {
    if (!was_pending_) {
      const timespec zero{0, 0};
      while (::sigtimedwait(&set_, nullptr, &zero) == SIGPIPE) {
      }
    }
    ::pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }

 private:
  sigset_t set_;
  sigset_t old_;
  bool was_pending_ = false;
};

// Child side: reports errno on the status pipe and exits.
[[noreturn]] void fail(int status_fd) {
  const int e = errno;
  (void)!::write(status_fd, &e, sizeof e);
  ::_exit(127);
}

// In the child between fork and exec: async-signal-safe calls only (no
// allocation, no locks). Reports a failure as an errno on status_fd.
[[noreturn]] void exec_child(pid_t parent, int in_fd, int out_fd, int err_fd, int status_fd, const char* path,
                             char* const argv[], char* const envp[], const ChildLimits& limits) {
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);  // exec keeps the mask: undo the parent's SIGPIPE block
  ::signal(SIGPIPE, SIG_DFL);                   // and an ignored SIGPIPE (airlockd's)
  ::setpgid(0, 0);
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail(status_fd);
  if (::getppid() != parent) ::_exit(127);  // the parent died before PDEATHSIG was set
  // Move the four pipe ends above 0..3 first so the dup2s below cannot clobber one another.
  int fds[4] = {in_fd, out_fd, err_fd, status_fd};
  for (int& fd : fds) {
    fd = ::fcntl(fd, F_DUPFD_CLOEXEC, 10);
    if (fd < 0) fail(status_fd);
  }
  for (int target = 0; target < 4; ++target)
    if (::dup2(fds[target], target) < 0) fail(fds[3]);
  if (::fcntl(3, F_SETFD, FD_CLOEXEC) != 0) fail(3);  // the status pipe closes on a successful exec
  if (::close_range(4, ~0U, 0) != 0) {
    for (int fd = 4; fd < 65536; ++fd) ::close(fd);
  }
  if (::chdir("/") != 0) fail(3);
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail(3);
  const rlim_t cpu_s = static_cast<rlim_t>((limits.timeout_ms + 999) / 1000);
  const struct {
    int resource;
    rlim_t soft, hard;
  } rl[] = {{RLIMIT_AS, limits.memory_bytes, limits.memory_bytes},
            {RLIMIT_CPU, cpu_s, cpu_s + 1},  // soft: SIGXCPU; hard: SIGKILL
            {RLIMIT_FSIZE, 0, 0},
            {RLIMIT_NOFILE, kChildMaxFiles, kChildMaxFiles},
            {RLIMIT_CORE, 0, 0}};
  for (const auto& r : rl) {
    const rlimit v{r.soft, r.hard};
    if (::setrlimit(r.resource, &v) != 0) fail(3);
  }
  ::execve(path, argv, envp);
  fail(3);
}

}  // namespace

Result<ChildOutput> run_sandboxed(const std::vector<std::string>& argv, std::string_view input,
                                  const ChildLimits& limits) {
  if (argv.empty() || argv[0].empty() || argv[0][0] != '/')
    return internal_error("run_sandboxed: the program must be an absolute path");
  // Everything the child needs is built before fork: it must not allocate.
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  char env_path[] = "PATH=/usr/bin:/bin";
  char env_lang[] = "LANG=C.UTF-8";
  char* envp[] = {env_path, env_lang, nullptr};

  Fd in_r, in_w, out_r, out_w, err_r, err_w, status_r, status_w;
  if (!make_pipe(&in_r, &in_w) || !make_pipe(&out_r, &out_w) || !make_pipe(&err_r, &err_w) ||
      !make_pipe(&status_r, &status_w))
    return io_error("pipe", errno);

  SigpipeBlock sigpipe_block;
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return io_error("fork", errno);
  if (pid == 0)
    exec_child(parent, in_r.get(), out_w.get(), err_w.get(), status_w.get(), args[0], args.data(), envp, limits);
  Child child(pid);
  in_r.reset();
  out_w.reset();
  err_w.reset();
  status_w.reset();

  // The status pipe closes on a successful exec; otherwise it carries errno.
  int exec_errno = 0;
  ssize_t got;
  while ((got = ::read(status_r.get(), &exec_errno, sizeof exec_errno)) < 0 && errno == EINTR) {
  }
  if (got == static_cast<ssize_t>(sizeof exec_errno)) {
    child.wait(nullptr);
    return unavailable("cannot run " + argv[0] + ": " + std::strerror(exec_errno));
  }

  for (Fd* fd : {&in_w, &out_r, &err_r}) ::fcntl(fd->get(), F_SETFL, O_NONBLOCK);
  ChildOutput result;
  const auto deadline = Clock::now() + std::chrono::milliseconds(limits.timeout_ms);
  std::size_t written = 0;
  if (input.empty()) in_w.reset();
  char buf[64 * 1024];
  Status stop;  // set when the child must be killed
  while (out_r.open() || err_r.open()) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      stop = resource_exhausted(argv[0] + " ran longer than " + std::to_string(limits.timeout_ms) + " ms (killed)");
      break;
    }
    pollfd p[3];
    nfds_t n = 0;
    int i_in = -1, i_out = -1, i_err = -1;
    if (in_w.open()) { i_in = static_cast<int>(n); p[n++] = {in_w.get(), POLLOUT, 0}; }
    if (out_r.open()) { i_out = static_cast<int>(n); p[n++] = {out_r.get(), POLLIN, 0}; }
    if (err_r.open()) { i_err = static_cast<int>(n); p[n++] = {err_r.get(), POLLIN, 0}; }
    const int ready = ::poll(p, n, static_cast<int>(std::min<long long>(left, 60000)));
    if (ready < 0) {
      if (errno == EINTR) continue;
      return io_error("poll", errno);
    }
    if (i_in >= 0 && p[i_in].revents != 0) {
      const ssize_t w = ::write(in_w.get(), input.data() + written, std::min<std::size_t>(input.size() - written, 1 << 16));
      if (w > 0) written += static_cast<std::size_t>(w);
      // EPIPE: the child stopped reading (it may have failed; its exit says).
      if ((w < 0 && errno != EAGAIN && errno != EINTR) || written == input.size()) in_w.reset();
    }
    if (i_out >= 0 && p[i_out].revents != 0) {
      const ssize_t r = ::read(out_r.get(), buf, sizeof buf);
      if (r > 0) {
        if (static_cast<std::size_t>(r) > limits.max_stdout_bytes - result.out.size()) {
          stop = resource_exhausted(argv[0] + " wrote more than " + std::to_string(limits.max_stdout_bytes) +
                                    " bytes (max_output_bytes; killed)");
          break;
        }
        result.out.append(buf, static_cast<std::size_t>(r));
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        out_r.reset();
      }
    }
    if (i_err >= 0 && p[i_err].revents != 0) {
      const ssize_t r = ::read(err_r.get(), buf, sizeof buf);
      if (r > 0) {
        const std::size_t keep = std::min(static_cast<std::size_t>(r), limits.max_stderr_bytes - std::min(limits.max_stderr_bytes, result.err.size()));
        result.err.append(buf, keep);
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        err_r.reset();
      }
    }
  }
  in_w.reset();
  int status = 0;
  if (stop.is_ok()) {
    // Output closed; give the child until the deadline to exit.
    while (!child.try_wait(&status)) {
      if (Clock::now() >= deadline) {
        stop = resource_exhausted(argv[0] + " ran longer than " + std::to_string(limits.timeout_ms) + " ms (killed)");
        break;
      }
      const timespec pause{0, 2'000'000};
      ::nanosleep(&pause, nullptr);
    }
  }
  if (!stop.is_ok()) {
    child.kill();
    child.wait(nullptr);
    return stop;
  }
  if (WIFEXITED(status)) result.exit_status = WEXITSTATUS(status);
  else if (WIFSIGNALED(status)) result.term_signal = WTERMSIG(status);
  return result;
}

Result<ExtractedDocument> extract_pdf(std::string_view bytes, const ExtractLimits& limits) {
  if (limits.pdftotext.empty() || limits.pdftotext[0] != '/' || ::access(limits.pdftotext.c_str(), X_OK) != 0)
    return unavailable("pdftotext not installed at '" + limits.pdftotext + "' (apt install poppler-utils)");
  if (limits.pdf_timeout_ms <= 0) return invalid_argument("pdf: pdf_timeout_ms must be positive");
  ChildLimits child_limits;
  child_limits.timeout_ms = limits.pdf_timeout_ms;
  child_limits.memory_bytes = limits.pdf_memory_bytes;
  child_limits.max_stdout_bytes = limits.max_output_bytes;
  // "-" for both files: the PDF from stdin, the text to stdout.
  AIRLOCK_ASSIGN_OR_RETURN(ChildOutput r,
                           run_sandboxed({limits.pdftotext, "-enc", "UTF-8", "-nopgbrk", "-", "-"}, bytes, child_limits));
  const std::string err = r.err.empty() ? std::string() : ": " + one_line(r.err, 300);
  if (r.term_signal == SIGXCPU)
    return resource_exhausted("pdf: pdftotext used more than its " + std::to_string((limits.pdf_timeout_ms + 999) / 1000) +
                              " s of CPU time (killed)");
  if (r.term_signal != 0) {
    const char* abbrev = ::sigabbrev_np(r.term_signal);
    return invalid_argument("pdf: pdftotext was killed by signal " + std::to_string(r.term_signal) +
                            (abbrev != nullptr ? std::string(" (SIG") + abbrev + ")" : std::string()) +
                            " (damaged PDF, or over the memory limit)" + err);
  }
  if (r.exit_status != 0)
    return invalid_argument("pdf: pdftotext failed with exit status " + std::to_string(r.exit_status) + err);
  TextBuilder text(limits.max_output_bytes);
  AIRLOCK_RETURN_IF_ERROR(text.append(strip_bom(r.out)));
  AIRLOCK_ASSIGN_OR_RETURN(std::string out, text.finish());
  return ExtractedDocument{DocFormat::kPdf, {}, std::move(out)};
}

}  // namespace airlock::rag::internal
