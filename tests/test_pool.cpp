// Pool, AsyncResult, JoinableQueue and SimpleQueue.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <atomic>
#include <future>
#include <memory>
#include <set>
#include <optional>
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

// A run of a task, as the task records it: its item and the pid of the worker that ran it.
using Run = std::pair<int, int>;
using OnceDoomed = std::tuple<int, int, Queue<Run>, Queue<int>>;
// Records the run of item x in `runs`, then, if x is the doomed item and the one token is still in
// `token`, kills its own worker: a first run of the doomed item dies, any later run would not (so
// that a pool that reran it would show two runs instead of hanging).
int record_run_die_once(OnceDoomed job) {
  auto [x, doomed, runs, token] = job;
  runs.put(Run{x, getpid()});
  if (x == doomed && token.try_get()) raise(SIGKILL);
  return x;
}
OnceDoomed once_doomed(int x, int doomed, const Queue<Run>& runs, const Queue<int>& token) {
  return {x, doomed, runs, token};
}
// Every run recorded, once the pool has been joined (any rerun would have happened by then).
std::multiset<Run> all_runs(Queue<Run>& runs) {
  std::multiset<Run> out;
  while (auto run = runs.try_get()) out.insert(*run);
  return out;
}


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

TEST_CASE("a task whose worker died is reported WorkerLost, with its pid and end, and never run again",
          "[pool][fault]") {
  Pool pool(1);
  Queue<Run> runs;
  Queue<int> token;
  token.put(1);
  auto doomed = pool.apply_async(record_run_die_once, once_doomed(7, 7, runs, token));
  const auto first_run = runs.get(60s);
  REQUIRE(first_run.first == 7);
  CHECK_THROWS_WITH(doomed.get(60s), Catch::Contains("worker pid " + std::to_string(first_run.second)) &&
                                         Catch::Contains("killed by signal 9"));
  CHECK_THROWS_AS(doomed.get(), shmq::WorkerLost);
  // The pool goes on serving, in a new worker.
  CHECK(pool.apply(record_run_die_once, once_doomed(8, 7, runs, token)) == 8);
  CHECK(pool.map(record_run_die_once, std::vector<OnceDoomed>{once_doomed(9, 7, runs, token),
                                                              once_doomed(10, 7, runs, token)}) ==
        std::vector<int>{9, 10});
  pool.close();
  pool.join();
  const auto runs_made = all_runs(runs);
  std::multiset<int> items;
  for (const auto& [x, pid] : runs_made) {
    items.insert(x);
    if (x != 7) CHECK(pid != first_run.second);
  }
  CHECK(items == std::multiset<int>{8, 9, 10});  // 7's one run was taken above: none again
  CHECK(token.empty());
}

TEST_CASE("imap: the items of a chunk whose worker died are WorkerLost at their positions, none rerun",
          "[pool][imap][fault]") {
  Pool pool(2);
  Queue<Run> runs;
  Queue<int> token;
  token.put(1);
  std::vector<OnceDoomed> items;
  for (int i = 0; i < 12; ++i) items.push_back(once_doomed(i, 5, runs, token));
  auto results = pool.imap(record_run_die_once, items, 2);  // item 5 is in the chunk {4, 5}
  for (int i = 0; i < 12; ++i) {
    if (i == 4 || i == 5) {
      CHECK_THROWS_AS(results.next(60s), shmq::WorkerLost);
    } else {
      CHECK(results.next(60s) == i);
    }
  }
  CHECK(results.next(60s) == std::nullopt);
  CHECK(pool.apply(record_run_die_once, once_doomed(12, 5, runs, token)) == 12);
  pool.close();
  pool.join();
  std::multiset<int> ran;
  for (const auto& [x, pid] : all_runs(runs)) ran.insert(x);
  std::multiset<int> each_once;
  for (int i = 0; i <= 12; ++i) each_once.insert(i);
  CHECK(ran == each_once);  // 4 and 5 ran once (5 died, taking 4's result with it), not again
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

namespace {
void nothing() {}
int worker_number() {
  const std::string name = shmq::current_process().name;
  REQUIRE(name.rfind("ForkPoolWorker-", 0) == 0);
  return std::stoi(name.substr(15));
}
std::string parent_seen() {
  const auto parent = shmq::parent_process();
  return parent ? parent->name + " " + std::to_string(parent->pid) : "none";
}
int init_value = 0;
std::string init_text;
void init_with(int value, std::string text) {
  init_value = value;
  init_text = std::move(text);
}
std::string initialised_with() { return std::to_string(init_value) + init_text; }
}  // namespace

TEST_CASE("a callback runs in this process even when get() is never called", "[pool][callback]") {
  Pool pool(2);
  Queue<int> seen;  // callbacks run on the pool's callback thread: a queue hands their values over
  const pid_t self = getpid();
  pool.apply_async(square, 7, shmq::callback([seen, self](int r) mutable {
                     CHECK(getpid() == self);
                     seen.put(r);
                   }));  // the AsyncResult is dropped at once
  CHECK(seen.get(60s) == 49);
  pool.map_async(square, std::vector<int>{1, 2, 3}, 0,
                 shmq::callback([seen](const std::vector<int>& r) mutable {
                   seen.put(static_cast<int>(r.size()) * 100 + r.back());
                 }));
  CHECK(seen.get(60s) == 309);
  pool.starmap_async([](int a, int b) { return a * b; }, std::vector<std::pair<int, int>>{{6, 7}}, 1,
                     shmq::callback([seen](const std::vector<int>& r) mutable { seen.put(r[0]); }));
  CHECK(seen.get(60s) == 42);
  auto done = pool.apply_async(nothing, shmq::callback([seen]() mutable { seen.put(-1); }));
  done.get();  // returns once the callback has run
  CHECK(seen.get_nowait() == -1);
}

TEST_CASE("error_callback gets the RemoteError of a task that raised, or the WorkerLost",
          "[pool][callback]") {
  Pool pool(1);
  Queue<std::string> errors;
  auto on_error = shmq::error_callback(
      [errors](const shmq::Error& e) mutable { errors.put(std::string(e.what())); });
  auto r = pool.apply_async(fail, 1, shmq::callback([](int) { FAIL("callback on failure"); }),
                            on_error);
  CHECK_THAT(errors.get(60s), Catch::Contains("no such thing"));
  CHECK_THROWS_AS(r.get(), shmq::RemoteError);
  CHECK_FALSE(r.successful());
  // An item of a map that raises fails the whole map, as in Python.
  pool.map_async(fail, std::vector<int>{1, 2}, 1, on_error);
  CHECK_THAT(errors.get(60s), Catch::Contains("std::out_of_range"));
  Queue<int> started;
  Queue<int> go;
  pool.apply_async(block_until, started, go, on_error);
  kill(started.get(), SIGKILL);
  CHECK_THAT(errors.get(60s), Catch::Contains("killed by signal 9"));
}

TEST_CASE("a callback that throws is reported; the pool, the result and later callbacks go on",
          "[pool][callback]") {
  Pool pool(1);
  Queue<int> seen;
  auto r = pool.apply_async(square, 3, shmq::callback([](int) { throw std::logic_error("oops"); }));
  CHECK(r.get() == 9);
  pool.apply_async(square, 4, shmq::callback([seen](int v) mutable { seen.put(v); }));
  CHECK(seen.get(60s) == 16);
}

TEST_CASE("a callback may submit tasks and wait for results without callbacks", "[pool][callback]") {
  Pool pool(2);
  Queue<int> seen;
  pool.apply_async(square, 2, shmq::callback([&pool, seen](int r) mutable {
                     seen.put(pool.apply(square, r));  // waits inside the callback
                     pool.apply_async(square, r + 1, shmq::callback([seen](int s) mutable {
                                        seen.put(s);
                                      }));
                   }));
  CHECK(seen.get(60s) == 16);
  CHECK(seen.get(60s) == 25);
}

TEST_CASE("waiting inside a callback for a result whose callback has not run throws Error",
          "[pool][callback]") {
  Pool pool(1);
  Queue<std::string> seen;
  Queue<int> started;
  Queue<int> go;
  Queue<int> filled;
  auto later = std::make_shared<std::optional<shmq::AsyncResult<int>>>();
  auto first = pool.apply_async(square, 1, shmq::callback([later, seen, go, filled](int) mutable {
                                  filled.get();
                                  try {
                                    (*later)->get();
                                    seen.put("returned");
                                  } catch (const shmq::Error& e) {
                                    seen.put(e.what());
                                  }
                                  go.put(0);
                                }));
  // The worker is then held until `go`.
  *later = pool.apply_async(block_until, started, go, shmq::callback([](int) {}));
  filled.put(1);
  first.wait();
  CHECK_THAT(seen.get(60s), Catch::Contains("would wait forever"));
}

TEST_CASE("destroying a pool with callbacks pending runs their error_callbacks before it returns",
          "[pool][callback]") {
  std::atomic<int> lost{0};
  Queue<int> started;
  Queue<int> go;  // never fed
  {
    Pool pool(1);
    for (int i = 0; i < 5; ++i) {
      pool.apply_async(block_until, started, go, shmq::callback([](int) { FAIL("returned"); }),
                       shmq::error_callback([&lost](const shmq::Error& e) {
                         CHECK(dynamic_cast<const shmq::WorkerLost*>(&e) != nullptr);
                         ++lost;
                       }));
    }
    started.get();
  }
  CHECK(lost == 5);
}

TEST_CASE("close and join wait for every callback", "[pool][callback]") {
  std::atomic<int> calls{0};
  Pool pool(2);
  for (int i = 0; i < 100; ++i) pool.apply_async(square, i, shmq::callback([&calls](int) { ++calls; }));
  pool.close();
  pool.join();
  CHECK(calls == 100);
}

TEST_CASE("the initializer gets its initargs, as Python's Pool(initializer, initargs)", "[pool]") {
  Pool pool(PoolOptions{.processes = 2}, init_with, 42, std::string("x"));
  CHECK(pool.apply(initialised_with) == "42x");
  CHECK(init_value == 0);  // not in the parent
}

TEST_CASE("workers are named ForkPoolWorker-N, replacements numbered on", "[pool]") {
  Pool pool(PoolOptions{.processes = 1, .initializer = {}, .maxtasksperchild = 1});
  std::vector<int> numbers;
  for (int i = 0; i < 3; ++i) numbers.push_back(pool.apply(worker_number));
  CHECK(numbers == std::vector<int>{1, 2, 3});
  CHECK(pool.apply(parent_seen) == "MainProcess " + std::to_string(getpid()));
  CHECK(shmq::current_process().name == "MainProcess");
}

TEST_CASE("parent_process, active_children and cpu_count, as Python's", "[process]") {
  CHECK_FALSE(shmq::parent_process().has_value());
  CHECK(shmq::cpu_count() == static_cast<std::size_t>(sysconf(_SC_NPROCESSORS_ONLN)));
  CHECK(shmq::active_children().empty());
  Queue<std::string> told;
  Queue<int> go;
  shmq::Process child(shmq::ProcessOptions{.name = "kid"}, [told, go]() mutable {
    told.put(parent_seen() + " " + std::to_string(shmq::active_children().size()));
    go.get();
  });
  child.start();
  CHECK(told.get(60s) == "MainProcess " + std::to_string(getpid()) + " 0");
  const auto children = shmq::active_children();
  REQUIRE(children.size() == 1);
  CHECK(children[0].name == "kid");
  CHECK(children[0].pid == child.pid());
  go.put(1);
  child.join();
  CHECK(shmq::active_children().empty());
}
