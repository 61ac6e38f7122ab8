// The syscalls behind the ring: futex wait/wake and the contended and failing paths of the locks.
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "shmq/detail/ring.hpp"

#if defined(__SANITIZE_THREAD__)
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

int lock_slow(pthread_mutex_t& mutex, const Deadline& deadline) noexcept {
  if (deadline.is_never()) return pthread_mutex_lock(&mutex);
  const timespec ts = Deadline::to_timespec(deadline.at());
#if defined(__SANITIZE_THREAD__)
  // ThreadSanitizer's runtime (GCC 12, LLVM 14) does not intercept pthread_mutex_clocklock: tell it
  // about the acquisition, or it reports the later unlock as the unlock of an unlocked mutex.
  __tsan_mutex_pre_lock(&mutex, __tsan_mutex_try_lock);
  const int rc = pthread_mutex_clocklock(&mutex, CLOCK_MONOTONIC, &ts);
  const bool acquired = rc == 0 || rc == EOWNERDEAD;
  __tsan_mutex_post_lock(&mutex, __tsan_mutex_try_lock | (acquired ? 0 : __tsan_mutex_try_lock_failed), 0);
  return rc;
#else
  return pthread_mutex_clocklock(&mutex, CLOCK_MONOTONIC, &ts);
#endif
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

void init_shared_mutex(pthread_mutex_t& mutex) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  // Robust: a holder's death is reported to the next locker instead of leaving the lock held.
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  // Error-checking: re-locking from the holding thread fails with EDEADLK instead of hanging.
  pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
  const int rc = pthread_mutex_init(&mutex, &attr);
  pthread_mutexattr_destroy(&attr);
  if (rc != 0) throw Error(std::string("shmq: cannot initialise a shared mutex: ") + std::strerror(rc));
}

}  // namespace shmq::detail
