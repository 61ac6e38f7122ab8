// A soak: up to 8 producers x 8 consumers, messages from 0 bytes to nearly the capacity, blocking,
// timed and non-blocking calls mixed; checked for exactly-once delivery and per-producer order.
// Short in CI; SHMQ_SOAK_SECONDS makes it longer.
#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "shmq/shmq.hpp"
#include "../support.hpp"

using namespace std::chrono_literals;
using shmq::Queue;
using shmq::QueueOptions;
using shmq::test::Child;

namespace {

// A message: producer, sequence number, and a body of a chosen length that repeats a checksum.
std::string make(std::uint32_t producer, std::uint32_t seq, std::size_t length) {
  std::string m(8 + length, static_cast<char>('a' + (producer * 31 + seq) % 26));
  std::memcpy(m.data(), &producer, 4);
  std::memcpy(m.data() + 4, &seq, 4);
  return m;
}

}  // namespace

TEST_CASE("soak: N producers x M consumers, mixed sizes and call forms, exactly once and in order",
          "[stress][soak]") {
  const char* env = std::getenv("SHMQ_SOAK_SECONDS");
  const auto duration = std::chrono::duration<double>(env != nullptr ? std::atof(env) : 1.5);
  const auto [producers, consumers] = GENERATE(std::pair{1, 1}, std::pair{8, 1}, std::pair{1, 8}, std::pair{8, 8});
  INFO(producers << " producers, " << consumers << " consumers");
  constexpr std::size_t kCapacity = 64 * 1024;
  Queue<std::string> q(QueueOptions{.maxsize = 0, .capacity_bytes = kCapacity});
  // Per consumer and producer: messages received and the last sequence number; order is checked
  // in the consumer, exactly-once by the counts against what producers report they put.
  struct Tally {
    std::atomic<std::uint64_t> received[8];
    std::atomic<std::uint64_t> errors;
  };
  auto* tallies = static_cast<Tally*>(mmap(nullptr, sizeof(Tally) * 8, PROT_READ | PROT_WRITE,
                                           MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  new (tallies) Tally[8]{};
  Queue<std::uint64_t> put_counts;

  std::vector<Child> children;
  for (int p = 0; p < producers; ++p) {
    children.emplace_back([&, p] {
      std::mt19937 rng(static_cast<unsigned>(p * 7919 + 1));
      const auto stop = std::chrono::steady_clock::now() + duration;
      std::uint32_t seq = 0;
      while (std::chrono::steady_clock::now() < stop) {
        const auto pick = static_cast<unsigned>(rng() % 100);
        // Mostly small, sometimes empty, sometimes nearly the whole ring.
        const std::size_t length = pick < 5 ? 0 : pick < 97 ? rng() % 200 : kCapacity - 64 - rng() % 1000;
        const std::string m = make(static_cast<std::uint32_t>(p), seq, length);
        bool put = true;
        switch (rng() % 3) {
          case 0: q.put(m); break;
          case 1: put = q.try_put(m); break;
          case 2:
            try {
              q.put(m, 2ms);
            } catch (const shmq::Full&) {
              put = false;
            }
            break;
        }
        if (put) ++seq;
      }
      put_counts.put(seq);
    });
  }
  for (int c = 0; c < consumers; ++c) {
    children.emplace_back([&, c] {
      std::mt19937 rng(static_cast<unsigned>(c * 104729 + 3));
      std::vector<std::int64_t> last(8, -1);
      Tally& mine = tallies[c];
      auto check = [&](const std::string& m) {
        std::uint32_t producer, seq;
        std::memcpy(&producer, m.data(), 4);
        std::memcpy(&seq, m.data() + 4, 4);
        const char fill = static_cast<char>('a' + (producer * 31 + seq) % 26);
        if (producer >= 8 || static_cast<std::int64_t>(seq) <= last[producer] ||
            std::any_of(m.begin() + 8, m.end(), [fill](char ch) { return ch != fill; })) {
          mine.errors.fetch_add(1);
          return;
        }
        last[producer] = seq;
        mine.received[producer].fetch_add(1);
      };
      try {
        for (;;) {
          switch (rng() % 3) {
            case 0: check(q.get()); break;
            case 1:
              if (auto m = q.try_get()) check(*m);
              break;
            case 2:
              try {
                check(q.get(2ms));
              } catch (const shmq::Empty&) {
              }
              break;
          }
        }
      } catch (const shmq::ShutDown&) {
      }
    });
  }
  std::uint64_t put_total = 0;
  // Producers report once their time is up; a minute more is plenty, and a producer that died
  // fails the test instead of hanging it.
  const auto patience = std::chrono::duration_cast<std::chrono::milliseconds>(duration) + 60s;
  for (int p = 0; p < producers; ++p) put_total += put_counts.get(patience);
  for (int p = 0; p < producers; ++p) REQUIRE(children[static_cast<std::size_t>(p)].succeeded());
  q.shutdown();  // consumers drain what is left, then stop
  for (int c = 0; c < consumers; ++c) REQUIRE(children[static_cast<std::size_t>(producers + c)].succeeded());

  std::uint64_t received = 0, errors = 0;
  for (int c = 0; c < consumers; ++c) {
    errors += tallies[c].errors.load();
    for (int p = 0; p < 8; ++p) received += tallies[c].received[p].load();
  }
  CHECK(errors == 0);
  CHECK(received == put_total);
  CHECK(put_total > 0);
  munmap(tallies, sizeof(Tally) * 8);
}
