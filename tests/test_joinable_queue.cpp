// JoinableQueue<T>: every put form counts, join() waits for task_done(), and shutdown wakes it.
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "shmq/shmq.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shmq::JoinableQueue;
using shmq::Queue;
using shmq::test::Child;
using shmq::test::eventually;
using shmq::test::process_state;

namespace {

// Gets and marks done `items` items, then checks that the count is back to zero, that join()
// returns, and that one task_done() more is refused.
void finish_every_item(JoinableQueue<int>& q, std::size_t items) {
  for (std::size_t i = 0; i < items; ++i) {
    q.get_nowait();
    q.task_done();
  }
  CHECK(q.unfinished_tasks() == 0);
  q.join();
  CHECK_THROWS_WITH(q.task_done(), Catch::Contains("more times than items"));
}

// Whether the child is asleep: in these tests, in join() (it does nothing else that sleeps).
bool asleep(const Child& child) { return process_state(child.pid()) == 'S'; }

// A child that calls q.join() and reports how it ended on `outcome`: 0 if join returned, 1 if it
// threw ShutDown.
Child joining(JoinableQueue<int>& q, Queue<int>& outcome) {
  return Child([&] {
    try {
      q.join();
      outcome.put(0);
    } catch (const shmq::ShutDown&) {
      outcome.put(1);
    }
  });
}

}  // namespace

TEST_CASE("every put form counts exactly the items it put as unfinished tasks", "[queue][joinable]") {
  JoinableQueue<int> q(3);
  const std::vector<int> five{1, 2, 3, 4, 5};
  std::size_t put = 0;
  SECTION("put, put(timeout), put_nowait, try_put") {
    q.put(1);
    q.put(2, 1s);
    q.put_nowait(3);
    CHECK_FALSE(q.try_put(4));  // full: counts nothing
    CHECK_THROWS_AS(q.put_nowait(4), shmq::Full);
    put = 3;
  }
  SECTION("try_put") {
    CHECK(q.try_put(1));
    put = 1;
  }
  SECTION("put_many") {
    q.put_many(std::vector<int>{1, 2, 3});
    put = 3;
  }
  SECTION("try_put_many, which puts what fits") {
    CHECK(q.try_put_many(five) == 3);
    CHECK(q.try_put_many(five) == 0);
    put = 3;
  }
  SECTION("put_with") {
    q.put_with(sizeof(int), [](std::byte* at, std::size_t) {
      const int v = 7;
      std::memcpy(at, &v, sizeof v);
    });
    CHECK_THROWS_AS(q.put_with(sizeof(int), [](std::byte*, std::size_t) { throw std::runtime_error("no"); }),
                    std::runtime_error);  // nothing put: counts nothing
    put = 1;
  }
  SECTION("through a Queue<T>& and a Queue<T> copy of the handle") {
    Queue<int>& as_queue = q;
    as_queue.put(1);
    Queue<int> copy = q;
    copy.put_many(std::vector<int>{2, 3});
    put = 3;
  }
  CHECK(q.unfinished_tasks() == static_cast<std::int64_t>(put));
  CHECK(q.qsize() == put);
  finish_every_item(q, put);
}

TEST_CASE("a put_many that throws midway counts the items it put before the throw", "[queue][joinable]") {
  JoinableQueue<std::string> q;
  const std::vector<std::string> values{"a", "b", std::string(q.max_message_bytes() + 1, 'x'), "c"};
  CHECK_THROWS_AS(q.put_many(values), shmq::MessageTooLarge);
  CHECK(q.qsize() == 2);
  CHECK(q.unfinished_tasks() == 2);
}

TEST_CASE("a plain Queue handle opened on a JoinableQueue's name counts its puts too", "[queue][joinable]") {
  JoinableQueue<int> q;
  Queue<int> plain = Queue<int>::open(q.name());
  plain.put(1);
  CHECK(q.unfinished_tasks() == 1);
  q.put(2);
  CHECK(q.unfinished_tasks() == 2);
  finish_every_item(q, 2);
}

namespace {
// A Pool-style task that takes a plain Queue<int>: what it is given travels by name and is reopened.
void produce_into(Queue<int> q) {
  q.put(1);
  q.put_many(std::vector<int>{2, 3});
  CHECK(q.try_put(4));
}
}  // namespace

TEST_CASE("a JoinableQueue passed to a child function taking Queue<int> counts the child's puts",
          "[queue][joinable]") {
  JoinableQueue<int> q;
  Child producer([name = q.name()] { produce_into(Queue<int>::open(name)); });
  REQUIRE(producer.succeeded());
  CHECK(q.qsize() == 4);
  CHECK(q.unfinished_tasks() == 4);
  Queue<int> copy = q;  // and the handle sliced to a Queue<int> in this process
  copy.put(5);
  CHECK(q.unfinished_tasks() == 5);
  finish_every_item(q, 5);
}

TEST_CASE("task_done beyond the items put throws and changes nothing", "[queue][joinable]") {
  JoinableQueue<int> q;
  CHECK_THROWS_WITH(q.task_done(), Catch::Contains("more times than items were put"));
  q.put_many(std::vector<int>{1, 2});
  q.task_done();  // Python allows task_done before the get too
  q.task_done();
  CHECK_THROWS_WITH(q.task_done(), Catch::Contains("more times than items were put"));
  CHECK(q.unfinished_tasks() == 0);
  q.put(3);
  CHECK(q.unfinished_tasks() == 1);
  q.task_done();
  CHECK_THROWS_AS(q.task_done(), shmq::Error);
  q.join();
}

TEST_CASE("a plain queue opened as a JoinableQueue counts the puts from then on", "[queue][joinable]") {
  const shmq::test::NameGuard guard(shmq::test::unique_name("late-joinable"));
  const std::string& name = guard.name();
  Queue<int> plain = Queue<int>::create(name);
  plain.put_many(std::vector<int>{1, 2, 3});
  JoinableQueue<int> q = JoinableQueue<int>::open(name);
  CHECK(q.unfinished_tasks() == 0);  // already queued: not tasks
  q.join();
  plain.put(4);
  CHECK(q.unfinished_tasks() == 1);
  JoinableQueue<int> again = JoinableQueue<int>::open_or_create(name);  // already joinable
  CHECK(again.unfinished_tasks() == 1);
  q.task_done();
  CHECK_THROWS_AS(q.task_done(), shmq::Error);
  q.join();
}

TEST_CASE("join in another process returns only when the items of a put_many are all marked done",
          "[queue][joinable]") {
  JoinableQueue<int> q;
  Queue<int> joined;
  q.put_many(std::vector<int>{1, 2, 3});
  Child joiner([&] {
    q.join();
    joined.put(1);
  });
  for (int i = 0; i < 2; ++i) {
    q.get();
    q.task_done();
  }
  REQUIRE(eventually([&] { return asleep(joiner); }));
  CHECK_FALSE(joined.try_get().has_value());
  q.get();
  q.task_done();
  REQUIRE(joined.get(10s) == 1);
  CHECK(joiner.succeeded());
}

TEST_CASE("shutdown(true) wakes a join blocked in another process, which throws ShutDown", "[queue][joinable]") {
  JoinableQueue<int> q;
  Queue<int> outcome;
  q.put(1);
  Child joiner = joining(q, outcome);
  REQUIRE(eventually([&] { return asleep(joiner); }));
  q.shutdown(true);
  REQUIRE(outcome.get(10s) == 1);  // else the Child destructor ends the joiner
  CHECK(joiner.succeeded());
  // Later joins refuse at once while the queued item stays unfinished.
  CHECK_THROWS_WITH(q.join(), Catch::Contains(shmq::test::described(q.name())) && Catch::Contains("1 tasks unfinished"));
  CHECK(q.unfinished_tasks() == 1);
}

TEST_CASE("after shutdown(true), join returns if no task is unfinished", "[queue][joinable]") {
  JoinableQueue<int> q;
  q.put(1);
  q.get();
  q.task_done();
  q.shutdown(true);
  q.join();
  CHECK(q.unfinished_tasks() == 0);
}

TEST_CASE("after shutdown(), a blocked join goes on waiting while consumers drain the queue, then returns",
          "[queue][joinable]") {
  JoinableQueue<int> q;
  Queue<int> outcome;
  q.put_many(std::vector<int>{1, 2});
  Child joiner = joining(q, outcome);
  REQUIRE(eventually([&] { return asleep(joiner); }));
  q.shutdown();
  CHECK(q.get() == 1);
  q.task_done();
  CHECK(q.get() == 2);
  q.task_done();
  CHECK_THROWS_AS(q.get(), shmq::ShutDown);
  REQUIRE(outcome.get(10s) == 0);  // else the Child destructor ends the joiner
  CHECK(joiner.succeeded());
}

TEST_CASE("producers using every put form and consumers marking each item done: join returns after the last",
          "[queue][joinable][stress]") {
  constexpr int kRounds = 1000;
  constexpr int kItemsPerRound = 6;  // 3 by put_many, then one each by put, try_put_many, put_with
  JoinableQueue<int> q(16);
  Queue<int> done;     // one message per item processed, put before its task_done
  Queue<int> refused;  // one message per task_done refused: an item got before it was counted
  std::vector<Child> producers;
  for (int p = 0; p < 2; ++p) {
    producers.emplace_back([&] {
      const std::vector<int> three{1, 2, 3};
      for (int round = 0; round < kRounds; ++round) {
        q.put_many(three);
        q.put(4, 10s);
        std::size_t put = 0;
        while (put == 0) put = q.try_put_many(std::vector<int>{5});
        q.put_with(sizeof(int), [](std::byte* at, std::size_t) {
          const int v = 6;
          std::memcpy(at, &v, sizeof v);
        });
      }
    });
  }
  std::vector<Child> consumers;
  for (int c = 0; c < 2; ++c) {
    consumers.emplace_back([&] {
      try {
        for (;;) {
          std::vector<int> got;
          q.get_many(got, 4);
          for (std::size_t i = 0; i < got.size(); ++i) {
            done.put(1);
            try {
              q.task_done();
            } catch (const shmq::Error&) {
              refused.put(1);
            }
          }
        }
      } catch (const shmq::ShutDown&) {
      }
    });
  }
  for (auto& p : producers) CHECK(p.succeeded());
  q.join();
  CHECK(done.qsize() == 2 * kItemsPerRound * kRounds);  // every task_done followed its item's processing
  q.shutdown();
  for (auto& c : consumers) CHECK(c.succeeded());
  CHECK(refused.qsize() == 0);
  CHECK(q.unfinished_tasks() == 0);
}

namespace {
// A value whose encoding, in a process that set pause_fd, reports on that pipe and then waits for a
// signal inside encode(): while it holds the queue's put lock, its message half-written.
int pause_fd = -1;
struct Pauser {
  int value;
};
}  // namespace

template <>
struct shmq::codec<Pauser> {
  static std::size_t size(const Pauser&) { return sizeof(int); }
  static void encode(const Pauser& p, Writer& w) {
    if (pause_fd >= 0) {
      const char byte = 'p';
      if (write(pause_fd, &byte, 1) != 1) _exit(9);
      pause();
    }
    w.write(&p.value, sizeof p.value);
  }
  static Pauser decode(Reader& r) {
    Pauser p{};
    r.read(&p.value, sizeof p.value);
    return p;
  }
};

TEST_CASE("a producer killed in the middle of its put leaves the count as it was", "[queue][joinable][fault]") {
  JoinableQueue<Pauser> q;
  q.put(Pauser{1});
  shmq::test::Pipe encoding;
  Child producer([&] {
    pause_fd = encoding.fds[1];
    q.put(Pauser{2});  // killed inside encode, under the producers' lock
  });
  char byte;
  REQUIRE(read(encoding.fds[0], &byte, 1) == 1);
  producer.kill(SIGKILL);
  CHECK_FALSE(producer.succeeded());
  CHECK(q.unfinished_tasks() == 1);  // its message was lost, and never counted
  CHECK(q.qsize() == 1);
  q.put(Pauser{3});  // the next producer takes the lock over
  CHECK(q.get().value == 1);
  q.task_done();
  CHECK(q.get().value == 3);
  q.task_done();
  q.join();
}

TEST_CASE("producers SIGKILLed at random points of their puts leave the count exact", "[queue][joinable][fault]") {
  // Each round, a producer puts without pause (put and put_many) while a consumer gets and marks
  // done; the producer is killed after a random delay, then a sentinel lets the consumer finish
  // what is queued. Whatever instruction the kill lands on, no task may stay unfinished.
  constexpr int kRounds = 200;
  JoinableQueue<int> q;
  std::srand(static_cast<unsigned>(getpid()));
  int rounds_left_high = 0;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<Child> consumers;
    for (int c = 0; c < 2; ++c) {
      consumers.emplace_back([&] {
        for (;;) {
          const int v = q.get();
          q.task_done();
          if (v < 0) return;
        }
      });
    }
    Child producer([&] {
      const std::vector<int> three{1, 2, 3};
      for (;;) {
        q.put(0);
        q.put_many(three);
      }
    });
    while (q.unfinished_tasks() == 0) sched_yield();  // the producer has started
    usleep(static_cast<useconds_t>(std::rand() % 200));
    producer.kill(SIGKILL);
    CHECK_FALSE(producer.succeeded());
    q.put_many(std::vector<int>{-1, -1});  // one sentinel per consumer
    for (auto& c : consumers) REQUIRE(c.succeeded());
    REQUIRE(q.qsize() == 0);
    if (q.unfinished_tasks() != 0) {
      ++rounds_left_high;
      // Mark the excess done, so that the next round starts from zero.
      while (q.unfinished_tasks() > 0) q.task_done();
    }
  }
  INFO("lock takeovers: " << q.stats().lock_recoveries);
  CHECK(rounds_left_high == 0);
  CHECK(q.unfinished_tasks() == 0);
  q.join();
}
