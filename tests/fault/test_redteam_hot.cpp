// Red-team regressions for the single put/get's try-once path (a lock held through the robust
// list's list_op_pending alone, ring.hpp Tracking::pending), the waiting producer's "room to
// spare" poll, get(out) with codec decode_into, and the leased get's claim/commit.
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../support.hpp"
#include "shmq/detail/layout.hpp"
#include "shmq/detail/ring.hpp"
#include "shmq/shmq.hpp"

using namespace std::chrono_literals;
using shmq::Queue;
using shmq::QueueOptions;
using shmq::detail::SharedHeader;
using shmq::test::eventually;
using shmq::test::GlibcRobustMutexes;

namespace {

// A queue's header page, mapped once more (as test_locks.cpp's HeaderView).
class Header {
 public:
  explicit Header(const std::string& queue) {
    const int fd = open(shmq::test::segment_path(queue).c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("cannot open the segment of " + queue);
    void* at = mmap(nullptr, shmq::detail::kHeaderBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (at == MAP_FAILED) throw std::runtime_error("cannot map the header of " + queue);
    h_ = static_cast<SharedHeader*>(at);
  }
  Header(const Header&) = delete;
  Header& operator=(const Header&) = delete;
  ~Header() { munmap(h_, shmq::detail::kHeaderBytes); }
  SharedHeader& operator*() const { return *h_; }
  SharedHeader* operator->() const { return h_; }

 private:
  SharedHeader* h_;
};

// The TID a lock word names as its holder (0: free, or released by the kernel for a dead holder).
std::uint32_t holder_of(const shmq::detail::RobustMutex& m) {
  return m.word.load() & FUTEX_TID_MASK;
}

// A child that stops itself (SIGSTOP) under ptrace after prepare(), so that the parent can run
// it one instruction at a time through ops() and kill it at any instruction. Always killed and
// reaped by its destructor if it still exists.
class SteppedChild {
 public:
  template <class Prepare, class Ops>
  SteppedChild(Prepare&& prepare, Ops&& ops) {
    std::fflush(nullptr);
    pid_ = fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      int code = 0;
      try {
        prepare();
        if (ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) != 0) _exit(3);
        raise(SIGSTOP);
        ops();
      } catch (...) {
        code = 1;
      }
      _exit(code);
    }
    int status = 0;
    if (waitpid(pid_, &status, 0) != pid_ || !WIFSTOPPED(status)) {
      pid_ = -1;
      throw std::runtime_error("the stepped child did not stop");
    }
  }
  SteppedChild(const SteppedChild&) = delete;
  SteppedChild& operator=(const SteppedChild&) = delete;
  ~SteppedChild() { kill_now(); }

  // Runs `steps` instructions; false if the child exited first (then it is reaped).
  bool step(long steps) {
    int sig = 0;
    for (long i = 0; i < steps; ++i, ++stepped_) {
      if (ptrace(PTRACE_SINGLESTEP, pid_, nullptr, reinterpret_cast<void*>(long{sig})) != 0) {
        throw std::runtime_error("PTRACE_SINGLESTEP failed");
      }
      int status = 0;
      while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      if (WIFEXITED(status) || WIFSIGNALED(status)) {
        exit_status_ = status;
        pid_ = -1;
        return false;
      }
      sig = WSTOPSIG(status) == SIGTRAP ? 0 : WSTOPSIG(status);
    }
    return true;
  }
  void kill_now() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
  }
  // Runs `at` instructions, then kills the child if it still runs: true if it finished first,
  // which it must have done cleanly.
  bool finished_within(long at) {
    const bool finished = !step(at);
    if (finished) {
      CHECK(WIFEXITED(exit_status_));
      CHECK(WEXITSTATUS(exit_status_) == 0);
    }
    kill_now();
    return finished;
  }
  long stepped() const { return stepped_; }

 private:
  pid_t pid_ = -1;
  int exit_status_ = -1;
  long stepped_ = 0;
};

// Each kill point replays the sequence from its start, at some 20 us an instruction, so the cost
// grows with the square of the sequence's length, which the sanitizer builds multiply many times
// over. The stride keeps both bounds: about `points` kill points, and at most kStepBudget steps in
// all (some 8 s), so a long sequence gets fewer, farther-apart points.
constexpr long kStepBudget = 400'000;

// Kills a stepped sequence at every stride-th instruction from a random start: attempt(at) runs
// one fresh sequence, kills it after `at` instructions, checks what it must, and returns the
// sequence's length if it finished first (else -1). The stride is SHMQ_REDTEAM_STRIDE (1: every
// instruction, which takes minutes) or as `points` and kStepBudget allow, given the length of a
// first, unkilled sequence.
template <class Attempt>
void kill_at_every_stride(long points, Attempt&& attempt) {
  const long length = attempt(std::numeric_limits<long>::max());
  REQUIRE(length > 1000);  // the sequence really ran under the tracer
  const char* const env = std::getenv("SHMQ_REDTEAM_STRIDE");
  const long stride = env != nullptr
                          ? std::max(1L, std::atol(env))
                          : std::max({1L, length / points, length / 2 * length / kStepBudget});
  const long first = static_cast<long>(std::random_device{}() % static_cast<unsigned long>(stride));
  INFO("stride " << stride << " from " << first);
  long at = first;
  long finished = -1;
  while ((finished = attempt(at)) < 0) at += stride;
  // The last attempt ran to its end (cleanly: finished_within checks), so every kill point before
  // it fell inside the sequence. Its length may differ from the first's by a few percent under
  // load (a lease area's periodic check that comes due or not, a /proc line's length), but a
  // sequence that ended far earlier did not run what the first did.
  CHECK(finished > length / 2);
}

// Runs body() inside outer's put_with callback, which puts 1: a listed shmq lock held meanwhile.
template <class Body>
void inside_put_with(Queue<long>& outer, Body&& body) {
  outer.put_with(sizeof(long), [&](std::byte* dst, std::size_t) {
    const long one = 1;
    std::memcpy(dst, &one, sizeof one);
    body();
  });
}

// After a child holding glibc.m[0] was killed (unless it finished): no queue lock still names it,
// and the glibc mutex comes back EOWNERDEAD (made consistent and released again).
void check_locks_left_to_the_kernel(std::initializer_list<Header*> queues,
                                    GlibcRobustMutexes& glibc, bool finished) {
  for (Header* h : queues) {
    REQUIRE(holder_of((*h)->put_lock) == 0);
    REQUIRE(holder_of((*h)->get_lock) == 0);
  }
  if (!finished) {
    REQUIRE(pthread_mutex_trylock(&glibc.m[0]) == EOWNERDEAD);
    pthread_mutex_consistent(&glibc.m[0]);
    pthread_mutex_unlock(&glibc.m[0]);
  }
}

}  // namespace

// Every instruction of a process's single puts and gets (at once, and through the general path on
// an empty and a full ring), each run inside another queue's put_with callback (a listed shmq
// lock) and with a glibc robust mutex held, is a place it may be SIGKILLed: at each, the locks it
// held or was taking must be left to the kernel (no word still naming the dead TID), the glibc
// mutex must come back EOWNERDEAD, and every queue must keep working.
TEST_CASE("a process killed at any instruction of its single puts and gets leaves no lock held",
          "[fault][lock][redteam]") {
  // The sequence is about 5000 instructions (many more under the sanitizers): runs from random
  // starts, which a failure reports, together cover them all.
  kill_at_every_stride(100, [](long at) {
    Queue<long> q;
    Queue<long> full(1);
    Queue<long> outer;
    full.put(1);
    Header hq(q.name()), hfull(full.name()), houter(outer.name());
    GlibcRobustMutexes glibc;
    SteppedChild child(
        [&] {
          // Identify this thread and fault the pages in before the stop: those steps are not the
          // path under attack.
          q.put(0);
          (void)q.get();
          if (pthread_mutex_lock(&glibc.m[0]) != 0) throw std::runtime_error("lock failed");
        },
        [&] {
          inside_put_with(outer, [&] {
            q.put(7);
            long v = 0;
            q.get(v);
            q.put_nowait(8);
            (void)q.try_get();      // at once
            (void)q.try_get();      // empty: the general path, tracked by list_op_pending alone
            (void)full.try_put(2);  // full: the same for a put
          });
        });
    const bool finished = child.finished_within(at);
    INFO("killed after " << at << " instructions");
    check_locks_left_to_the_kernel({&hq, &hfull, &houter}, glibc, finished);
    // Every queue still works, each lock taken over if it had to be.
    for (auto* queue : {&q, &full, &outer}) {
      while (queue->try_get()) {
      }
      queue->put(3, 1s);
      REQUIRE(queue->get(1s) == 3);
    }
    return finished ? child.stepped() : -1L;
  });
}

namespace {

// The calling thread's robust list as the kernel sees it: nothing pending, and no entry linked.
bool robust_list_is_idle() {
  robust_list_head* head = nullptr;
  std::size_t bytes = 0;
  if (syscall(SYS_get_robust_list, 0, &head, &bytes) != 0 || head == nullptr) return false;
  return head->list_op_pending == nullptr && head->list.next == &head->list;
}

}  // namespace

// A hold named by list_op_pending alone must end with it on every way out of a single put or get:
// done, full, empty, shut down, closed, a hostile frame or cursor. Left set, the thread (or, after
// its exit, nobody) would still name the lock for the kernel, which would wake a sleeper on it
// or mark it owner-died when the thread ends: a thread that exits normally must leave nothing.
TEST_CASE("every way out of a single put or get of a bitwise type leaves the robust list idle",
          "[queue][lock][redteam]") {
  std::thread worker([] {
    QueueOptions options;
    options.maxsize = 1;
    Queue<long> q(options);
    Header h(q.name());
    long out = 0;
    const auto idle = [&] {
      return robust_list_is_idle() && holder_of(h->put_lock) == 0 && holder_of(h->get_lock) == 0;
    };
    CHECK(idle());
    q.put(1);
    CHECK(idle());
    CHECK_FALSE(q.try_put(2));  // full
    CHECK(idle());
    CHECK_THROWS_AS(q.put_nowait(2), shmq::Full);
    CHECK(idle());
    CHECK_THROWS_AS(q.put(2, 0ms), shmq::Full);
    CHECK(idle());
    CHECK(q.get(1s) == 1);
    CHECK(idle());
    CHECK_FALSE(q.try_get(out));  // empty
    CHECK(idle());
    CHECK_THROWS_AS(q.get_nowait(), shmq::Empty);
    CHECK(idle());
    CHECK_THROWS_AS(q.get(out, -1s), shmq::Empty);
    CHECK(idle());
    q.put(3);
    // Hostile cursors: a tail offset past the ring makes both sides report corruption.
    const std::uint64_t tail = h->tail.load();
    h->tail.store(tail | 0xFFFFFFF0u);
    CHECK_THROWS_AS(q.get_nowait(), shmq::Incompatible);
    CHECK(idle());
    CHECK_THROWS_AS(q.try_put(4), shmq::Incompatible);
    CHECK(idle());
    h->tail.store(tail);
    h->tail_seen = tail;
    CHECK(q.get(1s) == 3);
    CHECK(idle());
    q.shutdown();
    CHECK_THROWS_AS(q.put(5), shmq::ShutDown);
    CHECK(idle());
    CHECK_THROWS_AS(q.get(out), shmq::ShutDown);
    CHECK(idle());
    q.close();
    CHECK_THROWS_AS(q.try_get(out), shmq::Closed);
    CHECK(idle());
  });
  worker.join();
}

// A producer waiting on a full ring polls for room for its frame and some to spare, but must go
// on as soon as its frame fits: here the consumer frees one frame, which leaves less to spare than
// the poll asks for (three frames of 1.3 KiB fill a 4 KiB ring). Every blocking put form.
// A set() is stopped at each of its instructions while another thread starts waiting, then
// finishes: a wait that began after the set() began is released by it (even once cleared), and one
// that began after the flag was already set and cleared is not. A set() whose wake-up was still in
// flight used to release the next wait, so a set()/clear() ping-pong between two processes took a
// stale wake-up for its next message and both sides then waited for ever.
TEST_CASE("an Event wait is released only by a set() that did not finish before the wait began",
          "[sync][event][fault]") {
  shmq::Event event;
  const auto counted = [&] {
    return shmq::detail::sleepers_of(event.wakeup_count().sleep.load()) != 0;
  };
  // A setter stopped at its start (the set() has not begun), or `after_store` instructions past
  // its store of the flag, found by stepping it one instruction at a time (how many instructions
  // come first differs from child to child in the sanitizer builds). The stops after the store
  // cover the rest of set(), its wake-up included; after that come only the child's returns.
  constexpr long kAfterStore = 48;
  const auto stop_then_wait = [&](std::optional<long> after_store) {
    SteppedChild setter([] {}, [&] { event.set(); });
    if (after_store) {
      while (!event.is_set()) REQUIRE(setter.step(1));
      if (!setter.step(*after_store)) return;  // the whole set() ran before this stop
    }
    const bool began_before = event.is_set();
    CHECK(began_before == after_store.has_value());
    if (began_before) event.clear();
    std::atomic<int> released{-1};
    std::thread waiter([&] { released = event.wait(60.0) ? 1 : 0; });
    REQUIRE(eventually(counted));
    REQUIRE(setter.finished_within(kStepBudget));
    if (began_before) {
      // Still waiting: counted again if the set()'s wake-up cleared the count, never released.
      REQUIRE(eventually([&] { return released != -1 || counted(); }));
      INFO("stopped " << *after_store << " instructions after the flag was set");
      CHECK(released == -1);
      event.set();
    }
    waiter.join();
    CHECK(released == 1);
    event.clear();
  };
  stop_then_wait(std::nullopt);
  for (long k = 0; k <= kAfterStore; ++k) stop_then_wait(k);
}

// Eight set() and clear() pulses killed at any instruction: the waiter that was asleep is released, by the
// killed set() (within kLongestSleep) or by the next one, and leaves the sleeper count as it found
// it; a wait after that sleeps until the next set(), and is released by it.
TEST_CASE("an Event set() killed at any instruction wedges no waiter", "[sync][event][fault]") {
  kill_at_every_stride(60, [](long at) {
    shmq::Event event;
    const auto counted = [&] {
      return shmq::detail::sleepers_of(event.wakeup_count().sleep.load()) != 0;
    };
    const auto released_by_next_set = [&](bool set_after) {
      std::atomic<int> released{-1};
      std::thread waiter([&] { released = event.wait(60.0) ? 1 : 0; });
      REQUIRE(eventually(counted));
      const long steps = set_after ? 0 : [&] {
        SteppedChild setter([] {}, [&] {
          for (int pulse = 0; pulse < 8; ++pulse) {
            event.set();
            event.clear();
          }
        });
        return setter.finished_within(at) ? setter.stepped() : -1L;
      }();
      if (steps < 0 || set_after) event.set();
      waiter.join();
      CHECK(released == 1);
      CHECK_FALSE(counted());
      event.clear();
      return steps;
    };
    const long length = released_by_next_set(false);
    released_by_next_set(true);
    return length;
  });
}

// A wait with a timeout of 0 or less is a look at the flag, as Python's wait(0): it used to poll
// the Event's whole spin budget first (2000 polls, some 60 us, while counted as a sleeper, so
// that a concurrent set() paid a wake-up syscall). Counted in instructions, run under ptrace.
TEST_CASE("an Event wait with a timeout of 0 or less only looks at the flag",
          "[sync][event][redteam]") {
  shmq::Event event;
  // The instructions of a child that calls look() (with its way out of raise(SIGSTOP) and into
  // _exit), or `limit` if it has not finished by then.
  const auto instructions = [](const std::function<bool()>& look, long limit) {
    SteppedChild child([] {}, [&] {
      if (look()) std::abort();
    });
    return child.finished_within(limit) ? child.stepped() : limit;
  };
  const long is_set = instructions([&] { return event.is_set(); }, kStepBudget);
  REQUIRE(is_set < kStepBudget);
  const std::function<bool()> looks[] = {[&] { return event.wait(0.0); },
                                         [&] { return event.wait(-1.0); },
                                         [&] { return event.wait_for(0ms); }};
  std::vector<long> waits;
  for (const auto& look : looks) waits.push_back(instructions(look, kStepBudget));
  CHECK(shmq::detail::sleepers_of(event.wakeup_count().sleep.load()) == 0);  // none counted
  // What a wait that polls costs here (a child's budget starts at its top), or at least enough
  // (a child still polling is killed, counted as a sleeper: looked at above, not after): the
  // sanitizer builds make every sequence several times longer, so the bound is relative to both.
  const long spinning = instructions([&] { return event.wait(1e-9); }, 4 * is_set + 100'000);
  REQUIRE(spinning > 4 * is_set);
  for (const long wait : waits) {
    INFO("is_set() took " << is_set << " instructions, a polling wait " << spinning
                          << ", the wait " << wait);
    CHECK(wait < is_set + (spinning - is_set) / 4);  // no spin
  }
}

TEST_CASE("a producer on a full ring goes on when the consumer frees just its frame",
          "[queue][wait][redteam]") {
  QueueOptions options;
  options.capacity_bytes = 4096;
  Queue<std::string> q(options);
  const std::string big(1300, 'x');
  const std::vector<std::function<void()>> forms = {
      [&] { q.put(big); },
      [&] { q.put(big, 1h); },
      [&] { q.put_many(std::vector<std::string>{big}); },
      [&] {
        const std::string encoded = shmq::detail::encode_to_string(big);
        q.put_with(encoded.size(),
                   [&](std::byte* dst, std::size_t n) { std::memcpy(dst, encoded.data(), n); });
      },
  };
  for (std::size_t form = 0; form < forms.size(); ++form) {
    INFO("put form " << form);
    while (q.try_put(big)) {
    }
    REQUIRE(q.qsize() == 3);
    const auto slept = q.stats().full_waits;
    std::atomic<bool> done{false};
    std::thread producer([&] {
      forms[form]();
      done = true;
    });
    REQUIRE(eventually([&] { return q.stats().full_waits > slept; }));
    CHECK(q.get() == big);
    const bool went_on = eventually([&] { return done.load(); });
    if (!went_on) q.shutdown();  // let the producer go, to fail rather than hang
    producer.join();
    REQUIRE(went_on);
    while (q.try_get()) {
    }
  }
}

namespace {

// A codec whose decode_into gives up after changing `out` (a user codec may throw anything).
struct Tally {
  std::vector<int> counts;
};

}  // namespace

namespace shmq {
template <>
struct codec<Tally> {
  static std::size_t size(const Tally& t) { return codec<std::vector<int>>::size(t.counts); }
  static void encode(const Tally& t, Writer& out) {
    codec<std::vector<int>>::encode(t.counts, out);
  }
  static Tally decode(Reader& in) { return Tally{codec<std::vector<int>>::decode(in)}; }
  static void decode_into(Reader& in, Tally& out) {
    codec<std::vector<int>>::decode_into(in, out.counts);
    if (!out.counts.empty() && out.counts[0] < 0) throw std::runtime_error("negative tally");
  }
};
}  // namespace shmq

// get(out) on hostile or truncated frames: a count larger than the frame, a huge count, a
// truncated element; and a user decode_into that throws midway. Each is dropped with DecodeError,
// `out` stays a valid value, and the next message arrives whole into the same `out`.
TEST_CASE("get into an existing value drops a hostile message and keeps the next one whole",
          "[queue][codec][redteam]") {
  SECTION("strings") {
    Queue<std::string> q;
    const auto put_raw = [&](std::string bytes) {
      q.put_with(bytes.size(),
                 [&](std::byte* dst, std::size_t n) { std::memcpy(dst, bytes.data(), n); });
    };
    std::string hostile = shmq::detail::encode_to_string(std::string("hello"));
    const std::uint32_t too_many = 6;  // one more than the frame holds
    std::memcpy(hostile.data(), &too_many, sizeof too_many);
    put_raw(hostile);
    const std::uint32_t huge = 0xFFFFFFFFu;
    std::memcpy(hostile.data(), &huge, sizeof huge);
    put_raw(hostile);
    put_raw(std::string(2, '\0'));  // shorter than a count
    q.put("world");
    std::string out(100, 'o');
    for (int i = 0; i < 3; ++i) {
      CHECK_THROWS_AS(q.get(out, 1s), shmq::DecodeError);
      CHECK(out.size() <= out.capacity());
    }
    CHECK(q.try_get(out));
    CHECK(out == "world");
  }
  SECTION("vectors of strings") {
    using Strings = std::vector<std::string>;
    Queue<Strings> q;
    std::string truncated = shmq::detail::encode_to_string(Strings{"ab", "cdef"});
    truncated.resize(truncated.size() - 1);
    q.put_with(truncated.size(),
               [&](std::byte* dst, std::size_t n) { std::memcpy(dst, truncated.data(), n); });
    std::string huge_count = shmq::detail::encode_to_string(Strings{"ab"});
    const std::uint32_t huge = 0x7FFFFFFFu;
    std::memcpy(huge_count.data(), &huge, sizeof huge);
    q.put_with(huge_count.size(),
               [&](std::byte* dst, std::size_t n) { std::memcpy(dst, huge_count.data(), n); });
    q.put(Strings{"x", "yz"});
    q.put(Strings{});
    Strings out{"1", "2", "3", "4", "5"};
    CHECK_THROWS_AS(q.get_nowait(out), shmq::DecodeError);
    CHECK_THROWS_AS(q.get_nowait(out), shmq::DecodeError);
    q.get_nowait(out);
    CHECK(out == Strings{"x", "yz"});  // the extra elements of `out` are gone
    q.get(out);
    CHECK(out.empty());
    CHECK_FALSE(q.try_get(out));
    CHECK(out.empty());  // untouched without a message
  }
  SECTION("a user codec's decode_into that throws midway") {
    Queue<Tally> q;
    q.put(Tally{{-1, 2, 3}});
    q.put(Tally{{4}});
    Tally out{{9, 9, 9, 9}};
    CHECK_THROWS_AS(q.get(out), shmq::DecodeError);  // a runtime_error, turned into DecodeError
    q.get(out);
    CHECK(out.counts == std::vector<int>{4});
    CHECK(q.qsize() == 0);
  }
}

// The lease kill tests' queue: 4 leases of 16-byte messages.
QueueOptions small_leases() {
  QueueOptions options;
  options.max_leases = 4;
  options.lease_message_bytes = 16;
  return options;
}

// Acks leases of `q`, counting each value in `seen`: waiting up to 5 s for each (a dead holder's
// lease comes back once its death is seen) while wanted(seen) holds, then as long as any is there
// at once. Every value must be one of `expected`.
template <class Wanted>
std::map<long, int> ack_leases(Queue<long>& q, const std::vector<long>& expected, Wanted&& wanted) {
  std::map<long, int> seen;
  const auto take = [&](shmq::Lease<long>& lease) {
    CHECK(std::find(expected.begin(), expected.end(), lease.value()) != expected.end());
    ++seen[lease.value()];
    lease.ack();
  };
  while (wanted(seen)) {
    auto lease = q.try_get_leased();
    if (!lease) lease = q.get_leased(5s);
    take(*lease);
  }
  while (auto lease = q.try_get_leased()) take(*lease);
  return seen;
}

// The leased get's claim and commit (lease_table.hpp) and the inline ack and nack, killed at any
// instruction in a forked child that inherited its parent's next-free-slot hint: no lock is left
// naming the dead process, and the queue keeps delivering: a new message arrives, exactly once,
// and nothing but the messages put comes out.
TEST_CASE(
    "a process killed at any instruction of its leased gets, acks and nacks leaves the queue "
    "working",
    "[fault][lease][redteam]") {
  // Each kill point also waits for the dead child's lease to come back (up to 100 ms): fewer
  // points.
  kill_at_every_stride(30, [](long at) {
    Queue<long> q(small_leases());
    Header h(q.name());
    // The parent's hint moves past slot 0; the child inherits it.
    q.put(1);
    q.get_leased().ack();
    q.put(5);
    q.put(6);
    SteppedChild child([&] { (void)q.qsize(); },
                       [&] {
                         auto a = q.get_leased();
                         a.ack();
                         auto b = q.get_leased();
                         b.nack();
                       });
    const bool finished = child.finished_within(at);
    INFO("killed after " << at << " instructions");
    REQUIRE(holder_of(h->put_lock) == 0);
    REQUIRE(holder_of(h->get_lock) == 0);
    q.put(9);
    // 6 was nacked (or never taken) and 9 is new: each comes exactly once; 5 at most once (the
    // child may have acked it). A lease of the dead child comes back once its death is seen.
    auto seen = ack_leases(q, {5, 6, 9}, [](auto& n) { return n[6] == 0 || n[9] == 0; });
    CHECK(seen[5] <= 1);
    CHECK(seen[6] == 1);
    CHECK(seen[9] == 1);
    return finished ? child.stepped() : -1L;
  });
}

// The single leased get's try-once path (Ring::lease_at_once: get_lock held through
// list_op_pending alone), killed at every instruction of get_leased + ack, run inside another
// queue's put_with callback (a listed shmq lock) with a glibc robust mutex held: no lock word is
// left naming the dead process, the glibc mutex comes back EOWNERDEAD, and the message is
// delivered exactly once more unless the child had begun its ack (then at most once).
TEST_CASE(
    "a process killed at any instruction of a try-once leased get and its ack, holding other "
    "robust locks, leaves the locks sane and the message delivered once",
    "[fault][lease][lock][redteam]") {
  kill_at_every_stride(30, [](long at) {
    {
      // The same path once in this process first, so that the child inherits the symbols it
      // calls already bound (lazy binding would lengthen only the first sequence).
      Queue<long> warm(small_leases());
      warm.put(1);
      warm.get_leased().ack();
    }
    Queue<long> q(small_leases());
    Queue<long> outer;
    q.put(7);
    Header hq(q.name()), houter(outer.name());
    GlibcRobustMutexes glibc;
    auto* acking = static_cast<std::atomic<int>*>(mmap(
        nullptr, sizeof(std::atomic<int>), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
    REQUIRE(acking != MAP_FAILED);
    new (acking) std::atomic<int>(0);
    SteppedChild child(
        [&] {
          // Identify this thread and this process as a lease holder (a /proc read whose length
          // varies) before the stop: not the path under attack. The get's lease-area check
          // (reclaim_if_due) then runs in every sequence: nobody looked in this process before.
          (void)shmq::detail::this_holder_word();
          outer.put(0);
          (void)outer.get();
          if (pthread_mutex_lock(&glibc.m[0]) != 0) throw std::runtime_error("lock failed");
        },
        [&] {
          inside_put_with(outer, [&] {
            auto lease = q.get_leased();  // the ring has a message and no redelivery: at once
            if (lease.value() != 7) throw std::runtime_error("wrong message");
            acking->store(1);
            lease.ack();
          });
        });
    const bool finished = child.finished_within(at);
    INFO("killed after " << at << " instructions");
    check_locks_left_to_the_kernel({&hq, &houter}, glibc, finished);
    // 7 comes back once (from the ring, a settled take, or the dead holder's lease) unless the
    // child got as far as its ack; 9, put now, comes exactly once.
    q.put(9);
    auto seen = ack_leases(q, {7, 9}, [&](auto& n) {
      return n[9] == 0 || (n[7] == 0 && acking->load() == 0);
    });
    CHECK(seen[9] == 1);
    CHECK(seen[7] <= 1);
    if (acking->load() == 0) CHECK(seen[7] == 1);
    if (finished) CHECK(seen[7] == 0);
    CHECK(q.stats().leases.empty());
    munmap(acking, sizeof(std::atomic<int>));
    // The outer queue works, its lock taken over if it had to be.
    while (outer.try_get()) {
    }
    outer.put(3, 1s);
    REQUIRE(outer.get(1s) == 3);
    return finished ? child.stepped() : -1L;
  });
}

// As for the single put and get: every way out of a single leased get leaves the robust list
// idle and the locks free: a lease taken at once, acked and nacked; a redelivery (the general
// path); no message; no free slot; hostile cursors; shut down; closed.
TEST_CASE("every way out of a single leased get leaves the robust list idle",
          "[lease][lock][redteam]") {
  std::thread worker([] {
    QueueOptions options;
    options.max_leases = 1;
    options.lease_message_bytes = 16;
    Queue<long> q(options);
    Header h(q.name());
    const auto idle = [&] {
      return robust_list_is_idle() && holder_of(h->put_lock) == 0 && holder_of(h->get_lock) == 0;
    };
    CHECK(idle());
    q.put(1);
    q.put(2);
    {
      auto lease = q.get_leased();  // at once
      CHECK(idle());
      CHECK(lease.value() == 1);
      CHECK_FALSE(q.try_get_leased());  // no free slot
      CHECK(idle());
      CHECK_THROWS_AS(q.get_leased_nowait(), shmq::Empty);
      CHECK(idle());
      lease.nack();
    }
    {
      auto lease = q.get_leased(1s);  // the redelivery: the general path
      CHECK(lease.value() == 1);
      CHECK(lease.deliveries() == 2);
      CHECK(idle());
      lease.ack();
    }
    CHECK(q.get_leased_nowait().value() == 2);  // destroyed unacked: nacked
    CHECK(idle());
    {
      auto lease = q.try_get_leased();  // the nacked one again
      REQUIRE(lease);
      CHECK(lease->value() == 2);
      CHECK(idle());
      lease->ack();
    }
    CHECK_FALSE(q.try_get_leased());  // empty
    CHECK(idle());
    CHECK_THROWS_AS(q.get_leased(-1s), shmq::Empty);
    CHECK(idle());
    // Hostile cursors: a tail offset past the ring makes the take report corruption.
    q.put(3);
    const std::uint64_t tail = h->tail.load();
    h->tail.store(tail | 0xFFFFFFF0u);
    CHECK_THROWS_AS(q.try_get_leased(), shmq::Incompatible);
    CHECK(idle());
    h->tail.store(tail);
    h->tail_seen = tail;
    {
      auto lease = q.get_leased(1s);
      CHECK(lease.value() == 3);
      lease.ack();
    }
    CHECK(idle());
    q.shutdown(true);
    CHECK_THROWS_AS(q.get_leased(), shmq::ShutDown);
    CHECK(idle());
    q.close();
    CHECK_THROWS_AS(q.try_get_leased(), shmq::Closed);
    CHECK(idle());
  });
  worker.join();
}
