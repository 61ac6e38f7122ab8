// shmq::Barrier: Python's multiprocessing.Barrier (threading.Barrier's calls), in shared memory.
//
//   shmq::Barrier start(3);                   // start = multiprocessing.Barrier(3)
//   const unsigned i = start.wait();          // i = start.wait()   (0 .. parties - 1)
//
// Broken (every waiter, now and until reset(), gets BrokenBarrier): by abort(); by reset() for
// those waiting then; by a wait() that times out; by the action throwing (its caller gets the
// action's exception); and by a party that dies (SIGKILL at any instruction, or its thread ending)
// while others wait, or while it holds the barrier's lock. Each waiting party holds a robust lock
// of its own (a slot), which the kernel marks when it dies; waiters look at the slots at least
// every 100 ms, and the last party to arrive looks before tripping, so a death before the trip
// always breaks the barrier, within 100 ms, and never hangs anyone.
//
// The action runs in the process whose wait() trips the barrier, from that handle (an action
// cannot travel between processes): give each process's handle the same action, or none.
// Handles are copyable; copies (and copies in children made by fork) share the barrier.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string_view>

#include "shmq/detail/sync_object.hpp"
#include "shmq/queue.hpp"

namespace shmq {

class Barrier : public detail::NamedObject<Barrier> {
 public:
  using Action = std::function<void()>;
  // Python's Barrier(parties, action=None, timeout=None); InvalidArgument for 0 or over 4096
  // parties.
  explicit Barrier(unsigned parties, Action action = {},
                   std::optional<double> timeout = std::nullopt)
      : Barrier(detail::SyncObject::create_anonymous(spec(parties, timeout)), std::move(action)) {}
  static Barrier create(std::string_view name, unsigned parties, Action action = {},
                        std::optional<double> timeout = std::nullopt, mode_t mode = 0600) {
    return Barrier(detail::SyncObject::create(name, spec(parties, timeout), mode),
                   std::move(action));
  }
  static Barrier open(std::string_view name, Action action = {}) {
    return Barrier(detail::SyncObject::open(name, kinds()), std::move(action));
  }

  // Waits for all parties; returns this party's arrival index (0 for the first). `timeout`
  // defaults to the barrier's. Throws BrokenBarrier (see the file comment).
  unsigned wait(std::optional<double> timeout = std::nullopt);
  // Breaks the barrier for those waiting now, then makes it whole and empty again.
  void reset();
  // Breaks it: waits now and later throw BrokenBarrier until reset().
  void abort();
  unsigned parties() const noexcept { return object_->limit(); }
  // Parties waiting now (a snapshot).
  unsigned n_waiting() const;
  bool broken() const noexcept;

  static constexpr std::uint32_t kinds() { return detail::kind_bit(detail::ObjectKind::barrier); }

 private:
  friend class detail::NamedObject<Barrier>;
  Barrier(std::shared_ptr<detail::SyncObject> object, Action action = {})
      : NamedObject(std::move(object)), action_(std::move(action)) {}
  static detail::ObjectSpec spec(unsigned parties, std::optional<double> timeout);

  Action action_;
};

template <>
struct codec<Barrier> : detail::queue_handle_codec<Barrier> {};

}  // namespace shmq
