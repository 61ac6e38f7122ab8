// Notifier: a helper thread asleep in wait_any, and an eventfd it fills when something is ready.
#include "shmq/notifier.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <system_error>
#include <thread>

#include "shmq/detail/ring.hpp"

namespace shmq {

namespace {

// The helper fills the eventfd's counter to its maximum: readable, and POLLOUT only once a read
// has emptied it, which is how the helper learns that the owner has looked.
constexpr std::uint64_t kFull = 0xffff'ffff'ffff'fffeULL;

}  // namespace

struct Notifier::Helper {
  std::vector<detail::WaitItem> items;  // the objects, then the stop item
  std::atomic<bool> stop{false};
  detail::EventCount stop_event{};  // bumped by the destructor, for the helper's wait
  std::thread thread;

  static inline const detail::WaitOps kStopOps{
      [](const void* h) noexcept {
        return static_cast<const Helper*>(h)->stop.load(std::memory_order_acquire);
      },
      [](const void* h) noexcept -> detail::EventCount* {
        return &const_cast<Helper*>(static_cast<const Helper*>(h))->stop_event;
      },
      nullptr, nullptr};

  void run(int fd) {
    std::unique_ptr<bool[]> ready(new bool[items.size()]);
    for (;;) {
      try {
        detail::wait_any(items.data(), items.size(), ready.get(), detail::Deadline::never());
      } catch (...) {
        // A peer check could not read /proc (no memory, no descriptor): look again shortly.
        detail::wait_any(&items.back(), 1, ready.get(),
                         detail::Deadline::after(detail::kLongestSleep));
      }
      if (stop.load()) return;
      const std::uint64_t full = kFull;
      if (write(fd, &full, sizeof full) < 0 && errno != EAGAIN) return;
      // Seq_cst with the destructor's store: if this load misses the stop, the destructor's read,
      // which follows its store, comes after our write and wakes the poll.
      if (stop.load()) return;
      pollfd read_by_owner{fd, POLLOUT, 0};
      while (poll(&read_by_owner, 1, -1) < 0 && errno == EINTR) {
      }
      if (stop.load(std::memory_order_acquire)) return;
    }
  }
};

Notifier::Notifier(const std::vector<Waitable>& objects)
    : owner_(getpid()), helper_(std::make_unique<Helper>()) {
  if (objects.size() + 1 > detail::kMaxWaitObjects) {
    throw InvalidArgument("shmq::Notifier: " + std::to_string(objects.size()) +
                          " objects, but a notifier watches at most " +
                          std::to_string(detail::kMaxWaitObjects - 1));
  }
  for (const Waitable& object : objects) helper_->items.push_back(object.item());
  helper_->items.push_back({helper_.get(), &Helper::kStopOps});
  fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd_ < 0) {
    throw Error(std::string("shmq::Notifier: cannot make an eventfd: ") + std::strerror(errno));
  }
  try {
    helper_->thread = std::thread([h = helper_.get(), fd = fd_] { h->run(fd); });
  } catch (const std::system_error& e) {
    ::close(fd_);
    throw Error(std::string("shmq::Notifier: cannot start its helper thread: ") + e.what());
  }
}

Notifier::~Notifier() {
  if (getpid() != owner_) {
    // A forked child: the helper thread is not here; its std::thread must not be joined or
    // destroyed (joinable, it would terminate). Leaked on purpose: a few bytes per inherited one.
    (void)helper_.release();
    ::close(fd_);
    return;
  }
  helper_->stop.store(true);
  detail::notify(helper_->stop_event);  // wakes it from wait_any
  std::uint64_t drained;
  (void)!read(fd_, &drained, sizeof drained);  // wakes it from poll (POLLOUT)
  helper_->thread.join();
  ::close(fd_);
}

std::vector<std::size_t> Notifier::ready() {
  if (getpid() != owner_) {
    throw InvalidArgument("shmq::Notifier: used in a forked child (pid " +
                          std::to_string(getpid()) + "); its helper thread runs only in pid " +
                          std::to_string(owner_) + ": make a new notifier here");
  }
  std::uint64_t drained;
  (void)!read(fd_, &drained, sizeof drained);  // EAGAIN when not readable: nothing to re-arm
  std::vector<std::size_t> which;
  const std::size_t n = helper_->items.size() - 1;
  for (std::size_t i = 0; i < n; ++i) {
    const detail::WaitItem& item = helper_->items[i];
    if (item.ops->ready(item.object)) which.push_back(i);
  }
  return which;
}

}  // namespace shmq
