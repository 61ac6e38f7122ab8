// Pool::imap and imap_unordered: lazy input, ordered and unordered results, timed next(), failures
// at their positions, killed workers, and abandoned iterations.
#include <signal.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <iterator>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "shmq/shmq.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shmq::Pool;
using shmq::Queue;

namespace {

int square(int x) { return x * x; }
int fail_on_3(int x) {
  if (x == 3) throw std::invalid_argument("three");
  return x;
}
// Reports its pid, then blocks until told to go on, for item `hold`; returns x.
int hold_item(std::tuple<int, int, Queue<int>, Queue<int>> job) {
  auto [x, hold, started, go] = job;
  if (x == hold) {
    started.put(getpid());
    go.get();
  }
  return x;
}

// An input range that counts how far it has been read, and may throw at one position: a
// generator, as the caller's own code behind imap.
struct CountingRange {
  int size;
  int throw_at = -1;
  int* read;  // items handed out so far
  struct iterator {
    using iterator_category = std::input_iterator_tag;
    using value_type = int;
    using difference_type = std::ptrdiff_t;
    using pointer = const int*;
    using reference = int;
    const CountingRange* range;
    int at;
    int operator*() const {
      if (at == range->throw_at) throw std::runtime_error("input broke at " + std::to_string(at));
      ++*range->read;
      return at;
    }
    iterator& operator++() {
      ++at;
      return *this;
    }
    bool operator!=(const iterator& o) const { return at != o.at; }
    bool operator==(const iterator& o) const { return at == o.at; }
  };
  iterator begin() const { return {this, 0}; }
  iterator end() const { return {this, size}; }
};

}  // namespace

TEST_CASE("imap returns results in input order, by range-for and by next()", "[pool][imap]") {
  Pool pool(3);
  std::vector<int> items(1000);
  for (int i = 0; i < 1000; ++i) items[static_cast<std::size_t>(i)] = i;
  for (std::size_t chunksize : {1, 7, 1000, 5000}) {
    INFO("chunksize " << chunksize);
    std::vector<int> got;
    for (int r : pool.imap(square, items, chunksize)) got.push_back(r);
    REQUIRE(got.size() == 1000);
    for (int i = 0; i < 1000; ++i) CHECK(got[static_cast<std::size_t>(i)] == i * i);
  }
  auto it = pool.imap(square, std::vector<int>{1, 2, 3});  // an rvalue range is kept
  CHECK(it.next() == 1);
  CHECK(it.next(10s) == 4);
  CHECK(it.next() == 9);
  CHECK(it.next() == std::nullopt);
  CHECK(it.next() == std::nullopt);
}

TEST_CASE("imap_unordered returns every result once, in completion order", "[pool][imap]") {
  Pool pool(2);
  Queue<int> started;
  Queue<int> go;
  std::vector<std::tuple<int, int, Queue<int>, Queue<int>>> items;
  for (int i = 0; i < 20; ++i) items.emplace_back(i, 0, started, go);
  // Item 0 is held: with imap_unordered the other 19 come first.
  auto results = pool.imap_unordered(hold_item, items);
  started.get();
  std::multiset<int> seen;
  for (int i = 0; i < 19; ++i) {
    const auto r = results.next(60s);
    REQUIRE(r);
    CHECK(*r != 0);
    seen.insert(*r);
  }
  go.put(1);
  CHECK(results.next(60s) == 0);
  CHECK(results.next() == std::nullopt);
  CHECK(seen.size() == 19);
  CHECK(std::set<int>(seen.begin(), seen.end()).size() == 19);
}

TEST_CASE("imap reads its input lazily, a bounded number of chunks ahead", "[pool][imap]") {
  Pool pool(1);
  int read = 0;
  const CountingRange input{1'000'000, -1, &read};
  auto results = pool.imap(square, input, 10);
  // At most 64 chunks per worker in flight: 640 items read, not a million.
  CHECK(read <= 640);
  CHECK(results.next() == 0);
  CHECK(read <= 650);
  for (int i = 1; i < 5000; ++i) REQUIRE(results.next() == i * i);
  CHECK(read <= 5000 + 640);
}

TEST_CASE("imap: a timed next throws TimeoutError and leaves the iteration where it was",
          "[pool][imap]") {
  Pool pool(1);
  Queue<int> started;
  Queue<int> go;
  std::vector<std::tuple<int, int, Queue<int>, Queue<int>>> items{{5, 5, started, go},
                                                                   {6, 5, started, go}};
  auto results = pool.imap(hold_item, items);
  started.get();
  CHECK_THROWS_AS(results.next(20ms), shmq::TimeoutError);
  CHECK_THROWS_AS(results.next(0s), shmq::TimeoutError);
  CHECK_THROWS_AS(results.next(-1s), shmq::TimeoutError);
  go.put(1);
  CHECK(results.next(60s) == 5);
  CHECK(results.next(60s) == 6);
  CHECK(results.next(0s) == std::nullopt);
}

TEST_CASE("imap: an item that throws raises RemoteError at its position; iteration goes on",
          "[pool][imap]") {
  Pool pool(2);
  const std::vector<int> items{0, 1, 2, 3, 4, 5};
  const std::size_t chunksize = GENERATE(1, 4);
  INFO("chunksize " << chunksize);
  {
    SECTION("by next()") {
      auto results = pool.imap(fail_on_3, items, chunksize);
      for (int i = 0; i < 3; ++i) CHECK(results.next() == i);
      CHECK_THROWS_WITH(results.next(), Catch::Contains("std::invalid_argument") &&
                                            Catch::Contains("three"));
      CHECK(results.next() == 4);
      CHECK(results.next() == 5);
      CHECK(results.next() == std::nullopt);
    }
    SECTION("by range-for, resumed after the throw") {
      auto results = pool.imap(fail_on_3, items, chunksize);
      std::vector<int> got;
      CHECK_THROWS_AS([&] { for (int r : results) got.push_back(r); }(), shmq::RemoteError);
      CHECK(got == std::vector<int>{0, 1, 2});
      for (int r : results) got.push_back(r);
      CHECK(got == std::vector<int>{0, 1, 2, 4, 5});
    }
  }
  SECTION("unordered") {
    auto results = pool.imap_unordered(fail_on_3, items);
    int failures = 0;
    std::multiset<int> got;
    for (;;) {
      try {
        const auto r = results.next();
        if (!r) break;
        got.insert(*r);
      } catch (const shmq::RemoteError&) {
        ++failures;
      }
    }
    CHECK(failures == 1);
    CHECK(got == std::multiset<int>{0, 1, 2, 4, 5});
  }
}

TEST_CASE("imap: a worker killed mid-chunk yields WorkerLost at that chunk's positions, then goes on",
          "[pool][imap][fault]") {
  Pool pool(2);
  Queue<int> started;
  Queue<int> go;
  std::vector<std::tuple<int, int, Queue<int>, Queue<int>>> items;
  for (int i = 0; i < 12; ++i) items.emplace_back(i, 5, started, go);
  auto results = pool.imap(hold_item, items, 2);  // item 5 is in the chunk {4, 5}
  const pid_t worker = started.get();
  kill(worker, SIGKILL);
  for (int i = 0; i < 4; ++i) CHECK(results.next(60s) == i);
  CHECK_THROWS_WITH(results.next(60s), Catch::Contains("killed by signal 9"));
  CHECK_THROWS_AS(results.next(60s), shmq::WorkerLost);  // item 5, same chunk
  for (int i = 6; i < 12; ++i) CHECK(results.next(60s) == i);
  CHECK(results.next(60s) == std::nullopt);
}

TEST_CASE("imap: the input's own exception comes at its position, after the items before it",
          "[pool][imap]") {
  Pool pool(2);
  int read = 0;
  for (std::size_t chunksize : {1, 3, 100}) {
    INFO("chunksize " << chunksize);
    const CountingRange input{10, 7, &read};
    auto results = pool.imap(square, input, chunksize);
    for (int i = 0; i < 7; ++i) CHECK(results.next(60s) == i * i);
    CHECK_THROWS_WITH(results.next(60s), "input broke at 7");
    CHECK(results.next(60s) == std::nullopt);
  }
  SECTION("unordered") {
    const CountingRange input{10, 0, &read};
    auto results = pool.imap_unordered(square, input, 1);
    CHECK_THROWS_WITH(results.next(60s), "input broke at 0");
    CHECK(results.next() == std::nullopt);
  }
}

TEST_CASE("imap: an empty range yields nothing; a chunksize of 0 is InvalidArgument",
          "[pool][imap]") {
  Pool pool(1);
  auto none = pool.imap(square, std::vector<int>{});
  CHECK(none.next() == std::nullopt);
  int n = 0;
  for (int r : pool.imap_unordered(square, std::vector<int>{})) n += r + 1;
  CHECK(n == 0);
  CHECK_THROWS_AS(pool.imap(square, std::vector<int>{1}, 0), shmq::InvalidArgument);
  CHECK(pool.apply(square, 3) == 9);
}

TEST_CASE("imap abandoned half way, then the pool destroyed: nothing hangs or leaks",
          "[pool][imap]") {
  const std::vector<int> items(100'000, 2);
  SECTION("iterator first") {
    Pool pool(2);
    {
      auto results = pool.imap(square, items, 10);
      for (int i = 0; i < 50; ++i) REQUIRE(results.next() == 4);
    }
    CHECK(pool.apply(square, 5) == 25);  // the pool is still usable
  }
  SECTION("pool first") {
    auto pool = std::make_unique<Pool>(2);
    auto results = pool->imap(square, items, 10);
    REQUIRE(results.next() == 4);
    pool.reset();
    // The rest were lost with the pool; each says so, then the iteration ends.
    bool lost = false;
    for (int i = 0; i < 200'000 && !lost; ++i) {
      try {
        if (!results.next(10s)) break;
      } catch (const shmq::WorkerLost& e) {
        lost = true;
        CHECK_THAT(e.what(), Catch::Contains("terminated"));
      }
    }
    CHECK(lost);
  }
}

TEST_CASE("imap with workers killed at random: every position gives its value or WorkerLost",
          "[pool][imap][fault]") {
  Pool pool(3);
  std::vector<int> items(3000);
  for (int i = 0; i < 3000; ++i) items[static_cast<std::size_t>(i)] = i;
  auto results = pool.imap([](int x) { return x * 2; }, items, 5);
  Queue<int> pids;
  std::size_t lost = 0;
  for (int i = 0; i < 3000; ++i) {
    if (i % 300 == 17) {
      // Kill whichever worker answers: it may be in the middle of a chunk.
      const pid_t victim = pool.apply(getpid);
      kill(victim, SIGKILL);
    }
    try {
      const auto r = results.next(60s);
      REQUIRE(r);
      CHECK(*r == 2 * i);
    } catch (const shmq::WorkerLost&) {
      ++lost;
    }
  }
  CHECK(results.next(60s) == std::nullopt);
  CHECK(lost <= 10 * 5);  // at most the chunks of the 10 killed workers
}

TEST_CASE("imap: the manager killed mid-iteration: the rest is WorkerLost, then the end",
          "[pool][imap][fault]") {
  Pool pool(2);
  const pid_t worker = pool.apply(getpid);
  const pid_t manager = shmq::test::parent_of(worker);
  const std::vector<int> items(100'000, 3);
  auto results = pool.imap(square, items, 10);
  REQUIRE(results.next(60s) == 9);
  kill(manager, SIGKILL);
  std::size_t values = 1, lost = 0;
  for (;;) {
    try {
      if (!results.next(60s)) break;
      ++values;
    } catch (const shmq::WorkerLost& e) {
      ++lost;
      CHECK_THAT(e.what(), Catch::Contains("manager"));
    }
  }
  CHECK(lost > 0);
  CHECK(values + lost <= items.size());  // the input left unread is lost once, not item by item
  CHECK_THROWS_AS(pool.apply(square, 1), shmq::PoolBroken);
}

TEST_CASE("imap under an ignored SIGCHLD, a worker killed: WorkerLost at its chunk, the rest come",
          "[pool][imap][fault]") {
  struct sigaction ignore {}, old{};
  ignore.sa_handler = SIG_IGN;
  sigaction(SIGCHLD, &ignore, &old);
  {
    Pool pool(2);
    Queue<int> started;
    Queue<int> go;
    std::vector<std::tuple<int, int, Queue<int>, Queue<int>>> items;
    for (int i = 0; i < 50; ++i) items.emplace_back(i, 20, started, go);
    auto results = pool.imap(hold_item, items);
    kill(started.get(), SIGKILL);
    for (int i = 0; i < 50; ++i) {
      if (i == 20) {
        CHECK_THROWS_AS(results.next(60s), shmq::WorkerLost);
      } else {
        CHECK(results.next(60s) == i);
      }
    }
    CHECK(results.next(60s) == std::nullopt);
  }
  sigaction(SIGCHLD, &old, nullptr);
}

namespace {
// Strings of 1 MiB, counting how many were read.
struct BigStrings {
  int size;
  int* read;
  struct iterator {
    using iterator_category = std::input_iterator_tag;
    using value_type = std::string;
    using difference_type = std::ptrdiff_t;
    using pointer = const std::string*;
    using reference = std::string;
    const BigStrings* range;
    int at;
    std::string operator*() const {
      ++*range->read;
      return std::string(std::size_t{1} << 20, 'b');
    }
    iterator& operator++() {
      ++at;
      return *this;
    }
    bool operator!=(const iterator& o) const { return at != o.at; }
  };
  iterator begin() const { return {this, 0}; }
  iterator end() const { return {this, size}; }
};
}  // namespace

TEST_CASE("imap of large items keeps about 64 MiB of input in flight, not 64 chunks per worker",
          "[pool][imap][payload]") {
  Pool pool(1);
  int read = 0;
  const BigStrings input{1000, &read};
  auto results = pool.imap([](const std::string& s) { return s.size(); }, input, 4);
  CHECK(read <= 64 + 4);  // 4 MiB chunks: 16 of them, where 64 chunks would be 256 items
  for (int i = 0; i < 100; ++i) REQUIRE(results.next(60s) == std::size_t{1} << 20);
  CHECK(read <= 100 + 64 + 4);
}
