// The one waiting core behind shmq::wait, Connection::poll and Notifier: many objects, one sleep.
// Internal.
//
// The "waitable" interface: an object takes part in a wait through a WaitItem, a pointer to it and
// a static WaitOps table for its kind. Queue, Connection and Process give one each (their headers,
// a `wait_item` function found by argument-dependent lookup); an Event joins with one more:
//
//   WaitItem wait_item(const Event& e) { return {&e, &kEventWaitOps}; }
//
// where kEventWaitOps's ready() reads the flag and event() returns the EventCount that set() bumps
// through notify() (so set() must notify() after publishing, as every ring change does).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "shmq/detail/deadline.hpp"
#include "shmq/detail/layout.hpp"

namespace shmq::detail {

// A futex word and the value to sleep while it holds.
struct FutexWord {
  std::atomic<std::uint32_t>* word;
  std::uint32_t value;
};

// What the waiting core needs of one kind of object.
struct WaitOps {
  // Whether the object is ready now. Lock-free and cheap (it runs in the spin loop); never throws.
  bool (*ready)(const void* object) noexcept;
  // The EventCount whose wake-ups mean "look again": the core counts itself as a sleeper there
  // (announce_sleeper), so notifiers wake it. Null for an object with a plain futex word instead:
  EventCount* (*event)(const void* object) noexcept;
  // Used when event() is null: the word to sleep on and its value now, after asking whatever
  // changes it to wake sleepers (Process sets FUTEX_WAITERS on its child's life-sign lock).
  FutexWord (*word)(const void* object) noexcept;
  // Looks for changes no wake-up reports, such as a pipe's peer killed (Connection): runs before
  // every wait returns and after every sleep (at most kLongestSleep long), so it must limit its
  // own cost (Connection scans /proc at most once per kLongestSleep). May be null. May throw.
  void (*idle)(const void* object);
};

struct WaitItem {
  const void* object;
  const WaitOps* ops;
};

// futex_waitv takes at most this many words (FUTEX_WAITV_MAX).
inline constexpr std::size_t kMaxWaitObjects = 128;

// Blocks until at least one of the n items is ready or the deadline passes; sets ready[i] for each
// item ready at the last look and returns how many are. Polls first (bounded, adapted as get's
// polling is), then sleeps in one futex_waitv on every item's word, at most kLongestSleep at a
// time. Throws InvalidArgument for more than kMaxWaitObjects items.
std::size_t wait_any(const WaitItem* items, std::size_t n, bool* ready, const Deadline& deadline);

}  // namespace shmq::detail
