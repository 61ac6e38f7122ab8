// The caller's halves of AsyncResult and IMapIterator that need no template, and how a task's
// outcome is held until it is decoded. Internal; compiled in src/pool_results.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "shmq/detail/deadline.hpp"
#include "shmq/detail/pool_payload.hpp"
#include "shmq/detail/pool_wire.hpp"

namespace shmq::detail {

class PoolCore;  // src/pool_core.hpp: the caller's side of the pool
struct Job;      // src/pool_core.hpp: one submission's tasks and their outcomes

// A task on its way to the task ring: the message, the memfd of its arguments if they travel out
// of band (held until the task's outcome arrives), and how many items it carries (1 for apply).
struct OutgoingTask {
  TaskMessage message;
  PayloadFile args;
  std::size_t items = 1;
};

// A task's outcome as the caller holds it until it is decoded.
struct TaskResult {
  std::uint64_t id = 0;
  TaskOutcome outcome = TaskOutcome::lost;
  std::string type_name;  // raised
  std::string what;       // raised, lost
  std::string bytes;      // returned, inline
  PayloadFile file;       // returned, out of band

  const std::byte* data() const noexcept;
  std::size_t size() const noexcept;
  // RemoteError (the task raised) or WorkerLost (its worker, or the pool, ended first).
  [[noreturn]] void throw_failure() const;
  template <class T>
  T decode() const {
    if (outcome != TaskOutcome::returned) throw_failure();
    return decode_exactly<T>(data(), size());
  }
};

// Runs a job's callbacks with its outcomes (on the pool's callback thread); empty: no callbacks.
using Deliver = std::function<void(const std::vector<TaskResult>&)>;

// The caller's side of one apply_async / map_async / starmap_async: waits for its tasks.
class PendingTasks {
 public:
  PendingTasks(std::shared_ptr<PoolCore> core, std::shared_ptr<Job> job);
  PendingTasks(PendingTasks&&) noexcept = default;
  PendingTasks& operator=(PendingTasks&&) noexcept = default;
  ~PendingTasks();  // tells the pool to drop results nobody will collect

  // Whether every task's outcome is in (and its callback has run) by the deadline.
  bool wait(const Deadline& deadline);
  // Every task's outcome, in submission order; requires wait() to have returned true.
  const std::vector<TaskResult>& results() const;

 private:
  std::shared_ptr<PoolCore> core_;
  std::shared_ptr<Job> job_;
};

// The caller's side of one imap / imap_unordered: feeds the input a chunk at a time, keeping a
// bounded number of chunks in flight, and returns the chunks' outcomes in order or as they come.
class IMapCore {
 public:
  // The next chunk of the input, encoded; nullopt once the input is exhausted. Runs the caller's
  // iterator code, which may throw.
  using Feed = std::function<std::optional<OutgoingTask>()>;

  IMapCore(std::shared_ptr<PoolCore> core, Feed feed, bool ordered);
  IMapCore(const IMapCore&) = delete;
  IMapCore& operator=(const IMapCore&) = delete;
  ~IMapCore();  // the pool drops the outcomes of chunks still in flight

  // The next chunk's outcome and item count; nullopt once every chunk has been returned. Throws
  // TimeoutError when the deadline passes first, and at the input's end the exception its
  // iterator threw, if it threw (once).
  std::optional<std::pair<TaskResult, std::size_t>> next(const Deadline& deadline);

 private:
  // Reads the input up to the window, and queues what it read, as much as the deadline allows.
  void feed(const Deadline& deadline);
  // Tells the pool this imap reads no more input (once).
  void finish_feeding() noexcept;

  std::shared_ptr<PoolCore> core_;
  Feed feed_;
  const bool ordered_;
  const std::size_t window_;  // the most chunks in flight at once
  // Chunks submitted and not yet returned, in input order, with their item counts and sizes.
  struct InFlight {
    std::shared_ptr<Job> job;
    std::size_t items;
    std::size_t bytes;
  };
  std::deque<InFlight> in_flight_;
  std::size_t in_flight_bytes_ = 0;   // the encoded size of the chunks in flight
  std::vector<OutgoingTask> unsent_;  // read, not yet queued (no room in the ring by the deadline)
  std::size_t unsent_bytes_ = 0;      // their arguments' encoded size
  bool exhausted_ = false;            // the input is all read (or its iterator threw)
  bool feeding_ = false;              // the pool counts this imap as a feeder
  std::exception_ptr feed_error_;     // what the input's iterator threw
};

}  // namespace shmq::detail
