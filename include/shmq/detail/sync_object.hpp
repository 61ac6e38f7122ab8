// The shared-memory layout of shmq's synchronisation objects and shared values, and the core that
// every Lock, RLock, Semaphore, Event, Condition, Barrier, Value, Array and SharedMemory handle
// runs on. Internal.
//
// An object is one file (segment.hpp, ObjectFile): /dev/shm/shmq.<name>, or an unnamed sealed
// memfd. In address order:
//
//   offset 0                  ObjectHeader (one page, kObjectHeaderBytes)
//   offset kObjectHeaderBytes data_bytes of payload: a Value's or Array's elements, a
//                             SharedMemory's bytes, a Barrier's slots (BarrierSlot[2 * parties])
//
// Its magic word differs from a queue's, so a queue's name opened as a lock (or a lock's as a
// queue) is refused as Incompatible. Everything an opener trusts (kind, sizes, parties) is checked
// against the file's size once, at open, and copied into the handle: a process that later writes
// hostile bytes into the header can break the object's state for everyone (as it could a queue's),
// but cannot make a reader index outside the file.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "shmq/detail/deadline.hpp"
#include "shmq/detail/layout.hpp"
#include "shmq/detail/ring.hpp"
#include "shmq/detail/robust_mutex.hpp"
#include "shmq/detail/segment.hpp"
#include "shmq/errors.hpp"

namespace shmq::detail {

inline constexpr std::uint64_t kObjectMagic = 0x5348'4d51'5359'4e43ULL;  // "SHMQSYNC"
inline constexpr std::uint32_t kObjectLayoutVersion = 1;
inline constexpr std::size_t kObjectHeaderBytes = 4096;
inline constexpr std::size_t kLockNameBytes = 320;  // a Condition's lock's name(), NUL-terminated
// Barrier parties: every arrival looks at each of the 2 x parties slots for a dead waiter, so a
// full trip costs 2 x parties^2 slot reads (4096 parties: some 35 ms of them).
inline constexpr std::uint32_t kMaxBarrierParties = 1u << 12;
// Semaphore units: SEM_VALUE_MAX.
inline constexpr std::uint32_t kMaxSemaphoreValue = INT32_MAX;
// Payload of a Value, Array or SharedMemory: at most 1 TiB.
inline constexpr std::size_t kMaxObjectBytes = std::size_t{1} << 40;
// Polls before a waiter sleeps, as a queue's default spin_polls.
inline constexpr unsigned kObjectSpinPolls = 2000;

enum class ObjectKind : std::uint32_t {
  lock = 1,
  rlock,
  semaphore,
  bounded_semaphore,
  event,
  condition,
  barrier,
  value,
  array,
  shared_memory,
};
// A set of kinds, as a mask: kind_bit(lock) | kind_bit(rlock).
constexpr std::uint32_t kind_bit(ObjectKind kind) noexcept {
  return 1u << static_cast<std::uint32_t>(kind);
}
// "lock", "rlock", "semaphore", ...; "unknown" for anything else.
const char* kind_name(std::uint32_t kind) noexcept;

// A Lock's or RLock's state (also a Value's or Array's lock, and a Barrier's).
struct LockState {
  RobustMutex mutex;         // robust_mutex.hpp: the holder's TID, FUTEX_WAITERS, FUTEX_OWNER_DIED
  std::uint32_t depth;       // RLock: acquires by the holder not yet released; guarded by mutex
  std::uint32_t owner_died;  // 1 from a takeover from a dead holder until a holder that can
                             // report it (not a Value's get() or set()) releases it; every other
                             // release writes 0 and no acquire clears it; guarded by mutex
  std::atomic<std::uint64_t> recoveries;  // relaxed; takeovers from dead holders, for `shmq stat`
};

// One waiting party of a Barrier. `presence` is held by the thread waiting in the slot, so the
// kernel marks it FUTEX_OWNER_DIED (TID 0) if that thread dies: what breaks the barrier for the
// others. A slot is free when its state is not `waiting` and its presence has no live holder.
enum class SlotState : std::uint32_t { free = 0, waiting, tripped, broken };
struct BarrierSlot {
  RobustMutex presence;
  std::atomic<std::uint32_t> state;  // a SlotState; written under the barrier's lock; polled
                                     // (acquire) by the waiter without it
  std::uint32_t generation;          // the generation it waits in; guarded by the barrier's lock
};

struct ObjectHeader {
  // ---- Identity: written by the creator, then immutable; `magic` stored last with release.
  std::atomic<std::uint64_t> magic;  // kObjectMagic
  std::uint32_t layout_version;      // kObjectLayoutVersion
  std::uint32_t kind;                // an ObjectKind
  std::uint64_t data_bytes;          // payload after the header; the file is header + payload
  std::uint64_t type_fingerprint;    // Value/Array: hash of the element type's name
  std::uint32_t element_bytes;       // Value/Array: sizeof(T)
  std::uint32_t limit;               // BoundedSemaphore: its bound; Barrier: parties
  std::int32_t creator_pid;          // for `shmq ls`
  std::uint32_t mode;                // permission bits asked for at creation
  std::uint64_t created_unix_ns;     // wall-clock creation time, for display only
  std::uint64_t timeout_ns;          // Barrier: the default timeout of wait(); 0: none
  std::uint32_t has_lock;            // Value/Array: 1 unless made with lock = false
  std::uint32_t lock_kind;           // Condition: its lock's ObjectKind (lock or rlock)
  char type_name[kTypeNameBytes];    // Value/Array: the element type's name, NUL-terminated
  char lock_name[kLockNameBytes];    // Condition: its lock's name(), NUL-terminated

  // ---- State.
  // Lock, RLock; a Value's or Array's lock; a Barrier's lock, guarding its fields below.
  alignas(kCacheLine) LockState lock;
  // Semaphore: units left (CAS; acquire to take one, release to give one back). Event: its flag
  // and set count (event_is_set, event_sets below; set() by release CAS, acquire load).
  alignas(kCacheLine) std::atomic<std::uint32_t> count;
  // Barrier: parties waiting in this generation; written under lock, read relaxed by n_waiting().
  std::atomic<std::uint32_t> arrived;
  std::uint32_t generation;           // Barrier: trips and resets so far; guarded by lock
  std::atomic<std::uint32_t> broken;  // Barrier: 1 once broken until reset; written under lock
  // Semaphore, Event, Condition and Barrier waiters sleep here (layout.hpp).
  EventCount wakeups;
};
static_assert(sizeof(ObjectHeader) <= kObjectHeaderBytes, "the header must fit its page");

// An Event's word (ObjectHeader::count): bit 0 is the flag; the bits above count the set()s that
// found it clear, modulo 2^31, so that a wait tells a set() that began after it from an earlier
// one (src/sync_primitives.cpp, event_wait). Any value is valid.
constexpr bool event_is_set(std::uint32_t word) noexcept {
  return (word & 1u) != 0;
}
constexpr std::uint32_t event_sets(std::uint32_t word) noexcept {
  return word >> 1;
}
// The word after a set(): the flag on, and one more set counted if it was off.
constexpr std::uint32_t event_after_set(std::uint32_t word) noexcept {
  return event_is_set(word) ? word : word + 3;
}
static_assert(std::is_standard_layout_v<ObjectHeader>);
static_assert(offsetof(ObjectHeader, magic) == 0, "ObjectFile::open waits for the magic at 0");

// What a new object is: its kind and the parameters its header records.
struct ObjectSpec {
  explicit ObjectSpec(ObjectKind k) noexcept : kind(k) {}
  ObjectKind kind;
  std::uint64_t data_bytes = 0;
  std::uint32_t limit = 0;
  std::uint32_t initial_count = 0;
  const TypeTag* type = nullptr;
  std::uint32_t element_bytes = 0;
  bool has_lock = false;
  std::chrono::nanoseconds timeout{0};
  std::string lock_name;  // Condition
  ObjectKind lock_kind = ObjectKind::lock;
};

// One mapped object, shared by the handles that copy it.
class SyncObject {
 public:
  static std::shared_ptr<SyncObject> create(std::string_view name, const ObjectSpec& spec,
                                            mode_t mode);
  static std::shared_ptr<SyncObject> create_anonymous(const ObjectSpec& spec);
  // Opens an object of one of `kinds` (a kind_bit mask); throws NotFound, Incompatible (another
  // kind, a queue, another element type, a corrupt header), InvalidArgument (a bad name).
  static std::shared_ptr<SyncObject> open(std::string_view name, std::uint32_t kinds,
                                          const TypeTag* type = nullptr);
  // Opens `name` if it exists (refusing another user's, or one with a wider mode, or one whose
  // payload size differs from spec's), else creates it; exactly one racing caller creates.
  static std::shared_ptr<SyncObject> open_or_create(std::string_view name, const ObjectSpec& spec,
                                                    mode_t mode);
  // Removes the name, as Queue::remove.
  static bool remove(std::string_view name) { return Segment::remove(name); }

  explicit SyncObject(std::unique_ptr<ObjectFile> file);
  SyncObject(const SyncObject&) = delete;
  SyncObject& operator=(const SyncObject&) = delete;
  // Unmaps, unless a thread of this process still holds one of its locks (see sync_object.cpp).
  ~SyncObject();
  ObjectHeader& header() const noexcept { return *header_; }
  std::byte* data() const noexcept { return file_->data() + kObjectHeaderBytes; }
  // Checked at open, then kept here: never re-read from shared memory.
  ObjectKind kind() const noexcept { return kind_; }
  std::uint64_t data_bytes() const noexcept { return data_bytes_; }
  std::uint32_t limit() const noexcept { return limit_; }
  const std::string& name() const noexcept { return file_->name(); }
  const std::string& description() const noexcept { return file_->description(); }
  SpinBudget& spin() noexcept { return spin_; }

 private:
  std::unique_ptr<ObjectFile> file_;
  ObjectHeader* header_;
  ObjectKind kind_;
  std::uint64_t data_bytes_;
  std::uint32_t limit_;
  SpinBudget spin_{kObjectSpinPolls};
};

// A Python-style timeout (seconds; nullopt: forever; zero or negative: do not wait) as a
// Deadline; throws InvalidArgument for NaN.
Deadline deadline_after_seconds(std::optional<double> seconds, const std::string& what);

// ---- Locks. The uncontended acquire and release are inline: the few instructions of
// robust_mutex.hpp's try_lock and unlock, plus this file's depth and owner_died words.
class LockCore {
 public:
  LockCore(std::shared_ptr<SyncObject> object, LockState& state, bool recursive) noexcept
      : object_(std::move(object)), state_(&state), recursive_(recursive) {}

  // Takes the lock by the deadline: true if taken. A Lock already held by this thread: false,
  // or SelfDeadlock if the deadline is never. An RLock beyond 2^32 - 1 holds: LockMisuse.
  bool acquire(const Deadline& deadline) {
    ThisThread& me = this_thread_identity();
    if (recursive_ && held_by(me)) return deeper();
    if (try_lock(state_->mutex, me)) {
      state_->depth = 1;
      return true;
    }
    return acquire_contended(deadline);
  }
  // Throws NotHeld unless this thread holds it. The last release clears the mark of a dead
  // holder, unless `pass_on_owner_died` (a Value's get() or set(), which took the lock only for a
  // copy and cannot report the death themselves): the next holder is then told instead.
  void release(bool pass_on_owner_died = false) {
    ThisThread& me = this_thread_identity();
    if (!held_by(me)) throw_not_held();
    if (recursive_ && state_->depth > 1) {
      --state_->depth;
      return;
    }
    state_->depth = 0;
    if (!pass_on_owner_died) state_->owner_died = 0;
    unlock(state_->mutex, me);
  }
  bool held_by_this_thread() const { return held_by(this_thread_identity()); }
  // Whether the holder before this thread died holding it (call while holding it).
  bool owner_died() const { return held_by_this_thread() && state_->owner_died != 0; }

  // For Condition::wait: lets go of every hold this thread has, returning how many; then takes the
  // lock back (blocking) with that many.
  std::uint32_t release_all();
  void reacquire(std::uint32_t depth);

  SyncObject& object() const noexcept { return *object_; }
  const std::shared_ptr<SyncObject>& shared_object() const noexcept { return object_; }
  bool recursive() const noexcept { return recursive_; }

 private:
  bool held_by(const ThisThread& me) const noexcept {
    return (state_->mutex.word.load(std::memory_order_relaxed) & FUTEX_TID_MASK) == me.tid;
  }
  bool deeper();
  bool acquire_contended(const Deadline& deadline);
  [[noreturn]] void throw_not_held() const;

  std::shared_ptr<SyncObject> object_;
  LockState* state_;
  bool recursive_;
};

// What every handle type shares: a name, open and remove. `Handle` has a constructor from
// std::shared_ptr<SyncObject> and a static `kinds()`, the kind_bit mask of what it opens.
template <class Handle>
class NamedObject {
 public:
  // Opens an existing object by name (named, or an unnamed one's name() while its creator holds
  // it); throws NotFound, or Incompatible for an object of another kind or a queue.
  static Handle open(std::string_view name) {
    return Handle(SyncObject::open(name, Handle::kinds()));
  }
  // Removes the name; processes that hold the object keep using it. False if there was none.
  static bool remove(std::string_view name) { return SyncObject::remove(name); }
  // The name it was made or opened with; for an unnamed object, the form that opens it elsewhere
  // (as a Pool task's argument, say) while its creator holds it.
  const std::string& name() const noexcept { return object_->name(); }

 protected:
  explicit NamedObject(std::shared_ptr<SyncObject> object) : object_(std::move(object)) {}
  std::shared_ptr<SyncObject> object_;
};

}  // namespace shmq::detail
