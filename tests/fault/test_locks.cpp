// The ring's robust locks (include/shmq/detail/robust_mutex.hpp, src/sync.cpp) against what other
// processes can do to them: waiters that leave after being woken, links rewritten in shared
// memory while the lock is held, children made without fork handlers.
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "shmq/detail/layout.hpp"
#include "shmq/detail/ring.hpp"
#include "shmq/shmq.hpp"
#include "../support.hpp"

using namespace std::chrono_literals;
using shmq::Queue;
using shmq::detail::RobustMutex;
using shmq::detail::SharedHeader;
using shmq::test::Child;
using shmq::test::GlibcRobustMutexes;
using shmq::test::eventually;
using shmq::test::Pipe;
using shmq::test::process_state;

namespace {

// The header page of a queue, mapped once more; children forked afterwards inherit the mapping, so
// its addresses are valid in them too.
class HeaderView {
 public:
  explicit HeaderView(const std::string& queue) {
    const int fd = open(shmq::test::segment_path(queue).c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("cannot open the segment of " + queue);
    void* at = mmap(nullptr, shmq::detail::kHeaderBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (at == MAP_FAILED) throw std::runtime_error("cannot map the header of " + queue);
    header_ = static_cast<SharedHeader*>(at);
  }
  HeaderView(const HeaderView&) = delete;
  HeaderView& operator=(const HeaderView&) = delete;
  ~HeaderView() { munmap(header_, shmq::detail::kHeaderBytes); }
  SharedHeader& operator*() const { return *header_; }

 private:
  SharedHeader* header_;
};

void send_byte(int fd) {
  const char byte = 'x';
  if (write(fd, &byte, 1) != 1) throw std::runtime_error("write to a pipe failed");
}
void receive_byte(int fd) {
  char byte;
  if (read(fd, &byte, 1) != 1) throw std::runtime_error("read from a pipe failed");
}

// True if `pid` sleeps in futex() on a word at `page_offset` in its page: the header is mapped
// page-aligned, so that tells its lock words apart from every other futex word.
bool asleep_on_futex_at(pid_t pid, std::size_t page_offset) {
  if (process_state(pid) != 'S') return false;
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/syscall").c_str(), "r");
  if (f == nullptr) return false;
  long number = -1;
  unsigned long address = 0;
  const int fields = std::fscanf(f, "%ld %lx", &number, &address);
  std::fclose(f);
  return fields == 2 && number == SYS_futex && address % 4096 == page_offset;
}

// Which side's lock a test works on, and how a process holds it or waits for it.
enum class Side { get, put };
const char* name_of(Side side) { return side == Side::get ? "get" : "put"; }
RobustMutex& lock_of(SharedHeader& h, Side side) { return side == Side::get ? h.get_lock : h.put_lock; }
std::size_t lock_offset(Side side) {
  return side == Side::get ? offsetof(SharedHeader, get_lock) : offsetof(SharedHeader, put_lock);
}
// Takes `side`'s lock of q, says so on `held`, and keeps it until a byte arrives on `release`.
void hold_lock(Queue<long>& q, Side side, int held, int release) {
  if (side == Side::get) {
    q.get_with([&](const std::byte*, std::size_t) {
      send_byte(held);
      receive_byte(release);
      return 0;
    });
  } else {
    q.put_with(sizeof(long), [&](std::byte* at, std::size_t) {
      send_byte(held);
      receive_byte(release);
      const long value = 0;
      std::memcpy(at, &value, sizeof value);
    });
  }
}

// A waiter that was woken and then left without taking the lock: the trace a waiter leaves when
// it is SIGKILLed right after its wake-up, or when its timeout passed before it ran and the lock
// was by then taken again. It announces itself on the lock word, as lock_contended does, sleeps
// on it with a raw futex wait, and exits as soon as anything wakes it.
void wait_once_then_leave(std::atomic<std::uint32_t>& word) {
  std::uint32_t now = word.load();
  while ((now & FUTEX_WAITERS) == 0 && !word.compare_exchange_weak(now, now | FUTEX_WAITERS)) {
  }
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT, now | FUTEX_WAITERS,
          nullptr, nullptr, 0);
}

// Issue 11 item 1: H holds the lock; W sleeps on it first, then B, a real caller. H lets go: W is
// woken and leaves. B must still get the lock. With a single wake-up per unlock it went to W (the
// kernel wakes in FIFO order) and B slept forever on a free lock.
void check_sleeper_outlives_a_woken_waiter_that_leaves(Side side) {
  Queue<long> q;
  q.put(1);
  q.put(2);
  Queue<long> done;
  HeaderView view(q.name());
  Pipe held, release;

  Child holder([&] { hold_lock(q, side, held.fds[1], release.fds[0]); });
  receive_byte(held.fds[0]);
  Child leaver([&] { wait_once_then_leave(lock_of(*view, side).word); });
  REQUIRE(eventually([&] { return asleep_on_futex_at(leaver.pid(), lock_offset(side)); }));
  Child sleeper([&] {
    if (side == Side::get) {
      done.put(q.get());
    } else {
      q.put(3);
      done.put(3);
    }
  });
  REQUIRE(eventually([&] { return asleep_on_futex_at(sleeper.pid(), lock_offset(side)); }));

  send_byte(release.fds[1]);  // the holder unlocks
  CHECK(holder.succeeded());
  CHECK(leaver.succeeded());
  REQUIRE(done.get(10s) == (side == Side::get ? 2 : 3));  // throws Empty if the sleeper never woke
  CHECK(sleeper.succeeded());
}

void lock_or_throw(pthread_mutex_t& m) {
  if (pthread_mutex_lock(&m) != 0) throw std::runtime_error("pthread_mutex_lock failed");
}
void unlock_or_throw(pthread_mutex_t& m) {
  if (pthread_mutex_unlock(&m) != 0) throw std::runtime_error("pthread_mutex_unlock failed");
}

// After a process died holding `a` and q's put lock (and nothing else): both were released by the
// kernel, so its robust list was intact; q works.
void check_released_by_the_kernel(pthread_mutex_t& a, Queue<long>& q, long queued) {
  CHECK(pthread_mutex_trylock(&a) == EOWNERDEAD);
  pthread_mutex_consistent(&a);
  pthread_mutex_unlock(&a);
  q.put(-1, 10s);
  CHECK(q.stats().lock_recoveries == 1);
  CHECK(q.qsize() == static_cast<std::size_t>(queued) + 1);
  for (long i = 0; i < queued; ++i) CHECK(q.get() >= 0);
  CHECK(q.get() == -1);  // the put in flight at the kill was never committed
}

}  // namespace

TEST_CASE("a sleeper on a lock is woken even when the waiter woken before it leaves without it",
          "[fault]") {
  const Side side = GENERATE(Side::get, Side::put);
  INFO("the " << name_of(side) << " lock");
  check_sleeper_outlives_a_woken_waiter_that_leaves(side);
}

// Issue 11 item 9. Before: unlock wrote through the rewritten links (SIGSEGV, or stores into the
// header: the queue's head and tail cursors here).
TEST_CASE("a lock holder whose links another process rewrote unlocks without following them",
          "[fault]") {
  Queue<long> q;
  q.put(1);
  HeaderView view(q.name());
  SharedHeader& h = *view;
  GlibcRobustMutexes glibc;
  Queue<long> ready;
  Pipe held, release;

  // What the other process writes over the held get lock's links: {prev, next}.
  const int kind = GENERATE(0, 1, 2);
  void* const wild = reinterpret_cast<void*>(0xdead0000);
  const std::pair<void*, void*> rewritten[] = {
      {wild, wild},
      {nullptr, nullptr},
      // Into the mapping: the old unlink stored `next` over `head` and `prev` over `tail`.
      {&h.head, reinterpret_cast<char*>(&h.tail) + sizeof(void*)}};
  const auto [prev, next] = rewritten[kind];
  // Alone in its thread's list, the lock is unlinked through the private list head; with a glibc
  // robust mutex taken before it, by the walk, which meets the rewritten `next`.
  const bool glibc_mutex_too = GENERATE(false, true);
  INFO("links rewritten to " << prev << ", " << next
                             << (glibc_mutex_too ? ", a glibc mutex held too" : ", held alone"));

  Child holder([&] {
    if (glibc_mutex_too) lock_or_throw(glibc.m[0]);
    hold_lock(q, Side::get, held.fds[1], release.fds[0]);  // unlocks after the rewrite
    if (glibc_mutex_too) unlock_or_throw(glibc.m[0]);
    // The list still works: a queue lock and a glibc robust mutex, taken and let go...
    q.put(2);
    if (q.get() != 2) throw std::runtime_error("the queue lost a message");
    lock_or_throw(glibc.m[0]);
    q.put(3);
    unlock_or_throw(glibc.m[0]);
    // ... and the kernel finds them when this process dies holding them.
    lock_or_throw(glibc.m[1]);
    q.put_with(sizeof(long), [&](std::byte*, std::size_t) {
      ready.put(0);
      for (;;) pause();
    });
  });
  receive_byte(held.fds[0]);
  h.get_lock.links = {prev, next};
  send_byte(release.fds[1]);
  REQUIRE(ready.get(10s) == 0);  // throws Empty if the holder died of its unlock
  holder.kill(SIGKILL);
  const int status = holder.wait_status();
  CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));
  CHECK(pthread_mutex_trylock(&glibc.m[0]) == 0);  // let go before the kill: untouched
  pthread_mutex_unlock(&glibc.m[0]);
  check_released_by_the_kernel(glibc.m[1], q, 1);
}

// unlink reads the links of glibc's entries, which it cannot vouch for, through process_vm_readv.
TEST_CASE("queue locks released out of order among glibc robust mutexes leave a list the kernel walks",
          "[fault]") {
  Queue<long> q;
  Queue<long> inner;
  GlibcRobustMutexes glibc;
  pthread_mutex_t& a = glibc.m[0];
  pthread_mutex_t& b = glibc.m[1];
  Queue<long> ready;
  Child holder([&] {
    // The robust list, first entry first, as each line leaves it.
    q.put_with(sizeof(long), [&](std::byte* at, std::size_t) {  // q
      lock_or_throw(a);    // a q
      inner.put(1);        // inner a q, then a q: inner let go in front of a (a's `prev` checked)
      lock_or_throw(b);    // b a q
      unlock_or_throw(a);  // b q
      const long value = 1;
      std::memcpy(at, &value, sizeof value);
    });  // b: q let go behind b (found by walking through b, whose `next` is written)
    inner.get_with([&](const std::byte*, std::size_t) {  // inner b
      unlock_or_throw(b);  // inner
      lock_or_throw(a);    // a inner
      return 0;
    });  // a: inner let go behind a
    // Die holding a and q's put lock: the kernel must find both.
    q.put_with(sizeof(long), [&](std::byte*, std::size_t) {
      ready.put(0);
      for (;;) pause();
    });
  });
  REQUIRE(ready.get(10s) == 0);
  holder.kill(SIGKILL);
  holder.wait_status();
  CHECK(pthread_mutex_trylock(&b) == 0);  // let go before the kill
  pthread_mutex_unlock(&b);
  CHECK(inner.empty());
  check_released_by_the_kernel(a, q, 1);
}

namespace {
// Takes the put locks of qs[i], qs[i + 1], ... one inside the other, and runs `innermost` inside all.
template <class Fn>
void nest_put_locks(std::vector<Queue<long>>& qs, std::size_t i, Fn& innermost) {
  if (i == qs.size()) {
    innermost();
    return;
  }
  qs[i].put_with(sizeof(long), [&](std::byte* at, std::size_t) {
    nest_put_locks(qs, i + 1, innermost);
    const long value = static_cast<long>(i);
    std::memcpy(at, &value, sizeof value);
  });
}
}  // namespace

// A thread vouches for the first kVouchedLocks queue locks it holds; the others are checked.
TEST_CASE("more nested queue locks than a thread vouches for are let go and released like the others",
          "[fault]") {
  std::vector<Queue<long>> qs(shmq::detail::kVouchedLocks + 2);
  Queue<long> ready;
  Child holder([&] {
    auto nothing = [] {};
    nest_put_locks(qs, 0, nothing);  // taken and let go: one message in each queue
    auto die = [&] {
      ready.put(0);
      for (;;) pause();
    };
    nest_put_locks(qs, 0, die);
  });
  REQUIRE(ready.get(10s) == 0);
  holder.kill(SIGKILL);
  holder.wait_status();
  for (std::size_t i = 0; i < qs.size(); ++i) {
    INFO("queue " << i);
    qs[i].put(-1, 10s);  // its put lock: released by the kernel
    CHECK(qs[i].stats().lock_recoveries == 1);
    CHECK(qs[i].get() == static_cast<long>(i));
    CHECK(qs[i].get() == -1);
  }
}

// Issue 11 item 10. _Fork() runs no atfork handler: before, the child kept its parent's cached
// TID, its lock word held the parent's TID, and the kernel, which releases only the dying
// thread's own, left the lock held: the parent was told it held the lock itself.
TEST_CASE("a child made by _Fork() that dies holding a queue's lock leaves it to the others",
          "[fault]") {
  Queue<long> q;
  q.put(1);  // this thread's identity is cached now
  q.put(2);
  Pipe held;
  std::fflush(nullptr);
  const pid_t pid = _Fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    q.get_with([&](const std::byte*, std::size_t) {
      send_byte(held.fds[1]);
      raise(SIGKILL);
      return 0;
    });
    _exit(1);
  }
  int status = 0;
  receive_byte(held.fds[0]);
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));

  CHECK(q.get(10s) == 1);  // the get in flight left its message
  CHECK(q.stats().lock_recoveries == 1);
  Child other([&] {
    if (q.get(10s) != 2) throw std::runtime_error("wrong message");
  });
  CHECK(other.succeeded());
}

// A notifier killed inside wake(), after the CAS that clears the sleeper count and starts a new
// epoch but before its futex_wake, leaves a sleeper that no later notifier counts: later puts see
// nobody asleep. The test plays that notifier's part on the shared header, then puts.
TEST_CASE("a consumer whose wake-up a dying notifier swallowed still gets later messages",
          "[fault][lock]") {
  Queue<long> q;
  HeaderView header(q.name());
  Queue<long> got;
  Child consumer([&] { got.put(q.get()); });
  const std::size_t seq_offset = offsetof(SharedHeader, not_empty) + offsetof(shmq::detail::EventCount, seq);
  REQUIRE(eventually([&] { return asleep_on_futex_at(consumer.pid(), seq_offset); }));
  auto& sleep = (*header).not_empty.sleep;
  std::uint64_t now = sleep.load();
  REQUIRE(shmq::detail::sleepers_of(now) == 1);
  REQUIRE(sleep.compare_exchange_strong(now, std::uint64_t{shmq::detail::epoch_of(now) + 1u} << 32));
  q.put(7);  // finds no sleeper: no futex_wake
  // Before sleeps were bounded, the consumer slept on with the message queued.
  CHECK(got.get(10s) == 7);
  CHECK(consumer.succeeded());
}

// A single put or get of a bitwise type holds its lock through list_op_pending alone, never
// linked into the robust list (ring.hpp, Tracking::pending). Killed while holding it that way,
// with a glibc robust mutex on its list as well, its holder must leave both to the kernel: the
// lock is marked owner-died and its sleeper woken, and the mutex is released.
TEST_CASE("a holder killed while its queue lock is named by list_op_pending alone leaves it to the others",
          "[fault]") {
  for (const Side side : {Side::get, Side::put}) {
    DYNAMIC_SECTION(name_of(side) << " lock") {
      Queue<long> q;
      q.put(1);
      Queue<long> done;
      HeaderView view(q.name());
      GlibcRobustMutexes glibc;
      pthread_mutex_t& a = glibc.m[0];
      Pipe held;  // not a queue: its put would take a lock of its own, and list_op_pending with it
      Child holder([&] {
        lock_or_throw(a);
        shmq::detail::PendingLock lock(lock_of(*view, side));
        if (!lock) throw std::runtime_error("the free lock was not taken");
        send_byte(held.fds[1]);
        for (;;) pause();
      });
      receive_byte(held.fds[0]);
      Child sleeper([&] {
        if (side == Side::get) {
          done.put(q.get());
        } else {
          q.put(2);
          done.put(2);
        }
      });
      REQUIRE(eventually([&] { return asleep_on_futex_at(sleeper.pid(), lock_offset(side)); }));
      holder.kill(SIGKILL);
      holder.wait_status();
      CHECK(done.get(10s) == (side == Side::get ? 1 : 2));  // Empty if the sleeper never woke
      CHECK(sleeper.succeeded());
      CHECK(q.stats().lock_recoveries == 1);
      CHECK(pthread_mutex_trylock(&a) == EOWNERDEAD);
      pthread_mutex_consistent(&a);
      pthread_mutex_unlock(&a);
    }
  }
}
