// shmq::Manager: its queues, their removal with the Manager, and the guardian that removes them
// when the owning process dies, whatever signals the program's process group received.
#include <signal.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "shmq/shmq.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shmq::Pool;
using shmq::Queue;
using shmq::test::segment_exists;

namespace {

void report_pid(Queue<int> q) { q.put(getpid()); }

// This process's children, from /proc.
std::vector<pid_t> children() {
  std::vector<pid_t> found;
  const std::string path = "/proc/self/task/" + std::to_string(getpid()) + "/children";
  if (FILE* f = std::fopen(path.c_str(), "r")) {
    int pid = 0;
    while (std::fscanf(f, "%d", &pid) == 1) found.push_back(pid);
    std::fclose(f);
  }
  return found;
}

// The pid of a Manager's guardian: made just now, it is this thread's only child.
pid_t only_child() {
  const auto found = children();
  REQUIRE(found.size() == 1);
  return found.front();
}

}  // namespace

TEST_CASE("a Manager's queues reach pool workers and are removed with the Manager", "[pool][manager]") {
  std::string name;
  {
    shmq::Manager manager;
    auto q = manager.Queue<int>();
    name = q.name();
    CHECK(segment_exists(name));
    Pool pool(1);
    pool.apply(report_pid, q);
    CHECK(q.get() > 0);
  }
  CHECK_FALSE(segment_exists(name));
}

TEST_CASE("a Manager's queues are removed even if its process is killed", "[pool][manager][fault]") {
  Queue<std::string> names;
  shmq::Process owner([names]() mutable {
    shmq::Manager manager;
    names.put(manager.Queue<int>().name());
    names.put(manager.JoinableQueue<int>().name());
    pause();  // killed here, without destroying the Manager
  });
  owner.start();
  const std::string a = names.get();
  const std::string b = names.get();
  CHECK(segment_exists(a));
  owner.kill();
  owner.join();
  CHECK(shmq::test::eventually([&] { return !segment_exists(a) && !segment_exists(b); }));
}

TEST_CASE("the Manager's destructor removes its queues itself when its guardian is gone", "[manager][fault]") {
  std::optional<shmq::Manager> manager(std::in_place);
  const pid_t guardian = only_child();
  const std::string name = manager->Queue<int>().name();
  kill(guardian, SIGKILL);
  REQUIRE(shmq::test::eventually([&] { return shmq::test::process_state(guardian) == 'Z'; }));
  manager.reset();
  CHECK_FALSE(segment_exists(name));
}

TEST_CASE("a Manager's guardian outlives the signals a terminal sends to the program", "[manager][fault]") {
  std::optional<shmq::Manager> manager(std::in_place);
  const pid_t guardian = only_child();
  const std::string name = manager->Queue<int>().name();
  REQUIRE(shmq::test::eventually([&] { return shmq::test::process_state(guardian) == 'S'; }));  // set up
  CHECK(getpgid(guardian) != getpgrp());  // not in the group a terminal signals
  // Sent to the guardian itself: a signal whose default action kills has killed it by the time
  // kill() returns (the kernel acts on a fatal signal at once), so looking next is enough.
  for (const int sig : {SIGINT, SIGQUIT, SIGHUP, SIGTERM}) kill(guardian, sig);
  kill(guardian, SIGTSTP);
  CHECK(shmq::test::process_state(guardian) == 'S');  // alive, and not stopped
  manager.reset();
  CHECK_FALSE(segment_exists(name));
}

TEST_CASE("a Ctrl-C that the program survives leaves its Manager's queues cleaned up", "[manager][fault]") {
  Queue<std::string> names;
  Queue<int> go;
  shmq::test::Child program([names, go]() mutable {
    setpgid(0, 0);  // a process group of its own, as a shell gives a job: the test's is spared
    shmq::Manager manager;
    signal(SIGINT, [](int) {});  // the program handles Ctrl-C and goes on (its guardian did not inherit this)
    names.put(manager.Queue<int>().name());
    names.put(manager.JoinableQueue<int>().name());
    go.get();
  });
  const std::string a = names.get(60s);
  const std::string b = names.get(60s);
  REQUIRE(getpgid(program.pid()) == program.pid());
  kill(-program.pid(), SIGINT);  // what Ctrl-C does: the whole foreground group
  SECTION("then the program ends normally: ~Manager removes them") {
    go.put(1);
    CHECK(program.succeeded());
    CHECK_FALSE(segment_exists(a));
    CHECK_FALSE(segment_exists(b));
  }
  SECTION("then the program is killed: its guardian removes them") {
    program.kill(SIGKILL);
    program.wait_status();
    CHECK(shmq::test::eventually([&] { return !segment_exists(a) && !segment_exists(b); }));
  }
}
