// shmq::Notifier: a descriptor for epoll/poll/select, Boost.Asio and libuv that becomes readable
// when any of a set of queues, connections or processes is ready.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <memory>
#include <vector>

#include "shmq/wait.hpp"

namespace shmq {

// Makes fd() readable when any of `objects` (as shmq::wait watches them, with the same meaning of
// ready) is ready:
//
//   shmq::Notifier n({jobs, results, conn});
//   epoll_ctl(ep, EPOLL_CTL_ADD, n.fd(), &in);      // EPOLLIN, level- or edge-triggered
//   ... when epoll says n.fd() is readable:
//   for (std::size_t i : n.ready()) { ... get_nowait / poll + recv until empty ... }
//
// The descriptor: the read end of a pipe. A producer that puts into a watched queue (or sends on
// a watched connection, or closes its end) writes one byte into it itself, from its own process,
// when the notifier is counted as a sleeper there: the event loop is woken directly, as a waiting
// get would be (each queue has three such listener slots; a fourth notifier on the same queue is
// served by its helper thread instead, one thread wake-up later). ready() empties the pipe,
// counts the notifier as a sleeper again on every object, looks at every object, and, if any is
// ready, writes a byte itself: the descriptor stays readable while an object is ready, whatever
// order you drain in, and each firing is a new write (EPOLLET works too). Call ready() after each
// readiness report (Boost.Asio: async_wait(wait_read) on a posix::stream_descriptor, then
// ready(); libuv: uv_poll, then ready()): reading the pipe yourself empties it without counting
// the notifier again, and new messages are then reported only by the helper thread's look, within
// 100 ms. A spurious firing is possible (the object was drained in between); ready() then
// returns an empty list.
//
// Cost: one pipe and one helper thread per notifier. The helper sleeps (one futex_waitv) on what
// no producer reports directly (processes; queues beyond their listener slots) and looks at every
// object at least every 100 ms, for what no wake-up reports: a pipe peer killed, a producer killed
// between its put and its byte. An idle notifier uses no CPU but that look. A producer that wakes
// a notifier writes one byte into its pipe: the first time it opens it through
// /proc/PID/fd/N (some 10 us), then it keeps that write end, one descriptor per notifier, until
// its queue handle is destroyed. Puts that find no sleeper do nothing more than before.
//
// Crash safety: a notifier's process killed at any instruction leaves a listener slot that the
// next producer finds stale (the descriptor is gone, or the pipe has no reader: EPIPE, never
// SIGPIPE) and releases; a producer killed before writing its byte is covered by the helper's
// look. /proc must be mounted and readable between the processes (same user, no hidepid);
// otherwise every object is served by the helper thread.
//
// Destruction stops and joins the helper promptly (it is woken) and gives back the listener
// slots. The objects must outlive the notifier. Fork: a child does not have the helper thread; in
// a forked child the notifier's descriptor is not served, ready() throws InvalidArgument, and
// destroying it there only closes the child's copies of the pipe.
class Notifier {
 public:
  // Throws InvalidArgument for more than 127 objects (one futex slot is the helper's own) or for
  // an object wait() refuses; Error if no thread or pipe can be made.
  explicit Notifier(const std::vector<Waitable>& objects);
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;
  ~Notifier();

  // The descriptor to watch for readability (EPOLLIN / POLLIN). Owned by the notifier.
  int fd() const noexcept { return fd_; }
  // Empties the descriptor, re-arms the notifier (see above) and returns the indices of the
  // objects ready now (possibly none). Never blocks. One thread at a time (serialised inside).
  std::vector<std::size_t> ready();

 private:
  struct Helper;  // src/notifier.cpp
  int fd_ = -1;
  pid_t owner_;
  std::unique_ptr<Helper> helper_;
};

}  // namespace shmq
