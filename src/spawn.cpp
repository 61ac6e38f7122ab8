// spawn: fork a child and set it up the same way for every kind of shmq child.
//
// Parent death. The kernel's PR_SET_PDEATHSIG fires when the THREAD that forked the child ends,
// not the process: a Process, Pool or Manager made on a std::thread that then ends would lose its
// child while the program lives. So the child asks the kernel for a private relay signal instead,
// and its handler tells the two cases apart with getppid(): a dying thread hands the child to
// another thread of the same process (getppid() unchanged: nothing to do), a dying process hands it
// to init or a subreaper (getppid() changed: raise the signal the caller asked for). The relay is
// asked for after the fork; a parent that died before that is caught by the same getppid() test.
#include "shmq/detail/spawn.hpp"

#include <poll.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <new>

#include "shmq/errors.hpp"

namespace shmq::detail {

namespace {

// waitid's idtype for a pidfd (Linux 5.4); glibc 2.36's <sys/wait.h> does not name it yet.
constexpr idtype_t kByPidfd = static_cast<idtype_t>(3);

// What the child's recorded word holds until body returns (exit codes are 0..255).
constexpr std::int32_t kNothingRecorded = -1;

// The signal the kernel sends on a parent thread's death; the last real-time signal, which glibc
// keeps free for programs (documented in the README as taken in a child that asked for it).
int relay_signal() {
  return SIGRTMAX;
}

// Set in the child before the relay handler can run; read only by it.
pid_t g_parent = 0;
int g_on_parent_death = 0;

extern "C" void relay_parent_death(int) {
  const int saved_errno = errno;
  if (getppid() != g_parent) kill(getpid(), g_on_parent_death);
  errno = saved_errno;
}

// Both iostreams and stdio: whatever is buffered before a fork would otherwise be printed twice.
void flush_output() {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
}

void follow_parent_death(int sig, bool forker_is_only_thread, pid_t parent) {
  if (forker_is_only_thread) {
    if (prctl(PR_SET_PDEATHSIG, sig) != 0 || getppid() != parent) kill(getpid(), sig);
    return;
  }
  g_parent = parent;
  g_on_parent_death = sig;
  struct sigaction relay {};
  relay.sa_handler = relay_parent_death;
  relay.sa_flags = SA_RESTART;
  sigemptyset(&relay.sa_mask);
  sigaction(relay_signal(), &relay, nullptr);
  // Every signal is blocked here: a parent that already died is acted on once the mask is set.
  if (prctl(PR_SET_PDEATHSIG, relay_signal()) != 0 || getppid() != parent) kill(getpid(), sig);
}

[[noreturn]] void run_child(const SpawnOptions& options, pid_t parent, const sigset_t& callers_mask,
                            std::atomic<std::int32_t>* recorded, const std::function<int()>& body) {
  for (const auto& d : options.dispositions) sigaction(d.signal, &d.action, nullptr);
  if (options.own_process_group) setpgid(0, 0);
  if (options.on_parent_death != 0) {
    follow_parent_death(options.on_parent_death, options.forker_is_only_thread, parent);
  }
  sigset_t mask = options.mask ? *options.mask : callers_mask;
  for (const int signal : options.unblocked) sigdelset(&mask, signal);
  if (options.on_parent_death != 0 && !options.forker_is_only_thread) {
    sigdelset(&mask, relay_signal());
  }
  pthread_sigmask(SIG_SETMASK, &mask, nullptr);
  int code = 1;
  try {
    code = body() & 0xff;
  } catch (...) {
    // Never unwind out of here: the frames above are the parent's, and would run a second time.
    std::fputs("shmq: a child's body threw; it exits with code 1\n", stderr);
  }
  // Flushed before the code is recorded: a flush can block (a full pipe), and a child ended there
  // by a signal must not be reported as having returned.
  flush_output();
  recorded->store(code);
  _exit(code);  // not exit(): the parent's atexit handlers and static destructors are theirs
}

Disposition with_handler(int signal, void (*handler)(int)) {
  Disposition d{signal, {}};
  d.action.sa_handler = handler;
  sigemptyset(&d.action.sa_mask);
  return d;
}

// Whether pidfd names a child of this process, ended or not (false once someone has reaped it).
bool is_own_child(int pidfd) {
  siginfo_t info{};
  return waitid(kByPidfd, static_cast<id_t>(pidfd), &info, WEXITED | WNOHANG | WNOWAIT) == 0;
}

int pidfd_open(pid_t pid) {
  return static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
}

}  // namespace

Disposition Disposition::reset(int signal) {
  return with_handler(signal, SIG_DFL);
}
Disposition Disposition::ignore(int signal) {
  return with_handler(signal, SIG_IGN);
}
Disposition Disposition::current(int signal) {
  Disposition d{signal, {}};
  sigaction(signal, nullptr, &d.action);
  return d;
}

Child Child::spawn(const std::string& what, const SpawnOptions& options,
                   const std::function<int()>& body) {
  void* word = mmap(nullptr, sizeof(std::atomic<std::int32_t>), PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (word == MAP_FAILED) {
    throw Error("shmq: cannot start " + what + ": mmap failed: " + std::strerror(errno));
  }
  auto* recorded = new (word) std::atomic<std::int32_t>(kNothingRecorded);
  flush_output();
  const pid_t parent = getpid();
  sigset_t all, callers_mask;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &callers_mask);
  const pid_t pid = fork();
  if (pid == 0) run_child(options, parent, callers_mask, recorded, body);
  const int fork_error = errno;
  pthread_sigmask(SIG_SETMASK, &callers_mask, nullptr);
  if (pid < 0) {
    munmap(word, sizeof(std::atomic<std::int32_t>));
    throw Error("shmq: cannot start " + what + ": fork failed: " + std::strerror(fork_error));
  }
  // Both sides move the child to its group, as shells do: whichever runs first, the child is in
  // its group by the time spawn returns.
  if (options.own_process_group) setpgid(pid, pid);
  Child child(pid, pidfd_open(pid), recorded);
  if (child.pidfd_ >= 0 && is_own_child(child.pidfd_)) return child;
  // The child has already ended and someone else reaped it (SIGCHLD ignored, or a reaping SIGCHLD
  // handler on another thread): its pid may be a stranger's now, and a pidfd opened on it is not
  // our child's. Never signal it; what it recorded is all there is to know.
  if (child.pidfd_ >= 0 || errno == ESRCH) {
    child.finish(std::nullopt);
    return child;
  }
  const int err = errno;
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  child.finish(std::nullopt);
  throw Error("shmq: cannot start " + what + ": pidfd_open failed: " + std::strerror(err));
}

Child::Child(Child&& other) noexcept
    : pid_(std::exchange(other.pid_, 0)),
      pidfd_(std::exchange(other.pidfd_, -1)),
      recorded_(std::exchange(other.recorded_, nullptr)),
      ended_(std::exchange(other.ended_, false)),
      status_(std::exchange(other.status_, std::nullopt)) {}

Child& Child::operator=(Child&& other) noexcept {
  Child old(std::move(*this));  // the child this object had is killed and reaped with `old`
  pid_ = std::exchange(other.pid_, 0);
  pidfd_ = std::exchange(other.pidfd_, -1);
  recorded_ = std::exchange(other.recorded_, nullptr);
  ended_ = std::exchange(other.ended_, false);
  status_ = std::exchange(other.status_, std::nullopt);
  return *this;
}

Child::~Child() {
  if (pid_ == 0 || ended_) return;
  signal(SIGKILL);
  wait_until(Deadline::never());
}

bool Child::reap() {
  if (ended_ || pid_ == 0) return ended_;
  siginfo_t info{};
  int r;
  do {
    r = waitid(kByPidfd, static_cast<id_t>(pidfd_), &info, WEXITED | WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == 0 && info.si_pid == 0) return false;  // still running
  if (r == 0) {
    finish(info.si_code == CLD_EXITED ? W_EXITCODE(info.si_status, 0)
                                      : W_EXITCODE(0, info.si_status));
  } else {
    // ECHILD: it has ended and someone else collected its status.
    finish(std::nullopt);
  }
  return true;
}

bool Child::wait_until(const Deadline& deadline) {
  for (;;) {
    if (reap()) return true;
    if (deadline.expired()) return false;
    pollfd ready{pidfd_, POLLIN, 0};
    const timespec left = deadline.is_never() ? timespec{} : deadline.left_timespec();
    ppoll(&ready, 1, deadline.is_never() ? nullptr : &left, nullptr);
    // Woken by the child's end, a signal (EINTR) or the deadline: look again.
  }
}

void Child::signal(int sig) noexcept {
  if (pidfd_ >= 0) syscall(SYS_pidfd_send_signal, pidfd_, sig, nullptr, 0);
}

void Child::finish(std::optional<int> status) noexcept {
  if (!status && recorded_ != nullptr) {
    const std::int32_t code = recorded_->load();
    if (code != kNothingRecorded) status = W_EXITCODE(code, 0);
  }
  status_ = status;
  ended_ = true;
  if (pidfd_ >= 0) close(std::exchange(pidfd_, -1));
  if (recorded_ != nullptr)
    munmap(std::exchange(recorded_, nullptr), sizeof(std::atomic<std::int32_t>));
}

int open_own_pidfd(const std::string& what) {
  const int fd = pidfd_open(getpid());
  if (fd < 0)
    throw Error("shmq: cannot start " + what + ": pidfd_open failed: " + std::strerror(errno));
  return fd;
}

}  // namespace shmq::detail
