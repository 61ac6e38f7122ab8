// The `shmq` command-line tool, run as a user would run it, against real queues.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <map>
#include <string>

#include "shmq/inspect.hpp"
#include <thread>

#include "shmq/shmq.hpp"
#include "shmq/event.hpp"
#include "shmq/lock.hpp"
#include "shmq/semaphore.hpp"
#include "shmq/value.hpp"
#include "support.hpp"

#ifdef SHMQ_CLI

using shmq::Queue;
using shmq::test::NameGuard;
using shmq::test::unique_name;
using shmq::test::segment_exists;

namespace {

struct Run {
  int status;
  std::string out;
};

// Runs `shmq ARGS` through the shell; stdout and stderr together, and the exit status.
Run shmq_cli(const std::string& args) {
  FILE* p = popen((std::string(SHMQ_CLI) + " " + args + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  Run r{0, {}};
  char buf[4096];
  while (std::fgets(buf, sizeof buf, p) != nullptr) r.out += buf;
  const int status = pclose(p);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}


}  // namespace

TEST_CASE("shmq ls lists each queue with its figures, and marks segments it cannot read", "[cli]") {
  NameGuard jobs(unique_name("jobs"));
  NameGuard junk(unique_name("junk"));
  auto q = Queue<int>::create(jobs.name(), {.maxsize = 5});
  q.put(1);
  q.put(2);
  q.put(3);
  const int fd = shm_open(("/shmq." + junk.name()).c_str(), O_CREAT | O_RDWR, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(ftruncate(fd, 100) == 0);
  close(fd);

  const auto r = shmq_cli("ls");
  CHECK(r.status == 0);
  const auto line_start = r.out.find(jobs.name());
  REQUIRE(line_start != std::string::npos);
  const std::string line = r.out.substr(line_start, r.out.find('\n', line_start) - line_start);
  CHECK(line.find(" 3 ") != std::string::npos);
  CHECK(line.find("24/1048576") != std::string::npos);  // three 8-byte frames of a 4-byte int
  CHECK(line.find(" 5 ") != std::string::npos);
  CHECK(line.find("0600") != std::string::npos);
  CHECK(line.find(std::to_string(getpid()) + " alive") != std::string::npos);
  CHECK(line.find("int") != std::string::npos);
  CHECK(r.out.find(junk.name() + " ") != std::string::npos);
  CHECK(r.out.find("not a shmq queue") != std::string::npos);
}

TEST_CASE("shmq ls shows a short type name; stat and --json the full one", "[cli]") {
  NameGuard jobs(unique_name("types"));
  auto q = Queue<std::map<std::string, int>>::create(jobs.name());
  const std::string full = q.stats().type_name;
  REQUIRE(full.rfind("std::map<std::__cxx11::basic_string<char", 0) == 0);

  const auto ls = shmq_cli("ls");
  const auto line_start = ls.out.find(jobs.name());
  REQUIRE(line_start != std::string::npos);
  const std::string line = ls.out.substr(line_start, ls.out.find('\n', line_start) - line_start);
  CHECK(line.size() < 160);
  CHECK(line.substr(line.size() - std::string("  std::map<std::string, int>").size()) ==
        "  std::map<std::string, int>");
  CHECK(shmq_cli("stat " + jobs.name()).out.find("type:                " + full + "\n") !=
        std::string::npos);
  CHECK(shmq_cli("ls --json").out.find("\"type\": \"" + full + "\"") != std::string::npos);
}

TEST_CASE("short type names drop what the standard library adds, and mark a cut name", "[cli]") {
  using shmq::short_type_name;
  const std::string string =
      "std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >";
  CHECK(short_type_name("int") == "int");
  CHECK(short_type_name(string) == "std::string");
  CHECK(short_type_name("std::vector<int, std::allocator<int> >") == "std::vector<int>");
  CHECK(short_type_name("std::vector<" + string + ", std::allocator<" + string + " > >") ==
        "std::vector<std::string>");
  CHECK(short_type_name(
            "std::unordered_map<int, std::vector<double, std::allocator<double> >, std::hash<int>, "
            "std::equal_to<int>, std::allocator<std::pair<int const, std::vector<double, "
            "std::allocator<double> > > > >") == "std::unordered_map<int, std::vector<double>>");
  CHECK(short_type_name("std::array<int, 3ul>") == "std::array<int, 3>");
  CHECK(short_type_name("std::pair<int, std::__cxx11::list<int, std::allocator<int> > >") ==
        "std::pair<int, std::list<int>>");
  // Cut inside a default argument: nothing of meaning was lost.
  const std::string map = "std::map<" + string + ", int, std::less<" + string +
                          " >, std::allocator<std::pair<" + string + " const, int> > >";
  CHECK(short_type_name(map.substr(0, 255)) == "std::map<std::string, int>");
  // Cut inside a type the reader needs: say so.
  CHECK(short_type_name("Outer<std::vector<int, std::allocator<int> >, Inner<lo") ==
        "Outer<std::vector<int>, Inner<lo...");
  // Not ours to drop: a comparator or allocator that is not the last argument stays.
  CHECK(short_type_name("Table<std::less<int>, int>") == "Table<std::less<int>, int>");
}

TEST_CASE("shmq ls --json and stat --json give every figure", "[cli]") {
  NameGuard jobs(unique_name("json"));
  auto q = Queue<long>::create(jobs.name());
  q.put(7);
  const auto ls = shmq_cli("ls --json");
  CHECK(ls.status == 0);
  CHECK(ls.out.front() == '[');
  CHECK(ls.out.find("\"name\": \"" + jobs.name() + "\", \"type\": \"long\", \"messages\": 1") != std::string::npos);
  const auto stat = shmq_cli("stat " + jobs.name() + " --json");
  CHECK(stat.status == 0);
  CHECK(stat.out.find("\"puts\": 1") != std::string::npos);
  CHECK(stat.out.find("\"mapped_by\": [" + std::to_string(getpid()) + "]") != std::string::npos);
}

TEST_CASE("shmq stat shows the counters since creation", "[cli]") {
  NameGuard jobs(unique_name("stat"));
  auto q = Queue<int>::create(jobs.name(), {.maxsize = 1});
  q.put(1);
  CHECK_FALSE(q.try_put(2));
  q.get();
  CHECK_FALSE(q.try_get());
  const auto r = shmq_cli("stat " + jobs.name());
  CHECK(r.status == 0);
  CHECK(r.out.find("puts:                1") != std::string::npos);
  CHECK(r.out.find("gets:                1") != std::string::npos);
  CHECK(r.out.find("put timeouts:        1") != std::string::npos);
  CHECK(r.out.find("get timeouts:        1") != std::string::npos);
  CHECK(r.out.find("mapped by:           1 process(es) (" + std::to_string(getpid()) + ")") != std::string::npos);
  CHECK(r.out.find("locks now:           put free, get free") != std::string::npos);
}

TEST_CASE("shmq stat opens an unnamed queue by its handle's name; ls does not list it", "[cli]") {
  Queue<int> q;
  q.put(1);
  q.put(2);
  const auto stat = shmq_cli("stat " + q.name());
  CHECK(stat.status == 0);
  CHECK(stat.out.find("messages:            2") != std::string::npos);
  CHECK(stat.out.find("mapped by:           1 process(es) (" + std::to_string(getpid()) + ")") !=
        std::string::npos);
  CHECK(shmq_cli("ls").out.find(q.name()) == std::string::npos);
  CHECK(shmq_cli("ls --help").out.find("Unnamed queues") != std::string::npos);
}

TEST_CASE("shmq exits 1 with a clear message for a missing queue or a foreign segment", "[cli]") {
  const auto missing = shmq_cli("stat " + unique_name("missing"));
  CHECK(missing.status == 1);
  CHECK(missing.out.find("no queue named") != std::string::npos);
  CHECK(shmq_cli("rm " + unique_name("missing")).status == 1);
  CHECK(shmq_cli("watch " + unique_name("missing") + " --count 1 --interval 0.01").status == 1);
}

TEST_CASE("shmq exits 2 on usage errors and 0 on --help for every command", "[cli]") {
  CHECK(shmq_cli("").status == 2);
  CHECK(shmq_cli("frobnicate").status == 2);
  CHECK(shmq_cli("stat").status == 2);
  CHECK(shmq_cli("ls --bogus").status == 2);
  CHECK(shmq_cli("watch x --interval -1").status == 2);
  for (const char* command : {"--help", "ls --help", "stat --help", "watch --help", "rm --help"}) {
    INFO(command);
    const auto r = shmq_cli(command);
    CHECK(r.status == 0);
    CHECK(r.out.find("usage: shmq") != std::string::npos);
  }
}

TEST_CASE("shmq rm removes queues by name", "[cli]") {
  NameGuard a(unique_name("rm-a"));
  NameGuard b(unique_name("rm-b"));
  Queue<int>::create(a.name());
  Queue<int>::create(b.name());
  CHECK(shmq_cli("rm " + a.name() + " " + b.name()).status == 0);
  CHECK_FALSE(segment_exists(a.name()));
  CHECK_FALSE(segment_exists(b.name()));
}

TEST_CASE("shmq rm --stale removes a queue left by a killed process, and only such queues", "[cli]") {
  const std::string prefix = unique_name("stale");
  NameGuard stale(prefix + "-dead");
  NameGuard live(prefix + "-live");
  NameGuard held(prefix + "-held");
  Queue<int> ready;
  shmq::test::Child owner([&] {
    Queue<int>::create(stale.name());
    Queue<int>::create(held.name());
    ready.put(1);
    pause();
  });
  ready.get();
  auto keep = Queue<int>::open(held.name());  // its creator dies, but we still map it
  owner.kill(SIGKILL);
  owner.wait_status();
  Queue<int>::create(live.name());

  const auto r = shmq_cli("rm --stale " + prefix);
  CHECK(r.status == 0);
  CHECK(r.out.find("removed " + stale.name()) != std::string::npos);
  CHECK_FALSE(segment_exists(stale.name()));
  CHECK(segment_exists(live.name()));
  CHECK(segment_exists(held.name()));
}

TEST_CASE("shmq rm --stale keeps a stale queue that holds messages unless told to remove it",
          "[cli]") {
  const std::string prefix = unique_name("pending");
  NameGuard pending(prefix + "-work");
  NameGuard drained(prefix + "-done");
  Queue<int> ready;
  shmq::test::Child producer([&] {
    auto work = Queue<int>::create(pending.name());
    for (int i = 0; i < 5; ++i) work.put(i);
    Queue<int>::create(drained.name());
    ready.put(1);
  });
  ready.get();
  REQUIRE(producer.succeeded());  // named queues outlive their producer: that is what they are for

  const auto kept = shmq_cli("rm --stale " + prefix);
  CHECK(kept.status == 0);
  CHECK(kept.out.find("removed " + drained.name()) != std::string::npos);
  CHECK(kept.out.find("skipped " + pending.name() + ": it holds 5 messages") != std::string::npos);
  CHECK(kept.out.find("--with-messages") != std::string::npos);
  CHECK(segment_exists(pending.name()));
  CHECK_FALSE(segment_exists(drained.name()));

  const auto removed = shmq_cli("rm --stale --with-messages " + prefix);
  CHECK(removed.status == 0);
  CHECK(removed.out.find("removed " + pending.name() + " with its 5 messages") !=
        std::string::npos);
  CHECK_FALSE(segment_exists(pending.name()));
}

TEST_CASE("shmq rm --stale says so when there is nothing to remove", "[cli]") {
  const auto r = shmq_cli("rm --stale " + unique_name("nothing"));
  CHECK(r.status == 0);
  CHECK(r.out.find("no stale queues") != std::string::npos);
  const auto help = shmq_cli("rm --help");
  CHECK(help.out.find("--with-messages") != std::string::npos);
}

TEST_CASE("shmq watch prints one line per interval when piped", "[cli]") {
  NameGuard jobs(unique_name("watch"));
  auto q = Queue<int>::create(jobs.name());
  q.put(1);
  const auto r = shmq_cli("watch " + jobs.name() + " --interval 0.02 --count 3");
  CHECK(r.status == 0);
  int lines = 0;
  for (char c : r.out) lines += c == '\n';
  CHECK(lines == 3);
  CHECK(r.out.rfind(jobs.name() + "  depth 1  bytes 8/1048576", 0) == 0);
}

TEST_CASE("shmq ls and stat show locks, events, semaphores and values with their kind and holder",
          "[cli][sync]") {
  NameGuard lock_name(unique_name("lock"));
  NameGuard dead_name(unique_name("dead"));
  NameGuard event_name(unique_name("event"));
  NameGuard sem_name(unique_name("sem"));
  NameGuard value_name(unique_name("value"));
  auto lock = shmq::Lock::create(lock_name.name());
  lock.lock();
  auto dead = shmq::Lock::create(dead_name.name());
  std::thread([&] { dead.lock(); }).join();  // its holder ends holding it
  auto event = shmq::Event::create(event_name.name());
  event.set();
  auto sem = shmq::BoundedSemaphore::create(sem_name.name(), 3);
  sem.acquire();
  auto value = shmq::Value<double>::create(value_name.name(), 1.5);
  const Run ls = shmq_cli("ls");
  CHECK(ls.status == 0);
  CHECK_THAT(ls.out, Catch::Contains(lock_name.name()) &&
                         Catch::Contains("lock: held by thread " + std::to_string(gettid())));
  CHECK_THAT(ls.out, Catch::Contains("lock: free (its last holder died holding it)"));
  CHECK_THAT(ls.out, Catch::Contains("event: set"));
  CHECK_THAT(ls.out, Catch::Contains("bounded semaphore: 2 free of 3"));
  CHECK_THAT(ls.out, Catch::Contains("value<double>: free"));
  const Run stat = shmq_cli("stat " + lock_name.name());
  CHECK(stat.status == 0);
  CHECK_THAT(stat.out, Catch::Contains("kind:                lock"));
  const Run json = shmq_cli("stat --json " + value_name.name());
  CHECK_THAT(json.out, Catch::Contains("\"kind\": \"value\"") &&
                           Catch::Contains("\"type\": \"double\""));
  CHECK(shmq_cli("rm " + event_name.name()).status == 0);
  CHECK_FALSE(segment_exists(event_name.name()));
  const Run stale = shmq_cli("rm --stale " + value_name.name());  // its creator (we) runs
  CHECK(stale.status == 0);
  CHECK(segment_exists(value_name.name()));
  lock.unlock();
}

#endif
