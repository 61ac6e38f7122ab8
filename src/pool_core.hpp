// The caller's side of a Pool: submitting tasks, collecting their outcomes, running callbacks.
// Private to src/pool_*.cpp.
//
// Collecting: one thread at a time (the "puller") takes outcomes off the result ring, outside the
// mutex, and files them under it; every other thread waiting for something waits on `changed_`,
// which the puller signals after each batch and when it stops pulling (then another waiter takes
// over). Whoever waits, pulls: the pool itself runs no thread, except the callback thread, started
// by the first submission that has a callback.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "pool_shared.hpp"
#include "shmq/detail/pool_results.hpp"

namespace shmq::detail {

// One submission: its tasks' outcomes, by task index. Fields other than `deliver` are guarded by
// PoolCore's mutex.
struct Job {
  Deliver deliver;                  // the callbacks, if any; set before the first task is queued
  std::vector<TaskResult> results;  // filled as the outcomes arrive
  std::size_t missing = 0;          // outcomes not yet arrived
  bool forgotten = false;           // nobody will read the results: drop them as they arrive
  bool delivered = false;           // the callbacks have run
  bool complete() const noexcept { return missing == 0 && (!deliver || delivered); }
};

class PoolCore : public std::enable_shared_from_this<PoolCore> {
 public:
  explicit PoolCore(PoolOptions options);
  PoolCore(const PoolCore&) = delete;
  PoolCore& operator=(const PoolCore&) = delete;
  ~PoolCore();

  std::size_t processes() const noexcept { return shared_.processes; }
  // Where arguments are encoded: in the message up to the task ring's limit, else out of band.
  PayloadTarget payload_target() const noexcept {
    return {PoolShared::inline_limit(shared_.tasks), payload_files_.get()};
  }

  // Queues the tasks, numbering them, as one job. Waits while the task ring is full, collecting
  // outcomes meanwhile (the workers may be waiting for room to post them). Returns null, leaving
  // `tasks` as they were, if the deadline passed before the first could be queued. Throws Error
  // once the pool is closed (an imap's feeder: once it is joined or terminated), PoolBroken once
  // its manager has died.
  std::shared_ptr<Job> submit(std::vector<OutgoingTask>& tasks, Deliver deliver,
                              const Deadline& deadline, bool feeder = false);
  // An imap's chunks, each a job of its own, queued many per hold of the ring's lock: as many as
  // can be by the deadline (waiting for room, collecting meanwhile). Returns the jobs of those
  // queued, in order; the others are left in `tasks` as they were. Throws as submit(feeder) does.
  std::vector<std::shared_ptr<Job>> submit_each(std::vector<OutgoingTask>& tasks,
                                                const Deadline& deadline);
  // An imap starts reading its input, or has read all of it (or was dropped). close() leaves the
  // task ring open to feeders until the last is done, as Python's imap keeps feeding after close.
  void feeder_started();
  void feeder_done() noexcept;
  // Throws Error if called on the callback thread for a job whose callbacks have not run.
  void check_not_waiting_for_itself(const Job& job);
  // Waits until `done()` holds (it is checked under the mutex), collecting meanwhile; false if the
  // deadline passed first.
  bool wait(const std::function<bool()>& done, const Deadline& deadline);
  // Nobody will read the job's results.
  void forget(Job& job) noexcept;

  void close();
  void join();
  void terminate() noexcept;
  // terminate(), then every callback delivered and the callback thread gone.
  void shut_down() noexcept;

 private:
  // running -> closed (close) -> terminated (terminate); broken (the manager died) from any but
  // terminated. Once terminated or broken, no outcome will come any more.
  enum class State { running, closed, terminated, broken };

  // A task queued and its outcome not yet filed.
  struct Pending {
    std::shared_ptr<Job> job;
    std::size_t index;  // in job->results
    PayloadFile args;   // out-of-band arguments, held until the outcome is filed
    PayloadFile loan;   // lent for the result, held until the outcome is filed
  };

  // Files the tasks as pending (tasks[i] for owner(i): a job and the index of its result), then
  // queues them in order, waiting while the ring is full. Returns how many were queued: all,
  // unless the deadline passed first (with all_once_begun, only before the first was); those not
  // queued are unfiled, their arguments back in `tasks`.
  std::size_t queue_tasks(
      std::unique_lock<std::mutex>& lock, std::vector<OutgoingTask>& tasks,
      const std::function<std::pair<std::shared_ptr<Job>, std::size_t>(std::size_t)>& owner,
      const Deadline& deadline, bool all_once_begun, bool feeder);
  bool has_ended() const noexcept { return state_ == State::terminated || state_ == State::broken; }
  std::string name() const;
  void throw_unless_running(bool feeder) const;
  void shut_task_ring(bool immediate) noexcept;
  bool wait_locked(std::unique_lock<std::mutex>& lock, const std::function<bool()>& done,
                   const Deadline& deadline);
  std::vector<ResultMessage> receive(const Deadline& deadline);
  void file(ResultMessage message);
  // A returned result's payload, from the ring, the memfd lent, or the memfd sent with it.
  void take_payload(ResultMessage& message, Pending& pending, TaskResult& result);
  void settle(Pending& pending, TaskResult result);
  void check_manager();
  void end(State state, std::string reason);
  void run_callbacks();
  void stop_callback_thread() noexcept;

  PoolShared shared_;
  Child manager_;
  // The memfds of out-of-band payloads, reused (pool_payload.hpp); shared with the results that
  // hold one, which may outlive the pool.
  const std::shared_ptr<PayloadFiles> payload_files_;

  // Guarded by mutex_.
  std::mutex mutex_;
  std::condition_variable changed_;  // something was filed, or the puller stopped
  bool pulling_ = false;             // a thread is taking outcomes off the result ring
  State state_ = State::running;
  std::string ended_reason_;
  std::uint64_t last_id_ = 0;
  std::unordered_map<std::uint64_t, Pending> pending_;  // by task id
  std::deque<std::shared_ptr<Job>> ready_callbacks_;    // every outcome in, callbacks to run
  std::size_t undelivered_ = 0;                         // jobs with callbacks not yet run
  bool stop_callbacks_ = false;
  std::size_t feeders_ = 0;  // imaps still reading their input
  bool tasks_shut_ = false;  // the task ring is shut down: nothing more can be queued
  std::thread callback_thread_;
};

}  // namespace shmq::detail
