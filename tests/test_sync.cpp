// Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition and Barrier, across processes and
// threads: every call, the misuse errors, names and handles passed to children.
#include <catch2/catch.hpp>

#include <sys/mman.h>
#include <sys/stat.h>

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include "shmq/barrier.hpp"
#include "shmq/condition.hpp"
#include "shmq/event.hpp"
#include "shmq/lock.hpp"
#include "shmq/pool.hpp"
#include "shmq/process.hpp"
#include "shmq/queue.hpp"
#include "shmq/semaphore.hpp"
#include "shmq/value.hpp"
#include "support.hpp"

using namespace shmq;
using shmq::test::Child;
using shmq::test::NameGuard;
using shmq::test::eventually;
using shmq::test::unique_name;

namespace {
// A child's signal to the parent and back, through a queue: not through what is under test.
constexpr auto kPatience = std::chrono::seconds(10);

bool take_in_worker(Lock lock) {
  const bool taken = lock.try_lock();
  if (taken) lock.unlock();
  return taken;
}
unsigned release_in_worker(Semaphore sem) {
  sem.release();
  return sem.get_value();
}
bool set_in_worker(Event ev, Condition cond) {
  std::scoped_lock held(cond);
  ev.set();
  cond.notify_all();
  return true;
}
unsigned wait_in_worker(Barrier barrier) { return barrier.wait(10); }
}  // namespace

// ---- Lock

TEST_CASE("a lock held in one process blocks another until released", "[sync]") {
  Lock lock;
  Queue<int> taken, go;
  Child child([&] {
    lock.lock();
    taken.put(1);
    go.get();
    lock.unlock();
  });
  taken.get(kPatience);
  CHECK_FALSE(lock.try_lock());
  CHECK_FALSE(lock.acquire(false));
  CHECK_FALSE(lock.acquire(true, 0.05));
  CHECK_FALSE(lock.try_lock_for(std::chrono::milliseconds(20)));
  CHECK_FALSE(lock.try_lock_until(std::chrono::system_clock::now() + std::chrono::milliseconds(20)));
  go.put(1);
  CHECK(lock.acquire(true, 10));
  CHECK_FALSE(lock.owner_died());
  CHECK(lock.held_by_this_thread());
  lock.release();
  CHECK_FALSE(lock.held_by_this_thread());
  CHECK(child.succeeded());
}

TEST_CASE("std::scoped_lock and std::unique_lock take a Lock and an RLock", "[sync]") {
  Lock lock;
  RLock rlock;
  {
    std::scoped_lock both(lock, rlock);
    CHECK(lock.held_by_this_thread());
    CHECK(rlock.held_by_this_thread());
  }
  CHECK_FALSE(lock.held_by_this_thread());
  std::unique_lock held(lock, std::chrono::milliseconds(10));
  CHECK(held.owns_lock());
  held.unlock();
  CHECK(held.try_lock_until(std::chrono::steady_clock::now() + std::chrono::milliseconds(5)));
}

TEST_CASE("releasing a lock this thread does not hold throws NotHeld and changes nothing", "[sync]") {
  Lock lock;
  RLock rlock;
  CHECK_THROWS_AS(lock.release(), NotHeld);
  CHECK_THROWS_AS(rlock.release(), NotHeld);
  lock.lock();
  rlock.lock();
  std::thread other([&] {
    CHECK_THROWS_AS(lock.unlock(), NotHeld);
    CHECK_THROWS_AS(rlock.unlock(), NotHeld);
    CHECK_FALSE(lock.try_lock());
  });
  other.join();
  CHECK(lock.held_by_this_thread());
  lock.unlock();
  rlock.unlock();
  CHECK_THROWS_WITH(lock.unlock(), Catch::Contains("nobody does"));
}

TEST_CASE("a blocking acquire of a Lock its thread holds throws SelfDeadlock; try forms say no",
          "[sync]") {
  Lock lock;
  lock.lock();
  CHECK_THROWS_AS(lock.lock(), SelfDeadlock);
  CHECK_FALSE(lock.try_lock());
  CHECK_FALSE(lock.acquire(true, 0.01));
  CHECK_FALSE(lock.try_lock_for(std::chrono::seconds(5)));  // at once: nobody else can free it
  lock.unlock();
  CHECK_THROWS_AS(lock.acquire(true, std::nan("")), InvalidArgument);
}

TEST_CASE("an RLock nests in its thread and is released by the last release", "[sync]") {
  RLock lock;
  Queue<int> result;
  lock.lock();
  CHECK(lock.acquire());
  CHECK(lock.try_lock());
  lock.release();
  lock.release();
  Child held([&] { result.put(lock.try_lock() ? 1 : 0); });
  CHECK(result.get(kPatience) == 0);
  CHECK(held.succeeded());
  lock.release();
  Child free([&] {
    const bool taken = lock.try_lock();
    result.put(taken ? 1 : 0);
    if (taken) lock.unlock();
  });
  CHECK(result.get(kPatience) == 1);
  CHECK(free.succeeded());
  CHECK_THROWS_AS(lock.release(), NotHeld);
}

TEST_CASE("std::condition_variable_any waits with a Lock and with an RLock", "[sync]") {
  auto check = [](auto& lock) {
    std::condition_variable_any cv;
    bool ready = false;
    std::thread setter([&] {
      std::scoped_lock held(lock);
      ready = true;
      cv.notify_all();
    });
    {
      std::unique_lock held(lock);
      CHECK(cv.wait_for(held, std::chrono::seconds(10), [&] { return ready; }));
      CHECK(lock.held_by_this_thread());
    }
    setter.join();
  };
  Lock lock;
  RLock rlock;
  check(lock);
  check(rlock);
}

TEST_CASE("a thread that ends holding a lock leaves it to the next acquirer, told once", "[sync]") {
  Lock lock;
  RLock rlock;
  std::thread([&] {
    lock.lock();
    rlock.lock();
    rlock.lock();
  }).join();
  CHECK(lock.try_lock_for(std::chrono::seconds(1)));
  CHECK(lock.owner_died());
  lock.unlock();
  CHECK(lock.try_lock());
  CHECK_FALSE(lock.owner_died());
  lock.unlock();
  CHECK(rlock.try_lock_for(std::chrono::seconds(1)));
  CHECK(rlock.owner_died());
  rlock.unlock();  // a depth of 1 after the takeover
  CHECK_FALSE(rlock.held_by_this_thread());
}

TEST_CASE("named locks: create, open, open_or_create, remove, 0600, and kinds kept apart",
          "[sync]") {
  NameGuard name(unique_name("lock"));
  auto lock = Lock::create(name.name());
  struct stat st;
  REQUIRE(stat(("/dev/shm/shmq." + name.name()).c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK_THROWS_AS(Lock::create(name.name()), AlreadyExists);
  CHECK_THROWS_AS(Event::open(name.name()), Incompatible);
  CHECK_THROWS_WITH(RLock::open(name.name()), Catch::Contains("is a lock, not a rlock"));
  CHECK_THROWS_AS(Queue<int>::open(name.name()), Incompatible);
  auto again = Lock::open(name.name());
  auto third = Lock::open_or_create(name.name());
  lock.lock();
  Queue<int> result;
  Child child([&] { result.put(again.try_lock() || third.try_lock() ? 1 : 0); });
  CHECK(result.get(kPatience) == 0);
  CHECK(child.succeeded());
  lock.unlock();
  CHECK(Lock::remove(name.name()));
  CHECK_FALSE(Lock::remove(name.name()));
  CHECK_THROWS_AS(Lock::open(name.name()), NotFound);
  CHECK_THROWS_AS(Lock::create("a/b"), InvalidArgument);
  CHECK_THROWS_AS(Lock::create(""), InvalidArgument);
}

TEST_CASE("a queue's name opened as a lock, semaphore or event is refused as Incompatible",
          "[sync]") {
  NameGuard name(unique_name("queue"));
  auto q = Queue<int>::create(name.name());
  CHECK_THROWS_WITH(Lock::open(name.name()), Catch::Contains("is a queue"));
  CHECK_THROWS_AS(Semaphore::open(name.name()), Incompatible);
  CHECK_THROWS_AS(Event::open_or_create(name.name()), Incompatible);
  CHECK_THROWS_AS(Barrier::open(name.name()), Incompatible);
}

TEST_CASE("locks, semaphores and events pass to Process children and as Pool arguments",
          "[sync]") {
  Lock lock;
  Semaphore sem(0);
  Process p([](Lock l, Semaphore s) {
    std::scoped_lock held(l);
    s.release();
  }, lock, sem);
  p.start();
  CHECK(sem.acquire(true, 10));
  p.join();
  CHECK(p.exitcode() == 0);
  Pool pool(1);
  CHECK(pool.apply(take_in_worker, lock));
  lock.lock();
  CHECK_FALSE(pool.apply(take_in_worker, lock));
  lock.unlock();
  CHECK(pool.apply(release_in_worker, sem) == 1);
  CHECK(sem.acquire(false));
  Event ev;
  Condition cond;
  CHECK(pool.apply(set_in_worker, ev, cond));
  CHECK(ev.is_set());
  Barrier barrier(2);
  auto waiting = pool.apply_async(wait_in_worker, barrier);
  const unsigned mine = barrier.wait(10);
  CHECK(mine + waiting.get() == 1);
}

// ---- Semaphore

TEST_CASE("a semaphore counts units across processes; a waiter wakes on release", "[sync]") {
  Semaphore sem(2);
  CHECK(sem.get_value() == 2);
  CHECK(sem.acquire());
  CHECK(sem.acquire(false));
  CHECK_FALSE(sem.acquire(false));
  CHECK_FALSE(sem.acquire(true, 0.02));
  CHECK_FALSE(sem.acquire(true, -1.0));
  Queue<int> waiting, got;
  Child waiter([&] {
    waiting.put(1);
    got.put(sem.acquire(true, 10) ? 1 : 0);
  });
  waiting.get(kPatience);
  sem.release();
  CHECK(got.get(kPatience) == 1);
  CHECK(waiter.succeeded());
  CHECK(sem.get_value() == 0);
  sem.release();
  sem.release();
  sem.release();
  CHECK(sem.get_value() == 3);  // a plain Semaphore may go past its initial value, as Python's
}

TEST_CASE("a BoundedSemaphore released past its value throws OverReleased", "[sync]") {
  BoundedSemaphore sem(2);
  CHECK_THROWS_AS(sem.release(), OverReleased);
  CHECK(sem.acquire());
  sem.release();
  CHECK_THROWS_WITH(sem.release(), Catch::Contains("bound of 2"));
  CHECK(sem.get_value() == 2);
  CHECK_THROWS_AS(Semaphore(std::uint32_t{1} << 31), InvalidArgument);
  {
    std::scoped_lock unit(sem);
    CHECK(sem.get_value() == 1);
  }
  CHECK(sem.get_value() == 2);
}

TEST_CASE("named semaphores share units; open_or_create keeps the existing count", "[sync]") {
  NameGuard name(unique_name("sem"));
  auto a = BoundedSemaphore::create(name.name(), 3);
  CHECK(a.acquire());
  auto b = BoundedSemaphore::open_or_create(name.name(), 3);
  CHECK(b.get_value() == 2);
  CHECK_THROWS_AS(Semaphore::open(name.name()), Incompatible);
  b.release();
  CHECK(a.get_value() == 3);
}

// ---- Event

TEST_CASE("an event set and cleared at once releases every waiter that was waiting, as Python's",
          "[sync]") {
  Event ev;
  std::vector<Child> waiters;
  for (int i = 0; i < 3; ++i) {
    waiters.emplace_back([&] {
      if (!ev.wait(2)) throw std::runtime_error("the set() was missed");
    });
  }
  const auto& sleep = ev.wakeup_count().sleep;
  REQUIRE(eventually([&] { return detail::sleepers_of(sleep.load()) == 3; }));  // all asleep
  ev.set();
  ev.clear();
  for (auto& waiter : waiters) CHECK(waiter.succeeded());
  CHECK_FALSE(ev.is_set());
}

TEST_CASE("an event set in one process wakes waiters in others; clear and timeouts", "[sync]") {
  Event ev;
  CHECK_FALSE(ev.is_set());
  CHECK_FALSE(ev.wait(0.01));
  CHECK_FALSE(ev.wait(0));
  CHECK_FALSE(ev.wait_for(std::chrono::milliseconds(-5)));
  Queue<int> waiting, woke;
  std::vector<Child> waiters;
  for (int i = 0; i < 3; ++i) {
    waiters.emplace_back([&] {
      waiting.put(1);
      woke.put(ev.wait(10) ? 1 : 0);
    });
  }
  for (int i = 0; i < 3; ++i) waiting.get(kPatience);
  ev.set();
  for (int i = 0; i < 3; ++i) CHECK(woke.get(kPatience) == 1);
  for (auto& w : waiters) CHECK(w.succeeded());
  CHECK(ev.is_set());
  CHECK(ev.wait());
  ev.clear();
  CHECK_FALSE(ev.is_set());
}

// ---- Condition

TEST_CASE("condition wait_for a predicate across processes, over a Lock and over an RLock",
          "[sync]") {
  auto check = [](Condition cond, Value<int> shared) {
    Child producer([&] {
      for (int i = 1; i <= 5; ++i) {
        std::scoped_lock held(cond);
        shared.set(i);
        cond.notify_all();
      }
    });
    {
      std::unique_lock held(cond);
      CHECK(cond.wait_for([&] { return shared.get() == 5; }, 10.0));
    }
    CHECK(producer.succeeded());
  };
  check(Condition(Lock()), Value<int>(0, false));
  check(Condition(RLock()), Value<int>(0, false));
  check(Condition(), Value<int>(0, false));
}

TEST_CASE("condition wait lets go of every hold of its RLock, and takes them back", "[sync]") {
  RLock lock;
  Condition cond(lock);
  Queue<int> took;
  lock.lock();
  lock.lock();
  Child notifier([&] {
    lock.lock();  // only possible while the parent waits
    took.put(1);
    cond.notify();
    lock.unlock();
  });
  CHECK(cond.wait(10));
  CHECK(took.get(kPatience) == 1);
  lock.unlock();
  CHECK(lock.held_by_this_thread());  // the second hold came back too
  lock.unlock();
  CHECK_FALSE(lock.held_by_this_thread());
  CHECK(notifier.succeeded());
}

TEST_CASE("condition wait and notify without the lock throw NotHeld; wait times out", "[sync]") {
  Condition cond;
  CHECK_THROWS_AS(cond.wait(0.01), NotHeld);
  CHECK_THROWS_AS(cond.notify(), NotHeld);
  CHECK_THROWS_AS(cond.notify_all(), NotHeld);
  std::unique_lock held(cond);
  const auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(cond.wait(0.05));
  CHECK(std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(50));
  CHECK_FALSE(cond.wait(0));
  CHECK_FALSE(cond.wait_for([] { return false; }, 0.01));
}

TEST_CASE("a named condition opens with its lock", "[sync]") {
  NameGuard lock_name(unique_name("lock"));
  NameGuard name(unique_name("cond"));
  auto lock = Lock::create(lock_name.name());
  auto cond = Condition::create(name.name(), lock);
  auto opened = Condition::open(name.name());
  CHECK(std::holds_alternative<Lock>(opened.get_lock()));
  lock.lock();
  Queue<int> result;
  Child child([&] { result.put(opened.try_lock() ? 1 : 0); });
  CHECK(result.get(kPatience) == 0);
  CHECK(child.succeeded());
  lock.unlock();
}

// ---- Barrier

TEST_CASE("a barrier releases its parties together with distinct indices, and runs the action "
          "once per trip", "[sync]") {
  Barrier barrier(3, [] {});
  Value<int> actions(0);
  Barrier counted(3, [&] { actions.set(actions.get() + 1); });
  Queue<unsigned> indices;
  std::vector<Child> parties;
  for (int i = 0; i < 2; ++i) {
    parties.emplace_back([&] {
      for (int round = 0; round < 3; ++round) indices.put(counted.wait(10));
    });
  }
  std::multiset<unsigned> seen;
  for (int round = 0; round < 3; ++round) seen.insert(counted.wait(10));
  for (int i = 0; i < 6; ++i) seen.insert(indices.get(kPatience));
  for (auto& p : parties) CHECK(p.succeeded());
  CHECK(seen == std::multiset<unsigned>{0, 0, 0, 1, 1, 1, 2, 2, 2});
  CHECK(actions.get() >= 1);  // the parent's handle runs it when the parent trips the barrier
  CHECK(counted.parties() == 3);
  CHECK(counted.n_waiting() == 0);
  CHECK_FALSE(counted.broken());
}

TEST_CASE("a barrier wait that times out breaks it for everyone until reset", "[sync]") {
  Barrier barrier(3);
  Queue<int> waiting, outcome;
  Child other([&] {
    waiting.put(1);
    try {
      barrier.wait(10);
      outcome.put(0);
    } catch (const BrokenBarrier&) {
      outcome.put(1);
    }
  });
  waiting.get(kPatience);
  CHECK(eventually([&] { return barrier.n_waiting() == 1; }));
  CHECK_THROWS_AS(barrier.wait(0.05), BrokenBarrier);
  CHECK(outcome.get(kPatience) == 1);
  CHECK(other.succeeded());
  CHECK(barrier.broken());
  CHECK_THROWS_AS(barrier.wait(), BrokenBarrier);
  barrier.reset();
  CHECK_FALSE(barrier.broken());
  CHECK(barrier.n_waiting() == 0);
}

TEST_CASE("barrier abort breaks waiters; reset breaks those waiting and leaves it whole",
          "[sync]") {
  Barrier barrier(2);
  Queue<int> outcome;
  for (const bool by_abort : {true, false}) {
    Child waiter([&] {
      try {
        barrier.wait(10);
        outcome.put(0);
      } catch (const BrokenBarrier&) {
        outcome.put(1);
      }
    });
    CHECK(eventually([&] { return barrier.n_waiting() == 1; }));
    if (by_abort) {
      barrier.abort();
    } else {
      barrier.reset();
    }
    CHECK(outcome.get(kPatience) == 1);
    CHECK(waiter.succeeded());
    CHECK(barrier.broken() == by_abort);
    barrier.reset();
  }
  Child partner([&] { barrier.wait(10); });
  CHECK(barrier.wait(10) <= 1);
  CHECK(partner.succeeded());
}

TEST_CASE("a barrier action that throws breaks the barrier; its caller gets the exception",
          "[sync]") {
  Barrier barrier(1, [] { throw std::runtime_error("action failed"); });
  CHECK_THROWS_WITH(barrier.wait(), "action failed");
  CHECK(barrier.broken());
  CHECK_THROWS_AS(Barrier(0), InvalidArgument);
  CHECK_THROWS_AS(Barrier(4097), InvalidArgument);
  CHECK_THROWS_WITH(Barrier(4097), Catch::Contains("4097 parties"));  // the number asked for
  Barrier single(1);
  CHECK(single.wait() == 0);
  CHECK(single.wait() == 0);
}

TEST_CASE("a barrier shared by more threads than 2 x parties still trips in groups", "[sync]") {
  // Eight threads through a barrier of two: a party may find every slot held by parties of ended
  // generations that have yet to leave, and must wait for one instead of failing.
  Barrier barrier(2);
  std::vector<std::thread> threads;
  std::atomic<int> passed{0}, broken_early{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      while (passed.load() < 400) {
        try {
          barrier.wait(10);
          passed.fetch_add(1);
        } catch (const BrokenBarrier&) {
          if (passed.load() < 400) broken_early.fetch_add(1);
          return;
        }
      }
    });
  }
  CHECK(eventually([&] { return passed.load() >= 400; }, std::chrono::seconds(30)));
  barrier.abort();  // releases whoever is left without a partner
  for (auto& t : threads) t.join();
  CHECK(broken_early.load() == 0);
}

TEST_CASE("dropping the last handle of a lock this thread holds leaves its robust list walkable",
          "[sync]") {
  // glibc unlocks a robust mutex taken after ours by writing through our entry's links: they must
  // still be mapped.
  // (A named lock: an unnamed one would keep its descriptor too, which the hygiene check counts.)
  shmq::test::GlibcRobustMutexes glibc;
  NameGuard name(unique_name("dropped"));
  {
    Lock lock = Lock::create(name.name());
    lock.lock();
    REQUIRE(pthread_mutex_lock(&glibc.m[0]) == 0);
  }
  CHECK(pthread_mutex_unlock(&glibc.m[0]) == 0);
  Lock other;  // and shmq's own list walk still works
  other.lock();
  other.unlock();
}
