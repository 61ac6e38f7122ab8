// shmq::Pipe and Connection: every call, end of stream on close and on the death of the peer,
// the classic fork patterns (closing unused ends, or not), and kills at random points.
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <optional>
#include <random>
#include <thread>
#include <string>
#include <vector>

#include "shmq/shmq.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shmq::Connection;
using shmq::Process;
using shmq::test::Child;

TEST_CASE("a duplex pipe carries values both ways, in order", "[pipe]") {
  auto [a, b] = shmq::Pipe<std::string>();
  CHECK(a.readable());
  CHECK(a.writable());
  CHECK_FALSE(a.poll());
  a.send("one");
  a.send("two");
  b.send("back");
  CHECK(b.poll());
  CHECK(b.recv() == "one");
  CHECK(b.recv(1s) == "two");
  CHECK(a.recv() == "back");
  CHECK_FALSE(a.poll(10ms));
  CHECK_THROWS_AS(a.recv(10ms), shmq::TimeoutError);
  CHECK_THROWS_AS(a.recv(0ms), shmq::TimeoutError);
}

TEST_CASE("send_bytes and recv_bytes carry a message's encoded bytes", "[pipe]") {
  auto [a, b] = shmq::Pipe<std::string>();
  a.send_bytes("raw bytes");
  a.send("typed");
  a.send_bytes(shmq::detail::encode_to_string(std::string("encoded")));
  a.send_bytes("not an encoded string");
  a.send("after");
  CHECK(b.recv_bytes() == "raw bytes");
  CHECK(b.recv_bytes() == shmq::detail::encode_to_string(std::string("typed")));
  CHECK(b.recv() == "encoded");
  CHECK_THROWS_AS(b.recv(), shmq::DecodeError);  // dropped, as Queue drops it
  CHECK(b.recv() == "after");
  auto [c, d] = shmq::Pipe<int>();
  CHECK_THROWS_AS(c.send_bytes("abc"), shmq::InvalidArgument);
  const int v = 42;
  c.send_bytes(std::string(reinterpret_cast<const char*>(&v), sizeof v));
  CHECK(d.recv() == 42);
}

TEST_CASE("a one-way pipe's first end only receives and its second only sends", "[pipe]") {
  auto [r, w] = shmq::Pipe<int>(false);
  CHECK(r.readable());
  CHECK_FALSE(r.writable());
  CHECK_FALSE(w.readable());
  CHECK(w.writable());
  w.send(7);
  CHECK(r.recv() == 7);
  CHECK_THROWS_AS(r.send(1), shmq::InvalidArgument);
  CHECK_THROWS_AS(w.recv(), shmq::InvalidArgument);
  CHECK_THROWS_AS(w.poll(), shmq::InvalidArgument);
}

TEST_CASE("after the peer closes, recv drains what was sent, then throws EOFError; send throws BrokenPipeError",
          "[pipe]") {
  auto [a, b] = shmq::Pipe<int>();
  b.send(1);
  b.send(2);
  b.close();
  CHECK(b.closed());
  CHECK_THROWS_AS(b.send(3), shmq::Closed);
  CHECK_THROWS_AS(b.recv(), shmq::Closed);
  CHECK(a.poll());
  CHECK(a.recv() == 1);
  CHECK(a.recv() == 2);
  CHECK(a.poll());  // end of stream is ready
  CHECK_THROWS_AS(a.recv(10s), shmq::EOFError);
  CHECK_THROWS_AS(a.recv_bytes(), shmq::EOFError);
  CHECK_THROWS_AS(a.send(4), shmq::BrokenPipeError);
}

TEST_CASE("copies share an end: closing one closes them all, the last one's destruction closes it",
          "[pipe]") {
  auto [a, b] = shmq::Pipe<int>();
  {
    Connection<int> copy = b;
    copy.send(5);
  }
  CHECK(a.recv() == 5);  // b still holds the end
  CHECK_FALSE(a.poll());
  Connection<int> copy = b;
  copy.close();
  CHECK(b.closed());
  CHECK_THROWS_AS(a.recv(10s), shmq::EOFError);
  {
    auto [c, d] = shmq::Pipe<int>();
    auto keep = c;
    {
      auto gone = std::move(d);
    }
    CHECK_THROWS_AS(keep.recv(), shmq::EOFError);
  }
}

TEST_CASE("a child's sends arrive and its exit ends the stream, whether or not the parent closed its copy",
          "[pipe][process]") {
  const bool parent_closes = GENERATE(true, false);
  auto [a, b] = shmq::Pipe<int>();
  Process p(
      [](Connection<int> out) {
        for (int i = 0; i < 100; ++i) out.send(i);
      },
      b);
  p.start();
  if (parent_closes) b.close();
  for (int i = 0; i < 100; ++i) REQUIRE(a.recv() == i);
  CHECK_THROWS_AS(a.recv(10s), shmq::EOFError);
  p.join();
  CHECK(p.exitcode() == 0);
}

TEST_CASE("the parent closing its copy right after the fork does not end the child's stream",
          "[pipe][process]") {
  for (int round = 0; round < 20; ++round) {
    auto [a, b] = shmq::Pipe<int>();
    Process p([round](Connection<int> out) { out.send(round); }, b);
    p.start();
    b.close();  // at once: the child may not have run a single instruction yet
    REQUIRE(a.recv() == round);
    REQUIRE_THROWS_AS(a.recv(10s), shmq::EOFError);
    p.join();
  }
}

TEST_CASE("a child that never uses its end and exits ends the stream once the parent closed its copy",
          "[pipe][process]") {
  auto [a, b] = shmq::Pipe<int>();
  Process p([](Connection<int>) {}, b);
  p.start();
  b.close();
  CHECK_THROWS_AS(a.recv(10s), shmq::EOFError);
  p.join();
}

TEST_CASE("a child's request and the parent's reply travel over one duplex pipe", "[pipe][process]") {
  auto [a, b] = shmq::Pipe<std::string>();
  Process p(
      [](Connection<std::string> c) {
        c.send("ping");
        if (c.recv() != "pong") throw std::runtime_error("bad reply");
        c.close();
      },
      b);
  p.start();
  b.close();
  CHECK(a.recv() == "ping");
  a.send("pong");
  CHECK_THROWS_AS(a.recv(10s), shmq::EOFError);
  p.join();
  CHECK(p.exitcode() == 0);
}

TEST_CASE("the parent's end closing makes the child's recv throw EOFError and its send BrokenPipeError",
          "[pipe][process]") {
  auto [a, b] = shmq::Pipe<int>();
  Process p(
      [](Connection<int> c) {
        if (c.recv() != 1) return 2;
        try {
          c.recv();
          return 3;
        } catch (const shmq::EOFError&) {
        }
        try {
          c.send(9);
          return 4;
        } catch (const shmq::BrokenPipeError&) {
        }
        return 0;
      },
      b);
  p.start();
  b.close();
  a.send(1);
  a.close();
  p.join();
  CHECK(p.exitcode() == 0);
}

TEST_CASE("a peer SIGKILLed while blocked in recv makes sends fail with BrokenPipeError, never hang",
          "[pipe][process][fault]") {
  shmq::QueueOptions small;
  small.capacity_bytes = 4096;
  auto [a, b] = shmq::Pipe<int>(true, small);
  Process p(
      [](Connection<int> c) {
        c.send(0);  // used: the parent's unused copy does not count
        c.recv();
      },
      b);
  p.start();
  CHECK(a.recv() == 0);
  p.kill();
  p.join();
  // The pipe fills (4096 bytes), then a send waits, looks at the holders and finds none.
  CHECK_THROWS_AS(
      [&] {
        for (;;) a.send(1);
      }(),
      shmq::BrokenPipeError);
}

TEST_CASE("a sender SIGKILLed at a random point: the receiver gets a prefix in order, then EOFError",
          "[pipe][process][fault]") {
  std::mt19937 random(std::random_device{}());
  for (int round = 0; round < 8; ++round) {
    const bool parent_closes = round % 2 == 0;
    auto [a, b] = shmq::Pipe<std::vector<int>>();
    Child child([&] {
      for (int i = 0;; ++i) b.send(std::vector<int>(1 + i % 50, i));
    });
    int expect = 0;
    if (parent_closes) {
      b.close();
    } else {
      // The parent keeps an unused copy: it stops counting once the child has used the end.
      REQUIRE(a.recv() == std::vector<int>(1, 0));
      expect = 1;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(random() % 3000));  // a random point
    child.kill(SIGKILL);
    try {
      for (;;) {
        const std::vector<int> v = a.recv(10s);
        REQUIRE(v == std::vector<int>(1 + expect % 50, expect));
        ++expect;
      }
    } catch (const shmq::EOFError&) {
    }
    child.wait_status();
  }
}

TEST_CASE("a receiver SIGKILLed at a random point while the sender is blocked on a full pipe",
          "[pipe][process][fault]") {
  std::mt19937 random(std::random_device{}());
  shmq::QueueOptions small;
  small.capacity_bytes = 4096;
  for (int round = 0; round < 6; ++round) {
    auto [a, b] = shmq::Pipe<int>(true, small);
    Child child([&] {
      for (;;) b.recv();
    });
    b.close();
    const int kill_at = static_cast<int>(random() % 20000);
    auto sent = [&] {
      try {
        for (int i = 0;; ++i) {
          a.send(i);
          if (i == kill_at) kill(child.pid(), SIGKILL);
        }
      } catch (const shmq::BrokenPipeError&) {
        return true;
      }
    };
    CHECK(sent());
    child.wait_status();
  }
}

TEST_CASE("a connection passed as a Pool task's argument sends from the worker", "[pipe][pool]") {
  auto [a, b] = shmq::Pipe<int>();
  shmq::Pool pool(1);
  const int sent = pool.apply(
      [](Connection<int> c, int n) {
        for (int i = 0; i < n; ++i) c.send(i);
        return n;
      },
      b, 5);
  CHECK(sent == 5);
  for (int i = 0; i < 5; ++i) CHECK(a.recv() == i);
  // The worker has sent on b and let its copy go; the parent's copy, which it passed, keeps the
  // end open (it may pass it to the next task) until the parent closes it, as in Python.
  CHECK_FALSE(a.poll(150ms));
  b.close();
  CHECK_THROWS_AS(a.recv(10s), shmq::EOFError);
}

TEST_CASE("a sender filling the pipe gets BrokenPipeError when the receiver closes", "[pipe][process]") {
  shmq::QueueOptions small;
  small.capacity_bytes = 4096;
  auto [a, b] = shmq::Pipe<int>(true, small);
  Child sender([&] {
    try {
      for (int i = 0;; ++i) a.send(i);  // blocks once 4096 bytes are queued
    } catch (const shmq::BrokenPipeError&) {
      return;
    }
  });
  a.close();
  CHECK(b.recv() == 0);
  b.close();  // wakes the send if it is blocked; fails it if not
  CHECK(sender.succeeded());
}

TEST_CASE("with SIGCHLD ignored a dead child still ends the stream; a stopped one does not",
          "[pipe][process][fault]") {
  struct sigaction ignore {}, old{};
  ignore.sa_handler = SIG_IGN;
  sigaction(SIGCHLD, &ignore, &old);
  {
    auto [a, b] = shmq::Pipe<int>();
    Child child([&] {
      b.send(1);
      pause();
    });
    b.close();
    CHECK(a.recv() == 1);
    child.kill(SIGSTOP);
    CHECK_THROWS_AS(a.recv(300ms), shmq::TimeoutError);  // stopped is alive
    child.kill(SIGKILL);
    CHECK_THROWS_AS(a.recv(10s), shmq::EOFError);  // reaped by the kernel at once
  }
  sigaction(SIGCHLD, &old, nullptr);
}

TEST_CASE("a pipe made on a thread that has ended works, and ends with its holders", "[pipe][process]") {
  std::optional<std::pair<Connection<int>, Connection<int>>> ends;
  std::thread([&] { ends.emplace(shmq::Pipe<int>()); }).join();
  auto& [a, b] = *ends;
  Process p([](Connection<int> c) { c.send(3); }, b);
  p.start();
  b.close();
  CHECK(a.recv() == 3);
  CHECK_THROWS_AS(a.recv(10s), shmq::EOFError);
  p.join();
}

TEST_CASE("zero, negative and huge arguments: empty messages, timeouts, a message too large",
          "[pipe]") {
  shmq::QueueOptions small;
  small.capacity_bytes = 4096;
  auto [a, b] = shmq::Pipe<std::string>(true, small);
  a.send("");
  CHECK(b.recv(-1s) == "");
  CHECK_FALSE(b.poll(-1s));
  CHECK_THROWS_AS(b.recv(-1s), shmq::TimeoutError);
  CHECK_THROWS_AS(a.send(std::string(5000, 'x')), shmq::MessageTooLarge);
  CHECK_THROWS_AS(a.send_bytes(std::string(5000, 'x')), shmq::MessageTooLarge);
  CHECK_FALSE(b.poll());  // nothing was sent
}

namespace {
std::atomic<bool> die_in_fork_handler{false};
// Registered by a static initialiser, before any Pipe exists, so that in a forked child it runs
// before the pipe's own fork handler: a SIGKILL there is a death before the child has run a
// single instruction of its own, with the slot its parent kept for it not taken over.
const int kill_handler_registered = pthread_atfork(nullptr, nullptr, [] {
  if (die_in_fork_handler.load()) raise(SIGKILL);
});
}  // namespace

TEST_CASE("a child killed before its fork handlers ran ends the stream at once, not after 5 s",
          "[pipe][process][fault]") {
  REQUIRE(kill_handler_registered == 0);
  for (int round = 0; round < 3; ++round) {
    auto [a, b] = shmq::Pipe<int>();
    die_in_fork_handler = true;
    const pid_t pid = fork();
    if (pid == 0) _exit(0);  // not reached: killed in the fork handler
    die_in_fork_handler = false;
    REQUIRE(pid > 0);
    b.close();
    siginfo_t info{};  // a zombie now (not reaped: its pid stays its own)
    REQUIRE(waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT) == 0);
    CHECK_THROWS_AS(a.recv(2s), shmq::EOFError);  // the kept slot counted for 5 s (kPendingMs)
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));
  }
}

TEST_CASE("a forked child that closes its end ends the stream while it still runs",
          "[pipe][process]") {
  auto [a, b] = shmq::Pipe<int>();
  shmq::Queue<int> closed;
  Child child([&] {
    b.close();
    closed.put(1);
    pause();
  });
  b.close();
  CHECK(closed.get() == 1);
  // The slot the parent kept for the child is gone with the child's close, named or not.
  CHECK_THROWS_AS(a.recv(2s), shmq::EOFError);
}

TEST_CASE("a connection passed to two Pool tasks in turn serves both while the parent holds it",
          "[pipe][pool][attack]") {
  auto [a, b] = shmq::Pipe<int>();
  shmq::Pool pool(1);
  const auto task = [](Connection<int> c, int n) {
    c.send(n);
    return n;
  };
  CHECK(pool.apply(task, b, 1) == 1);
  CHECK(a.recv() == 1);
  CHECK(pool.apply(task, b, 2) == 2);
  CHECK(a.recv(10s) == 2);
  b.close();
  CHECK_THROWS_AS(pool.apply(task, b, 3), shmq::Closed);  // a closed end is not passed on
  CHECK_THROWS_AS(a.recv(10s), shmq::EOFError);
}
