// shmq::Process: Python's multiprocessing.Process, by fork().
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "shmq/detail/deadline.hpp"
#include "shmq/detail/robust_mutex.hpp"
#include "shmq/detail/spawn.hpp"
#include "shmq/detail/wait_core.hpp"
#include "shmq/errors.hpp"

namespace shmq {

struct ProcessOptions {
  // Shown in error reports and by current_process(); "Process-N" when empty, as in Python. (Every
  // field has an initialiser, so designated initialisers may skip any without -Wextra warnings.)
  std::string name{};
  // A daemon child is terminated when its Process handle goes away, and gets SIGTERM if the process
  // that started it dies (so it never outlives a crashed parent) — not when the thread that started
  // it ends; a non-daemon one is joined.
  bool daemon = false;
};

// What current_process() reports: the running process's Process name ("MainProcess" outside any
// shmq child), its pid and its parent's pid.
struct ProcessInfo {
  std::string name;
  pid_t pid;
  pid_t parent_pid;
};
ProcessInfo current_process();

// Python's parent_process(): the process that started this one with a Process (a pool worker: the
// process that made its pool), as it was named then; empty in a process shmq did not start. Its
// parent_pid is 0 (not known here). Never blocks.
std::optional<ProcessInfo> parent_process();

// Python's active_children(): the children this process started with Process::start() that are
// still running (pool managers and workers are not among them). Ended children are left for their
// Process to reap. Never blocks; thread-safe.
std::vector<ProcessInfo> active_children();

// Python's cpu_count(): the CPUs online in the system (not those this process may run on, which
// a Pool without a processes count uses). At least 1.
std::size_t cpu_count();

namespace detail {
// In a child shmq forked to run the program's code: what current_process() and parent_process()
// report from now on; forgets the parent's children.
void set_process_identity(std::string name, ProcessInfo parent);
}  // namespace detail

// A child process that runs fn(args...) and nothing else of the parent.
//
// The child starts with SIGTERM at its default action, so terminate() ends it; other signal
// dispositions are inherited, as fork() does. A daemon child also gets a handler for SIGRTMAX: the
// kernel sends it when a thread of the parent ends, and it raises SIGTERM only if the whole parent
// process has ended (fn should leave SIGRTMAX alone; a blocking call in fn may return EINTR then).
//
// The arguments are copied when the Process is made, and the child sees those copies (fork copies
// memory): a shmq::Queue handle passed as an argument is the same queue in the child. The child
// ends with _exit once fn returns: the parent's atexit handlers and static destructors do not run
// twice. Both sides flush stdio around the fork, so nothing buffered is printed twice.
//
// exitcode(): empty while running or before start(); 0 when fn returns; the value modulo 256 when
// fn returns an int; 1 when fn throws (the child prints the exception's type and what() to stderr,
// prefixed with its name, as Python prints a traceback); -N when a signal N ended the child. The
// child records its code in shared memory before it exits, so the code stays known even if the
// program's SIGCHLD disposition lets someone else collect the child's status (SIG_IGN, a handler
// that reaps); a child ended by a signal whose status was collected so throws ExitStatusLost.
//
// Threads: fork() copies only the calling thread. If the parent runs other threads, the child may
// use shmq queues, malloc and stdio (glibc keeps them usable across fork), but must not take locks
// that the parent's other threads may have been holding at the fork (their own mutexes), nor
// expect those threads to exist in the child.
//
// A Process is owned by the one object that started it: movable, not copyable. Not thread-safe: use
// one Process object from one thread at a time.
class Process {
 public:
  template <class Fn, class... Args,
            class = std::enable_if_t<!std::is_same_v<std::decay_t<Fn>, ProcessOptions>>>
  explicit Process(Fn&& fn, Args&&... args)
      : Process(ProcessOptions{}, std::forward<Fn>(fn), std::forward<Args>(args)...) {}

  template <class Fn, class... Args>
  Process(ProcessOptions options, Fn&& fn, Args&&... args)
      : Process(std::move(options),
                make_target(std::forward<Fn>(fn), std::forward<Args>(args)...)) {}

  Process(Process&& other) noexcept;
  Process& operator=(Process&& other) noexcept;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  // A started child that was not joined: a daemon is terminated (SIGTERM, then SIGKILL after a
  // second) and reaped; a non-daemon is joined, as Python does at exit. Never leaves a zombie.
  ~Process();

  // Forks the child. Throws Error if already started, or if fork fails (EAGAIN, ENOMEM), leaving
  // this Process as it was.
  void start();

  // Waits for the child to end and reaps it. Throws Error if not started.
  void join();
  // As join(), for at most `timeout`; returns whether the child has ended.
  template <class Rep, class Period>
  bool join(const std::chrono::duration<Rep, Period>& timeout) {
    return join_until(detail::Deadline::after(timeout));
  }

  // Started and not yet ended (reaps the child if it has just ended).
  bool is_alive();
  // See the class comment; throws ExitStatusLost when the code is unknown.
  std::optional<int> exitcode();
  // The child's pid; 0 before start().
  pid_t pid() const noexcept { return child_.pid(); }
  const std::string& name() const noexcept { return name_; }
  bool daemon() const noexcept { return daemon_; }

  // Sends SIGTERM / SIGKILL to a running child; does nothing if it is not running.
  void terminate();
  void kill();

  // Python's sentinel: a descriptor (a pidfd, close-on-exec) that becomes readable (POLLIN) when
  // the child ends, for poll/select/epoll; it stays valid, and readable, after the child is
  // reaped, until close() or the Process's destruction. Throws InvalidArgument before start() or
  // after close().
  int sentinel() const;
  // Python's close(): releases the sentinel and the page the child marks its life on. Throws
  // InvalidArgument if the child is still running (nothing released then); a Process never started
  // can be closed. Idempotent. exitcode(), is_alive() and join() keep working afterwards.
  void close();

  // For shmq::wait and Notifier: ready once the child has ended (wait.hpp). Throws InvalidArgument
  // before start() or after close().
  friend detail::WaitItem wait_item(const Process& p);

 private:
  using Target = std::function<int()>;

  Process(ProcessOptions options, Target target);

  // Wraps fn and copies of args into a target that returns the child's exit code.
  template <class Fn, class... Args>
  static Target make_target(Fn&& fn, Args&&... args) {
    return [fn = std::forward<Fn>(fn),
            args = std::make_tuple(std::forward<Args>(args)...)]() mutable -> int {
      using Result = decltype(std::apply(fn, args));
      if constexpr (std::is_same_v<Result, int>) {
        return std::apply(fn, args);
      } else {
        std::apply(fn, args);
        return 0;
      }
    };
  }

  bool join_until(const detail::Deadline& deadline);

  static const detail::WaitOps kWaitOps;  // wait_item's; src/process.cpp

  std::string name_;
  bool daemon_ = false;
  Target target_;
  detail::Child child_;  // not started while its pid is 0
  // Made by start(), before the fork, in a MAP_SHARED page: the child takes this robust lock first
  // thing and holds it until it dies, so that the kernel, which marks a dead holder's lock
  // FUTEX_OWNER_DIED and wakes a waiter, tells a sleeping wait() of the child's end however it
  // ends (SIGKILL included). Unmapped by close().
  detail::RobustMutex* life_sign_ = nullptr;
  int sentinel_ = -1;  // our own copy of the child's pidfd; -1 before start() and after close()
  bool closed_ = false;
};

}  // namespace shmq
