// The caller's side of a Pool: see pool_core.hpp.
#include "pool_core.hpp"

#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <tuple>

#include "shmq/process.hpp"

namespace shmq::detail {

namespace {

// How often a caller waiting for outcomes checks that the manager is still alive.
constexpr std::chrono::seconds kManagerCheck{1};
// How often a submit waiting for room in the task ring looks again, if no outcome came meanwhile.
constexpr std::chrono::milliseconds kRoomCheck{10};

std::size_t usable_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return static_cast<std::size_t>(CPU_COUNT(&set));
  return cpu_count();
}

QueueOptions sized(std::size_t bytes) {
  QueueOptions options;
  options.capacity_bytes = bytes;
  return options;
}

WorkerSlot* map_slots(std::size_t n) {
  void* p = mmap(nullptr, n * sizeof(WorkerSlot), PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    throw Error(std::string("shmq::Pool: cannot map worker slots: ") + std::strerror(errno));
  return new (p) WorkerSlot[n]{};
}

}  // namespace

PoolShared::PoolShared(PoolOptions pool_options)
    : options(std::move(pool_options)),
      processes(options.processes != 0 ? options.processes : usable_cpus()),
      tasks(sized(options.queue_bytes)),
      results(sized(options.queue_bytes)),
      slots(map_slots(processes)),
      owner_pid(getpid()),
      owner_name(current_process().name) {
  // What the manager changes (in spawn_manager), for the workers to restore.
  program_dispositions.push_back(Disposition::current(SIGCHLD));
  for (const int sig : kTerminalSignals) program_dispositions.push_back(Disposition::current(sig));
  pthread_sigmask(SIG_BLOCK, nullptr, &program_mask);
}

PoolShared::~PoolShared() {
  munmap(slots, processes * sizeof(WorkerSlot));
}

PoolCore::PoolCore(PoolOptions options)
    : shared_(std::move(options)),
      manager_(spawn_manager(shared_)),
      payload_files_(std::make_shared<PayloadFiles>(2 * shared_.processes,
                                                    shared_.options.payload_cache_bytes)) {
  shared_.channel.close_sending_end();  // the workers have theirs
}

PoolCore::~PoolCore() {
  shut_down();
}

std::string PoolCore::name() const {
  return "shmq::Pool (manager pid " + std::to_string(manager_.pid()) + ")";
}

void PoolCore::throw_unless_running(bool feeder) const {
  if (state_ == State::broken) throw PoolBroken(name() + ": " + ended_reason_);
  // An imap's input left unread when the pool ended: lost, as the chunks in flight were.
  if (state_ == State::terminated && feeder) throw WorkerLost("shmq::Pool: " + ended_reason_);
  if (state_ == State::terminated)
    throw Error("shmq::Pool: the pool was terminated: no more tasks");
  if (feeder && !tasks_shut_) return;
  if (feeder) {
    throw Error("shmq::Pool: the pool was joined before an imap had read all of its input");
  }
  if (state_ != State::running) throw Error("shmq::Pool: the pool is closed: no more tasks");
}

void PoolCore::shut_task_ring(bool immediate) noexcept {
  tasks_shut_ = true;
  shared_.tasks.shutdown(immediate);  // without `immediate`, workers drain the ring, then exit
}

void PoolCore::feeder_started() {
  std::lock_guard lock(mutex_);
  throw_unless_running(false);
  ++feeders_;
}

void PoolCore::feeder_done() noexcept {
  std::lock_guard lock(mutex_);
  if (--feeders_ == 0 && state_ == State::closed && !tasks_shut_) shut_task_ring(false);
}

void PoolCore::check_not_waiting_for_itself(const Job& job) {
  std::lock_guard lock(mutex_);
  if (job.deliver && !job.complete() && std::this_thread::get_id() == callback_thread_.get_id()) {
    throw Error(
        "shmq::AsyncResult: waiting, inside a callback, for a result whose own callback has not "
        "run would wait forever: callbacks run one at a time on one thread");
  }
}

std::shared_ptr<Job> PoolCore::submit(std::vector<OutgoingTask>& tasks, Deliver deliver,
                                      const Deadline& deadline, bool feeder) {
  auto job = std::make_shared<Job>();
  job->deliver = std::move(deliver);
  job->results.resize(tasks.size());
  job->missing = tasks.size();
  std::unique_lock lock(mutex_);
  throw_unless_running(feeder);
  if (job->deliver) {
    ++undelivered_;
    if (tasks.empty()) ready_callbacks_.push_back(job);
    if (!callback_thread_.joinable()) {
      callback_thread_ = std::thread([self = shared_from_this()] { self->run_callbacks(); });
    }
  }
  const std::size_t queued = queue_tasks(
      lock, tasks, [&](std::size_t i) { return std::make_pair(job, i); }, deadline, true, feeder);
  if (queued == 0 && !tasks.empty()) {
    if (job->deliver) --undelivered_;
    return nullptr;
  }
  if (job->deliver && tasks.empty()) changed_.notify_all();
  return job;
}

std::vector<std::shared_ptr<Job>> PoolCore::submit_each(std::vector<OutgoingTask>& tasks,
                                                        const Deadline& deadline) {
  std::vector<std::shared_ptr<Job>> jobs(tasks.size());
  for (auto& job : jobs) {
    job = std::make_shared<Job>();
    job->results.resize(1);
    job->missing = 1;
  }
  std::unique_lock lock(mutex_);
  throw_unless_running(true);
  jobs.resize(queue_tasks(
      lock, tasks, [&](std::size_t i) { return std::make_pair(jobs[i], std::size_t{0}); }, deadline,
      false, true));
  return jobs;
}

std::size_t PoolCore::queue_tasks(
    std::unique_lock<std::mutex>& lock, std::vector<OutgoingTask>& tasks,
    const std::function<std::pair<std::shared_ptr<Job>, std::size_t>(std::size_t)>& owner,
    const Deadline& deadline, bool all_once_begun, bool feeder) {
  // Filed as pending before they are queued, so that every outcome finds its task.
  for (std::size_t i = 0; i < tasks.size(); ++i) {
    const std::uint64_t id = ++last_id_;
    tasks[i].message.id = id;
    PayloadFile loan = payload_files_->lend();
    tasks[i].message.loan = loan.is_open() ? MemfdRef{static_cast<std::int32_t>(shared_.owner_pid),
                                                      loan.fd(), loan.capacity(), loan.name()}
                                           : MemfdRef{};
    auto [job, index] = owner(i);
    pending_.emplace(id, Pending{std::move(job), index, std::move(tasks[i].args), std::move(loan)});
  }
  // The task messages from `from` on, as a range for try_put_many.
  struct Messages {
    const OutgoingTask* first;
    std::size_t count;
    struct At {
      const OutgoingTask* first;
      const TaskMessage& operator[](std::ptrdiff_t i) const { return first[i].message; }
    };
    At begin() const { return {first}; }
    std::size_t size() const { return count; }
  };
  std::size_t queued = 0;
  for (;;) {
    lock.unlock();
    queued += shared_.tasks.try_put_many(Messages{tasks.data() + queued, tasks.size() - queued});
    lock.lock();
    if (queued == tasks.size()) return queued;
    if ((queued == 0 || !all_once_begun) && deadline.expired()) break;
    // The ring is full: collect until an outcome arrives (or a short while has passed), then look
    // again. wait_locked() ends the pool if the manager has died: then nobody will ever make room.
    wait_locked(
        lock, [] { return false; }, deadline.capped(kRoomCheck));
    if (has_ended()) throw_unless_running(feeder);
  }
  // The deadline passed: the tasks not queued are as they were.
  for (std::size_t i = queued; i < tasks.size(); ++i) {
    const auto it = pending_.find(tasks[i].message.id);
    tasks[i].args = std::move(it->second.args);
    pending_.erase(it);  // its loan goes back to the spares
  }
  return queued;
}

bool PoolCore::wait(const std::function<bool()>& done, const Deadline& deadline) {
  std::unique_lock lock(mutex_);
  return wait_locked(lock, done, deadline);
}

bool PoolCore::wait_locked(std::unique_lock<std::mutex>& lock, const std::function<bool()>& done,
                           const Deadline& deadline) {
  for (bool first = true;; first = false) {
    if (done()) return true;
    if (!first && deadline.expired()) return false;
    if (!pulling_ && !has_ended()) {
      pulling_ = true;
      lock.unlock();
      std::vector<ResultMessage> batch = receive(deadline.capped(kManagerCheck));
      lock.lock();
      pulling_ = false;
      for (auto& message : batch) file(std::move(message));
      if (batch.empty()) check_manager();
      changed_.notify_all();
    } else if (deadline.is_now()) {
      return done();
    } else if (deadline.is_never()) {
      changed_.wait(lock);
    } else {
      changed_.wait_until(lock, deadline.at());
    }
  }
}

std::vector<ResultMessage> PoolCore::receive(const Deadline& deadline) {
  // Many outcomes per hold of the ring's lock.
  constexpr std::size_t kBatch = 256;
  std::vector<ResultMessage> batch;
  try {
    if (deadline.is_now()) {
      shared_.results.try_get_many(batch, kBatch);
    } else {
      const auto left = deadline.at() - Deadline::clock::now();
      if (left > left.zero()) shared_.results.get_many(batch, kBatch, left);
    }
  } catch (const Empty&) {
  } catch (const ShutDown&) {     // terminate() shut the ring down: nothing more will come
  } catch (const DecodeError&) {  // bytes no worker of this pool wrote; the ring dropped them
  }
  return batch;
}

void PoolCore::file(ResultMessage message) {
  const auto it = pending_.find(message.id);
  if (it == pending_.end()) {
    // A second outcome for one task (its worker was killed as it finished): the first stands.
    if (message.result.where == Payload::Where::out_of_band) {
      if (const int fd = shared_.channel.receive(message.id); fd >= 0) ::close(fd);
    }
    return;
  }
  Pending pending = std::move(it->second);
  pending_.erase(it);
  TaskResult result;
  result.id = message.id;
  result.outcome = message.outcome;
  result.type_name = std::move(message.type_name);
  result.what = std::move(message.what);
  if (message.outcome == TaskOutcome::lost) {
    // Another worker may still be running the task (pool_shared.hpp), reading its arguments or
    // writing into its loan: neither is ever reused. Its worker may have sent a result memfd
    // before it died.
    pending.args.discard();
    pending.loan.discard();
    shared_.channel.discard_unless([&](std::uint64_t id) { return pending_.count(id) != 0; });
  } else if (message.outcome == TaskOutcome::returned) {
    try {
      take_payload(message, pending, result);
    } catch (const Error&) {
      result.outcome = TaskOutcome::raised;
      std::tie(result.type_name, result.what) = describe_current_exception();
    }
  }
  // Its worker has posted its outcome: the args and an unused loan are spares again.
  settle(pending, std::move(result));
}

void PoolCore::take_payload(ResultMessage& message, Pending& pending, TaskResult& result) {
  const std::size_t size = message.result.memfd.size;
  switch (message.result.where) {
    case Payload::Where::inline_bytes:
      result.bytes = std::move(message.result.bytes);
      return;
    case Payload::Where::lent:
      if (!pending.loan.is_open() || pending.loan.capacity() < size) {
        throw Error("shmq::Pool: a result said to be in a memfd lent to it, which it was not");
      }
      result.file = std::move(pending.loan);
      break;
    case Payload::Where::out_of_band: {
      const int fd = shared_.channel.receive(message.id);
      if (fd < 0) throw Error("shmq::Pool: the memfd of an out-of-band result never came");
      result.file = PayloadFile::adopt(fd, size);
      payload_files_->keep(result.file);  // a spare once the result is decoded
      break;
    }
  }
  result.file.set_size(size);
  result.file.populate(size);
}

void PoolCore::settle(Pending& pending, TaskResult result) {
  Job& job = *pending.job;
  if (!job.forgotten) job.results[pending.index] = std::move(result);
  if (--job.missing == 0 && job.deliver) ready_callbacks_.push_back(pending.job);
}

void PoolCore::check_manager() {
  if (has_ended() || !manager_.reap()) return;
  end(State::broken, "the pool's manager process (pid " + std::to_string(manager_.pid()) + ") " +
                         describe_end(manager_.wait_status()) + ": the pool is broken");
}

void PoolCore::end(State state, std::string reason) {
  state_ = state;
  ended_reason_ = std::move(reason);
  for (auto& [id, pending] : pending_) {
    pending.args.discard();  // as for a worker lost: it may still be at them
    pending.loan.discard();
    TaskResult lost;
    lost.id = id;
    lost.outcome = TaskOutcome::lost;
    lost.what = ended_reason_;
    settle(pending, std::move(lost));
  }
  pending_.clear();
  shared_.channel.discard_unless([](std::uint64_t) { return false; });
  changed_.notify_all();
}

void PoolCore::forget(Job& job) noexcept {
  std::lock_guard lock(mutex_);
  if (job.deliver) return;  // its callbacks still run, and read the results
  job.forgotten = true;
  job.results.clear();
  job.results.shrink_to_fit();
}

void PoolCore::close() {
  std::lock_guard lock(mutex_);
  if (state_ != State::running) return;
  state_ = State::closed;
  if (feeders_ == 0) shut_task_ring(false);
}

void PoolCore::join() {
  std::unique_lock lock(mutex_);
  if (state_ == State::running) throw Error("shmq::Pool: join() before close() or terminate()");
  if (std::this_thread::get_id() == callback_thread_.get_id()) {
    throw Error("shmq::Pool: join() called from a callback would wait for that callback");
  }
  // An imap still reading its input reads no more: nobody would iterate it while this waits.
  if (!tasks_shut_) shut_task_ring(false);
  // Collect while waiting: a worker may be blocked posting an outcome. wait_locked() ends the
  // pool if the manager dies meanwhile.
  wait_locked(
      lock, [this] { return has_ended() || (pending_.empty() && undelivered_ == 0); },
      Deadline::never());
  manager_.wait_until(Deadline::never());
  payload_files_->retire();
}

void PoolCore::terminate() noexcept {
  std::lock_guard lock(mutex_);
  if (has_ended()) return;
  end(State::terminated, "the pool was terminated before the task finished");
  shut_task_ring(true);
  shared_.results.shutdown(true);  // a puller blocked on it returns at once
  manager_.signal(SIGTERM);        // it kills every worker, reaps them and exits
  manager_.wait_until(Deadline::never());
  payload_files_->retire();
}

void PoolCore::shut_down() noexcept {
  terminate();
  stop_callback_thread();
}

void PoolCore::run_callbacks() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wait_locked(
        lock,
        [this] { return !ready_callbacks_.empty() || (stop_callbacks_ && undelivered_ == 0); },
        Deadline::never());
    if (ready_callbacks_.empty()) return;
    const std::shared_ptr<Job> job = std::move(ready_callbacks_.front());
    ready_callbacks_.pop_front();
    lock.unlock();
    try {
      job->deliver(job->results);
    } catch (...) {
      // As Python's threads print an uncaught exception: the pool and the other callbacks go on.
      const auto [type, what] = describe_current_exception();
      std::fprintf(stderr, "shmq::Pool: a callback raised %s: %s\n", type.c_str(), what.c_str());
    }
    lock.lock();
    job->delivered = true;
    --undelivered_;
    changed_.notify_all();
  }
}

void PoolCore::stop_callback_thread() noexcept {
  {
    std::lock_guard lock(mutex_);
    stop_callbacks_ = true;
    changed_.notify_all();
  }
  if (!callback_thread_.joinable()) return;
  // A callback that ends the pool (destroys the Pool) runs on this thread, which cannot join
  // itself: it finishes the callbacks left, then ends.
  if (std::this_thread::get_id() == callback_thread_.get_id()) {
    callback_thread_.detach();
  } else {
    callback_thread_.join();
  }
}

}  // namespace shmq::detail
