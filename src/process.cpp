// Process: fork, run, report, reap.
#include "shmq/process.hpp"

#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>

#include "shmq/detail/demangle.hpp"
#include "shmq/errors.hpp"

namespace shmq {

namespace {

// This process's name for current_process(); a child sets it to its Process's name.
std::string& own_name() {
  static std::string name = "MainProcess";
  return name;
}

// The process that started this one, for parent_process().
std::optional<ProcessInfo>& own_parent() {
  static std::optional<ProcessInfo> parent;
  return parent;
}

// The children started by Process::start() in this process, for active_children(); by pid (a
// recycled pid replaces the entry of the reaped child that had it).
struct StartedChildren {
  std::mutex mutex;
  std::vector<ProcessInfo> children;
};
// Replaced, not cleared, in a forked child: another thread of the parent may have held the mutex
// (or been changing the list) at the fork. The parent's copy is left to leak.
StartedChildren*& started_children_of_this_process() {
  static StartedChildren* started = new StartedChildren;
  return started;
}
StartedChildren& started_children() {
  return *started_children_of_this_process();
}

void record_started(ProcessInfo child) {
  auto& started = started_children();
  std::lock_guard lock(started.mutex);
  auto& children = started.children;
  children.erase(std::remove_if(children.begin(), children.end(),
                                [&](const ProcessInfo& c) { return c.pid == child.pid; }),
                 children.end());
  children.push_back(std::move(child));
}

// Python numbers unnamed processes Process-1, Process-2, ... within each parent.
std::string default_name() {
  static std::atomic<unsigned> made{0};
  return "Process-" + std::to_string(made.fetch_add(1) + 1);
}

std::string quoted(const std::string& name) {
  return "'" + name + "'";
}

// The child's side: fn, with its exception (if any) reported as Python prints a traceback.
int run_target(const std::string& name, const ProcessInfo& parent,
               const std::function<int()>& target) {
  detail::set_process_identity(name, parent);
  try {
    return target();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "Process %s (pid %d): %s: %s\n", name.c_str(), getpid(),
                 detail::current_exception_type_name().c_str(), e.what());
  } catch (...) {
    std::fprintf(stderr, "Process %s (pid %d): an exception of type %s\n", name.c_str(), getpid(),
                 detail::current_exception_type_name().c_str());
  }
  return 1;
}

}  // namespace

ProcessInfo current_process() {
  return {own_name(), getpid(), getppid()};
}

std::optional<ProcessInfo> parent_process() {
  return own_parent();
}

std::vector<ProcessInfo> active_children() {
  auto& started = started_children();
  std::lock_guard lock(started.mutex);
  auto& children = started.children;
  // WNOWAIT: look without reaping, which stays the Process object's job. ECHILD: reaped already
  // (by its Process, or by the kernel under an ignored SIGCHLD).
  children.erase(std::remove_if(children.begin(), children.end(),
                                [](const ProcessInfo& child) {
                                  siginfo_t info{};
                                  return waitid(P_PID, static_cast<id_t>(child.pid), &info,
                                                WEXITED | WNOHANG | WNOWAIT) != 0 ||
                                         info.si_pid != 0;
                                }),
                 children.end());
  return children;
}

std::size_t cpu_count() {
  const long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<std::size_t>(n) : 1;
}

namespace detail {
void set_process_identity(std::string name, ProcessInfo parent) {
  own_name() = std::move(name);
  own_parent() = std::move(parent);
  started_children_of_this_process() = new StartedChildren;
}
}  // namespace detail

Process::Process(ProcessOptions options, Target target)
    : name_(options.name.empty() ? default_name() : std::move(options.name)),
      daemon_(options.daemon),
      target_(std::move(target)) {}

Process::Process(Process&& other) noexcept
    : name_(std::move(other.name_)),
      daemon_(other.daemon_),
      target_(std::move(other.target_)),
      child_(std::move(other.child_)),
      life_sign_(std::exchange(other.life_sign_, nullptr)),
      sentinel_(std::exchange(other.sentinel_, -1)),
      closed_(other.closed_) {}

Process& Process::operator=(Process&& other) noexcept {
  // The child this object had goes with `old`, whose destructor joins or terminates it.
  Process old(std::move(*this));
  name_ = std::move(other.name_);
  daemon_ = other.daemon_;
  target_ = std::move(other.target_);
  child_ = std::move(other.child_);
  life_sign_ = std::exchange(other.life_sign_, nullptr);
  sentinel_ = std::exchange(other.sentinel_, -1);
  closed_ = other.closed_;
  return *this;
}

Process::~Process() {
  if (child_.pid() != 0 && !child_.reap()) {
    if (daemon_) {
      terminate();
      if (!join(std::chrono::seconds(1))) kill();
    }
    join_until(detail::Deadline::never());
  }
  close();
}

void Process::start() {
  if (child_.pid() != 0) throw Error("shmq: process " + quoted(name_) + " was already started");
  // terminate() must end the child, but a SIGTERM handler inherited from the parent (a test
  // runner's, an application's shutdown hook) would run in its place; fn may install its own.
  detail::SpawnOptions options;
  options.dispositions = {detail::Disposition::reset(SIGTERM)};
  options.unblocked = {SIGTERM};  // nor a mask inherited from a program that blocks it
  if (daemon_) options.on_parent_death = SIGTERM;
  void* page = mmap(nullptr, sizeof(detail::RobustMutex), PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) {
    throw Error("shmq: process " + quoted(name_) +
                ": cannot map its life-sign page: " + std::strerror(errno));
  }
  auto* life_sign = new (page) detail::RobustMutex{};
  ProcessInfo parent = current_process();
  parent.parent_pid = 0;  // parent_process() reports the parent's name and pid only
  try {
    child_ = detail::Child::spawn("process " + quoted(name_), options, [this, life_sign, &parent] {
      // Held until the child dies; if the lock cannot be taken, wait() sees the end through the
      // sentinel within kLongestSleep instead.
      try {
        detail::try_lock(*life_sign, detail::this_thread_identity());
      } catch (const Error&) {
      }
      return run_target(name_, parent, target_);
    });
  } catch (...) {
    munmap(page, sizeof(detail::RobustMutex));
    throw;
  }
  life_sign_ = life_sign;
  sentinel_ = fcntl(child_.pidfd(), F_DUPFD_CLOEXEC, 0);  // -1 (no descriptor left): see sentinel()
  record_started({name_, child_.pid(), getpid()});
}

int Process::sentinel() const {
  if (child_.pid() == 0 || closed_) {
    throw InvalidArgument("shmq: process " + quoted(name_) +
                          (closed_ ? " is closed" : " was never started") + ": it has no sentinel");
  }
  if (sentinel_ < 0) {
    throw Error("shmq: process " + quoted(name_) +
                ": no descriptor was left for its sentinel when it started (RLIMIT_NOFILE)");
  }
  return sentinel_;
}

void Process::close() {
  if (closed_) return;
  if (child_.pid() != 0 && !child_.reap()) {
    throw InvalidArgument("shmq: process " + quoted(name_) + " (pid " +
                          std::to_string(child_.pid()) + ") is still running: cannot close it");
  }
  if (sentinel_ >= 0) ::close(std::exchange(sentinel_, -1));
  if (life_sign_ != nullptr)
    munmap(std::exchange(life_sign_, nullptr), sizeof(detail::RobustMutex));
  closed_ = true;
}

// wait()'s view of a Process: ended when the kernel has marked the child's life-sign lock
// FUTEX_OWNER_DIED, or, while the child has not taken it (just forked, or it could not), when the
// sentinel is readable.
const detail::WaitOps Process::kWaitOps{
    [](const void* object) noexcept {
      const auto* p = static_cast<const Process*>(object);
      const std::uint32_t word = p->life_sign_->word.load(std::memory_order_acquire);
      if ((word & FUTEX_OWNER_DIED) != 0) return true;
      if ((word & FUTEX_TID_MASK) != 0) return false;
      pollfd ended{p->sentinel_, POLLIN, 0};
      return ::poll(&ended, 1, 0) == 1;
    },
    [](const void*) noexcept -> detail::EventCount* { return nullptr; },
    [](const void* object) noexcept {
      // Asks the kernel to wake us when the child dies: it wakes only if FUTEX_WAITERS is set.
      auto& word = static_cast<const Process*>(object)->life_sign_->word;
      std::uint32_t now = word.load(std::memory_order_relaxed);
      if ((now & FUTEX_TID_MASK) != 0 && (now & (FUTEX_OWNER_DIED | FUTEX_WAITERS)) == 0 &&
          word.compare_exchange_strong(now, now | FUTEX_WAITERS, std::memory_order_relaxed)) {
        now |= FUTEX_WAITERS;
      }
      return detail::FutexWord{&word, now};
    },
    nullptr};

detail::WaitItem wait_item(const Process& p) {
  p.sentinel();  // throws before start() and after close()
  return {&p, &Process::kWaitOps};
}

void Process::join() {
  join_until(detail::Deadline::never());
}

bool Process::join_until(const detail::Deadline& deadline) {
  if (child_.pid() == 0)
    throw Error("shmq: process " + quoted(name_) + " was never started: cannot join it");
  return child_.wait_until(deadline);
}

bool Process::is_alive() {
  return child_.pid() != 0 && !child_.reap();
}

std::optional<int> Process::exitcode() {
  if (child_.pid() == 0 || !child_.reap()) return std::nullopt;
  const std::optional<int> status = child_.wait_status();
  if (!status) {
    throw ExitStatusLost(
        "shmq: process " + quoted(name_) + " (pid " + std::to_string(child_.pid()) +
        ") did not return from its function (a signal ended it, or it called exit), "
        "and its exit status was collected by someone else (SIGCHLD set to SIG_IGN, "
        "or a SIGCHLD handler that reaps children): its exit code is unknown");
  }
  return WIFSIGNALED(*status) ? -WTERMSIG(*status) : WEXITSTATUS(*status);
}

void Process::terminate() {
  child_.signal(SIGTERM);
}
void Process::kill() {
  child_.signal(SIGKILL);
}

}  // namespace shmq
