// Pool arguments, results and chunks of any size: what does not fit the rings travels out of band
// in a sealed memfd of its own, which nothing leaves behind in /dev/shm (the listener checks every
// case for /dev/shm entries and descriptors left open).
#include <signal.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <numeric>
#include <string>
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
