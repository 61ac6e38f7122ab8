// shmq::Notifier: a descriptor for event loops, driven here from poll and epoll.
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "shmq/shmq.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shmq::Notifier;
using shmq::Process;
using shmq::Queue;
using shmq::test::Child;

namespace {
using Ready = std::vector<std::size_t>;

bool readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, timeout_ms) == 1;
}
}  // namespace

TEST_CASE("a notifier's descriptor is readable while an object is ready, until ready() finds none",
          "[notifier]") {
  Queue<int> q1, q2;
  Notifier n({q1, q2});
  CHECK_FALSE(readable(n.fd(), 50));
  CHECK(n.ready().empty());
  q2.put(1);
  CHECK(readable(n.fd(), 10000));
  CHECK(readable(n.fd(), 0));  // stays readable until read
  CHECK(n.ready() == Ready{1});
  // Re-armed with q2 still holding its message: readable again (level-triggered per object).
  CHECK(readable(n.fd(), 10000));
  CHECK(q2.get() == 1);
  CHECK(n.ready().empty());
  CHECK_FALSE(readable(n.fd(), 50));
  q1.shutdown();
  CHECK(readable(n.fd(), 10000));
  CHECK(n.ready() == Ready{0});
}

TEST_CASE("an epoll loop served by a notifier receives everything from queues and a connection",
          "[notifier][pipe]") {
  // Level-triggered: one ready() per report. Edge-triggered: ready() until it returns nothing
  // before waiting again, as a socket is read until EAGAIN.
  const bool edge = GENERATE(false, true);
  CAPTURE(edge);
  Queue<int> q1, q2, q3;
  auto [a, b] = shmq::Pipe<int>();
  Child producer([&] {
    for (int i = 0; i < 300; ++i) {
      (i % 3 == 0 ? q1 : i % 3 == 1 ? q2 : q3).put(i);
      if (i % 10 == 0) b.send(-i);
    }
    b.close();
  });
  b.close();
  Notifier n({q1, q2, q3, a});
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  REQUIRE(ep >= 0);
  epoll_event in{};
  in.events = EPOLLIN | (edge ? EPOLLET : 0u);
  REQUIRE(epoll_ctl(ep, EPOLL_CTL_ADD, n.fd(), &in) == 0);
  std::set<int> got;
  bool eof = false;
  Queue<int>* queues[] = {&q1, &q2, &q3};
  while (!(eof && got.size() == 330)) {
    epoll_event ev;
    REQUIRE(epoll_wait(ep, &ev, 1, 10000) == 1);
    // (Once the stream has ended, the connection stays ready: stop when everything is in.)
    for (Ready ready = n.ready(); !ready.empty() && !(eof && got.size() == 330);
         ready = edge ? n.ready() : Ready{}) {
      for (std::size_t i : ready) {
        // One message per object and report: what is left must be reported again.
        if (i < 3) {
          if (auto v = queues[i]->try_get()) got.insert(*v);
        } else {
          try {
            if (a.poll()) got.insert(a.recv() - 1000);
          } catch (const shmq::EOFError&) {
            eof = true;
          }
        }
      }
    }
  }
  close(ep);
  CHECK(got.size() == 330);
  CHECK(producer.succeeded());
}

TEST_CASE("a notifier fires when a watched process ends or a connection's peer is killed",
          "[notifier][process][fault]") {
  Process p([] { pause(); });
  p.start();
  auto [a, b] = shmq::Pipe<int>();
  Child peer([&] {
    b.send(1);
    pause();
  });
  CHECK(a.recv() == 1);
  Notifier n({p, a});
  CHECK_FALSE(readable(n.fd(), 50));
  p.kill();
  CHECK(readable(n.fd(), 10000));
  CHECK(n.ready() == Ready{0});
  peer.kill(SIGKILL);
  peer.wait_status();
  // The process keeps the descriptor firing; each firing, look until the peer's death shows.
  CHECK(shmq::test::eventually([&] { return readable(n.fd(), 10000) && n.ready() == Ready{0, 1}; }));
  CHECK_THROWS_AS(a.recv(), shmq::EOFError);
  p.join();
}

TEST_CASE("a notifier destroyed while its descriptor is readable stops its helper", "[notifier]") {
  Queue<int> q;
  q.put(1);
  for (int i = 0; i < 50; ++i) {
    Notifier n({q});
    if (i % 2 == 0) CHECK(readable(n.fd(), 10000));
  }
}

TEST_CASE("in a forked child an inherited notifier refuses ready() and is destroyed safely",
          "[notifier]") {
  Queue<int> q;
  Notifier n({q});
  Child child([&] {
    bool refused = false;
    try {
      n.ready();
    } catch (const shmq::InvalidArgument&) {
      refused = true;
    }
    if (!refused) throw std::runtime_error("ready() worked in a child");
  });
  CHECK(child.succeeded());
  q.put(1);
  CHECK(readable(n.fd(), 10000));
  CHECK(n.ready() == Ready{0});
}

namespace {
shmq::detail::EventCount& not_empty_of(const Queue<int>& q) {
  return shmq::detail::QueueAccess::segment(q).ring().not_empty();
}
// The pid each listener slot of the queue's not_empty names (0: free).
std::vector<pid_t> listener_pids(const Queue<int>& q) {
  std::vector<pid_t> pids;
  for (const auto& slot : not_empty_of(q).listeners) {
    pids.push_back(static_cast<pid_t>(slot.owner.load() >> 32));
  }
  return pids;
}
std::size_t open_descriptors() {
  const auto all = std::filesystem::directory_iterator("/proc/self/fd");
  return static_cast<std::size_t>(std::distance(begin(all), end(all)));
}
}  // namespace

TEST_CASE("a producer in another process writes into the notifier's descriptor itself",
          "[notifier][fault]") {
  Queue<int> q;
  Notifier n({q});
  CHECK(listener_pids(q) == std::vector<pid_t>{getpid(), 0, 0});
  // A wake-up with nothing queued: the helper thread, which rings only for a ready object, has
  // no reason to; only the producer's own write can make the descriptor readable.
  Child producer([&] { shmq::detail::notify(not_empty_of(q)); });
  CHECK(producer.succeeded());
  CHECK(readable(n.fd(), 10000));
  CHECK(n.ready().empty());
  CHECK_FALSE(readable(n.fd(), 50));
}

namespace {
// A producer in another process that first does `hinder`, then puts: the notifier fires anyway,
// through its helper thread's look (within kLongestSleep).
template <class Hinder>
void check_helper_delivers(Queue<int>& q, Notifier& n, Hinder&& hinder) {
  Child producer([&] {
    hinder();
    q.put(7);
  });
  CHECK(producer.succeeded());
  CHECK(readable(n.fd(), 10000));
  CHECK(n.ready() == Ready{0});
  CHECK(q.get() == 7);
}
}  // namespace

TEST_CASE("a producer killed inside its wake-up of a notifier costs at most a bounded delay",
          "[notifier][fault]") {
  Queue<int> q;
  Notifier n({q});
  // What a producer killed inside wake() leaves: the sleepers taken off the count (a new epoch)
  // and no byte written. The put that follows then sees no sleeper and writes nothing either.
  check_helper_delivers(q, n, [&] {
    auto& sleep = not_empty_of(q).sleep;
    std::uint64_t now = sleep.load();
    if (shmq::detail::listeners_of(now) != 1 || shmq::detail::sleepers_of(now) != 0) {
      throw std::runtime_error("the notifier is not counted as the one listener");
    }
    sleep.store(std::uint64_t{shmq::detail::epoch_of(now) + 1u} << 32);
  });
}

TEST_CASE("producers killed at random points while a notifier serves their queue wedge nothing",
          "[notifier][fault]") {
  Queue<int> q;
  Notifier n({q});
  for (int round = 0; round < 20; ++round) {
    Child producer([&] {
      for (int i = 0;; ++i) q.put(i);
    });
    CHECK(readable(n.fd(), 10000));
    for (int i = 0; i < round * 5; ++i) n.ready();  // a random point in the producer's loop
    producer.kill(SIGKILL);
    producer.wait_status();
    while (q.try_get()) {
    }
    n.ready();
    // Nothing left: a put now must reach the descriptor at once, through the producer's write.
    CHECK_FALSE(readable(n.fd(), 0));
    Child next([&] { q.put(-1); });
    CHECK(next.succeeded());
    CHECK(readable(n.fd(), 10000));
    CHECK(n.ready() == Ready{0});
    CHECK(q.get() == -1);
  }
}

namespace {
// A notifier in a child that watches `q`, is served once (so that this process keeps an end of its
// pipe) and is then SIGKILLed: its slot is left behind, still counted as taken.
void kill_a_served_notifier(Queue<int>& q) {
  Queue<int> ack;
  Child notifier([&] {
    Notifier n({q});
    ack.put(1);
    if (!readable(n.fd(), 10000) || n.ready() != Ready{0}) throw std::runtime_error("not woken");
    if (q.get() != 1 || !n.ready().empty()) throw std::runtime_error("not emptied");  // counted again
    ack.put(2);
    pause();
  });
  CHECK(ack.get() == 1);
  const pid_t pid = notifier.pid();
  CHECK(listener_pids(q)[0] == pid);
  q.put(1);  // rings the child's pipe, keeping an end of it
  CHECK(ack.get() == 2);
  notifier.kill(SIGKILL);
  notifier.wait_status();
  CHECK(listener_pids(q)[0] == pid);
}

// Three notifiers in this process, holding the queue's three slots: a put in another process
// reaches each of them.
void check_slots_serve(Queue<int>& q, Notifier& n1, Notifier& n2, Notifier& n3) {
  CHECK(listener_pids(q) == std::vector<pid_t>{getpid(), getpid(), getpid()});
  Child producer([&] { q.put(1); });
  CHECK(producer.succeeded());
  for (Notifier* n : {&n1, &n2, &n3}) {
    CHECK(readable(n->fd(), 10000));
    CHECK(n->ready() == Ready{0});
  }
}
}  // namespace

TEST_CASE("a producer ringing a killed notifier's pipe survives, with SIGPIPE at its default",
          "[notifier][fault]") {
  struct sigaction dfl {}, old {};
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGPIPE, &dfl, &old);
  Queue<int> q;
  kill_a_served_notifier(q);
  for (int i = 0; i < 3; ++i) q.put(i);  // the first clears the dead one's count and rings it
  CHECK(q.qsize() == 3);
  sigaction(SIGPIPE, &old, nullptr);
}

TEST_CASE("a killed notifier's slot is released for a new notifier that finds every slot taken",
          "[notifier][fault]") {
  Queue<int> q;
  kill_a_served_notifier(q);
  Notifier n1({q}), n2({q});  // the free slots
  CHECK(listener_pids(q) != std::vector<pid_t>{getpid(), getpid(), getpid()});
  Notifier n3({q});  // none free: looks at each, releases the dead one's
  check_slots_serve(q, n1, n2, n3);
}

TEST_CASE("a killed notifier's slot is released by a producer that finds its pipe full or gone",
          "[notifier][fault]") {
  Queue<int> q;
  SECTION("the kept end: the pipe fills up") {
    kill_a_served_notifier(q);
    Notifier live({q});  // counted again each round, so that each put rings both pipes
    for (int i = 0; listener_pids(q)[0] != 0 && i < (1 << 17); ++i) {
      q.put(i);
      q.get();
      REQUIRE(live.ready().empty());
    }
    CHECK(listener_pids(q) == std::vector<pid_t>{0, getpid(), 0});
  }
  SECTION("a producer without a kept end: the descriptor is gone") {
    Queue<int> ack;
    Child notifier([&] {
      Notifier n({q});
      ack.put(3);
      pause();
    });
    CHECK(ack.get() == 3);
    notifier.kill(SIGKILL);
    notifier.wait_status();
    Child producer([&] { q.put(3); });  // still counted: wakes it, opening /proc/PID/fd/N
    CHECK(producer.succeeded());
    CHECK(listener_pids(q) == std::vector<pid_t>{0, 0, 0});
  }
}

TEST_CASE("a producer keeps one write end per notifier and closes it with its queue handle",
          "[notifier]") {
  const std::size_t before = open_descriptors();
  {
    Queue<int> q;
    Notifier n({q});
    const std::size_t with_notifier = open_descriptors();
    for (int i = 0; i < 100; ++i) {
      q.put(i);
      CHECK(readable(n.fd(), 10000));
      CHECK(n.ready() == Ready{0});
      CHECK(q.get() == i);
      n.ready();
    }
    CHECK(open_descriptors() <= with_notifier + 1);  // the kept write end, not one per put
  }
  CHECK(open_descriptors() == before);
}

TEST_CASE("more notifiers than a queue has slots are all woken", "[notifier]") {
  Queue<int> q;
  std::vector<std::unique_ptr<Notifier>> notifiers;
  for (int i = 0; i < 5; ++i) notifiers.push_back(std::make_unique<Notifier>(std::vector<shmq::Waitable>{q}));
  CHECK(listener_pids(q) == std::vector<pid_t>{getpid(), getpid(), getpid()});
  Child producer([&] { q.put(1); });
  CHECK(producer.succeeded());
  for (auto& n : notifiers) {
    CHECK(readable(n->fd(), 10000));
    CHECK(n->ready() == Ready{0});
  }
  notifiers.clear();
  CHECK(listener_pids(q) == std::vector<pid_t>{0, 0, 0});
}

TEST_CASE("a notifier fires when another process sets a watched event", "[notifier][sync]") {
  shmq::Event e;
  Queue<int> go;
  Notifier n({e});
  CHECK_FALSE(readable(n.fd(), 50));
  Child child([&] {
    go.get();
    e.set();
  });
  go.put(0);
  CHECK(readable(n.fd(), 10000));
  CHECK(n.ready() == Ready{0});
  CHECK(child.succeeded());
  e.clear();
  CHECK(n.ready().empty());
  CHECK_FALSE(readable(n.fd(), 50));
}

TEST_CASE("notifiers SIGKILLed at random points wedge no producer and leave their slots reusable",
          "[notifier][fault]") {
  Queue<int> q;
  std::mt19937 random(20261128);
  for (int round = 0; round < 20; ++round) {
    Child notifiers([&] {
      for (;;) {  // made, served and destroyed over and over: killed somewhere in there
        Notifier n({q});
        for (int i = 0; i < 3; ++i) {
          readable(n.fd(), 1);
          n.ready();
          while (q.try_get()) {
          }
        }
      }
    });
    Child producer([&] {
      for (int i = 0;; ++i) q.put(i);
    });
    usleep(std::uniform_int_distribution<useconds_t>(0, 20000)(random));
    notifiers.kill(SIGKILL);
    notifiers.wait_status();
    producer.kill(SIGKILL);
    producer.wait_status();
  }
  while (q.try_get()) {
  }
  // Whatever the dead left in the slots: three new notifiers get them, and a put reaches each.
  Notifier n1({q}), n2({q}), n3({q});
  check_slots_serve(q, n1, n2, n3);
}

TEST_CASE("a producer out of descriptors still reaches the notifier, through its helper",
          "[notifier][fault]") {
  Queue<int> q;
  Notifier n({q});
  check_helper_delivers(q, n, [] {
    rlimit none{0, 0};
    getrlimit(RLIMIT_NOFILE, &none);
    none.rlim_cur = 0;  // no open() succeeds: the pipe cannot be reopened
    if (setrlimit(RLIMIT_NOFILE, &none) != 0) throw std::runtime_error("setrlimit");
  });
}

TEST_CASE("a notifier that cannot make its pipe throws Error and leaves no slot",
          "[notifier][fault]") {
#if defined(__SANITIZE_ADDRESS__)
  // As "running out of file descriptors is a clear error": our ASan build includes UBSan, whose
  // vptr check probes memory through a pipe of its own; with no descriptor left it reports the
  // Error under construction as an invalid object. The plain and TSan builds run this test.
  WARN("skipped under UBSan: its vptr check cannot run without file descriptors");
  return;
#endif
  Queue<int> q;
  rlimit old{};
  REQUIRE(getrlimit(RLIMIT_NOFILE, &old) == 0);
  rlimit tight = old;
  tight.rlim_cur = 0;  // no new descriptor at all
  REQUIRE(setrlimit(RLIMIT_NOFILE, &tight) == 0);
  CHECK_THROWS_AS(Notifier({q}), shmq::Error);
  REQUIRE(setrlimit(RLIMIT_NOFILE, &old) == 0);
  CHECK(listener_pids(q) == std::vector<pid_t>{0, 0, 0});
}
