// shmq_bench: shmq and its peers on the same scenarios, in one run, on one machine.
//
// Peers: Boost.Interprocess message_queue, POSIX mq, a pipe, a mutex+condvar ring written the naive
// way (lock, copy, signal every time), a lock-free single-producer/single-consumer spinning ring
// (the hardware's practical limit), and Python's multiprocessing (bench/python_peer.py, when python3
// is present). Every scenario runs each peer in turn, A B C A B C ..., for --reps repetitions, and
// reports the median, so a noisy machine cannot favour one side. Every message is verified (count
// and checksum): a run that loses or corrupts one is an error and the benchmark exits non-zero.
//
//   shmq_bench            the full run (a few minutes on 2 cores)
//   shmq_bench --quick    a smoke run for CI: tiny counts, one repetition, checks only that every
//                         scenario runs and verifies; its timings mean nothing
//   shmq_bench --json     machine-readable results
#include <boost/interprocess/ipc/message_queue.hpp>
#include <fcntl.h>
#include <mqueue.h>
#include <pthread.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "iceoryx_peer.hpp"
#include "shmq/shmq.hpp"

namespace bip = boost::interprocess;
using Clock = std::chrono::steady_clock;

namespace {

// ---------------------------------------------------------------- settings and results

struct Settings {
  bool quick = false;
  bool json = false;
  int reps = 5;
  std::string filter;  // run only scenarios whose name contains this
  std::string python_peer = SHMQ_BENCH_PYTHON_PEER;
};
Settings settings;

struct Result {
  std::string scenario;
  std::string peer;
  double msgs_per_s = 0;  // throughput scenarios
  double mb_per_s = 0;
  double p50_us = 0;  // round-trip scenarios
  double p99_us = 0;
  double seconds = 0;  // whole-job scenarios (Pool.map)
};
std::vector<Result> results;
bool all_verified = true;

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::string unique(const char* what) { return std::string("/shmq-bench-") + what + "-" + std::to_string(getpid()); }

// ---------------------------------------------------------------- the peers, as channels
//
// A channel moves messages of `size` bytes; it is made in the parent before the fork, so every
// process holds it. The first 8 bytes of each message carry its value.

constexpr std::size_t kRingBytes = 1 << 20;  // every bounded peer gets about this much room
std::size_t slots_for(std::size_t size) { return std::max<std::size_t>(16, std::min<std::size_t>(1024, kRingBytes / size)); }

// shmq, with a compile-time message size: a std::array<std::byte, S> is bitwise, so its encoding
// is its bytes. Large messages are read in place with get_with (no temporary copy).
template <std::size_t S>
struct ShmqChannel {
  using Message = std::conditional_t<S == 8, long, std::array<std::byte, S>>;
  shmq::Queue<Message> q{shmq::QueueOptions{.maxsize = 0, .capacity_bytes = kRingBytes}};
  explicit ShmqChannel(std::size_t) {}
  void send(const std::byte* m) { q.put(*reinterpret_cast<const Message*>(m)); }
  void recv(std::byte* m) {
    if constexpr (S <= 256) {
      const Message v = q.get();
      std::memcpy(m, &v, S);
    } else {
      q.get_with([m](const std::byte* at, std::size_t n) { std::memcpy(m, at, n); });
    }
  }
};

// Strings (issue 17): Queue<std::string> of S-byte strings, received with get() (a new string
// each time) or get(out) (one string reused). Each side keeps one std::string: the producer's is
// assigned the message's bytes before each put (a copy the byte-buffer peers do not make), and
// the consumer hands on the first 8 bytes, the value the harness checks, as a user would read
// the string it got.
template <bool kIntoOut>
struct ShmqStringChannel {
  shmq::Queue<std::string> q{shmq::QueueOptions{.maxsize = 0, .capacity_bytes = kRingBytes}};
  std::size_t size;
  std::string sent, got;
  explicit ShmqStringChannel(std::size_t s) : size(s) {}
  void send(const std::byte* m) {
    sent.assign(reinterpret_cast<const char*>(m), size);
    q.put(sent);
  }
  void recv(std::byte* m) {
    if constexpr (kIntoOut) {
      q.get(got);
      std::memcpy(m, got.data(), 8);
    } else {
      const std::string s = q.get();
      std::memcpy(m, s.data(), 8);
    }
  }
};

// Leased gets (issue 15): plain get against get_leased + ack, both decoding the value, on queues
// that differ only in the lease area.
template <std::size_t S, bool kLeased>
struct ShmqLeaseChannel {
  using Message = typename ShmqChannel<S>::Message;
  static shmq::QueueOptions options() {
    shmq::QueueOptions o;
    o.capacity_bytes = kRingBytes;
    if (kLeased) {
      o.max_leases = 16;
      o.lease_message_bytes = S;
    }
    return o;
  }
  shmq::Queue<Message> q{options()};
  explicit ShmqLeaseChannel(std::size_t) {}
  void send(const std::byte* m) { q.put(*reinterpret_cast<const Message*>(m)); }
  void recv(std::byte* m) {
    if constexpr (kLeased) {
      auto lease = q.get_leased();
      std::memcpy(m, &lease.value(), S);
      lease.ack();
    } else {
      const Message v = q.get();
      std::memcpy(m, &v, S);
    }
  }
};

struct BoostChannel {
  std::string name = unique("boost");
  std::size_t size;
  std::unique_ptr<bip::message_queue> q;
  explicit BoostChannel(std::size_t s) : size(s) {
    bip::message_queue::remove(name.c_str());
    q = std::make_unique<bip::message_queue>(bip::create_only, name.c_str(), slots_for(s), s);
  }
  ~BoostChannel() { bip::message_queue::remove(name.c_str()); }
  void send(const std::byte* m) { q->send(m, size, 0); }
  void recv(std::byte* m) {
    std::size_t got;
    unsigned prio;
    q->receive(m, size, got, prio);
  }
};

struct PosixMqChannel {
  std::string name = unique("mq");
  std::size_t size;
  mqd_t q;
  explicit PosixMqChannel(std::size_t s) : size(s) {
    mq_unlink(name.c_str());
    mq_attr attr{};
    attr.mq_maxmsg = 10;  // the default limit for unprivileged users (/proc/sys/fs/mqueue/msg_max)
    attr.mq_msgsize = static_cast<long>(s);
    q = mq_open(name.c_str(), O_CREAT | O_RDWR, 0600, &attr);
    if (q == static_cast<mqd_t>(-1)) throw std::runtime_error("mq_open: " + std::string(std::strerror(errno)));
  }
  ~PosixMqChannel() {
    mq_close(q);
    mq_unlink(name.c_str());
  }
  void send(const std::byte* m) { mq_send(q, reinterpret_cast<const char*>(m), size, 0); }
  void recv(std::byte* m) { mq_receive(q, reinterpret_cast<char*>(m), size, nullptr); }
};

struct PipeChannel {
  int fd[2];
  std::size_t size;
  explicit PipeChannel(std::size_t s) : size(s) {
    if (pipe(fd) != 0) throw std::runtime_error("pipe");
  }
  ~PipeChannel() {
    close(fd[0]);
    close(fd[1]);
  }
  void send(const std::byte* m) {
    for (std::size_t done = 0; done < size;) {
      const ssize_t n = write(fd[1], m + done, size - done);
      if (n <= 0) _exit(3);
      done += static_cast<std::size_t>(n);
    }
  }
  void recv(std::byte* m) {
    for (std::size_t done = 0; done < size;) {
      const ssize_t n = read(fd[0], m + done, size - done);
      if (n <= 0) _exit(3);
      done += static_cast<std::size_t>(n);
    }
  }
};

// The naive ring: one process-shared mutex, two pthread condition variables, a signal every time.
struct NaiveRingChannel {
  struct Shared {
    pthread_mutex_t m;
    pthread_cond_t not_empty, not_full;
    std::size_t head, tail;
  };
  std::size_t size, slots, bytes;
  Shared* r;
  std::byte* data;
  explicit NaiveRingChannel(std::size_t s) : size(s), slots(slots_for(s)), bytes(sizeof(Shared) + slots * s) {
    r = static_cast<Shared*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
    data = reinterpret_cast<std::byte*>(r + 1);
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    pthread_mutex_init(&r->m, &ma);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED);
    pthread_cond_init(&r->not_empty, &ca);
    pthread_cond_init(&r->not_full, &ca);
    r->head = r->tail = 0;
  }
  ~NaiveRingChannel() { munmap(r, bytes); }
  void send(const std::byte* m) {
    pthread_mutex_lock(&r->m);
    while (r->tail - r->head == slots) pthread_cond_wait(&r->not_full, &r->m);
    std::memcpy(data + (r->tail % slots) * size, m, size);
    ++r->tail;
    pthread_cond_signal(&r->not_empty);
    pthread_mutex_unlock(&r->m);
  }
  void recv(std::byte* m) {
    pthread_mutex_lock(&r->m);
    while (r->tail == r->head) pthread_cond_wait(&r->not_empty, &r->m);
    std::memcpy(m, data + (r->head % slots) * size, size);
    ++r->head;
    pthread_cond_signal(&r->not_full);
    pthread_mutex_unlock(&r->m);
  }
};

// The lock-free single-producer/single-consumer ring that spins: no blocking, no syscalls.
struct SpscSpinChannel {
  struct Shared {
    alignas(64) std::atomic<std::size_t> head;
    alignas(64) std::atomic<std::size_t> tail;
  };
  std::size_t size, slots, bytes;
  Shared* r;
  std::byte* data;
  std::size_t head_seen = 0, tail_seen = 0;  // each side's cached copy of the other's index
  explicit SpscSpinChannel(std::size_t s) : size(s), slots(slots_for(s)), bytes(sizeof(Shared) + slots * s) {
    r = new (mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)) Shared{};
    data = reinterpret_cast<std::byte*>(r + 1);
  }
  ~SpscSpinChannel() { munmap(r, bytes); }
  void send(const std::byte* m) {
    const std::size_t t = r->tail.load(std::memory_order_relaxed);
    while (t - head_seen == slots) head_seen = r->head.load(std::memory_order_acquire);
    std::memcpy(data + (t % slots) * size, m, size);
    r->tail.store(t + 1, std::memory_order_release);
  }
  void recv(std::byte* m) {
    const std::size_t h = r->head.load(std::memory_order_relaxed);
    while (h == tail_seen) tail_seen = r->tail.load(std::memory_order_acquire);
    std::memcpy(m, data + (h % slots) * size, size);
    r->head.store(h + 1, std::memory_order_release);
  }
};

// ---------------------------------------------------------------- processes

// Forks fn; the child exits 0 if fn returns true.
pid_t spawn(const std::function<bool()>& fn) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) _exit(fn() ? 0 : 1);
  return pid;
}
bool reap(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

constexpr std::uint64_t kStop = ~std::uint64_t{0};

// Per-consumer tallies, in shared memory so the parent can verify every message.
struct Tally {
  std::uint64_t count;
  std::uint64_t sum;
};

// P producers each send n messages (value p << 40 | i), C consumers receive until a stop message
// (one per consumer: sent by the lone producer for 1 -> 1, else by the parent afterwards, which
// keeps single-producer channels single-producer). Returns msgs/s, or nullopt if any message was
// lost or corrupted.
template <class Channel>
std::optional<double> throughput(std::size_t size, long n, int producers, int consumers) {
  Channel ch(size);
  auto* tallies = static_cast<Tally*>(mmap(nullptr, sizeof(Tally) * static_cast<std::size_t>(consumers),
                                           PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  const bool producer_stops = producers == 1 && consumers == 1;
  auto send_value = [&](std::uint64_t v, std::vector<std::byte>& m) {
    std::memcpy(m.data(), &v, 8);
    ch.send(m.data());
  };
  const auto t0 = Clock::now();
  std::vector<pid_t> ps, cs;
  for (int c = 0; c < consumers; ++c) {
    cs.push_back(spawn([&, c] {
      std::vector<std::byte> m(size);
      Tally t{0, 0};
      for (;;) {
        ch.recv(m.data());
        std::uint64_t v;
        std::memcpy(&v, m.data(), 8);
        if (v == kStop) break;
        ++t.count;
        t.sum += v;
      }
      tallies[c] = t;
      return true;
    }));
  }
  for (int p = 0; p < producers; ++p) {
    ps.push_back(spawn([&, p] {
      std::vector<std::byte> m(size, std::byte{0x5a});
      for (long i = 0; i < n; ++i) send_value(std::uint64_t(p) << 40 | std::uint64_t(i), m);
      if (producer_stops) send_value(kStop, m);
      return true;
    }));
  }
  bool ok = true;
  for (pid_t pid : ps) ok &= reap(pid);
  if (!producer_stops) {
    std::vector<std::byte> m(size);
    for (int c = 0; c < consumers; ++c) send_value(kStop, m);
  }
  for (pid_t pid : cs) ok &= reap(pid);
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::uint64_t count = 0, sum = 0, expected = 0;
  for (int c = 0; c < consumers; ++c) {
    count += tallies[c].count;
    sum += tallies[c].sum;
  }
  for (int p = 0; p < producers; ++p) {
    expected += std::uint64_t(n) * (std::uint64_t(p) << 40) + std::uint64_t(n) * std::uint64_t(n - 1) / 2;
  }
  munmap(tallies, sizeof(Tally) * static_cast<std::size_t>(consumers));
  if (!ok || count != std::uint64_t(producers) * std::uint64_t(n) || sum != expected) return std::nullopt;
  return double(count) / secs;
}

// Times r round trips of a long: ask(i) sends i to an echo process and returns its answer.
template <class Ask>
std::optional<std::pair<double, double>> timed_round_trips(long r, pid_t echo, Ask&& ask) {
  std::vector<double> us(static_cast<std::size_t>(r));
  bool ok = true;
  for (long i = 0; i < r; ++i) {
    const auto t0 = Clock::now();
    ok &= ask(i) == i;
    us[static_cast<std::size_t>(i)] = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
  }
  ok &= reap(echo);
  if (!ok) return std::nullopt;
  std::sort(us.begin(), us.end());
  return std::make_pair(us[us.size() / 2], us[us.size() * 99 / 100]);
}

// R round trips of an 8-byte message over two channels; every round trip is timed.
template <class Channel>
std::optional<std::pair<double, double>> round_trips(long r) {
  Channel there(8), back(8);
  const pid_t echo = spawn([&] {
    std::byte m[8];
    for (long i = 0; i < r; ++i) {
      there.recv(m);
      back.send(m);
    }
    return true;
  });
  return timed_round_trips(r, echo, [&](long i) {
    std::byte m[8];
    std::memcpy(m, &i, 8);
    there.send(m);
    back.recv(m);
    long v;
    std::memcpy(&v, m, 8);
    return v;
  });
}

// shmq's batch calls, 1 -> 1, 8-byte messages: put_many of 256 at a time, get_many of up to 4096.
std::optional<double> shmq_batches(long n) {
  shmq::Queue<long> q(shmq::QueueOptions{.maxsize = 0, .capacity_bytes = kRingBytes});
  const auto t0 = Clock::now();
  const pid_t consumer = spawn([&] {
    std::vector<long> got;
    long count = 0, sum = 0;
    while (count < n) {
      got.clear();
      q.get_many(got, 4096);
      for (long v : got) sum += v;
      count += static_cast<long>(got.size());
    }
    return count == n && sum == n * (n - 1) / 2;
  });
  const pid_t producer = spawn([&] {
    std::vector<long> batch(256);
    for (long i = 0; i < n;) {
      const long k = std::min<long>(256, n - i);
      batch.resize(static_cast<std::size_t>(k));
      for (long j = 0; j < k; ++j) batch[static_cast<std::size_t>(j)] = i + j;
      q.put_many(batch);
      i += k;
    }
    return true;
  });
  const bool ok = reap(producer) & reap(consumer);
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!ok) return std::nullopt;
  return double(n) / secs;
}

int plus_one(int x) { return x + 1; }

// shmq's Pool.map of trivial tasks, as Python's Pool.map is measured by python_peer.py.
std::optional<double> shmq_pool_map(int items) {
  std::vector<int> in(static_cast<std::size_t>(items));
  for (int i = 0; i < items; ++i) in[static_cast<std::size_t>(i)] = i;
  shmq::Pool pool(2);
  const auto t0 = Clock::now();
  const auto out = pool.map(plus_one, in);
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  for (int i = 0; i < items; ++i) {
    if (out[static_cast<std::size_t>(i)] != i + 1) return std::nullopt;
  }
  return secs;
}

// One core copying n messages of `size` bytes, with no other process: the yardstick of the 64 KiB
// target. The copies walk through source and destination buffers of `span` bytes each, so a span of
// one message stays hot in the core's L1/L2, and a span of kRingBytes has a ring's working set.
std::optional<double> memcpy_rate(std::size_t size, std::size_t span, long n) {
  std::vector<std::byte> from(span, std::byte{1}), to(span);
  const auto t0 = Clock::now();
  for (std::size_t i = 0, at = 0; i < std::size_t(n); ++i, at = (at + size) % span) {
    std::memcpy(to.data() + at, from.data() + at, size);
    asm volatile("" : : "r"(to.data()) : "memory");  // keep every copy
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  return double(n) / secs;
}

// ---------------------------------------------------------------- running scenarios

// One measurement of one peer; nullopt means it failed verification (or could not run).
using Measure = std::function<std::optional<double>()>;
struct Contender {
  std::string peer;
  Measure measure;
};

void record_failure(const std::string& scenario, const std::string& peer) {
  std::fprintf(stderr, "VERIFICATION FAILED: %s / %s\n", scenario.c_str(), peer.c_str());
  all_verified = false;
}

// Runs every contender once per repetition, in turn, and records each one's median.
bool selected(const std::string& scenario) { return scenario.find(settings.filter) != std::string::npos; }

void compare(const std::string& scenario, std::size_t bytes, std::vector<Contender> contenders,
             bool lower_is_better = false) {
  if (!selected(scenario)) return;
  std::map<std::string, std::vector<double>> samples;
  for (int rep = 0; rep < settings.reps; ++rep) {
    for (const auto& c : contenders) {
      try {
        if (const auto v = c.measure()) {
          samples[c.peer].push_back(*v);
        } else {
          record_failure(scenario, c.peer);
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "%s / %s could not run: %s\n", scenario.c_str(), c.peer.c_str(), e.what());
      }
    }
  }
  for (const auto& c : contenders) {
    if (samples[c.peer].empty()) continue;
    Result r{scenario, c.peer};
    const double m = median(samples[c.peer]);
    if (lower_is_better) {
      r.seconds = m;
    } else {
      r.msgs_per_s = m;
      r.mb_per_s = m * double(bytes) / 1e6;
    }
    results.push_back(r);
  }
}

// shmq's Pool.imap / imap_unordered of trivial items, consumed as they come, as python_peer.py's.
std::optional<double> shmq_pool_imap(int items, std::size_t chunksize, bool ordered) {
  std::vector<int> in(static_cast<std::size_t>(items));
  for (int i = 0; i < items; ++i) in[static_cast<std::size_t>(i)] = i;
  shmq::Pool pool(2);
  long long sum = 0;
  long count = 0;
  const auto consume = [&](auto&& outputs) {
    for (int r : outputs) {
      sum += r;
      ++count;
    }
  };
  const auto t0 = Clock::now();
  if (ordered) {
    consume(pool.imap(plus_one, in, chunksize));
  } else {
    consume(pool.imap_unordered(plus_one, in, chunksize));
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  if (count != items || sum != static_cast<long long>(items) * (items + 1) / 2) return std::nullopt;
  return secs;
}

std::string echo_bytes(std::string s) { return s; }

// A 64 MiB argument to a Pool task and its 64 MiB result back, against two memcpys of as much:
// the first such call of a new pool (`warm` false), or one after a first (the pool reuses the
// memfds of the first).
std::optional<double> shmq_pool_big(std::size_t bytes, bool warm) {
  shmq::Pool pool(1);
  const std::string arg(bytes, 'x');
  pool.apply(echo_bytes, warm ? arg : std::string("warm"));  // the worker is up
  const auto t0 = Clock::now();
  const std::string back = pool.apply(echo_bytes, arg);
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  if (back != arg) return std::nullopt;
  return secs;
}
std::optional<double> two_memcpys(std::size_t bytes) {
  std::vector<char> from(bytes, 'x'), middle(bytes), to(bytes);  // allocated and touched before
  const auto t0 = Clock::now();
  std::memcpy(middle.data(), from.data(), bytes);
  asm volatile("" : : "r"(middle.data()) : "memory");
  std::memcpy(to.data(), middle.data(), bytes);
  asm volatile("" : : "r"(to.data()) : "memory");
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  if (to[bytes - 1] != 'x') return std::nullopt;
  return secs;
}

std::optional<double> two_fresh_copies(std::size_t bytes) {
  const std::string from(bytes, 'x');
  const auto t0 = Clock::now();
  std::string middle(from);  // each into memory the copy must first get from the kernel
  asm volatile("" : : "r"(middle.data()) : "memory");
  std::string to(middle);
  asm volatile("" : : "r"(to.data()) : "memory");
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  if (to[bytes - 1] != 'x') return std::nullopt;
  return secs;
}

// The Pool scenarios of issue 12; Python's lines come from python_peer.py (a run with no filter).
void pool_scenarios() {
  const int imap_items = settings.quick ? 10'000 : 1'000'000;
  const int unordered_items = settings.quick ? 1'000 : 100'000;
  compare("Pool.imap 1M items", 0,
          {{"shmq Pool(2).imap, chunksize 1000",
            [&] { return shmq_pool_imap(imap_items, 1000, true); }}},
          true);
  compare("Pool.imap_unordered 100k", 0,
          {{"shmq Pool(2).imap_unordered, chunksize 1",
            [&] { return shmq_pool_imap(unordered_items, 1, false); }}},
          true);
  const std::size_t big = std::size_t{64} << 20;
  compare("Pool 64 MiB arg+result", 0,
          {{"shmq Pool(1).apply, after one like it", [&] { return shmq_pool_big(big, true); }},
           {"shmq Pool(1).apply, the pool's first", [&] { return shmq_pool_big(big, false); }},
           {"two memcpys of 64 MiB", [&] { return two_memcpys(big); }},
           {"two copies of 64 MiB into new strings", [&] { return two_fresh_copies(big); }}},
          true);
}

template <std::size_t S>
void one_to_one(long n) {
  const std::string scenario = "1->1 " + std::to_string(S) + " B";
  std::vector<Contender> cs = {
      {"shmq", [n] { return throughput<ShmqChannel<S>>(S, n, 1, 1); }},
      {"boost::interprocess::message_queue", [n] { return throughput<BoostChannel>(S, n, 1, 1); }},
      {"POSIX mq", [n] { return throughput<PosixMqChannel>(S, n, 1, 1); }},
      {"pipe", [n] { return throughput<PipeChannel>(S, n, 1, 1); }},
      {"naive mutex+condvar ring", [n] { return throughput<NaiveRingChannel>(S, n, 1, 1); }},
      {"lock-free SPSC spinning ring", [n] { return throughput<SpscSpinChannel>(S, n, 1, 1); }},
  };
  if (S == 65536) {  // the target: at least half of one core's memcpy
    cs.push_back({"memcpy, one core, hot in L1/L2", [n] { return memcpy_rate(S, S, n); }});
    cs.push_back(
        {"memcpy, one core, through 1 MiB", [n] { return memcpy_rate(S, kRingBytes, n); }});
  }
  compare(scenario, S, cs);
}

template <std::size_t S>
void leased_gets(long n) {
  compare("1->1 " + std::to_string(S) + " B, leased", S,
          {
              {"shmq get", [n] { return throughput<ShmqLeaseChannel<S, false>>(S, n, 1, 1); }},
              {"shmq get_leased+ack", [n] { return throughput<ShmqLeaseChannel<S, true>>(S, n, 1, 1); }},
          });
}

// Issue 17: strings, against Boost receiving into a reused buffer.
void string_messages(long n) {
  constexpr std::size_t kBytes = 256;
  compare("1->1 256 B std::string", kBytes,
          {
              {"shmq Queue<std::string> get()", [n] { return throughput<ShmqStringChannel<false>>(kBytes, n, 1, 1); }},
              {"shmq Queue<std::string> get(out)", [n] { return throughput<ShmqStringChannel<true>>(kBytes, n, 1, 1); }},
              {"boost::interprocess::message_queue", [n] { return throughput<BoostChannel>(kBytes, n, 1, 1); }},
          });
}

void four_to_four(long n) {
  compare("4->4 8 B", 8,
          {
              {"shmq", [n] { return throughput<ShmqChannel<8>>(8, n, 4, 4); }},
              {"boost::interprocess::message_queue", [n] { return throughput<BoostChannel>(8, n, 4, 4); }},
              {"POSIX mq", [n] { return throughput<PosixMqChannel>(8, n, 4, 4); }},
              {"pipe", [n] { return throughput<PipeChannel>(8, n, 4, 4); }},
              {"naive mutex+condvar ring", [n] { return throughput<NaiveRingChannel>(8, n, 4, 4); }},
          });
}

void batches(long n) {
  compare("1->1 8 B, batches", 8,
          {
              {"shmq put_many/get_many", [n] { return shmq_batches(n); }},
              {"lock-free SPSC spinning ring", [n] { return throughput<SpscSpinChannel>(8, n, 1, 1); }},
          });
}

using RoundTrips = std::vector<std::pair<std::string, std::function<std::optional<std::pair<double, double>>()>>>;

// Runs every round-trip contender once per repetition, in turn; records each one's median p50 and p99.
void compare_round_trips(const std::string& scenario, const RoundTrips& cs) {
  std::map<std::string, std::vector<double>> p50, p99;
  for (int rep = 0; rep < settings.reps; ++rep) {
    for (const auto& [peer, run] : cs) {
      try {
        if (const auto v = run()) {
          p50[peer].push_back(v->first);
          p99[peer].push_back(v->second);
        } else {
          record_failure(scenario, peer);
        }
      } catch (const std::exception& e) {  // as in compare(): a line that cannot run is left out
        std::fprintf(stderr, "%s / %s could not run: %s\n", scenario.c_str(), peer.c_str(), e.what());
      }
    }
  }
  for (const auto& [peer, run] : cs) {
    if (p50[peer].empty()) continue;
    Result res{scenario, peer};
    res.p50_us = median(p50[peer]);
    res.p99_us = median(p99[peer]);
    results.push_back(res);
  }
}

void ping_pong(long r) {
  const std::string scenario = "round trip 8 B";
  if (!selected(scenario)) return;
  const RoundTrips cs = {
      {"shmq", [r] { return round_trips<ShmqChannel<8>>(r); }},
      {"boost::interprocess::message_queue", [r] { return round_trips<BoostChannel>(r); }},
      {"POSIX mq", [r] { return round_trips<PosixMqChannel>(r); }},
      {"pipe", [r] { return round_trips<PipeChannel>(r); }},
      {"naive mutex+condvar ring", [r] { return round_trips<NaiveRingChannel>(r); }},
      {"lock-free SPSC spinning ring", [r] { return round_trips<SpscSpinChannel>(r); }},
  };
  compare_round_trips(scenario, cs);
}

// ---------------------------------------------------------------- locks and events (issue 14)

// Uncontended acquire + release, n times, in one thread: operations per second.
template <class Lockable>
double lock_rate(Lockable& lock, long n) {
  const auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    lock.lock();
    lock.unlock();
  }
  return double(n) / std::chrono::duration<double>(Clock::now() - t0).count();
}

// A robust, process-shared pthread_mutex_t in shared memory, as a Lockable.
struct RobustPthreadMutex {
  pthread_mutex_t* m;
  RobustPthreadMutex() {
    m = static_cast<pthread_mutex_t*>(mmap(nullptr, sizeof(pthread_mutex_t), PROT_READ | PROT_WRITE,
                                           MAP_SHARED | MAP_ANONYMOUS, -1, 0));
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
  }
  ~RobustPthreadMutex() { munmap(m, sizeof(pthread_mutex_t)); }
  void lock() {
    if (pthread_mutex_lock(m) == EOWNERDEAD) pthread_mutex_consistent(m);
  }
  void unlock() { pthread_mutex_unlock(m); }
};

void lock_uncontended(long n) {
  compare("Lock acquire+release", 0,
          {
              {"shmq::Lock", [n] { shmq::Lock l; return std::optional<double>(lock_rate(l, n)); }},
              {"robust pshared pthread_mutex_t", [n] { RobustPthreadMutex l; return std::optional<double>(lock_rate(l, n)); }},
              {"std::mutex (not robust, not shared)", [n] { std::mutex l; return std::optional<double>(lock_rate(l, n)); }},
          });
}

// A channel of one 8-byte message at a time through an Event: the sender writes the bytes and
// sets the event; the receiver waits for it, clears it and reads the bytes.
struct EventChannel {
  shmq::Event ev;
  shmq::SharedMemory bytes{8};
  explicit EventChannel(std::size_t) {}
  void send(const std::byte* m) {
    std::memcpy(bytes.buf().data(), m, 8);
    ev.set();
  }
  void recv(std::byte* m) {
    ev.wait();
    ev.clear();
    std::memcpy(m, bytes.buf().data(), 8);
  }
};

void event_round_trip(long r) {
  const std::string scenario = "Event set->wake round trip";
  if (!selected(scenario)) return;
  const RoundTrips cs = {
      {"shmq Event set->wait", [r] { return round_trips<EventChannel>(r); }},
      {"shmq Queue<long> put->get", [r] { return round_trips<ShmqChannel<8>>(r); }},
  };
  compare_round_trips(scenario, cs);
}

// ---------------------------------------------------------------- Pipe, wait() and Notifier

// The echo process of the queue-based round trips: gets from `there`, puts on back(value).
template <class Back>
pid_t queue_echo(shmq::Queue<long>& there, long r, Back&& back) {
  return spawn([&] {
    for (long i = 0; i < r; ++i) {
      const long v = there.get();
      back(v).put(v);
    }
    return true;
  });
}

std::optional<std::pair<double, double>> shmq_queue_round_trips(long r) {
  shmq::Queue<long> there, back;
  const pid_t echo = queue_echo(there, r, [&](long) -> shmq::Queue<long>& { return back; });
  return timed_round_trips(r, echo, [&](long i) {
    there.put(i);
    return back.get();
  });
}

std::optional<std::pair<double, double>> shmq_pipe_round_trips(long r) {
  auto [a, b] = shmq::Pipe<long>();
  const pid_t echo = spawn([&] {
    for (long i = 0; i < r; ++i) b.send(b.recv());
    return true;
  });
  b.close();
  return timed_round_trips(r, echo, [&](long i) {
    a.send(i);
    return a.recv();
  });
}

// The answer comes back on one of 16 queues (i % 16), found by shmq::wait on all of them.
std::optional<std::pair<double, double>> shmq_wait_round_trips(long r) {
  shmq::Queue<long> there;
  std::vector<shmq::Queue<long>> back(16);
  const std::vector<shmq::Waitable> all(back.begin(), back.end());
  const pid_t echo = queue_echo(there, r, [&](long v) -> shmq::Queue<long>& { return back[static_cast<std::size_t>(v % 16)]; });
  return timed_round_trips(r, echo, [&](long i) {
    there.put(i);
    const auto ready = shmq::wait(all);
    return *back[ready.at(0)].try_get();
  });
}

// epoll on a Notifier's descriptor watching the answer queue.
std::optional<std::pair<double, double>> shmq_notifier_round_trips(long r) {
  shmq::Queue<long> there, back;
  const pid_t echo = queue_echo(there, r, [&](long) -> shmq::Queue<long>& { return back; });
  shmq::Notifier n({back});
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event in{};
  in.events = EPOLLIN;
  epoll_ctl(ep, EPOLL_CTL_ADD, n.fd(), &in);
  auto result = timed_round_trips(r, echo, [&](long i) {
    there.put(i);
    for (;;) {
      epoll_event ev;
      if (epoll_wait(ep, &ev, 1, -1) != 1) continue;
      n.ready();
      if (auto v = back.try_get()) return *v;
    }
  });
  close(ep);
  return result;
}

// The yardstick for the notifier: OS pipes, the answer's read end in epoll.
std::optional<std::pair<double, double>> pipe_epoll_round_trips(long r) {
  int there[2], back[2];
  if (pipe(there) != 0 || pipe(back) != 0) return std::nullopt;
  const pid_t echo = spawn([&] {
    for (long i = 0; i < r; ++i) {
      long v;
      if (read(there[0], &v, sizeof v) != sizeof v || write(back[1], &v, sizeof v) != sizeof v) return false;
    }
    return true;
  });
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event in{};
  in.events = EPOLLIN;
  epoll_ctl(ep, EPOLL_CTL_ADD, back[0], &in);
  auto result = timed_round_trips(r, echo, [&](long i) {
    long v = -1;
    epoll_event ev;
    if (write(there[1], &i, sizeof i) != sizeof i || epoll_wait(ep, &ev, 1, -1) != 1 ||
        read(back[0], &v, sizeof v) != sizeof v) {
      return -1L;
    }
    return v;
  });
  close(ep);
  for (int fd : {there[0], there[1], back[0], back[1]}) close(fd);
  return result;
}

void pipes_and_waits(long r) {
  const std::string scenario = "round trip 8 B, Pipe and wait";
  if (!selected(scenario)) return;
  const RoundTrips cs = {
      {"shmq Queue put/get", [r] { return shmq_queue_round_trips(r); }},
      {"shmq Pipe send/recv", [r] { return shmq_pipe_round_trips(r); }},
      {"shmq wait() on 16 queues", [r] { return shmq_wait_round_trips(r); }},
      {"shmq Notifier + epoll", [r] { return shmq_notifier_round_trips(r); }},
      {"pipe + epoll", [r] { return pipe_epoll_round_trips(r); }},
  };
  compare_round_trips(scenario, cs);
}

// ---------------------------------------------------------------- Eclipse iceoryx (issue 17)
//
// iceoryx against shmq, 1 -> 1 and round trips, at 8 B, 256 B, 4 KiB and 64 KiB. iceoryx registers
// every process with its daemon, so its endpoints cannot be made before the fork and inherited as
// the channels above are. Each contender here is a link made in the parent (a queue, or an iceoryx
// topic name) whose two ends are opened after the fork, each in its own process, under that
// process's Scope (its iceoryx runtime; nothing for shmq). One driver serves every link.
//
// Every message is written whole by its producer where the consumer will find it (into the
// producer's own buffer for put, in place for put_with and an iceoryx loan) and checked whole by
// its consumer where it lies (in the buffer get returns, in place for get_with and iceoryx): fill
// bytes, and its value in the first and the last 8 bytes. The clock starts once the producer is
// connected (iceoryx's daemon connects a subscriber within about 100 ms), so no line pays for setup.

void fill_message(std::byte* at, std::size_t size, std::uint64_t v) {
  if (size > 16) std::memset(at + 8, 0x5a, size - 16);
  std::memcpy(at, &v, 8);
  std::memcpy(at + size - 8, &v, 8);
}

// The value of the message of `size` bytes at `at`, or nullopt if any of its bytes is wrong.
std::optional<std::uint64_t> check_message(const std::byte* at, std::size_t size) {
  static const std::vector<std::byte> fill(65536, std::byte{0x5a});
  std::uint64_t head, tail;
  std::memcpy(&head, at, 8);
  std::memcpy(&tail, at + size - 8, 8);
  if (head != tail || (size > 16 && std::memcmp(at + 8, fill.data(), size - 16) != 0)) return std::nullopt;
  return head;
}

// shmq: one queue; put/get copy the message in and out, put_with/get_with write and read it in the
// ring. kBusyPoll: the consumer calls try_get until it returns a message (iceoryx's busy polling)
// instead of get, which spins a while and then sleeps.
template <std::size_t S, bool kInPlace, bool kBusyPoll = false>
struct ShmqLink {
  static_assert(!(kInPlace && kBusyPoll), "the busy-polling consumer copies the message out");
  using Message = typename ShmqChannel<S>::Message;
  struct Scope {};
  shmq::Queue<Message> q{shmq::QueueOptions{.maxsize = 0, .capacity_bytes = kRingBytes}};
  struct Sender {
    shmq::Queue<Message>& q;
    Message m{};
    bool connect(double) { return true; }
    void send(std::uint64_t v) {
      if constexpr (kInPlace) {
        q.put_with(S, [v](std::byte* at, std::size_t) { fill_message(at, S, v); });
      } else {
        fill_message(reinterpret_cast<std::byte*>(&m), S, v);
        q.put(m);
      }
    }
  };
  struct Receiver {
    shmq::Queue<Message>& q;
    std::optional<std::uint64_t> recv() {
      if constexpr (kInPlace) {
        return q.get_with([](const std::byte* at, std::size_t n) {
          return n == S ? check_message(at, S) : std::optional<std::uint64_t>();
        });
      } else if constexpr (kBusyPoll) {
        for (;;) {
          if (const auto m = q.try_get()) return check_message(reinterpret_cast<const std::byte*>(&*m), S);
        }
      } else {
        const Message m = q.get();
        return check_message(reinterpret_cast<const std::byte*>(&m), S);
      }
    }
  };
  Sender sender() { return {q}; }
  Receiver receiver() { return {q}; }
};

// iceoryx: one topic; the producer loans a chunk, writes the message in it and publishes it; the
// consumer takes it, reads it in place and releases it. The subscriber's queue holds as many
// messages as the other peers' rings (at most 256, iceoryx's limit), and a full queue blocks the
// publisher, as every other peer does: nothing is dropped.
long iceoryx_topics = 0;
template <std::size_t S, iceoryx_peer::Wait kWait>
struct IceoryxLink {
  using Scope = iceoryx_peer::Runtime;
  std::string topic = "topic-" + std::to_string(++iceoryx_topics);
  struct Sender {
    iceoryx_peer::Publisher out;
    bool connect(double seconds) { return out.await_subscriber(seconds); }
    void send(std::uint64_t v) {
      std::byte* at = out.loan();
      fill_message(at, S, v);
      out.publish(at);
    }
  };
  struct Receiver {
    iceoryx_peer::Subscriber in;
    std::optional<std::uint64_t> recv() {
      const std::byte* at = in.take();
      const auto v = check_message(at, S);
      in.release(at);
      return v;
    }
  };
  Sender sender() { return {iceoryx_peer::Publisher(topic, S)}; }
  Receiver receiver() { return {iceoryx_peer::Subscriber(topic, slots_for(S), kWait)}; }
};

constexpr double kConnectSeconds = 10;  // for RouDi to connect a publisher to its subscriber
double run_seconds() { return settings.quick ? 30 : 300; }  // for one run, then its processes are killed
Clock::time_point run_deadline() {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(run_seconds()));
}

// A child's body that says why it failed rather than ending in std::terminate.
template <class Fn>
std::function<bool()> guarded(Fn fn) {
  return [fn]() mutable {
    try {
      return fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "shmq_bench child %d: %s\n", getpid(), e.what());
      return false;
    }
  };
}

// Reaps pid, killing it first if it is still running `deadline`; true if it exited 0 in time.
bool reap_by(pid_t pid, Clock::time_point deadline) {
  const int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  pollfd exited{fd, POLLIN, 0};
  bool in_time = true;
  if (fd >= 0 && poll(&exited, 1, static_cast<int>(std::max<long long>(0, left))) == 0) {
    std::fprintf(stderr, "shmq_bench: process %d still running after %.0f s: killed\n", pid, run_seconds());
    kill(pid, SIGKILL);
    in_time = false;
  }
  if (fd >= 0) close(fd);
  return reap(pid) && in_time;
}

// One value of T in shared memory, for a child to report to the parent.
template <class T>
struct SharedValue {
  T* p = new (mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)) T{};
  SharedValue() = default;
  SharedValue(const SharedValue&) = delete;
  ~SharedValue() { munmap(p, sizeof(T)); }
  T* operator->() { return p; }
};

// 1 -> 1 over a link: n messages of S bytes, then a stop. Messages per second from the connected
// producer's first send to the consumer's stop, or nullopt if any message was lost or corrupted.
template <class Link, std::size_t S>
std::optional<double> link_throughput(long n) {
  Link link;
  struct Run {
    Clock::time_point start, end;
    Tally got;
    bool intact;
  };
  SharedValue<Run> run;
  const auto deadline = run_deadline();
  const pid_t consumer = spawn(guarded([&] {
    [[maybe_unused]] typename Link::Scope scope;
    auto in = link.receiver();
    Tally t{0, 0};
    bool intact = true;
    for (;;) {
      const auto v = in.recv();
      intact &= v.has_value();
      if (v == kStop) break;
      ++t.count;
      t.sum += v.value_or(0);
    }
    run->end = Clock::now();
    run->got = t;
    run->intact = intact;
    return true;
  }));
  const pid_t producer = spawn(guarded([&] {
    [[maybe_unused]] typename Link::Scope scope;
    auto out = link.sender();
    if (!out.connect(kConnectSeconds)) throw std::runtime_error("no subscriber connected");
    run->start = Clock::now();
    for (long i = 0; i < n; ++i) out.send(std::uint64_t(i));
    out.send(kStop);
    return true;
  }));
  const bool ok = reap_by(producer, deadline) & reap_by(consumer, deadline);
  if (!ok || !run->intact || run->got.count != std::uint64_t(n) ||
      run->got.sum != std::uint64_t(n) * std::uint64_t(n - 1) / 2) {
    return std::nullopt;
  }
  return double(n) / std::chrono::duration<double>(run->end - run->start).count();
}

// R round trips of S-byte messages over two links, between an asking process that times each one
// and its echo, both opened after the fork (the echo is the asker's child).
template <class Link, std::size_t S>
std::optional<std::pair<double, double>> link_round_trips(long r) {
  Link there, back;
  SharedValue<std::pair<double, double>> p50_p99;
  const auto deadline = run_deadline();
  const pid_t asker = spawn(guarded([&] {
    const pid_t echo = spawn(guarded([&] {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // killed with the asker if the run times out
      [[maybe_unused]] typename Link::Scope scope;
      auto in = there.receiver();
      auto out = back.sender();
      if (!out.connect(kConnectSeconds)) throw std::runtime_error("no subscriber connected");
      bool intact = true;
      for (long i = 0; i < r; ++i) {  // a corrupt message goes back as kStop: the asker sees it
        const auto v = in.recv();
        intact &= v.has_value();
        out.send(v.value_or(kStop));
      }
      return intact;
    }));
    [[maybe_unused]] typename Link::Scope scope;
    auto in = back.receiver();
    auto out = there.sender();
    if (!out.connect(kConnectSeconds)) throw std::runtime_error("no subscriber connected");
    const auto times = timed_round_trips(r, echo, [&](long i) {
      out.send(std::uint64_t(i));
      return static_cast<long>(in.recv().value_or(kStop));
    });
    if (times) *p50_p99.p = *times;
    return times.has_value();
  }));
  if (!reap_by(asker, deadline)) return std::nullopt;
  return *p50_p99.p;
}

// The benchmark's iox-roudi, started by the first iceoryx line that runs, stopped after the last.
class IceoryxLines {
 public:
  // Whether the iceoryx lines can run (says why not on stderr, once for each reason).
  bool ready() {
    if (!daemon_) daemon_.emplace();
    const std::string why = daemon_->unavailable();
    if (!why.empty() && why != said_) std::fprintf(stderr, "shmq_bench: iceoryx lines left out: %s\n", why.c_str());
    said_ = why;
    return why.empty();
  }
  // The row of a scenario whose iceoryx lines did not run, saying why in short ("iceoryx not installed").
  void left_out(const std::string& scenario) {
    std::string reason = said_.substr(0, said_.find_first_of("(:"));
    while (!reason.empty() && reason.back() == ' ') reason.pop_back();
    results.push_back({scenario, reason, 0, 0, 0, 0, 0});
  }
  // Throws if the daemon has ended since the scenario began (compare reports the line as not run).
  void check() {
    if (const std::string why = daemon_->unavailable(); !why.empty()) throw std::runtime_error(why);
  }

 private:
  std::optional<iceoryx_peer::Daemon> daemon_;
  std::string said_;
};

// Adds iceoryx's two lines to a scenario's contenders, unless its daemon cannot run; each line
// checks that the daemon still runs. measure<Link>() runs one line over a Link.
template <std::size_t S, class Contenders, class Measure>
bool add_iceoryx_lines(IceoryxLines& iceoryx, Contenders& cs, Measure measure) {
  using iceoryx_peer::Wait;
  if (!iceoryx.ready()) return false;
  cs.push_back({"iceoryx loan+publish, WaitSet", [measure, &iceoryx] {
                  iceoryx.check();
                  return measure.template operator()<IceoryxLink<S, Wait::waitset>>();
                }});
  cs.push_back({"iceoryx loan+publish, busy poll", [measure, &iceoryx] {
                  iceoryx.check();
                  return measure.template operator()<IceoryxLink<S, Wait::busy_poll>>();
                }});
  return true;
}

template <std::size_t S>
void iceoryx_one_to_one(IceoryxLines& iceoryx, long n) {
  const std::string scenario = "iceoryx 1->1 " + std::to_string(S) + " B";
  if (!selected(scenario)) return;
  std::vector<Contender> cs = {
      {"shmq put/get", [n] { return link_throughput<ShmqLink<S, false>, S>(n); }},
      {"shmq put_with/get_with", [n] { return link_throughput<ShmqLink<S, true>, S>(n); }},
  };
  const bool with_iceoryx =
      add_iceoryx_lines<S>(iceoryx, cs, [n]<class Link>() { return link_throughput<Link, S>(n); });
  compare(scenario, S, cs);
  if (!with_iceoryx) iceoryx.left_out(scenario);
}

template <std::size_t S>
void iceoryx_round_trip(IceoryxLines& iceoryx, long r) {
  const std::string scenario = "iceoryx round trip " + std::to_string(S) + " B";
  if (!selected(scenario)) return;
  RoundTrips cs = {
      {"shmq put/get", [r] { return link_round_trips<ShmqLink<S, false>, S>(r); }},
      {"shmq put_with/get_with", [r] { return link_round_trips<ShmqLink<S, true>, S>(r); }},
      {"shmq put/try_get, busy poll", [r] { return link_round_trips<ShmqLink<S, false, true>, S>(r); }},
  };
  const bool with_iceoryx =
      add_iceoryx_lines<S>(iceoryx, cs, [r]<class Link>() { return link_round_trips<Link, S>(r); });
  compare_round_trips(scenario, cs);
  if (!with_iceoryx) iceoryx.left_out(scenario);
}

void iceoryx_scenarios(long k) {
  IceoryxLines iceoryx;
  // Fewer messages than the other 1 -> 1 lines: iceoryx moves about 0.3-2M a second.
  iceoryx_one_to_one<8>(iceoryx, 500 * k);
  iceoryx_one_to_one<256>(iceoryx, 500 * k);
  iceoryx_one_to_one<4096>(iceoryx, 200 * k);
  iceoryx_one_to_one<65536>(iceoryx, 20 * k);
  const long r = settings.quick ? 100 : 20'000;
  iceoryx_round_trip<8>(iceoryx, r);
  iceoryx_round_trip<256>(iceoryx, r);
  iceoryx_round_trip<4096>(iceoryx, r);
  iceoryx_round_trip<65536>(iceoryx, r / 2);
}

// Python's figures for the same scenarios, from bench/python_peer.py (one JSON object per line:
// scenario, msgs_per_s | p50_us, p99_us | seconds).
void python_peer(long n, long r, int items) {
  if (settings.python_peer.empty() || access(settings.python_peer.c_str(), R_OK) != 0 ||
      std::system("python3 -c 'import multiprocessing' >/dev/null 2>&1") != 0) {
    std::fprintf(stderr, "python3 or %s not found: Python's figures left out\n", settings.python_peer.c_str());
    return;
  }
  const std::string cmd = "python3 " + settings.python_peer + " --n " + std::to_string(n) + " --round-trips " +
                          std::to_string(r) + " --items " + std::to_string(items) + " --reps " +
                          std::to_string(std::min(settings.reps, 3));
  FILE* out = popen(cmd.c_str(), "r");
  if (out == nullptr) return;
  char line[512];
  while (std::fgets(line, sizeof line, out) != nullptr) {
    char scenario[128] = {};
    double a = 0, b = 0;
    Result res;
    res.peer = "Python multiprocessing";
    if (std::sscanf(line, "{\"scenario\": \"%127[^\"]\", \"msgs_per_s\": %lf", scenario, &a) == 2) {
      res.msgs_per_s = a;
      res.mb_per_s = 0;
    } else if (std::sscanf(line, "{\"scenario\": \"%127[^\"]\", \"p50_us\": %lf, \"p99_us\": %lf", scenario, &a, &b) == 3) {
      res.p50_us = a;
      res.p99_us = b;
    } else if (std::sscanf(line, "{\"scenario\": \"%127[^\"]\", \"seconds\": %lf", scenario, &a) == 2) {
      res.seconds = a;
    } else {
      continue;
    }
    res.scenario = scenario;
    results.push_back(res);
  }
  if (pclose(out) != 0) std::fprintf(stderr, "python_peer.py failed\n");
}

// What one core copies, 64 KiB at a time, hot in cache: the yardstick for the 64 KiB scenario.
void memory() {
  // shmq: the file is exactly header + ring; an 8-byte message takes a 4-byte length + 8 bytes.
  shmq::Queue<long> q(shmq::QueueOptions{.maxsize = 0, .capacity_bytes = 4096});
  long n = 0;
  while (q.try_put(n)) ++n;
  std::printf("memory: shmq: %zu-byte header; an 8-byte message costs %.1f bytes of ring (%ld in 4096)\n",
              std::size_t{4096}, 4096.0 / double(n), n);
  // Boost: the segment size for 1000 messages of 8 bytes, per message.
  const std::string name = unique("boost-mem");
  bip::message_queue::remove(name.c_str());
  {
    bip::message_queue mq(bip::create_only, name.c_str(), 1000, 8);
    struct stat st;
    if (stat(("/dev/shm" + name).c_str(), &st) == 0) {
      std::printf("memory: boost::interprocess::message_queue: %.1f bytes per 8-byte message (1000 of them in %lld bytes)\n",
                  double(st.st_size) / 1000.0, static_cast<long long>(st.st_size));
    }
  }
  bip::message_queue::remove(name.c_str());
}

// ---------------------------------------------------------------- reporting

void print_table() {
  std::printf("%-20s %-36s %14s %10s %10s %10s %10s %12s\n", "scenario", "peer", "msgs/s", "MB/s", "p50 us",
              "p99 us", "seconds", "shmq/peer");
  // Scenario by scenario, in the order they first appear (Python's rows come in last).
  std::vector<std::string> order;
  for (const auto& r : results) {
    if (std::find(order.begin(), order.end(), r.scenario) == order.end()) order.push_back(r.scenario);
  }
  std::vector<Result> sorted;
  for (const auto& scenario : order) {
    for (const auto& r : results) {
      if (r.scenario == scenario) sorted.push_back(r);
    }
  }
  std::string last;
  for (const auto& r : sorted) {
    if (r.scenario != last && !last.empty()) std::printf("\n");
    last = r.scenario;
    // The shmq line of this scenario (the batch scenario names its shmq line differently).
    const auto mine_at = std::find_if(sorted.begin(), sorted.end(), [&](const Result& o) {
      return o.scenario == r.scenario && o.peer.rfind("shmq", 0) == 0;
    });
    const Result* mine = mine_at == sorted.end() ? nullptr : &*mine_at;
    std::string ratio = "";
    if (mine != nullptr && mine->peer != r.peer) {
      char buf[32] = "";  // stays empty for a row with no figures (an iceoryx line left out)
      if (r.msgs_per_s > 0) std::snprintf(buf, sizeof buf, "%.2fx", mine->msgs_per_s / r.msgs_per_s);
      if (r.p50_us > 0) std::snprintf(buf, sizeof buf, "%.2fx", r.p50_us / mine->p50_us);
      if (r.seconds > 0) std::snprintf(buf, sizeof buf, "%.2fx", r.seconds / mine->seconds);
      ratio = buf;
    }
    auto num = [](double v, const char* fmt) {
      if (v <= 0) return std::string("-");
      char buf[32];
      std::snprintf(buf, sizeof buf, fmt, v);
      return std::string(buf);
    };
    std::printf("%-20s %-36s %14s %10s %10s %10s %10s %12s\n", r.scenario.c_str(), r.peer.c_str(),
                num(r.msgs_per_s, "%.0f").c_str(), num(r.mb_per_s, "%.1f").c_str(), num(r.p50_us, "%.2f").c_str(),
                num(r.p99_us, "%.2f").c_str(), num(r.seconds, "%.3f").c_str(), ratio.c_str());
  }
  std::printf("\nshmq/peer: throughput ratio for msgs/s; peer/shmq for round-trip latency and seconds (higher is better for shmq).\n");
}

void print_json() {
  std::printf("[\n");
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    std::printf("  {\"scenario\": \"%s\", \"peer\": \"%s\", \"msgs_per_s\": %.1f, \"mb_per_s\": %.2f, "
                "\"p50_us\": %.3f, \"p99_us\": %.3f, \"seconds\": %.4f}%s\n",
                r.scenario.c_str(), r.peer.c_str(), r.msgs_per_s, r.mb_per_s, r.p50_us, r.p99_us, r.seconds,
                i + 1 < results.size() ? "," : "");
  }
  std::printf("]\n");
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      settings.quick = true;
      settings.reps = 1;
    } else if (a == "--json") {
      settings.json = true;
    } else if (a == "--reps" && i + 1 < argc) {
      settings.reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--filter" && i + 1 < argc) {
      settings.filter = argv[++i];
    } else if (a == "--python-peer" && i + 1 < argc) {
      settings.python_peer = argv[++i];
    } else {
      std::printf("usage: shmq_bench [--quick] [--json] [--reps N] [--filter TEXT] [--python-peer PATH]\n");
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  const long k = settings.quick ? 1 : 1000;  // the quick run moves a thousandth of the messages
  one_to_one<8>(2000 * k);
  one_to_one<64>(2000 * k);
  one_to_one<256>(1000 * k);
  one_to_one<4096>(200 * k);
  one_to_one<65536>(20 * k);
  batches(5000 * k);
  leased_gets<8>(2000 * k);
  leased_gets<4096>(200 * k);
  string_messages(1000 * k);
  four_to_four(500 * k);
  ping_pong(settings.quick ? 100 : 100'000);
  lock_uncontended(settings.quick ? 10'000 : 10'000'000);
  event_round_trip(settings.quick ? 100 : 100'000);
  pipes_and_waits(settings.quick ? 100 : 50'000);
  iceoryx_scenarios(k);
  compare("Pool.map 100k tasks", 0,
          {{"shmq Pool(2).map", [&] { return shmq_pool_map(settings.quick ? 1000 : 100'000); }}}, true);
  pool_scenarios();
  if (settings.filter.empty()) python_peer(settings.quick ? 1000 : 200'000, settings.quick ? 100 : 20'000, settings.quick ? 1000 : 100'000);
  if (settings.json) {
    print_json();
  } else {
    print_table();
    memory();
  }
  if (!all_verified) {
    std::fprintf(stderr, "shmq_bench: some runs lost or corrupted messages\n");
    return 1;
  }
  return 0;
}
