// shmq::Process: exit codes, joins, lifetime, stdio across fork, and the seed's write/read demo;
// and every helper process (daemon child, pool, Manager guardian) made on a thread that ends.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "shmq/detail/segment.hpp"
#include "shmq/shmq.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shmq::Process;
using shmq::ProcessOptions;
using shmq::Queue;
using shmq::QueueOptions;

namespace {

// Redirects one of this process's descriptors (stdout, stderr) into an unlinked temporary file;
// text() restores the descriptor and returns what was written meanwhile.
class Capture {
 public:
  explicit Capture(int fd) : fd_(fd) {
    std::fflush(nullptr);
    char path[] = "/tmp/shmq-capture-XXXXXX";
    file_ = mkstemp(path);
    REQUIRE(file_ >= 0);
    unlink(path);
    saved_ = dup(fd_);
    dup2(file_, fd_);
  }
  Capture(const Capture&) = delete;
  Capture& operator=(const Capture&) = delete;
  ~Capture() {
    restore();
    close(file_);
  }
  std::string text() {
    restore();
    std::string out;
    char buf[4096];
    ssize_t n;
    lseek(file_, 0, SEEK_SET);
    while ((n = read(file_, buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(n));
    return out;
  }

 private:
  void restore() {
    if (saved_ < 0) return;
    std::fflush(nullptr);
    dup2(saved_, fd_);
    close(saved_);
    saved_ = -1;
  }
  int fd_;
  int file_ = -1;
  int saved_ = -1;
};

// The process is gone, or is a zombie waiting for a parent that is not us.
bool ended(pid_t pid) {
  const char state = shmq::test::process_state(pid);
  return state == 0 || state == 'Z';
}

// Runs fn on a std::thread and returns once that thread is gone for the kernel too: its entry in
// /proc/self/task goes only after the kernel has handed its children to another thread and sent
// them their parent-death signal (PR_SET_PDEATHSIG), which is what the tests below provoke. fn
// must wait until the children it makes have set themselves up (a child that asks for that signal
// after the thread ended has the surviving thread as its parent, and is not provoked).
template <class Fn>
void run_on_ending_thread(Fn&& fn) {
  pid_t tid = 0;
  std::thread thread([&] {
    tid = gettid();
    fn();
  });
  thread.join();
  const std::string entry = "/proc/self/task/" + std::to_string(tid);
  REQUIRE(shmq::test::eventually([&] { return access(entry.c_str(), F_OK) != 0; }));
}

// The one child the calling thread has made, once it sleeps (has set itself up and waits).
pid_t sleeping_only_child_of_this_thread() {
  const std::string path = "/proc/self/task/" + std::to_string(gettid()) + "/children";
  int child = 0;
  if (FILE* f = std::fopen(path.c_str(), "r")) {
    if (std::fscanf(f, "%d", &child) != 1) child = 0;
    std::fclose(f);
  }
  shmq::test::eventually([&] { return shmq::test::process_state(child) == 'S'; });
  return child;
}

int square(int x) { return x * x; }

int count(const std::string& haystack, const std::string& needle) {
  int n = 0;
  for (auto at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("exit codes: 0 on return, an int returned, 1 on a throw", "[process]") {
  Process returns_void([] {});
  Process returns_int([] { return 7; });
  Process returns_other([] { return std::string("not an exit code"); });
  for (Process* p : {&returns_void, &returns_int, &returns_other}) p->start();
  for (Process* p : {&returns_void, &returns_int, &returns_other}) p->join();
  CHECK(returns_void.exitcode() == 0);
  CHECK(returns_int.exitcode() == 7);
  CHECK(returns_other.exitcode() == 0);
}

TEST_CASE("a child that throws exits 1 and prints the exception's type and message", "[process]") {
  Capture err(STDERR_FILENO);
  Process p(ProcessOptions{.name = "thrower"}, [] { throw std::invalid_argument("bad input"); });
  p.start();
  p.join();
  const std::string text = err.text();
  CHECK(p.exitcode() == 1);
  CHECK(text.find("Process thrower (pid " + std::to_string(p.pid()) + "): std::invalid_argument: bad input") !=
        std::string::npos);
}

TEST_CASE("a child ended by a signal reports minus the signal number", "[process]") {
  Queue<int> never;  // nobody puts: the children wait until signalled
  SECTION("terminate") {
    Process p([never]() mutable { never.get(); });
    p.start();
    p.terminate();
    p.join();
    CHECK(p.exitcode() == -SIGTERM);
  }
  SECTION("kill") {
    Process p([never]() mutable { never.get(); });
    p.start();
    p.kill();
    p.join();
    CHECK(p.exitcode() == -SIGKILL);
  }
  SECTION("a segmentation fault") {
    Process p([] {
      std::signal(SIGSEGV, SIG_DFL);  // past any sanitizer's handler: the kernel's default
      raise(SIGSEGV);
    });
    p.start();
    p.join();
    CHECK(p.exitcode() == -SIGSEGV);
  }
}

TEST_CASE("is_alive and exitcode before, during and after the child's life", "[process]") {
  Queue<int> go;
  Process p([go]() mutable { go.get(); });
  CHECK_FALSE(p.is_alive());
  CHECK_FALSE(p.exitcode().has_value());
  CHECK(p.pid() == 0);
  p.start();
  CHECK(p.pid() > 0);
  CHECK(p.is_alive());
  CHECK_FALSE(p.exitcode().has_value());
  go.put(1);
  p.join();
  CHECK_FALSE(p.is_alive());
  CHECK(p.exitcode() == 0);
}

TEST_CASE("join with a timeout returns false while the child outlives it", "[process]") {
  Queue<int> go;
  Process p([go]() mutable { go.get(); });
  p.start();
  const auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(p.join(50ms));
  CHECK(std::chrono::steady_clock::now() - start >= 50ms);
  CHECK(p.is_alive());
  go.put(1);
  CHECK(p.join(60s));
  CHECK(p.exitcode() == 0);
}

TEST_CASE("starting twice, or joining before starting, throws Error", "[process]") {
  Process p([] {});
  CHECK_THROWS_AS(p.join(), shmq::Error);
  p.start();
  CHECK_THROWS_WITH(p.start(), Catch::Contains("already started"));
  p.join();
}

TEST_CASE("64 processes at once all run and are all reaped", "[process]") {
  Queue<int> q;
  std::vector<Process> ps;
  for (int i = 0; i < 64; ++i) ps.emplace_back([q, i]() mutable { q.put(i); });
  for (auto& p : ps) p.start();
  long sum = 0;
  for (int i = 0; i < 64; ++i) sum += q.get();
  for (auto& p : ps) p.join();
  CHECK(sum == 63 * 64 / 2);
  for (auto& p : ps) CHECK(p.exitcode() == 0);
}

TEST_CASE("arguments are copied into the child, and a queue argument is the same queue", "[process]") {
  Queue<std::string> q;
  std::string greeting = "hello";
  Process p([](Queue<std::string> out, std::string text, int n) { out.put(text + " x" + std::to_string(n)); },
            q, greeting, 3);
  greeting = "changed after the Process was made";
  p.start();
  CHECK(q.get() == "hello x3");
  p.join();
}

TEST_CASE("current_process names the child and its parent", "[process]") {
  Queue<std::string> q;
  Process p(ProcessOptions{.name = "worker"}, [q]() mutable {
    const auto me = shmq::current_process();
    q.put(me.name + " " + std::to_string(me.pid) + " " + std::to_string(me.parent_pid));
  });
  CHECK(shmq::current_process().name == "MainProcess");
  p.start();
  CHECK(q.get() == "worker " + std::to_string(p.pid()) + " " + std::to_string(getpid()));
  p.join();
  CHECK(Process([] {}).name().rfind("Process-", 0) == 0);
}

TEST_CASE("output buffered before a fork is printed once", "[process]") {
  Capture out(STDOUT_FILENO);
  std::printf("parent before fork;");  // still in stdio's buffer: no newline, not flushed
  Process p([] { std::printf("child;"); });
  p.start();
  p.join();
  const std::string text = out.text();
  CHECK(count(text, "parent before fork;") == 1);
  CHECK(count(text, "child;") == 1);
}

TEST_CASE("the child ends with _exit: the parent's atexit handlers do not run in it", "[process]") {
  static int fd = -1;
  Capture out(STDOUT_FILENO);
  fd = STDOUT_FILENO;
  Process p([] {
    std::atexit([] { (void)!write(fd, "atexit ran;", 11); });
  });
  p.start();
  p.join();
  CHECK(out.text().find("atexit ran") == std::string::npos);
}

TEST_CASE("a daemon child is terminated when its handle goes", "[process]") {
  Queue<int> never;
  pid_t pid = 0;
  {
    Process p(ProcessOptions{.name = "d", .daemon = true}, [never]() mutable { never.get(); });
    p.start();
    pid = p.pid();
  }
  CHECK(kill(pid, 0) == -1);  // terminated and reaped: no such process any more
}

TEST_CASE("a non-daemon child whose handle goes without join is joined", "[process]") {
  Queue<int> done;
  Queue<int> go;
  {
    Process p([done, go]() mutable {
      go.get();
      done.put(1);
    });
    p.start();
    go.put(0);
  }  // waits here for the child to finish
  CHECK(done.try_get() == 1);
}

TEST_CASE("a daemon child is terminated when its parent dies", "[process]") {
  Queue<int> pids;
  Process parent([pids]() mutable {
    Process child(ProcessOptions{.daemon = true}, [] { pause(); });
    child.start();
    pids.put(child.pid());
    pause();  // killed below, with the daemon still running
  });
  parent.start();
  const pid_t orphan = pids.get();
  parent.kill();
  parent.join();
  // The orphan, reparented to init (or a subreaper), gets SIGTERM from the kernel.
  CHECK(shmq::test::eventually([&] { return ended(orphan); }));
}

TEST_CASE("a child forked while other threads use a queue can use the queue", "[process]") {
  Queue<int> q(QueueOptions{.maxsize = 0, .capacity_bytes = 4096});
  std::atomic<bool> stop{false};
  std::thread busy([&] {
    while (!stop) {
      q.try_put(1);
      q.try_get();
    }
  });
  Queue<int> result;
  std::vector<Process> children;
  for (int i = 0; i < 8; ++i) {
    children.emplace_back([q, result]() mutable {
      q.put(2);
      result.put(1);
    });
  }
  for (auto& c : children) c.start();
  int finished = 0;
  for (int i = 0; i < 8; ++i) finished += result.get(60s);
  stop = true;
  busy.join();
  for (auto& c : children) {
    c.join();
    CHECK(c.exitcode() == 0);
  }
  CHECK(finished == 8);
}

TEST_CASE("a failed fork throws Error with the reason and leaves the Process unstarted", "[process][fault]") {
  if (geteuid() != 0) {
    WARN("skipped: needs root to become a user with no processes left (RLIMIT_NPROC)");
    return;
  }
  Queue<std::string> outcome;
  shmq::test::Child child([outcome]() mutable {
    // As nobody, allowed no further process: fork fails with EAGAIN.
    const rlimit none{0, 0};
    if (setgid(65534) != 0 || setuid(65534) != 0 || setrlimit(RLIMIT_NPROC, &none) != 0) {
      throw std::runtime_error("cannot set up the limit");
    }
    Process p([] {});
    try {
      p.start();
      outcome.put("started");
    } catch (const shmq::Error& e) {
      outcome.put(std::string(e.what()) + (p.pid() == 0 && !p.is_alive() ? " [unchanged]" : " [changed]"));
    }
  });
  REQUIRE(child.succeeded());
  const std::string what = outcome.try_get().value_or("no report");
  CHECK(what.find("fork failed: Resource temporarily unavailable") != std::string::npos);
  CHECK(what.find("[unchanged]") != std::string::npos);
}

// ---- Helpers made on a thread that then ends: each follows the process, not the thread.

TEST_CASE("a daemon child started on a thread that ends lives on while its process lives", "[process]") {
  Queue<int> ask;
  Queue<int> answer;
  Process echo(ProcessOptions{.name = "echo", .daemon = true}, [ask, answer]() mutable {
    for (;;) answer.put(ask.get());
  });
  int first = 0;
  run_on_ending_thread([&] {
    echo.start();
    ask.put(1);
    first = answer.get(60s);
  });
  CHECK(first == 1);
  ask.put(5);
  CHECK(answer.get(10s) == 5);
  CHECK(echo.is_alive());
}

TEST_CASE("a pool made on a thread that ends keeps working, and still ends with its process",
          "[pool][process]") {
  SECTION("the pool works on") {
    std::optional<shmq::Pool> pool;
    int first = 0;
    run_on_ending_thread([&] {
      pool.emplace(1);
      first = pool->apply(square, 2);  // the manager has set itself up: it forked this worker
    });
    CHECK(first == 4);
    CHECK(pool->apply(square, 3) == 9);
    CHECK(pool->map(square, std::vector<int>{1, 2, 3}, 1) == std::vector<int>{1, 4, 9});
  }
  SECTION("the pool's processes end when the process that made it is killed") {
    Queue<int> pids;
    Process owner([pids]() mutable {
      std::optional<shmq::Pool> pool;
      run_on_ending_thread([&] {
        pool.emplace(1);
        pids.put(pool->apply([] { return static_cast<int>(getpid()); }));
      });
      pause();  // killed here, with the pool running
    });
    owner.start();
    const pid_t worker = pids.get(60s);
    const pid_t manager = shmq::test::parent_of(worker);
    CHECK(shmq::test::parent_of(manager) == owner.pid());
    owner.kill();
    owner.join();
    CHECK(shmq::test::eventually([&] { return ended(manager) && ended(worker); }));
    // Its unnamed queues are not removed by a SIGKILL (see the README): remove them here.
    shmq::detail::remove_segments_with_prefix("anon-" + std::to_string(owner.pid()) + "-");
  }
}

TEST_CASE("a Manager made on a thread that ends keeps its queues until it is destroyed", "[manager]") {
  std::optional<shmq::Manager> manager;
  std::optional<Queue<int>> q;
  pid_t guardian = 0;
  run_on_ending_thread([&] {
    manager.emplace();
    q.emplace(manager->Queue<int>());
    guardian = sleeping_only_child_of_this_thread();
  });
  REQUIRE(guardian > 0);
  // A guardian provoked by the thread's end would wake within microseconds to remove the queues;
  // one that follows the process sleeps on.
  CHECK_FALSE(shmq::test::eventually([&] { return shmq::test::process_state(guardian) != 'S'; }, 1s));
  REQUIRE(shmq::test::segment_exists(q->name()));
  q->put(4);
  CHECK(q->get() == 4);
  CHECK(shmq::test::segment_exists(manager->Queue<int>().name()));
  manager.reset();
  CHECK_FALSE(shmq::test::segment_exists(q->name()));
}
