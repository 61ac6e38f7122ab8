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
//   epoll_ctl(ep, EPOLL_CTL_ADD, n.fd(), &in);      // EPOLLIN (EPOLLET: see below)
//   ... when epoll says n.fd() is readable:
//   for (std::size_t i : n.ready()) { ... get_nowait / poll + recv ... }
//
// The descriptor: the read end of a pipe. A producer that puts into a watched queue (or sends on
// a watched connection, or closes its end, or sets a watched event) writes one byte into it
// itself, from its own process, when the notifier is counted as a listener there: the event loop
// is woken directly, as a waiting get would be (each queue has three such listener slots; a fourth
// notifier on the same queue is served by its helper thread instead, one thread wake-up later).
//
// Readiness is level-triggered: the descriptor stays readable while any object is ready, whatever
// order and however much you drain in. ready() looks at every object; if some are ready it returns
// them and leaves the descriptor as it is (readable: no syscall). Once a ready() finds nothing
// ready, it empties the pipe, counts the notifier as a listener again on every object and looks
// once more (writing a byte itself if something became ready meanwhile): the descriptor is then
// quiet until something becomes ready. So a level-triggered loop calls ready() once per report;
// after draining, the next report comes at once and that ready() returns an empty list.
// Edge-triggered (EPOLLET), call ready() until it returns an empty list before waiting again, as
// you would read a socket until EAGAIN. Call ready() after each readiness report (Boost.Asio:
// async_wait(wait_read) on a posix::stream_descriptor, then ready(); libuv: uv_poll, then
// ready()): reading the pipe yourself empties it without counting the notifier again, and new
// messages are then reported only by the helper thread's look, within 100 ms.
//
// Cost: one pipe and one helper thread per notifier. The helper sleeps (one futex_waitv) on what
// no producer reports directly (processes; queues beyond their listener slots) and looks at every
// object at least every 100 ms, for what no wake-up reports: a pipe peer killed, a producer killed
// between its put and its byte. An idle notifier uses no CPU but that look. A producer that wakes
// a notifier writes one byte into its pipe (one syscall; no futex call when the notifier is the
// only one waiting): the first time it opens it through /proc/PID/fd/N (some 10 us), then it keeps
// that descriptor, one per notifier, until its queue handle is destroyed. Puts that find nobody
// counted do nothing more than before.
//
// Crash safety: a notifier's process killed at any instruction leaves a listener slot that is
// found stale and released by a producer opening its pipe afresh (the descriptor is gone), by a
// producer that finds its pipe full, or by a new notifier that finds every slot taken; writes into
// a dead notifier's pipe succeed (the producer's descriptor reads too: never EPIPE nor SIGPIPE)
// and wake nobody. A producer killed before writing its byte is covered by the helper's
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
  // Returns the indices of the objects ready now; when none is, empties the descriptor and
  // re-arms the notifier first (see above), and returns an empty list. Never blocks. One thread
  // at a time (serialised inside).
  std::vector<std::size_t> ready();

 private:
  struct Helper;  // src/notifier.cpp
  int fd_ = -1;
  pid_t owner_;
  std::unique_ptr<Helper> helper_;
};

}  // namespace shmq
