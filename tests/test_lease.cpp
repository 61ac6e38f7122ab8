// Leased gets: a message stays in the queue's lease area until acked, and comes back if its
// consumer dies, nacks it, drops the lease, or holds it past lease_timeout.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "shmq/detail/layout.hpp"
#include "shmq/shmq.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shmq::Lease;
using shmq::Queue;
using shmq::QueueOptions;
using shmq::test::Child;
using shmq::test::eventually;
using shmq::test::NameGuard;
using shmq::test::unique_name;

namespace {

QueueOptions leased(std::size_t max_leases, std::size_t capacity = 64 * 1024) {
  QueueOptions o;
  o.capacity_bytes = capacity;
  o.max_leases = max_leases;
  o.lease_message_bytes = 1024;
  return o;
}

}  // namespace

TEST_CASE("a leased message is gone once acked, and its lease tells its first delivery", "[lease]") {
  Queue<std::string> q(leased(4));
  q.put("job");
  auto lease = q.get_leased();
  CHECK(lease.value() == "job");
  CHECK(lease.deliveries() == 1);
  CHECK(q.empty());  // out of the ring: plain consumers go on
  CHECK(q.stats().leases.size() == 1);
  lease.ack();
  CHECK_FALSE(lease.held());
  CHECK(q.stats().leases.empty());
  CHECK_FALSE(q.try_get_leased().has_value());
  CHECK_FALSE(q.try_get().has_value());
  CHECK_THROWS_AS(lease.ack(), shmq::InvalidArgument);  // already ended
}

TEST_CASE("a nacked message comes back first, delivered a second time", "[lease]") {
  Queue<int> q(leased(4));
  q.put(1);
  q.put(2);
  auto first = q.get_leased();
  REQUIRE(first.value() == 1);
  first.nack();
  auto again = q.get_leased();
  CHECK(again.value() == 1);  // before 2, which was queued before the nack
  CHECK(again.deliveries() == 2);
  again.ack();
  CHECK(q.get() == 2);
  CHECK(q.stats().redeliveries == 1);
}

TEST_CASE("a lease destroyed without an ack (an exception unwinding) is delivered again", "[lease]") {
  Queue<int> q(leased(4));
  q.put(7);
  try {
    auto lease = q.get_leased();
    throw std::runtime_error("worker failed");
  } catch (const std::runtime_error&) {
  }
  // A plain get takes a redelivered message too.
  CHECK(q.get(1s) == 7);
  CHECK(q.stats().leases.empty());
}

namespace {

// A child holding a lease on the next message of `q`, which it reports, until it is killed.
Child holding_a_lease(Queue<int>& q, int expected) {
  Queue<int> took;
  Child holder([&] {
    auto lease = q.get_leased();
    took.put(lease.value());
    pause();
  });
  REQUIRE(took.get(10s) == expected);
  return holder;
}

}  // namespace

TEST_CASE("a leased message whose consumer is killed goes to the next consumer", "[lease][process]") {
  Queue<int> q(leased(4));
  q.put(41);
  Child consumer = holding_a_lease(q, 41);
  const auto stats = q.stats();
  REQUIRE(stats.leases.size() == 1);
  CHECK(stats.leases[0].holder == consumer.pid());
  CHECK(stats.leases[0].holder_alive);
  consumer.kill(SIGKILL);
  consumer.wait_status();
  CHECK_FALSE(q.stats().leases[0].holder_alive);
  auto lease = q.get_leased(10s);
  CHECK(lease.value() == 41);
  CHECK(lease.deliveries() == 2);
  lease.ack();
  CHECK(q.stats().redeliveries == 1);
}

TEST_CASE("a zombie holder (killed, not yet reaped) counts as dead", "[lease][process]") {
  Queue<int> q(leased(4));
  q.put(5);
  Child consumer = holding_a_lease(q, 5);
  consumer.kill(SIGKILL);
  REQUIRE(eventually([&] { return shmq::test::process_state(consumer.pid()) == 'Z'; }));
  CHECK(q.get(10s) == 5);
  consumer.wait_status();
}

TEST_CASE("max_leases outstanding: the next leased get waits as on an empty queue", "[lease]") {
  Queue<int> q(leased(2));
  for (int i = 0; i < 4; ++i) q.put(i);
  auto a = q.get_leased();
  auto b = q.get_leased();
  CHECK_FALSE(q.try_get_leased().has_value());
  CHECK_THROWS_AS(q.get_leased_nowait(), shmq::Empty);
  CHECK_THROWS_AS(q.get_leased(20ms), shmq::Empty);
  CHECK_THROWS_AS(q.get_leased(0ms), shmq::Empty);
  CHECK_THROWS_AS(q.get_leased(-5ms), shmq::Empty);
  CHECK(q.get() == 2);  // plain gets are not held up
  std::thread acker([&] {
    std::this_thread::sleep_for(50ms);  // the get below must wait, then be woken by the ack
    a.ack();
  });
  auto c = q.get_leased(10s);
  CHECK(c.value() == 3);
  acker.join();
  b.ack();
  c.ack();
}

TEST_CASE("batch leased gets take what is queued up to the free slots", "[lease]") {
  Queue<int> q(leased(3));
  for (int i = 0; i < 5; ++i) q.put(i);
  std::vector<Lease<int>> out;
  CHECK(q.get_leased_many(out, 10) == 3);
  CHECK(q.try_get_leased_many(out, 10) == 0);
  REQUIRE(out.size() == 3);
  for (int i = 0; i < 3; ++i) CHECK(out[static_cast<std::size_t>(i)].value() == i);
  out[1].nack();
  out.clear();  // the other two are nacked by their destructors
  CHECK(q.get_leased_many(out, 10, 1s) == 3);
  std::vector<int> got;
  for (auto& l : out) {
    got.push_back(l.value());
    l.ack();
  }
  std::sort(got.begin(), got.end());
  CHECK(got == std::vector<int>{0, 1, 2});
  CHECK(q.qsize() == 2);
}

TEST_CASE("a leased get finds the one free slot wherever acks left it", "[lease]") {
  // Each process starts its search for a free slot after the one it took last, wrapping around.
  Queue<int> q(leased(4));
  for (int i = 0; i < 7; ++i) q.put(i);
  std::vector<Lease<int>> held;
  REQUIRE(q.try_get_leased_many(held, 4) == 4);  // every slot held
  held[1].ack();
  held[2].ack();
  auto e = q.try_get_leased();  // into the second slot
  auto f = q.try_get_leased();  // into the third: the search would go on from the fourth
  REQUIRE(e.has_value());
  REQUIRE(f.has_value());
  CHECK_FALSE(q.try_get_leased().has_value());
  held[0].ack();  // only the first slot is free, before where the search starts
  auto g = q.try_get_leased();
  REQUIRE(g.has_value());
  CHECK(std::vector<int>{e->value(), f->value(), g->value()} == std::vector<int>{4, 5, 6});
  CHECK_FALSE(q.try_get_leased().has_value());
  held[3].ack();
  e->ack();
  f->ack();
  g->ack();
  CHECK(q.stats().leases.empty());
}

TEST_CASE("a leased message of every length up to a few words arrives intact", "[lease]") {
  // Short messages are copied into their slot by words, not by memcpy: check each length.
  Queue<std::string> q(leased(4));
  for (std::size_t n = 0; n <= 40; ++n) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + n) % 26);
    q.put(s);
    auto lease = q.get_leased();
    CHECK(lease.value() == s);
    lease.ack();
  }
}

TEST_CASE("a redelivery is never lost or blocked by a full ring", "[lease]") {
  QueueOptions o = leased(2, 4096);
  o.maxsize = 3;
  Queue<int> q(o);
  q.put(1);
  auto lease = q.get_leased();
  for (int i = 2; i <= 4; ++i) q.put(i);
  CHECK(q.full());
  lease.nack();  // the ring is full: the message waits in its slot
  CHECK(q.get() == 1);
  CHECK(q.get() == 2);
}

TEST_CASE("lease_timeout: a stopped holder's message is delivered again and its late ack refused",
          "[lease][process]") {
  QueueOptions o = leased(4);
  o.lease_timeout = 100ms;
  Queue<int> q(o);
  Queue<int> report;
  q.put(9);
  Child holder([&] {
    auto lease = q.get_leased();
    report.put(lease.value());
    raise(SIGSTOP);
    try {
      lease.ack();
      report.put(0);
    } catch (const shmq::LeaseExpired& e) {
      report.put(std::string(e.what()).find("lease_timeout of 100 ms") != std::string::npos ? 1
                                                                                             : 2);
    }
  });
  REQUIRE(report.get(10s) == 9);
  REQUIRE(eventually([&] { return shmq::test::process_state(holder.pid()) == 'T'; }));
  auto again = q.get_leased(10s);
  CHECK(again.value() == 9);
  CHECK(again.deliveries() == 2);
  holder.kill(SIGCONT);
  CHECK(report.get(10s) == 1);  // refused, saying why
  CHECK(holder.succeeded());
  again.ack();
}

TEST_CASE("max_deliveries: a message nacked that often goes to the dead-letter queue", "[lease]") {
  NameGuard dead(unique_name("dead"));
  auto dlq = Queue<int>::create(dead.name());
  QueueOptions o = leased(4);
  o.max_deliveries = 2;
  o.dead_letter_queue = dead.name();
  Queue<int> q(o);
  q.put(13);
  q.put(14);
  q.get_leased().nack();
  auto second = q.get_leased();
  CHECK(second.value() == 13);
  CHECK(second.deliveries() == 2);
  second.nack();
  auto next = q.get_leased();
  CHECK(next.value() == 14);  // 13 went to the dead-letter queue instead
  next.ack();
  CHECK(dlq.get(1s) == 13);
  CHECK(q.stats().dead_lettered == 1);
}

// A queue whose messages go to a dead-letter queue after one delivery, and that queue, full.
struct FullDeadLetterQueue {
  static QueueOptions options(const std::string& dead) {
    QueueOptions o = leased(4);
    o.max_deliveries = 1;
    o.dead_letter_queue = dead;
    return o;
  }
  static Queue<int> full(const std::string& name) {
    auto q = Queue<int>::create(name, QueueOptions{1});
    q.put(0);
    return q;
  }
  NameGuard dead{unique_name("dead")};
  Queue<int> dlq = full(dead.name());
  Queue<int> q{options(dead.name())};
};

TEST_CASE("a full dead-letter queue keeps the message in its slot, undelivered, until it has room",
          "[lease]") {
  FullDeadLetterQueue f;
  auto& [dead, dlq, q] = f;
  q.put(21);
  q.get_leased().nack();
  CHECK_FALSE(q.try_get_leased().has_value());  // not delivered a second time
  CHECK_FALSE(q.try_get().has_value());
  CHECK(q.stats().leases.size() == 1);
  CHECK(dlq.get() == 0);
  // The next get that looks (at most 10 ms later) moves it.
  CHECK(eventually([&] { return !q.try_get().has_value() && dlq.qsize() == 1; }));
  CHECK(dlq.get() == 21);
  CHECK(q.stats().leases.empty());
}

namespace {
// A message type whose negative values do not decode: a poison message.
struct Poisonable {
  int v;
};
}  // namespace

template <>
struct shmq::codec<Poisonable> {
  static std::size_t size(const Poisonable&) { return sizeof(int); }
  static void encode(const Poisonable& p, Writer& w) { w.write(&p.v, sizeof p.v); }
  static Poisonable decode(Reader& r) {
    Poisonable p{};
    r.read(&p.v, sizeof p.v);
    if (p.v < 0) throw shmq::DecodeError("negative");
    return p;
  }
};

TEST_CASE("a leased message that does not decode is dropped; the batch's later leases come back",
          "[lease]") {
  Queue<Poisonable> q(leased(4));
  q.put({-1});
  CHECK_THROWS_AS(q.get_leased(), shmq::DecodeError);
  q.put({-1});
  CHECK_THROWS_AS(q.try_get_leased(), shmq::DecodeError);
  q.put({2});
  auto next = q.get_leased();
  CHECK(next.value().v == 2);
  CHECK(next.deliveries() == 1);
  next.ack();

  q.put({3});
  q.put({-1});
  q.put({4});
  std::vector<Lease<Poisonable>> out;
  CHECK_THROWS_AS(q.get_leased_many(out, 3), shmq::DecodeError);
  REQUIRE(out.size() == 1);
  CHECK(out[0].value().v == 3);
  out[0].ack();
  auto again = q.get_leased();  // nacked when the batch threw
  CHECK(again.value().v == 4);
  CHECK(again.deliveries() == 2);
  again.ack();
  CHECK_FALSE(q.try_get_leased().has_value());
  CHECK(q.stats().leases.empty());  // the poison messages were acked, not left held
}

TEST_CASE("lease options are checked", "[lease]") {
  Queue<int> plain;
  CHECK_THROWS_AS(plain.get_leased(), shmq::InvalidArgument);
  QueueOptions o = leased(4);
  o.max_deliveries = 3;
  CHECK_THROWS_AS(Queue<int>(o), shmq::InvalidArgument);  // no dead_letter_queue
  o.dead_letter_queue = unique_name("missing");
  CHECK_THROWS_AS(Queue<int>(o), shmq::NotFound);
  NameGuard strings(unique_name("strings"));
  auto other = Queue<std::string>::create(strings.name());
  o.dead_letter_queue = strings.name();
  CHECK_THROWS_AS(Queue<int>(o), shmq::Incompatible);
  QueueOptions too_many = leased(5000);
  CHECK_THROWS_AS(Queue<int>(too_many), shmq::InvalidArgument);
  QueueOptions negative = leased(1);
  negative.lease_timeout = -1ms;
  CHECK_THROWS_AS(Queue<int>(negative), shmq::InvalidArgument);
  QueueOptions without;
  without.lease_timeout = 1s;
  CHECK_THROWS_AS(Queue<int>(without), shmq::InvalidArgument);
  // Every message must fit a slot.
  Queue<std::string> small(leased(2));
  CHECK(small.max_message_bytes() == 1024);
  CHECK_THROWS_AS(small.put(std::string(2000, 'x')), shmq::MessageTooLarge);
}

TEST_CASE("a named leased queue reopens with its leases", "[lease]") {
  NameGuard name(unique_name("leases"));
  auto q = Queue<int>::create(name.name(), leased(2));
  q.put(3);
  auto lease = q.get_leased();
  auto again = Queue<int>::open(name.name());
  CHECK(again.stats().max_leases == 2);
  CHECK(again.stats().leases.size() == 1);
  lease.nack();
  CHECK(again.get_leased().value() == 3);
}

TEST_CASE("a draining queue ends leased and plain gets only once no lease can come back",
          "[lease]") {
  Queue<int> q(leased(2));
  q.put(1);
  auto lease = q.get_leased();
  q.shutdown();
  CHECK_THROWS_AS(q.get_nowait(), shmq::Empty);  // the lease may still come back
  lease.nack();
  CHECK(q.get() == 1);
  CHECK_THROWS_AS(q.get(), shmq::ShutDown);
  CHECK_THROWS_AS(q.get_leased(), shmq::ShutDown);
}

#ifdef SHMQ_CLI
TEST_CASE("shmq stat shows outstanding leases with their holders and ages, and the counters",
          "[lease][cli]") {
  NameGuard name(unique_name("leases"));
  auto q = Queue<int>::create(name.name(), leased(4));
  q.put(1);
  q.put(2);
  q.get_leased().nack();  // a redelivery
  auto held = q.get_leased();
  std::string out;
  if (FILE* p = popen((std::string(SHMQ_CLI) + " stat " + name.name() + " 2>&1").c_str(), "r")) {
    char buf[4096];
    while (std::fgets(buf, sizeof buf, p) != nullptr) out += buf;
    pclose(p);
  }
  INFO(out);
  CHECK(out.find("leases:              1 outstanding of 4, timeout none") != std::string::npos);
  CHECK(out.find("held by pid " + std::to_string(getpid()) + " (alive) for ") !=
        std::string::npos);
  CHECK(out.find("delivery 2") != std::string::npos);
  CHECK(out.find("redeliveries:        1") != std::string::npos);
  held.ack();
}
#endif

namespace {

// The lease area of the named queue `name`, mapped: what a taker inside get_leased writes.
struct LeaseAreaView {
  void* base = MAP_FAILED;
  std::size_t bytes = 0;
  shmq::detail::SharedHeader* header = nullptr;
  std::byte* area = nullptr;
  explicit LeaseAreaView(const std::string& name) {
    const int fd = shm_open(("/shmq." + name).c_str(), O_RDWR, 0);
    REQUIRE(fd >= 0);
    struct stat st {};
    fstat(fd, &st);
    bytes = static_cast<std::size_t>(st.st_size);
    base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    REQUIRE(base != MAP_FAILED);
    header = static_cast<shmq::detail::SharedHeader*>(base);
    area = static_cast<std::byte*>(base) + shmq::detail::kHeaderBytes + header->capacity_bytes;
  }
  ~LeaseAreaView() { munmap(base, bytes); }
  shmq::detail::LeaseSlot& slot(std::uint32_t i) const {
    return *reinterpret_cast<shmq::detail::LeaseSlot*>(
        area + i * shmq::detail::lease_stride(header->lease_payload));
  }
};

// A child that dies holding the consumers' lock with slot 0 taking, as a leased get killed
// between its steps leaves it: before its commit (head not moved: from_head is head) or after
// it (from_head is an older head).
void die_inside_a_take(Queue<int>& q, const std::string& name, bool committed) {
  Child taker([&] {
    LeaseAreaView view(name);
    q.get_with([&](const std::byte*, std::size_t) {  // runs holding the consumers' lock
      shmq::detail::LeaseSlot& slot = view.slot(0);
      const int value = 99;
      std::memcpy(reinterpret_cast<std::byte*>(&slot) + sizeof(shmq::detail::LeaseSlot), &value,
                  sizeof value);
      slot.bytes.store(sizeof value);
      const std::uint64_t head = view.header->head.load();
      slot.from_head.store(committed ? head + 1 : head);
      shmq::detail::LeaseState s;
      s.pid = static_cast<std::uint32_t>(getpid());
      s.deliveries = 1;
      s.kind = shmq::detail::LeaseKind::taking;
      slot.state.store(s.pack());
      raise(SIGKILL);
    });
  });
  taker.wait_status();
}

}  // namespace

TEST_CASE("a taker killed inside get_leased before its commit leaves the message in the ring only",
          "[lease][process]") {
  NameGuard name(unique_name("taking"));
  auto q = Queue<int>::create(name.name(), leased(2));
  q.put(1);
  die_inside_a_take(q, name.name(), false);
  CHECK(q.get(1s) == 1);  // the next get settles the slot: freed, never delivered
  CHECK(q.stats().leases.empty());
  CHECK(q.stats().lock_recoveries == 1);
  CHECK_FALSE(q.try_get().has_value());
}

TEST_CASE("a taker killed inside get_leased after its commit has its message delivered again",
          "[lease][process]") {
  NameGuard name(unique_name("taken"));
  auto q = Queue<int>::create(name.name(), leased(2));
  q.put(1);
  die_inside_a_take(q, name.name(), true);
  auto lease = q.get_leased(1s);  // the slot's message, ready again, comes before the ring's
  CHECK(lease.value() == 99);
  CHECK(lease.deliveries() == 2);
  lease.ack();
  CHECK(q.get(1s) == 1);
}

// ---- Red-team attacks (issue 15).

TEST_CASE("a leased get that meets a corrupt frame after taking a redelivery gives it back",
          "[lease]") {
  NameGuard name(unique_name("corruptframe"));
  auto q = Queue<int>::create(name.name(), leased(4));
  q.put(1);
  q.get_leased().nack();  // ready: the next leased get takes it first, then looks at the ring
  q.put(2);
  LeaseAreaView view(name.name());
  const auto head = shmq::detail::Cursor::unpack(view.header->head.load());
  std::byte* frame = static_cast<std::byte*>(view.base) + shmq::detail::kHeaderBytes + head.offset;
  std::uint32_t good = 0;
  std::memcpy(&good, frame, sizeof good);
  const std::uint32_t hostile = 0x7fffffff;
  std::memcpy(frame, &hostile, sizeof hostile);
  std::vector<Lease<int>> out;
  CHECK_THROWS_AS(q.get_leased_many(out, 2), shmq::Incompatible);
  CHECK(out.empty());
  std::memcpy(frame, &good, sizeof good);  // repaired: both messages must still be there
  auto first = q.try_get_leased();
  REQUIRE(first.has_value());  // before the fix: held, by nobody, for as long as we live
  CHECK(first->value() == 1);
  first->ack();
  CHECK(q.get_nowait() == 2);
  CHECK(q.stats().leases.empty());
}

TEST_CASE("a draining queue whose dead-letter queue is gone does not hang its consumers",
          "[lease]") {
  NameGuard dead(unique_name("gone"));
  (void)Queue<int>::create(dead.name());
  QueueOptions o = leased(4);
  o.max_deliveries = 1;
  o.dead_letter_queue = dead.name();
  Queue<int> q(o);
  REQUIRE(Queue<int>::remove(dead.name()));  // removed after the queue was made
  q.put(5);
  q.get_leased().nack();  // over max_deliveries, and nowhere to go
  q.shutdown();
  CHECK_THROWS_AS(q.get(2s), shmq::ShutDown);  // before the fix: waits forever (TimeoutError here)
  CHECK_THROWS_AS(q.get_leased(2s), shmq::ShutDown);
}

TEST_CASE("every put form refuses a message one byte over lease_message_bytes", "[lease]") {
  Queue<std::string> q(leased(2));  // lease_message_bytes 1024: a string's 4-byte length + 1020
  const std::string fits(1020, 'a');
  const std::string over(1021, 'b');
  q.put(fits);
  CHECK_THROWS_AS(q.put(over), shmq::MessageTooLarge);
  CHECK_THROWS_AS(q.put(over, 10ms), shmq::MessageTooLarge);
  CHECK_THROWS_AS(q.put_nowait(over), shmq::MessageTooLarge);
  CHECK_THROWS_AS(q.try_put(over), shmq::MessageTooLarge);
  CHECK_THROWS_AS(q.put_many(std::vector<std::string>{over}), shmq::MessageTooLarge);
  CHECK_THROWS_AS(q.try_put_many(std::vector<std::string>{over}), shmq::MessageTooLarge);
  CHECK_THROWS_AS(q.put_with(1025, [](std::byte*, std::size_t) {}), shmq::MessageTooLarge);
  CHECK(q.qsize() == 1);
  auto first = q.get_leased();
  CHECK(first.value() == fits);
  first.ack();
  q.put_with(1024, [](std::byte* p, std::size_t n) { std::memset(p, 0, n); });
  CHECK(q.qsize() == 1);
}

TEST_CASE("a late ack of a timed-out lease never frees a later lease of the same slot",
          "[lease]") {
  QueueOptions o = leased(1);
  o.lease_timeout = std::chrono::milliseconds(1);
  Queue<int> q(o);
  q.put(0);
  auto stale = q.get_leased();
  std::optional<Lease<int>> again;
  REQUIRE(eventually([&] {
    again = q.try_get_leased();  // taken back once the timeout passed
    return again.has_value();
  }));
  again->ack();
  // The slot's generation moved twice (taken back, acked); every later lease moves it once more
  // and the state word keeps 14 bits of it: after 2^14 - 2 more leases the slot holds a lease of
  // this process whose word is the stale lease's, to the bit.
  for (int i = 0; i < (1 << 14) - 2; ++i) {
    q.put(i);
    q.get_leased().ack();
  }
  q.put(7);
  auto current = q.get_leased();
  CHECK_THROWS_AS(stale.ack(), shmq::LeaseExpired);  // before the fix: frees `current`
  CHECK_NOTHROW(current.ack());
  CHECK(q.stats().leases.empty());
}

TEST_CASE("a forked child's copy of a lease gives nothing back when destroyed", "[lease][process]") {
  Queue<int> q(leased(2));
  q.put(1);
  auto lease = q.get_leased();
  Child child([&] {
    Lease<int> inherited = std::move(lease);  // destroyed here, unacked, in the child
  });
  CHECK(child.succeeded());
  CHECK_FALSE(q.try_get_leased().has_value());  // not nacked by the child: still the parent's
  CHECK_NOTHROW(lease.ack());
  CHECK(q.stats().leases.empty());
}

TEST_CASE("a draining shutdown with the ring full, every slot ready and a producer blocked ends "
          "everyone with every message delivered",
          "[lease]") {
  QueueOptions o = leased(2);
  o.maxsize = 2;
  Queue<int> q(o);
  q.put(1);
  q.put(2);
  {
    auto a = q.get_leased();
    auto b = q.get_leased();
  }  // both nacked: every slot ready
  q.put(3);
  q.put(4);  // the ring is full
  std::thread producer([&] { CHECK_THROWS_AS(q.put(5), shmq::ShutDown); });
  REQUIRE(eventually([&] { return q.stats().full_waits != 0; }));
  q.shutdown();
  producer.join();
  std::vector<int> got;
  auto lease = q.get_leased(1s);
  got.push_back(lease.value());
  lease.ack();
  for (int i = 0; i < 3; ++i) got.push_back(q.get(1s));
  std::sort(got.begin(), got.end());
  CHECK(got == std::vector<int>{1, 2, 3, 4});
  CHECK_THROWS_AS(q.get(1s), shmq::ShutDown);
  CHECK_THROWS_AS(q.get_leased(1s), shmq::ShutDown);
}

TEST_CASE("wait() returns a queue whose only message is a killed holder's lease", "[lease][wait]") {
  Queue<int> q(leased(2));
  q.put(7);
  Child holder([&] {
    auto lease = q.get_leased();
    raise(SIGKILL);
  });
  holder.wait_status();
  // No get runs to find the dead holder: the wait itself must (before the fix: empty, 2 s later).
  CHECK(shmq::wait({q}, 2s) == std::vector<std::size_t>{0});
  auto again = q.get_leased_nowait();
  CHECK(again.value() == 7);
  CHECK(again.deliveries() == 2);
  again.ack();
}

TEST_CASE("a stopped holder's timed-out lease comes back though every get finds a ring message",
          "[lease][process]") {
  QueueOptions o = leased(4);
  o.lease_timeout = 50ms;
  Queue<int> q(o);
  Queue<int> report;
  q.put(-1);
  Child holder([&] {
    auto lease = q.get_leased();
    report.put(lease.value());
    raise(SIGSTOP);
  });
  REQUIRE(report.get(10s) == -1);
  REQUIRE(eventually([&] { return shmq::test::process_state(holder.pid()) == 'T'; }));
  // Each get below may be taken at once (the ring is never empty): the redelivery must still
  // come, within a few reclaim periods of the timeout.
  bool back = false;
  for (int i = 0; i < 1000000 && !back; ++i) {
    q.put(i);
    auto lease = q.try_get_leased();
    REQUIRE(lease.has_value());
    back = lease->value() == -1;
    lease->ack();
  }
  CHECK(back);
  holder.kill(SIGKILL);
}

TEST_CASE("a message due for the dead-letter queue moves once it has room, though every get "
          "finds a ring message",
          "[lease]") {
  FullDeadLetterQueue f;
  auto& [dead, dlq, q] = f;
  q.put(-1);
  q.get_leased().nack();  // due for the dead-letter queue, which has no room
  q.put(100);
  auto first = q.try_get_leased();  // tries to move it (and fails), taking the hint
  REQUIRE(first.has_value());
  CHECK(first->value() == 100);
  first->ack();
  CHECK(dlq.get() == 0);  // room now: only the periodic reclaim's hint brings a get to it
  bool moved = false;
  for (int i = 0; i < 1000000 && !moved; ++i) {
    q.put(i);
    auto lease = q.try_get_leased();
    REQUIRE(lease.has_value());
    CHECK(lease->value() == i);  // never -1 again
    lease->ack();
    moved = dlq.qsize() == 1;
  }
  CHECK(moved);
  CHECK(dlq.get() == -1);
}
