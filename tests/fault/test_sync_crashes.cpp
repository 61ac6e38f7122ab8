// Locks, semaphores, events, conditions and barriers whose holders and waiters are SIGKILLed at
// random points, round after round; and hostile bytes written into their segments. The survivors
// must go on: no hang, a dead lock holder told to exactly the next holder, a dead barrier party
// breaking the barrier for those waiting.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fcntl.h>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "shmq/barrier.hpp"
#include "shmq/condition.hpp"
#include "shmq/event.hpp"
#include "shmq/inspect.hpp"
#include "shmq/lock.hpp"
#include "shmq/semaphore.hpp"
#include "shmq/shared_memory.hpp"
#include "shmq/value.hpp"
#include "shmq/detail/sync_object.hpp"
#include "../support.hpp"

using namespace std::chrono_literals;
using namespace shmq;
using shmq::test::Child;
using shmq::test::eventually;
using shmq::test::NameGuard;
using shmq::test::unique_name;

namespace {

int rounds(int in_ci) {
  const char* env = std::getenv("SHMQ_KILL_ROUNDS");
  return env != nullptr ? std::max(1, std::atoi(env)) : in_ci;
}

std::chrono::microseconds random_delay(std::mt19937& rng, int most_us = 3000) {
  return std::chrono::microseconds(std::uniform_int_distribution<int>(0, most_us)(rng));
}

// Two words that a critical section keeps equal, written one after the other with a pause
// between, so that a kill inside it often leaves them different.
struct Guarded {
  std::atomic<std::uint64_t> a, b;
};
Guarded* shared_guarded() {
  void* p = mmap(nullptr, sizeof(Guarded), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1,
                 0);
  REQUIRE(p != MAP_FAILED);
  return new (p) Guarded{};
}
void critical_section(Guarded& g) {
  const std::uint64_t next = g.a.load() + 1;
  g.a.store(next);
  for (int i = 0; i < 200; ++i) asm volatile("" ::: "memory");
  g.b.store(next);
}

template <class L>
void kill_holders_at_random(L lock, bool nested) {
  Guarded* g = shared_guarded();
  std::mt19937 rng(1234);
  int told = 0;
  Queue<int> started;  // so that the random delay runs while the holder loops, not while it forks
  for (int round = 0; round < rounds(40); ++round) {
    Child holder([&] {
      started.put(1);
      for (;;) {
        lock.lock();
        if (nested) lock.lock();
        critical_section(*g);
        if (nested) lock.unlock();
        lock.unlock();
      }
    });
    started.get(10s);
    std::this_thread::sleep_for(random_delay(rng));
    holder.kill(SIGKILL);
    holder.wait_status();
    REQUIRE(lock.try_lock_for(5s));
    if (lock.owner_died()) {
      ++told;
      g->b.store(g->a.load());  // the repair the flag is for
    } else {
      // Not told: every critical section before ours completed.
      REQUIRE(g->a.load() == g->b.load());
    }
    lock.unlock();
    REQUIRE(lock.try_lock());
    CHECK_FALSE(lock.owner_died());  // told once
    lock.unlock();
  }
  CHECK(told > 0);  // the kills did land inside the lock
  munmap(g, sizeof(Guarded));
}

}  // namespace

TEST_CASE("a Lock whose holder is killed at random points goes to the next acquirer, who is told "
          "exactly when a holder died", "[fault][sync]") {
  kill_holders_at_random(Lock(), false);
}

TEST_CASE("an RLock whose holder is killed at random points, nested, goes to the next acquirer",
          "[fault][sync]") {
  kill_holders_at_random(RLock(), true);
}

TEST_CASE("a Value's lock whose holder dies mid-set goes to the next getter", "[fault][sync]") {
  Value<std::uint64_t> v(0);
  Queue<int> started;
  std::mt19937 rng(7);
  for (int round = 0; round < rounds(20); ++round) {
    Child writer([&] {
      started.put(1);
      for (std::uint64_t i = 0;; ++i) v.set(i);
    });
    started.get(10s);
    std::this_thread::sleep_for(random_delay(rng));
    writer.kill(SIGKILL);
    writer.wait_status();
    RLock lock = v.get_lock();
    REQUIRE(lock.try_lock_for(5s));
    (void)v.get();  // nests in the held RLock
    lock.unlock();
  }
}

TEST_CASE("a Semaphore unit held by a process that dies is lost, as POSIX's", "[fault][sync]") {
  BoundedSemaphore sem(1);
  Queue<int> holding;
  Child holder([&] {
    sem.acquire();
    holding.put(1);
    pause();
  });
  holding.get(10s);
  holder.kill(SIGKILL);
  holder.wait_status();
  CHECK(sem.get_value() == 0);
  CHECK_FALSE(sem.acquire(true, 0.2));
  sem.release();  // any process may give it back
  CHECK(sem.acquire(false));
}

TEST_CASE("semaphore users killed at random points leave a count within bounds and no waiter "
          "wedged", "[fault][sync]") {
  BoundedSemaphore sem(2);
  Queue<int> started;
  std::mt19937 rng(99);
  for (int round = 0; round < rounds(30); ++round) {
    std::vector<Child> users;
    for (int i = 0; i < 2; ++i) {
      users.emplace_back([&] {
        started.put(1);
        for (;;) {
          if (sem.acquire(true, 1.0)) sem.release();
        }
      });
    }
    started.get(10s);
    started.get(10s);
    std::this_thread::sleep_for(random_delay(rng));
    users[0].kill(SIGKILL);
    users[0].wait_status();
    CHECK(sem.get_value() <= 2);
    users[1].kill(SIGKILL);
    users[1].wait_status();
    // Give back what the dead held, then both units must be takeable.
    while (sem.get_value() < 2) sem.release();
    CHECK(sem.acquire(false));
    CHECK(sem.acquire(false));
    sem.release();
    sem.release();
  }
}

TEST_CASE("event and condition waiters killed at random points wedge nobody", "[fault][sync]") {
  Condition cond;
  Event ev;
  Value<int> flag(0, false);
  Queue<int> started;
  std::mt19937 rng(5);
  for (int round = 0; round < rounds(30); ++round) {
    std::vector<Child> doomed;
    for (int i = 0; i < 2; ++i) {
      doomed.emplace_back([&] {
        started.put(1);
        for (;;) {
          ev.wait(0.001);
          std::unique_lock held(cond);
          cond.wait(0.001);
        }
      });
    }
    started.get(10s);
    started.get(10s);
    std::this_thread::sleep_for(random_delay(rng));
    for (auto& d : doomed) d.kill(SIGKILL);
    for (auto& d : doomed) d.wait_status();
    flag.set(0);
    ev.clear();
    Queue<int> waiting, woke;
    Child cond_waiter([&] {
      std::unique_lock held(cond);
      waiting.put(1);
      woke.put(cond.wait_for([&] { return flag.get() == 1; }, 10.0) ? 1 : 0);
    });
    Child event_waiter([&] {
      waiting.put(2);
      woke.put(ev.wait(10) ? 1 : 0);
    });
    waiting.get(10s);
    waiting.get(10s);
    {
      std::unique_lock held(cond);  // the condition waiter is inside wait() once we hold it
      flag.set(1);
      cond.notify_all();
    }
    ev.set();
    const auto start = std::chrono::steady_clock::now();
    CHECK(woke.get(10s) == 1);
    CHECK(woke.get(10s) == 1);
    CHECK(std::chrono::steady_clock::now() - start < 2s);
    CHECK(cond_waiter.succeeded());
    CHECK(event_waiter.succeeded());
  }
}

TEST_CASE("a barrier party killed while others wait breaks the barrier for them", "[fault][sync]") {
  Barrier barrier(3);
  Queue<int> waiting, outcome;
  Child doomed([&] {
    waiting.put(0);
    barrier.wait();
  });
  Child survivor([&] {
    waiting.put(1);
    try {
      barrier.wait();
      outcome.put(0);
    } catch (const BrokenBarrier&) {
      outcome.put(1);
    }
  });
  waiting.get(10s);
  waiting.get(10s);
  REQUIRE(eventually([&] { return barrier.n_waiting() == 2; }));
  doomed.kill(SIGKILL);
  doomed.wait_status();
  CHECK(outcome.get(5s) == 1);
  CHECK(survivor.succeeded());
  CHECK(barrier.broken());
  CHECK_THROWS_AS(barrier.wait(), BrokenBarrier);
}

TEST_CASE("the last party to arrive breaks a barrier one of whose waiters has died",
          "[fault][sync]") {
  Barrier barrier(2);
  Queue<int> waiting;
  Child doomed([&] {
    waiting.put(0);
    barrier.wait();
  });
  waiting.get(10s);
  REQUIRE(eventually([&] { return barrier.n_waiting() == 1; }));
  doomed.kill(SIGKILL);
  doomed.wait_status();
  CHECK_THROWS_AS(barrier.wait(), BrokenBarrier);
}

TEST_CASE("barrier parties killed at random points never hang the others", "[fault][sync]") {
  std::mt19937 rng(11);
  for (int round = 0; round < rounds(20); ++round) {
    Barrier barrier(3);
    Queue<int> ended, started;
    std::vector<Child> parties;
    for (int i = 0; i < 3; ++i) {
      parties.emplace_back([&] {
        started.put(1);
        try {
          for (;;) barrier.wait();
        } catch (const BrokenBarrier&) {
          ended.put(1);
        }
      });
    }
    for (int i = 0; i < 3; ++i) started.get(10s);
    std::this_thread::sleep_for(random_delay(rng));
    parties[0].kill(SIGKILL);
    parties[0].wait_status();
    // Killed while waiting, or inside the barrier's lock: the others are told within a second.
    // Killed between two waits (it had not arrived): they wait for a third party, as Python's would,
    // and the barrier says so; then abort() lets them go.
    bool both_ended = true;
    for (int i = 0; i < 2 && both_ended; ++i) {
      try {
        ended.get(1s);
      } catch (const Empty&) {
        both_ended = false;
      }
    }
    if (!both_ended) {
      CHECK_FALSE(barrier.broken());
      CHECK(barrier.n_waiting() == 2);
      barrier.abort();
    }
    CHECK(parties[1].succeeded());
    CHECK(parties[2].succeeded());
  }
}

// ---- Hostile bytes

TEST_CASE("hostile bytes in a lock's, semaphore's, event's, barrier's or value's segment never "
          "crash or hang a caller", "[fault][sync]") {
  std::mt19937 rng(2024);
  for (int round = 0; round < rounds(200); ++round) {
    NameGuard name(unique_name("hostile"));
    const int kind = round % 6;
    switch (kind) {
      case 0: Lock::create(name.name()); break;
      case 1: RLock::create(name.name()); break;
      case 2: BoundedSemaphore::create(name.name(), 2); break;
      case 3: Event::create(name.name()); break;
      case 4: Barrier::create(name.name(), 2); break;
      case 5: Value<int>::create(name.name(), 0, false); break;
    }
    const int fd = open(("/dev/shm/shmq." + name.name()).c_str(), O_RDWR);
    REQUIRE(fd >= 0);
    const off_t size = lseek(fd, 0, SEEK_END);
    void* at = mmap(nullptr, static_cast<std::size_t>(size), PROT_READ | PROT_WRITE, MAP_SHARED,
                    fd, 0);
    close(fd);
    REQUIRE(at != MAP_FAILED);
    auto* bytes = static_cast<unsigned char*>(at);
    // Anywhere in the file, sometimes the identity, mostly the state words (locks, counts,
    // sleeper counts) and a barrier's slots.
    const long state = static_cast<long>(offsetof(detail::ObjectHeader, lock));
    const long state_end = static_cast<long>(sizeof(detail::ObjectHeader));
    const int writes = std::uniform_int_distribution<int>(1, 16)(rng);
    for (int i = 0; i < writes; ++i) {
      const int where = std::uniform_int_distribution<int>(0, 3)(rng);
      const auto offset =
          where == 0 ? std::uniform_int_distribution<long>(0, static_cast<long>(size) - 1)(rng)
          : where == 1 && size > static_cast<off_t>(detail::kObjectHeaderBytes)
              ? std::uniform_int_distribution<long>(static_cast<long>(detail::kObjectHeaderBytes),
                                                    static_cast<long>(size) - 1)(rng)
              : std::uniform_int_distribution<long>(state, state_end - 1)(rng);
      bytes[offset] = static_cast<unsigned char>(rng());
    }
    try {
      (void)inspect_object(name.name());  // what `shmq ls` and `shmq stat` read
    } catch (const Error&) {
    }
    try {
      switch (kind) {
        case 0: {
          auto l = Lock::open(name.name());
          if (l.try_lock()) l.unlock();
          try {
            l.unlock();
          } catch (const NotHeld&) {
          }
          break;
        }
        case 1: {
          auto l = RLock::open(name.name());
          if (l.try_lock_for(1ms)) l.unlock();
          break;
        }
        case 2: {
          auto s = BoundedSemaphore::open(name.name());
          if (s.acquire(true, 0.001)) s.release();
          try {
            s.release();
          } catch (const OverReleased&) {
          }
          break;
        }
        case 3: {
          auto e = Event::open(name.name());
          e.wait(0.001);
          e.set();
          CHECK(e.wait(0.001));
          break;
        }
        case 4: {
          auto b = Barrier::open(name.name());
          (void)b.n_waiting();
          try {
            b.wait(0.001);
          } catch (const BrokenBarrier&) {
          }
          break;
        }
        case 5: {
          auto v = Value<int>::open(name.name());
          v.set(v.get() + 1);
          break;
        }
      }
    } catch (const Error&) {
      // Refused, typed: fine. A crash or a hang is what this test catches.
    }
    munmap(at, static_cast<std::size_t>(size));
  }
}

TEST_CASE("an RLock acquired past 2^32 - 1 holds throws LockMisuse", "[fault][sync]") {
  NameGuard name(unique_name("deep"));
  auto lock = RLock::create(name.name());
  lock.lock();
  const int fd = open(("/dev/shm/shmq." + name.name()).c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  void* at = mmap(nullptr, detail::kObjectHeaderBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  REQUIRE(at != MAP_FAILED);
  auto* header = static_cast<detail::ObjectHeader*>(at);
  header->lock.depth = UINT32_MAX;  // as if acquired that many times
  CHECK_THROWS_AS(lock.lock(), LockMisuse);
  header->lock.depth = 1;
  lock.unlock();
  CHECK_FALSE(lock.held_by_this_thread());
  munmap(at, detail::kObjectHeaderBytes);
}
