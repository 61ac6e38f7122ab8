// shmq::Notifier: a descriptor for event loops, driven here from poll and epoll.
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
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

TEST_CASE("a notifier's descriptor is readable while an object is ready, until it is read", "[notifier]") {
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
  in.events = EPOLLIN | EPOLLET;  // each firing is a new write: edge-triggered works
  REQUIRE(epoll_ctl(ep, EPOLL_CTL_ADD, n.fd(), &in) == 0);
  std::set<int> got;
  bool eof = false;
  Queue<int>* queues[] = {&q1, &q2, &q3};
  while (!(eof && got.size() == 330)) {
    epoll_event ev;
    REQUIRE(epoll_wait(ep, &ev, 1, 10000) == 1);
    for (std::size_t i : n.ready()) {
      if (i < 3) {
        while (auto v = queues[i]->try_get()) got.insert(*v);
      } else {
        try {
          while (a.poll()) got.insert(a.recv() - 1000);
        } catch (const shmq::EOFError&) {
          eof = true;
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
