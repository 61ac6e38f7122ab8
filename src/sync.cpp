// The syscalls behind the ring: futex wait/wake, and the contended and failing paths of its locks.
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <new>
#include <string>

#include "shmq/detail/listeners.hpp"
#include "shmq/detail/ring.hpp"

#if defined(__SANITIZE_THREAD__)
#define SHMQ_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SHMQ_TSAN 1
#endif
#endif
#ifdef SHMQ_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace shmq::detail {

namespace {

long futex(std::atomic<std::uint32_t>& word, int op, std::uint32_t value, const timespec* timeout) {
  // Not FUTEX_PRIVATE_FLAG: the word is shared between processes. FUTEX_WAIT_BITSET takes an
  // absolute CLOCK_MONOTONIC timeout (FUTEX_CLOCK_REALTIME is not set).
  return syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), op, value, timeout, nullptr,
                 FUTEX_BITSET_MATCH_ANY);
}

}  // namespace

void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                const Deadline& deadline) {
  const timespec ts = Deadline::to_timespec(deadline.at());
  // EAGAIN (the word moved), EINTR (a signal) and ETIMEDOUT all mean: go and look again.
  futex(word, FUTEX_WAIT_BITSET, expected, deadline.is_never() ? nullptr : &ts);
}

void wake(EventCount& ev) noexcept {
  std::uint64_t now = ev.sleep.load(std::memory_order_relaxed);
  do {
    if (!anyone_counted(now)) return;  // another notifier woke them first
  } while (!ev.sleep.compare_exchange_weak(now, std::uint64_t{epoch_of(now) + 1u} << 32,
                                           std::memory_order_relaxed));
  if (listeners_of(now) != 0) ring_listeners(ev);  // first: an event loop is woken by its pipe
  // Only listeners counted: nobody sleeps on seq (one who counts itself from now on is in the new
  // epoch, and its re-check after its fence sees the change we published before has_sleepers).
  if (sleepers_of(now) == 0) return;
  ev.seq.fetch_add(1, std::memory_order_release);
  futex(ev.seq, FUTEX_WAKE_BITSET, INT_MAX, nullptr);
}

// Why every sleeper, and why in one syscall. Unlinking needs no such care: see robust_mutex.hpp.
//
// The invariant: a thread asleep on the word went to sleep on a value with FUTEX_WAITERS set
// (futex_wait compares and queues atomically), and FUTEX_WAITERS leaves the word only here, in
// the kernel operation that wakes every thread then queued. Nothing else clears it: try_lock
// takes only a word of 0; lock_contended keeps the bit when it takes the lock; the kernel, when a
// holder dies, keeps it beside FUTEX_OWNER_DIED. So every sleeper is either still announced by
// the word or already woken, whatever a woken thread then does. Waking one broke this: if the
// woken one left without the lock (its timeout had passed, or it was killed) after another thread
// took the lock on the fast path, which drops the bit, the other sleepers slept on with nobody
// left to wake them. And since every sleeper is woken, a thread that has slept need not set
// FUTEX_WAITERS when it takes the lock in case others still sleep (glibc does): the next unlock
// makes no wake-up call unless someone has gone to sleep since.
//
// FUTEX_WAKE_OP has the kernel set the word to 0 and wake, under its futex lock, in one call. A
// release store followed by FUTEX_WAKE would leave a window between the two where the unlocker's
// death loses the wake-up: the kernel's clean-up then wakes one waiter, and none if another thread
// has taken the lock meanwhile. Here, a death before the call leaves the word holding our TID
// with FUTEX_WAITERS: the kernel marks it FUTEX_OWNER_DIED and wakes one, who takes it over
// keeping FUTEX_WAITERS, so that its unlock wakes the rest; a woken waiter killed before taking it
// still has list_op_pending naming the lock, whose owner part is 0, so the kernel wakes another.
void unlock_waking_all(std::atomic<std::uint32_t>& word) noexcept {
  // The critical section's stores come before the syscall (an opaque call); the kernel's atomic
  // operation orders them before the 0 it stores. SYNC POINT: pairs, like unlock's release CAS,
  // with the acquire CAS of the next holder; ThreadSanitizer cannot see the kernel's store.
#ifdef SHMQ_TSAN
  __tsan_release(&word);
#endif
  // Set the word to 0; wake up to INT_MAX on it; then wake none on the second address (the same
  // word), whose comparison "old value == 0" fails: the old value holds our TID.
  constexpr int kSetToZero = FUTEX_OP(FUTEX_OP_SET, 0, FUTEX_OP_CMP_EQ, 0);
  auto* const at = reinterpret_cast<std::uint32_t*>(&word);
  if (syscall(SYS_futex, at, FUTEX_WAKE_OP, INT_MAX, nullptr, at, kSetToZero) < 0) {
    // Not expected on Linux; the lock must be let go whatever the kernel says.
    word.store(0, std::memory_order_release);
    futex(word, FUTEX_WAKE_BITSET, INT_MAX, nullptr);
  }
}

int lock_contended(RobustMutex& m, ThisThread& me, const Deadline& deadline) noexcept {
  set_pending(me, &m);
  for (;;) {
    std::uint32_t word = m.word.load(std::memory_order_relaxed);
    const std::uint32_t holder = word & FUTEX_TID_MASK;
    if (holder == me.tid) {
      set_pending(me, nullptr);
      return EDEADLK;
    }
    if (holder == 0) {  // free, or FUTEX_OWNER_DIED: the kernel released it for a dead holder
      // Keep FUTEX_WAITERS (see unlock_waking_all); a woken thread takes a free lock even if its
      // deadline has passed, so a wake-up from the kernel, which wakes one, is never wasted.
      const std::uint32_t mine = me.tid | (word & FUTEX_WAITERS);
      if (m.word.compare_exchange_weak(word, mine, std::memory_order_acquire,
                                       std::memory_order_relaxed)) {
        link(m, me);
        set_pending(me, nullptr);
        return (word & FUTEX_OWNER_DIED) != 0 ? EOWNERDEAD : 0;
      }
      continue;
    }
    if (deadline.expired()) {
      set_pending(me, nullptr);
      return ETIMEDOUT;
    }
    if ((word & FUTEX_WAITERS) == 0 &&
        !m.word.compare_exchange_weak(word, word | FUTEX_WAITERS, std::memory_order_relaxed)) {
      continue;
    }
    futex_wait(m.word, word | FUTEX_WAITERS, deadline);
  }
}

namespace {

// An entry of this thread's robust list, as unlink_walking reads it.
struct ListEntry {
  void* link;         // the entry's `next` field, untagged: what its neighbours point at
  RobustLinks links;  // its links when read (each read once: a shared entry's may change)
  bool vouched;       // the head or a held shmq lock: read and written directly
};

bool vouched_for(const ThisThread& me, void* link) noexcept {
  if (link == head_link(*me.robust)) return true;
  for (std::uint32_t i = 0; i < me.held_count; ++i) {
    if (link == &me.held[i]->links.next) return true;
  }
  return false;
}

// Entries that cannot be vouched for are read and written with process_vm_readv and _writev on
// our own process: the kernel copies, and reports an unmapped or protected address as an error
// instead of a fault. getpid(), not the cached TID: in a child forked while a lock was held, that
// TID would name the parent.
bool read_entry(const ThisThread& me, void* tagged_link, ListEntry& out) noexcept {
  out.link = untagged(tagged_link);
  out.vouched = vouched_for(me, out.link);
  if (out.vouched) {
    const RobustLinks& at = entry_at(out.link);
    out.links = {__atomic_load_n(&at.prev, __ATOMIC_RELAXED),
                 __atomic_load_n(&at.next, __ATOMIC_RELAXED)};
    return true;
  }
  constexpr std::uintptr_t kLinkOffset = offsetof(RobustMutex, links) + offsetof(RobustLinks, next);
  const auto at = reinterpret_cast<std::uintptr_t>(out.link);
  if (at % alignof(void*) != 0 || at < kLinkOffset) return false;
  struct {
    std::uint32_t word;
    std::uint32_t reserved[5];
    RobustLinks links;
  } entry;
  static_assert(sizeof entry == sizeof(RobustMutex) &&
                offsetof(decltype(entry), links) == offsetof(RobustMutex, links));
  iovec local{&entry, sizeof entry};
  iovec remote{reinterpret_cast<void*>(at - kLinkOffset), sizeof entry};
  if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != static_cast<ssize_t>(sizeof entry))
    return false;
  if ((entry.word & FUTEX_TID_MASK) != me.tid) return false;  // not a lock this thread holds
  out.links = entry.links;
  return true;
}

void write_link(const ListEntry& e, void* RobustLinks::*field, void* value) noexcept {
  void** at = &(entry_at(e.link).*field);  // an address only: nothing is read here
  if (e.vouched) {
    *at = value;
    return;
  }
  iovec local{&value, sizeof value};
  iovec remote{at, sizeof value};
  // If it fails, the entry that read back as a lock of ours cannot be written: it is no lock,
  // and there is nothing of ours in it to repair.
  process_vm_writev(getpid(), &local, 1, &remote, 1, 0);
}

// Ends the list after `last`, an entry reached through checked links.
void cut_list_after(const ThisThread& me, const ListEntry& last) noexcept {
  void* const head = head_link(*me.robust);
  entry_at(head).prev = last.link;
  list_barrier();
  write_link(last, &RobustLinks::next, head);
}

}  // namespace

void unlink_walking(RobustMutex& m, ThisThread& me) noexcept {
  for (std::uint32_t i = 0; i < me.held_count; ++i) {  // no longer vouched for
    if (me.held[i] == &m) {
      me.held[i] = me.held[--me.held_count];
      break;
    }
  }
  void* const mine = &m.links.next;
  ListEntry prev;
  read_entry(me, head_link(*me.robust), prev);  // the head: vouched for
  ListEntry next;
  for (int steps = kRobustListLimit; untagged(prev.links.next) != mine;) {
    if (untagged(prev.links.next) == head_link(*me.robust)) return;  // not in the list
    if (--steps == 0 || !read_entry(me, prev.links.next, next) || next.links.prev != prev.link) {
      cut_list_after(me, prev);
      return;
    }
    prev = next;
  }
  void* const successor = __atomic_load_n(&m.links.next, __ATOMIC_RELAXED);  // read once
  if (untagged(successor) != mine && read_entry(me, successor, next) && next.links.prev == mine) {
    write_link(next, &RobustLinks::prev, prev.link);
    list_barrier();
    write_link(prev, &RobustLinks::next, successor);  // keeps the successor's PI tag
  } else {
    cut_list_after(me, prev);
  }
}

namespace {
// Where ThisThread::process_mark points until the thread is looked up.
constexpr std::atomic<std::uint32_t> kNotIdentified{0};
}  // namespace

__thread ThisThread this_thread{&kNotIdentified, 0, 0, nullptr, {}};

namespace {

// The page behind ThisThread::process_mark: one per process, made by the first thread that looks
// itself up. The kernel zeroes it in the child of every fork (MADV_WIPEONFORK works on private
// anonymous memory, whichever way the child was made, as long as it does not share our memory:
// vfork and clone(CLONE_VM) children do, and must not use queues). Nothing else writes it. It
// holds the process's pid once a thread is looked up (listeners.hpp reads it: no getpid()).
std::atomic<std::atomic<std::uint32_t>*> process_mark_page{nullptr};

std::atomic<std::uint32_t>* process_mark() {
  if (auto* mark = process_mark_page.load(std::memory_order_acquire)) return mark;
  // Made without a lock: a thread forking while another made the page must not leave the child a
  // lock held forever. The thread that loses the race gives its page back.
  const auto bytes = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  void* page = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) {
    throw Error(std::string("shmq: cannot map a page for the fork check: ") + std::strerror(errno));
  }
  if (madvise(page, bytes, MADV_WIPEONFORK) != 0) {
    const int error = errno;
    munmap(page, bytes);
    throw Error(
        std::string("shmq: the kernel cannot zero a page in forked children (MADV_WIPEONFORK, "
                    "Linux 4.14 or later): ") +
        std::strerror(error));
  }
  auto* mine = new (page) std::atomic<std::uint32_t>(0);
  std::atomic<std::uint32_t>* theirs = nullptr;
  if (process_mark_page.compare_exchange_strong(theirs, mine, std::memory_order_acq_rel,
                                                std::memory_order_acquire)) {
    return mine;
  }
  munmap(page, bytes);
  return theirs;
}

}  // namespace

void identify_this_thread() {
  std::atomic<std::uint32_t>* const mark = process_mark();
  // A new thread or a forked child: glibc gives a forked child a fresh, empty robust list.
  robust_list_head* head = nullptr;
  std::size_t bytes = 0;
  if (syscall(SYS_get_robust_list, 0, &head, &bytes) != 0) {
    throw Error(std::string("shmq: cannot find this thread's robust futex list: ") +
                std::strerror(errno));
  }
  if (head == nullptr)
    throw Error(
        "shmq: this thread has no robust futex list (made by a raw clone or fork syscall, which "
        "glibc did not see, or the C library registers none)");
  constexpr long kFutexOffset =
      static_cast<long>(offsetof(RobustMutex, word)) -
      static_cast<long>(offsetof(RobustMutex, links) + offsetof(RobustLinks, next));
  if (bytes != sizeof(robust_list_head) || head->futex_offset != kFutexOffset) {
    throw Error(
        "shmq: the C library's robust futex list is not laid out as glibc's (futex_offset " +
        std::to_string(head->futex_offset) + ", expected " + std::to_string(kFutexOffset) + ")");
  }
  this_thread = ThisThread{mark, static_cast<std::uint32_t>(gettid()), 0, head, {}};
  mark->store(static_cast<std::uint32_t>(getpid()), std::memory_order_relaxed);
}

void throw_lock_error(int rc, const std::string& queue) {
  if (rc == EDEADLK) {
    throw Error(
        "shmq: " + queue +
        ": this thread already holds the queue's lock (a codec called back into the queue?)");
  }
  throw Error("shmq: " + queue + ": cannot take its lock: " + std::strerror(rc));
}

void throw_corrupt(const std::string& queue, const std::string& what) {
  throw Incompatible("shmq: " + queue + " is corrupt: " + what);
}

}  // namespace shmq::detail
