// shmq::Semaphore and shmq::BoundedSemaphore: Python's multiprocessing.Semaphore and
// BoundedSemaphore, in shared memory.
//
//   shmq::BoundedSemaphore slots(3);         // slots = multiprocessing.BoundedSemaphore(3)
//   if (slots.acquire(true, 1.5)) {          // if slots.acquire(timeout=1.5):
//     work(); slots.release();               //     work(); slots.release()
//   }
//
// A process that dies holding a unit loses it, as with a POSIX or a Python semaphore: units have
// no owner (any process may release one, which is how a semaphore signals), so a death cannot be
// told from a unit handed on. Use a Lock (or one Lock per slot) where a death must give the unit
// back. A waiter or a releaser killed at any instruction wedges nobody: a unit is taken or given
// back by one atomic instruction, and sleepers look again at least every 100 ms (ring.hpp,
// kLongestSleep), so a releaser killed between its increment and its wake-up delays a waiter by at
// most that much.
//
// Handles are copyable; copies (and copies in children made by fork) share the semaphore.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>

#include "shmq/detail/sync_object.hpp"
#include "shmq/queue.hpp"

namespace shmq {

namespace detail {

// Takes a unit once one is free, by the deadline (src/sync_primitives.cpp).
bool semaphore_acquire_contended(SyncObject& object, const Deadline& deadline);
// Gives a unit back and wakes waiters; throws OverReleased past `bound`.
void semaphore_release(SyncObject& object, std::uint32_t bound);

template <class Handle, ObjectKind Kind>
class BasicSemaphore : public NamedObject<Handle> {
 public:
  // Python's acquire(block=True, timeout=None): true once a unit is taken.
  bool acquire(bool block = true, std::optional<double> timeout = std::nullopt) {
    if (!block) return take(Deadline::now());
    return take(deadline_after_seconds(timeout, this->object_->description()));
  }
  // Gives a unit back, waking a waiter. A BoundedSemaphore throws OverReleased past its initial
  // value; a Semaphore past 2^31 - 1.
  void release() {
    semaphore_release(*this->object_, Kind == ObjectKind::bounded_semaphore ? this->object_->limit()
                                                                            : kMaxSemaphoreValue);
  }
  // Python's get_value(): the units free now (a snapshot).
  std::uint32_t get_value() const {
    return this->object_->header().count.load(std::memory_order_relaxed);
  }
  // Lockable, for std::scoped_lock and the like (a unit, not ownership).
  void lock() { take(Deadline::never()); }
  bool try_lock() { return take(Deadline::now()); }
  void unlock() { release(); }
  template <class Rep, class Period>
  bool try_acquire_for(const std::chrono::duration<Rep, Period>& timeout) {
    return take(Deadline::after(timeout));
  }

  // Named: as Queue's create / open_or_create (open and remove: NamedObject).
  static Handle create(std::string_view name, std::uint32_t value = 1, mode_t mode = 0600) {
    return Handle(SyncObject::create(name, spec(value), mode));
  }
  static Handle open_or_create(std::string_view name, std::uint32_t value = 1, mode_t mode = 0600) {
    return Handle(SyncObject::open_or_create(name, spec(value), mode));
  }

  static constexpr std::uint32_t kinds() { return kind_bit(Kind); }

 protected:
  using NamedObject<Handle>::NamedObject;
  static ObjectSpec spec(std::uint32_t value) {
    ObjectSpec s{Kind};
    s.initial_count = value;
    s.limit = value;
    return s;
  }

 private:
  bool take(const Deadline& deadline) {
    auto& count = this->object_->header().count;
    for (std::uint32_t now = count.load(std::memory_order_relaxed); now != 0;) {
      if (count.compare_exchange_weak(now, now - 1, std::memory_order_acquire,
                                      std::memory_order_relaxed)) {
        return true;
      }
    }
    return semaphore_acquire_contended(*this->object_, deadline);
  }
};

}  // namespace detail

// multiprocessing.Semaphore(value=1).
class Semaphore : public detail::BasicSemaphore<Semaphore, detail::ObjectKind::semaphore> {
 public:
  // Unnamed; InvalidArgument for a value over 2^31 - 1.
  explicit Semaphore(std::uint32_t value = 1)
      : Semaphore(detail::SyncObject::create_anonymous(spec(value))) {}

 private:
  friend class detail::NamedObject<Semaphore>;
  friend BasicSemaphore;
  using BasicSemaphore::BasicSemaphore;
};

// multiprocessing.BoundedSemaphore(value=1): release() past the initial value throws OverReleased.
class BoundedSemaphore
    : public detail::BasicSemaphore<BoundedSemaphore, detail::ObjectKind::bounded_semaphore> {
 public:
  explicit BoundedSemaphore(std::uint32_t value = 1)
      : BoundedSemaphore(detail::SyncObject::create_anonymous(spec(value))) {}

 private:
  friend class detail::NamedObject<BoundedSemaphore>;
  friend BasicSemaphore;
  using BasicSemaphore::BasicSemaphore;
};

template <>
struct codec<Semaphore> : detail::queue_handle_codec<Semaphore> {};
template <>
struct codec<BoundedSemaphore> : detail::queue_handle_codec<BoundedSemaphore> {};

}  // namespace shmq
