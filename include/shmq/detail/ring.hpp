// The byte ring: variable-length frames, any number of producers and consumers, in any processes.
// Internal; Queue<T> encodes values into it and decodes them out of it.
//
// Locking (the "two-lock ring"): producers serialise on put_lock and own `tail`; consumers
// serialise on get_lock and own `head`. A producer and a consumer never take the same lock, so
// one of each run side by side. Each side reads the other's word with acquire and caches it
// (head_seen / tail_seen) until the cached value says "no room" / "nothing to read": the other
// side's cache line is touched only when needed.
//
// Waiting: a call that must wait first polls without any lock for `spin_polls` rounds (the peer
// usually answers within a microsecond when it runs on another core), then sleeps on an
// EventCount. A notifier issues a futex_wake only when the EventCount has sleepers, so the
// uncontended path makes no syscall at all.
//
// Crash safety: both locks are robust (robust_mutex.hpp). A process killed while holding one leaves
// its side's word either before or after its single commit store; the next locker is told
// (EOWNERDEAD) and goes on, with nothing to repair. A put in flight is lost (its producer
// never returned); a get in flight leaves the message in the queue for the next consumer.
//
// Task counting (JoinableQueue): nothing on the put path. Every put already commits a 32-bit count
// of the messages ever put (tail's Cursor::count) with the one release store that publishes them,
// so the puts a JoinableQueue counts are derived: tail.count - tasks_base, modulo 2^32, where
// tasks_base is tail's count when the queue became joinable (SharedHeader). task_done() adds one
// to tasks_done with a CAS that refuses to pass that put count, and unfinished = puts - tasks_done.
// So every put counts, by any handle type, and a producer killed at any instruction leaves the
// count exact: its messages and their count are published together or not at all. A consumer can
// never mark a message done before it is counted: it got it by loading the tail that counts it.
// Modulo 2^32 the difference is exact while fewer than 2^32 tasks are unfinished at once (the
// ring holds under 2^28 messages; the rest would be items got and not yet marked done).
#pragma once

#include <errno.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

#include "shmq/detail/deadline.hpp"
#include "shmq/detail/layout.hpp"
#include "shmq/detail/lease_table.hpp"
#include "shmq/detail/robust_mutex.hpp"
#include "shmq/errors.hpp"

namespace shmq::detail {

// ---- Out of line (src/sync.cpp): everything that makes a syscall.

// Sleeps while `word` holds `expected`, until woken, a signal, or the deadline. May return early;
// callers re-check their condition.
void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected, const Deadline& deadline);
// Wakes every process asleep on `ev` if any is counted (see EventCount); call after publishing the
// change they wait for, and after has_sleepers() or another seq_cst fence.
void wake(EventCount& ev) noexcept;
// A lock error other than success, owner-died or time-out: throws a shmq::Error naming the queue.
[[noreturn]] void throw_lock_error(int rc, const std::string& queue);
// A header or frame that no well-behaved process could have written.
[[noreturn]] void throw_corrupt(const std::string& queue, const std::string& what);

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// Called after publishing a state change: whether anybody sleeps on `ev`. The seq_cst fence
// pairs with the one in await() (Dekker): either this load sees the sleeper's count, or the
// sleeper's re-check after its fence sees our change; never neither, so no wake-up is lost.
inline bool has_sleepers(const EventCount& ev) noexcept {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return anyone_counted(ev.sleep.load(std::memory_order_relaxed));
}
// Wakes the sleepers of `ev`, if any, after a state change they may wait for.
inline void notify(EventCount& ev) noexcept {
  if (has_sleepers(ev)) wake(ev);
}

// How long a waiter polls before it sleeps, adapted per process: polling pays when the peer runs
// on another core and answers within the budget (then the budget doubles, up to the queue's
// spin_polls), and only burns the CPU the peer needs when processes outnumber cores (then the
// waiter sleeps anyway and the budget halves, down to a floor from which it can grow again).
//
// Growing back needs a poll that paid, and a wait longer than the floor never has one: one
// disturbance (a burst of load that put both processes on one core) left a ping-pong of 4 KiB
// messages, whose answers take longer than the floor, sleeping on every message for good (45 us
// round trips instead of 1.5). So while the budget is below its top, every probe_every-th wait
// probes: it polls the whole spin_polls, and one that pays sets the budget to twice what it took.
// A probe that does not pay doubles the interval to the next (up to kMaxProbeEvery), so where
// polling never pays, as on a shared core, probes cost at most spin_polls / kMaxProbeEvery polls
// a wait once the interval is long; any poll that pays starts the interval again. An answer found
// at the first look changes nothing: no poll was needed, so it says nothing of whether they pay (it
// used to count as one that paid, and restarted the probes where a peer on the same core answers
// within the spin only by chance: 4 times the floor's spinning).
class SpinBudget {
 public:
  explicit SpinBudget(unsigned max_polls) noexcept : max_(max_polls), polls_(max_polls) {}

  // Polls ready() as the budget allows, with a pause between looks: true once it holds.
  template <class Ready>
  bool spin_until(Ready&& ready) {
    const unsigned budget = next_budget();
    if (budget != 0 && ready()) return true;  // no poll needed: no sign either way
    for (unsigned i = 1; i < budget; ++i) {
      cpu_relax();
      if (ready()) {
        paid_off(i);
        return true;
      }
    }
    wasted();
    return false;
  }

 private:
  static constexpr unsigned kFloor = 16;
  static constexpr unsigned kFirstProbeEvery = 16;
  static constexpr unsigned kMaxProbeEvery = 1024;

  unsigned next_budget() noexcept {
    const unsigned polls = polls_.load(std::memory_order_relaxed);
    if (polls >= max_) return polls;
    const unsigned left = probe_in_.load(std::memory_order_relaxed);
    if (left > 1) {
      probe_in_.store(left - 1, std::memory_order_relaxed);
      return polls;
    }
    const unsigned every = probe_every_.load(std::memory_order_relaxed);
    const unsigned next = std::min(kMaxProbeEvery, every * 2);  // if this probe does not pay
    probe_every_.store(next, std::memory_order_relaxed);
    probe_in_.store(next, std::memory_order_relaxed);
    return max_;
  }
  // The answer came after `polls` polls.
  void paid_off(unsigned polls) noexcept {
    const unsigned grown = std::max(polls_.load(std::memory_order_relaxed) * 2 + 1, polls * 2);
    polls_.store(std::min(max_, grown), std::memory_order_relaxed);
    probe_every_.store(kFirstProbeEvery, std::memory_order_relaxed);
    probe_in_.store(kFirstProbeEvery, std::memory_order_relaxed);
  }
  void wasted() noexcept {
    const unsigned polls = polls_.load(std::memory_order_relaxed);
    polls_.store(std::min(max_, std::max(kFloor, polls / 2)), std::memory_order_relaxed);
  }

  const unsigned max_;
  // Hints shared by this process's threads (relaxed: a lost update only changes one wait's spin).
  std::atomic<unsigned> polls_;
  std::atomic<unsigned> probe_every_{kFirstProbeEvery};
  std::atomic<unsigned> probe_in_{kFirstProbeEvery};  // waits until the next probe
};

// No sleep on an EventCount outlasts this. A process killed between publishing a change and
// notifying (a producer between its commit and its wake-up), or inside wake() between clearing
// the sleeper count and the futex_wake, leaves sleepers that nobody is going to wake; bounded
// sleeps make them look again, and count themselves again if they must go on waiting. An idle
// waiter so wakes ten times a second, for a few microseconds each.
inline constexpr std::chrono::milliseconds kLongestSleep{100};

// A sleeper's place on an EventCount: the seq it sleeps on and the epoch it was counted in.
struct SleeperTicket {
  std::uint32_t seq;
  std::uint32_t epoch;
};
// Counts the caller as a sleeper on `ev`; the caller then re-checks its condition, sleeps on
// ev.seq while it holds ticket.seq, and withdraws. Split from await() so that shmq::wait can be
// counted on many EventCounts and sleep on all of them in one futex_waitv (src/wait.cpp).
// seq is read before counting ourselves and the fence, so any wake-up after the caller's re-check
// also moved seq, and the futex wait returns at once instead of sleeping through it. A Notifier
// counts itself as a listener (kUnit kListenerUnit, the same unit to withdraw): it never sleeps
// on seq, and wake() writes into its pipe instead (src/listeners.cpp).
// (A template parameter, not an argument: the waiting paths inline this, and an extra argument
// changed how g++ compiled get's fast path around them.)
template <std::uint64_t kUnit = 1>
inline SleeperTicket announce_sleeper(EventCount& ev) noexcept {
  const std::uint32_t seq = ev.seq.load(std::memory_order_acquire);
  const std::uint32_t epoch = epoch_of(ev.sleep.fetch_add(kUnit, std::memory_order_relaxed));
  std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with has_sleepers (Dekker)
  return {seq, epoch};
}
// Takes the caller off the count, unless a notifier already cleared it by starting a new epoch.
template <std::uint64_t kUnit = 1>
inline void withdraw_sleeper(EventCount& ev, SleeperTicket ticket) noexcept {
  std::uint64_t now = ev.sleep.load(std::memory_order_relaxed);
  while (epoch_of(now) == ticket.epoch &&
         !ev.sleep.compare_exchange_weak(now, now - kUnit, std::memory_order_relaxed)) {
  }
}

// Waits until ready() or the deadline, or a wake-up: callers loop and re-check under their lock.
// ready() runs without any lock and must not throw; it may return true spuriously. `sleeps`
// (optional) counts the times the caller actually went to sleep. Returns whether it slept.
// While it polls, it waits for plenty() (which implies ready()), if the caller gives one: see
// Ring::put_waiting.
template <class Ready, class Plenty>
bool await(EventCount& ev, std::atomic<std::uint64_t>* sleeps, SpinBudget& spin, Ready&& ready,
           const Deadline& deadline, Plenty&& plenty) {
  if (spin.spin_until(plenty)) return false;
  const SleeperTicket ticket = announce_sleeper(ev);
  const bool sleeps_now = !ready();
  if (sleeps_now) {
    if (sleeps != nullptr) sleeps->fetch_add(1, std::memory_order_relaxed);
    futex_wait(ev.seq, ticket.seq, deadline.capped(kLongestSleep));
  }
  withdraw_sleeper(ev, ticket);
  return sleeps_now;
}
template <class Ready>
bool await(EventCount& ev, std::atomic<std::uint64_t>* sleeps, SpinBudget& spin, Ready&& ready,
           const Deadline& deadline) {
  return await(ev, sleeps, spin, ready, deadline, ready);
}

// For a caller that waits in slices, each slice one put_many/get_many call whose deadline is the
// slice's end (the Python module, which runs signal handlers between slices). So that stats()
// count the caller's wait and not its slices: a slice's end counts as a timeout only once
// `whole` (the caller's own deadline) has passed, and only the first sleep of all the slices
// counts as a full/empty wait.
struct SlicedWait {
  Deadline whole;
  bool slept = false;  // a sleep of an earlier slice was counted
};

// How a RobustLock keeps the kernel aware of the mutex it holds (robust_mutex.hpp).
enum class Tracking {
  listed,   // linked into the thread's robust list: any code may run under the lock
  pending,  // named by list_op_pending alone, if taken at once: for a hold that runs none but
            // the ring's own code (no codec, no user callback, no lease area to reach another
            // queue from), so that no other robust lock is taken or released during it
};

// Holds one of the ring's robust mutexes. Taking over a lock whose holder died counts the
// recovery: the ring's state needs no repair (see the file comment).
class RobustLock {
 public:
  // A deadline that has passed (the _nowait and try_ calls) still waits up to this long for a
  // lock held by a process in the middle of its put or get, so that they fail for want of room
  // or messages, not for a lock held a microsecond; but not forever for a stopped process. When
  // it runs out the call ends as if the queue were full (put side) or empty (get side): the try_
  // forms return false / nullopt / 0, the _nowait forms throw Full / Empty. The public calls'
  // comments (queue.hpp) quote this figure.
  static constexpr std::chrono::milliseconds kNowaitLockPatience{50};

  // Inlined, so that the uncontended path is the few instructions of try_lock; it reads no clock,
  // not even for a _nowait or try_ call.
  __attribute__((always_inline))
  RobustLock(RobustMutex& mutex, const Deadline& deadline, const std::string& queue,
             std::atomic<std::uint64_t>& recoveries, Tracking tracking = Tracking::listed)
      : mutex_(&mutex), me_(&this_thread_identity()) {
    const bool taken =
        tracking == Tracking::pending ? try_lock_pending(mutex, *me_) : try_lock(mutex, *me_);
    if (!taken) {
      lock_contended(deadline, queue, recoveries);  // waits listed
    } else if (tracking == Tracking::pending) {
      listed_ = false;
    }
  }
  RobustLock(const RobustLock&) = delete;
  RobustLock& operator=(const RobustLock&) = delete;
  ~RobustLock() { unlock(); }

  explicit operator bool() const noexcept { return mutex_ != nullptr; }
  // Whether the lock was taken over from a holder that died holding it.
  bool recovered() const noexcept { return recovered_; }
  void unlock() noexcept {
    if (mutex_ == nullptr) return;
    if (listed_) {
      detail::unlock(*std::exchange(mutex_, nullptr), *me_);
    } else {
      unlock_pending(*std::exchange(mutex_, nullptr), *me_);
    }
  }

 private:
  // Out of line: waits, takes over from a dead holder, or gives up at the deadline.
  __attribute__((noinline)) void lock_contended(const Deadline& deadline, const std::string& queue,
                                                std::atomic<std::uint64_t>& recoveries) {
    const int rc = detail::lock_contended(
        *mutex_, *me_, deadline.is_now() ? Deadline::after(kNowaitLockPatience) : deadline);
    if (rc == EOWNERDEAD) {
      recoveries.fetch_add(1, std::memory_order_relaxed);
      recovered_ = true;
    } else if (rc == ETIMEDOUT) {
      mutex_ = nullptr;
    } else if (rc != 0) {
      throw_lock_error(rc, queue);
    }
  }

  RobustMutex* mutex_;
  ThisThread* me_;
  bool listed_ = true;  // held through the robust list, else through list_op_pending alone
  bool recovered_ = false;
};

// Holds one of the ring's robust mutexes if it was free at once, through list_op_pending alone
// (Tracking::pending); never waits. For the single puts and gets that try once (Ring::put_at_once).
class PendingLock {
 public:
  __attribute__((always_inline)) explicit PendingLock(RobustMutex& mutex)
      : mutex_(&mutex), me_(&this_thread_identity()) {
    if (!try_lock_pending(mutex, *me_)) mutex_ = nullptr;
  }
  PendingLock(const PendingLock&) = delete;
  PendingLock& operator=(const PendingLock&) = delete;
  ~PendingLock() { unlock(); }

  explicit operator bool() const noexcept { return mutex_ != nullptr; }
  void unlock() noexcept {
    if (mutex_ != nullptr) unlock_pending(*std::exchange(mutex_, nullptr), *me_);
  }

 private:
  RobustMutex* mutex_;
  ThisThread* me_;
};

// timed_out: no room or no message by the deadline; lock_busy: the side's lock stayed held by
// another thread or process until the deadline (or the _nowait patience) passed.
enum class Outcome { done, timed_out, lock_busy, shut_down };
// Whether a call gave up waiting, for either reason: what the try_ forms report as "no".
constexpr bool gave_up(Outcome outcome) noexcept {
  return outcome == Outcome::timed_out || outcome == Outcome::lock_busy;
}

// How a batch call ended, and how many messages it moved before that.
struct Progress {
  Outcome outcome;
  std::size_t count;
};

// A snapshot of the ring's occupancy; by the time the caller reads it, it may have changed.
struct Occupancy {
  std::uint32_t messages;
  std::uint32_t bytes;
};

class Ring {
 public:
  // `capacity` and `maxsize` are this process's validated copies of the header's figures: every
  // offset and length read from shared memory is checked against them, so a header changed by
  // another process can make an operation throw but never reach outside the mapping. `leases` is
  // the queue's lease area, or null when it has none; every message then fits one of its slots.
  Ring(SharedHeader& header, std::byte* data, std::uint32_t capacity, std::uint32_t maxsize,
       unsigned spin_polls, const std::string& queue, LeaseTable* leases = nullptr) noexcept
      : h_(&header),
        data_(data),
        capacity_(capacity),
        maxsize_(maxsize),
        max_payload_(leases != nullptr
                         ? std::min(leases->payload(),
                                    capacity - static_cast<std::uint32_t>(kFrameHeaderBytes))
                         : capacity - static_cast<std::uint32_t>(kFrameHeaderBytes)),
        spin_(spin_polls),
        queue_(&queue),
        leases_(leases) {}

  std::uint32_t capacity() const noexcept { return capacity_; }
  std::uint32_t maxsize() const noexcept { return maxsize_; }
  std::uint32_t max_payload() const noexcept { return max_payload_; }
  LeaseTable* leases() const noexcept { return leases_; }

  // Appends `count` frames in order; frame i has size_of(i) payload bytes (a uint32_t, at most
  // max_payload(); size_of may throw to refuse a frame), which fill(i, std::byte* dst, uint32_t
  // size) writes in place. size_of(i) is called once per frame, before anything of that frame is
  // written. Every frame that fits is written under one lock hold and published with one store;
  // then it waits for room for the rest, until the deadline. Returns how it ended and how many
  // frames were published. If fill throws, the frames before the failing one are published and the
  // exception propagates.
  // `sliced`: see SlicedWait. `tracking`: Tracking::pending only if size_of and fill take and
  // release no robust lock (see Tracking); a single frame is then first tried by put_at_once.
  template <class SizeOf, class Fill>
  __attribute__((always_inline)) Progress put_many(std::size_t count, SizeOf&& size_of, Fill&& fill,
                                                   const Deadline& deadline,
                                                   SlicedWait* sliced = nullptr,
                                                   Tracking tracking = Tracking::listed) {
    if (count == 0) return {Outcome::done, 0};
    const std::uint32_t first = size_of(0);
    if (tracking == Tracking::pending && count == 1 && put_at_once(first, fill)) {
      return {Outcome::done, 1};
    }
    return put_waiting(count, first, size_of, fill, deadline, sliced, tracking);
  }

  // Removes up to `max` of the oldest messages, at least one unless the deadline passes, passing
  // each to take(const std::byte* payload, uint32_t size), which must copy out what it keeps.
  // Messages ready for redelivery in the lease area come first (lease_table.hpp), then the
  // ring's frames, all under one lock hold; the frames are released with one store. If take
  // throws DecodeError its message is dropped (it will never decode); any other exception leaves
  // that message queued. Either way the messages before it are taken and the exception propagates.
  // `sliced`: see SlicedWait. `tracking`: as put_many's, for take; a single message is then
  // first tried by get_at_once.
  template <class Take>
  __attribute__((always_inline)) Progress get_many(std::size_t max, Take&& take,
                                                   const Deadline& deadline,
                                                   SlicedWait* sliced = nullptr,
                                                   Tracking tracking = Tracking::listed) {
    if (max == 0) return {Outcome::done, 0};
    if (tracking == Tracking::pending && max == 1 && get_at_once(take)) {
      return {Outcome::done, 1};
    }
    return consume(
        [&](RobustLock& lock, std::uint64_t) -> std::size_t {
          std::size_t taken = 0;
          if (leases_ != nullptr) {
            taken = leases_->take_ready(
                max, [&](std::uint32_t i, const LeaseState& s, std::uint32_t bytes) {
                  take_ready(i, s, bytes, take);
                });
          }
          return taken == max ? taken : taken + take_frames(max - taken, take, lock);
        },
        [&] { return might_have_message() || (leases_ != nullptr && leases_->ready_hint()); },
        deadline, sliced, tracking);
  }

  // The leased get (lease_table.hpp): takes up to `max` messages (at most kMaxLeaseBatch per lock
  // hold), at least one unless the deadline passes, each into a lease slot held by this process:
  // first the ready ones, then the ring's frames, each copied into a free slot. Waits while the
  // ring is empty or no slot is free. Once the lock is released, passes each lease to
  // on_lease(LeaseTicket); if it throws, the leases not yet passed are nacked and it propagates.
  // A single lease (every single form) is first tried by lease_at_once.
  template <class OnLease>
  __attribute__((always_inline)) Progress get_leased(std::size_t max, OnLease&& on_lease,
                                                     const Deadline& deadline) {
    if (max == 0) return {Outcome::done, 0};
    if (max == 1 && lease_at_once(on_lease)) return {Outcome::done, 1};
    return get_leased_waiting(max, on_lease, deadline);
  }

  // The single leased get that tries once, as get_at_once: get_lock held through list_op_pending
  // alone (Tracking::pending), the ring's oldest frame copied into a free slot by take_fresh, as
  // the general path does it. The hold runs none but the ring's and the lease area's own code:
  // the clock, reclaim_if_due (CASes and /proc reads, no lock), take_fresh; never take_ready,
  // whose dead-letter puts take another queue's robust lock, and never on_lease (the caller's
  // decoding), which runs once the lock is released. Returns false, having changed nothing, when
  // it cannot finish at once: the lock is held, or was left by a dead holder (only the general
  // path takes it over and settles its takes), the queue is shut down immediately, a redelivery
  // is hinted (those come first, through take_ready), the ring is empty or no slot is free. The
  // caller then takes the general path, which waits, times out or reports.
  // Killed at any instruction of the hold, the kernel marks the lock owner-died through
  // list_op_pending, as for get_at_once; the next get takes it over through the general path
  // and settles the taking slot left, exactly as after a listed holder's death.
  template <class OnLease>
  __attribute__((always_inline)) bool lease_at_once(OnLease& on_lease) {
    LeaseTable& leases = *leases_;
    LeaseTicket got;
    {
      PendingLock lock(h_->get_lock);
      if (!lock || shutdown_state() == ShutdownState::immediate) return false;
      // Read under the lock, as on the general path: claims, and so their taken_ns, are ordered
      // by the lock (see LeaseTicket).
      const std::uint64_t now = monotonic_ns();
      leases.reclaim_if_due(now);
      if (leases.ready_hint() ||
          take_fresh(leases, &got, 0, 1, this_holder_word(), now, lock) == 0) {
        return false;
      }
    }
    on_lease(got);
    return true;
  }

  // get_leased's general path.
  template <class OnLease>
  Progress get_leased_waiting(std::size_t max, OnLease& on_lease, const Deadline& deadline) {
    LeaseTable& leases = *leases_;
    return consume(
        [&](RobustLock& lock, std::uint64_t now) -> std::size_t {
          std::array<LeaseTicket, kMaxLeaseBatch> got;
          const std::size_t want = std::min(max, kMaxLeaseBatch);
          const std::uint64_t me = this_holder_word();
          std::size_t n = 0;
          try {
            leases.take_ready(want, [&](std::uint32_t i, LeaseState s, std::uint32_t) {
              leases.slot(i).taken_ns.store(now, std::memory_order_relaxed);
              const LeaseState h = LeaseState::unpack(me);
              s = LeaseState{h.pid, h.ticks, s.generation, s.deliveries + 1, LeaseKind::held};
              leases.slot(i).state.store(s.pack(), std::memory_order_release);
              got[n++] = {i, s.pack(), now};
            });
            n = take_fresh(leases, got.data(), n, want, me, now, lock);
          } catch (...) {
            // A corrupt slot or frame: the redeliveries already taken (take_fresh gives back its
            // own) would stay held by this live process, nobody's, for as long as it lives.
            for (std::size_t j = 0; j < n; ++j) leases.nack(got[j]);
            throw;
          }
          if (n == 0) return 0;
          lock.unlock();
          for (std::size_t j = 0; j < n; ++j) {
            try {
              on_lease(got[j]);
            } catch (...) {
              for (std::size_t k = j + 1; k < n; ++k) leases.nack(got[k]);
              throw;
            }
          }
          return n;
        },
        [&] { return leases.ready_hint() || (might_have_message() && leases.has_free_slot()); },
        deadline);
  }

  // Marks the queue shut down (it never reopens) and wakes every sleeper in every process,
  // join_tasks() included.
  void shutdown(bool immediate) noexcept {
    const auto state = immediate ? ShutdownState::immediate : ShutdownState::draining;
    h_->shutdown.fetch_or(static_cast<std::uint32_t>(state), std::memory_order_release);
    notify(h_->not_empty);
    notify(h_->not_full);
    notify(h_->all_tasks_done);
  }
  // Makes the queue joinable (JoinableQueue's constructors), if it is not already: from now on
  // every put, through any handle, counts as an unfinished task (see "Task counting" at the top).
  // Lock-free: the first CAS wins, with tail's count as it loaded it; a put that committed
  // before that load is not counted, one that commits after it is.
  void make_joinable() noexcept {
    std::uint64_t base = h_->tasks_base.load(std::memory_order_acquire);
    if (base != 0) return;
    const std::uint32_t puts = Cursor::unpack(h_->tail.load(std::memory_order_acquire)).count;
    h_->tasks_base.compare_exchange_strong(base, kJoinable | puts);
  }
  // Marks one of JoinableQueue's unfinished tasks done. Returns false, changing nothing, if no
  // task is unfinished (tasks_done would pass the count of puts).
  bool task_done() noexcept {
    const std::uint32_t base = tasks_base();
    std::uint64_t done = h_->tasks_done.load(std::memory_order_acquire);
    std::uint32_t left;
    do {
      // Loaded after tasks_done and again after each failed CAS: puts only grow, so a count of
      // puts loaded now is at least the one every earlier task_done checked against.
      left = Cursor::unpack(h_->tail.load(std::memory_order_acquire)).count - base -
             static_cast<std::uint32_t>(done);
      if (left == 0) return false;
    } while (!h_->tasks_done.compare_exchange_weak(done, done + 1));
    // None left as of the puts it loaded: a put since then only makes this wake-up spurious, and
    // the task_done that brings the count to 0 always sees left == 1 (its puts are >= done + 1).
    if (left == 1) notify(h_->all_tasks_done);
    return true;
  }
  // Blocks until every task put has been marked done (done / true), or until the queue is shut down
  // immediately with tasks unfinished (shut_down / false): the messages still queued will never be
  // got, so waiting for them would be forever; or until the deadline (timed_out). A draining
  // shutdown wakes it too, and it goes on waiting: consumers still get every queued message. Puts
  // never wake it: they only add tasks.
  bool join_tasks() { return join_tasks(Deadline::never()) == Outcome::done; }
  Outcome join_tasks(const Deadline& deadline) {
    const auto abandoned = [&] { return shutdown_state() == ShutdownState::immediate; };
    while (unfinished_tasks() > 0) {
      if (abandoned()) return Outcome::shut_down;
      if (deadline.expired()) return Outcome::timed_out;
      await(
          h_->all_tasks_done, nullptr, spin_,
          [&] { return unfinished_tasks() == 0 || abandoned(); }, deadline);
    }
    return Outcome::done;
  }
  // Puts counted minus task_done() calls. tasks_done is loaded first: every task_done it counts
  // had seen a count of puts at least as large, which the acquire load of tasks_done makes the
  // later load of tail see, so the difference is never negative, and 0 only if at that load of
  // tail every task put was done.
  std::uint32_t unfinished_tasks() const noexcept {
    const auto done = static_cast<std::uint32_t>(h_->tasks_done.load(std::memory_order_acquire));
    return Cursor::unpack(h_->tail.load(std::memory_order_acquire)).count - tasks_base() - done;
  }

  // For shmq::wait and Pipe (lock-free, never waits): whether a get would not sleep now — a message
  // is queued, a lease waits for redelivery, or the queue is shut down (a snapshot; also true on
  // corrupt words, so that the get reports them); the EventCount a put, a nack or a shutdown bumps;
  // the header's pipe ends. A waiter looks at least every kLongestSleep, and no get may run to
  // find a dead or timed-out holder's lease, so it checks for them itself (reclaim_if_due).
  bool readable() const noexcept {
    if (shutdown_state() != ShutdownState::running || might_have_message()) return true;
    if (leases_ == nullptr) return false;
    leases_->reclaim_if_due(monotonic_ns());
    return leases_->ready_hint();
  }
  EventCount& not_empty() noexcept { return h_->not_empty; }
  EndTable& pipe_end(int which) noexcept { return h_->pipe_ends[which]; }

  ShutdownState shutdown_state() const noexcept {
    const std::uint32_t s = h_->shutdown.load(std::memory_order_acquire);
    return s >= 2 ? ShutdownState::immediate : static_cast<ShutdownState>(s);
  }

  // Messages put and taken since creation (snapshots).
  std::uint64_t puts() const noexcept { return total(h_->put_wraps, h_->tail); }
  std::uint64_t gets() const noexcept { return total(h_->get_wraps, h_->head); }

  // A snapshot; clamps to the capacity rather than throwing on a corrupt header.
  Occupancy occupancy() const noexcept {
    // Head first: tail only grows, so the tail loaded after it is never behind it.
    const Cursor head = Cursor::unpack(h_->head.load(std::memory_order_acquire));
    const Cursor tail = Cursor::unpack(h_->tail.load(std::memory_order_acquire));
    const std::uint32_t bytes = distance(head, tail);
    if (bytes == kCorrupt) return {0, 0};
    return {tail.count - head.count, bytes};
  }

  // ---- The single put and get of a message whose bytes only the ring's own code handles (a
  // bitwise T's): one attempt that never waits, with the lock held through list_op_pending alone
  // (Tracking::pending). Each returns false, having changed nothing, when the attempt cannot
  // finish at once (the lock is held, there is no room / no message, the queue is shut down, or
  // it has a lease area, whose redeliveries come first); the caller then takes the general path,
  // which waits, times out or reports, as for any put or get. Both throw what the general path
  // throws for corrupt cursors or frames. Public for callers that must not wait where they first
  // try (the Python module tries once holding the GIL, and lets go of it only to wait).
  template <class Fill>
  __attribute__((always_inline)) bool put_at_once(std::uint32_t payload, Fill& fill) {
    PendingLock lock(h_->put_lock);
    if (!lock || shutdown_state() != ShutdownState::running) return false;
    const Cursor tail = Cursor::unpack(h_->tail.load(std::memory_order_relaxed));
    Cursor head = Cursor::unpack(h_->head_seen);
    Room room = room_after(head, tail);
    const std::uint32_t frame = frame_bytes(payload);
    if (!make_room(head, tail, room, frame)) return false;
    write_frame(tail, payload, [&](std::byte* dst) { fill(0, dst, payload); });
    commit_put(tail, advanced(tail, frame), tail.count + 1 - head.count, lock);
    return true;
  }
  template <class Take>
  __attribute__((always_inline)) bool get_at_once(Take& take) {
    if (leases_ != nullptr) return false;
    PendingLock lock(h_->get_lock);
    if (!lock || shutdown_state() == ShutdownState::immediate) return false;
    return take_frames(1, take, lock) != 0;
  }

 private:
  static constexpr std::uint32_t kCorrupt = UINT32_MAX;
  // How much room beyond its frame a producer waiting on a full ring polls for (put_waiting), at
  // most an eighth of the ring.
  static constexpr std::uint32_t kRefillBytes = 4096;

  // Bytes queued between two cursors, or kCorrupt if they cannot both be true. Frames are at
  // least 4 bytes, so equal offsets with messages queued mean a full ring.
  std::uint32_t distance(Cursor head, Cursor tail) const noexcept {
    const std::uint32_t messages = tail.count - head.count;
    // Both offsets in the ring and 4-aligned, and no more messages than 4-byte frames fit.
    if (std::max(head.offset, tail.offset) >= capacity_ || ((head.offset | tail.offset) & 3u) ||
        messages > capacity_ / kFrameHeaderBytes) {
      return kCorrupt;
    }
    std::uint32_t d = tail.offset - head.offset;
    if (tail.offset < head.offset) d += capacity_;
    if (messages == 0) return d == 0 ? 0 : kCorrupt;
    return d == 0 ? capacity_ : d;
  }
  // The cursor past a frame of `frame` bytes at `at`: `at` is in the ring (checked) and no frame
  // exceeds the ring, so one subtraction wraps it (a division costs tens of cycles).
  Cursor advanced(Cursor at, std::uint32_t frame) const noexcept {
    std::uint32_t offset = at.offset + frame;
    if (offset >= capacity_) offset -= capacity_;
    return {offset, at.count + 1};
  }
  std::uint32_t used_bytes(Cursor head, Cursor tail) const {
    const std::uint32_t d = distance(head, tail);
    if (d == kCorrupt) throw_bad_cursors(head, tail);
    return d;
  }
  // Out of line: building the message would keep used_bytes from being inlined on the hot path.
  [[noreturn]] __attribute__((noinline, cold)) void throw_bad_cursors(Cursor head,
                                                                      Cursor tail) const {
    throw_corrupt(*queue_, "head (offset " + std::to_string(head.offset) + ", count " +
                               std::to_string(head.count) + ") and tail (offset " +
                               std::to_string(tail.offset) + ", count " +
                               std::to_string(tail.count) + ") disagree for a ring of " +
                               std::to_string(capacity_) + " bytes");
  }
  // A side's 32-bit message count extended by its wrap counter. The two are read apart, so a read
  // racing a wrap may be off by 2^32 for an instant; this is a statistic.
  static std::uint64_t total(const std::atomic<std::uint64_t>& wraps,
                             const std::atomic<std::uint64_t>& side) noexcept {
    return (wraps.load(std::memory_order_relaxed) << 32) +
           Cursor::unpack(side.load(std::memory_order_relaxed)).count;
  }

  // What producers may still add after `tail`: free bytes, and free message slots under maxsize.
  struct Room {
    std::uint32_t bytes;
    std::uint32_t messages;  // UINT32_MAX when there is no maxsize
    bool fits(std::uint32_t frame) const noexcept { return messages != 0 && frame <= bytes; }
    void take(std::uint32_t frame) noexcept {
      bytes -= frame;
      if (messages != UINT32_MAX) --messages;
    }
  };
  Room room_after(Cursor head, Cursor tail) const {
    return room(head, tail, used_bytes(head, tail));
  }
  // The room left when `used` bytes (already checked) are queued between head and tail.
  Room room(Cursor head, Cursor tail, std::uint32_t used) const noexcept {
    const std::uint32_t depth = tail.count - head.count;
    const std::uint32_t messages =
        maxsize_ == 0 ? UINT32_MAX : (depth >= maxsize_ ? 0 : maxsize_ - depth);
    return {capacity_ - used, messages};
  }

  // Consumer side, under get_lock: a tail at or past `head`; the cached one while it has frames.
  Cursor readable_tail(Cursor head) {
    Cursor tail = Cursor::unpack(h_->tail_seen);
    if (tail.count == head.count) {
      tail = Cursor::unpack(h_->tail.load(std::memory_order_acquire));
      h_->tail_seen = tail.pack();
    }
    return tail;
  }

  // The one waiting loop of every get, plain and leased: takes get_lock, settles what a holder
  // that died with it left (lease_table.hpp), and runs body(lock), which returns how many messages
  // it took (releasing the lock itself when it does), given monotonic_ns() when the queue has a
  // lease area (0 otherwise); before it, the lease area is checked for
  // dead and timed-out holders (reclaim_if_due). With nothing taken it waits for ready()
  // (lock-free, may be spurious); a sleeping get looks again at least every kLongestSleep, so
  // dead holders are found then too. A draining queue ends the get once nothing is queued and no
  // lease can still come back.
  // `tracking` applies to a queue without a lease area (whose gets may reach a dead-letter queue).
  template <class Body, class Ready>
  Progress consume(Body&& body, Ready&& ready, const Deadline& deadline,
                   SlicedWait* sliced = nullptr, Tracking tracking = Tracking::listed) {
    for (;;) {
      {
        RobustLock lock(h_->get_lock, deadline, *queue_, h_->lock_recoveries,
                        leases_ == nullptr ? tracking : Tracking::listed);
        if (!lock) return {Outcome::lock_busy, 0};
        const ShutdownState state = shutdown_state();
        if (state == ShutdownState::immediate) return {Outcome::shut_down, 0};
        std::uint64_t now = 0;
        if (leases_ != nullptr) {
          if (lock.recovered()) leases_->settle_takes(h_->head.load(std::memory_order_relaxed));
          now = monotonic_ns();
          leases_->reclaim_if_due(now);
        }
        if (const std::size_t taken = body(lock, now); taken != 0) return {Outcome::done, taken};
        if (state == ShutdownState::draining && drained()) return {Outcome::shut_down, 0};
        if (deadline.expired()) return {count_timeout(h_->get_timeouts, sliced), 0};
      }
      await_counted(
          h_->not_empty, h_->empty_waits, sliced,
          [&] {
            const ShutdownState state = shutdown_state();
            return state == ShutdownState::immediate || ready() ||
                   (state == ShutdownState::draining && drained());
          },
          deadline);
    }
  }
  // put_many's general path, given size_of(0).
  template <class SizeOf, class Fill>
  Progress put_waiting(std::size_t count, std::uint32_t first, SizeOf& size_of, Fill& fill,
                       const Deadline& deadline, SlicedWait* sliced, Tracking tracking) {
    std::size_t done = 0;
    std::uint32_t next_payload = first;  // of frame `done`, still to be written
    for (;;) {
      {
        RobustLock lock(h_->put_lock, deadline, *queue_, h_->lock_recoveries, tracking);
        if (!lock) return {Outcome::lock_busy, done};
        if (shutdown_state() != ShutdownState::running) return {Outcome::shut_down, done};
        const Cursor tail = Cursor::unpack(h_->tail.load(std::memory_order_relaxed));
        Cursor end = tail;
        Cursor head = Cursor::unpack(h_->head_seen);  // a stale head only understates the room
        // Frames in [tail, end) are published on every way out, exceptions included.
        try {
          Room room = room_after(head, end);
          while (done < count) {
            const std::uint32_t frame = frame_bytes(next_payload);
            if (!make_room(head, end, room, frame)) break;
            write_frame(end, next_payload, [&](std::byte* dst) { fill(done, dst, next_payload); });
            end = advanced(end, frame);
            room.take(frame);
            if (++done < count) next_payload = size_of(done);
          }
        } catch (...) {
          commit_put(tail, end, end.count - head.count, lock);
          throw;
        }
        commit_put(tail, end, end.count - head.count, lock);
        if (done == count) return {Outcome::done, done};
        if (deadline.expired()) return {count_timeout(h_->put_timeouts, sliced), done};
      }
      // While it polls, a producer waits for room for its frame and kRefillBytes more: one that
      // went on as soon as one frame fitted would live at the full ring's edge, loading head
      // after every get and writing the line the consumer has just read, so that every message
      // moved cache lines between the cores (1->1 runs with a consumer slower than its producer
      // keep the ring full). It never waits for more than it polls: then its frame is enough.
      const auto room_for = [&](std::uint32_t extra) {
        return [&, extra] {
          return shutdown_state() != ShutdownState::running ||
                 might_have_room(frame_bytes(next_payload), extra);
        };
      };
      await_counted(h_->not_full, h_->full_waits, sliced, room_for(0), deadline,
                    room_for(std::min(kRefillBytes, capacity_ / 8)));
    }
  }

  // Producer side, under put_lock: whether a frame of `frame` bytes fits in `room` after `end`;
  // if the cached head says it does not, head is loaded (and cached) again and `room` recomputed.
  bool make_room(Cursor& head, Cursor end, Room& room, std::uint32_t frame) {
    if (room.fits(frame)) return true;
    head = Cursor::unpack(h_->head.load(std::memory_order_acquire));
    h_->head_seen = head.pack();
    room = room_after(head, end);
    return room.fits(frame);
  }
  // Writes the frame of `payload` bytes at `at`: its length, then fill(dst) writes the payload.
  template <class FillPayload>
  void write_frame(Cursor at, std::uint32_t payload, FillPayload&& fill) {
    std::byte* dst = data_ + at.offset;  // the mirror makes the whole frame contiguous
    std::memcpy(dst, &payload, kFrameHeaderBytes);
    fill(dst + kFrameHeaderBytes);
  }

  // Consumer side, under get_lock: passes up to `max` of the ring's frames to take (as get_many
  // says), releases them with one store and wakes the producers; returns how many it took.
  template <class Take, class Lock>
  __attribute__((always_inline)) std::size_t take_frames(std::size_t max, Take& take, Lock& lock) {
    const Cursor head = Cursor::unpack(h_->head.load(std::memory_order_relaxed));
    const Cursor tail = readable_tail(head);
    if (tail.count == head.count) return 0;
    std::size_t taken = 0;
    Cursor end = head;
    // Frames in [head, end) are released on every way out, exceptions included.
    try {
      std::uint32_t queued = used_bytes(head, tail);  // bytes of frames in [end, tail)
      while (taken < max && end.count != tail.count) {
        const std::uint32_t payload = frame_payload(end, queued);
        queued -= frame_bytes(payload);
        const Cursor next = advanced(end, frame_bytes(payload));
        try {
          take(data_ + end.offset + kFrameHeaderBytes, payload);
        } catch (const DecodeError&) {
          end = next;  // a frame that will never decode is dropped
          throw;
        }
        end = next;
        ++taken;
      }
    } catch (...) {
      commit_get(head, end, lock);
      throw;
    }
    commit_get(head, end, lock);
    return taken;
  }

  // Draining: nothing is queued (the caller found nothing) and no lease can still come back.
  bool drained() const noexcept { return leases_ == nullptr || !leases_->any_outstanding(); }

  // A plain get of ready slot i, which take_ready passes under get_lock: the slot is freed once
  // take has its bytes, or if they will never decode; any other exception leaves it ready.
  template <class Take>
  void take_ready(std::uint32_t i, const LeaseState& s, std::uint32_t bytes, Take& take) {
    try {
      take(leases_->bytes(i), bytes);
    } catch (const DecodeError&) {
      leases_->release_ready(i, s);
      throw;
    } catch (...) {
      leases_->mark_ready();
      throw;
    }
    leases_->release_ready(i, s);
  }

  // Leased get, under get_lock: copies ring frames into free slots, after the n leases already in
  // `got`, up to `want` in all; returns the new count. Each slot is marked taking (recording head
  // as it was) before head moves past its frame, and held after: see lease_table.hpp for how a
  // death between the steps is settled. Releases the lock and wakes producers if it took any.
  // `got` has room for `want` tickets; `lock` is get_lock's RobustLock or PendingLock.
  // Inlined into get_leased: a call would cost a tenth of a small message's leased get.
  template <class Lock>
  __attribute__((always_inline)) std::size_t take_fresh(LeaseTable& leases, LeaseTicket* got,
                                                        std::size_t n, std::size_t want,
                                                        std::uint64_t me, std::uint64_t now,
                                                        Lock& lock) {
    const Cursor head = Cursor::unpack(h_->head.load(std::memory_order_relaxed));
    const Cursor tail = readable_tail(head);
    if (tail.count == head.count || n == want) return n;
    Cursor end = head;
    const std::size_t first = n;
    std::uint32_t queued = used_bytes(head, tail);
    try {
      while (n < want && end.count != tail.count) {
        const std::uint32_t payload = frame_payload(end, queued);
        if (!leases.claim(me, head.pack(), now, data_ + end.offset + kFrameHeaderBytes, payload,
                          got[n])) {
          break;  // no slot free
        }
        ++n;
        queued -= frame_bytes(payload);
        end = advanced(end, frame_bytes(payload));
      }
    } catch (...) {
      // Nothing committed: head has not moved, so the slots are free again.
      for (std::size_t j = first; j < n; ++j) leases.unclaim(got[j]);
      throw;
    }
    if (n == first) return n;
    release_frames(head, end);  // the commit: the messages are the slots' from here on
    for (std::size_t j = first; j < n; ++j) leases.commit(got[j]);
    lock.unlock();
    notify(h_->not_full);
    return n;
  }

  // The payload length of the frame at `at`, checked against the `queued` bytes from it to tail.
  std::uint32_t frame_payload(Cursor at, std::uint32_t queued) const {
    std::uint32_t payload;
    std::memcpy(&payload, data_ + at.offset, kFrameHeaderBytes);
    if (payload > max_payload() || frame_bytes(payload) > queued) {
      throw_bad_frame(at, payload, queued);
    }
    return payload;
  }
  // Out of line, as throw_bad_cursors.
  [[noreturn]] __attribute__((noinline, cold)) void throw_bad_frame(Cursor at,
                                                                    std::uint32_t payload,
                                                                    std::uint32_t queued) const {
    throw_corrupt(*queue_, "a frame of " + std::to_string(payload) + " bytes at offset " +
                               std::to_string(at.offset) + " overruns the " +
                               std::to_string(queued) + " bytes queued");
  }

  // Publishes the frames written in [tail, end) (if any), and wakes the consumers asleep, if any.
  // `depth` is the queue depth with them, as producers last saw the head (an upper bound).
  template <class Lock>
  void commit_put(Cursor tail, Cursor end, std::uint32_t depth, Lock& lock) noexcept {
    if (end.count == tail.count) return;
    h_->tail.store(end.pack(), std::memory_order_release);
    if (end.count < tail.count) bump(h_->put_wraps);  // fewer than 2^32 frames a batch
    if (depth > h_->peak_depth.load(std::memory_order_relaxed)) {
      h_->peak_depth.store(depth, std::memory_order_relaxed);
    }
    lock.unlock();
    notify(h_->not_empty);
  }

  // Releases the frames read in [head, end) (if any) and wakes the producers asleep, if any: each
  // may need a different amount of room, so all of them look.
  template <class Lock>
  void commit_get(Cursor head, Cursor end, Lock& lock) noexcept {
    if (end.count == head.count) return;
    release_frames(head, end);
    lock.unlock();
    notify(h_->not_full);
  }
  void release_frames(Cursor head, Cursor end) noexcept {
    h_->head.store(end.pack(), std::memory_order_release);
    if (end.count < head.count) bump(h_->get_wraps);
  }

  // A statistic that only the lock holder writes: no read-modify-write needed.
  static void bump(std::atomic<std::uint64_t>& counter) noexcept {
    counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }

  // Counts a call's timeout, unless it only ended a slice (SlicedWait).
  static Outcome count_timeout(std::atomic<std::uint64_t>& counter,
                               const SlicedWait* sliced) noexcept {
    if (sliced == nullptr || sliced->whole.expired()) {
      counter.fetch_add(1, std::memory_order_relaxed);
    }
    return Outcome::timed_out;
  }
  // await() for a put or get, counting a sleep in `sleeps` unless a slice before already did.
  template <class Ready, class Plenty>
  void await_counted(EventCount& ev, std::atomic<std::uint64_t>& sleeps, SlicedWait* sliced,
                     Ready&& ready, const Deadline& deadline, Plenty&& plenty) {
    const bool counts = sliced == nullptr || !sliced->slept;
    const bool slept = await(ev, counts ? &sleeps : nullptr, spin_, ready, deadline, plenty);
    if (sliced != nullptr && slept) sliced->slept = true;
  }
  template <class Ready>
  void await_counted(EventCount& ev, std::atomic<std::uint64_t>& sleeps, SlicedWait* sliced,
                     Ready&& ready, const Deadline& deadline) {
    await_counted(ev, sleeps, sliced, ready, deadline, ready);
  }

  // Lock-free readiness hints for await(): true when worth taking the lock to look (including
  // when the words look corrupt, so that the locked path reports it).
  bool might_have_message() const noexcept {
    return h_->tail.load(std::memory_order_acquire) >> 32 !=
           h_->head.load(std::memory_order_relaxed) >> 32;
  }
  // Room for `frame` and `extra` bytes more (extra only counts bytes, not messages under maxsize).
  bool might_have_room(std::uint32_t frame, std::uint32_t extra) const noexcept {
    const Cursor head = Cursor::unpack(h_->head.load(std::memory_order_acquire));
    const Cursor tail = Cursor::unpack(h_->tail.load(std::memory_order_relaxed));
    const std::uint32_t used = distance(head, tail);
    if (used == kCorrupt) return true;
    const Room left = room(head, tail, used);
    return left.fits(frame) && left.bytes - frame >= extra;
  }

  // tail's count when the queue became joinable; set once, before any JoinableQueue handle uses it.
  std::uint32_t tasks_base() const noexcept {
    return static_cast<std::uint32_t>(h_->tasks_base.load(std::memory_order_relaxed));
  }

  SharedHeader* h_;
  std::byte* data_;  // the ring's first view; data_ + capacity_ is its mirror
  std::uint32_t capacity_;
  std::uint32_t maxsize_;
  std::uint32_t max_payload_;  // the ring's, or a lease slot's if smaller
  SpinBudget spin_;
  const std::string* queue_;  // how errors name the queue ("queue 'jobs'")
  LeaseTable* leases_;        // null: no lease area
};

}  // namespace shmq::detail
