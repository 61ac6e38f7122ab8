// Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition and Barrier across processes.
#include <catch2/catch.hpp>

#include "shmq/barrier.hpp"
#include "shmq/condition.hpp"
#include "shmq/event.hpp"
#include "shmq/lock.hpp"
#include "shmq/semaphore.hpp"
#include "support.hpp"

using namespace shmq;
using shmq::test::Child;

TEST_CASE("a lock held in one process blocks another until released", "[sync]") {
  Lock lock;
  Event taken, go;
  Child child([&] {
    lock.lock();
    taken.set();
    go.wait();
    lock.unlock();
  });
  REQUIRE(taken.wait(10));
  CHECK_FALSE(lock.try_lock());
  CHECK_FALSE(lock.acquire(true, 0.05));
  go.set();
  CHECK(lock.acquire(true, 10));
  CHECK_FALSE(lock.owner_died());
  lock.release();
  CHECK(child.succeeded());
}
