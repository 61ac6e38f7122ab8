// Pool: a manager process that forks, watches and replaces workers; workers that run tasks from a
// shared task queue; and, in the calling process, the collection of results as they arrive.
//
//   caller ──tasks──▶ workers ──results──▶ caller          (two shmq queues, made by the caller)
//                        ▲
//            manager ────┘ forks and reaps them; posts WorkerLost for the task a dead worker held
//
// Which task each worker holds is kept in a shared array of slots. A worker records the task in its
// slot while it decodes it, under the task queue's lock and before the get commits, so there is no
// instant at which a worker holds a task its slot does not show. A worker killed in between leaves
// the task queued and its slot set: the task then runs again elsewhere, and its first outcome (the
// WorkerLost) is the one reported.
#include "shmq/pool.hpp"

#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "shmq/detail/demangle.hpp"
#include "shmq/process.hpp"
#include "shmq/queue.hpp"

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

namespace shmq::detail {

namespace {

// How often a caller waiting for results checks that the manager is still alive.
constexpr std::chrono::seconds kManagerCheck{1};

// Worker exit codes the manager tells apart.
constexpr int kExitShutDown = 0;  // the task queue was shut down (close or terminate): do not replace
constexpr int kExitRetired = 100;  // maxtasksperchild reached: replace

// One per worker, in a MAP_SHARED page made before the manager is forked.
struct alignas(64) WorkerSlot {
  std::atomic<std::uint64_t> task;  // the task this worker holds, or 0; written by the worker
  std::atomic<pid_t> pid;           // written by the manager; read by its SIGTERM handler
};

std::size_t usable_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return static_cast<std::size_t>(CPU_COUNT(&set));
  const long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<std::size_t>(n) : 1;
}

std::string describe_end(int status) {
  if (WIFSIGNALED(status)) return "was killed by signal " + std::to_string(WTERMSIG(status));
  return "exited with code " + std::to_string(WEXITSTATUS(status));
}

void flush_output() {
  std::cout.flush();
  std::fflush(nullptr);
}

// The manager's SIGTERM handler kills every worker; it may only touch these.
WorkerSlot* g_slots = nullptr;
std::size_t g_slot_count = 0;
volatile sig_atomic_t g_terminating = 0;

// Async-signal-safe: called by the handler, and by the manager's loop for a worker whose pid was
// not yet in its slot when the handler ran (fork can return in the child, which may already be
// running a task, before it returns in the manager).
void kill_workers() {
  for (std::size_t i = 0; i < g_slot_count; ++i) {
    const pid_t pid = g_slots[i].pid.load();
    if (pid > 0) kill(pid, SIGKILL);
  }
}

extern "C" void on_manager_sigterm(int) {
  g_terminating = 1;
  kill_workers();
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
        slots_(map_slots(processes_)),
        manager_(ProcessOptions{"PoolManager", /*daemon=*/true}, [this] { manage(); }) {
    manager_.start();
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
    if (state_ != State::running) throw Error("shmq::Pool: the pool is closed: no more tasks");
    std::vector<std::uint64_t> ids;
    for (auto& task : tasks) {
      task.id = ++last_id_;
      // While the task queue is full, collect results: the workers may be waiting for room to
      // post them, and nobody else may be collecting.
      while (!tasks_.try_put(task)) pull(Deadline::never());
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
      if (state_ == State::ended || all_arrived(ids)) return true;
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
    // Collect while waiting: a worker may be blocked posting a result.
    while (state_ != State::ended && !pending_.empty()) pull(Deadline::never());
    manager_.join();
  }

  void terminate() noexcept {
    std::lock_guard lock(mutex_);
    if (state_ == State::ended) return;
    end("the pool was terminated before the task finished");
    tasks_.shutdown(true);
    manager_.terminate();  // its handler kills every worker, then it reaps them and exits
    manager_.join();
  }

 private:
  enum class State { running, closed, ended };

  static QueueOptions sized(std::size_t bytes) {
    QueueOptions options;
    options.capacity_bytes = bytes;
    return options;
  }

  std::size_t slots_bytes() const noexcept { return processes_ * sizeof(WorkerSlot); }

  static WorkerSlot* map_slots(std::size_t n) {
    void* p = mmap(nullptr, n * sizeof(WorkerSlot), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw Error(std::string("shmq::Pool: cannot map worker slots: ") + std::strerror(errno));
    return new (p) WorkerSlot[n]{};
  }

  bool all_arrived(const std::vector<std::uint64_t>& ids) const {
    for (const auto id : ids) {
      if (arrived_.count(id) == 0) return false;
    }
    return true;
  }

  // Under mutex_: waits for at least one result (or the deadline) and files every result that
  // has arrived. Returns false only if the deadline passed with nothing new.
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
      if (!manager_.is_alive()) {
        end("the pool's manager process died");
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

  void end(std::string reason) {
    state_ = State::ended;
    ended_reason_ = std::move(reason);
    pending_.clear();
    forgotten_.clear();
  }

  // ---- In the manager process.

  [[noreturn]] void manage() {
    g_slots = slots_;
    g_slot_count = processes_;
    struct sigaction on_term {};
    on_term.sa_handler = on_manager_sigterm;  // no SA_RESTART: waitpid returns EINTR
    sigaction(SIGTERM, &on_term, nullptr);
    for (std::size_t i = 0; i < processes_; ++i) spawn(i);
    for (;;) {
      // Pids are stored in their slots before this check: each is seen here or by the handler.
      if (g_terminating) kill_workers();
      int status = 0;
      const pid_t pid = waitpid(-1, &status, 0);
      if (pid < 0) {
        if (errno == EINTR) continue;
        break;  // ECHILD: every worker has ended
      }
      WorkerSlot* slot = nullptr;
      for (std::size_t i = 0; i < processes_; ++i) {
        if (slots_[i].pid.load() == pid) slot = &slots_[i];
      }
      if (slot == nullptr) continue;
      slot->pid.store(0);
      if (g_terminating) continue;
      if (const std::uint64_t task = slot->task.exchange(0); task != 0) {
        results_.put({task, TaskOutcome::lost, {},
                      "worker pid " + std::to_string(pid) + " " + describe_end(status) +
                          " while running task " + std::to_string(task)});
      }
      const bool shut_down = WIFEXITED(status) && WEXITSTATUS(status) == kExitShutDown;
      if (!shut_down) spawn(static_cast<std::size_t>(slot - slots_));
    }
    flush_output();
    _exit(0);
  }

  void spawn(std::size_t index) {
    flush_output();
    const pid_t manager = getpid();
    const pid_t pid = fork();
    if (pid < 0) throw Error(std::string("shmq::Pool: cannot fork a worker: ") + std::strerror(errno));
    if (pid == 0) work(index, manager);
    slots_[index].pid.store(pid);
  }

  // ---- In a worker process.

  [[noreturn]] void work(std::size_t index, pid_t manager) {
    signal(SIGTERM, SIG_DFL);
    // A worker never outlives its manager.
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != manager) _exit(1);
    WorkerSlot& slot = slots_[index];
    if (options_.initializer) {
      try {
        options_.initializer();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "shmq::Pool worker (pid %d): initializer raised %s: %s\n", getpid(),
                     current_exception_type_name().c_str(), e.what());
        flush_output();
        _exit(1);
      }
    }
    for (std::size_t done = 0; options_.maxtasksperchild == 0 || done < options_.maxtasksperchild; ++done) {
      TaskMessage task;
      try {
        task = tasks_.get_with([&](const std::byte* data, std::size_t size) {
          TaskMessage t = decode_exactly<TaskMessage>(data, size);
          slot.task.store(t.id);  // before the get commits: see the file comment
          return t;
        });
      } catch (const ShutDown&) {
        flush_output();
        _exit(kExitShutDown);
      } catch (const DecodeError&) {
        continue;  // not a task this pool sent; get_with dropped it
      }
      post(run(task));
      slot.task.store(0);
      flush_output();
    }
    _exit(kExitRetired);
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
  Process manager_;

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

bool PendingTasks::ready() { return wait(Deadline::now()); }

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

Pool::~Pool() { core_->terminate(); }

detail::PendingTasks Pool::submit(std::vector<detail::TaskMessage> tasks) {
  return detail::PendingTasks(core_, core_->submit(std::move(tasks)));
}

std::size_t Pool::default_chunksize(std::size_t items) const noexcept {
  // Python's choice: about four chunks per worker.
  const std::size_t per = core_->processes() * 4;
  return std::max<std::size_t>(1, (items + per - 1) / per);
}

void Pool::close() { core_->close(); }
void Pool::join() { core_->join(); }
void Pool::terminate() { core_->terminate(); }
std::size_t Pool::processes() const noexcept { return core_->processes(); }

}  // namespace shmq
