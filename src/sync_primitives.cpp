// The waiting paths of Semaphore, Event, Condition and Barrier.
#include <linux/futex.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "shmq/barrier.hpp"
#include "shmq/condition.hpp"
#include "shmq/event.hpp"
#include "shmq/semaphore.hpp"
#include "shmq/shared_memory.hpp"

namespace shmq {

namespace detail {

namespace {

// Sleeps on the object's EventCount until ready() or the deadline: true if ready() held.
template <class Ready>
bool await_ready(SyncObject& object, const Deadline& deadline, Ready&& ready) {
  for (;;) {
    if (ready()) return true;
    if (deadline.expired()) return false;
    await(object.header().wakeups, nullptr, object.spin(), ready, deadline);
  }
}

}  // namespace

bool semaphore_acquire_contended(SyncObject& object, const Deadline& deadline) {
  auto& count = object.header().count;
  for (;;) {
    const bool free =
        await_ready(object, deadline, [&] { return count.load(std::memory_order_relaxed) != 0; });
    if (!free) return false;
    for (std::uint32_t now = count.load(std::memory_order_relaxed); now != 0;) {
      if (count.compare_exchange_weak(now, now - 1, std::memory_order_acquire,
                                      std::memory_order_relaxed)) {
        return true;
      }
    }
  }
}

void semaphore_release(SyncObject& object, std::uint32_t bound) {
  auto& count = object.header().count;
  std::uint32_t now = count.load(std::memory_order_relaxed);
  do {
    if (now >= bound) {
      throw OverReleased("shmq: " + object.description() + " released too many times: its value " +
                         std::to_string(now) + " is already at its bound of " +
                         std::to_string(bound));
    }
  } while (!count.compare_exchange_weak(now, now + 1, std::memory_order_release,
                                        std::memory_order_relaxed));
  notify(object.header().wakeups);
}

namespace {

// Counts the calling thread as a sleeper on the object's EventCount: the epoch it waits in.
std::uint32_t count_sleeper(SyncObject& object) {
  EventCount& ev = object.header().wakeups;
  const std::uint32_t epoch = epoch_of(ev.sleep.fetch_add(1, std::memory_order_relaxed));
  std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with has_sleepers() (Dekker)
  return epoch;
}

// Whether a notify has started a new epoch since the caller was counted in `epoch`.
bool epoch_moved(SyncObject& object, std::uint32_t epoch) noexcept {
  return epoch_of(object.header().wakeups.sleep.load(std::memory_order_acquire)) != epoch;
}

// For a thread counted by count_sleeper in `epoch`: polls as long as `spin` allows (not at all
// without one), then sleeps, until released() (true) or the deadline passes (false); then takes
// itself off the count. The budget adapts as await()'s does: a fixed one would spin its whole
// length on every wait when the peer shares the core and cannot run until the spinner sleeps (a
// 2000-poll Event round trip took 105 us there, against 6). A notifier that finds sleepers starts
// a new epoch before bumping `seq` and waking, so a notifier killed between the two still counts
// once the waiter looks again (its sleeps last at most kLongestSleep). A new epoch clears the
// count: a waiter that it did not release (an Event's waiter, woken by a set() that began before
// its wait) counts itself again in the new epoch before it sleeps, so the next notify finds it.
template <class Released>
bool sleep_until_released(SyncObject& object, std::uint32_t epoch, const Deadline& deadline,
                          SpinBudget* spin, Released&& released) {
  EventCount& ev = object.header().wakeups;
  bool done = spin != nullptr && spin->spin_until(released);
  while (!done) {
    const std::uint32_t seq = ev.seq.load(std::memory_order_acquire);
    if ((done = released()) || deadline.expired()) break;
    if (epoch_moved(object, epoch)) {
      epoch = count_sleeper(object);
      continue;  // counted again: look once more before sleeping (Dekker, as count_sleeper says)
    }
    futex_wait(ev.seq, seq, deadline.capped(kLongestSleep));
  }
  // Off the count, unless a notifier already cleared it by starting a new epoch.
  std::uint64_t now = ev.sleep.load(std::memory_order_relaxed);
  while (epoch_of(now) == epoch && sleepers_of(now) != 0 &&
         !ev.sleep.compare_exchange_weak(now, now - 1, std::memory_order_relaxed)) {
  }
  return done;
}

}  // namespace

// A wait is released by the flag, or by any set() that began after the wait did, even if a
// clear() has followed (Python's Event releases every thread waiting when set() is called). The
// word's set count tells those set()s apart from one that began before the wait: a set() whose
// notify was still in flight when the wait counted itself starts a new epoch, but leaves the set
// count as the wait first read it (a ping-pong of set() and clear() between two processes used
// to take such a stale epoch for its next ping, and both sides then waited for ever).
bool event_wait(SyncObject& object, const Deadline& deadline) {
  auto& word = object.header().count;
  const std::uint32_t start = word.load(std::memory_order_acquire);
  if (event_is_set(start)) return true;
  // wait(0), or a negative timeout: a look, as Python's; no spin, and no sleeper counted that
  // would cost a concurrent set() a wake-up syscall.
  if (deadline.is_now()) return false;
  return sleep_until_released(object, count_sleeper(object), deadline, &object.spin(), [&] {
    const std::uint32_t now = word.load(std::memory_order_acquire);
    return event_is_set(now) || event_sets(now) != event_sets(start);
  });
}

}  // namespace detail

// ---- Condition
//
// A waiter counts itself on the EventCount while it holds the lock, then lets go of the lock and
// sleeps until the EventCount's epoch moves: a notifier (holding the lock, so after the waiter
// counted itself) that finds sleepers starts a new epoch (detail::sleep_until_released).

Condition Condition::open(std::string_view name) {
  auto object = detail::SyncObject::open(name, kinds());
  const auto& h = object->header();
  const std::string lock_name(h.lock_name, strnlen(h.lock_name, sizeof h.lock_name));
  if (h.lock_kind == static_cast<std::uint32_t>(detail::ObjectKind::rlock))
    return Condition(object, RLock::open(lock_name));
  return Condition(object, Lock::open(lock_name));
}

bool Condition::wait_until(const detail::Deadline& deadline) {
  detail::LockCore& lock = core();
  if (!lock.held_by_this_thread()) {
    throw NotHeld("shmq: " + object_->description() + ": wait() without holding its lock");
  }
  const std::uint32_t epoch = detail::count_sleeper(*object_);
  const std::uint32_t depth = lock.release_all();
  const bool notified = detail::sleep_until_released(
      *object_, epoch, deadline, nullptr, [&] { return detail::epoch_moved(*object_, epoch); });
  lock.reacquire(depth);
  return notified;
}

void Condition::notify(unsigned) {
  if (!core().held_by_this_thread()) {
    throw NotHeld("shmq: " + object_->description() + ": notify() without holding its lock");
  }
  detail::notify(object_->header().wakeups);
}

// ---- Barrier
//
// State, guarded by the header's lock: arrived (parties waiting in this generation), generation,
// broken. Each waiting party holds a slot (BarrierSlot) whose `presence` lock it holds while it
// waits; whoever ends a generation (the last arrival tripping it, or reset/abort/a break) writes
// the outcome into every slot waiting in it, and the waiter, polling its slot, returns or throws.

namespace {

using detail::BarrierSlot;
using detail::SlotState;

// Holds the barrier's lock; a lock taken over from a dead holder breaks the barrier: that holder
// was in the middle of changing it. The lock is held for a few instructions at a time, so a
// wait() arriving with a deadline waits for it until then (at least kNowaitLockPatience), and
// throws BrokenBarrier naming the holder if it stays held longer (a stopped process, or hostile
// bytes): the barrier itself is not broken by that. Once a party waits in its slot, it takes the
// lock without a deadline: it must not leave its slot behind.
class BarrierGuard {
 public:
  explicit BarrierGuard(const std::shared_ptr<detail::SyncObject>& object,
                        const detail::Deadline& deadline = detail::Deadline::never())
      : core_(object, object->header().lock, false) {
    const bool passed = !deadline.is_never() && deadline.expired();
    if (!core_.acquire(passed ? detail::Deadline::after(detail::RobustLock::kNowaitLockPatience)
                              : deadline)) {
      const std::uint32_t holder =
          object->header().lock.mutex.word.load(std::memory_order_relaxed) & FUTEX_TID_MASK;
      throw BrokenBarrier("shmq: " + object->description() + ": its lock stayed held by thread " +
                          std::to_string(holder) + " past this wait()'s timeout");
    }
  }
  BarrierGuard(const BarrierGuard&) = delete;
  BarrierGuard& operator=(const BarrierGuard&) = delete;
  ~BarrierGuard() { core_.release(); }
  bool recovered() const { return core_.owner_died(); }

 private:
  detail::LockCore core_;
};

BarrierSlot* slots(detail::SyncObject& object) {
  return reinterpret_cast<BarrierSlot*>(object.data());
}
std::uint32_t slot_count(const detail::SyncObject& object) {
  return 2 * object.limit();
}
bool holder_gone(const BarrierSlot& slot) {
  return (slot.presence.word.load(std::memory_order_relaxed) & FUTEX_TID_MASK) == 0;
}

// Ends the current generation: every party waiting in it gets `outcome`. Call under the lock.
void end_generation(detail::SyncObject& object, SlotState outcome) {
  auto& h = object.header();
  for (std::uint32_t i = 0; i < slot_count(object); ++i) {
    BarrierSlot& slot = slots(object)[i];
    if (slot.state.load(std::memory_order_relaxed) ==
            static_cast<std::uint32_t>(SlotState::waiting) &&
        slot.generation == h.generation) {
      slot.state.store(static_cast<std::uint32_t>(outcome), std::memory_order_release);
    }
  }
  h.arrived.store(0, std::memory_order_relaxed);
  ++h.generation;
  detail::notify(h.wakeups);
}

void break_barrier(detail::SyncObject& object) {
  object.header().broken.store(1, std::memory_order_relaxed);
  end_generation(object, SlotState::broken);
}

// Whether a party waiting in the current generation has died. Call under the lock.
bool a_waiter_died(detail::SyncObject& object) {
  const auto& h = object.header();
  for (std::uint32_t i = 0; i < slot_count(object); ++i) {
    const BarrierSlot& slot = slots(object)[i];
    if (slot.state.load(std::memory_order_relaxed) ==
            static_cast<std::uint32_t>(SlotState::waiting) &&
        slot.generation == h.generation && holder_gone(slot)) {
      return true;
    }
  }
  return false;
}

// Takes a free slot for this thread, or returns null if none is free. Call under the lock.
BarrierSlot* claim_slot(detail::SyncObject& object) {
  detail::ThisThread& me = detail::this_thread_identity();
  for (std::uint32_t i = 0; i < slot_count(object); ++i) {
    BarrierSlot& slot = slots(object)[i];
    if (slot.state.load(std::memory_order_relaxed) ==
            static_cast<std::uint32_t>(SlotState::waiting) ||
        !holder_gone(slot)) {
      continue;
    }
    // Free, or left by a party that died after its generation ended: clear what the kernel left.
    slot.presence.word.store(0, std::memory_order_relaxed);
    if (!detail::try_lock(slot.presence, me)) continue;
    slot.generation = object.header().generation;
    slot.state.store(static_cast<std::uint32_t>(SlotState::waiting), std::memory_order_relaxed);
    return &slot;
  }
  return nullptr;
}

// Gives the slot back and reads its outcome. Call under the lock.
SlotState leave_slot(detail::SyncObject& object, BarrierSlot& slot) {
  const auto outcome = static_cast<SlotState>(slot.state.load(std::memory_order_relaxed));
  slot.state.store(static_cast<std::uint32_t>(SlotState::free), std::memory_order_relaxed);
  detail::unlock(slot.presence, detail::this_thread_identity());
  detail::notify(object.header().wakeups);  // for an arrival waiting for a free slot
  return outcome;
}

}  // namespace

detail::ObjectSpec Barrier::spec(unsigned parties, std::optional<double> timeout) {
  detail::ObjectSpec s{detail::ObjectKind::barrier};
  s.limit = parties;  // check_spec refuses 0 and more than kMaxBarrierParties, naming the number
  if (timeout) {
    const auto deadline = detail::deadline_after_seconds(timeout, "barrier");
    s.timeout = deadline.is_never() ? std::chrono::nanoseconds(0)
                : deadline.is_now() ? std::chrono::nanoseconds(1)
                                    : deadline.timeout();
  }
  return s;
}

unsigned Barrier::wait(std::optional<double> timeout) {
  detail::SyncObject& object = *object_;
  auto& h = object.header();
  const std::uint64_t default_ns = h.timeout_ns;
  const detail::Deadline deadline =
      timeout           ? detail::deadline_after_seconds(timeout, object.description())
      : default_ns != 0 ? detail::Deadline::after(std::chrono::nanoseconds(default_ns))
                        : detail::Deadline::never();
  const auto broken_error = [&](const char* why) {
    return BrokenBarrier("shmq: " + object.description() + " is broken" + why);
  };
  BarrierSlot* slot = nullptr;
  unsigned index = 0;
  for (;;) {
    {
      BarrierGuard guard(object_, deadline);
      if (guard.recovered() || a_waiter_died(object)) break_barrier(object);
      if (h.broken.load(std::memory_order_relaxed) != 0) throw broken_error("");
      if (h.arrived.load(std::memory_order_relaxed) >=
          object.limit()) {  // hostile bytes: no well-behaved process wrote this
        break_barrier(object);
        throw broken_error(" (its count of waiting parties was corrupt)");
      }
      if (h.arrived.load(std::memory_order_relaxed) + 1 == object.limit()) {
        index = h.arrived.load(std::memory_order_relaxed);
        try {
          if (action_) action_();
        } catch (...) {
          break_barrier(object);
          throw;
        }
        end_generation(object, SlotState::tripped);
        return index;
      }
      slot = claim_slot(object);
      if (slot != nullptr) {
        index = h.arrived.fetch_add(1, std::memory_order_relaxed);
        break;
      }
      if (deadline.expired()) {
        break_barrier(object);
        throw broken_error(" (wait() timed out)");
      }
    }
    // Every slot is held by parties of ended generations yet to leave (more threads than 2 x
    // parties use the barrier): wait for one to leave (leave_slot notifies).
    await(
        h.wakeups, nullptr, object.spin(), [] { return false; }, deadline);
  }
  for (;;) {
    const bool ended = [&] {
      const auto ready = [&] {
        return slot->state.load(std::memory_order_acquire) !=
               static_cast<std::uint32_t>(SlotState::waiting);
      };
      if (ready()) return true;
      await(h.wakeups, nullptr, object.spin(), ready, deadline);
      return ready();
    }();
    BarrierGuard guard(object_);
    if (!ended) {
      if (guard.recovered() || a_waiter_died(object)) {
        break_barrier(object);
      } else if (deadline.expired()) {
        break_barrier(object);
      }
    }
    if (slot->state.load(std::memory_order_relaxed) !=
        static_cast<std::uint32_t>(SlotState::waiting)) {
      const SlotState outcome = leave_slot(object, *slot);
      if (outcome == SlotState::tripped) return index;
      throw broken_error(deadline.expired() ? " (it, or this wait(), timed out)" : "");
    }
  }
}

void Barrier::reset() {
  BarrierGuard guard(object_);
  end_generation(*object_, SlotState::broken);
  object_->header().broken.store(0, std::memory_order_relaxed);
}

void Barrier::abort() {
  BarrierGuard guard(object_);
  break_barrier(*object_);
}

unsigned Barrier::n_waiting() const {
  // A snapshot, read without the lock (which hostile bytes could leave held).
  return std::min(object_->header().arrived.load(std::memory_order_relaxed), object_->limit());
}

bool Barrier::broken() const noexcept {
  return object_->header().broken.load(std::memory_order_relaxed) != 0;
}

}  // namespace shmq

// ---- SharedMemory (here for want of a file of its own: three functions)

namespace shmq {

detail::ObjectSpec SharedMemory::spec(std::size_t size) {
  if (size == 0) throw InvalidArgument("shmq: shared memory of 0 bytes: the size must be positive");
  detail::ObjectSpec s{detail::ObjectKind::shared_memory};
  s.data_bytes = size;
  return s;
}

void SharedMemory::unlink() const {
  const std::string& n = name();
  if (n.rfind(detail::kUnnamedPrefix, 0) != 0) remove(n);
}

void SharedMemory::throw_closed() const {
  throw Closed("shmq: this SharedMemory handle was close()d");
}

}  // namespace shmq
