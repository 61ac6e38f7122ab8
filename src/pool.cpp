// Pool: a manager process that forks, watches and replaces workers; workers that run tasks from a
// shared task queue; and, in the calling process, the collection of results as they arrive.
//
//   caller ──tasks──▶ workers ──results──▶ caller          (two shmq queues, made by the caller)
//                        ▲
//            manager ────┘ forks and reaps them; posts WorkerLost for the task a dead worker held
//
// The pool's processes do not depend on the program's signal dispositions: the manager resets
// SIGCHLD (an ignored SIGCHLD, or a handler that reaps, would hide its workers' deaths), ignores
// the signals a terminal sends to the whole group (it follows the owning process through a pidfd
// instead, and so keeps serving a program that survives Ctrl-C), and waits for events with ppoll on
// pidfds, never blocking elsewhere: a WorkerLost notice that finds the result queue full stays
// pending and is retried while the manager goes on serving (and obeying terminate()). Workers get
// the program's dispositions and signal mask back before they run its code.
//
// Which task each worker holds is kept in a shared array of slots. A worker records the task in its
// slot while it decodes it, under the task queue's lock and before the get commits, so there is no
// instant at which a worker holds a task its slot does not show. A worker killed in between leaves
// the task queued and its slot set: the task then runs again elsewhere, and its first outcome (the
// WorkerLost) is the one reported.
#include "shmq/pool.hpp"

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "shmq/detail/demangle.hpp"
#include "shmq/detail/spawn.hpp"
#include "shmq/queue.hpp"

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

namespace shmq::detail {

namespace {

// How often a caller waiting for results checks that the manager is still alive.
constexpr std::chrono::seconds kManagerCheck{1};

// Worker exit codes the manager tells apart.
constexpr int kExitShutDown =
    0;  // the task queue was shut down (close or terminate): do not replace
constexpr int kExitRetired = 100;  // maxtasksperchild reached: replace

// How often the manager retries posting WorkerLost notices that found the result queue full.
constexpr timespec kNoticeRetry{0, 10'000'000};

// One per worker, in a MAP_SHARED page made before the manager is forked.
struct alignas(64) WorkerSlot {
  std::atomic<std::uint64_t> task;  // the task this worker holds, or 0; written by the worker
};

std::size_t usable_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return static_cast<std::size_t>(CPU_COUNT(&set));
  const long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<std::size_t>(n) : 1;
}

// A child's end, from Child::wait_status().
std::string describe_end(const std::optional<int>& status) {
  if (!status) return "ended by a signal or by exit(), and someone else collected its status";
  if (WIFSIGNALED(*status)) return "was killed by signal " + std::to_string(WTERMSIG(*status));
  return "exited with code " + std::to_string(WEXITSTATUS(*status));
}

// Set by the manager's SIGTERM handler (terminate()); SIGTERM is blocked outside its ppoll.
volatile sig_atomic_t g_terminating = 0;

extern "C" void on_manager_sigterm(int) {
  g_terminating = 1;
}

}  // namespace

// A process-private mutex with a lock that gives up at a Deadline on the monotonic clock. (Not
// std::timed_mutex: its timed lock takes the same pthread_mutex_clocklock path, but without the
// annotations ThreadSanitizer needs; see lock_until.)
class TimedMutex {
 public:
  TimedMutex() noexcept { pthread_mutex_init(&mutex_, nullptr); }
  TimedMutex(const TimedMutex&) = delete;
  TimedMutex& operator=(const TimedMutex&) = delete;
  ~TimedMutex() { pthread_mutex_destroy(&mutex_); }

  void lock() noexcept { pthread_mutex_lock(&mutex_); }
  void unlock() noexcept { pthread_mutex_unlock(&mutex_); }
  bool lock_until(const Deadline& deadline) noexcept {
    if (deadline.is_now()) return pthread_mutex_trylock(&mutex_) == 0;
    if (deadline.is_never()) return pthread_mutex_lock(&mutex_) == 0;
    const timespec ts = Deadline::to_timespec(deadline.at());
#if defined(__SANITIZE_THREAD__)
    // ThreadSanitizer's runtime (GCC 12, LLVM 14) does not intercept pthread_mutex_clocklock: tell
    // it about the acquisition, or it reports the later unlock as the unlock of an unlocked mutex.
    __tsan_mutex_pre_lock(&mutex_, __tsan_mutex_try_lock);
    const bool acquired = pthread_mutex_clocklock(&mutex_, CLOCK_MONOTONIC, &ts) == 0;
    __tsan_mutex_post_lock(
        &mutex_, __tsan_mutex_try_lock | (acquired ? 0 : __tsan_mutex_try_lock_failed), 0);
    return acquired;
#else
    return pthread_mutex_clocklock(&mutex_, CLOCK_MONOTONIC, &ts) == 0;
#endif
  }

 private:
  pthread_mutex_t mutex_;
};

class PoolCore {
 public:
  explicit PoolCore(PoolOptions options)
      : options_(std::move(options)),
        processes_(options_.processes != 0 ? options_.processes : usable_cpus()),
        tasks_(sized(options_.queue_bytes)),
        results_(sized(options_.queue_bytes)),
        slots_(map_slots(processes_)) {
    // What the manager changes (in start_manager), for the workers to restore.
    program_dispositions_.push_back(Disposition::current(SIGCHLD));
    for (const int sig : kTerminalSignals)
      program_dispositions_.push_back(Disposition::current(sig));
    pthread_sigmask(SIG_BLOCK, nullptr, &program_mask_);
    try {
      start_manager();
    } catch (...) {
      munmap(slots_, slots_bytes());
      throw;
    }
  }
  PoolCore(const PoolCore&) = delete;
  PoolCore& operator=(const PoolCore&) = delete;
  ~PoolCore() {
    terminate();
    munmap(slots_, slots_bytes());
  }

  std::size_t processes() const noexcept { return processes_; }

  std::vector<std::uint64_t> submit(std::vector<TaskMessage> tasks) {
    std::lock_guard lock(mutex_);
    if (state_ == State::broken) throw PoolBroken(name() + ": " + ended_reason_);
    if (state_ != State::running) throw Error("shmq::Pool: the pool is closed: no more tasks");
    std::vector<std::uint64_t> ids;
    for (auto& task : tasks) {
      task.id = ++last_id_;
      // While the task queue is full, collect results: the workers may be waiting for room to
      // post them, and nobody else may be collecting. pull() notices a dead manager, after which
      // nobody will ever make room.
      while (!tasks_.try_put(task)) {
        pull(Deadline::never());
        if (state_ == State::broken) throw PoolBroken(name() + ": " + ended_reason_);
      }
      pending_.insert(task.id);
      ids.push_back(task.id);
    }
    return ids;
  }

  // Waits until every id has a result (or the pool has ended); false if the deadline came first.
  bool wait(const std::vector<std::uint64_t>& ids, const Deadline& deadline) {
    if (!mutex_.lock_until(deadline)) return false;
    std::unique_lock lock(mutex_, std::adopt_lock);
    for (;;) {
      if (has_ended() || all_arrived(ids)) return true;
      if (!pull(deadline)) return false;
      // Between pulls, let another thread in (a terminate(), or a waiter with a deadline).
      lock.unlock();
      lock.lock();
    }
  }

  // The results of ids, which wait() found complete; removes them from the pool.
  std::vector<ResultMessage> take(const std::vector<std::uint64_t>& ids) {
    std::lock_guard lock(mutex_);
    std::vector<ResultMessage> out;
    for (const auto id : ids) {
      if (const auto it = arrived_.find(id); it != arrived_.end()) {
        out.push_back(std::move(it->second));
        arrived_.erase(it);
      } else {
        out.push_back({id, TaskOutcome::lost, {}, ended_reason_});
      }
    }
    return out;
  }

  // Nobody will collect these: drop their results now or when they arrive.
  void forget(const std::vector<std::uint64_t>& ids) noexcept {
    std::lock_guard lock(mutex_);
    for (const auto id : ids) {
      if (arrived_.erase(id) == 0 && pending_.count(id) != 0) forgotten_.insert(id);
    }
  }

  void close() {
    std::lock_guard lock(mutex_);
    if (state_ != State::running) return;
    state_ = State::closed;
    tasks_.shutdown();  // workers drain the queue, then exit
  }

  void join() {
    std::lock_guard lock(mutex_);
    if (state_ == State::running) throw Error("shmq::Pool: join() before close() or terminate()");
    // Collect while waiting: a worker may be blocked posting a result. pull() ends the pool if
    // the manager dies meanwhile.
    while (!has_ended() && !pending_.empty()) pull(Deadline::never());
    manager_.wait_until(Deadline::never());
  }

  void terminate() noexcept {
    std::lock_guard lock(mutex_);
    if (has_ended()) return;
    end(State::terminated, "the pool was terminated before the task finished");
    tasks_.shutdown(true);
    manager_.signal(SIGTERM);  // it kills every worker, reaps them and exits
    manager_.wait_until(Deadline::never());
  }

 private:
  // running -> closed (close) -> terminated (terminate); broken (the manager died) from any but
  // terminated. Once terminated or broken, no result will come any more.
  enum class State { running, closed, terminated, broken };

  bool has_ended() const noexcept { return state_ == State::terminated || state_ == State::broken; }

  static QueueOptions sized(std::size_t bytes) {
    QueueOptions options;
    options.capacity_bytes = bytes;
    return options;
  }

  std::size_t slots_bytes() const noexcept { return processes_ * sizeof(WorkerSlot); }

  static WorkerSlot* map_slots(std::size_t n) {
    void* p = mmap(nullptr, n * sizeof(WorkerSlot), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
      throw Error(std::string("shmq::Pool: cannot map worker slots: ") + std::strerror(errno));
    return new (p) WorkerSlot[n]{};
  }

  // How errors name this pool.
  std::string name() const {
    return "shmq::Pool (manager pid " + std::to_string(manager_.pid()) + ")";
  }

  bool all_arrived(const std::vector<std::uint64_t>& ids) const {
    for (const auto id : ids) {
      if (arrived_.count(id) == 0) return false;
    }
    return true;
  }

  // Under mutex_: waits for at least one result (or the deadline) and files every result that
  // has arrived. Returns false only if the deadline passed with nothing new. Ends the pool if the
  // manager has died: no more results will come.
  bool pull(const Deadline& deadline) {
    std::optional<ResultMessage> first;
    if (deadline.is_now()) {
      first = results_.try_get();
    } else {
      const auto until = std::min(deadline.at(), Deadline::clock::now() + kManagerCheck);
      try {
        first = results_.get(until - Deadline::clock::now());
      } catch (const Empty&) {
      }
    }
    if (!first) {
      if (manager_.reap()) {
        end(State::broken, "the pool's manager process (pid " + std::to_string(manager_.pid()) +
                               ") " + describe_end(manager_.wait_status()) +
                               ": the pool is broken");
        return true;
      }
      return !deadline.expired();
    }
    file(std::move(*first));
    while (auto more = results_.try_get()) file(std::move(*more));
    return true;
  }

  void file(ResultMessage result) {
    // Not pending: a second outcome for one task (its worker was killed as it finished): the first
    // one stands.
    if (pending_.erase(result.id) == 0) return;
    if (forgotten_.erase(result.id) == 0) arrived_.emplace(result.id, std::move(result));
  }

  void end(State state, std::string reason) {
    state_ = state;
    ended_reason_ = std::move(reason);
    pending_.clear();
    forgotten_.clear();
  }

  void start_manager() {
    const std::string what = "the manager process of a shmq::Pool";
    const int owner = open_own_pidfd(what);
    SpawnOptions options;
    options.dispositions = {Disposition::reset(SIGCHLD)};
    for (const int sig : kTerminalSignals) options.dispositions.push_back(Disposition::ignore(sig));
    // SIGTERM (terminate()) gets the manager's handler at its start; until its ppoll, it waits.
    sigset_t blocked = program_mask_;
    sigaddset(&blocked, SIGTERM);
    options.mask = blocked;
    try {
      manager_ = Child::spawn(what, options, [this, owner] { return manage(owner); });
    } catch (...) {
      ::close(owner);
      throw;
    }
    ::close(owner);
  }

  // ---- In the manager process.

  // Returns when every worker has ended (shut down, or killed by terminate()), or at once when the
  // owning process has ended (the workers then follow the manager).
  int manage(int owner) {
    struct sigaction on_term {};
    on_term.sa_handler = on_manager_sigterm;
    sigemptyset(&on_term.sa_mask);
    sigaction(SIGTERM, &on_term, nullptr);
    sigset_t while_waiting;
    pthread_sigmask(SIG_BLOCK, nullptr, &while_waiting);
    sigdelset(&while_waiting, SIGTERM);

    std::vector<Child> workers(processes_);
    std::deque<ResultMessage> undelivered;  // WorkerLost notices that found the result queue full
    try {
      for (std::size_t i = 0; i < processes_; ++i) workers[i] = spawn_worker(i);
      for (;;) {
        if (g_terminating) {
          for (auto& worker : workers) worker.signal(SIGKILL);
          undelivered.clear();  // the caller has marked every pending task lost
        }
        bool any_running = false;
        for (std::size_t i = 0; i < processes_; ++i) {
          if (workers[i].pid() == 0) continue;
          if (!workers[i].reap()) {
            any_running = true;
            continue;
          }
          if (auto notice = notice_of_loss(i, workers[i]); notice && !g_terminating) {
            undelivered.push_back(std::move(*notice));
          }
          const auto status = workers[i].wait_status();
          const bool shut_down =
              status && WIFEXITED(*status) && WEXITSTATUS(*status) == kExitShutDown;
          workers[i] = Child();
          if (!shut_down && !g_terminating) {
            workers[i] = spawn_worker(i);
            any_running = true;
          }
        }
        if (!any_running) return 0;
        while (!undelivered.empty() && results_.try_put(undelivered.front()))
          undelivered.pop_front();

        std::vector<pollfd> events{{owner, POLLIN, 0}};
        for (const auto& worker : workers) {
          if (worker.pidfd() >= 0) events.push_back({worker.pidfd(), POLLIN, 0});
        }
        ppoll(events.data(), events.size(), undelivered.empty() ? nullptr : &kNoticeRetry,
              &while_waiting);
        if (events[0].revents != 0) {
          for (auto& worker : workers) worker.signal(SIGKILL);
          return 0;
        }
      }
    } catch (const std::exception& e) {
      // A worker could not be forked (EAGAIN, ENOMEM): the pool is broken, and its caller learns
      // it from this process's end.
      std::fprintf(stderr, "shmq::Pool manager (pid %d): %s\n", getpid(), e.what());
      for (auto& worker : workers) worker.signal(SIGKILL);
      return 1;
    }
  }

  // The WorkerLost notice for the task the ended worker `index` held, if it held one.
  std::optional<ResultMessage> notice_of_loss(std::size_t index, const Child& worker) {
    const std::uint64_t task = slots_[index].task.exchange(0);
    if (task == 0) return std::nullopt;
    return ResultMessage{task,
                         TaskOutcome::lost,
                         {},
                         "worker pid " + std::to_string(worker.pid()) + " " +
                             describe_end(worker.wait_status()) + " while running task " +
                             std::to_string(task)};
  }

  Child spawn_worker(std::size_t index) {
    SpawnOptions options;
    options.dispositions = program_dispositions_;
    // terminate() kills workers with SIGKILL; SIGTERM's default makes a stray one end them too.
    options.dispositions.push_back(Disposition::reset(SIGTERM));
    options.mask = program_mask_;
    options.on_parent_death = SIGKILL;     // a worker never outlives its manager
    options.forker_is_only_thread = true;  // the manager starts no thread
    return Child::spawn("a worker of a shmq::Pool", options, [this, index] { return work(index); });
  }

  // ---- In a worker process.

  int work(std::size_t index) {
    WorkerSlot& slot = slots_[index];
    if (options_.initializer) {
      try {
        options_.initializer();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "shmq::Pool worker (pid %d): initializer raised %s: %s\n", getpid(),
                     current_exception_type_name().c_str(), e.what());
        return 1;
      }
    }
    for (std::size_t done = 0; options_.maxtasksperchild == 0 || done < options_.maxtasksperchild;
         ++done) {
      TaskMessage task;
      try {
        task = tasks_.get_with([&](const std::byte* data, std::size_t size) {
          TaskMessage t = decode_exactly<TaskMessage>(data, size);
          slot.task.store(t.id);  // before the get commits: see the file comment
          return t;
        });
      } catch (const ShutDown&) {
        return kExitShutDown;
      } catch (const DecodeError&) {
        continue;  // not a task this pool sent; get_with dropped it
      }
      post(run(task));
      slot.task.store(0);
      std::fflush(nullptr);
    }
    return kExitRetired;
  }

  static ResultMessage run(const TaskMessage& task) {
    ResultMessage result{task.id, TaskOutcome::returned, {}, {}};
    try {
      Reader args(reinterpret_cast<const std::byte*>(task.args.data()), task.args.size());
      result.payload = from_address<Runner>(task.runner)(task.function, args);
    } catch (const std::exception& e) {
      result = {task.id, TaskOutcome::raised, current_exception_type_name(), e.what()};
    } catch (...) {
      result = {task.id, TaskOutcome::raised, current_exception_type_name(), {}};
    }
    return result;
  }

  void post(const ResultMessage& result) {
    try {
      results_.put(result);
    } catch (const MessageTooLarge& e) {
      results_.put({result.id, TaskOutcome::raised, "shmq::MessageTooLarge", e.what()});
    }
  }

  const PoolOptions options_;
  const std::size_t processes_;
  Queue<TaskMessage> tasks_;
  Queue<ResultMessage> results_;
  WorkerSlot* slots_;
  // What a worker restores before it runs the program's code: as they were when the pool was made.
  std::vector<Disposition> program_dispositions_;
  sigset_t program_mask_;
  Child manager_;

  // The caller's side; guarded by mutex_, which the one thread collecting results holds.
  TimedMutex mutex_;
  State state_ = State::running;
  std::string ended_reason_;
  std::uint64_t last_id_ = 0;
  std::unordered_set<std::uint64_t> pending_;                 // submitted, no outcome yet
  std::unordered_map<std::uint64_t, ResultMessage> arrived_;  // outcomes not yet taken
  std::unordered_set<std::uint64_t> forgotten_;               // pending, but nobody will take them
};

PendingTasks::PendingTasks(std::shared_ptr<PoolCore> core, std::vector<std::uint64_t> ids)
    : core_(std::move(core)), ids_(std::move(ids)) {}

PendingTasks::~PendingTasks() {
  if (core_ && !results_) core_->forget(ids_);
}

bool PendingTasks::wait(const Deadline& deadline) {
  if (results_) return true;
  if (!core_->wait(ids_, deadline)) return false;
  results_ = core_->take(ids_);
  return true;
}

bool PendingTasks::ready() {
  return wait(Deadline::now());
}

const std::vector<ResultMessage>& PendingTasks::results() const {
  for (const auto& r : *results_) {
    if (r.outcome == TaskOutcome::raised) throw RemoteError(r.payload, r.what);
    if (r.outcome == TaskOutcome::lost) throw WorkerLost("shmq::Pool: " + r.what);
  }
  return *results_;
}

bool PendingTasks::successful() const {
  for (const auto& r : *results_) {
    if (r.outcome != TaskOutcome::returned) return false;
  }
  return true;
}

}  // namespace shmq::detail

namespace shmq {

Pool::Pool(PoolOptions options) : core_(std::make_shared<detail::PoolCore>(std::move(options))) {}

Pool::~Pool() {
  core_->terminate();
}

detail::PendingTasks Pool::submit(std::vector<detail::TaskMessage> tasks) {
  return detail::PendingTasks(core_, core_->submit(std::move(tasks)));
}

std::size_t Pool::default_chunksize(std::size_t items) const noexcept {
  // Python's choice: about four chunks per worker.
  const std::size_t per = core_->processes() * 4;
  return std::max<std::size_t>(1, (items + per - 1) / per);
}

void Pool::close() {
  core_->close();
}
void Pool::join() {
  core_->join();
}
void Pool::terminate() {
  core_->terminate();
}
std::size_t Pool::processes() const noexcept {
  return core_->processes();
}

}  // namespace shmq
