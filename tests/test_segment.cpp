// Segments: how queues are made, opened and cleaned up, and what they refuse.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "shmq/shmq.hpp"
#include "support.hpp"

using shmq::Queue;
using shmq::test::Child;
using shmq::test::UnnamedFields;
using shmq::test::fields_of;
using shmq::test::NameGuard;
using shmq::test::segment_exists;
using shmq::test::unique_name;

namespace {

// Every entry of /dev/shm, to show that a call left nothing there.
std::vector<std::string> dev_shm() {
  std::vector<std::string> names;
  if (DIR* dir = opendir("/dev/shm")) {
    while (const dirent* entry = readdir(dir)) names.emplace_back(entry->d_name);
    closedir(dir);
  }
  return names;
}

// Entries of /dev/shm that name process `pid` (as the segments of unnamed queues once did).
std::vector<std::string> dev_shm_naming(pid_t pid) {
  std::vector<std::string> found;
  for (const auto& entry : dev_shm()) {
    if (entry.find("-" + std::to_string(pid) + "-") != std::string::npos) found.push_back(entry);
  }
  return found;
}

// Runs `make` expecting a shmq::Error whose message holds every one of `parts`; throws (failing
// the child that runs it) otherwise.
template <class Make>
void expect_error_naming(Make&& make, const std::vector<std::string>& parts) {
  try {
    make();
  } catch (const shmq::Error& e) {
    for (const auto& part : parts) {
      if (std::string(e.what()).find(part) == std::string::npos) {
        throw std::runtime_error("the message lacks '" + part + "': " + e.what());
      }
    }
    return;
  }
  throw std::runtime_error("no error");
}

}  // namespace

TEST_CASE(
    "a queue larger than RLIMIT_FSIZE is an Error naming the limit, and leaves nothing behind",
    "[segment][fault]") {
  NameGuard named(unique_name("fsize"));
  NameGuard either(unique_name("fsize-either"));
  for (const bool sigxfsz_ignored : {false, true}) {
    INFO("SIGXFSZ ignored: " << sigxfsz_ignored);
    Child child([&] {
      if (sigxfsz_ignored) signal(SIGXFSZ, SIG_IGN);
      const rlimit small{64 * 1024, RLIM_INFINITY};
      if (setrlimit(RLIMIT_FSIZE, &small) != 0) throw std::runtime_error("setrlimit failed");
      const std::vector<std::string> figures = {"1052672 bytes", "RLIMIT_FSIZE", "65536"};
      auto with = [&](std::string what) {
        auto parts = figures;
        parts.push_back(std::move(what));
        return parts;
      };
      expect_error_naming([&] { Queue<int>::create(named.name()); },
                          with("'" + named.name() + "'"));
      expect_error_naming([&] { Queue<int>::open_or_create(either.name()); },
                          with("'" + either.name() + "'"));
      expect_error_naming([&] { Queue<int> unnamed; }, with("unnamed queue"));
      if (segment_exists(named.name()) || segment_exists(either.name()) ||
          !dev_shm_naming(getpid()).empty()) {
        throw std::runtime_error("a failed create left something in /dev/shm");
      }
      // A queue that fits the limit is still made.
      Queue<int>::create(named.name(), {.capacity_bytes = 4096});
    });
    CHECK(child.succeeded());
    CHECK(segment_exists(named.name()));
    CHECK_FALSE(segment_exists(either.name()));
    Queue<int>::remove(named.name());
  }
}

namespace {

// The fields of an unnamed queue's name: unnamed/PID/FD/COUNTER/START.
std::string unnamed_name(const UnnamedFields& f) {
  return "unnamed/" + f.pid + "/" + f.fd + "/" + f.counter + "/" + f.start;
}

// What a process maps from /dev/shm or from shmq's memfds, from /proc/PID/maps.
std::vector<std::string> shared_mappings(pid_t pid) {
  std::vector<std::string> found;
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  for (std::string line; std::getline(maps, line);) {
    for (const char* kind : {"/dev/shm/", "/memfd:shmq."}) {
      const auto at = line.find(kind);
      if (at != std::string::npos) found.push_back(line.substr(at));
    }
  }
  return found;
}

}  // namespace

TEST_CASE("an unnamed queue lives in no file: a SIGKILLed creator leaves nothing in /dev/shm",
          "[segment][fault]") {
  Queue<int> report;  // inherited by both generations
  Queue<int> go;
  Child creator([&] {
    Queue<int> work;
    for (int i = 1; i <= 3; ++i) work.put(i);
    Child heir([&] {  // holds `work` by inheritance; outlives its parent
      go.get();
      for (int i = 0; i < 3; ++i) report.put(work.get());
    });
    report.put(heir.pid());
    pause();  // until SIGKILLed: no destructor runs, nothing is cleaned up
  });
  const pid_t heir = report.get();
  for (const pid_t pid : {creator.pid(), heir}) {
    INFO("pid " << pid);
    const auto mapped = shared_mappings(pid);
    CHECK_FALSE(mapped.empty());
    for (const auto& path : mapped) CHECK(path.rfind("/memfd:shmq.unnamed.", 0) == 0);
    CHECK(dev_shm_naming(pid).empty());
  }
  creator.kill(SIGKILL);
  creator.wait_status();
  CHECK(dev_shm_naming(creator.pid()).empty());
  go.put(1);  // the queue outlives its creator while the heir holds it, messages and all
  CHECK(report.get() == 1);
  CHECK(report.get() == 2);
  CHECK(report.get() == 3);
  CHECK(shmq::test::eventually([&] {  // gone, or a zombie of a pid 1 that does not reap
    const char state = shmq::test::process_state(heir);
    return state == 0 || state == 'Z';
  }));
  CHECK(dev_shm_naming(heir).empty());
}

TEST_CASE(
    "an unnamed queue's handle sent through a queue opens in a process that did not inherit it",
    "[segment][codec]") {
  Queue<Queue<int>> mailbox;
  Queue<int> done;
  Child stranger([&] {  // forked before the queue below exists: it can only open it by name
    Queue<int> q = mailbox.get();
    q.put(q.get() + 1);
    done.put(0);
  });
  Queue<int> q;
  q.put(41);
  mailbox.put(q);
  done.get();
  CHECK(q.get() == 42);
  CHECK(stranger.succeeded());
}

TEST_CASE("an unnamed queue's creator closes its memfd with its last handle; errors name it",
          "[segment]") {
  std::string link;
  std::string name;
  {
    Queue<int> q(1);
    name = q.name();
    link = "/proc/self/fd/" + fields_of(name).fd;
    char target[256] = {};
    REQUIRE(readlink(link.c_str(), target, sizeof target - 1) > 0);
    CHECK(std::string(target).rfind("/memfd:shmq.unnamed." + std::to_string(getpid()) + ".", 0) ==
          0);
    q.put(1);
    const std::string label =
        "unnamed queue (pid " + std::to_string(getpid()) + ", #" + fields_of(name).counter + ")";
    CHECK_THROWS_WITH(q.put_nowait(2), Catch::StartsWith("shmq: " + label + " is full"));
    // A forked child's copies close only the child's copy of the descriptor.
    Child child([q] { Queue<int> copy = q; });
    CHECK(child.succeeded());
    CHECK(Queue<int>::open(name).get() == 1);
  }
  char target[256] = {};
  const ssize_t n = readlink(link.c_str(), target, sizeof target - 1);
  CHECK((n < 0 || std::string(target).find("shmq.unnamed") == std::string::npos));
  CHECK_THROWS_AS(Queue<int>::open(name), shmq::NotFound);
}

TEST_CASE("an unnamed queue's name cannot be taken for a named queue's", "[segment]") {
  Queue<int> q;
  CHECK_THROWS_AS(Queue<int>::create(q.name()), shmq::InvalidArgument);
  CHECK_THROWS_AS(Queue<int>::open_or_create(q.name()), shmq::InvalidArgument);
  CHECK_THROWS_WITH(Queue<int>::remove(q.name()), Catch::Contains("nothing to remove"));
  CHECK_THROWS_AS(Queue<int>::open("/" + q.name()), shmq::InvalidArgument);
}

TEST_CASE("hostile unnamed names give clean errors at once, never opening a FIFO or a foreign file",
          "[segment][fault]") {
  Queue<int> q;
  const UnnamedFields real = fields_of(q.name());
  const auto started = std::chrono::steady_clock::now();

  for (const char* junk :
       {"unnamed/", "unnamed/x", "unnamed/1/2/3", "unnamed/1/2/3/4/5", "unnamed/0/3/1/5",
        "unnamed/01/3/1/5", "unnamed/-1/3/1/5", "unnamed/+1/3/1/5", "unnamed/1/3/0/5",
        "unnamed/99999999/3/1/5", "unnamed/1/99999999999/1/5", "unnamed/1/3/1/5 ", "unnamed/1//1/5",
        "unnamed/1/3/1/999999999999999999999"}) {
    INFO(junk);
    CHECK_THROWS_AS(Queue<int>::open(junk), shmq::InvalidArgument);
  }

  UnnamedFields other = real;
  other.start = std::to_string(std::stoull(real.start) + 1);  // our pid, recycled by someone else
  CHECK_THROWS_WITH(Queue<int>::open(unnamed_name(other)),
                    Catch::Contains("its creator has exited"));
  other = real;
  other.pid = std::to_string(getppid());  // a live process that holds no such queue
  CHECK_THROWS_AS(Queue<int>::open(unnamed_name(other)), shmq::NotFound);

  const std::string fifo = "/tmp/shmq-fifo-" + std::to_string(getpid());
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
  const int fifo_fd = ::open(fifo.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
  unlink(fifo.c_str());
  REQUIRE(fifo_fd >= 0);
  const int file_fd = ::open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
  REQUIRE(file_fd >= 0);
  for (const int fd : {fifo_fd, file_fd, 0, 9999}) {
    other = real;
    other.fd = std::to_string(fd);
    INFO("fd " << fd);
    CHECK_THROWS_WITH(Queue<int>::open(unnamed_name(other)), Catch::Contains("no longer holds it"));
  }
  close(fifo_fd);
  close(file_fd);

  // A memfd that looks like ours by name, but is not a sealed queue.
  other = real;
  other.counter = "999999";
  const std::string memfd_name = "shmq.unnamed." + real.pid + ".999999";
  const int fake = memfd_create(memfd_name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  REQUIRE(fake >= 0);
  REQUIRE(ftruncate(fake, 8192) == 0);
  other.fd = std::to_string(fake);
  CHECK_THROWS_WITH(Queue<int>::open(unnamed_name(other)), Catch::Contains("not sealed"));
  REQUIRE(fcntl(fake, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);
  // Sealed, but all zeros: no queue.
  CHECK_THROWS_AS(Queue<int>::open(unnamed_name(other)), shmq::Incompatible);
  close(fake);

  CHECK_THROWS_WITH(Queue<long>::open(q.name()), Catch::Contains("not long"));
  CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(1));
}

TEST_CASE("an unnamed queue's memfd cannot be resized under its users", "[segment][fault]") {
  Queue<int> q;
  q.put(7);
  const int fd = ::open(("/proc/self/fd/" + fields_of(q.name()).fd).c_str(), O_RDWR | O_CLOEXEC);
  REQUIRE(fd >= 0);
  CHECK(ftruncate(fd, 0) != 0);
  CHECK(errno == EPERM);
  CHECK(ftruncate(fd, 1 << 30) != 0);
  CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE) != 0);  // the seals are sealed
  close(fd);
  CHECK(q.get() == 7);
}

TEST_CASE("another user cannot open an unnamed queue by its name", "[segment][fault]") {
  if (geteuid() != 0) {
    WARN("skipped: needs root to act as another user");
    return;
  }
  Queue<int> q;
  Queue<std::string> outcome;
  Child nobody([&] {
    constexpr uid_t kNobody = 65534;
    if (setgid(kNobody) != 0 || setuid(kNobody) != 0)
      throw std::runtime_error("cannot become nobody");
    try {
      Queue<int>::open(q.name());
      outcome.put("opened");
    } catch (const shmq::Error& e) {
      outcome.put(e.what());
    }
  });
  CHECK(nobody.succeeded());
  const std::string what = outcome.get();
  CHECK(what.find("is closed to this process") != std::string::npos);
  CHECK(what.find("unnamed queue (pid " + std::to_string(getpid())) != std::string::npos);
}
