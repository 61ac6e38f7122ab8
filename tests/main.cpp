// The test runner, plus a listener that fails the run if any test case leaves behind a segment of
// ours in /dev/shm, a child process (running or zombie), or an open file descriptor.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include <dirent.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "support.hpp"

namespace shmq::test {

NameGuard::NameGuard(std::string name) : name_(std::move(name)) {
  shm_unlink(("/shmq." + name_).c_str());
}
NameGuard::~NameGuard() { shm_unlink(("/shmq." + name_).c_str()); }

namespace {

std::vector<std::string> entries(const char* dir) {
  std::vector<std::string> names;
  if (DIR* d = opendir(dir)) {
    while (const dirent* e = readdir(d)) {
      const std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(n);
    }
    closedir(d);
  }
  return names;
}

// Kills and reaps every child of this process (found through /proc), so that a failing test's
// strays do not outlive the run.
void kill_children() {
  for (const auto& n : entries("/proc")) {
    const pid_t pid = static_cast<pid_t>(std::atoi(n.c_str()));
    if (pid <= 0) continue;
    if (FILE* f = std::fopen(("/proc/" + n + "/stat").c_str(), "r")) {
      int ppid = 0;
      // pid (comm) state ppid: comm may hold spaces, so skip to the last ')'.
      char buf[512];
      const std::size_t len = std::fread(buf, 1, sizeof buf - 1, f);
      std::fclose(f);
      buf[len] = '\0';
      if (const char* close = std::strrchr(buf, ')')) std::sscanf(close + 1, " %*c %d", &ppid);
      if (ppid == getpid()) kill(pid, SIGKILL);
    }
  }
  while (waitpid(-1, nullptr, 0) > 0) {
  }
}

class HygieneListener : public Catch::TestEventListenerBase {
 public:
  using TestEventListenerBase::TestEventListenerBase;

  void testCaseStarting(const Catch::TestCaseInfo&) override { fds_ = entries("/proc/self/fd").size(); }

  void testCaseEnded(const Catch::TestCaseStats& stats) override {
    std::vector<std::string> problems;
    for (const auto& n : entries("/dev/shm")) {
      if (n.rfind(own_prefix(), 0) == 0) {
        problems.push_back("left /dev/shm/" + n);
        shm_unlink(("/" + n).c_str());
      }
    }
    int status;
    const pid_t child = waitpid(-1, &status, WNOHANG);
    if (child > 0) problems.push_back("left a zombie child " + std::to_string(child));
    if (child == 0) {
      problems.push_back("left a running child");
    }
    if (child >= 0) kill_children();
    const std::size_t fds = entries("/proc/self/fd").size();
    if (fds != fds_) {
      problems.push_back("open descriptors went from " + std::to_string(fds_) + " to " + std::to_string(fds));
    }
    if (!problems.empty()) {
      for (const auto& p : problems) {
        std::fprintf(stderr, "HYGIENE FAILURE in '%s': %s\n", stats.testInfo.name.c_str(), p.c_str());
      }
      std::fflush(nullptr);
      std::_Exit(3);
    }
  }

 private:
  std::size_t fds_ = 0;
};

CATCH_REGISTER_LISTENER(HygieneListener)

}  // namespace
}  // namespace shmq::test
