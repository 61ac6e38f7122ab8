// The shared-memory layout of one queue. Internal: the public API never exposes it.
//
// A segment /dev/shm/shmq.<name> holds, in address order:
//
//   offset 0            SharedHeader (one page, kHeaderBytes)
//   offset kHeaderBytes the ring: capacity_bytes of frames, a multiple of the page size
//   then                the lease area: lease_slots LeaseSlots of lease_stride bytes each, padded
//                       to a page (no bytes at all when the queue was made with max_leases 0)
//
// Each process maps the ring twice, back to back, right after the header (see segment.cpp), so a
// frame that runs past the ring's end continues in the second view: every frame is contiguous in
// memory and is written and read with one memcpy, and no bytes are lost to wrap padding.
//
// A frame is a 4-byte payload length followed by the payload, padded to a multiple of 4:
//
//   [ uint32 length | payload ... | pad ]     frame_bytes(length) = round_up(4 + length, 4)
//
// Each side of the ring is one 64-bit word packing the byte offset of its next frame, in
// [0, capacity), and a count of messages that have passed it, modulo 2^32. A side commits a put or
// a get with one release store of its word, so a process killed at any instruction leaves either
// the old word (the message was never put / never taken) or the new one: never half a message.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "shmq/detail/robust_mutex.hpp"

namespace shmq::detail {

inline constexpr std::uint64_t kMagic = 0x5348'4d51'5155'4555ULL;  // "SHMQQUEU": marks our segments
// 2: RobustMutex replaced pthread_mutex_t. 3: JoinableQueue's count derived from tail's count
// (tasks_base, tasks_done) instead of the unfinished_tasks counter. 4: pipe_ends (Pipe's holders),
// the lease area and the header's lease fields (leased gets).
inline constexpr std::uint32_t kLayoutVersion = 4;
inline constexpr std::size_t kHeaderBytes = 4096;
inline constexpr std::size_t kCacheLine = 64;
inline constexpr std::size_t kFrameHeaderBytes = sizeof(std::uint32_t);
inline constexpr std::size_t kTypeNameBytes = 256;

// The smallest and largest ring; the upper bound keeps offsets, lengths and counts in 32 bits.
inline constexpr std::size_t kMinCapacity = 4096;
inline constexpr std::size_t kMaxCapacity = std::size_t{1} << 30;

constexpr std::uint32_t frame_bytes(std::uint32_t payload) noexcept {
  return (static_cast<std::uint32_t>(kFrameHeaderBytes) + payload + 3u) & ~3u;
}

// One side of the ring: where its next frame starts and how many messages have passed it.
struct Cursor {
  std::uint32_t offset;  // in [0, capacity); a multiple of 4
  std::uint32_t count;   // messages that have passed this side, modulo 2^32

  static Cursor unpack(std::uint64_t word) noexcept {
    return {static_cast<std::uint32_t>(word), static_cast<std::uint32_t>(word >> 32)};
  }
  std::uint64_t pack() const noexcept {
    return (std::uint64_t{count} << 32) | std::uint64_t{offset};
  }
};

// A condition variable of our own: a futex word that every wake-up bumps, and one 64-bit word
// holding the number of processes asleep (low 24 bits), the number of listeners counted (next 8
// bits, see below) and the epoch they sleep in (high half). A
// notifier that finds sleepers zeroes the count and starts a new epoch in one CAS, then wakes every
// sleeper: until one of them sleeps again, later notifiers see no sleeper and make no syscall (a
// woken process may wait milliseconds for a CPU, and counting it meanwhile would cost every put a
// futex_wake that wakes nobody). A sleeper that wakes for another reason takes itself off the count
// only if its epoch is still current. Nothing here is per waiter: a process killed asleep leaves
// one count, which the next notifier clears with one wake-up that wakes nobody. A notifier killed
// before its wake-up is covered by bounded sleeps (ring.hpp, kLongestSleep).
//
// Listeners: shmq::Notifiers whose descriptor is the read end of a pipe in their process, woken
// by wake() writing one byte into it (reopened through /proc/PID/fd/FD), so that an event loop
// wakes at once, with no thread in between (src/listeners.cpp states the protocol). They live in
// the EventCount's own cache line, which wake() touches anyway; a segment made before them has
// zeros there, which mean "no listener". A listener counts itself in `sleep` by kListenerUnit, not
// by 1: wake() then writes into the listeners' pipes, and makes its futex call only if a sleeper
// on `seq` is counted too.
inline constexpr std::size_t kListenerSlots = 3;
inline constexpr std::uint64_t kListenerUnit = std::uint64_t{1} << 24;
struct ListenerSlot {
  // pid << 32 | fd of the pipe's read end in that process, or 0 when free. Claimed by a CAS from
  // 0 by the notifier, then `pipe` is stored; released by a CAS back to 0 after `pipe` is zeroed,
  // by the notifier or by any waker that finds the descriptor gone.
  std::atomic<std::uint64_t> owner;
  // The pipe's inode number (nonzero), checked by wakers against the descriptor they open; 0
  // while the slot is being claimed or released. Release stores, acquire loads.
  std::atomic<std::uint64_t> pipe;
};
struct alignas(kCacheLine) EventCount {
  std::atomic<std::uint32_t> seq;    // bumped (release) by every wake-up; sleepers futex-wait on it
  std::atomic<std::uint64_t> sleep;  // epoch << 32 | listeners << 24 | sleepers; RMW by sleepers,
                                     // listeners and notifiers
  ListenerSlot listeners[kListenerSlots];
};
static_assert(sizeof(EventCount) == kCacheLine, "listeners fill the EventCount's line, no more");

// Sleepers on `seq` (waiting gets and puts, wait(), helper threads).
inline constexpr std::uint32_t sleepers_of(std::uint64_t sleep) noexcept {
  return static_cast<std::uint32_t>(sleep & (kListenerUnit - 1));
}
// Listeners (Notifiers) counted.
inline constexpr std::uint32_t listeners_of(std::uint64_t sleep) noexcept {
  return static_cast<std::uint32_t>((sleep & 0xFFFFFFFFu) / kListenerUnit);
}
// Whether anybody, sleeper or listener, is counted: whether a notifier must call wake().
inline constexpr bool anyone_counted(std::uint64_t sleep) noexcept {
  return static_cast<std::uint32_t>(sleep) != 0;
}
inline constexpr std::uint32_t epoch_of(std::uint64_t sleep) noexcept {
  return static_cast<std::uint32_t>(sleep >> 32);
}

// ---- Pipe ends (connection.hpp): which processes hold an end of a Pipe. A plain queue leaves
// them zero. An end is gone, and its peer sees end-of-stream, when no live process holds it
// (detail/pipe_end.hpp states the rule).
inline constexpr std::size_t kHolderSlots = 32;
// HolderSlot::owner's flags: the holder has sent or received on the end; the slot is kept by a
// forking parent (its pid) for the child, which takes it over in its first instructions.
inline constexpr std::uint64_t kHolderUsed = std::uint64_t{1} << 32;
inline constexpr std::uint64_t kHolderPending = std::uint64_t{1} << 33;
struct HolderSlot {
  // pid | flags, or 0 when free. Claimed by a CAS from 0 (by the holder, or for a child by its
  // forking parent, pending); taken over by the child with a CAS; cleared by a CAS from the value
  // checked, by the holder (close) or by any process that finds the holder dead (or a pending
  // slot expired).
  std::atomic<std::uint64_t> owner;
  // A holder's start time in clock ticks after boot (with the pid it names one process for good;
  // 0 for an instant after a claim: then only the pid is checked). A pending slot's expiry, in
  // CLOCK_MONOTONIC milliseconds. Relaxed: written before owner's release CAS, or read as a hint.
  std::atomic<std::uint64_t> stamp;
};
struct EndTable {
  std::atomic<std::uint32_t> gone;       // 0, then 1 for good once no live process holds the end
  std::atomic<std::uint32_t> ever_used;  // 0, then 1 for good once a holder sent or received
  HolderSlot slots[kHolderSlots];
};

// SharedHeader::tasks_base's flag bit: the queue is joinable.
inline constexpr std::uint64_t kJoinable = std::uint64_t{1} << 32;

enum class ShutdownState : std::uint32_t { running = 0, draining = 1, immediate = 2 };

struct SharedHeader {
  // ---- Identity: written once by the creator, then immutable. `magic` is stored last with release
  //      ordering, so an opener that loads it with acquire and sees kMagic sees the rest complete.
  std::atomic<std::uint64_t> magic;
  std::uint32_t layout_version;    // kLayoutVersion
  std::uint32_t header_bytes;      // kHeaderBytes: where the ring starts
  std::uint64_t capacity_bytes;    // ring bytes; a page multiple in [kMinCapacity, kMaxCapacity]
  std::uint64_t maxsize;           // most messages at once; 0: bounded only by bytes
  std::uint64_t type_fingerprint;  // hash of the message type's name
  std::int32_t creator_pid;        // for `shmq ls` and stale-queue clean-up
  std::uint32_t mode;              // permission bits asked for at creation
  std::uint32_t spin_polls;        // polls before sleeping, for every process
  std::uint32_t reserved;          // zero; keeps what follows 8-byte aligned
  std::uint64_t created_unix_ns;   // wall-clock creation time, for display only
  char type_name[kTypeNameBytes];  // the message type's name, NUL-terminated
  // Leases (lease.hpp): immutable like the rest of the identity; every opener checks them and
  // keeps its own copies (the lease area's size must match the file).
  std::uint32_t lease_slots;       // QueueOptions::max_leases; 0: no lease area
  std::uint32_t lease_payload;     // largest message when lease_slots != 0 (every slot holds one)
  std::uint64_t lease_timeout_ns;  // QueueOptions::lease_timeout; 0: none
  std::uint32_t max_deliveries;    // QueueOptions::max_deliveries; 0: no limit
  std::uint32_t lease_reserved;    // zero
  char dead_letter_queue[kTypeNameBytes];  // its name, NUL-terminated; empty: none

  // ---- Producer side: put_lock serialises producers; tail is theirs. `tail` has a cache line to
  //      itself: consumers poll it, and their reads must not fight the producers' lock word and
  //      counters for the line.
  // Packed Cursor of the next frame to write. Stored by producers holding put_lock, with release
  // (after the frame's bytes); loaded by consumers with acquire.
  alignas(kCacheLine) std::atomic<std::uint64_t> tail;
  alignas(kCacheLine) RobustMutex put_lock;  // process-shared, robust (robust_mutex.hpp)
  std::uint64_t head_seen;  // producers' cached copy of `head`; guarded by put_lock; only grows
  // Statistics written only under put_lock (relaxed load + store, no read-modify-write) and
  // atomic only so that a snapshot may read them without the lock. Messages put since creation
  // are tail's 32-bit count extended by put_wraps: a store once per 2^32 puts, not one per put.
  std::atomic<std::uint64_t> put_wraps;   // times tail's count has wrapped past 2^32
  std::atomic<std::uint64_t> peak_depth;  // most messages held at once, as producers saw it

  // ---- Consumer side: get_lock serialises consumers; head is theirs, on a line of its own.
  // Packed Cursor of the next frame to read. Stored by consumers holding get_lock, with release
  // (after the frame has been read); loaded by producers with acquire.
  alignas(kCacheLine) std::atomic<std::uint64_t> head;
  alignas(kCacheLine) RobustMutex get_lock;  // process-shared, robust (robust_mutex.hpp)
  std::uint64_t tail_seen;  // consumers' cached copy of `tail`; guarded by get_lock; only grows
  std::atomic<std::uint64_t> get_wraps;  // times head's count has wrapped; as put_wraps
  // 1 when a lease slot may be ready for redelivery (lease.hpp, "The ready hint"): set (seq_cst)
  // after a slot is made ready; cleared (seq_cst exchange) by a get_lock holder before it scans
  // the slots. On this line: only gets read it, and it changes only when a message comes back.
  std::atomic<std::uint32_t> leases_ready;

  // ---- Wake-ups: consumers sleep on not_empty, producers on not_full.
  EventCount not_empty;
  EventCount not_full;

  // ---- Control and statistics; every field is atomic and needs no lock.
  alignas(kCacheLine) std::atomic<std::uint32_t> shutdown;  // a ShutdownState; only grows
  std::atomic<std::uint64_t> put_timeouts;     // relaxed; timed or non-blocking puts that failed
  std::atomic<std::uint64_t> get_timeouts;     // relaxed; likewise for gets
  std::atomic<std::uint64_t> full_waits;       // relaxed; times a producer went to sleep
  std::atomic<std::uint64_t> empty_waits;      // relaxed; times a consumer went to sleep
  std::atomic<std::uint64_t> lock_recoveries;  // relaxed; locks taken over from a dead holder

  // ---- JoinableQueue's tasks: unfinished = (tail's count - uint32(tasks_base) - tasks_done),
  //      modulo 2^32 (ring.hpp, "Task counting"): the put path writes nothing here.
  // 0 while the queue is not joinable; then kJoinable | tail's count when it became so (the puts
  // before are not tasks). Set once, by a CAS from 0 (Ring::make_joinable), then immutable.
  std::atomic<std::uint64_t> tasks_base;
  // task_done() calls: CAS (seq_cst) by task_done, which refuses to pass the count of puts;
  // loaded with acquire before tail by join() and unfinished_tasks().
  std::atomic<std::uint64_t> tasks_done;
  // Bumped when task_done() brings the unfinished tasks to 0, and at shutdown; JoinableQueue::join
  // sleeps here. Puts never bump it: they only add tasks.
  EventCount all_tasks_done;

  // ---- Pipe: the holders of the end that receives from this ring ([0]) and of the end that sends
  //      into it ([1]); zero in a plain queue. Lock-free: see HolderSlot.
  alignas(kCacheLine) EndTable pipe_ends[2];

  // ---- Lease statistics (relaxed; written under get_lock, read by stats()).
  alignas(kCacheLine) std::atomic<std::uint64_t> redeliveries;  // ready slots delivered again
  std::atomic<std::uint64_t> dead_lettered;  // messages moved to the dead-letter queue
};

// ---- The lease area (lease.hpp): one slot per lease, each holding its own copy of the message.
//
// A slot's `state` is the one word every step of a lease commits with a single store or CAS
// (see LeaseState). The other fields are written only by whoever owns the slot's current state
// (the get_lock holder for free, taking and ready slots; the holder for a held one), before the
// release store of `state` that publishes them, and read after an acquire load of `state`.
struct alignas(kCacheLine) LeaseSlot {
  std::atomic<std::uint64_t> state;      // a packed LeaseState
  std::atomic<std::uint64_t> from_head;  // taking: the head word before the take committed
  std::atomic<std::uint64_t> taken_ns;   // held: CLOCK_MONOTONIC when its holder took it
  std::atomic<std::uint32_t> bytes;      // the message's length; at most lease_payload
  // The message's bytes follow, up to lease_payload, within the slot's stride.
};

// Bytes from one slot to the next: the slot's fields, then its message, to a whole cache line.
constexpr std::size_t lease_stride(std::uint32_t payload) noexcept {
  return (sizeof(LeaseSlot) + payload + kCacheLine - 1) & ~(kCacheLine - 1);
}
// The most slots a queue may have (QueueOptions::max_leases), and the largest lease area.
inline constexpr std::uint32_t kMaxLeaseSlots = 4096;
inline constexpr std::size_t kMaxLeaseAreaBytes = std::size_t{1} << 30;

// The kinds of slot: free (may be taken by the get_lock holder), taking (a get_lock holder is
// copying a frame into it, and commits by moving head past the frame), held (a consumer holds
// the lease), ready (its message waits for its next delivery, ahead of the ring).
enum class LeaseKind : std::uint32_t { free = 0, taking = 1, held = 2, ready = 3 };

// LeaseSlot::state: [pid:22 | start ticks mod 2^18 | generation:14 | deliveries:8 | kind:2].
// The holder is named by pid and start time in one word, so that one acquire load tells a
// checker who holds the slot (a recycled pid does not match the start time); the generation
// changes on every move out of held, so that a late ack's CAS cannot succeed on a later lease.
struct LeaseState {
  std::uint32_t pid = 0;
  std::uint32_t ticks = 0;  // low 18 bits of the holder's start time in clock ticks
  std::uint32_t generation = 0;
  std::uint32_t deliveries = 0;  // saturates at 255
  LeaseKind kind = LeaseKind::free;

  static constexpr std::uint32_t kPidMask = (1u << 22) - 1;
  static constexpr std::uint32_t kTicksMask = (1u << 18) - 1;
  static constexpr std::uint32_t kGenerationMask = (1u << 14) - 1;
  static constexpr std::uint32_t kMaxDeliveries = 255;

  static LeaseState unpack(std::uint64_t w) noexcept {
    return {static_cast<std::uint32_t>(w) & kPidMask,
            static_cast<std::uint32_t>(w >> 22) & kTicksMask,
            static_cast<std::uint32_t>(w >> 40) & kGenerationMask,
            static_cast<std::uint32_t>(w >> 54) & 0xffu, static_cast<LeaseKind>(w >> 62)};
  }
  std::uint64_t pack() const noexcept {
    return std::uint64_t{pid & kPidMask} | std::uint64_t{ticks & kTicksMask} << 22 |
           std::uint64_t{generation & kGenerationMask} << 40 |
           std::uint64_t{std::min(deliveries, kMaxDeliveries)} << 54 |
           std::uint64_t{static_cast<std::uint32_t>(kind) & 3u} << 62;
  }
};

static_assert(sizeof(SharedHeader) <= kHeaderBytes, "the header must fit its page");
static_assert(std::is_standard_layout_v<SharedHeader>, "offsetof must be meaningful");
static_assert(std::atomic<std::uint64_t>::is_always_lock_free &&
                  std::atomic<std::uint32_t>::is_always_lock_free,
              "atomics in shared memory must not hide a process-local lock");
static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t),
              "a futex word must be exactly 32 bits");
// Producers and consumers each write only their own lines: no false sharing between the sides.
static_assert(offsetof(SharedHeader, put_lock) / kCacheLine !=
              offsetof(SharedHeader, get_lock) / kCacheLine);
static_assert(offsetof(SharedHeader, head) / kCacheLine !=
              offsetof(SharedHeader, tail) / kCacheLine);
static_assert(offsetof(SharedHeader, tail) / kCacheLine !=
                      offsetof(SharedHeader, put_lock) / kCacheLine &&
                  offsetof(SharedHeader, head) / kCacheLine !=
                      offsetof(SharedHeader, get_lock) / kCacheLine,
              "the words the other side polls are not on the lock's line");

}  // namespace shmq::detail
