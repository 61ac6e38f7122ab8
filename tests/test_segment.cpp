// Segments: how queues are made, opened and cleaned up, and what they refuse.
#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "shmq/shmq.hpp"
#include "support.hpp"

using shmq::Queue;
using shmq::test::Child;
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

TEST_CASE("a queue larger than RLIMIT_FSIZE is an Error naming the limit, and leaves nothing behind",
          "[segment][fault]") {
  NameGuard named(unique_name("fsize"));
  NameGuard either(unique_name("fsize-either"));
  for (const bool sigxfsz_ignored : {false, true}) {
    INFO("SIGXFSZ ignored: " << sigxfsz_ignored);
    Child child([&] {
      if (sigxfsz_ignored) signal(SIGXFSZ, SIG_IGN);
      const rlimit small{64 * 1024, RLIM_INFINITY};
      if (setrlimit(RLIMIT_FSIZE, &small) != 0) throw std::runtime_error("setrlimit failed");
      const auto before = dev_shm();
      const std::vector<std::string> figures = {"1052672 bytes", "RLIMIT_FSIZE", "65536"};
      auto with = [&](std::string what) {
        auto parts = figures;
        parts.push_back(std::move(what));
        return parts;
      };
      expect_error_naming([&] { Queue<int>::create(named.name()); }, with("'" + named.name() + "'"));
      expect_error_naming([&] { Queue<int>::open_or_create(either.name()); },
                          with("'" + either.name() + "'"));
      expect_error_naming([&] { Queue<int> unnamed; }, with("unnamed queue"));
      if (dev_shm() != before) throw std::runtime_error("/dev/shm changed");
      // A queue that fits the limit is still made.
      Queue<int>::create(named.name(), {.capacity_bytes = 4096});
    });
    CHECK(child.succeeded());
    CHECK(segment_exists(named.name()));
    CHECK_FALSE(segment_exists(either.name()));
    Queue<int>::remove(named.name());
  }
}
