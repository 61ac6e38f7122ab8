// The syscalls behind the ring: futex wait/wake, and the contended and failing paths of its locks.
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <mutex>
#include <string>

#include "shmq/detail/ring.hpp"

namespace shmq::detail {

namespace {

long futex(std::atomic<std::uint32_t>& word, int op, std::uint32_t value, const timespec* timeout) {
  // Not FUTEX_PRIVATE_FLAG: the word is shared between processes. FUTEX_WAIT_BITSET takes an
  // absolute CLOCK_MONOTONIC timeout (FUTEX_CLOCK_REALTIME is not set).
  return syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), op, value, timeout, nullptr,
                 FUTEX_BITSET_MATCH_ANY);
}

}  // namespace

void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected, const Deadline& deadline) {
  const timespec ts = Deadline::to_timespec(deadline.at());
  // EAGAIN (the word moved), EINTR (a signal) and ETIMEDOUT all mean: go and look again.
  futex(word, FUTEX_WAIT_BITSET, expected, deadline.is_never() ? nullptr : &ts);
}

void wake(EventCount& ev) noexcept {
  std::uint64_t now = ev.sleep.load(std::memory_order_relaxed);
  do {
    if (sleepers_of(now) == 0) return;  // another notifier woke them first
  } while (!ev.sleep.compare_exchange_weak(now, std::uint64_t{epoch_of(now) + 1u} << 32,
                                           std::memory_order_relaxed));
  ev.seq.fetch_add(1, std::memory_order_release);
  futex(ev.seq, FUTEX_WAKE_BITSET, INT_MAX, nullptr);
}

void wake_one(std::atomic<std::uint32_t>& word) noexcept {
  futex(word, FUTEX_WAKE_BITSET, 1, nullptr);
}

int lock_contended(RobustMutex& m, ThisThread& me, const Deadline& deadline) noexcept {
  // Once this thread has slept, others may sleep too: keep FUTEX_WAITERS set when taking the lock,
  // so that its unlock wakes the next one (glibc's robust mutexes do the same).
  std::uint32_t waiters = 0;
  set_pending(me, &m);
  for (;;) {
    std::uint32_t word = m.word.load(std::memory_order_relaxed);
    const std::uint32_t holder = word & FUTEX_TID_MASK;
    if (holder == me.tid) {
      set_pending(me, nullptr);
      return EDEADLK;
    }
    if (holder == 0) {  // free, or FUTEX_OWNER_DIED: the kernel released it for a dead holder
      const std::uint32_t mine = me.tid | waiters | (word & FUTEX_WAITERS);
      if (m.word.compare_exchange_weak(word, mine, std::memory_order_acquire,
                                       std::memory_order_relaxed)) {
        link(m, *me.robust);
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
    waiters = FUTEX_WAITERS;
  }
}

__thread ThisThread this_thread{};

void identify_this_thread() {
  static std::once_flag at_fork;
  // A forked child is a new thread with a new TID; glibc gives it a fresh, empty robust list.
  std::call_once(at_fork,
                 [] { pthread_atfork(nullptr, nullptr, [] { this_thread = ThisThread{}; }); });
  robust_list_head* head = nullptr;
  std::size_t bytes = 0;
  if (syscall(SYS_get_robust_list, 0, &head, &bytes) != 0) {
    throw Error(std::string("shmq: cannot find this thread's robust futex list: ") +
                std::strerror(errno));
  }
  if (head == nullptr)
    throw Error("shmq: this thread has no robust futex list (the C library registers none)");
  constexpr long kFutexOffset =
      static_cast<long>(offsetof(RobustMutex, word)) -
      static_cast<long>(offsetof(RobustMutex, links) + offsetof(RobustLinks, next));
  if (bytes != sizeof(robust_list_head) || head->futex_offset != kFutexOffset) {
    throw Error(
        "shmq: the C library's robust futex list is not laid out as glibc's (futex_offset " +
        std::to_string(head->futex_offset) + ", expected " + std::to_string(kFutexOffset) + ")");
  }
  this_thread = ThisThread{static_cast<std::uint32_t>(gettid()), head};
}

void throw_lock_error(int rc, const std::string& queue) {
  if (rc == EDEADLK) {
    throw Error("shmq: queue '" + queue +
                "': this thread already holds the queue's lock (a codec called back into the queue?)");
  }
  throw Error("shmq: queue '" + queue + "': cannot take its lock: " + std::strerror(rc));
}

void throw_corrupt(const std::string& queue, const std::string& what) {
  throw Incompatible("shmq: queue '" + queue + "' is corrupt: " + what);
}

}  // namespace shmq::detail
