// The Eclipse iceoryx peer of shmq_bench: see iceoryx_peer.hpp.
#include "iceoryx_peer.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

#if SHMQ_BENCH_ICEORYX
#include "iceoryx_hoofs/log/logmanager.hpp"
#include "iceoryx_posh/capro/service_description.hpp"
#include "iceoryx_posh/internal/runtime/posh_runtime_impl.hpp"
#include "iceoryx_posh/popo/untyped_publisher.hpp"
#include "iceoryx_posh/popo/untyped_subscriber.hpp"
#include "iceoryx_posh/popo/wait_set.hpp"

namespace iceoryx_peer {

namespace {

using Clock = std::chrono::steady_clock;

// The benchmark's pid, set when its Daemon starts: every process of one benchmark run names its
// runtime after it, so leftovers of killed processes can be found and removed.
pid_t bench_pid = 0;
std::string runtime_prefix() {
  return "shmq-bench-" + std::to_string(bench_pid) + "-";
}

// Waits for pid to end, at most `seconds`; true (and *status set) if it did.
bool wait_for_exit(pid_t pid, double seconds, int* status) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
  for (;;) {
    const pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid || (r < 0 && errno != EINTR)) return true;
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exit status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by SIG") + sigabbrev_np(WTERMSIG(status));
  return "status " + std::to_string(status);
}

// The daemon's memory: one segment with a pool of chunks for each message size the benchmark
// sends (8 B, 256 B, 4 KiB, 64 KiB; a pool's size is the largest payload it takes), each pool
// with room for the two topics of a round trip or one of a 1 -> 1 run with a full subscriber queue
// (256 chunks at most), a loaned chunk and a taken one, and for the chunks of a killed process that
// RouDi has not yet taken back.
constexpr const char* kConfig =
    "[general]\nversion = 1\n\n[[segment]]\n\n"
    "[[segment.mempool]]\nsize = 128\ncount = 2048\n\n"
    "[[segment.mempool]]\nsize = 1024\ncount = 2048\n\n"
    "[[segment.mempool]]\nsize = 8192\ncount = 1024\n\n"
    "[[segment.mempool]]\nsize = 65536\ncount = 256\n";

// The names iceoryx 2.0 gives a daemon's resources (iceoryx_posh_types.hpp, platform_settings.hpp);
// the data segment is named after the user's group.
void remove_daemon_leftovers() {
  shm_unlink("/iceoryx_mgmt");
  if (const group* g = getgrgid(getegid())) shm_unlink(("/" + std::string(g->gr_name)).c_str());
  unlink("/tmp/roudi");
  unlink("/tmp/roudi.lock");
  unlink("/tmp/iox-unique-roudi.lock");
}

// A process of ours that was killed leaves its runtime's socket and lock, /tmp/<runtime
// name>[.lock]: removed for this benchmark, and for any earlier one that is no longer running
// (killed itself, its daemon told our processes to end, SIGTERM, as it does to every process still
// registered).
void remove_runtime_leftovers() {
  DIR* tmp = opendir("/tmp");
  if (tmp == nullptr) return;
  while (const dirent* e = readdir(tmp)) {
    char* after = nullptr;
    if (std::strncmp(e->d_name, "shmq-bench-", 11) != 0) continue;
    const long owner = std::strtol(e->d_name + 11, &after, 10);
    if (after == e->d_name + 11 || *after != '-' || owner <= 0) continue;
    if (owner == bench_pid || (kill(static_cast<pid_t>(owner), 0) != 0 && errno == ESRCH)) {
      unlink(("/tmp/" + std::string(e->d_name)).c_str());
    }
  }
  closedir(tmp);
}

}  // namespace

// ---------------------------------------------------------------- the daemon

std::string Daemon::log_tail() const {
  std::string all;
  char buf[4096];
  for (off_t at = 0;;) {
    const ssize_t n = pread(log_fd_, buf, sizeof buf, at);
    if (n <= 0) break;
    all.append(buf, static_cast<std::size_t>(n));
    at += n;
  }
  std::string plain;  // without the terminal's colour codes (ESC [ ... m)
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (all[i] == '\x1b') {
      i = all.find('m', i);
      if (i == std::string::npos) break;
    } else {
      plain += all[i];
    }
  }
  if (plain.size() > 600) plain = "..." + plain.substr(plain.size() - 600);
  return plain;
}

Daemon::Daemon() {
  bench_pid = getpid();
  remove_runtime_leftovers();
  char config[] = "/tmp/shmq-bench-roudi-XXXXXX.toml";
  const int config_fd = mkstemps(config, 5);
  char log[] = "/tmp/shmq-bench-roudi-log-XXXXXX";
  log_fd_ = mkstemp(log);
  if (config_fd < 0 || log_fd_ < 0 ||
      write(config_fd, kConfig, std::strlen(kConfig)) !=
          static_cast<ssize_t>(std::strlen(kConfig))) {
    why_ = std::string("cannot write iox-roudi's files in /tmp: ") + std::strerror(errno);
  }
  if (config_fd >= 0) close(config_fd);
  if (log_fd_ >= 0) unlink(log);
  if (why_.empty()) {
    std::fflush(nullptr);
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);  // a daemon never outlives the benchmark
      if (getppid() != parent) _exit(127);
      const int null = open("/dev/null", O_RDONLY);
      dup2(null, 0);
      dup2(log_fd_, 1);
      dup2(log_fd_, 2);
      execlp("iox-roudi", "iox-roudi", "--config-file", config, "--log-level", "warning",
             static_cast<char*>(nullptr));
      std::fprintf(stderr, "cannot run iox-roudi: %s\n", std::strerror(errno));
      _exit(127);
    }
    if (pid_ < 0) why_ = std::string("fork: ") + std::strerror(errno);
  }
  // RouDi prints this line once its shared memory and its socket are set up.
  const auto deadline = Clock::now() + std::chrono::seconds(kStartSeconds);
  while (why_.empty() && log_tail().find("RouDi is ready for clients") == std::string::npos) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      why_ = "iox-roudi did not start (" + describe_status(status) + "): " + log_tail();
    } else if (Clock::now() > deadline) {
      why_ = "iox-roudi was not ready after " + std::to_string(kStartSeconds) + " s: " + log_tail();
      stop();
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  unlink(config);
}

void Daemon::stop() {
  if (pid_ <= 0) return;
  int status = 0;
  kill(pid_, SIGTERM);  // RouDi's orderly shutdown: it removes its shared memory and its socket
  if (!wait_for_exit(pid_, kStopSeconds, &status)) {
    kill(pid_, SIGKILL);
    waitpid(pid_, &status, 0);
  }
  pid_ = -1;
  if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) remove_daemon_leftovers();
}

std::string Daemon::unavailable() {
  int status = 0;
  if (why_.empty() && pid_ > 0 && waitpid(pid_, &status, WNOHANG) == pid_) {
    pid_ = -1;
    why_ = "iox-roudi ended during the benchmark (" + describe_status(status) + ")";
    remove_daemon_leftovers();
  }
  return why_;
}

Daemon::~Daemon() {
  stop();
  remove_runtime_leftovers();
  if (log_fd_ >= 0) close(log_fd_);
}

// ---------------------------------------------------------------- runtime, publisher, subscriber

namespace {

iox::capro::IdString_t id(const std::string& s) {
  return iox::capro::IdString_t(iox::cxx::TruncateToCapacity, s.c_str());
}
iox::capro::ServiceDescription service(const std::string& topic) {
  return {id("shmq-bench"), id(std::to_string(bench_pid)), id(topic)};
}

// iceoryx's own runtime is a function-local static that deregisters only in exit(), which a
// forked child of the benchmark must not call (the parent's static destructors are not its own);
// this one is an ordinary object, made the process's runtime through iceoryx's factory hook.
class ScopedRuntime final : public iox::runtime::PoshRuntimeImpl {
 public:
  explicit ScopedRuntime(const iox::RuntimeName_t& name)
      : PoshRuntimeImpl(iox::cxx::optional<const iox::RuntimeName_t*>(&name)) {
    current = this;
    setRuntimeFactory(&instance);
  }
  ~ScopedRuntime() override { current = nullptr; }

 private:
  static inline ScopedRuntime* current = nullptr;
  static PoshRuntime& instance(iox::cxx::optional<const iox::RuntimeName_t*>) noexcept {
    if (current == nullptr) {
      std::fprintf(stderr, "iceoryx used in a process with no Runtime\n");
      std::abort();
    }
    return *current;
  }
};

}  // namespace

// iceoryx logs every registration at its default level (verbose): only warnings and errors here.
bool quiet_log() {
  iox::log::LogManager::GetLogManager().SetDefaultLogLevel(iox::log::LogLevel::kWarn,
                                                           iox::log::LogLevelOutput::kHideLogLevel);
  return true;
}

struct Runtime::Impl {
  bool quiet = quiet_log();  // before the runtime makes its loggers
  iox::RuntimeName_t name{iox::cxx::TruncateToCapacity,
                          (runtime_prefix() + std::to_string(getpid())).c_str()};
  ScopedRuntime runtime{name};
};

Runtime::Runtime() : impl_(std::make_unique<Impl>()) {}
Runtime::~Runtime() = default;

struct Publisher::Impl {
  std::uint32_t size;
  iox::popo::UntypedPublisher publisher;
  static iox::popo::PublisherOptions options() {
    iox::popo::PublisherOptions o;
    o.historyCapacity = 0;
    o.subscriberTooSlowPolicy = iox::popo::ConsumerTooSlowPolicy::WAIT_FOR_CONSUMER;
    return o;
  }
  Impl(const std::string& topic, std::size_t s)
      : size(static_cast<std::uint32_t>(s)), publisher(service(topic), options()) {}
};

Publisher::Publisher(const std::string& topic, std::size_t size)
    : impl_(std::make_unique<Impl>(topic, size)) {}
Publisher::~Publisher() = default;
Publisher::Publisher(Publisher&&) noexcept = default;

bool Publisher::await_subscriber(double seconds) {
  // RouDi connects the two sides in its discovery loop (every 100 ms); there is no event for it.
  const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
  while (!impl_->publisher.hasSubscribers()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

std::byte* Publisher::loan() {
  auto chunk = impl_->publisher.loan(impl_->size, alignof(std::uint64_t));
  if (chunk.has_error()) {
    throw std::runtime_error("iceoryx: loan of " + std::to_string(impl_->size) +
                             " bytes failed (AllocationError " +
                             std::to_string(static_cast<int>(chunk.get_error())) + ")");
  }
  return static_cast<std::byte*>(chunk.value());
}

void Publisher::publish(std::byte* payload) {
  impl_->publisher.publish(payload);
}

struct Subscriber::Impl {
  iox::popo::UntypedSubscriber subscriber;
  std::optional<iox::popo::WaitSet<>> waitset;  // declared after the subscriber: detached first
  static iox::popo::SubscriberOptions options(std::size_t queue_capacity) {
    iox::popo::SubscriberOptions o;
    o.queueCapacity = std::min(queue_capacity, kMaxQueueCapacity);
    o.historyRequest = 0;
    o.queueFullPolicy = iox::popo::QueueFullPolicy::BLOCK_PRODUCER;
    return o;
  }
  Impl(const std::string& topic, std::size_t queue_capacity, Wait wait)
      : subscriber(service(topic), options(queue_capacity)) {
    if (wait == Wait::waitset) {
      waitset.emplace();
      if (waitset->attachState(subscriber, iox::popo::SubscriberState::HAS_DATA).has_error()) {
        throw std::runtime_error("iceoryx: cannot attach the subscriber to a WaitSet");
      }
    }
  }
};

Subscriber::Subscriber(const std::string& topic, std::size_t queue_capacity, Wait wait)
    : impl_(std::make_unique<Impl>(topic, queue_capacity, wait)) {}
Subscriber::~Subscriber() = default;
Subscriber::Subscriber(Subscriber&&) noexcept = default;

const std::byte* Subscriber::take() {
  for (;;) {
    auto chunk = impl_->subscriber.take();
    if (!chunk.has_error()) return static_cast<const std::byte*>(chunk.value());
    if (chunk.get_error() != iox::popo::ChunkReceiveResult::NO_CHUNK_AVAILABLE) {
      throw std::runtime_error("iceoryx: take failed: too many chunks held at once");
    }
    if (impl_->waitset) impl_->waitset->wait();
  }
}

void Subscriber::release(const std::byte* payload) {
  impl_->subscriber.release(payload);
}

}  // namespace iceoryx_peer

#else  // built without iceoryx: the daemon says so, and nothing else is ever called

namespace iceoryx_peer {

constexpr const char* kNotInstalled =
    "iceoryx not installed (its packages were not found when the benchmark was configured)";
Daemon::Daemon() {
  why_ = kNotInstalled;
}
Daemon::~Daemon() = default;
std::string Daemon::unavailable() {
  return why_;
}

struct Runtime::Impl {};
Runtime::Runtime() {
  throw std::logic_error(kNotInstalled);
}
Runtime::~Runtime() = default;
struct Publisher::Impl {};
Publisher::Publisher(const std::string&, std::size_t) {
  throw std::logic_error(kNotInstalled);
}
Publisher::~Publisher() = default;
Publisher::Publisher(Publisher&&) noexcept = default;
bool Publisher::await_subscriber(double) {
  return false;
}
std::byte* Publisher::loan() {
  return nullptr;
}
void Publisher::publish(std::byte*) {}
struct Subscriber::Impl {};
Subscriber::Subscriber(const std::string&, std::size_t, Wait) {
  throw std::logic_error(kNotInstalled);
}
Subscriber::~Subscriber() = default;
Subscriber::Subscriber(Subscriber&&) noexcept = default;
const std::byte* Subscriber::take() {
  return nullptr;
}
void Subscriber::release(const std::byte*) {}

}  // namespace iceoryx_peer

#endif
