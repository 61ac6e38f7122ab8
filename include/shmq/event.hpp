// shmq::Event: Python's multiprocessing.Event, in shared memory.
//
//   shmq::Event ready;                        // ready = multiprocessing.Event()
//   ready.set();  ready.wait(2.0);            // ready.set(); ready.wait(2.0)
//
// A waiter killed while waiting wedges nobody (nothing in the event is per waiter); a setter
// killed between its store and its wake-up delays waiters by at most 100 ms (they look again at
// least that often: ring.hpp, kLongestSleep). set() with nobody asleep makes no syscall.
//
// shmq::wait() and Notifier watch an Event (wait_item below): ready while set; they count
// themselves as sleepers on wakeup_count(), the EventCount (layout.hpp) that set() notifies.
//
// Handles are copyable; copies (and copies in children made by fork) share the event.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string_view>

#include "shmq/detail/sync_object.hpp"
#include "shmq/detail/wait_core.hpp"
#include "shmq/queue.hpp"

namespace shmq {

namespace detail {
bool event_wait(SyncObject& object, const Deadline& deadline);  // src/sync_primitives.cpp
}

class Event : public detail::NamedObject<Event> {
 public:
  Event() : Event(detail::SyncObject::create_anonymous(spec())) {}
  static Event create(std::string_view name, mode_t mode = 0600) {
    return Event(detail::SyncObject::create(name, spec(), mode));
  }
  static Event open_or_create(std::string_view name, mode_t mode = 0600) {
    return Event(detail::SyncObject::open_or_create(name, spec(), mode));
  }

  // Sets the flag and wakes every waiter.
  void set() noexcept {
    std::uint32_t now = flag().load(std::memory_order_relaxed);
    while (!flag().compare_exchange_weak(now, detail::event_after_set(now),
                                         std::memory_order_release, std::memory_order_relaxed)) {
    }
    detail::notify(object_->header().wakeups);
  }
  void clear() noexcept { flag().fetch_and(~1u, std::memory_order_relaxed); }
  bool is_set() const noexcept {
    return detail::event_is_set(flag().load(std::memory_order_acquire));
  }
  // Python's wait(timeout=None): blocks until set, or the timeout; returns is_set().
  bool wait(std::optional<double> timeout = std::nullopt) {
    return is_set() || detail::event_wait(*object_, detail::deadline_after_seconds(
                                                        timeout, object_->description()));
  }
  template <class Rep, class Period>
  bool wait_for(const std::chrono::duration<Rep, Period>& timeout) {
    return is_set() || detail::event_wait(*object_, detail::Deadline::after(timeout));
  }

  // See the file comment: what shmq::wait() sleeps on.
  detail::EventCount& wakeup_count() const noexcept { return object_->header().wakeups; }

  static constexpr std::uint32_t kinds() { return detail::kind_bit(detail::ObjectKind::event); }

 private:
  friend class detail::NamedObject<Event>;
  using NamedObject::NamedObject;
  static detail::ObjectSpec spec() { return detail::ObjectSpec{detail::ObjectKind::event}; }
  std::atomic<std::uint32_t>& flag() const noexcept { return object_->header().count; }
};

namespace detail {
inline const WaitOps kEventWaitOps{
    [](const void* e) noexcept { return static_cast<const Event*>(e)->is_set(); },
    [](const void* e) noexcept -> EventCount* {
      return &static_cast<const Event*>(e)->wakeup_count();
    },
    nullptr, nullptr};
}  // namespace detail

// An Event's part in shmq::wait() and Notifier (wait.hpp): ready while set.
inline detail::WaitItem wait_item(const Event& e) {
  return {&e, &detail::kEventWaitOps};
}

template <>
struct codec<Event> : detail::queue_handle_codec<Event> {};

}  // namespace shmq
