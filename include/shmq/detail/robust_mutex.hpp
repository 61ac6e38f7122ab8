// The ring's locks: robust, process-shared mutexes on a futex word. Internal.
//
// Why not a robust pthread_mutex_t: glibc's robust lock and unlock serve every mutex type,
// priority inheritance included, and cost about 200 of the ~630 instructions of a put+get pair.
// The ring needs one kind of lock, which takes about 20 instructions to lock and 20 to unlock.
//
// Robustness is the kernel's (docs.kernel.org/locking/robust-futex-ABI.html): every thread
// registers one list of the robust locks it holds, and when the thread dies, the kernel walks the
// list and, for each lock word still holding the thread's TID, sets FUTEX_OWNER_DIED and wakes
// one waiter. It also handles the one lock named by the list's list_op_pending, which covers a
// thread killed between changing a lock word and changing the list. The lock word holds
//
//   0 (free) | holder's TID | FUTEX_WAITERS (someone may sleep on it) | FUTEX_OWNER_DIED
//
// A thread has one list, and glibc owns it (its robust pthread mutexes live there), so these
// locks join glibc's list exactly as a robust pthread_mutex_t does: the same links at the same
// offset from the lock word (RobustMutex mirrors pthread_mutex_t's __lock and __list), the same
// doubly linked insertion and removal, and list_op_pending set around every change. Entries of
// both kinds then interleave freely within a thread, and a thread killed at any instruction
// leaves a list the kernel can walk (tests/fault/test_faults.cpp kills one holding both). Unlike
// glibc, unlink trusts no link it reads from shared memory (see "Unlinking" below).
//
// Waking: an unlock that finds FUTEX_WAITERS wakes every sleeper, not one (src/sync.cpp,
// unlock_waking_all, gives the argument); a sleeper that wakes and finds the lock taken again
// sets FUTEX_WAITERS and sleeps again.
#pragma once

#include <linux/futex.h>
#include <pthread.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "shmq/detail/deadline.hpp"

#if !defined(__GLIBC__) || !defined(__PTHREAD_MUTEX_HAVE_PREV) || __PTHREAD_MUTEX_HAVE_PREV != 1
#error "shmq's locks join glibc's doubly linked robust list: they need glibc on a 64-bit Linux"
#endif

namespace shmq::detail {

// An entry's links in a robust list. Every link points at another entry's `next` (the word the
// kernel follows); the list head's own `next` is robust_list_head::list, and glibc keeps a
// `prev` word right before it, so the head is an entry like the others.
struct RobustLinks {
  void* prev;
  void* next;
};

// In shared memory; all zero is a free lock. `word` is taken by a CAS with acquire and let go by
// an exchange with release (FUTEX_WAITERS is set with relaxed CASes: it only asks for a wake-up);
// the kernel sets FUTEX_OWNER_DIED in it, and clears the TID, when the holder dies.
struct RobustMutex {
  std::atomic<std::uint32_t> word;  // 0, or holder's TID | FUTEX_WAITERS | FUTEX_OWNER_DIED
  std::uint32_t reserved[5];        // zero: puts `links` where pthread_mutex_t has its __list
  RobustLinks links;  // the holder's entry in its thread's list; written by the holder (and by
                      // glibc unlinking a neighbour), read back only after a check (unlink)
};
static_assert(sizeof(RobustMutex) == sizeof(pthread_mutex_t));
static_assert(offsetof(RobustMutex, links) == offsetof(pthread_mutex_t, __data.__list),
              "the kernel finds the word at the same offset from the links as glibc's");


// Shmq locks a thread may hold at once and still unlock without a syscall: the ones beyond are
// found in the list all the same, through the checked read that glibc's own entries take.
inline constexpr std::uint32_t kVouchedLocks = 4;
// The kernel walks at most this many entries of a robust list (ROBUST_LIST_LIMIT); so does unlink.
inline constexpr int kRobustListLimit = 2048;

// The calling thread's identity and its robust list, looked up once per thread and again in a
// forked child; plus the shmq locks it holds (the first kVouchedLocks of them), whose addresses,
// unlike their links in shared memory, no other process can change.
struct ThisThread {
  std::uint32_t tid;         // 0 until looked up
  std::uint32_t held_count;  // entries of `held` in use
  robust_list_head* robust;  // registered with the kernel by glibc
  // Non-zero in the process that looked this thread up: it lives on a page the kernel zeroes in
  // the child of any fork (MADV_WIPEONFORK), so a child made by fork(), glibc's _Fork() (which
  // runs no atfork handler) or clone() without CLONE_VM looks itself up again.
  const std::atomic<std::uint32_t>* process_mark;
  RobustMutex* held[kVouchedLocks];
};
// Defined once, in src/sync.cpp: an inline variable would get a copy per module wherever code is
// built with hidden visibility. `__thread`, not thread_local: it never has a dynamic initialiser,
// so reading it needs no call.
extern __thread ThisThread this_thread;
// Looks this thread up (src/sync.cpp); throws Error if the C library's robust list is not laid out
// as RobustMutex expects, or if the kernel predates MADV_WIPEONFORK (Linux 4.14).
void identify_this_thread();
// A forked child inherits this_thread with its parent's TID: a lock it took would hold a TID the
// kernel never releases for it. process_mark is read only once tid is set, so it exists.
inline ThisThread& this_thread_identity() {
  if (this_thread.tid == 0 || this_thread.process_mark->load(std::memory_order_relaxed) == 0)
    identify_this_thread();
  return this_thread;
}

// Compiler barriers only: the kernel reads this thread's list when the thread dies, so each
// step must be in memory, in order, at the instruction where the thread may be killed.
inline void list_barrier() noexcept {
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

// A link is the address of an entry's `next`; bit 0 of a `next` marks a PI lock after it.
inline void* untagged(void* link) noexcept {
  return reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(link) & ~std::uintptr_t{1});
}
inline RobustLinks& entry_at(void* link) noexcept {
  return *reinterpret_cast<RobustLinks*>(reinterpret_cast<std::uintptr_t>(untagged(link)) -
                                         offsetof(RobustLinks, next));
}
inline void* head_link(robust_list_head& head) noexcept {
  return &head.list.next;
}

// Call with list_op_pending naming `m` and its word holding our TID. Reads only the private list
// head, whose first entry is this thread's to write (the head, or a lock it holds).
inline void link(RobustMutex& m, ThisThread& me) noexcept {
  void*& first = entry_at(head_link(*me.robust)).next;
  entry_at(first).prev = &m.links.next;
  m.links.next = first;
  m.links.prev = head_link(*me.robust);
  list_barrier();
  first = &m.links.next;
  if (me.held_count < kVouchedLocks) me.held[me.held_count++] = &m;
}

// ---- Unlinking, when other processes may have rewritten any link in shared memory.
//
// A lock's links live in the shared header (the kernel finds the word at a fixed offset from
// them), so any process that maps the queue can rewrite them while we hold the lock. The holder
// therefore never reads through, writes through, or stores into its list, a pointer it read from
// shared memory unless that pointer is vouched for or checked:
//  - vouched: the private list head, or a shmq lock this thread holds (ThisThread::held): their
//    addresses are private knowledge, so their links are read and written with plain accesses;
//  - checked: any other entry (a glibc robust mutex, a shmq lock beyond kVouchedLocks, or
//    garbage) is read with process_vm_readv, which cannot fault, and accepted only if its word
//    holds our TID (every entry of our list is a lock we hold) and it links back to the entry we
//    came from; it is written with process_vm_writev.
// The predecessor is found by walking from the private head, never from our own `prev`; the
// successor is our `next`, accepted only if it links back to us. The common case (one lock held,
// nothing else in the list) reads the head and our `next`, and writes the head: no syscall.
// If a link does not check out, the list is cut after the last entry that did, so that both the
// kernel and this code only ever follow checked links. What a hostile writer costs, and only the
// holder it targets: locks behind the cut (taken before it) are no longer released by the kernel
// if this thread dies holding them; and a lock whose `next` is rewritten while held hides those
// behind it from the kernel until it is unlocked.

// An entry of this thread's robust list, as read by unlink.
struct ListEntry {
  void* link;         // the entry's `next` field, untagged: what its neighbours point at
  RobustLinks links;  // its links when read
  bool vouched;       // the head or a held shmq lock: plain loads and stores
};

// The non-faulting read and write of an entry that is not vouched for (src/sync.cpp); the read is
// false unless the entry holds our TID.
bool read_unvouched_entry(const ThisThread& me, void* link, RobustLinks& out) noexcept;
void write_unvouched_link(const ThisThread& me, void** field, void* value) noexcept;

inline bool vouched_for(const ThisThread& me, void* link) noexcept {
  if (link == head_link(*me.robust)) return true;
  for (std::uint32_t i = 0; i < me.held_count; ++i) {
    if (link == &me.held[i]->links.next) return true;
  }
  return false;
}
inline bool read_entry(const ThisThread& me, void* tagged_link, ListEntry& out) noexcept {
  out.link = untagged(tagged_link);
  out.vouched = vouched_for(me, out.link);
  if (!out.vouched) return read_unvouched_entry(me, out.link, out.links);
  // Relaxed atomic loads: a shared entry's links may change under us; each is read once.
  const RobustLinks& at = entry_at(out.link);
  out.links = {__atomic_load_n(&at.prev, __ATOMIC_RELAXED),
               __atomic_load_n(&at.next, __ATOMIC_RELAXED)};
  return true;
}
inline void write_link(const ThisThread& me, const ListEntry& e, void* RobustLinks::*field,
                       void* value) noexcept {
  void** at = &(entry_at(e.link).*field);  // an address only: nothing is read here
  if (e.vouched) {
    *at = value;
  } else {
    write_unvouched_link(me, at, value);
  }
}

// Ends the list after `last`, an entry reached through checked links.
inline void cut_list_after(const ThisThread& me, const ListEntry& last) noexcept {
  void* const head = head_link(*me.robust);
  entry_at(head).prev = last.link;
  list_barrier();
  write_link(me, last, &RobustLinks::next, head);
}

inline void forget_held(ThisThread& me, const RobustMutex& m) noexcept {
  for (std::uint32_t i = me.held_count; i-- > 0;) {
    if (me.held[i] == &m) {
      me.held[i] = me.held[--me.held_count];
      return;
    }
  }
}

// Call with list_op_pending naming `m`, before its word lets go.
inline void unlink(RobustMutex& m, ThisThread& me) noexcept {
  void* const mine = &m.links.next;
  ListEntry prev;
  read_entry(me, head_link(*me.robust), prev);  // the head: vouched for, always read
  ListEntry next;
  for (int steps = kRobustListLimit; untagged(prev.links.next) != mine;) {
    if (untagged(prev.links.next) == head_link(*me.robust)) {  // not in the list: nothing to do
      forget_held(me, m);
      return;
    }
    if (--steps == 0 || !read_entry(me, prev.links.next, next) || next.links.prev != prev.link) {
      cut_list_after(me, prev);
      forget_held(me, m);
      return;
    }
    prev = next;
  }
  void* const successor = __atomic_load_n(&m.links.next, __ATOMIC_RELAXED);  // read once
  if (read_entry(me, successor, next) && next.links.prev == mine) {
    write_link(me, next, &RobustLinks::prev, prev.link);
    list_barrier();
    write_link(me, prev, &RobustLinks::next, successor);  // keeps the successor's PI tag
  } else {
    cut_list_after(me, prev);
  }
  forget_held(me, m);
}

inline void set_pending(ThisThread& me, RobustMutex* m) noexcept {
  list_barrier();
  me.robust->list_op_pending =
      m == nullptr ? nullptr : reinterpret_cast<robust_list*>(&m->links.next);
  list_barrier();
}

// Takes `m` if it is free: the uncontended path, which makes no syscall and reads no clock.
inline bool try_lock(RobustMutex& m, ThisThread& me) noexcept {
  set_pending(me, &m);
  std::uint32_t free = 0;
  const bool taken = m.word.compare_exchange_strong(free, me.tid, std::memory_order_acquire,
                                                    std::memory_order_relaxed);
  if (taken) link(m, me);
  set_pending(me, nullptr);
  return taken;
}
// The waiting path, after try_lock failed (src/sync.cpp): returns 0, EOWNERDEAD (taken over from
// a dead holder), ETIMEDOUT, or EDEADLK (this thread holds it already).
int lock_contended(RobustMutex& m, ThisThread& me, const Deadline& deadline) noexcept;
// Lets go of a word that says someone may sleep on it, and wakes every sleeper, in one syscall
// (src/sync.cpp, which says why all of them).
void unlock_waking_all(std::atomic<std::uint32_t>& word) noexcept;

inline void unlock(RobustMutex& m, ThisThread& me) noexcept {
  set_pending(me, &m);
  unlink(m, me);
  // Held, the word is our TID, with FUTEX_WAITERS if another thread has set it since.
  std::uint32_t held = me.tid;
  if (!m.word.compare_exchange_strong(held, 0, std::memory_order_release,
                                      std::memory_order_relaxed)) {
    unlock_waking_all(m.word);
  }
  set_pending(me, nullptr);
}

}  // namespace shmq::detail
