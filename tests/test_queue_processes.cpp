// Queue<T> across processes: exactly-once delivery under load, processes killed at the worst
// moments, and segments that are foreign or tampered with.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "shmq/detail/layout.hpp"
#include "shmq/shmq.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shmq::Queue;
using shmq::QueueOptions;
using shmq::test::Child;
using shmq::test::Pipe;
using shmq::test::eventually;
using shmq::test::NameGuard;
using shmq::test::unique_name;

namespace {

// A message is (producer << 32 | sequence number).
constexpr std::uint64_t message(std::uint64_t producer, std::uint64_t seq) { return producer << 32 | seq; }

}  // namespace

TEST_CASE("every message is delivered exactly once, in per-producer order, across 4 producer and 4 consumer processes",
          "[queue][stress]") {
  constexpr int kProducers = 4;
  constexpr int kConsumers = 4;
  constexpr std::uint64_t kPerProducer = 100'000;
  Queue<std::uint64_t> q(QueueOptions{.maxsize = 0, .capacity_bytes = 64 * 1024});
  // Consumers report what they took, in chunks; an empty chunk means "done".
  Queue<std::vector<std::uint64_t>> taken(QueueOptions{.capacity_bytes = 4 << 20});

  std::vector<Child> children;
  for (int p = 0; p < kProducers; ++p) {
    children.emplace_back([&, p] {
      for (std::uint64_t i = 0; i < kPerProducer; ++i) q.put(message(p, i));
    });
  }
  for (int c = 0; c < kConsumers; ++c) {
    children.emplace_back([&] {
      std::vector<std::int64_t> last(kProducers, -1);
      std::vector<std::uint64_t> chunk;
      try {
        for (;;) {
          const std::uint64_t m = q.get();
          const auto producer = m >> 32;
          const auto seq = static_cast<std::int64_t>(m & 0xffffffff);
          if (producer >= kProducers || seq <= last[producer]) throw std::runtime_error("out of order");
          last[producer] = seq;
          chunk.push_back(m);
          if (chunk.size() == 8192) taken.put(std::exchange(chunk, {}));
        }
      } catch (const shmq::ShutDown&) {
      }
      if (!chunk.empty()) taken.put(chunk);
      taken.put({});
    });
  }

  // Once every producer has finished, shut the queue down: consumers drain it and stop. (`taken`
  // holds every report at once, so no consumer waits on the parent meanwhile.)
  for (int p = 0; p < kProducers; ++p) CHECK(children[p].succeeded());
  q.shutdown();

  std::vector<std::vector<bool>> seen(kProducers, std::vector<bool>(kPerProducer));
  std::uint64_t delivered = 0;
  std::uint64_t duplicates = 0;
  for (int done = 0; done < kConsumers;) {
    const auto chunk = taken.get(60s);  // a consumer that died fails the test instead of hanging it
    if (chunk.empty()) ++done;
    for (const auto m : chunk) {
      auto&& bit = seen[m >> 32][m & 0xffffffff];
      duplicates += bit ? 1 : 0;
      bit = true;
      ++delivered;
    }
  }
  for (int c = kProducers; c < kProducers + kConsumers; ++c) CHECK(children[c].succeeded());
  CHECK(duplicates == 0);
  CHECK(delivered == kProducers * kPerProducer);
  for (const auto& s : seen) CHECK(std::count(s.begin(), s.end(), false) == 0);
}

// Threads of one process, so that ThreadSanitizer sees every synchronisation: mixed with other
// processes, it would see a consumer thread's release reach a producer thread through another
// process (and report a race that is not one). Processes are covered above.
TEST_CASE("threads share a handle: every message exactly once, in per-producer order",
          "[queue][stress]") {
  constexpr std::uint64_t kProducers = 4;
  constexpr int kConsumers = 3;
  constexpr std::uint64_t kPerProducer = 50'000;
  // Small, so that producers wait for room as often as consumers wait for messages.
  Queue<std::uint64_t> q(QueueOptions{.maxsize = 0, .capacity_bytes = 16 * 1024});
  std::vector<std::vector<std::uint64_t>> got(kConsumers);
  std::atomic<int> consumer_errors{0};
  std::vector<std::thread> consumers;
  for (int c = 0; c < kConsumers; ++c) {
    consumers.emplace_back([&, c] {
      try {
        for (;;) got[static_cast<std::size_t>(c)].push_back(q.get());
      } catch (const shmq::ShutDown&) {
      } catch (...) {
        ++consumer_errors;
      }
    });
  }
  std::vector<std::thread> producers;
  for (std::uint64_t p = 0; p < kProducers; ++p) {
    producers.emplace_back([&q, p] {
      for (std::uint64_t i = 0; i < kPerProducer; ++i) q.put(message(p, i));
    });
  }
  for (auto& t : producers) t.join();
  q.shutdown();  // consumers drain the queue, then stop
  for (auto& t : consumers) t.join();

  CHECK(consumer_errors == 0);
  std::vector<std::vector<bool>> seen(kProducers, std::vector<bool>(kPerProducer));
  std::uint64_t delivered = 0, duplicates = 0, out_of_order = 0, unknown = 0;
  for (const auto& taken : got) {
    std::vector<std::int64_t> last(kProducers, -1);
    for (const auto m : taken) {
      const auto producer = m >> 32;
      const auto seq = static_cast<std::int64_t>(m & 0xffffffff);
      if (producer >= kProducers || seq >= static_cast<std::int64_t>(kPerProducer)) {
        ++unknown;
        continue;
      }
      out_of_order += seq <= last[producer] ? 1 : 0;
      last[producer] = seq;
      auto&& bit = seen[producer][static_cast<std::size_t>(seq)];
      duplicates += bit ? 1 : 0;
      bit = true;
      ++delivered;
    }
  }
  CHECK(unknown == 0);
  CHECK(out_of_order == 0);
  CHECK(duplicates == 0);
  CHECK(delivered == kProducers * kPerProducer);
}

// ---- Processes killed at the worst moments.

namespace {

// A message whose codec, in a process that set `stall_fd`, reports on that pipe and then stops
// forever inside encode() or decode(): that is, while holding the queue's put or get lock.
struct Stall {
  int value;
};
int stall_fd = -1;
constexpr int kStallValue = -1;

void stall_here() {
  if (stall_fd < 0) return;
  const char byte = 's';
  if (write(stall_fd, &byte, 1) != 1) _exit(9);
  for (;;) pause();
}

// Blocks until the child stalled inside the lock writes its byte.
void wait_for_stall(int read_fd) {
  char byte;
  REQUIRE(read(read_fd, &byte, 1) == 1);
}


}  // namespace

template <>
struct shmq::codec<Stall> {
  static std::size_t size(const Stall&) { return sizeof(int); }
  static void encode(const Stall& s, Writer& w) {
    if (s.value == kStallValue) stall_here();
    w.write(&s.value, sizeof s.value);
  }
  static Stall decode(Reader& r) {
    Stall s{};
    r.read(&s.value, sizeof s.value);
    if (s.value == kStallValue) stall_here();
    return s;
  }
};

TEST_CASE("a producer killed while holding the put lock loses only its own message", "[queue][fault]") {
  Queue<Stall> q;
  Pipe pipe;
  Child producer([&] {
    stall_fd = pipe.fds[1];
    q.put(Stall{1});
    q.put(Stall{2});
    q.put(Stall{kStallValue});  // stops halfway through writing this frame, lock held
  });
  wait_for_stall(pipe.fds[0]);
  producer.kill(SIGKILL);
  producer.wait_status();

  q.put(Stall{3});  // takes over the dead holder's lock
  CHECK(q.get().value == 1);
  CHECK(q.get().value == 2);
  CHECK(q.get().value == 3);  // the half-written frame was never published
  CHECK(q.empty());
  CHECK(q.stats().lock_recoveries == 1);
}

TEST_CASE("a consumer killed while holding the get lock leaves its message to the next consumer",
          "[queue][fault]") {
  Queue<Stall> q;
  Pipe pipe;
  q.put(Stall{kStallValue});
  q.put(Stall{5});
  Child consumer([&] {
    stall_fd = pipe.fds[1];
    q.get();  // stops inside decode, lock held, before taking the message
  });
  wait_for_stall(pipe.fds[0]);
  consumer.kill(SIGKILL);
  consumer.wait_status();

  CHECK(q.get().value == kStallValue);  // redelivered: its consumer never took it
  CHECK(q.get().value == 5);
  CHECK(q.stats().lock_recoveries == 1);
}

TEST_CASE("a consumer killed while asleep in get does not stop the others", "[queue][fault]") {
  Queue<int> q;
  Queue<int> got;
  Child victim([&] { q.get(); });
  REQUIRE(eventually([&] { return q.stats().sleeping_consumers == 1; }));
  victim.kill(SIGKILL);
  victim.wait_status();

  Child survivor([&] { got.put(q.get()); });
  REQUIRE(eventually([&] { return q.stats().empty_waits == 2; }));
  q.put(7);
  CHECK(got.get() == 7);
  CHECK(survivor.succeeded());
  q.put(8);
  CHECK(q.get() == 8);
}

TEST_CASE("a producer killed while asleep in put does not stop the others", "[queue][fault]") {
  Queue<int> q(1);
  q.put(0);
  Child victim([&] { q.put(1); });
  REQUIRE(eventually([&] { return q.stats().sleeping_producers == 1; }));
  victim.kill(SIGKILL);
  victim.wait_status();

  Child survivor([&] { q.put(2); });
  REQUIRE(eventually([&] { return q.stats().full_waits == 2; }));
  CHECK(q.get() == 0);
  CHECK(q.get() == 2);  // the survivor was woken; the victim's put never happened
  CHECK(survivor.succeeded());
  CHECK(q.empty());
}

// ---- Foreign and tampered segments.

namespace {

// Writes a raw segment at the queue name, as some other program might.
void write_raw_segment(const std::string& name, const std::vector<char>& bytes) {
  const int fd = shm_open(("/shmq." + name).c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  close(fd);
}

// Maps a queue's header to tamper with it.
class RawHeader {
 public:
  explicit RawHeader(std::string name) : name_(std::move(name)) {
    const int fd = shm_open(("/shmq." + name_).c_str(), O_RDWR, 0);
    REQUIRE(fd >= 0);
    void* p = mmap(nullptr, shmq::detail::kHeaderBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    REQUIRE(p != MAP_FAILED);
    header_ = static_cast<shmq::detail::SharedHeader*>(p);
  }
  ~RawHeader() { munmap(header_, shmq::detail::kHeaderBytes); }
  shmq::detail::SharedHeader* operator->() const { return header_; }
  // The first frame's length field, just past the header.
  void set_first_frame_length(std::uint32_t length) {
    const int fd = shm_open(("/shmq." + name_).c_str(), O_RDWR, 0);
    REQUIRE(pwrite(fd, &length, sizeof length, shmq::detail::kHeaderBytes) == sizeof length);
    close(fd);
  }

 private:
  std::string name_;
  shmq::detail::SharedHeader* header_;
};

}  // namespace

TEST_CASE("open refuses a queue of another message type, naming both types", "[queue]") {
  NameGuard guard(unique_name("typed"));
  Queue<std::string>::create(guard.name());
  CHECK_THROWS_WITH(Queue<int>::open(guard.name()),
                    Catch::Contains("std::__cxx11::basic_string") && Catch::Contains("not int"));
  CHECK_THROWS_AS(Queue<std::vector<char>>::open(guard.name()), shmq::Incompatible);
}

TEST_CASE("open refuses segments that are not shmq queues", "[queue][fault]") {
  NameGuard guard(unique_name("foreign"));
  SECTION("a segment of the wrong size") {
    write_raw_segment(guard.name(), std::vector<char>(100, 'x'));
    CHECK_THROWS_WITH(Queue<int>::open(guard.name()), Catch::Contains("not a shmq queue"));
  }
  SECTION("a segment of a plausible size with another magic") {
    write_raw_segment(guard.name(), std::vector<char>(8192, 'x'));
    CHECK_THROWS_WITH(Queue<int>::open(guard.name()), Catch::Contains("magic"));
    CHECK_THROWS_AS(Queue<int>::open_or_create(guard.name()), shmq::Incompatible);
  }
  SECTION("a segment whose creator never finished") {
    write_raw_segment(guard.name(), std::vector<char>(8192, '\0'));
    CHECK_THROWS_WITH(Queue<int>::open(guard.name()), Catch::Contains("never initialised"));
  }
}

TEST_CASE("open refuses another layout version or inconsistent sizes", "[queue][fault]") {
  NameGuard guard(unique_name("version"));
  Queue<int>::create(guard.name());
  RawHeader header(guard.name());
  SECTION("layout version") {
    header->layout_version = 99;
    CHECK_THROWS_WITH(Queue<int>::open(guard.name()), Catch::Contains("layout version 99"));
  }
  SECTION("capacity that disagrees with the file") {
    header->capacity_bytes = 1ULL << 40;
    CHECK_THROWS_AS(Queue<int>::open(guard.name()), shmq::Incompatible);
  }
}

TEST_CASE("a header changed under a running queue makes calls throw, never stray outside the mapping",
          "[queue][fault]") {
  NameGuard guard(unique_name("hostile"));
  auto q = Queue<int>::create(guard.name(), {.capacity_bytes = 4096});
  RawHeader header(guard.name());
  using shmq::detail::Cursor;
  SECTION("a tail beyond the ring") {
    header->tail.store(Cursor{1u << 20, 1}.pack());
    CHECK_THROWS_AS(q.get_nowait(), shmq::Incompatible);
    CHECK_THROWS_AS(q.put(1), shmq::Incompatible);
  }
  SECTION("counts that claim more messages than the ring can hold") {
    header->tail.store(Cursor{0, 100000}.pack());
    CHECK_THROWS_AS(q.get_nowait(), shmq::Incompatible);
    CHECK(q.qsize() == 0);  // snapshots clamp instead of throwing
  }
  SECTION("a frame length longer than what is queued") {
    q.put(1);
    header.set_first_frame_length(1000);
    CHECK_THROWS_WITH(q.get_nowait(), Catch::Contains("overruns"));
    header.set_first_frame_length(0xffffffff);
    CHECK_THROWS_AS(q.get_nowait(), shmq::Incompatible);
  }
}

TEST_CASE("of many processes racing open_or_create on one name, exactly one creates", "[queue][stress]") {
  NameGuard guard(unique_name("race"));
  constexpr int kRacers = 16;
  constexpr int kRounds = 125;  // 2,000 racing processes
  for (int round = 0; round < kRounds; ++round) {
    std::vector<Child> racers;
    for (int i = 0; i < kRacers; ++i) {
      racers.emplace_back([name = guard.name()] {
        auto q = Queue<int>::open_or_create(name, {.maxsize = 1000});
        q.put(getpid());  // every racer's handle must reach the one queue
      });
    }
    for (auto& r : racers) REQUIRE(r.succeeded());
    auto q = Queue<int>::open(guard.name());
    REQUIRE(q.qsize() == kRacers);
    REQUIRE(q.stats().puts == kRacers);
    Queue<int>::remove(guard.name());
  }
}
