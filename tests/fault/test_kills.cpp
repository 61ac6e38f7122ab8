// Processes SIGKILLed at random points, round after round; the survivors must go on with no hang,
// no message delivered twice, no committed message lost and no half-written message delivered.
//
// The guarantee checked (README, "Crash guarantee"): a message whose put returned is delivered
// exactly once, unless the consumer that took it died after its get took it; a put in flight is
// delivered whole or not at all.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "shmq/shmq.hpp"
#include "../support.hpp"

using namespace std::chrono_literals;
using shmq::Queue;
using shmq::QueueOptions;
using shmq::test::Child;

namespace {

// Kill rounds per test; SHMQ_KILL_ROUNDS raises it for a longer soak.
int rounds(int in_ci) {
  const char* env = std::getenv("SHMQ_KILL_ROUNDS");
  return env != nullptr ? std::max(1, std::atoi(env)) : in_ci;
}

// A message that betrays a half-written frame: its payload repeats a checksum of its sequence
// number, in a length that depends on it (so frames of many sizes wrap around the ring).
struct Message {
  std::uint64_t seq;
  std::vector<std::uint64_t> body;
};
Message make(std::uint64_t seq) {
  return {seq, std::vector<std::uint64_t>(seq % 37, seq * 0x9e3779b97f4a7c15ULL)};
}
bool intact(const Message& m) {
  if (m.body.size() != m.seq % 37) return false;
  for (const auto w : m.body) {
    if (w != m.seq * 0x9e3779b97f4a7c15ULL) return false;
  }
  return true;
}

// Memory shared with the children: what they committed and what they received.
template <class T>
T* shared_array(std::size_t n) {
  void* p = mmap(nullptr, n * sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(p != MAP_FAILED);
  return new (p) T[n]{};
}

std::chrono::microseconds random_delay(std::mt19937& rng) {
  return std::chrono::microseconds(std::uniform_int_distribution<int>(0, 400)(rng));
}

}  // namespace

template <>
struct shmq::codec<Message> {
  static std::size_t size(const Message& m) { return 8 + shmq::encoded_size(m.body); }
  static void encode(const Message& m, Writer& w) {
    w.write(&m.seq, 8);
    shmq::encode(m.body, w);
  }
  static Message decode(Reader& r) {
    Message m{};
    r.read(&m.seq, 8);
    m.body = shmq::decode<std::vector<std::uint64_t>>(r);
    return m;
  }
};

TEST_CASE("producers killed at random points: every committed message arrives once, none half-written",
          "[fault][kill]") {
  const int kRounds = rounds(600);
  constexpr std::uint64_t kMaxMessages = 20'000'000;
  Queue<Message> q(QueueOptions{.maxsize = 0, .capacity_bytes = 16 * 1024});
  // committed[r]: messages whose put returned in round r's producer (seq = r << 32 | i).
  auto* committed = shared_array<std::atomic<std::uint64_t>>(static_cast<std::size_t>(kRounds));
  std::mt19937 rng(42);
  std::vector<std::uint64_t> received_per_round(static_cast<std::size_t>(kRounds));
  std::uint64_t duplicates = 0, broken = 0, stray = 0;

  auto drain = [&] {
    while (auto m = q.try_get()) {
      const auto round = m->seq >> 32;
      const auto i = m->seq & 0xffffffff;
      if (!intact(*m)) ++broken;
      if (round >= static_cast<std::uint64_t>(kRounds)) {
        ++stray;
      } else if (i != received_per_round[round]) {
        ++duplicates;  // the producer puts in order: anything but the next one is wrong
      } else {
        ++received_per_round[round];
      }
    }
  };
  for (int r = 0; r < kRounds; ++r) {
    Child producer([&, r] {
      for (std::uint64_t i = 0; i < kMaxMessages; ++i) {
        q.put(make(std::uint64_t(r) << 32 | i));
        committed[r].store(i + 1);
      }
    });
    std::this_thread::sleep_for(random_delay(rng));  // the kill point is what is random here
    producer.kill(SIGKILL);
    // Drain while the producer dies, so it is often killed while blocked on a full queue.
    drain();
    producer.wait_status();
    drain();
    const auto c = committed[r].load();
    // All committed arrived; at most the one in flight arrived beyond them.
    REQUIRE(received_per_round[static_cast<std::size_t>(r)] >= c);
    REQUIRE(received_per_round[static_cast<std::size_t>(r)] <= c + 1);
  }
  std::uint64_t delivered = 0;
  for (const auto n : received_per_round) delivered += n;
  const auto recoveries = q.stats().lock_recoveries;
  std::printf("producer kills: %d rounds, %llu messages checked, %llu lock recoveries\n", kRounds,
              static_cast<unsigned long long>(delivered), static_cast<unsigned long long>(recoveries));
  CHECK(delivered > static_cast<std::uint64_t>(kRounds));  // the producers got to work before dying
  CHECK(duplicates == 0);
  CHECK(broken == 0);
  CHECK(stray == 0);
  CHECK(q.empty());
  munmap(committed, sizeof(std::atomic<std::uint64_t>) * static_cast<std::size_t>(kRounds));
}

TEST_CASE("consumers killed at random points, also while blocked in timed gets: nothing delivered twice",
          "[fault][kill]") {
  const int kRounds = rounds(600);
  constexpr std::uint64_t kMessages = 400'000;
  Queue<Message> q(QueueOptions{.maxsize = 0, .capacity_bytes = 16 * 1024});
  // seen[seq]: how many consumers recorded seq, after their get returned it.
  auto* seen = shared_array<std::atomic<std::uint32_t>>(kMessages);
  auto* broken = shared_array<std::atomic<std::uint32_t>>(1);
  std::mt19937 rng(7);
  std::uint64_t next = 0;  // the parent produces, between kills
  int kills = 0;
  for (int r = 0; r < kRounds && next < kMessages; ++r) {
    Child consumer([&] {
      for (;;) {
        // Timed gets, so that kills also land on a consumer asleep in a timed wait.
        const auto m = q.get(1h);
        if (!intact(m) || m.seq >= kMessages) broken[0].fetch_add(1);
        else seen[m.seq].fetch_add(1);
      }
    });
    for (int i = 0; i < 300 && next < kMessages; ++i) {
      if (!q.try_put(make(next))) break;
      ++next;
    }
    std::this_thread::sleep_for(random_delay(rng));
    consumer.kill(SIGKILL);
    consumer.wait_status();
    ++kills;
  }
  // A last consumer that is not killed takes what is left.
  while (auto m = q.try_get()) {
    if (!intact(*m) || m->seq >= kMessages) broken[0].fetch_add(1);
    else seen[m->seq].fetch_add(1);
  }
  std::uint64_t twice = 0, lost = 0;
  for (std::uint64_t s = 0; s < next; ++s) {
    twice += seen[s].load() > 1 ? 1 : 0;
    lost += seen[s].load() == 0 ? 1 : 0;
  }
  std::printf("consumer kills: %d rounds, %llu messages checked, %llu lost with their consumer, %llu lock recoveries\n",
              kills, static_cast<unsigned long long>(next), static_cast<unsigned long long>(lost),
              static_cast<unsigned long long>(q.stats().lock_recoveries));
  CHECK(broken[0].load() == 0);
  CHECK(twice == 0);
  // Only a consumer that died between its get returning and its recording the message loses one.
  CHECK(lost <= static_cast<std::uint64_t>(kills));
  CHECK(kills == kRounds);
  CHECK(next > static_cast<std::uint64_t>(kRounds));
  munmap(seen, sizeof(std::atomic<std::uint32_t>) * kMessages);
  munmap(broken, sizeof(std::atomic<std::uint32_t>));
}
