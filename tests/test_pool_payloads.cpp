// Pool arguments, results and chunks of any size: what does not fit the rings travels out of band
// in memfds sealed at their size, reused warm, which nothing leaves behind in /dev/shm (the listener checks every
// case for /dev/shm entries and descriptors left open).
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "shmq/shmq.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shmq::Pool;
using shmq::PoolOptions;
using shmq::Queue;

namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;

// A result of `size` bytes, each the byte's index mod 251 (so a misplaced page shows).
std::string pattern(std::size_t size) {
  std::string s(size, '\0');
  for (std::size_t i = 0; i < size; ++i) s[i] = static_cast<char>(i % 251);
  return s;
}
std::string make_pattern(std::uint64_t size) { return pattern(size); }
// Checks its argument, then returns it reversed.
std::string reverse_checked(std::string s) {
  if (s != pattern(s.size())) throw std::runtime_error("argument corrupted");
  return std::string(s.rbegin(), s.rend());
}
std::uint64_t size_of(const std::string& s) { return s.size(); }
int block_with(std::string big, Queue<int> started, Queue<int> go) {
  started.put(getpid());
  return static_cast<int>(big.size()) + go.get();
}
std::int64_t sum(std::vector<int> v) { return std::accumulate(v.begin(), v.end(), std::int64_t{0}); }

bool names_a_queue(const std::string& what) {
  return what.find("unnamed") != std::string::npos || what.find("anon") != std::string::npos ||
         what.find("queue") != std::string::npos;
}

}  // namespace

TEST_CASE("a 64 MiB argument and a 64 MiB result travel whole", "[pool][payload]") {
  Pool pool(2);
  const std::string big = pattern(64 * kMiB);
  const std::string back = pool.apply(reverse_checked, big);
  REQUIRE(back.size() == big.size());
  CHECK(std::equal(back.rbegin(), back.rend(), big.begin()));
  CHECK(pool.apply(make_pattern, std::uint64_t{64 * kMiB}) == big);
  CHECK(pool.apply(size_of, big) == 64 * kMiB);
  // Small ones still travel in the ring, between big ones.
  CHECK(pool.apply(size_of, std::string("abc")) == 3);
}

TEST_CASE("payloads of every size around the ring's limit, with a ring of 4 KiB",
          "[pool][payload]") {
  Pool pool(PoolOptions{.processes = 2, .initializer = {}, .maxtasksperchild = 0,
                        .queue_bytes = 4096});
  for (std::size_t size : {0UL, 1UL, 3900UL, 3990UL, 4000UL, 4030UL, 4050UL, 4096UL, 4200UL,
                           kMiB, 5 * kMiB}) {
    INFO("size " << size);
    CHECK(pool.apply(make_pattern, std::uint64_t{size}) == pattern(size));
    CHECK(pool.apply(size_of, pattern(size)) == size);
  }
  // Many at once: the rings stay 4 KiB, each payload goes its own way.
  std::vector<shmq::AsyncResult<std::string>> results;
  for (int i = 0; i < 50; ++i) results.push_back(pool.apply_async(reverse_checked, pattern(kMiB)));
  for (auto& r : results) CHECK(r.get().size() == kMiB);
}

TEST_CASE("map and imap with a chunk of 2 million ints", "[pool][payload]") {
  Pool pool(2);
  std::vector<int> items(2'000'000);
  std::iota(items.begin(), items.end(), 0);
  const auto results = pool.map([](int x) { return x + 1; }, items, items.size());
  REQUIRE(results.size() == items.size());
  CHECK(results.front() == 1);
  CHECK(results.back() == 2'000'000);
  std::size_t n = 0;
  for (int r : pool.imap([](int x) { return x - 1; }, items, 1'000'000)) {
    REQUIRE(r == static_cast<int>(n) - 1);
    ++n;
  }
  CHECK(n == items.size());
  // And one argument of 2 million ints.
  CHECK(pool.apply(sum, items) == std::int64_t{1'999'999} * 2'000'000 / 2);
}

TEST_CASE("a worker killed holding a large argument: WorkerLost, and its memfd is let go",
          "[pool][payload][fault]") {
  Pool pool(1);
  Queue<int> started;
  Queue<int> go;
  auto doomed = pool.apply_async(block_with, pattern(16 * kMiB), started, go);
  kill(started.get(), SIGKILL);
  CHECK_THROWS_AS(doomed.get(60s), shmq::WorkerLost);
  go.put(1);
  CHECK(pool.apply(size_of, pattern(8 * kMiB)) == 8 * kMiB);
}

TEST_CASE("a large argument to a pool that was terminated: an error that names no queue",
          "[pool][payload]") {
  Pool pool(1);
  pool.terminate();
  try {
    pool.apply(size_of, pattern(16 * kMiB));
    FAIL("no throw");
  } catch (const shmq::Error& e) {
    CHECK_FALSE(names_a_queue(e.what()));
    CHECK_THAT(e.what(), Catch::Contains("terminated"));
  }
}

TEST_CASE("a large result whose task raises after all: RemoteError, nothing left open",
          "[pool][payload]") {
  Pool pool(1);
  CHECK_THROWS_WITH(pool.apply(reverse_checked, std::string(8 * kMiB, 'x')),
                    Catch::Contains("argument corrupted"));
  CHECK(pool.apply(size_of, pattern(8 * kMiB)) == 8 * kMiB);
}

TEST_CASE("a 1 GiB argument and a 1 GiB result", "[.][pool][payload][large]") {
  Pool pool(1);
  const std::uint64_t size = std::uint64_t{1} << 30;
  std::string big = pool.apply(make_pattern, size);
  REQUIRE(big.size() == size);
  CHECK(pool.apply(size_of, big) == size);
}

TEST_CASE("an exception with a 16 MiB what(): RemoteError with its start, and the pool goes on",
          "[pool][payload]") {
  Pool pool(PoolOptions{.processes = 1, .initializer = {}, .maxtasksperchild = 0,
                        .queue_bytes = 4096});
  try {
    pool.apply([](std::uint64_t n) -> int { throw std::runtime_error(std::string(n, 'w')); },
               std::uint64_t{16 * kMiB});
    FAIL("no throw");
  } catch (const shmq::RemoteError& e) {
    CHECK(e.type_name() == "std::runtime_error");
    CHECK_THAT(e.what(), Catch::Contains("wwww"));
  }
  CHECK(pool.apply(size_of, std::string("ok")) == 2);
}

// ---- Reused memfds: the caller keeps those of past payloads as spares, lends one with each task
// for its result, and drops (never reuses) the memfds of a task whose worker was lost.

namespace {

// The names of the pool payload memfds that process `pid` holds, by descriptor.
std::vector<std::string> pool_memfds(pid_t pid) {
  std::vector<std::string> names;
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::error_code error;
    const std::string target = std::filesystem::read_symlink(entry.path(), error).string();
    if (!error && target.rfind("/memfd:shmq.pool.", 0) == 0) names.push_back(target);
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string reversed(std::string s) {
  std::reverse(s.begin(), s.end());
  return s;
}

// reverse_checked, once it has said which worker runs it.
std::string reverse_announced(std::string s, Queue<int> started) {
  started.put(getpid());
  return reverse_checked(std::move(s));
}

// As a hostile task would: opens every pool memfd `owner` holds, and tries to shrink and grow
// each. Returns how many it found, or -1 if any resize worked.
int resize_pool_memfds(int owner) {
  int found = 0;
  bool resized = false;
  const std::string dir = "/proc/" + std::to_string(owner) + "/fd/";
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::error_code error;
    const std::string target = std::filesystem::read_symlink(entry.path(), error).string();
    if (error || target.rfind("/memfd:shmq.pool.", 0) != 0) continue;
    const int fd = open(entry.path().c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) continue;
    ++found;
    resized = resized || ftruncate(fd, 0) == 0 || ftruncate(fd, off_t{1} << 32) == 0;
    close(fd);
  }
  return resized ? -1 : found;
}

}  // namespace

TEST_CASE("repeated large round trips reuse the caller's memfds: at most two per worker, none "
          "after join",
          "[pool][payload]") {
  Pool pool(2);
  const std::string big = pattern(16 * kMiB);
  std::vector<std::string> held;
  for (int round = 0; round < 6; ++round) {
    REQUIRE(pool.apply(reverse_checked, big) == reversed(big));
    if (round == 2) held = pool_memfds(getpid());
  }
  // Warm memfds kept, and no new ones made after the first round trips.
  CHECK_FALSE(held.empty());
  CHECK(held.size() <= 2 * pool.processes());
  CHECK(pool_memfds(getpid()) == held);
  pool.close();
  pool.join();
  CHECK(pool_memfds(getpid()).empty());
}

namespace {
int pool_memfds_held_here() {
  return static_cast<int>(pool_memfds(getpid()).size());
}
}  // namespace

TEST_CASE("with payload_cache_bytes 0 no memfd is kept, by the caller or a worker",
          "[pool][payload]") {
  PoolOptions options;
  options.processes = 1;
  options.payload_cache_bytes = 0;
  Pool pool(options);
  const std::string big = pattern(8 * kMiB);
  for (int round = 0; round < 3; ++round) {
    REQUIRE(pool.apply(reverse_checked, big) == reversed(big));
  }
  CHECK(pool_memfds(getpid()).empty());
  CHECK(pool.apply(pool_memfds_held_here) == 0);
}

TEST_CASE("workers killed at random points of large round trips: WorkerLost or the whole "
          "result, and every later result whole",
          "[pool][payload][fault]") {
  Pool pool(2);
  Queue<int> started;
  std::mt19937 random(Catch::rngSeed());
  int lost = 0;
  for (int round = 0; round < 12; ++round) {
    INFO("round " << round);
    const std::string big = pattern(8 * kMiB + static_cast<std::size_t>(round) * 4096);
    auto doomed = pool.apply_async(reverse_announced, big, started);
    const pid_t worker = started.get(60s);
    // Not a synchronisation: a random instant of the task's decoding, run or result writing.
    std::this_thread::sleep_for(std::chrono::microseconds(random() % 80'000));
    kill(worker, SIGKILL);  // if the task was done, an idle worker dies: it is replaced
    std::optional<std::string> back;
    try {
      back = doomed.get(60s);
    } catch (const shmq::WorkerLost&) {
      ++lost;
    }
    if (back) CHECK(*back == reversed(big));
    // The memfds the lost task had are never reused: what comes next is whole.
    const std::string next = pattern(4 * kMiB + static_cast<std::size_t>(round));
    CHECK(pool.apply(reverse_checked, next) == reversed(next));
  }
  CHECK(lost > 0);
  CHECK(pool_memfds(getpid()).size() <= 2 * pool.processes());
}

TEST_CASE("a task cannot shrink or grow the memfds the pool lends it", "[pool][payload][fault]") {
  Pool pool(1);
  const std::string big = pattern(8 * kMiB);
  REQUIRE(pool.apply(reverse_checked, big) == reversed(big));
  REQUIRE(pool.apply(reverse_checked, big) == reversed(big));
  // The caller holds spares now, and the task is lent one.
  CHECK(pool.apply(resize_pool_memfds, static_cast<int>(getpid())) >= 1);
  CHECK(pool.apply(reverse_checked, big) == reversed(big));
}

TEST_CASE("a large result outlives its pool", "[pool][payload]") {
  std::optional<shmq::AsyncResult<std::string>> result;
  {
    Pool pool(1);
    REQUIRE(pool.apply(reverse_checked, pattern(8 * kMiB)).size() == 8 * kMiB);  // spares exist
    result.emplace(pool.apply_async(make_pattern, std::uint64_t{8 * kMiB}));
    result->wait();
    REQUIRE(result->ready());
  }
  CHECK(result->get() == pattern(8 * kMiB));
}
