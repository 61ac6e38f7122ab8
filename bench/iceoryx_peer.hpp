// The Eclipse iceoryx peer of shmq_bench (issue 17): the benchmark's own iox-roudi daemon, and one
// process's publishers and subscribers, behind an interface that names no iceoryx type. So
// shmq_bench.cpp includes no iceoryx header, and the benchmark builds without iceoryx: then
// iceoryx_peer.cpp is compiled with SHMQ_BENCH_ICEORYX=0, Daemon::unavailable() says "iceoryx not
// installed" and nothing else is ever called.
//
// iceoryx 2.0 registers every process that publishes or subscribes with its daemon, RouDi, over a
// Unix socket, and RouDi connects publishers to subscribers (about every 100 ms). So the endpoints
// are made after the fork, in the process that uses them, under a Runtime of that process.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <memory>
#include <string>

namespace iceoryx_peer {

// The benchmark's private iox-roudi: the constructor starts it with a memory configuration of its
// own (chunks for every message size the benchmark sends) and waits until it is ready, at most
// kStartSeconds; the destructor stops it (SIGTERM, then SIGKILL after kStopSeconds), reaps it and
// removes whatever a daemon that did not end cleanly, or a process of ours that was killed, left
// in /dev/shm and /tmp. iceoryx 2.0 allows one RouDi per machine (fixed names: /tmp/roudi,
// /dev/shm/iceoryx_mgmt): if another one runs, ours does not start and unavailable() says so. The
// daemon is killed with the benchmark (PR_SET_PDEATHSIG).
class Daemon {
 public:
  static constexpr int kStartSeconds = 10;
  static constexpr int kStopSeconds = 5;
  Daemon();
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;
  // Empty while the daemon runs; otherwise why the iceoryx lines cannot run (not installed, did
  // not start and what it said, or ended and how). Checks the daemon's state each time.
  std::string unavailable();

 private:
  pid_t pid_ = -1;
  int log_fd_ = -1;  // the daemon's stdout and stderr: an unlinked file, read for its "ready"
  std::string why_;
  std::string log_tail() const;
  void stop();
};

// This process's registration with the daemon, made after the fork and ended (deregistered) by
// the destructor; one per process at a time. Its name is "shmq-bench-<benchmark pid>-<pid>".
class Runtime {
 public:
  Runtime();
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;
  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// How a subscriber waits for its next message.
enum class Wait {
  waitset,    // blocks in an iceoryx WaitSet attached to "has data" (a semaphore in shared memory)
  busy_poll,  // calls take() until it returns a message
};

// An untyped publisher of `size`-byte messages on `topic`, which waits for its subscribers rather
// than dropping (ConsumerTooSlowPolicy::WAIT_FOR_CONSUMER) and keeps no history.
class Publisher {
 public:
  Publisher(const std::string& topic, std::size_t size);
  ~Publisher();
  Publisher(Publisher&&) noexcept;
  // Waits until RouDi has connected a subscriber, at most `seconds`; false if none came.
  bool await_subscriber(double seconds);
  // A chunk of `size` bytes from the shared pool, to be written in place and published.
  std::byte* loan();
  void publish(std::byte* payload);
  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// An untyped subscriber on `topic` with a queue of `queue_capacity` chunks (at most 256) whose
// publishers block when it is full (QueueFullPolicy::BLOCK_PRODUCER): nothing is dropped.
class Subscriber {
 public:
  static constexpr std::size_t kMaxQueueCapacity = 256;
  Subscriber(const std::string& topic, std::size_t queue_capacity, Wait wait);
  ~Subscriber();
  Subscriber(Subscriber&&) noexcept;
  // The next message, read in place until release(); waits as `wait` says.
  const std::byte* take();
  void release(const std::byte* payload);
  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace iceoryx_peer
