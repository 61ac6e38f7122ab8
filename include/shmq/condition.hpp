// shmq::Condition: Python's multiprocessing.Condition, over a shmq::Lock or shmq::RLock.
//
//   shmq::Condition cond;                     // cond = multiprocessing.Condition()  (an RLock)
//   std::unique_lock held(cond);              // with cond:
//   cond.wait_for([&] { return ready(); });   //     cond.wait_for(ready)
//
// notify(n) and notify_all() wake every waiter: Python documents that notify(n) may wake more
// than n, and nothing in the condition is per waiter, so a waiter killed while waiting (or between
// letting go of the lock and sleeping) wedges nobody, and a notify is never spent on a dead one.
// wait() returns true once notified (or spuriously, as C++ waits may: use wait_for with a
// predicate), false on timeout; either way with the lock held again, which owner_died() on the
// lock reports if a holder died meanwhile. A notifier killed before its wake-up delays waiters by
// at most 100 ms.
//
// Handles are copyable; copies share the condition and its lock. A named condition records its
// lock's name, so open(name) finds both (an unnamed lock opens only while its creator holds it).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string_view>
#include <variant>

#include "shmq/lock.hpp"

namespace shmq {

class Condition : public detail::NamedObject<Condition> {
 public:
  // Over a new unnamed RLock, as Python's Condition().
  Condition() : Condition(RLock()) {}
  explicit Condition(const Lock& lock) : Condition(make(lock, std::nullopt, 0600)) {}
  explicit Condition(const RLock& lock) : Condition(make(lock, std::nullopt, 0600)) {}
  template <class L>
  static Condition create(std::string_view name, const L& lock, mode_t mode = 0600) {
    return make(lock, name, mode);
  }
  static Condition open(std::string_view name);

  // The lock: acquire/release (Python), lock/unlock/try_lock (BasicLockable, for std::unique_lock).
  bool acquire(bool block = true, std::optional<double> timeout = std::nullopt) {
    return std::visit([&](auto& l) { return l.acquire(block, timeout); }, lock_);
  }
  void release() { core().release(); }
  void lock() { core().acquire(detail::Deadline::never()); }
  bool try_lock() { return core().acquire(detail::Deadline::now()); }
  void unlock() { core().release(); }
  // The lock itself: a Lock or an RLock.
  const std::variant<Lock, RLock>& get_lock() const noexcept { return lock_; }

  // Python's wait(timeout=None): lets go of the lock (every hold of an RLock), sleeps until
  // notified or the timeout, takes the lock back. Throws NotHeld unless this thread holds it.
  bool wait(std::optional<double> timeout = std::nullopt) {
    return wait_until(detail::deadline_after_seconds(timeout, object_->description()));
  }
  template <class Predicate>
  bool wait_for(Predicate predicate, std::optional<double> timeout = std::nullopt) {
    const auto deadline = detail::deadline_after_seconds(timeout, object_->description());
    while (!predicate()) {
      if (!wait_until(deadline)) return predicate();
    }
    return true;
  }
  // Wakes every waiter (see the file comment for n). Throws NotHeld unless this thread holds it.
  void notify(unsigned n = 1);
  void notify_all() { notify(~0u); }

  static constexpr std::uint32_t kinds() { return detail::kind_bit(detail::ObjectKind::condition); }

 private:
  friend class detail::NamedObject<Condition>;
  Condition(std::shared_ptr<detail::SyncObject> object, std::variant<Lock, RLock> lock)
      : NamedObject(std::move(object)), lock_(std::move(lock)) {}
  template <class L>
  static Condition make(const L& lock, std::optional<std::string_view> name, mode_t mode) {
    detail::ObjectSpec spec{detail::ObjectKind::condition};
    spec.lock_name = lock.name();
    spec.lock_kind =
        std::is_same_v<L, RLock> ? detail::ObjectKind::rlock : detail::ObjectKind::lock;
    return Condition(name ? detail::SyncObject::create(*name, spec, mode)
                          : detail::SyncObject::create_anonymous(spec),
                     lock);
  }
  detail::LockCore& core() {
    return std::visit([](auto& l) -> detail::LockCore& { return l.core_; }, lock_);
  }
  bool wait_until(const detail::Deadline& deadline);

  std::variant<Lock, RLock> lock_;
};

template <>
struct codec<Condition> : detail::queue_handle_codec<Condition> {};

}  // namespace shmq
