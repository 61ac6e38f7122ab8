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

// Watches `objects` (as shmq::wait does, with the same meaning of ready) from one helper thread
// and makes fd() readable when any of them is ready:
//
//   shmq::Notifier n({jobs, results, conn});
//   epoll_ctl(ep, EPOLL_CTL_ADD, n.fd(), &in);      // EPOLLIN, level- or edge-triggered
//   ... when epoll says n.fd() is readable:
//   for (std::size_t i : n.ready()) { ... get_nowait / poll + recv until empty ... }
//
// The descriptor: an eventfd, readable from the moment the helper sees an object ready until you
// read it (ready() reads it for you; a read of 8 bytes does the same, for Asio's
// stream_descriptor or libuv). Reading re-arms the notifier: the helper looks at every object
// again and, if any is still (or newly) ready, makes the descriptor readable again at once. So
// nothing is lost whatever order you drain in, and each firing is a new write (EPOLLET works too).
// It never becomes readable because of the notifier alone.
//
// Cost: one helper thread per notifier, which sleeps in the same wait as shmq::wait (one
// futex_waitv; no CPU when idle but a look every 100 ms), or, while the descriptor is readable,
// in poll() on it; one eventfd. A round trip adds one thread wake-up to a plain wait.
//
// Destruction stops and joins the helper promptly (it is woken). The objects must outlive the
// notifier. Fork: a child does not have the helper thread; in a forked child the notifier's
// descriptor never becomes readable and ready() throws InvalidArgument; destroying it there only
// closes the child's copy of the descriptor.
class Notifier {
 public:
  // Throws InvalidArgument for more than 127 objects (one slot is the helper's own) or for an
  // object wait() refuses; Error if no thread or descriptor can be made.
  explicit Notifier(const std::vector<Waitable>& objects);
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;
  ~Notifier();

  // The descriptor to watch for readability (EPOLLIN / POLLIN). Owned by the notifier.
  int fd() const noexcept { return fd_; }
  // Reads the descriptor if it is readable (re-arming it; see above) and returns the indices of
  // the objects ready now (possibly none). Never blocks.
  std::vector<std::size_t> ready();

 private:
  struct Helper;  // src/notifier.cpp
  int fd_ = -1;
  pid_t owner_;
  std::unique_ptr<Helper> helper_;
};

}  // namespace shmq
