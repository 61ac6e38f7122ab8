// Pool, AsyncResult, JoinableQueue and SimpleQueue.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <numeric>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "shmq/shmq.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shmq::Pool;
using shmq::PoolOptions;
using shmq::Queue;
using shmq::test::segment_exists;

namespace {

int square(int x) { return x * x; }
std::string greet(std::string name, int times) {
  std::string out;
  for (int i = 0; i < times; ++i) out += "hi " + name + ";";
  return out;
}
int fail(int) { throw std::out_of_range("no such thing"); }
void report_pid(Queue<int> q) { q.put(getpid()); }
int block_until(Queue<int> started, Queue<int> go) {
  started.put(getpid());
  return go.get();
}
pid_t own_pid() { return getpid(); }
std::string text_of(int size) { return std::string(static_cast<std::size_t>(size), 'x'); }

// The longest text_of result that a result queue of `capacity` ring bytes carries inline (its
// payload within the 64 bytes the pool keeps for a message's other fields) and holds: a frame's
// 4-byte length plus the encoded result message.
int longest_result(std::size_t capacity) {
  int size = static_cast<int>(capacity);
  const auto message_of = [](int n) {
    shmq::detail::ResultMessage m;
    m.result.bytes = shmq::detail::encode_to_string(text_of(n));
    return m;
  };
  while (4 + shmq::encoded_size(message_of(size)) > capacity ||
         message_of(size).result.bytes.size() + 4 + 64 > capacity) {
    --size;
  }
  return size;
}

int initialised = 0;  // set by the initializer in each worker


}  // namespace

TEST_CASE("apply runs a function in a worker and returns its result", "[pool]") {
  Pool pool(2);
  CHECK(pool.processes() == 2);
  CHECK(pool.apply(square, 7) == 49);
  CHECK(pool.apply(greet, std::string("bob"), 2) == "hi bob;hi bob;");
  CHECK(pool.apply([](int a, int b) { return a - b; }, 10, 3) == 7);
  CHECK(pool.apply(own_pid) != getpid());
}

TEST_CASE("apply_async: get, wait, ready and successful, with and without timeouts", "[pool]") {
  Pool pool(2);
  Queue<int> started;
  Queue<int> go;
  auto slow = pool.apply_async(block_until, started, go);
  started.get();
  CHECK_FALSE(slow.ready());
  CHECK_FALSE(slow.wait(20ms));
  CHECK_THROWS_AS(slow.get(20ms), shmq::TimeoutError);
  CHECK_THROWS_AS(slow.successful(), shmq::Error);
  go.put(5);
  slow.wait();
  CHECK(slow.ready());
  CHECK(slow.successful());
  CHECK(slow.get() == 5);
  CHECK(slow.get(1s) == 5);  // again: the result stays

  auto fast = pool.apply_async(square, 3);
  CHECK(fast.wait(60s));
  CHECK(fast.get() == 9);
}

TEST_CASE("a task that throws makes get() throw RemoteError with the type and message", "[pool]") {
  Pool pool(1);
  auto r = pool.apply_async(fail, 1);
  r.wait();
  CHECK_FALSE(r.successful());
  try {
    r.get();
    FAIL("no throw");
  } catch (const shmq::RemoteError& e) {
    CHECK(e.type_name() == "std::out_of_range");
    CHECK(std::string(e.what()).find("no such thing") != std::string::npos);
  }
  CHECK(pool.apply(square, 2) == 4);  // the worker survives
}

TEST_CASE("map returns results in the order of the items, whatever the chunk size", "[pool]") {
  Pool pool(2);
  std::vector<int> items(1000);
  std::iota(items.begin(), items.end(), -500);
  std::vector<int> expected;
  for (int x : items) expected.push_back(x * x);
  for (std::size_t chunksize : {0, 1, 7, 1000, 5000}) {
    INFO("chunksize " << chunksize);
    CHECK(pool.map(square, items, chunksize) == expected);
  }
  CHECK(pool.map(square, std::vector<int>{}).empty());
  auto async = pool.map_async(square, std::vector<int>{1, 2, 3});
  CHECK(async.get() == std::vector<int>{1, 4, 9});
}

TEST_CASE("starmap unpacks each tuple into the function's arguments", "[pool]") {
  Pool pool(2);
  const std::vector<std::tuple<std::string, int>> args{{"a", 1}, {"b", 2}, {"c", 0}};
  CHECK(pool.starmap(greet, args) == std::vector<std::string>{"hi a;", "hi b;hi b;", ""});
  const std::vector<std::pair<int, int>> pairs{{1, 2}, {5, 3}};
  CHECK(pool.starmap([](int a, int b) { return a * b; }, pairs) == std::vector<int>{2, 15});
}

TEST_CASE("10,000 small tasks all complete", "[pool][stress]") {
  Pool pool(2);
  std::vector<shmq::AsyncResult<int>> results;
  for (int i = 0; i < 10'000; ++i) results.push_back(pool.apply_async(square, i % 100));
  long sum = 0;
  for (auto& r : results) sum += r.get();
  long expected = 0;
  for (int i = 0; i < 10'000; ++i) expected += (i % 100) * (i % 100);
  CHECK(sum == expected);
}

TEST_CASE("a worker killed mid-task: its result throws WorkerLost and a new worker takes over", "[pool][fault]") {
  Pool pool(1);
  Queue<int> started;
  Queue<int> go;
  auto doomed = pool.apply_async(block_until, started, go);
  const pid_t worker = started.get();
  kill(worker, SIGKILL);
  CHECK_THROWS_WITH(doomed.get(60s), Catch::Contains("killed by signal 9"));
  CHECK_THROWS_AS(doomed.get(), shmq::WorkerLost);
  const pid_t replacement = pool.apply(own_pid);
  CHECK(replacement != worker);
}

TEST_CASE("maxtasksperchild replaces a worker after that many tasks", "[pool]") {
  Pool pool(PoolOptions{.processes = 1, .initializer = {}, .maxtasksperchild = 2});
  std::vector<pid_t> pids;
  for (int i = 0; i < 6; ++i) pids.push_back(pool.apply(own_pid));
  CHECK(pids[0] == pids[1]);
  CHECK(pids[1] != pids[2]);
  CHECK(pids[2] == pids[3]);
  CHECK(pids[3] != pids[4]);
}

TEST_CASE("the initializer runs in each worker before its tasks", "[pool]") {
  Pool pool(PoolOptions{.processes = 2, .initializer = [] { initialised = 42; }});
  CHECK(pool.apply([] { return initialised; }) == 42);
  CHECK(initialised == 0);  // not in the parent
}

TEST_CASE("terminate with tasks pending ends the workers and makes their results throw", "[pool]") {
  Pool pool(1);
  Queue<int> started;
  Queue<int> go;  // never fed: the first task blocks
  auto running = pool.apply_async(block_until, started, go);
  std::vector<shmq::AsyncResult<int>> queued;
  for (int i = 0; i < 5; ++i) queued.push_back(pool.apply_async(square, i));
  started.get();
  pool.terminate();
  CHECK_THROWS_WITH(running.get(), Catch::Contains("terminated"));
  for (auto& q : queued) CHECK_THROWS_AS(q.get(), shmq::WorkerLost);
  CHECK_THROWS_AS(pool.apply_async(square, 1), shmq::Error);
  pool.join();  // allowed after terminate
}

TEST_CASE("close then join waits for every task submitted", "[pool]") {
  Queue<int> done;
  std::vector<int> items(50, 1);
  {
    Pool pool(2);
    for (int i = 0; i < 20; ++i) pool.apply_async(report_pid, done);  // results never collected
    pool.close();
    CHECK_THROWS_AS(pool.apply(square, 1), shmq::Error);
    pool.join();
  }
  CHECK(done.qsize() == 20);
}

TEST_CASE("join before close throws Error", "[pool]") {
  Pool pool(1);
  CHECK_THROWS_AS(pool.join(), shmq::Error);
}

TEST_CASE("a queue handle is a valid task argument and reaches the same queue", "[pool]") {
  Pool pool(2);
  Queue<int> q;
  pool.apply(report_pid, q);
  CHECK(q.get() != getpid());
}

TEST_CASE("JoinableQueue::join returns only after every item is marked done", "[pool][queue]") {
  shmq::JoinableQueue<int> q;
  Queue<int> processed;
  for (int i = 0; i < 10; ++i) q.put(i);
  CHECK(q.unfinished_tasks() == 10);
  shmq::Process consumer([q, processed]() mutable {
    for (int i = 0; i < 10; ++i) {
      processed.put(q.get());
      q.task_done();
    }
  });
  consumer.start();
  q.join();
  CHECK(processed.qsize() == 10);  // every task_done came after its item was processed
  CHECK(q.unfinished_tasks() == 0);
  consumer.join();
  CHECK(consumer.exitcode() == 0);
  CHECK_THROWS_WITH(q.task_done(), Catch::Contains("more times than items"));
}

TEST_CASE("JoinableQueue: a put that fails does not count", "[queue]") {
  shmq::JoinableQueue<int> q(1);
  q.put(1);
  CHECK_FALSE(q.try_put(2));
  CHECK_THROWS_AS(q.put_nowait(2), shmq::Full);
  CHECK(q.unfinished_tasks() == 1);
}

TEST_CASE("SimpleQueue offers put, get, empty and close", "[queue]") {
  shmq::SimpleQueue<std::string> q;
  CHECK(q.empty());
  q.put("x");
  CHECK_FALSE(q.empty());
  CHECK(q.get() == "x");
  q.close();
  CHECK_THROWS_AS(q.put("y"), shmq::Closed);
}

TEST_CASE("a submit waiting for room in a full task queue throws PoolBroken once the manager has died",
          "[pool][fault]") {
  Pool pool(PoolOptions{.processes = 1, .initializer = {}, .maxtasksperchild = 0, .queue_bytes = 4096});
  const pid_t worker = pool.apply(own_pid);
  const pid_t manager = shmq::test::parent_of(worker);
  kill(manager, SIGKILL);
  // Its worker follows it (once gone from /proc, or a zombie of init's): nobody will take a task.
  REQUIRE(shmq::test::eventually([&] {
    const char state = shmq::test::process_state(worker);
    return state == 0 || state == 'Z';
  }));
  const std::vector<int> items(10'000, 1);  // far more than 4096 bytes of tasks
  try {
    pool.map_async(square, items, 1);
    FAIL("no throw");
  } catch (const shmq::PoolBroken& e) {
    CHECK_THAT(e.what(), Catch::Contains("manager pid " + std::to_string(manager)) &&
                             Catch::Contains("killed by signal 9"));
  }
  CHECK_THROWS_AS(pool.apply(square, 1), shmq::PoolBroken);
}

TEST_CASE("a worker lost while the result queue is full: its WorkerLost waits for room, and terminate never hangs",
          "[pool][fault]") {
  Pool pool(PoolOptions{.processes = 2, .initializer = {}, .maxtasksperchild = 0, .queue_bytes = 4096});
  Queue<int> started;
  Queue<int> go;
  auto doomed = pool.apply_async(block_until, started, go);
  const pid_t doomed_worker = started.get();
  const pid_t manager = shmq::test::parent_of(doomed_worker);
  // The other worker fills the result queue to its last bytes, then holds the next task: once it
  // has started that one, the result queue has no room for any WorkerLost notice.
  auto filler = pool.apply_async(text_of, longest_result(4096));
  auto held = pool.apply_async(block_until, started, go);
  started.get();
  kill(doomed_worker, SIGKILL);
  // The manager has reaped it once it is gone from /proc; it then has a notice it cannot post.
  REQUIRE(shmq::test::eventually([&] { return shmq::test::process_state(doomed_worker) == 0; }));
  SECTION("collecting a result makes room, and the notice arrives") {
    CHECK(filler.get().size() == static_cast<std::size_t>(longest_result(4096)));
    CHECK_THROWS_WITH(doomed.get(60s), Catch::Contains("killed by signal 9"));
    go.put(3);
    CHECK(held.get() == 3);
  }
  SECTION("terminate returns") {
    auto terminated = std::async(std::launch::async, [&] { pool.terminate(); });
    if (terminated.wait_for(30s) != std::future_status::ready) {
      kill(manager, SIGKILL);  // unblock the test, then fail it
      terminated.wait();
      FAIL("terminate() hung on a manager blocked posting WorkerLost");
    }
    CHECK_THROWS_AS(doomed.get(), shmq::WorkerLost);
    CHECK_THROWS_AS(held.get(), shmq::WorkerLost);
  }
}

TEST_CASE("a task whose argument cannot be decoded fails alone; the pool goes on", "[pool][fault]") {
  Pool pool(1);
  const std::string name = shmq::test::unique_name("removed");
  auto removed = Queue<int>::create(name);
  Queue<int>::remove(name);  // the handle still works here; a worker cannot open the name
  auto orphan = pool.apply_async(report_pid, removed);
  try {
    orphan.get(60s);
    FAIL("no throw");
  } catch (const shmq::RemoteError& e) {
    CHECK_THAT(e.what(), Catch::Contains(name));
  }
  CHECK(pool.apply(square, 5) == 25);
}
