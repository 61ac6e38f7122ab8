// Process: fork, run, report, reap.
#include "shmq/process.hpp"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <iostream>

#include "shmq/detail/demangle.hpp"
#include "shmq/errors.hpp"

namespace shmq {

namespace {

// This process's name for current_process(); a child sets it to its Process's name.
std::string& own_name() {
  static std::string name = "MainProcess";
  return name;
}

// Python numbers unnamed processes Process-1, Process-2, ... within each parent.
std::string default_name() {
  static std::atomic<unsigned> made{0};
  return "Process-" + std::to_string(made.fetch_add(1) + 1);
}

// Both iostreams and stdio: whatever is buffered before a fork would otherwise be printed twice.
void flush_output() {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
}

std::string quoted(const std::string& name) { return "'" + name + "'"; }

// A daemon child should not outlive its parent. PR_SET_PDEATHSIG covers a parent that dies from now
// on; the getppid() check covers one that died before the prctl.
void follow_parent_death(pid_t parent) {
  if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent) raise(SIGTERM);
}

[[noreturn]] void run_child(const std::string& name, bool daemon, pid_t parent,
                            const std::function<int()>& target) {
  own_name() = name;
  if (daemon) follow_parent_death(parent);
  int code = 1;
  try {
    code = target();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "Process %s (pid %d): %s: %s\n", name.c_str(), getpid(),
                 detail::current_exception_type_name().c_str(), e.what());
  } catch (...) {
    std::fprintf(stderr, "Process %s (pid %d): an exception of type %s\n", name.c_str(), getpid(),
                 detail::current_exception_type_name().c_str());
  }
  flush_output();
  _exit(code & 0xff);  // not exit(): the parent's atexit handlers and static destructors are theirs
}

}  // namespace

ProcessInfo current_process() { return {own_name(), getpid(), getppid()}; }

Process::Process(ProcessOptions options, Target target)
    : name_(options.name.empty() ? default_name() : std::move(options.name)),
      daemon_(options.daemon),
      target_(std::move(target)) {}

Process::Process(Process&& other) noexcept
    : name_(std::move(other.name_)),
      daemon_(other.daemon_),
      target_(std::move(other.target_)),
      pid_(std::exchange(other.pid_, 0)),
      pidfd_(std::exchange(other.pidfd_, -1)),
      exitcode_(std::exchange(other.exitcode_, std::nullopt)) {}

Process& Process::operator=(Process&& other) noexcept {
  // The child this object had goes with `old`, whose destructor joins or terminates it.
  Process old(std::move(*this));
  name_ = std::move(other.name_);
  daemon_ = other.daemon_;
  target_ = std::move(other.target_);
  pid_ = std::exchange(other.pid_, 0);
  pidfd_ = std::exchange(other.pidfd_, -1);
  exitcode_ = std::exchange(other.exitcode_, std::nullopt);
  return *this;
}

Process::~Process() {
  if (pid_ == 0 || exitcode_) return;
  try {
    if (daemon_) {
      terminate();
      if (!join(std::chrono::seconds(1))) {
        kill();
        join();
      }
    } else {
      join();
    }
  } catch (...) {
    // A destructor must not throw; join() only throws for a Process never started.
  }
}

void Process::start() {
  if (pid_ != 0) throw Error("shmq: process " + quoted(name_) + " was already started");
  flush_output();
  const pid_t parent = getpid();
  // terminate() must end the child, but a SIGTERM handler inherited from the parent (a test
  // runner's, an application's shutdown hook) would run in its place. The child resets it before
  // SIGTERM can arrive: it is blocked across the fork, and unblocked in the child only after the
  // reset (a terminate() sent at once then meets the default action). fn may install its own.
  sigset_t term, saved;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &term, &saved);
  const pid_t pid = fork();
  if (pid == 0) {
    ::signal(SIGTERM, SIG_DFL);
    pthread_sigmask(SIG_SETMASK, &saved, nullptr);
    run_child(name_, daemon_, parent, target_);
  }
  const int fork_error = errno;
  pthread_sigmask(SIG_SETMASK, &saved, nullptr);
  if (pid < 0) {
    throw Error("shmq: cannot start process " + quoted(name_) + ": fork failed: " + std::strerror(fork_error));
  }
  // The pidfd lets join(timeout) poll for the child's end and makes signals safe from pid reuse.
  // pidfd_open sets close-on-exec.
  const int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0 && errno == ESRCH) {
    // Only with SIGCHLD ignored: the child has already ended and the kernel reaped it, discarding
    // its status (see exitcode()). Never signal that pid again: it may be someone else's now.
    pid_ = pid;
    exitcode_ = 0;
    return;
  }
  if (fd < 0) {
    const int err = errno;
    ::kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    throw Error("shmq: cannot start process " + quoted(name_) + ": pidfd_open failed: " + std::strerror(err));
  }
  pid_ = pid;
  pidfd_ = fd;
}

void Process::join() { join_until(detail::Deadline::never()); }

bool Process::join_until(const detail::Deadline& deadline) {
  if (pid_ == 0) throw Error("shmq: process " + quoted(name_) + " was never started: cannot join it");
  for (;;) {
    if (reap()) return true;
    if (deadline.expired()) return false;
    pollfd ready{pidfd_, POLLIN, 0};
    if (deadline.is_never()) {
      ppoll(&ready, 1, nullptr, nullptr);
    } else {
      const auto left = std::max(deadline.at() - detail::Deadline::clock::now(),
                                 detail::Deadline::clock::duration::zero());
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
      const timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
      ppoll(&ready, 1, &ts, nullptr);
    }
    // Woken by the child's end, a signal (EINTR) or the deadline: look again.
  }
}

bool Process::reap() {
  if (exitcode_) return true;
  int status = 0;
  pid_t r;
  do {
    r = waitpid(pid_, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == 0) return false;
  if (r == pid_) {
    exitcode_ = WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
  } else {
    // ECHILD: SIGCHLD is ignored, so the kernel reaped the child itself and discarded its status;
    // all that is known is that it has ended (documented at exitcode()).
    exitcode_ = 0;
  }
  close(std::exchange(pidfd_, -1));
  return true;
}

bool Process::is_alive() { return pid_ != 0 && !reap(); }

std::optional<int> Process::exitcode() {
  if (pid_ != 0) reap();
  return exitcode_;
}

void Process::terminate() { signal(SIGTERM); }
void Process::kill() { signal(SIGKILL); }

void Process::signal(int sig) {
  // Through the pidfd: never a stranger that has been given the child's pid.
  if (pidfd_ >= 0) syscall(SYS_pidfd_send_signal, pidfd_, sig, nullptr, 0);
}

}  // namespace shmq
