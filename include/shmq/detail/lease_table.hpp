// The lease area of a queue: where a leased message lives from its get to its ack. Internal; the
// public face is shmq::Lease (lease.hpp), the get paths are in ring.hpp.
//
// A leased get copies its frame out of the ring into a free slot of the lease area and moves head
// past it, so the ring's room and its plain consumers never wait for an ack: the slot, not the
// ring, keeps the message until it is acked. Every step is one store or CAS of the slot's state
// word (LeaseSlot, layout.hpp), so a process killed at any instruction leaves a state that says
// what happened:
//
//   free --(get_lock holder copies a frame in)--> taking --(head moves past the frame)--> held
//   held --ack--> free          held --nack, holder dead, lease_timeout--> ready
//   ready --(get_lock holder)--> held (a leased get), free (a plain get, or the dead-letter queue)
//
// Invariants relied on:
//  - Free, taking and ready slots change only under get_lock (except free <- held by an ack),
//    so the get_lock holder may write a free slot's bytes and read a ready slot's bytes.
//  - A taking slot exists only while the get_lock holder that made it holds the lock. A later
//    holder that meets one (after EOWNERDEAD) settles it: if head is still the word the slot
//    recorded (from_head), the take never committed and the slot is freed, the message being
//    still in the ring; otherwise head moved past it, the message is the slot's, and it is made
//    ready. Nobody else has moved head in between: the dead holder held the lock.
//  - A held slot changes only by a CAS from the exact word its holder got (ack, nack) or from the
//    word a checker saw with a dead or timed-out holder; the generation in the word changes on
//    every move out of held, so a late ack never frees a later lease.
//
// Redelivery: a ready slot is delivered before the ring by the next get, plain or leased, so a
// full ring neither loses it nor blocks it; it may come after messages put later than it.
//
// The ready hint (SharedHeader::leases_ready): whoever makes a slot ready sets it to 1 afterwards
// (seq_cst); a get_lock holder that looks for ready slots exchanges it to 0 first (seq_cst), then
// scans: a slot made ready after the scan passed it also set the hint after the exchange, so no
// ready slot is missed for good. A process killed between the two stores leaves the hint 0 with
// a ready slot: the periodic check (reclaim) scans regardless and sets the hint.
#pragma once

#include <sys/types.h>
#include <time.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "shmq/detail/layout.hpp"

namespace shmq::detail {

class Segment;

// Wakes every process asleep on `ev` if any is counted (ring.hpp; out of line in src/sync.cpp).
void wake(EventCount& ev) noexcept;

// This process's holder word, cached on a page that every fork wipes (lease.cpp); null where the
// kernel refuses that, or before lease.cpp's static initialisers ran.
extern std::atomic<std::uint64_t>* const holder_cache;
// this_holder()'s word computed (one getpid, one /proc read) and cached.
std::uint64_t compute_this_holder() noexcept;
// This process as a lease holder: its pid and the low bits of its start time (recomputed after a
// fork: the child is another holder), as a held state word of generation 0. Inline: no call and
// no syscall once known, on every leased get.
inline std::uint64_t this_holder_word() noexcept {
  if (holder_cache != nullptr) {
    // Never 0 once computed: its kind is held.
    if (const std::uint64_t word = holder_cache->load(std::memory_order_relaxed); word != 0) {
      return word;
    }
  }
  return compute_this_holder();
}
inline LeaseState this_holder() noexcept {
  return LeaseState::unpack(this_holder_word());
}
// Whether the process that `s` names still runs: its pid exists, is not a zombie and started at
// the recorded time. A process that /proc does not show to us counts as alive unless kill says
// it does not exist: never take a live holder's lease.
bool holder_alive(const LeaseState& s) noexcept;
// CLOCK_MONOTONIC_COARSE (a few ms of resolution, and a few ns to read), shared by every process
// on the machine: when a lease was taken, for lease_timeout and `shmq stat`. Inline: every leased
// get reads it.
inline std::uint64_t monotonic_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

// One lease as a get hands it out: its slot, the state word its holder got, and when it was
// taken (the slot's taken_ns). The word alone may recur: its generation has 14 bits, so a slot
// taken back from a stuck thread comes back to the same word, in the same process, after 2^14
// later leases. taken_ns tells them apart: a lease is taken back by lease_timeout only at a
// later coarse-clock reading than its taking, and every later lease is taken later still.
struct LeaseTicket {
  std::uint32_t slot;
  std::uint64_t word;
  std::uint64_t taken_ns;
};

// The most leases one get takes under one lock hold (a batch asking more gets them in rounds).
inline constexpr std::size_t kMaxLeaseBatch = 64;

class LeaseTable {
 public:
  // `slots`, `payload`, ... are this process's validated copies of the header's figures.
  LeaseTable(SharedHeader& header, std::byte* area, std::uint32_t slots, std::uint32_t payload,
             std::uint64_t timeout_ns, std::uint32_t max_deliveries, std::string dead_letter_queue,
             const std::string& queue);
  LeaseTable(const LeaseTable&) = delete;
  LeaseTable& operator=(const LeaseTable&) = delete;
  ~LeaseTable();

  std::uint32_t slots() const noexcept { return slots_; }
  std::uint32_t payload() const noexcept { return payload_; }
  std::uint64_t timeout_ns() const noexcept { return timeout_ns_; }
  std::uint32_t max_deliveries() const noexcept { return max_deliveries_; }
  const std::string& dead_letter_queue() const noexcept { return dead_letter_queue_; }

  LeaseSlot& slot(std::uint32_t i) const noexcept {
    return *reinterpret_cast<LeaseSlot*>(area_ + std::size_t{i} * stride_);
  }
  std::byte* bytes(std::uint32_t i) const noexcept {
    return area_ + std::size_t{i} * stride_ + sizeof(LeaseSlot);
  }
  LeaseState state(std::uint32_t i) const noexcept {
    return LeaseState::unpack(slot(i).state.load(std::memory_order_acquire));
  }

  // ---- Lock-free, by the holder.
  // Frees the slot if `ticket` still holds it; false if it was delivered again meanwhile. Inline:
  // every leased get ends with one.
  bool ack(const LeaseTicket& ticket) noexcept {
    const std::uint32_t generation = LeaseState::unpack(ticket.word).generation;
    if (!end_lease(ticket, LeaseState{0, 0, generation + 1, 0, LeaseKind::free}.pack())) {
      return false;
    }
    wake_getters();  // a leased get may wait for a free slot
    return true;
  }
  // Makes the message ready for its next delivery; false as ack.
  bool nack(const LeaseTicket& ticket) noexcept;

  // ---- Under get_lock.
  // After the lock was taken over from a dead holder: settles the taking slots it left (see the
  // invariants above) against `head`, head's word now.
  void settle_takes(std::uint64_t head) noexcept;
  // Passes up to `max` ready slots to deliver(slot, state, length) (which must move each out of
  // ready),
  // first moving any delivered max_deliveries times to the dead-letter queue; returns how many
  // were passed. A slot whose length is hostile is freed and reported (throw_corrupt).
  template <class Deliver>
  std::size_t take_ready(std::size_t max, Deliver&& deliver) {
    if (h_->leases_ready.load(std::memory_order_relaxed) == 0) return 0;
    h_->leases_ready.exchange(0, std::memory_order_seq_cst);
    std::size_t taken = 0;
    for (std::uint32_t i = 0; i < slots_; ++i) {
      const LeaseState s = LeaseState::unpack(slot(i).state.load(std::memory_order_seq_cst));
      if (s.kind != LeaseKind::ready) continue;
      if (over_deliveries(s)) {
        dead_letter(i, s);  // if it cannot go yet, the periodic reclaim tries again
        continue;
      }
      if (taken == max) {
        mark_ready();  // left for the next get
        break;
      }
      const std::uint32_t bytes = checked_length(i);
      h_->redeliveries.fetch_add(1, std::memory_order_relaxed);
      deliver(i, s, bytes);
      ++taken;
    }
    return taken;
  }
  // A ready slot that a plain get took: free again.
  void release_ready(std::uint32_t i, const LeaseState& s) noexcept {
    slot(i).state.store(LeaseState{0, 0, s.generation + 1, 0, LeaseKind::free}.pack(),
                        std::memory_order_release);
  }
  // A taking slot whose take did not commit: free again, as it was.
  void unclaim(const LeaseTicket& ticket) noexcept {
    const LeaseState s = LeaseState::unpack(ticket.word);
    slot(ticket.slot)
        .state.store(LeaseState{0, 0, s.generation, 0, LeaseKind::free}.pack(),
                     std::memory_order_release);
  }
  void mark_ready() noexcept { h_->leases_ready.store(1, std::memory_order_seq_cst); }
  // Copies a message of `size` bytes (at most payload()) from `src` into a free slot and marks it
  // taking by `me` (this_holder_word()), recording `from_head` (head's word before the take
  // commits) and `now`; false if no slot is free. The search starts at the slot this process
  // claimed last: in a loop of gets and acks it is free again, and its bytes are still in this
  // core's cache (rotating through the slots, a 4 KiB message's get would touch 16 x 4 KiB); a
  // consumer holding many leases looks at one of its held slots, not at all of them.
  // Inlined: it is most of a small message's leased get.
  __attribute__((always_inline)) bool claim(std::uint64_t me, std::uint64_t from_head,
                                            std::uint64_t now, const std::byte* src,
                                            std::uint32_t size, LeaseTicket& ticket) noexcept {
    std::uint64_t free_word;
    const std::uint32_t i = free_slot(next_claim_, free_word);
    if (i == slots_) return false;
    LeaseSlot& s = slot(i);
    copy_message(bytes(i), src, size);
    s.bytes.store(size, std::memory_order_relaxed);
    s.from_head.store(from_head, std::memory_order_relaxed);
    s.taken_ns.store(now, std::memory_order_relaxed);
    // Field by field as LeaseState{me's pid and ticks, the free word's generation, 1, taking}.
    constexpr LeaseState kFirstTaking{0, 0, 0, 1, LeaseKind::taking};
    constexpr LeaseState kHolder{LeaseState::kPidMask, LeaseState::kTicksMask, 0, 0,
                                 LeaseKind::free};
    constexpr LeaseState kGeneration{0, 0, LeaseState::kGenerationMask, 0, LeaseKind::free};
    const std::uint64_t word =
        (me & kHolder.pack()) | (free_word & kGeneration.pack()) | kFirstTaking.pack();
    s.state.store(word, std::memory_order_release);
    ticket = {i, word, now};
    next_claim_ = i;
    return true;
  }
  // A claimed slot once head has moved past its frame: the message is its holder's.
  void commit(LeaseTicket& ticket) noexcept {
    ticket.word = frozen(ticket.word, LeaseKind::held);
    slot(ticket.slot).state.store(ticket.word, std::memory_order_release);
  }
  bool has_free_slot() const noexcept {
    std::uint64_t word;
    return free_slot(0, word) != slots_;
  }
  bool ready_hint() const noexcept { return h_->leases_ready.load(std::memory_order_relaxed) != 0; }
  // Whether any slot holds a message that may still be delivered (taking, held, or ready and not
  // past max_deliveries), which a draining queue must wait for.
  bool any_outstanding() const noexcept;
  // Whether `ticket`'s lease still holds its slot (ack and nack then CAS from its word): the
  // word, and then (read after the word's acquire, so that a later lease's taken_ns is seen)
  // the time it was taken.
  bool still_holds(const LeaseTicket& ticket) const noexcept {
    const LeaseSlot& s = slot(ticket.slot);
    return s.state.load(std::memory_order_acquire) == ticket.word &&
           s.taken_ns.load(std::memory_order_relaxed) == ticket.taken_ns;
  }
  // Every get calls this (under get_lock) before it looks for messages, and so does a wait()
  // looking at the queue (without the lock: its only moves are CASes from held, as a nack's): at
  // most once per 10 ms per process it makes ready every held slot whose holder has died or whose
  // lease has timed out, and sets the hint if any slot is ready (one the hint missed included).
  // `now` is monotonic_ns(), which the caller needs anyway.
  void reclaim_if_due(std::uint64_t now) noexcept {
    if (now >= next_reclaim_ns_.load(std::memory_order_relaxed)) reclaim(now);
  }
  // A taking slot's state for this process, and the slot's move to held once head has moved.
  static std::uint64_t frozen(std::uint64_t word, LeaseKind kind) noexcept {
    constexpr std::uint64_t kKindBits = std::uint64_t{3} << 62;
    return (word & ~kKindBits) | std::uint64_t{static_cast<std::uint32_t>(kind)} << 62;
  }

 private:
  // The first free slot at or after `from`, wrapping around, and its state `word`; slots() if
  // none. The acquire load of a free state orders the last holder's reads of the bytes before
  // the caller's writes.
  std::uint32_t free_slot(std::uint32_t from, std::uint64_t& word) const noexcept {
    for (std::uint32_t k = 0, i = from; k < slots_; ++k, i = i + 1 == slots_ ? 0 : i + 1) {
      word = slot(i).state.load(std::memory_order_acquire);
      if (LeaseState::unpack(word).kind == LeaseKind::free) return i;
    }
    return slots_;
  }
  // Moves `ticket`'s slot from the word its holder got to `next` (seq_cst: see wake_getters), if
  // the lease still holds it (ack, nack).
  bool end_lease(const LeaseTicket& ticket, std::uint64_t next) noexcept {
    std::uint64_t held = ticket.word;
    return still_holds(ticket) &&
           slot(ticket.slot).state.compare_exchange_strong(held, next, std::memory_order_seq_cst);
  }
  // memcpy, with the short messages (up to 16 bytes, the common small values) copied inline as
  // two overlapping words instead of through the library call.
  static void copy_message(std::byte* dst, const std::byte* src, std::uint32_t size) noexcept {
    if (size >= 8 && size <= 16) {
      std::uint64_t first, last;
      std::memcpy(&first, src, 8);
      std::memcpy(&last, src + size - 8, 8);
      std::memcpy(dst, &first, 8);
      std::memcpy(dst + size - 8, &last, 8);
    } else if (size != 0) {
      std::memcpy(dst, src, size);
    }
  }
  // Wakes the gets asleep on the queue (a nack's ready slot, an ack's free slot). Called right
  // after a seq_cst store or read-modify-write W of a slot's state or the ready hint, so the sleep
  // count is loaded seq_cst without has_sleepers()'s fence: against a sleeper's fence F
  // (announce_sleeper), if F precedes W in the single total order the sleeper's re-check after F
  // sees W; otherwise F precedes this load in that order, which then sees the sleeper counted.
  void wake_getters() noexcept {
    if (sleepers_of(h_->not_empty.sleep.load(std::memory_order_seq_cst)) != 0) wake(h_->not_empty);
  }
  bool over_deliveries(const LeaseState& s) const noexcept {
    return max_deliveries_ != 0 && s.deliveries >= max_deliveries_;
  }
  // Moves ready slot i to the dead-letter queue (without waiting for room there); false if it
  // could not (the queue is full, missing or refuses it): the slot stays ready, undelivered.
  bool dead_letter(std::uint32_t i, const LeaseState& s) noexcept;
  // Slot i's message length, loaded once and checked against the slot's room.
  std::uint32_t checked_length(std::uint32_t i);
  void reclaim(std::uint64_t now) noexcept;
  // held -> ready for a dead or timed-out holder; false if the slot changed first.
  bool redeliver(std::uint32_t i, std::uint64_t held) noexcept;

  SharedHeader* h_;
  std::byte* area_;
  std::uint32_t slots_;
  std::uint32_t payload_;
  std::size_t stride_;
  std::uint64_t timeout_ns_;
  std::uint32_t max_deliveries_;
  std::string dead_letter_queue_;
  const std::string* queue_;
  std::atomic<std::uint64_t> next_reclaim_ns_{0};  // this process's; relaxed
  std::uint32_t next_claim_ = 0;           // this process's hint of a free slot; under get_lock
  std::shared_ptr<Segment> dead_letters_;  // opened on first use, under get_lock
};

}  // namespace shmq::detail
