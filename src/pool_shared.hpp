// What the three roles of a Pool share: made by the caller before it forks the manager, inherited
// by the manager and by every worker. Private to src/pool_*.cpp.
//
//   caller ──tasks──▶ workers ──results──▶ caller     (two shmq rings, made by the caller;
//                        ▲                               large payloads out of band: pool_payload)
//            manager ────┘ forks and reaps them; posts WorkerLost for the task a dead worker held
//
//   pool_core.cpp     the caller's side: submitting, collecting, callbacks (pool_core.hpp)
//   pool_results.cpp  AsyncResult's and IMapIterator's halves compiled once, and Pool itself
//   pool_manager.cpp  the manager process
//   pool_worker.cpp   a worker process
//
// Which task each worker holds is kept in a shared array of slots. A worker records the task in its
// slot while it decodes it, under the task queue's lock and before the get commits, so there is no
// instant at which a worker holds a task its slot does not show. A worker killed in between leaves
// the task queued and its slot set: the task then runs again elsewhere, and its first outcome (the
// WorkerLost) is the one reported.
#pragma once

#include <signal.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "shmq/detail/pool_payload.hpp"
#include "shmq/detail/pool_wire.hpp"
#include "shmq/detail/spawn.hpp"
#include "shmq/pool.hpp"
#include "shmq/queue.hpp"

namespace shmq::detail {

// One per worker, in a MAP_SHARED array made before the manager is forked.
struct alignas(64) WorkerSlot {
  std::atomic<std::uint64_t> task;  // the task this worker holds, or 0; written by the worker
};

// Worker exit codes the manager tells apart.
inline constexpr int kExitShutDown = 0;   // the task queue was shut down: do not replace
inline constexpr int kExitRetired = 100;  // maxtasksperchild reached: replace

class PoolShared {
 public:
  explicit PoolShared(PoolOptions options);
  PoolShared(const PoolShared&) = delete;
  PoolShared& operator=(const PoolShared&) = delete;
  ~PoolShared();

  // The largest payload a message of `queue` carries inline; larger ones go out of band.
  template <class Message>
  static std::size_t inline_limit(const Queue<Message>& queue) {
    constexpr std::size_t kEnvelope = 64;  // a message's fields other than the payload's bytes
    return queue.max_message_bytes() > kEnvelope ? queue.max_message_bytes() - kEnvelope : 0;
  }

  const PoolOptions options;
  const std::size_t processes;
  Queue<TaskMessage> tasks;
  Queue<ResultMessage> results;
  WorkerSlot* const slots;
  PayloadChannel channel;
  // What a worker restores before it runs the program's code: as they were when the pool was made.
  std::vector<Disposition> program_dispositions;
  sigset_t program_mask;
  // Who made the pool, for a worker's parent_process().
  const pid_t owner_pid;
  const std::string owner_name;
};

// The manager process's body (pool_manager.cpp); `owner` is a pidfd of the process that made the
// pool. Returns when every worker has ended, or at once when the owner has ended.
int run_manager(PoolShared& shared, int owner);
// Forks the manager (pool_manager.cpp).
Child spawn_manager(PoolShared& shared);

// A worker process's body (pool_worker.cpp): `index` is its slot, `number` its N in
// ForkPoolWorker-N.
int run_worker(PoolShared& shared, std::size_t index, std::size_t number);

// A child's end as error messages put it, from Child::wait_status().
std::string describe_end(const std::optional<int>& status);

}  // namespace shmq::detail
