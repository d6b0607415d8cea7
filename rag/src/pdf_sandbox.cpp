#include "pdf_sandbox.h"

#include "airlock/rag/extract.h"

#include <fcntl.h>
#include <linux/filter.h>
#include <linux/landlock.h>
#include <poll.h>
#include <sched.h>
#include <seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <ctime>
#include <vector>

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

// ---- the child's confinement beyond rlimits

// System calls the extractor never needs and an exploit would: any socket
// (no network, no local services), tracing and reading other processes'
// memory (airlockd's keys), kernel attack surface (bpf, userfaultfd,
// io_uring, perf, keyrings), and namespace or mount changes. Each fails with
// EPERM. libseccomp allocates, so the program is built once in the parent
// and only installed in the child.
struct SeccompProgram {
  std::vector<sock_filter> code;
  std::string error;  // why there is none
};

// New processes: pdftotext starts none (nor threads), so an exploited one
// cannot fork-bomb the service's task limit, which airlockd's own threads
// share, for the timeout's length. Threads (clone with CLONE_THREAD) stay
// allowed. The tests' shell stand-ins fork: they lift this (below).
std::atomic<bool> g_allow_child_processes{false};

SeccompProgram build_child_seccomp(bool allow_processes) {
  SeccompProgram p;
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);  // other architectures' calls: killed (libseccomp's default)
  if (ctx == nullptr) {
    p.error = "seccomp_init failed";
    return p;
  }
  const int denied[] = {
      SCMP_SYS(socket), SCMP_SYS(socketpair), SCMP_SYS(connect), SCMP_SYS(bind), SCMP_SYS(listen),
      SCMP_SYS(accept), SCMP_SYS(accept4), SCMP_SYS(ptrace), SCMP_SYS(process_vm_readv),
      SCMP_SYS(process_vm_writev), SCMP_SYS(kcmp), SCMP_SYS(pidfd_getfd), SCMP_SYS(perf_event_open),
      SCMP_SYS(bpf), SCMP_SYS(userfaultfd), SCMP_SYS(io_uring_setup), SCMP_SYS(io_uring_enter),
      SCMP_SYS(io_uring_register), SCMP_SYS(keyctl), SCMP_SYS(add_key), SCMP_SYS(request_key), SCMP_SYS(mount),
      SCMP_SYS(umount2), SCMP_SYS(unshare), SCMP_SYS(setns), SCMP_SYS(pivot_root), SCMP_SYS(chroot),
      SCMP_SYS(open_by_handle_at), SCMP_SYS(name_to_handle_at), SCMP_SYS(init_module), SCMP_SYS(finit_module),
      SCMP_SYS(kexec_load), SCMP_SYS(personality), SCMP_SYS(execveat),
      // The new mount API.
      SCMP_SYS(fsopen), SCMP_SYS(fsconfig), SCMP_SYS(fsmount), SCMP_SYS(fspick), SCMP_SYS(move_mount),
      SCMP_SYS(open_tree), SCMP_SYS(mount_setattr),
      // Leaving the process group (set before the filter): whatever the
      // child starts stays in it, and dies with it when the extraction
      // ends (a setsid'd grandchild outlived it).
      SCMP_SYS(setsid), SCMP_SYS(setpgid),
      // Modes, owners, times and attributes of files airlockd's user owns
      // (rag.db, the state database): Landlock does not restrict these.
      SCMP_SYS(chmod), SCMP_SYS(fchmod), SCMP_SYS(fchmodat), SCMP_SYS(chown), SCMP_SYS(fchown),
      SCMP_SYS(lchown), SCMP_SYS(fchownat), SCMP_SYS(truncate), SCMP_SYS(utime), SCMP_SYS(utimes),
      SCMP_SYS(utimensat), SCMP_SYS(futimesat), SCMP_SYS(setxattr), SCMP_SYS(lsetxattr), SCMP_SYS(fsetxattr),
      SCMP_SYS(removexattr), SCMP_SYS(lremovexattr), SCMP_SYS(fremovexattr),
      // Signals by other routes than kill and tgkill (below).
      SCMP_SYS(tkill), SCMP_SYS(pidfd_send_signal), SCMP_SYS(rt_sigqueueinfo), SCMP_SYS(rt_tgsigqueueinfo)};
  auto add = [&](int nr, std::uint32_t action, unsigned n_args, const scmp_arg_cmp* args) {
    if (nr < 0) return true;  // not a call on this architecture
    if (seccomp_rule_add_array(ctx, action, nr, n_args, args) == 0) return true;
    p.error = "seccomp_rule_add failed for call " + std::to_string(nr);
    seccomp_release(ctx);
    return false;
  };
  for (int nr : denied)
    if (!add(nr, SCMP_ACT_ERRNO(EPERM), 0, nullptr)) return p;
  // Signals to airlockd (it runs as the same user; the filter is built
  // once, in airlockd, so getpid() is its pid), and kill() to any process
  // group or to every process (a negative pid). The child may still
  // signal itself and its own group (raise, abort, kill 0). Compared on
  // the low 32 bits: pid_t is an int.
  const scmp_datum_t self = static_cast<std::uint32_t>(::getpid());
  const scmp_arg_cmp to_airlockd[] = {SCMP_A0(SCMP_CMP_MASKED_EQ, 0xFFFFFFFFu, self)};
  const scmp_arg_cmp negative[] = {SCMP_A0(SCMP_CMP_MASKED_EQ, 0x80000000u, 0x80000000u)};
  if (!add(SCMP_SYS(tgkill), SCMP_ACT_ERRNO(EPERM), 1, to_airlockd) ||
      !add(SCMP_SYS(kill), SCMP_ACT_ERRNO(EPERM), 1, to_airlockd) ||
      !add(SCMP_SYS(kill), SCMP_ACT_ERRNO(EPERM), 1, negative))
    return p;
  // clone with new namespaces; clone3 hides its flags in memory, so it
  // reports ENOSYS and the C library falls back to clone.
  for (scmp_datum_t flag : {static_cast<scmp_datum_t>(CLONE_NEWNS), static_cast<scmp_datum_t>(CLONE_NEWCGROUP),
                            static_cast<scmp_datum_t>(CLONE_NEWUTS), static_cast<scmp_datum_t>(CLONE_NEWIPC),
                            static_cast<scmp_datum_t>(CLONE_NEWUSER), static_cast<scmp_datum_t>(CLONE_NEWPID),
                            static_cast<scmp_datum_t>(CLONE_NEWNET)}) {
    const scmp_arg_cmp with_flag[] = {SCMP_A0(SCMP_CMP_MASKED_EQ, flag, flag)};
    if (!add(SCMP_SYS(clone), SCMP_ACT_ERRNO(EPERM), 1, with_flag)) return p;
  }
  if (!add(SCMP_SYS(clone3), SCMP_ACT_ERRNO(ENOSYS), 0, nullptr)) return p;
  if (!allow_processes) {
    const scmp_arg_cmp not_thread[] = {SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, 0)};
    if (!add(SCMP_SYS(clone), SCMP_ACT_ERRNO(EPERM), 1, not_thread) ||
        !add(SCMP_SYS(fork), SCMP_ACT_ERRNO(EPERM), 0, nullptr) ||
        !add(SCMP_SYS(vfork), SCMP_ACT_ERRNO(EPERM), 0, nullptr))
      return p;
  }
  const int fd = ::memfd_create("airlock-seccomp", MFD_CLOEXEC);
  if (fd < 0 || seccomp_export_bpf(ctx, fd) != 0) {
    p.error = "cannot export the seccomp program";
  } else {
    const off_t n = ::lseek(fd, 0, SEEK_END);
    p.code.resize(static_cast<std::size_t>(n > 0 ? n : 0) / sizeof(sock_filter));
    if (n <= 0 || ::pread(fd, p.code.data(), p.code.size() * sizeof(sock_filter), 0) != n) {
      p.code.clear();
      p.error = "cannot read the seccomp program back";
    }
  }
  if (fd >= 0) ::close(fd);
  seccomp_release(ctx);
  return p;
}

const SeccompProgram& child_seccomp() {
  // Each built on first use: the product never asks for the second.
  if (g_allow_child_processes.load()) {
    static const SeccompProgram with_processes = build_child_seccomp(true);
    return with_processes;
  }
  static const SeccompProgram without_processes = build_child_seccomp(false);
  return without_processes;
}

// Landlock (Linux 5.13+): the child may read and execute under /usr (the
// program, its libraries, locale and poppler data) and read a few files in
// /etc and /dev; nothing else, and it may write nothing: not airlockd's
// state, rag.db, the audit log or /etc/airlock. With ABI 4 TCP is denied
// too, with ABI 6 signals to processes outside the sandbox (airlockd).
// Where the kernel or the service's system call filter lacks Landlock, the
// child runs without it (landlock_abi() says so for the log).
constexpr std::uint64_t kFsRead = LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR;
constexpr std::uint64_t kFsExec = LANDLOCK_ACCESS_FS_EXECUTE;
constexpr std::uint64_t kFsFileRights = LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE |
                                        LANDLOCK_ACCESS_FS_READ_FILE | (1ULL << 14) /* TRUNCATE, ABI 3 */ |
                                        (1ULL << 15) /* IOCTL_DEV, ABI 5 */;

struct LandlockAttr {  // struct landlock_ruleset_attr as of ABI 6; the size passed follows the ABI
  std::uint64_t handled_access_fs;
  std::uint64_t handled_access_net;
  std::uint64_t scoped;
};

std::uint64_t handled_fs(int abi) {
  std::uint64_t fs = (1ULL << 13) - 1;  // ABI 1: EXECUTE .. MAKE_SYM
  if (abi >= 2) fs |= 1ULL << 13;       // REFER
  if (abi >= 3) fs |= 1ULL << 14;       // TRUNCATE
  if (abi >= 5) fs |= 1ULL << 15;       // IOCTL_DEV
  return fs;
}

struct LandlockPath {
  const char* path;
  std::uint64_t rights;
};
constexpr LandlockPath kLandlockPaths[] = {
    {"/usr", kFsRead | kFsExec},        {"/lib", kFsRead | kFsExec},
    {"/lib64", kFsRead | kFsExec},      {"/bin", kFsRead | kFsExec},
    {"/etc/ld.so.cache", kFsRead},      {"/etc/fonts", kFsRead},
    {"/etc/localtime", kFsRead},
    {"/dev/null", kFsRead | LANDLOCK_ACCESS_FS_WRITE_FILE}, {"/dev/urandom", kFsRead},
    {"/proc/self", kFsRead},  // opened before exec: the child's own /proc/PID (some libraries read maps)
};

// Child side, async-signal-safe. Returns 0, or an errno for the status pipe.
int apply_landlock(int abi, const char* program_dir) {
  if (abi < 1) return 0;  // not available: runs without (logged at start)
  LandlockAttr attr{handled_fs(abi), abi >= 4 ? 3ULL /* BIND_TCP | CONNECT_TCP */ : 0,
                    abi >= 6 ? 3ULL /* ABSTRACT_UNIX_SOCKET | SIGNAL */ : 0};
  const std::size_t attr_size = abi >= 6 ? 24 : abi >= 4 ? 16 : 8;
  const int ruleset = static_cast<int>(::syscall(SYS_landlock_create_ruleset, &attr, attr_size, 0));
  if (ruleset < 0) return errno;
  auto allow = [&](const char* path, std::uint64_t rights) {
    const int fd = ::open(path, O_PATH | O_CLOEXEC);
    if (fd < 0) return;  // absent here (e.g. /lib64 on arm64)
    struct stat st {};
    if (::fstat(fd, &st) == 0) {
      if (!S_ISDIR(st.st_mode)) rights &= kFsFileRights;
      landlock_path_beneath_attr rule{rights & attr.handled_access_fs, fd};
      (void)::syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &rule, 0);
    }
    ::close(fd);
  };
  for (const LandlockPath& p : kLandlockPaths) allow(p.path, p.rights);
  if (program_dir != nullptr) allow(program_dir, kFsRead | kFsExec);  // a pdftotext outside /usr
  const long r = ::syscall(SYS_landlock_restrict_self, ruleset, 0);
  const int e = errno;
  ::close(ruleset);
  return r == 0 ? 0 : e;
}

// The Landlock ABI this process can use (0: none; the child inherits the
// same kernel and system call filter).
std::atomic<int> g_landlock_abi_limit{INT_MAX};  // lowered by tests only

int landlock_abi() {
  static const int abi = [] {
    const long v = ::syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION);
    return v > 0 ? static_cast<int>(v) : 0;
  }();
  return std::min(abi, g_landlock_abi_limit.load());
}

// Child side: reports errno on the status pipe and exits.
[[noreturn]] void fail(int status_fd) {
  const int e = errno;
  (void)!::write(status_fd, &e, sizeof e);
  ::_exit(127);
}

// In the child between fork and exec: async-signal-safe calls only (no
// allocation, no locks). Reports a failure as an errno on status_fd.
[[noreturn]] void exec_child(pid_t parent, int in_fd, int out_fd, int err_fd, int status_fd, const char* path,
                             char* const argv[], char* const envp[], const ChildLimits& limits,
                             const sock_fprog* seccomp_program, int abi, const char* program_dir) {
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
  if (const int e = apply_landlock(abi, program_dir); e != 0) {
    errno = e;
    fail(3);
  }
  // Last: from here on the denied calls fail, and execve is still allowed.
  if (::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, seccomp_program) != 0) fail(3);
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
  const SeccompProgram& filter = child_seccomp();
  if (filter.code.empty()) return internal_error("sandbox: " + filter.error);
  const sock_fprog seccomp_program{static_cast<unsigned short>(filter.code.size()),
                                   const_cast<sock_filter*>(filter.code.data())};
  const int abi = landlock_abi();
  const std::string program_dir = argv[0].substr(0, std::max<std::size_t>(argv[0].rfind('/'), 1));

  Fd in_r, in_w, out_r, out_w, err_r, err_w, status_r, status_w;
  if (!make_pipe(&in_r, &in_w) || !make_pipe(&out_r, &out_w) || !make_pipe(&err_r, &err_w) ||
      !make_pipe(&status_r, &status_w))
    return io_error("pipe", errno);

  SigpipeBlock sigpipe_block;
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return io_error("fork", errno);
  if (pid == 0)
    exec_child(parent, in_r.get(), out_w.get(), err_w.get(), status_w.get(), args[0], args.data(), envp, limits,
               &seccomp_program, abi, program_dir == "/" ? nullptr : program_dir.c_str());
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

void limit_landlock_abi_for_testing(int abi) { g_landlock_abi_limit.store(abi); }

void allow_child_processes_for_testing(bool allow) { g_allow_child_processes.store(allow); }

std::string sandbox_summary_line() {
  const SeccompProgram& filter = child_seccomp();
  std::string out = filter.code.empty() ? "system call filter UNAVAILABLE (" + filter.error + "): PDFs are refused"
                                        : "system call filter on (no sockets, no tracing, no new processes)";
  const int abi = landlock_abi();
  out += abi > 0 ? ", Landlock ABI " + std::to_string(abi) + " on (reads /usr and a few /etc files, writes nothing)"
                 : ", Landlock not available (kernel < 5.13, disabled, or blocked by the service's system call "
                   "filter): the extractor can read what airlockd's user can";
  return out + ", rlimits on";
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

namespace airlock::rag {
std::string pdf_sandbox_summary() { return internal::sandbox_summary_line(); }
}  // namespace airlock::rag
