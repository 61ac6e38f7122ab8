// shmq::Lock and shmq::RLock: Python's multiprocessing.Lock and RLock, robust against a holder
// killed at any instruction.
//
//   shmq::Lock lock;                       // lock = multiprocessing.Lock()
//   shmq::Process p([lock]() mutable {     // Process(target=f, args=(lock,))
//     std::scoped_lock guard(lock);        // with lock:
//     if (lock.owner_died()) repair();     //   (a holder died: what it guarded may be half done)
//   });
//
// Both are TimedLockable (lock, try_lock, unlock, try_lock_for, try_lock_until), so
// std::scoped_lock, std::unique_lock and std::condition_variable_any take them; and they have
// Python's acquire(block, timeout) -> bool and release().
//
// A holder that dies: the kernel lets the lock go (a robust futex, robust_mutex.hpp), the next
// acquire takes it and returns normally, and owner_died() is true until that holder releases it:
// told once, to the one thread that gets the lock next. An exception would not do: std::scoped_lock
// and std::unique_lock do not unlock a lock whose lock() threw, so the lock would stay held.
// A thread that ends (returns, pthread_exit) holding a lock counts as dead: the kernel releases
// every robust lock a thread still holds when it exits.
//
// Ownership: a lock is held by a thread, and only that thread may release it (Python lets any
// process release a multiprocessing.Lock; here release() by another thread, or of a lock nobody
// holds, throws NotHeld, leaving the lock as it was). A blocking acquire of a Lock by the thread
// that holds it throws SelfDeadlock (Python would wait forever); a try or timed one returns false
// at once (nobody else can release it).
//
// Handles are copyable; copies (and copies in children made by fork) share the lock.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string_view>

#include "shmq/detail/sync_object.hpp"
#include "shmq/queue.hpp"

namespace shmq {

class Condition;

namespace detail {

template <class T, ObjectKind Kind>
class SharedElements;

// Lock and RLock: the same calls over the same core; only recursion differs.
template <class Handle, ObjectKind Kind>
class BasicLock : public NamedObject<Handle> {
 public:
  // Python's acquire(block=True, timeout=None): true once held. Without `block`, or with a timeout
  // of zero or less, never waits. Throws SelfDeadlock (a Lock this thread holds, no timeout).
  bool acquire(bool block = true, std::optional<double> timeout = std::nullopt) {
    if (!block) return core_.acquire(Deadline::now());
    return core_.acquire(deadline_after_seconds(timeout, this->object_->description()));
  }
  // Python's release(). Throws NotHeld unless this thread holds it.
  void release() { core_.release(); }

  // TimedLockable.
  void lock() { core_.acquire(Deadline::never()); }
  bool try_lock() { return core_.acquire(Deadline::now()); }
  void unlock() { core_.release(); }
  template <class Rep, class Period>
  bool try_lock_for(const std::chrono::duration<Rep, Period>& timeout) {
    return core_.acquire(Deadline::after(timeout));
  }
  template <class Clock, class Duration>
  bool try_lock_until(const std::chrono::time_point<Clock, Duration>& when) {
    return core_.acquire(Deadline::after(when - Clock::now()));
  }

  // True while this thread holds it, if the holder before this thread died holding it: whatever
  // the lock guards may be half changed. Told to exactly one holder, until it releases the lock.
  bool owner_died() const { return core_.owner_died(); }
  // Whether this thread holds it (Python's RLock._is_owned()).
  bool held_by_this_thread() const { return core_.held_by_this_thread(); }

  static constexpr std::uint32_t kinds() { return kind_bit(Kind); }

 protected:
  explicit BasicLock(std::shared_ptr<SyncObject> object)
      : NamedObject<Handle>(object),
        core_(object, object->header().lock, Kind == ObjectKind::rlock) {}
  static ObjectSpec spec() { return ObjectSpec{Kind}; }

 private:
  friend class shmq::Condition;
  template <class T, ObjectKind K>
  friend class SharedElements;
  LockCore core_;
};

}  // namespace detail

// multiprocessing.Lock: a robust, non-recursive lock.
class Lock : public detail::BasicLock<Lock, detail::ObjectKind::lock> {
 public:
  // An unnamed lock, as Python's Lock(): passes to children by fork and as Process/Pool arguments.
  Lock() : Lock(detail::SyncObject::create_anonymous(spec())) {}
  // A named lock, /dev/shm/shmq.<name>, with the queue's name rules; AlreadyExists if taken.
  static Lock create(std::string_view name, mode_t mode = 0600) {
    return Lock(detail::SyncObject::create(name, spec(), mode));
  }
  static Lock open_or_create(std::string_view name, mode_t mode = 0600) {
    return Lock(detail::SyncObject::open_or_create(name, spec(), mode));
  }

 private:
  friend class detail::NamedObject<Lock>;
  using BasicLock::BasicLock;
};

// multiprocessing.RLock: a robust recursive lock; the holder may acquire it again, and must
// release it as many times. An RLock whose holder dies is taken over with a depth of 1.
class RLock : public detail::BasicLock<RLock, detail::ObjectKind::rlock> {
 public:
  RLock() : RLock(detail::SyncObject::create_anonymous(spec())) {}
  static RLock create(std::string_view name, mode_t mode = 0600) {
    return RLock(detail::SyncObject::create(name, spec(), mode));
  }
  static RLock open_or_create(std::string_view name, mode_t mode = 0600) {
    return RLock(detail::SyncObject::open_or_create(name, spec(), mode));
  }

 private:
  friend class detail::NamedObject<RLock>;
  template <class T, detail::ObjectKind K>
  friend class detail::SharedElements;
  using BasicLock::BasicLock;
};

template <>
struct codec<Lock> : detail::queue_handle_codec<Lock> {};
template <>
struct codec<RLock> : detail::queue_handle_codec<RLock> {};

}  // namespace shmq
