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
// leaves a list the kernel can walk (tests/fault/test_faults.cpp kills one holding both).
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
  RobustLinks links;  // the holder's entry in its thread's list; touched only by the holder
};
static_assert(sizeof(RobustMutex) == sizeof(pthread_mutex_t));
static_assert(offsetof(RobustMutex, links) == offsetof(pthread_mutex_t, __data.__list),
              "the kernel finds the word at the same offset from the links as glibc's");

// The calling thread's TID and robust list, looked up once per thread (and again in a forked
// child, whose TID differs).
struct ThisThread {
  std::uint32_t tid;         // 0 until looked up
  robust_list_head* robust;  // registered with the kernel by glibc
};
// Defined once, in src/sync.cpp: an inline variable would get a copy per module wherever code is
// built with hidden visibility, and the fork handler would renew only one. `__thread`, not
// thread_local: it never has a dynamic initialiser, so reading it needs no call.
extern __thread ThisThread this_thread;
// Looks this thread up (src/sync.cpp); throws Error if the C library's robust list is not laid out
// as RobustMutex expects.
void identify_this_thread();
inline ThisThread& this_thread_identity() {
  if (this_thread.tid == 0) identify_this_thread();
  return this_thread;
}

// Compiler barriers only: the kernel reads this thread's list when the thread dies, so each
// step must be in memory, in order, at the instruction where the thread may be killed.
inline void list_barrier() noexcept {
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

inline RobustLinks& entry_at(void* link) noexcept {
  const auto at = reinterpret_cast<std::uintptr_t>(link) & ~std::uintptr_t{1};  // bit 0: a PI lock
  return *reinterpret_cast<RobustLinks*>(at - offsetof(RobustLinks, next));
}
inline void* head_link(robust_list_head& head) noexcept {
  return &head.list.next;
}

// Call with list_op_pending naming `m` and its word holding our TID.
inline void link(RobustMutex& m, robust_list_head& head) noexcept {
  void*& first = entry_at(head_link(head)).next;
  entry_at(first).prev = &m.links.next;
  m.links.next = first;
  m.links.prev = head_link(head);
  list_barrier();
  first = &m.links.next;
}
// Call with list_op_pending naming `m`, before its word lets go.
inline void unlink(RobustMutex& m) noexcept {
  entry_at(m.links.next).prev = m.links.prev;
  entry_at(m.links.prev).next = m.links.next;
  list_barrier();
  m.links = {nullptr, nullptr};
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
  if (taken) link(m, *me.robust);
  set_pending(me, nullptr);
  return taken;
}
// The waiting path, after try_lock failed (src/sync.cpp): returns 0, EOWNERDEAD (taken over from
// a dead holder), ETIMEDOUT, or EDEADLK (this thread holds it already).
int lock_contended(RobustMutex& m, ThisThread& me, const Deadline& deadline) noexcept;
// Wakes one waiter on `word` (src/sync.cpp).
void wake_one(std::atomic<std::uint32_t>& word) noexcept;

inline void unlock(RobustMutex& m, ThisThread& me) noexcept {
  set_pending(me, &m);
  unlink(m);
  if (m.word.exchange(0, std::memory_order_release) & FUTEX_WAITERS) wake_one(m.word);
  set_pending(me, nullptr);
}

}  // namespace shmq::detail
