// shmq::wait: Python's multiprocessing.connection.wait, over queues, connections, processes and
// events.
#pragma once

#include <chrono>
#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

#include "shmq/detail/deadline.hpp"
#include "shmq/detail/queue_access.hpp"
#include "shmq/detail/wait_core.hpp"

namespace shmq {

// A reference to one object that wait() and Notifier can watch: a Queue (or JoinableQueue), a
// Connection, a Process or an Event. Converts implicitly, so a braced list works:
// shmq::wait({jobs, conn, worker}). Not owning: the object must outlive the wait or the Notifier.
// Each kind provides `detail::WaitItem wait_item(const Kind&)` (found by argument-dependent
// lookup; see detail/wait_core.hpp).
class Waitable {
 public:
  template <class Object, class = decltype(wait_item(std::declval<const Object&>()))>
  Waitable(const Object& object) : item_(wait_item(object)) {}  // NOLINT: implicit on purpose

  const detail::WaitItem& item() const noexcept { return item_; }

 private:
  detail::WaitItem item_;
};

// Blocks until at least one object is ready, then returns the indices (in `objects`, ascending) of
// every object ready at that moment. Ready means: a Queue has a message or is shut down; a
// Connection has a message to receive or has reached end of stream (its peer is gone: see
// connection.hpp); a Process has ended; an Event is set. A snapshot, as in Python: another consumer
// may take the message before you do, so follow with a non-blocking get or recv with a timeout.
//
// Polls for a while as get does, then sleeps in the kernel (one futex_waitv on every object's
// futex word; Linux 5.16 or later) using no CPU, except that it looks again every 100 ms
// (kLongestSleep) for what no wake-up reports: a pipe peer killed, a notifier killed before its
// wake-up. Killing a process inside wait() leaves nothing behind. Throws InvalidArgument for more
// than 128 objects, or a Process not started, or a send-only Connection; Closed for a closed one.
// Safe from many threads at once.
std::vector<std::size_t> wait_until(const std::vector<Waitable>& objects,
                                    const detail::Deadline& deadline);
inline std::vector<std::size_t> wait(const std::vector<Waitable>& objects) {
  return wait_until(objects, detail::Deadline::never());
}
// As wait(objects), giving up after `timeout` (then the result is empty); a timeout of zero or
// less looks once without waiting.
template <class Rep, class Period>
std::vector<std::size_t> wait(const std::vector<Waitable>& objects,
                              const std::chrono::duration<Rep, Period>& timeout) {
  return wait_until(objects, detail::Deadline::after(timeout));
}

namespace detail {
// Queue's part in wait(): ready when a get would not sleep.
inline const WaitOps kQueueWaitOps{
    [](const void* q) noexcept { return static_cast<const Segment*>(q)->ring().readable(); },
    [](const void* q) noexcept -> EventCount* {
      return &const_cast<Segment*>(static_cast<const Segment*>(q))->ring().not_empty();
    },
    nullptr, nullptr};
}  // namespace detail

template <class T>
detail::WaitItem wait_item(const Queue<T>& q) {
  return {&detail::QueueAccess::segment(q), &detail::kQueueWaitOps};
}

}  // namespace shmq
