// The pool's manager process: forks the workers, reaps them, replaces them, and posts WorkerLost
// for the task a dead worker held.
//
// It does not depend on the program's signal dispositions: it resets SIGCHLD (an ignored SIGCHLD,
// or a handler that reaps, would hide its workers' deaths), ignores the signals a terminal sends to
// the whole group (it follows the owning process through a pidfd instead, and so keeps serving a
// program that survives Ctrl-C), and waits for events with ppoll on pidfds, never blocking
// elsewhere: a WorkerLost notice that finds the result queue full stays pending and is retried
// while the manager goes on serving (and obeying terminate()).
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>

#include "pool_shared.hpp"

namespace shmq::detail {

namespace {

// How often the manager retries posting WorkerLost notices that found the result queue full.
constexpr timespec kNoticeRetry{0, 10'000'000};

// Set by the manager's SIGTERM handler (terminate()); SIGTERM is blocked outside its ppoll.
volatile sig_atomic_t g_terminating = 0;

extern "C" void on_manager_sigterm(int) {
  g_terminating = 1;
}

// The WorkerLost notice for the task the ended worker in `slot` held, if it held one.
std::optional<ResultMessage> notice_of_loss(WorkerSlot& slot, const Child& worker) {
  const std::uint64_t task = slot.task.exchange(0);
  if (task == 0) return std::nullopt;
  ResultMessage notice;
  notice.id = task;
  notice.outcome = TaskOutcome::lost;
  notice.what = "worker pid " + std::to_string(worker.pid()) + " " +
                describe_end(worker.wait_status()) + " while running task " + std::to_string(task);
  return notice;
}

class Manager {
 public:
  explicit Manager(PoolShared& shared) : shared_(shared), workers_(shared.processes) {}

  int run(int owner) {
    shared_.channel.close_receiving_end();  // only the caller reads it
    struct sigaction on_term {};
    on_term.sa_handler = on_manager_sigterm;
    sigemptyset(&on_term.sa_mask);
    sigaction(SIGTERM, &on_term, nullptr);
    sigset_t while_waiting;
    pthread_sigmask(SIG_BLOCK, nullptr, &while_waiting);
    sigdelset(&while_waiting, SIGTERM);

    std::deque<ResultMessage> undelivered;  // WorkerLost notices that found the result queue full
    try {
      for (std::size_t i = 0; i < workers_.size(); ++i) workers_[i] = spawn_worker(i);
      for (;;) {
        if (g_terminating) {
          kill_all();
          undelivered.clear();  // the caller has marked every pending task lost
        }
        bool any_running = false;
        for (std::size_t i = 0; i < workers_.size(); ++i) {
          if (workers_[i].pid() == 0) continue;
          if (!workers_[i].reap()) {
            any_running = true;
            continue;
          }
          if (auto notice = notice_of_loss(shared_.slots[i], workers_[i]);
              notice && !g_terminating) {
            undelivered.push_back(std::move(*notice));
          }
          const auto status = workers_[i].wait_status();
          const bool shut_down =
              status && WIFEXITED(*status) && WEXITSTATUS(*status) == kExitShutDown;
          workers_[i] = Child();
          if (!shut_down && !g_terminating) {
            workers_[i] = spawn_worker(i);
            any_running = true;
          }
        }
        if (!any_running) return 0;
        try {
          while (!undelivered.empty() && shared_.results.try_put(undelivered.front()))
            undelivered.pop_front();
        } catch (const ShutDown&) {
          undelivered.clear();  // terminate() shut the ring: the caller has marked them lost
        }

        std::vector<pollfd> events{{owner, POLLIN, 0}};
        for (const auto& worker : workers_) {
          if (worker.pidfd() >= 0) events.push_back({worker.pidfd(), POLLIN, 0});
        }
        ppoll(events.data(), events.size(), undelivered.empty() ? nullptr : &kNoticeRetry,
              &while_waiting);
        if (events[0].revents != 0) {
          kill_all();
          return 0;
        }
      }
    } catch (const std::exception& e) {
      // A worker could not be forked (EAGAIN, ENOMEM): the pool is broken, and its caller learns
      // it from this process's end.
      std::fprintf(stderr, "shmq::Pool manager (pid %d): %s\n", getpid(), e.what());
      kill_all();
      return 1;
    }
  }

 private:
  void kill_all() noexcept {
    for (auto& worker : workers_) worker.signal(SIGKILL);
  }

  Child spawn_worker(std::size_t index) {
    SpawnOptions options;
    options.dispositions = shared_.program_dispositions;
    // terminate() kills workers with SIGKILL; SIGTERM's default makes a stray one end them too.
    options.dispositions.push_back(Disposition::reset(SIGTERM));
    options.mask = shared_.program_mask;
    options.on_parent_death = SIGKILL;     // a worker never outlives its manager
    options.forker_is_only_thread = true;  // the manager starts no thread
    const std::size_t number = ++workers_made_;
    return Child::spawn("a worker of a shmq::Pool", options,
                        [this, index, number] { return run_worker(shared_, index, number); });
  }

  PoolShared& shared_;
  std::vector<Child> workers_;
  std::size_t workers_made_ = 0;  // Python numbers a pool's workers 1, 2, ... replacements on
};

}  // namespace

int run_manager(PoolShared& shared, int owner) {
  return Manager(shared).run(owner);
}

Child spawn_manager(PoolShared& shared) {
  const std::string what = "the manager process of a shmq::Pool";
  const int owner = open_own_pidfd(what);
  SpawnOptions options;
  options.dispositions = {Disposition::reset(SIGCHLD)};
  for (const int sig : kTerminalSignals) options.dispositions.push_back(Disposition::ignore(sig));
  // SIGTERM (terminate()) gets the manager's handler at its start; until its ppoll, it waits.
  sigset_t blocked = shared.program_mask;
  sigaddset(&blocked, SIGTERM);
  options.mask = blocked;
  try {
    Child manager =
        Child::spawn(what, options, [&shared, owner] { return run_manager(shared, owner); });
    ::close(owner);
    return manager;
  } catch (...) {
    ::close(owner);
    throw;
  }
}

std::string describe_end(const std::optional<int>& status) {
  if (!status) return "ended by a signal or by exit(), and someone else collected its status";
  if (WIFSIGNALED(*status)) return "was killed by signal " + std::to_string(WTERMSIG(*status));
  return "exited with code " + std::to_string(WEXITSTATUS(*status));
}

}  // namespace shmq::detail
