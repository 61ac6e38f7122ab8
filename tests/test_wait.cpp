// shmq::wait over every kind of object, Process::sentinel and Process::close; the CPU an idle
// wait and an idle Notifier use.
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <thread>
#include <vector>

#include "shmq/shmq.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shmq::Connection;
using shmq::Process;
using shmq::Queue;
using shmq::test::Child;

namespace {
using Ready = std::vector<std::size_t>;

double cpu_seconds() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}
}  // namespace

TEST_CASE("wait returns the queues that have a message or are shut down", "[wait]") {
  Queue<int> q1, q2, q3;
  CHECK(shmq::wait({q1, q2, q3}, 0ms).empty());
  CHECK(shmq::wait({q1, q2, q3}, 20ms).empty());
  q2.put(1);
  CHECK(shmq::wait({q1, q2, q3}) == Ready{1});
  q3.shutdown();
  CHECK(shmq::wait({q1, q2, q3}, 0ms) == Ready{1, 2});
  CHECK(q2.get() == 1);
  CHECK(shmq::wait({q1, q2, q3}, -5ms) == Ready{2});
  shmq::JoinableQueue<int> jq;
  jq.put(3);
  CHECK(shmq::wait({q1, jq}) == Ready{1});
}

TEST_CASE("wait wakes when another process puts on any of many queues", "[wait][process]") {
  std::vector<Queue<int>> queues(16);
  std::vector<shmq::Waitable> all(queues.begin(), queues.end());
  Queue<int> go;
  Child child([&] {
    go.get();
    queues[11].put(11);
  });
  go.put(0);
  CHECK(shmq::wait(all, 10s) == Ready{11});
  CHECK(child.succeeded());
}

TEST_CASE("wait returns a connection with a message, and one whose peer is gone", "[wait][pipe]") {
  auto [a, b] = shmq::Pipe<int>();
  auto [c, d] = shmq::Pipe<int>();
  Queue<int> q;
  CHECK(shmq::wait({a, c, q}, 0ms).empty());
  b.send(1);
  CHECK(shmq::wait({a, c, q}) == Ready{0});
  CHECK(a.recv() == 1);
  Child child([&] {
    d.send(5);  // used, then killed: the parent's unused copy of d does not count
    pause();
  });
  CHECK(shmq::wait({a, c}, 10s) == Ready{1});
  CHECK(c.recv() == 5);
  child.kill(SIGKILL);
  child.wait_status();
  CHECK(shmq::wait({a, c}, 10s) == Ready{1});  // noticed within 100 ms
  CHECK_THROWS_AS(c.recv(), shmq::EOFError);
  auto [r, w] = shmq::Pipe<int>(false);
  CHECK_THROWS_AS(shmq::wait({w}), shmq::InvalidArgument);
  r.close();
  CHECK_THROWS_AS(shmq::wait({r}), shmq::Closed);
}

TEST_CASE("wait returns a process once it has ended, however it ended", "[wait][process]") {
  Queue<int> go;
  Process quick([&] { go.get(); });
  Process killed([] { pause(); });
  Process raising([] { throw std::runtime_error("raised"); });
  Process unstarted([] {});
  CHECK_THROWS_AS(shmq::wait({unstarted}), shmq::InvalidArgument);
  quick.start();
  killed.start();
  CHECK(shmq::wait({quick, killed, go}, 0ms).empty());
  go.put(1);
  CHECK(shmq::wait({quick, killed}, 10s) == Ready{0});
  killed.kill();
  CHECK(shmq::wait({killed}, 10s) == Ready{0});
  raising.start();
  CHECK(shmq::wait({raising}, 10s) == Ready{0});
  CHECK(shmq::wait({quick, killed, raising}) == Ready{0, 1, 2});
  quick.join();  // reaped: still ready, the sentinel stays valid until close()
  CHECK(shmq::wait({quick}, 0ms) == Ready{0});
  killed.join();
  raising.join();
  CHECK(killed.exitcode() == -SIGKILL);
}

TEST_CASE("two threads waiting on one process are both woken when it is killed", "[wait][process]") {
  Process p([] { pause(); });
  p.start();
  Ready first, second;
  std::thread t1([&] { first = shmq::wait({p}, 10s); });
  std::thread t2([&] { second = shmq::wait({p}, 10s); });
  p.kill();
  t1.join();
  t2.join();
  CHECK(first == Ready{0});
  CHECK(second == Ready{0});
  p.join();
}

TEST_CASE("an idle wait uses no CPU", "[wait]") {
  Queue<int> q1, q2;
  Process p([] { pause(); });
  p.start();
  auto [a, b] = shmq::Pipe<int>();
  const double before = cpu_seconds();
  CHECK(shmq::wait({q1, q2, p, a}, 600ms).empty());
  // The polling before the sleep, and a look every 100 ms: far under 10% of the 600 ms.
  CHECK(cpu_seconds() - before < 0.06);
  p.kill();
  p.join();
}

TEST_CASE("an idle notifier uses no CPU and is destroyed promptly", "[notifier]") {
  Queue<int> q;
  const double before = cpu_seconds();
  {
    shmq::Notifier n({q});
    pollfd readable{n.fd(), POLLIN, 0};
    CHECK(poll(&readable, 1, 500) == 0);
  }
  CHECK(cpu_seconds() - before < 0.05);  // 10% of the 500 ms, with room for the helper's polling
}

TEST_CASE("a waiter killed inside wait leaves nothing stuck", "[wait][fault]") {
  Queue<int> q1, q2, ready;
  for (int round = 0; round < 5; ++round) {
    Child waiter([&] {
      ready.put(1);
      shmq::wait({q1, q2});
    });
    ready.get();
    waiter.kill(SIGKILL);
    waiter.wait_status();
  }
  Child putter([&] { q2.put(7); });
  CHECK(shmq::wait({q1, q2}, 10s) == Ready{1});
  CHECK(q2.get(1s) == 7);
  CHECK(putter.succeeded());
}

TEST_CASE("wait refuses more objects than futex_waitv takes", "[wait]") {
  Queue<int> q;
  std::vector<shmq::Waitable> many(129, q);
  CHECK_THROWS_AS(shmq::wait(many, 0ms), shmq::InvalidArgument);
  many.pop_back();
  CHECK(shmq::wait(many, 0ms).empty());
}

TEST_CASE("Process::sentinel is a pidfd that becomes readable when the child ends; close releases it",
          "[wait][process]") {
  Process never([] {});
  CHECK_THROWS_AS(never.sentinel(), shmq::InvalidArgument);
  never.close();  // never started: nothing to release
  Queue<int> go;
  Process p([&] { go.get(); });
  p.start();
  const int fd = p.sentinel();
  pollfd ended{fd, POLLIN, 0};
  CHECK(poll(&ended, 1, 0) == 0);
  CHECK_THROWS_AS(p.close(), shmq::InvalidArgument);  // still running
  go.put(1);
  CHECK(poll(&ended, 1, 10000) == 1);
  p.join();
  CHECK(poll(&ended, 1, 0) == 1);  // still valid once reaped
  p.close();
  p.close();
  CHECK_THROWS_AS(p.sentinel(), shmq::InvalidArgument);
  CHECK_THROWS_AS(shmq::wait({p}), shmq::InvalidArgument);
  CHECK(p.exitcode() == 0);
}

TEST_CASE("wait returns an event once another process sets it, and while it stays set",
          "[wait][sync][process]") {
  shmq::Event e;
  Queue<int> q, go;
  CHECK(shmq::wait({q, e}, 0ms).empty());
  Child child([&] {
    go.get();
    e.set();
  });
  go.put(0);
  CHECK(shmq::wait({q, e}, 10s) == Ready{1});
  CHECK(child.succeeded());
  CHECK(shmq::wait({q, e}, 0ms) == Ready{1});  // level: ready while set
  e.clear();
  CHECK(shmq::wait({q, e}, 20ms).empty());
}

TEST_CASE("wait returns a queue whose nacked lease waits for redelivery", "[wait][lease]") {
  shmq::QueueOptions options;
  options.max_leases = 2;
  Queue<int> q(options);
  q.put(7);
  {
    auto lease = q.get_leased();
    CHECK(shmq::wait({q}, 0ms).empty());  // the ring is empty and the message is held
    lease.nack();
  }
  CHECK(shmq::wait({q}, 10s) == Ready{0});
  CHECK(q.get() == 7);
}

TEST_CASE("wait on the same object listed many times reports every copy, and wakes on a put",
          "[wait][attack]") {
  Queue<int> q;
  std::vector<shmq::Waitable> same(128, shmq::Waitable(q));
  CHECK(shmq::wait(same, 0ms).empty());
  std::thread putter([&] {
    std::this_thread::sleep_for(50ms);  // let the waiter reach futex_waitv (not a sync: a delay)
    q.put(1);
  });
  const Ready ready = shmq::wait(same, 10s);
  putter.join();
  CHECK(ready.size() == 128);
  auto [a, b] = shmq::Pipe<int>();
  b.send(7);
  CHECK(shmq::wait({a, a, q}, 0ms) == Ready{0, 1, 2});
}

TEST_CASE("wait on a joined process is ready at once; on a closed one it refuses", "[wait][attack]") {
  Process p([] {});
  p.start();
  p.join();
  CHECK(shmq::wait({p, p}, 10s) == Ready{0, 1});
  p.close();
  CHECK_THROWS_AS(shmq::wait({p}, 0ms), shmq::InvalidArgument);
}
