// Helpers shared by the test suites: unique names, forked children, bounded waits.
#pragma once

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <exception>
#include <string>
#include <thread>
#include <utility>

namespace shmq::test {

// A queue name unique to this process and call; the hygiene listener (main.cpp) fails the run if
// any segment named with this process's prefix is still in /dev/shm after a test case.
inline std::string unique_name(const std::string& what) {
  static int counter = 0;
  return "test-" + std::to_string(getpid()) + "-" + std::to_string(++counter) + "-" + what;
}
// The fields of an unnamed queue's name(), "unnamed/PID/FD/COUNTER/START".
struct UnnamedFields {
  std::string pid, fd, counter, start;
};
inline bool is_unnamed(const std::string& name) { return name.rfind("unnamed/", 0) == 0; }
inline UnnamedFields fields_of(const std::string& name) {
  UnnamedFields f;
  std::string* parts[] = {&f.pid, &f.fd, &f.counter, &f.start};
  std::size_t at = name.find('/') + 1;
  for (std::string* part : parts) {
    const std::size_t end = std::min(name.find('/', at), name.size());
    *part = name.substr(at, end - at);
    at = end + 1;
  }
  return f;
}
// How shmq's error messages name the queue called `name`: "queue 'jobs'" for a named queue,
// "unnamed queue (pid N, #K)" for an unnamed one.
inline std::string described(const std::string& name) {
  if (!is_unnamed(name)) return "queue '" + name + "'";
  const UnnamedFields f = fields_of(name);
  return "unnamed queue (pid " + f.pid + ", #" + f.counter + ")";
}
// A file that opens the segment of queue `name`: its /dev/shm file, or, for an unnamed queue, its
// creator's descriptor under /proc.
inline std::string segment_path(const std::string& name) {
  if (!is_unnamed(name)) return "/dev/shm/shmq." + name;
  const UnnamedFields f = fields_of(name);
  return "/proc/" + f.pid + "/fd/" + f.fd;
}
inline std::string own_prefix() { return "shmq.test-" + std::to_string(getpid()) + "-"; }

// Removes a queue name before and after a test, whatever the test does in between.
class NameGuard {
 public:
  explicit NameGuard(std::string name);
  NameGuard(const NameGuard&) = delete;
  NameGuard& operator=(const NameGuard&) = delete;
  ~NameGuard();
  const std::string& name() const { return name_; }

 private:
  std::string name_;
};

// A forked child running fn(); it exits 0 if fn returns, 1 if it throws (printing why). The
// destructor kills and reaps a child that is still running, so no test leaves one behind.
// Raw fork on purpose: the Queue tests must not depend on shmq::Process.
class Child {
 public:
  template <class Fn>
  explicit Child(Fn&& fn) {
    std::fflush(nullptr);
    pid_ = fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      int code = 0;
      try {
        fn();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "child %d: %s\n", getpid(), e.what());
        code = 1;
      } catch (...) {
        code = 1;
      }
      std::fflush(nullptr);
      _exit(code);
    }
  }
  Child(Child&& other) noexcept : pid_(std::exchange(other.pid_, -1)) {}
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      wait_status();
    }
  }

  pid_t pid() const { return pid_; }
  void kill(int sig) const { ::kill(pid_, sig); }
  // Reaps the child: its wait status.
  int wait_status() {
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return status;
  }
  // Reaps the child: true if it exited with code 0.
  bool succeeded() {
    const int status = wait_status();
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }

 private:
  pid_t pid_ = -1;
};

// Whether /dev/shm holds the segment of the queue `name`.
inline bool segment_exists(const std::string& name) {
  struct stat st;
  return stat(("/dev/shm/shmq." + name).c_str(), &st) == 0;
}

// What follows the command name in /proc/PID/stat ("S 1234 ..."), or "" if there is no such
// process. The command name may hold spaces and ')', so the fields start after the last ')'.
inline std::string stat_fields(pid_t pid) {
  std::string fields;
  if (FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r")) {
    char line[512];
    const std::size_t n = std::fread(line, 1, sizeof line - 1, f);
    std::fclose(f);
    line[n] = '\0';
    if (const char* close = std::strrchr(line, ')')) fields = close + 1;
  }
  return fields;
}

// A process's state letter (R, S, T, Z, ...), or 0 if there is no such process.
inline char process_state(pid_t pid) {
  char state = 0;
  std::sscanf(stat_fields(pid).c_str(), " %c", &state);
  return state;
}

// A process's parent's pid, or 0 if there is no such process.
inline pid_t parent_of(pid_t pid) {
  int parent = 0;
  std::sscanf(stat_fields(pid).c_str(), " %*c %d", &parent);
  return parent;
}

// Process-shared robust pthread mutexes in shared memory, for a process to interleave with queue
// locks, hold and die with.
struct GlibcRobustMutexes {
  static constexpr int kCount = 2;
  pthread_mutex_t* m;
  GlibcRobustMutexes() {
    void* at = mmap(nullptr, kCount * sizeof(pthread_mutex_t), PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (at == MAP_FAILED) throw std::runtime_error("mmap failed");
    m = static_cast<pthread_mutex_t*>(at);
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    for (int i = 0; i < kCount; ++i) {
      if (pthread_mutex_init(&m[i], &attr) != 0) throw std::runtime_error("pthread_mutex_init failed");
    }
    pthread_mutexattr_destroy(&attr);
  }
  GlibcRobustMutexes(const GlibcRobustMutexes&) = delete;
  GlibcRobustMutexes& operator=(const GlibcRobustMutexes&) = delete;
  ~GlibcRobustMutexes() { munmap(m, kCount * sizeof(pthread_mutex_t)); }
};

// A pipe, closed at the end of its scope.
struct Pipe {
  int fds[2];
  Pipe() {
    if (pipe(fds) != 0) throw std::runtime_error("pipe failed");
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  ~Pipe() {
    close(fds[0]);
    close(fds[1]);
  }
};

// Polls an observable condition (a counter in shared memory, a process state) that no queue or
// barrier can report, yielding between looks; false if it does not hold within `limit`.
template <class Pred>
bool eventually(Pred&& pred, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  const auto give_up = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= give_up) return false;
    std::this_thread::yield();
  }
  return true;
}

}  // namespace shmq::test
