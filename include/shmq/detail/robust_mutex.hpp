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
// a CAS with release, or by the kernel (FUTEX_WAKE_OP) when FUTEX_WAITERS is set (it is set with
// relaxed CASes: it only asks for a wake-up); the kernel sets FUTEX_OWNER_DIED in it, and clears
// the TID, when the holder dies.
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
  // Non-zero once this thread is looked up in this process: until then it points at a constant 0,
  // then at a word on a page the kernel zeroes in the child of any fork (MADV_WIPEONFORK), so a
  // child made by fork(), glibc's _Fork() (which runs no atfork handler) or clone() without
  // CLONE_VM looks itself up again instead of using its parent's TID. The word is the pid.
  const std::atomic<std::uint32_t>* process_mark;
  std::uint32_t tid;
  std::uint32_t held_count;  // entries of `held` in use
  robust_list_head* robust;  // registered with the kernel by glibc
  RobustMutex* held[kVouchedLocks];
};
// Defined once, in src/sync.cpp: an inline variable would get a copy per module wherever code is
// built with hidden visibility. `__thread`, not thread_local: it has a constant initialiser, so
// reading it needs no call.
extern __thread ThisThread this_thread;
// Looks this thread up (src/sync.cpp); throws Error if the C library's robust list is not laid out
// as RobustMutex expects, or if the kernel predates MADV_WIPEONFORK (Linux 4.14).
void identify_this_thread();
inline ThisThread& this_thread_identity() {
  if (this_thread.process_mark->load(std::memory_order_relaxed) == 0) identify_this_thread();
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
// them), so any process that maps the queue can rewrite them while we hold the lock. glibc's
// unlink writes through its entry's links; ours never reads through, writes through, or stores
// into the list a pointer read from shared memory unless it is vouched for or checked:
//  - vouched for: the private list head, or a shmq lock this thread holds (ThisThread::held):
//    their addresses are private knowledge, so their links are read and written directly;
//  - checked: any other entry (a glibc robust mutex, a shmq lock beyond kVouchedLocks, or
//    garbage) is read with process_vm_readv, which cannot fault, and accepted only if its word
//    holds our TID (every entry of our list is a lock we hold) and it links back to the entry we
//    came from; it is written with process_vm_writev.
// The predecessor is found by walking from the private head, never through our own `prev`; the
// successor is our `next`, accepted only if it links back to us. If a link does not check out,
// the list is cut after the last entry that did, so that the kernel and this code only ever
// follow checked links. What a hostile writer costs, and only the holder it targets: locks behind
// the cut (taken before it) are no longer released by the kernel if this thread dies holding
// them; and a lock whose `next` is rewritten while held hides those behind it from the kernel
// until it is unlocked.

// The general case of unlink (src/sync.cpp): the walk described above; it also takes `m` off
// ThisThread::held.
void unlink_walking(RobustMutex& m, ThisThread& me) noexcept;

// Call with list_op_pending naming `m`, before its word lets go. The common case, `m` the only
// entry, is the walk's first step, and needs neither m's links nor a syscall: the private head
// names m as its first and its last entry. Then m is also the only shmq lock this thread holds
// (or, after a cut, the only one left in its list: forgetting the others only costs checks).
inline void unlink(RobustMutex& m, ThisThread& me) noexcept {
  void* const head = head_link(*me.robust);
  RobustLinks& ends = entry_at(head);  // the head's links, in this thread's private memory
  if (ends.next == &m.links.next && ends.prev == &m.links.next) {
    ends.prev = head;
    list_barrier();
    ends.next = head;
    me.held_count = 0;
  } else {
    unlink_walking(m, me);
  }
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
// ---- Holding a lock named by list_op_pending alone, not linked.
//
// When a thread dies, the kernel handles the entry named by list_op_pending as it handles a
// listed one (exit_robust_list in kernel/futex/core.c: handle_futex_death on it after the walk):
// if the word holds the thread's TID it sets FUTEX_OWNER_DIED and wakes a waiter; if the word is
// 0 it wakes a waiter, which finds the lock free. So a thread holding one lock may leave it named
// by list_op_pending from before its CAS until after the CAS that lets it go, and skip linking and
// unlinking: a kill at any instruction leaves the kernel either a lock it did not take (no TID in
// the word: nothing to do) or one that names it (released as a listed one). The price is the one
// slot: nothing during the hold may take or release another robust lock in this thread (a glibc
// robust mutex or a shmq lock, each of which rewrites list_op_pending), or the kernel would lose
// track of this one. The ring uses it only for holds that run none but its own code.

// As try_lock, for a hold that takes and releases no other robust lock in this thread; on
// success list_op_pending names `m` until unlock_pending.
inline bool try_lock_pending(RobustMutex& m, ThisThread& me) noexcept {
  set_pending(me, &m);
  std::uint32_t free = 0;
  if (m.word.compare_exchange_strong(free, me.tid, std::memory_order_acquire,
                                     std::memory_order_relaxed)) {
    return true;
  }
  set_pending(me, nullptr);
  return false;
}

// The waiting path, after try_lock failed (src/sync.cpp): returns 0, EOWNERDEAD (taken over from
// a dead holder), ETIMEDOUT, or EDEADLK (this thread holds it already).
int lock_contended(RobustMutex& m, ThisThread& me, const Deadline& deadline) noexcept;
// Lets go of a word that says someone may sleep on it, and wakes every sleeper, in one syscall
// (src/sync.cpp, which says why all of them).
void unlock_waking_all(std::atomic<std::uint32_t>& word) noexcept;

// Lets go of the word of a lock this thread holds, with list_op_pending naming it.
inline void release_word(RobustMutex& m, const ThisThread& me) noexcept {
  // Held, the word is our TID, with FUTEX_WAITERS if another thread has set it since.
  std::uint32_t held = me.tid;
  if (!m.word.compare_exchange_strong(held, 0, std::memory_order_release,
                                      std::memory_order_relaxed)) {
    unlock_waking_all(m.word);
  }
}

inline void unlock(RobustMutex& m, ThisThread& me) noexcept {
  set_pending(me, &m);
  unlink(m, me);
  release_word(m, me);
  set_pending(me, nullptr);
}
// Lets go of a lock taken by try_lock_pending.
inline void unlock_pending(RobustMutex& m, ThisThread& me) noexcept {
  release_word(m, me);
  set_pending(me, nullptr);
}

}  // namespace shmq::detail
