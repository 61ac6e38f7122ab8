// The one place shmq forks: every child (a Process, the pool's manager and workers, a Manager's
// guardian) is made and set up here, and watched through a pidfd.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "shmq/detail/deadline.hpp"

namespace shmq::detail {

// A disposition the child sets for one signal before any signal can reach it. fork() keeps the
// parent's handlers and SIG_IGNs; a child that must not run the program's handler for `signal`
// (or must see its children's deaths despite an ignored SIGCHLD) says so here.
struct Disposition {
  int signal;
  struct sigaction action;

  static Disposition reset(int signal);    // SIG_DFL
  static Disposition ignore(int signal);   // SIG_IGN
  static Disposition current(int signal);  // what this process has now, to hand on unchanged
};

// What a terminal sends to its foreground process group: Ctrl-C, Ctrl-\, Ctrl-Z, a background
// read or write, a hangup.
inline constexpr int kTerminalSignals[] = {SIGINT, SIGQUIT, SIGTSTP, SIGTTIN, SIGTTOU, SIGHUP};

struct SpawnOptions {
  // Set in the child, in this order, while every signal is blocked.
  std::vector<Disposition> dispositions{};
  // The signal mask the child runs with; the caller's when empty.
  std::optional<sigset_t> mask{};
  // Taken out of that mask: signals the child must receive even from a program that blocks
  // everything and waits with sigwait or a signalfd (the relay of on_parent_death always is).
  std::vector<int> unblocked{};
  // If nonzero, this signal is sent to the child when the PROCESS that forked it ends — not when
  // the thread that forked it ends, which is when the kernel's PR_SET_PDEATHSIG fires. Also sent
  // at once if that process ended before the child could ask for it.
  int on_parent_death = 0;
  // The forking process runs no thread but the forking one, for good (the pool's manager). The
  // kernel's PR_SET_PDEATHSIG is then exactly the process's death and is asked for directly: a
  // signal the kernel sends, which no handler, mask or sanitizer in the child can hold up, where
  // the relay needs its handler to run.
  bool forker_is_only_thread = false;
  // The child leaves the caller's process group for one of its own, out of reach of the signals a
  // terminal sends to its foreground group (Ctrl-C, Ctrl-\, Ctrl-Z, a hangup).
  bool own_process_group = false;
};

// A forked child, owned by whoever spawned it: movable, not copyable; not thread-safe.
// Destroying one that has not been reaped kills it (SIGKILL) and reaps it: never a zombie.
class Child {
 public:
  Child() = default;
  Child(Child&& other) noexcept;
  Child& operator=(Child&& other) noexcept;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child();

  // Forks a child that runs body() and ends with _exit(body's value & 0xff) — never the parent's
  // atexit handlers or static destructors. Before the fork, stdio is flushed (nothing buffered is
  // printed twice) and every signal is blocked in the calling thread, so no inherited handler can
  // run in the child before `options` are applied. A body that throws ends the child with code 1.
  // Throws Error (naming `what`) if fork or pidfd_open fails.
  static Child spawn(const std::string& what, const SpawnOptions& options,
                     const std::function<int()>& body);

  pid_t pid() const noexcept { return pid_; }
  // Readable (POLLIN) once the child has ended; -1 once reaped.
  int pidfd() const noexcept { return pidfd_; }
  // Collects the child's end if it has ended, without waiting; returns whether it has.
  bool reap();
  // Waits until the child has ended (reaping it) or the deadline passes; returns whether it ended.
  bool wait_until(const Deadline& deadline);
  // Sends sig through the pidfd (never to a stranger given the child's pid); nothing once reaped.
  void signal(int sig) noexcept;

  // Once reap() is true: the wait status, or, if someone else collected it (SIGCHLD ignored, or a
  // SIGCHLD handler that reaps), a status rebuilt from what the child recorded before _exit: known
  // when body returned, empty when the child was ended otherwise (a signal, exit() in body).
  std::optional<int> wait_status() const noexcept { return status_; }

 private:
  Child(pid_t pid, int pidfd, std::atomic<std::int32_t>* recorded) noexcept
      : pid_(pid), pidfd_(pidfd), recorded_(recorded) {}
  void finish(std::optional<int> status) noexcept;

  pid_t pid_ = 0;
  int pidfd_ = -1;
  // A MAP_SHARED word the child sets to its exit code before _exit: the status survives its
  // collection by someone else. Unmapped once reaped.
  std::atomic<std::int32_t>* recorded_ = nullptr;
  bool ended_ = false;
  std::optional<int> status_;
};

// This process's own pidfd (close-on-exec): a child that inherits it sees POLLIN when this whole
// process has ended (every thread), whichever thread forked it. The caller closes it.
int open_own_pidfd(const std::string& what);

}  // namespace shmq::detail
