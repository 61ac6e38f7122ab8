// Queue<T>: Python's Queue semantics, names and lifetime, limits and errors.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "shmq/shmq.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shmq::Queue;
using shmq::QueueOptions;
using shmq::test::Child;
using shmq::test::NameGuard;
using shmq::test::unique_name;
using shmq::test::segment_exists;

namespace {


mode_t segment_mode(const std::string& name) {
  struct stat st;
  REQUIRE(stat(("/dev/shm/shmq." + name).c_str(), &st) == 0);
  return st.st_mode & 0777;
}

}  // namespace

TEST_CASE("a new queue is empty, not full, and reports its limits", "[queue]") {
  Queue<long> q(3);
  CHECK(q.empty());
  CHECK_FALSE(q.full());
  CHECK(q.qsize() == 0);
  CHECK(q.maxsize() == 3);
  CHECK(q.capacity_bytes() == std::size_t{1} << 20);
  CHECK(q.max_message_bytes() == (std::size_t{1} << 20) - 4);
}

TEST_CASE("the seed's first example behaves as in Python", "[queue]") {
  Queue<std::string> q(3);
  CHECK(q.empty());
  q.put("消息1");
  q.put("消息2");
  CHECK_FALSE(q.full());
  q.put("消息3");
  CHECK(q.full());
  CHECK(q.qsize() == 3);
  CHECK(q.get() == "消息1");
  CHECK(q.qsize() == 2);
}

TEST_CASE("values come out in the order they went in", "[queue]") {
  Queue<int> q;
  for (int i = 0; i < 1000; ++i) q.put(i);
  for (int i = 0; i < 1000; ++i) REQUIRE(q.get() == i);
  CHECK(q.empty());
}

TEST_CASE("put_nowait on a full queue throws Full naming the queue and the limit", "[queue]") {
  Queue<int> q(2);
  q.put(1);
  q.put(2);
  try {
    q.put_nowait(3);
    FAIL("put_nowait did not throw");
  } catch (const shmq::Full& e) {
    const std::string what = e.what();
    CHECK(what.find(shmq::test::described(q.name())) != std::string::npos);
    CHECK(what.find("maxsize 2") != std::string::npos);
    CHECK(what.find("put_nowait") != std::string::npos);
  }
  CHECK(q.qsize() == 2);
  CHECK(q.stats().put_timeouts == 1);
}

TEST_CASE("get_nowait on an empty queue throws Empty naming the queue", "[queue]") {
  Queue<int> q;
  try {
    q.get_nowait();
    FAIL("get_nowait did not throw");
  } catch (const shmq::Empty& e) {
    CHECK(std::string(e.what()).find(shmq::test::described(q.name())) != std::string::npos);
  }
}

TEST_CASE("try_put and try_get report full and empty without throwing", "[queue]") {
  Queue<int> q(1);
  CHECK_FALSE(q.try_get().has_value());
  CHECK(q.try_put(7));
  CHECK_FALSE(q.try_put(8));
  CHECK(q.try_get() == 7);
  CHECK_FALSE(q.try_get().has_value());
}

TEST_CASE("timed calls give up after their timeout and not before", "[queue]") {
  Queue<int> q(1);
  const auto timeout = 50ms;
  SECTION("get") {
    const auto start = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(q.get(timeout), shmq::Empty);
    CHECK(std::chrono::steady_clock::now() - start >= timeout);
    CHECK(q.stats().get_timeouts == 1);
  }
  SECTION("put") {
    q.put(1);
    const auto start = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(q.put(2, timeout), shmq::Full);
    CHECK(std::chrono::steady_clock::now() - start >= timeout);
  }
  SECTION("any duration type, and zero or negative means do not wait") {
    CHECK_THROWS_AS(q.get(std::chrono::duration<double>(0.01)), shmq::Empty);
    CHECK_THROWS_AS(q.get(0s), shmq::Empty);
    CHECK_THROWS_AS(q.get(-5s), shmq::Empty);
    q.put(1, std::chrono::hours::max());  // "forever", without overflowing the clock
    CHECK(q.get(1min) == 1);
  }
}

TEST_CASE("a timed message in the error says how long the call waited", "[queue]") {
  Queue<int> q;
  try {
    q.get(20ms);
    FAIL("no throw");
  } catch (const shmq::Empty& e) {
    CHECK(std::string(e.what()).find("timed out after 0.020 s") != std::string::npos);
  }
}

TEST_CASE("put blocks while the queue is full until another process makes room", "[queue]") {
  Queue<int> q(2);
  Queue<int> ready;
  q.put(1);
  q.put(2);
  Child consumer([&] {
    ready.get();  // the parent is about to block
    if (q.get() != 1) throw std::runtime_error("wrong first value");
  });
  ready.put(0);
  q.put(3);  // blocks until the child takes 1
  CHECK(consumer.succeeded());
  CHECK(q.get() == 2);
  CHECK(q.get() == 3);
}

TEST_CASE("a consumer waiting on an empty queue polls briefly, then sleeps and costs no CPU",
          "[queue]") {
  Queue<int> q;
  Queue<double> cpu_ms;  // the consumer's CPU time during its get
  Child consumer([&] {
    auto cpu_now = [] {
      timespec ts;
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
      return double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) / 1e6;
    };
    const double before = cpu_now();
    if (q.get() != 7) throw std::runtime_error("wrong value");
    cpu_ms.put(cpu_now() - before);
  });
  // Asleep in the kernel, not spinning: its polling budget is a few microseconds.
  REQUIRE(shmq::test::eventually([&] { return shmq::test::process_state(consumer.pid()) == 'S'; }));
  std::this_thread::sleep_for(300ms);  // a window to measure, not a synchronisation
  q.put(7);
  const double used = cpu_ms.get(10s);
  CHECK(consumer.succeeded());
  CHECK(used < 30.0);  // a spinning waiter would have used the whole 300 ms
}

TEST_CASE("get blocks while the queue is empty until another process puts", "[queue]") {
  Queue<std::string> q;
  Child producer([&] { q.put("hello from " + std::to_string(getpid())); });
  const pid_t pid = producer.pid();
  CHECK(q.get() == "hello from " + std::to_string(pid));
  CHECK(producer.succeeded());
}

TEST_CASE("a queue with no maxsize is bounded by its bytes", "[queue]") {
  Queue<std::int64_t> q(QueueOptions{.maxsize = 0, .capacity_bytes = 4096});
  CHECK(q.capacity_bytes() == 4096);
  int n = 0;
  while (q.try_put(n)) ++n;
  // An 8-byte message costs a 4-byte length plus 8 bytes: 12 bytes of ring.
  CHECK(n == 4096 / 12);
  CHECK(q.full());
  CHECK(q.stats().bytes_used == 4096 / 12 * 12);
  for (int i = 0; i < n; ++i) REQUIRE(q.get() == i);
}

TEST_CASE("capacity is rounded up to whole pages, at least one", "[queue]") {
  CHECK(Queue<char>(QueueOptions{.capacity_bytes = 1}).capacity_bytes() == 4096);
  CHECK(Queue<char>(QueueOptions{.capacity_bytes = 4097}).capacity_bytes() == 8192);
}

TEST_CASE("messages of every size stay intact across many turns of the ring", "[queue]") {
  Queue<std::string> q(QueueOptions{.capacity_bytes = 4096});
  std::size_t seed = 1;
  std::vector<std::string> sent;
  for (int round = 0; round < 2000; ++round) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    const std::size_t len = (seed >> 33) % 1500;
    std::string s(len, static_cast<char>('a' + round % 26));
    if (!s.empty()) s.back() = '#';
    while (!q.try_put(s)) {
      REQUIRE(q.get() == sent.front());
      sent.erase(sent.begin());
    }
    sent.push_back(s);
  }
  for (const auto& s : sent) REQUIRE(q.get() == s);
}

TEST_CASE("the largest message that fits goes through, and one byte more throws MessageTooLarge", "[queue]") {
  Queue<std::vector<char>> q(QueueOptions{.capacity_bytes = 4096});
  // A vector encodes as a 4-byte count plus its bytes.
  const std::vector<char> largest(q.max_message_bytes() - 4, 'x');
  q.put(largest);
  CHECK(q.get() == largest);
  const std::vector<char> too_large(q.max_message_bytes() - 3, 'x');
  try {
    q.put(too_large);
    FAIL("no throw");
  } catch (const shmq::MessageTooLarge& e) {
    const std::string what = e.what();
    CHECK(what.find("4093 bytes") != std::string::npos);
    CHECK(what.find("at most 4092 bytes") != std::string::npos);
    CHECK(what.find(shmq::test::described(q.name())) != std::string::npos);
  }
  CHECK(q.empty());
  CHECK(q.stats().puts == 1);
}

TEST_CASE("close refuses this handle's puts and gets and leaves other handles alone", "[queue]") {
  Queue<int> q;
  Queue<int> other = q;
  q.close();
  CHECK(q.closed());
  CHECK_THROWS_AS(q.put(1), shmq::Closed);
  CHECK_THROWS_AS(q.get_nowait(), shmq::Closed);
  CHECK_THROWS_AS(q.try_put(1), shmq::Closed);
  other.put(2);
  CHECK(other.get() == 2);
}

TEST_CASE("shutdown wakes blocked callers in other processes and refuses puts", "[queue]") {
  Queue<int> q;
  Queue<int> outcome;
  Child consumer([&] {
    try {
      q.get();
      outcome.put(0);
    } catch (const shmq::ShutDown&) {
      outcome.put(1);
    }
  });
  REQUIRE(shmq::test::eventually([&] { return q.stats().sleeping_consumers == 1; }));
  q.shutdown();
  CHECK(outcome.get() == 1);
  CHECK(consumer.succeeded());
  CHECK(q.is_shutdown());
  CHECK_THROWS_AS(q.put(1), shmq::ShutDown);
}

TEST_CASE("after shutdown, gets drain what is queued, then throw ShutDown", "[queue]") {
  Queue<int> q;
  q.put(1);
  q.put(2);
  SECTION("draining") {
    q.shutdown();
    CHECK(q.get() == 1);
    CHECK(q.get() == 2);
    CHECK_THROWS_AS(q.get(), shmq::ShutDown);
    CHECK_THROWS_AS(q.try_get(), shmq::ShutDown);
  }
  SECTION("immediate") {
    q.shutdown(true);
    CHECK_THROWS_AS(q.get(), shmq::ShutDown);
    CHECK(q.qsize() == 2);
  }
}

TEST_CASE("shutdown wakes a producer blocked on a full queue", "[queue]") {
  Queue<int> q(1);
  Queue<int> outcome;
  q.put(0);
  Child producer([&] {
    try {
      q.put(1);
      outcome.put(0);
    } catch (const shmq::ShutDown&) {
      outcome.put(1);
    }
  });
  REQUIRE(shmq::test::eventually([&] { return q.stats().sleeping_producers == 1; }));
  q.shutdown();
  CHECK(outcome.get() == 1);
  CHECK(producer.succeeded());
}

TEST_CASE("named queues: create, open, open_or_create and remove", "[queue]") {
  NameGuard guard(unique_name("jobs"));
  const std::string& name = guard.name();
  CHECK_THROWS_AS(Queue<int>::open(name), shmq::NotFound);
  CHECK_FALSE(segment_exists(name));  // opening creates nothing

  auto q = Queue<int>::create(name, {.maxsize = 5});
  CHECK(q.name() == name);
  CHECK_THROWS_AS(Queue<int>::create(name), shmq::AlreadyExists);
  q.put(42);

  auto same = Queue<int>::open("/" + name);  // `jobs` and `/jobs` are one queue
  CHECK(same.maxsize() == 5);
  CHECK(same.get() == 42);

  auto again = Queue<int>::open_or_create(name, {.maxsize = 9});
  CHECK(again.maxsize() == 5);  // an existing queue keeps its figures

  CHECK(Queue<int>::remove(name));
  CHECK_FALSE(Queue<int>::remove(name));
  CHECK_FALSE(segment_exists(name));
  q.put(1);  // handles that are open keep working
  CHECK(same.get() == 1);
}

TEST_CASE("open reaches a named queue from a process that did not inherit it", "[queue]") {
  NameGuard guard(unique_name("open"));
  auto q = Queue<std::string>::create(guard.name());
  Child other([name = guard.name()] { Queue<std::string>::open(name).put("via open"); });
  CHECK(q.get() == "via open");
  CHECK(other.succeeded());
}

TEST_CASE("bad names are refused before anything is touched", "[queue]") {
  const std::vector<std::string> bad_names = {"",    "/",   ".",   "..", "/..", "a/b",
                                              "//a", std::string(251, 'n'), std::string("nul\0byte", 8)};
  for (const auto& bad : bad_names) {
    INFO("name: " << bad);
    CHECK_THROWS_AS(Queue<int>::create(bad), shmq::InvalidArgument);
    CHECK_THROWS_AS(Queue<int>::open(bad), shmq::InvalidArgument);
    CHECK_THROWS_AS(Queue<int>::remove(bad), shmq::InvalidArgument);
  }
  std::string longest_name = unique_name("long");
  longest_name.resize(250, 'n');
  NameGuard longest(longest_name);
  CHECK_NOTHROW(Queue<int>::create(longest.name()));
}

TEST_CASE("bad options are refused with the figure that is wrong", "[queue]") {
  CHECK_THROWS_WITH(Queue<int>(QueueOptions{.capacity_bytes = std::size_t{2} << 30}),
                    Catch::Contains("2147483648"));
  CHECK_THROWS_WITH(Queue<int>(QueueOptions{.maxsize = std::size_t{1} << 40}),
                    Catch::Contains("1099511627776"));
  CHECK_THROWS_AS(Queue<int>(QueueOptions{.mode = 0400}), shmq::InvalidArgument);
  CHECK_THROWS_AS(Queue<int>(QueueOptions{.mode = 01600}), shmq::InvalidArgument);
}

TEST_CASE("a queue is created with mode 0600 unless the options widen it", "[queue]") {
  NameGuard narrow(unique_name("narrow"));
  NameGuard wide(unique_name("wide"));
  Queue<int>::create(narrow.name());
  Queue<int>::create(wide.name(), {.mode = 0666});
  CHECK(segment_mode(narrow.name()) == 0600);
  CHECK(segment_mode(wide.name()) == 0666);
}

TEST_CASE("open_or_create refuses a segment with a wider mode than asked", "[queue]") {
  NameGuard guard(unique_name("widemode"));
  Queue<int>::create(guard.name(), {.mode = 0666});
  CHECK_THROWS_WITH(Queue<int>::open_or_create(guard.name(), {.mode = 0600}),
                    Catch::Contains("mode 0666"));
  CHECK_NOTHROW(Queue<int>::open_or_create(guard.name(), {.mode = 0666}));
}

TEST_CASE("a process holding an unnamed queue keeps using it after its creator's handles are gone", "[queue]") {
  auto q = std::make_unique<Queue<int>>();
  Queue<int> kept = *q;
  Queue<int> go;
  Queue<int> result;
  Child holder([kept, go, result]() mutable {
    go.get();
    kept.put(5);
    result.put(kept.get());
  });
  q.reset();
  go.put(0);
  CHECK(result.get() == 5);
  CHECK(holder.succeeded());
}

TEST_CASE("a queue handle travels through the codec by name", "[queue][codec]") {
  Queue<int> q;
  Queue<Queue<int>> handles;
  handles.put(q);
  Queue<int> received = handles.get();
  received.put(9);
  CHECK(q.get() == 9);
  CHECK(received.name() == q.name());
}

TEST_CASE("stats count puts, gets, waits and peak depth", "[queue]") {
  Queue<int> q;
  for (int i = 0; i < 5; ++i) q.put(i);
  for (int i = 0; i < 3; ++i) q.get();
  CHECK(q.try_put(0));
  const auto s = q.stats();
  CHECK(s.puts == 6);
  CHECK(s.gets == 3);
  CHECK(s.messages == 3);
  CHECK(s.peak_depth >= 5);
  CHECK(s.creator_pid == getpid());
  CHECK(s.type_name == "int");
  CHECK_FALSE(s.shut_down);
}

TEST_CASE("put_many and get_many move batches in order", "[queue][batch]") {
  Queue<int> q;
  std::vector<int> values(1000);
  for (int i = 0; i < 1000; ++i) values[static_cast<std::size_t>(i)] = i;
  q.put_many(values);
  CHECK(q.qsize() == 1000);
  std::vector<int> out;
  CHECK(q.get_many(out, 300) == 300);
  CHECK(q.get_many(out, 5000) == 700);
  CHECK(out == values);
  CHECK(q.try_get_many(out, 10) == 0);
  CHECK_THROWS_AS(q.get_many(out, 10, 10ms), shmq::Empty);
  CHECK(q.stats().puts == 1000);
  CHECK(q.stats().gets == 1000);
}

TEST_CASE("try_put_many puts what fits and says how many", "[queue][batch]") {
  Queue<int> q(5);
  CHECK(q.try_put_many(std::vector<int>{1, 2, 3, 4, 5, 6, 7}) == 5);
  std::vector<int> out;
  q.get_many(out, 10);
  CHECK(out == std::vector<int>{1, 2, 3, 4, 5});
}

TEST_CASE("put_many blocks until another process makes room for the rest", "[queue][batch]") {
  Queue<int> q(10);
  Queue<long> sum;
  Child consumer([&] {
    long total = 0;
    std::vector<int> got;
    while (got.size() < 100) q.get_many(got, 7);
    for (int v : got) total += v;
    sum.put(total);
  });
  std::vector<int> values(100);
  for (int i = 0; i < 100; ++i) values[static_cast<std::size_t>(i)] = i;
  q.put_many(values);
  CHECK(sum.get() == 99 * 100 / 2);
  CHECK(consumer.succeeded());
}

TEST_CASE("a batch stops at a value too large to fit, after putting the ones before it", "[queue][batch]") {
  Queue<std::string> q(QueueOptions{.capacity_bytes = 4096});
  const std::vector<std::string> values{"a", "b", std::string(5000, 'x'), "c"};
  CHECK_THROWS_AS(q.put_many(values), shmq::MessageTooLarge);
  std::vector<std::string> out;
  q.try_get_many(out, 10);
  CHECK(out == std::vector<std::string>{"a", "b"});
}

TEST_CASE("put_with writes a message in place, and get and get_with read it",
          "[queue][zero-copy]") {
  Queue<std::array<std::uint32_t, 4>> q;
  q.put_with(16, [](std::byte* at, std::size_t bytes) {
    REQUIRE(bytes == 16);
    const std::array<std::uint32_t, 4> value{1, 2, 3, 4};
    std::memcpy(at, value.data(), bytes);
  });
  q.put({5, 6, 7, 8});
  CHECK(q.get() == std::array<std::uint32_t, 4>{1, 2, 3, 4});
  const std::uint32_t sum = q.get_with([](const std::byte* at, std::size_t bytes) {
    std::array<std::uint32_t, 4> value;
    REQUIRE(bytes == sizeof(value));
    std::memcpy(value.data(), at, bytes);
    return value[0] + value[1] + value[2] + value[3];
  });
  CHECK(sum == 26);
  CHECK(q.empty());
}

TEST_CASE("a put_with whose writer throws puts nothing", "[queue][zero-copy]") {
  Queue<std::string> q;
  q.put("before");
  CHECK_THROWS_WITH(
      q.put_with(3, [](std::byte*, std::size_t) { throw std::runtime_error("no bytes today"); }),
      "no bytes today");
  CHECK(q.qsize() == 1);
  q.put("after");
  CHECK(q.get() == "before");
  CHECK(q.get() == "after");
}

TEST_CASE("put_with refuses a size the type cannot have, or that can never fit",
          "[queue][zero-copy]") {
  Queue<long> longs;
  try {
    longs.put_with(4, [](std::byte*, std::size_t) { FAIL("writer called"); });
    FAIL("no throw");
  } catch (const shmq::InvalidArgument& e) {
    const std::string what = e.what();
    CHECK(what.find(shmq::test::described(longs.name())) != std::string::npos);
    CHECK(what.find("4 bytes") != std::string::npos);
    CHECK(what.find("takes 8") != std::string::npos);
  }
  Queue<std::vector<char>> bytes(QueueOptions{.capacity_bytes = 4096});
  CHECK_THROWS_AS(bytes.put_with(bytes.max_message_bytes() + 1,
                                 [](std::byte*, std::size_t) { FAIL("writer called"); }),
                  shmq::MessageTooLarge);
  CHECK(longs.empty());
  CHECK(bytes.empty());
}

TEST_CASE("get_with drops a message its reader cannot decode and keeps one its reader fails on",
          "[queue][zero-copy]") {
  Queue<long> q;
  q.put(1);
  q.put(2);
  CHECK_THROWS_AS(q.get_with([](const std::byte*, std::size_t) -> long {
    throw std::runtime_error("not now");
  }),
                  std::runtime_error);
  CHECK(q.qsize() == 2);
  CHECK_THROWS_AS(
      q.get_with([](const std::byte*, std::size_t) -> long { throw shmq::DecodeError("garbage"); }),
      shmq::DecodeError);
  CHECK(q.qsize() == 1);
  CHECK(q.get() == 2);
}

TEST_CASE("put_with waits for room that another process makes", "[queue][zero-copy]") {
  Queue<long> q(1);
  Queue<int> ready;
  q.put(1);
  Child consumer([&] {
    ready.get();  // the parent is about to block
    if (q.get() != 1) throw std::runtime_error("wrong first value");
  });
  ready.put(0);
  q.put_with(8, [](std::byte* at, std::size_t) {  // blocks until the child takes 1
    const long two = 2;
    std::memcpy(at, &two, sizeof two);
  });
  CHECK(consumer.succeeded());
  CHECK(q.get() == 2);
}

namespace {
// A child that holds one of q's locks, from inside a put_with writer or a get_with reader, until
// released: it says "locked" on one pipe, then waits for a byte on the other.
class LockHolder {
 public:
  enum Side { producers, consumers };
  LockHolder(Queue<int>& q, Side side)
      : child_([&q, side, this] {
          const auto hold = [this] {
            const char byte = 'L';
            if (write(locked_.fds[1], &byte, 1) != 1) throw std::runtime_error("pipe");
            char got;
            if (read(release_.fds[0], &got, 1) != 1) throw std::runtime_error("pipe");
          };
          if (side == producers) {
            q.put_with(sizeof(int), [&](std::byte* at, std::size_t) {
              hold();
              const int v = 0;
              std::memcpy(at, &v, sizeof v);
            });
          } else {
            q.get_with([&](const std::byte*, std::size_t) { hold(); });
          }
        }) {
    char byte;
    REQUIRE(read(locked_.fds[0], &byte, 1) == 1);
  }
  // The child, whose only thread holds the lock.
  pid_t pid() const { return child_.pid(); }
  // Lets the child finish its call; true if it did.
  bool release() {
    const char byte = 'R';
    return write(release_.fds[1], &byte, 1) == 1 && child_.succeeded();
  }

 private:
  shmq::test::Pipe locked_;
  shmq::test::Pipe release_;
  Child child_;
};

// How long fn takes.
template <class Fn>
std::chrono::steady_clock::duration time_of(Fn&& fn) {
  const auto start = std::chrono::steady_clock::now();
  fn();
  return std::chrono::steady_clock::now() - start;
}
}  // namespace

TEST_CASE("try_ and _nowait calls wait about 50 ms for a lock another process holds, then report full or empty",
          "[queue]") {
  // The patience is RobustLock::kNowaitLockPatience; the upper bound only catches a call that
  // waited for the holder instead.
  const auto about_50ms = [](std::chrono::steady_clock::duration waited) {
    return waited >= 50ms && waited < 5s;
  };
  Queue<int> q;
  std::vector<int> out;
  SECTION("producers' lock: the queue has room, the puts report it full") {
    LockHolder holder(q, LockHolder::producers);
    CHECK(about_50ms(time_of([&] { CHECK_FALSE(q.try_put(1)); })));
    CHECK(about_50ms(time_of([&] { CHECK(q.try_put_many(std::vector<int>{1, 2}) == 0); })));
    CHECK(about_50ms(time_of([&] {
      CHECK_THROWS_MATCHES(q.put_nowait(1), shmq::Full,
                           Catch::Matchers::Message(
                               "shmq: " + shmq::test::described(q.name()) +
                               ": the producers' lock stayed held by thread " +
                               std::to_string(holder.pid()) +
                               " (a call in progress elsewhere, or a stopped process) for the 0.050 s "
                               "put_nowait could wait for it; the queue itself may have room"));
    })));
    CHECK_THROWS_WITH(q.put(1, 20ms), Catch::Contains("lock stayed held") && Catch::Contains("for the 0.020 s put"));
    CHECK(q.try_get() == std::nullopt);  // the other side is not held up
    CHECK(holder.release());
    CHECK(q.try_put(1));
    CHECK(q.qsize() == 2);
  }
  SECTION("consumers' lock: the queue has messages, the gets report it empty") {
    q.put_many(std::vector<int>{1, 2, 3});
    LockHolder holder(q, LockHolder::consumers);
    CHECK(about_50ms(time_of([&] { CHECK(q.try_get() == std::nullopt); })));
    CHECK(about_50ms(time_of([&] { CHECK(q.try_get_many(out, 3) == 0); })));
    CHECK(about_50ms(time_of([&] {
      CHECK_THROWS_WITH(q.get_nowait(), Catch::Contains("the consumers' lock stayed held by thread " +
                                                        std::to_string(holder.pid())) &&
                                            Catch::Contains("may have messages"));
    })));
    CHECK(q.try_put(4));  // the other side is not held up
    CHECK(holder.release());
    CHECK(q.try_get() == 2);
  }
}

TEST_CASE("every form of get(out) assigns the next message and leaves out alone when there is none",
          "[queue][get-into]") {
  Queue<std::string> q;
  std::string out = "untouched";
  CHECK_FALSE(q.try_get(out));
  CHECK_THROWS_AS(q.get_nowait(out), shmq::Empty);
  CHECK_THROWS_AS(q.get(out, 1ms), shmq::Empty);
  CHECK(out == "untouched");
  for (const char* v : {"one", "two", "three", "four"}) q.put(v);
  q.get(out);
  CHECK(out == "one");
  q.get(out, 10s);
  CHECK(out == "two");
  q.get_nowait(out);
  CHECK(out == "three");
  CHECK(q.try_get(out));
  CHECK(out == "four");
  CHECK(q.empty());
  q.close();
  CHECK_THROWS_AS(q.get(out), shmq::Closed);
  CHECK_THROWS_AS(q.try_get(out), shmq::Closed);
}

TEST_CASE("get(out) of a bitwise type matches get, in order, across many turns of the ring",
          "[queue][get-into]") {
  Queue<long> q(QueueOptions{.maxsize = 0, .capacity_bytes = 4096});
  long out = -1;
  for (long i = 0; i < 5000; ++i) {
    q.put(i);
    q.put(~i);
    q.get(out);
    REQUIRE(out == i);
    REQUIRE(q.get() == ~i);
  }
  CHECK(q.empty());
}

TEST_CASE("get(out) reuses the storage of a string or vector whose capacity suffices",
          "[queue][get-into]") {
  SECTION("std::string") {
    Queue<std::string> q;
    std::string out;
    out.reserve(1000);
    const char* const storage = out.data();
    for (const std::size_t n : {std::size_t{300}, std::size_t{1000}, std::size_t{7}, std::size_t{0}}) {
      const std::string sent(n, static_cast<char>('a' + n % 26));
      q.put(sent);
      q.get(out);
      CHECK(out == sent);
      CHECK(static_cast<const void*>(out.data()) == static_cast<const void*>(storage));
    }
    q.put(std::string(5000, 'z'));  // more than the capacity: a larger buffer, the value intact
    q.get(out);
    CHECK(out == std::string(5000, 'z'));
  }
  SECTION("std::vector of a bitwise type") {
    Queue<std::vector<int>> q;
    std::vector<int> out(64, -1);
    const int* const storage = out.data();
    q.put({1, 2, 3});
    q.get(out);
    CHECK(out == std::vector<int>{1, 2, 3});
    CHECK(out.data() == storage);
  }
  SECTION("the strings of a vector of strings") {
    Queue<std::vector<std::string>> q;
    std::vector<std::string> out{std::string(100, 'x'), std::string(100, 'y')};
    const char* const first = out[0].data();
    const char* const second = out[1].data();
    q.put({std::string(50, 'a'), std::string(60, 'b')});
    q.get(out);
    CHECK(out == std::vector<std::string>{std::string(50, 'a'), std::string(60, 'b')});
    CHECK(static_cast<const void*>(out[0].data()) == static_cast<const void*>(first));
    CHECK(static_cast<const void*>(out[1].data()) == static_cast<const void*>(second));
    q.put({"only"});
    q.get(out);
    CHECK(out == std::vector<std::string>{"only"});
  }
}

TEST_CASE("get(out) drops a message that does not decode, and the next get(out) gets the next one",
          "[queue][get-into]") {
  Queue<std::string> q;
  // A string whose length says 1000 bytes while the message holds 3.
  q.put_with(7, [](std::byte* at, std::size_t) {
    const std::uint32_t length = 1000;
    std::memcpy(at, &length, sizeof length);
    std::memcpy(at + 4, "abc", 3);
  });
  q.put("good");
  std::string out = "before";
  CHECK_THROWS_AS(q.get(out), shmq::DecodeError);
  q.get(out);
  CHECK(out == "good");
  CHECK(q.empty());
}

// The spin before a sleep (detail::SpinBudget), with answers that come after a given number of
// looks: a budget driven to its floor by a burst of load grows back once answers come within the
// queue's spin_polls again, even answers slower than the floor.
TEST_CASE("a spin budget driven to its floor grows back once answers come within spin_polls",
          "[queue][spin]") {
  shmq::detail::SpinBudget spin(2000);
  const auto wait_for_answer_after = [&](unsigned looks_needed) {
    unsigned looks = 0;
    return spin.spin_until([&] { return ++looks > looks_needed; });
  };
  for (int i = 0; i < 20; ++i) CHECK_FALSE(wait_for_answer_after(UINT_MAX));  // the burst
  int first_paid = -1;  // answers now take 200 looks (a 4 KiB ping-pong on two cores)
  for (int i = 0; i < 1000 && first_paid < 0; ++i) {
    if (wait_for_answer_after(200)) first_paid = i;
  }
  REQUIRE(first_paid >= 0);
  CHECK(first_paid < 64);
  for (int i = 0; i < 100; ++i) CHECK(wait_for_answer_after(200));
}

TEST_CASE("where polling never pays, the probes add a bounded share to the floor's spinning",
          "[queue][spin]") {
  shmq::detail::SpinBudget spin(2000);
  unsigned long long looks = 0;
  constexpr unsigned long long kWaits = 100'000;
  for (unsigned long long i = 0; i < kWaits; ++i) {
    CHECK_FALSE(spin.spin_until([&] { return ++looks == 0; }));
  }
  CHECK(looks <= kWaits * (16 + 4));  // the floor, and 2000 / 1024 a wait for the probes
}

// An answer found at the first look says nothing of whether polling pays: it used to count as a
// paid poll and start the probes' interval again, so a waiter that found its answer at once in
// one wait in twenty (the rest never answered within the spin: a peer on the same core) probed
// the whole 2000 polls every 16th wait, some 60 us each: 4 times the floor's spinning.
TEST_CASE("answers found at the first look do not bring the probes back", "[queue][spin]") {
  shmq::detail::SpinBudget spin(2000);
  unsigned long long looks = 0;
  constexpr unsigned long long kWaits = 100'000;
  for (unsigned long long i = 0; i < kWaits; ++i) {
    const bool there = i % 20 == 0;
    const bool answered = spin.spin_until([&] { return ++looks != 0 && there; });
    CHECK(answered == there);
  }
  CHECK(looks <= kWaits * (16 + 4));  // as where polling never pays
}
