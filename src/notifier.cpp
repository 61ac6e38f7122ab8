// Notifier: a pipe whose read end is the descriptor. Producers write into it directly (listener
// slots, src/listeners.cpp); a helper thread covers what no producer reports.
#include "shmq/notifier.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>

#include "shmq/detail/listeners.hpp"
#include "shmq/detail/ring.hpp"

namespace shmq {

struct Notifier::Helper {
  std::vector<detail::WaitItem> items;  // the objects
  detail::ListenerPipe pipe{-1, 0};     // pipe.read_fd is fd()
  int write_fd = -1;
  // Per object with an EventCount: its listener slot there, or -1 when it has none (no free slot,
  // no /proc, or not an EventCount object): the helper thread then sleeps on it. Written by the
  // owner's ready(), read by the helper thread.
  std::unique_ptr<std::atomic<int>[]> slots;
  // Per object with a slot: the ticket ready() announced (the notifier counts as a listener there,
  // so that producers call wake(), which writes into the pipe). Guarded by owner_lock.
  std::unique_ptr<detail::SleeperTicket[]> tickets;
  std::unique_ptr<bool[]> announced;
  std::mutex owner_lock;  // ready() from several threads
  std::atomic<bool> stop{false};
  std::atomic<std::uint32_t> looks{0};  // bumped by ready() when the helper sleeps on an object
  std::uint32_t looks_seen = 0;         // the helper thread's
  detail::EventCount control{};         // bumped with stop and looks
  std::thread thread;

  static const detail::WaitOps kControlOps;  // defined below, once Helper is complete

  std::size_t size() const noexcept { return items.size(); }
  detail::EventCount* event(std::size_t i) const noexcept {
    return items[i].ops->event(items[i].object);
  }
  bool direct(std::size_t i) const noexcept {
    return slots[i].load(std::memory_order_acquire) >= 0;
  }

  // Makes the descriptor readable (one more byte: a full pipe is readable already).
  void bell() const noexcept {
    const char byte = 1;
    (void)!write(write_fd, &byte, 1);
  }
  // The same, unless it is readable already.
  void ring() const noexcept {
    pollfd p{pipe.read_fd, POLLIN, 0};
    if (poll(&p, 1, 0) != 1) bell();
  }

  // The helper thread: looks at every object (peer checks included) at least every kLongestSleep,
  // and sleeps on those that no producer rings the pipe for (processes; objects without a slot)
  // while they are not ready. Rings the pipe when any object is ready and the pipe is empty: that
  // covers a producer killed before its byte, a peer's death and a process's end.
  void run() {
    std::vector<detail::WaitItem> watch;
    watch.reserve(size() + 1);
    std::unique_ptr<bool[]> ready(new bool[size() + 1]);
    for (;;) {
      looks_seen = looks.load(std::memory_order_acquire);
      watch.clear();
      bool any = false;
      for (std::size_t i = 0; i < size(); ++i) {
        const detail::WaitItem& item = items[i];
        if (item.ops->idle != nullptr) {
          try {
            item.ops->idle(item.object);
          } catch (...) {  // could not read /proc (no memory, no descriptor): next look
          }
        }
        const bool now = item.ops->ready(item.object);
        any |= now;
        if (!now && !direct(i)) watch.push_back(item);
      }
      if (any) ring();
      watch.push_back({this, &kControlOps});
      try {
        detail::wait_any(watch.data(), watch.size(), ready.get(),
                         detail::Deadline::after(detail::kLongestSleep));
      } catch (...) {  // a peer check failed: the next look retries
      }
      if (stop.load(std::memory_order_acquire)) return;
    }
  }

  // Counts the notifier as a listener again on every object with a slot (claiming one again if
  // a waker released it), in the current epoch: from here on, whatever makes one of them ready
  // writes into the pipe. Returns whether the helper thread watches some object instead.
  bool arm() {
    bool helper_watches = false;
    for (std::size_t i = 0; i < size(); ++i) {
      detail::EventCount* ev = event(i);
      int slot = slots[i].load(std::memory_order_relaxed);
      if (ev == nullptr || slot < 0) {
        helper_watches |= ev != nullptr;
        continue;
      }
      if (!detail::listening(*ev, slot, pipe)) {
        slot = detail::listen(*ev, pipe);
        slots[i].store(slot, std::memory_order_release);
        if (slot < 0) {
          helper_watches = true;
          continue;
        }
      }
      if (announced[i]) detail::withdraw_sleeper<detail::kListenerUnit>(*ev, tickets[i]);
      tickets[i] = detail::announce_sleeper<detail::kListenerUnit>(*ev);  // fence: as a waker's
      announced[i] = true;
    }
    return helper_watches;
  }

  std::vector<std::size_t> look() const {
    std::vector<std::size_t> which;
    for (std::size_t i = 0; i < size(); ++i) {
      if (items[i].ops->ready(items[i].object)) which.push_back(i);
    }
    return which;
  }

  // ready()'s core, under owner_lock. The invariant it keeps: the pipe is not empty, or the
  // notifier is counted on every object (or the helper watches it) since a moment when none was
  // ready, so that whatever made one ready since writes (or is about to write) a byte. So an
  // object found ready by the first look leaves the pipe as it is, readable: no byte to write,
  // none to read, and the notifier is not counted again, so that producers write no more bytes
  // while it is readable anyway. epoll keeps reporting it (level-triggered) until a ready() finds
  // nothing ready; that one empties the pipe, counts the notifier again and looks once more,
  // writing a byte itself only if something became ready meanwhile. (Edge-triggered, the same
  // holds if the caller calls ready() until it returns nothing, before it waits again.)
  std::vector<std::size_t> serve() {
    std::vector<std::size_t> which = look();
    if (!which.empty()) return which;
    char drained[256];
    while (read(pipe.read_fd, drained, sizeof drained) == static_cast<ssize_t>(sizeof drained)) {
    }
    const bool helper_watches = arm();  // then look: what becomes ready after it writes a byte
    which = look();
    if (!which.empty()) bell();
    if (helper_watches) {  // it sleeps on some object it may have left out while it was ready
      looks.fetch_add(1, std::memory_order_acq_rel);
      detail::notify(control);
    }
    return which;
  }

  // Gives back the slots and sleeper counts; the helper thread is stopped.
  void quit() noexcept {
    for (std::size_t i = 0; i < size(); ++i) {
      detail::EventCount* ev = event(i);
      const int slot = slots[i].load(std::memory_order_relaxed);
      if (ev == nullptr || slot < 0) continue;
      detail::unlisten(*ev, slot, pipe);
      if (announced[i]) detail::withdraw_sleeper<detail::kListenerUnit>(*ev, tickets[i]);
    }
  }
};

const detail::WaitOps Notifier::Helper::kControlOps{
    [](const void* h) noexcept {
      const auto& self = *static_cast<const Helper*>(h);
      return self.stop.load(std::memory_order_acquire) ||
             self.looks.load(std::memory_order_acquire) != self.looks_seen;
    },
    [](const void* h) noexcept -> detail::EventCount* {
      return &const_cast<Helper*>(static_cast<const Helper*>(h))->control;
    },
    nullptr, nullptr};

Notifier::Notifier(const std::vector<Waitable>& objects)
    : owner_(detail::this_process_id()), helper_(std::make_unique<Helper>()) {
  if (objects.size() + 1 > detail::kMaxWaitObjects) {
    throw InvalidArgument("shmq::Notifier: " + std::to_string(objects.size()) +
                          " objects, but a notifier watches at most " +
                          std::to_string(detail::kMaxWaitObjects - 1));
  }
  Helper& h = *helper_;
  for (const Waitable& object : objects) h.items.push_back(object.item());
  int ends[2];
  if (pipe2(ends, O_NONBLOCK | O_CLOEXEC) != 0) {
    throw Error(std::string("shmq::Notifier: cannot make a pipe: ") + std::strerror(errno));
  }
  fd_ = ends[0];
  h.write_fd = ends[1];
  struct stat st;
  const bool direct = fstat(fd_, &st) == 0 && st.st_ino != 0 && detail::reopenable(fd_);
  h.pipe = {fd_, static_cast<std::uint64_t>(st.st_ino)};
  h.slots.reset(new std::atomic<int>[h.size()]);
  h.tickets.reset(new detail::SleeperTicket[h.size()]);
  h.announced.reset(new bool[h.size()]());
  for (std::size_t i = 0; i < h.size(); ++i) {
    detail::EventCount* ev = h.event(i);
    h.slots[i].store(direct && ev != nullptr ? detail::listen(*ev, h.pipe) : -1);
  }
  h.arm();
  if (!h.look().empty()) h.bell();  // the pipe is new: the invariant of serve() from the start
  try {
    h.thread = std::thread([&h] { h.run(); });
  } catch (const std::system_error& e) {
    h.quit();
    ::close(fd_);
    ::close(h.write_fd);
    throw Error(std::string("shmq::Notifier: cannot start its helper thread: ") + e.what());
  }
}

Notifier::~Notifier() {
  if (detail::this_process_id() != owner_) {
    // A forked child: the helper thread is not here; its std::thread must not be joined or
    // destroyed (joinable, it would terminate). Leaked on purpose: a few bytes per inherited one.
    // The slots name the parent's pid: they are the parent's to give back.
    ::close(fd_);
    ::close(helper_->write_fd);
    (void)helper_.release();
    return;
  }
  helper_->stop.store(true, std::memory_order_release);
  detail::notify(helper_->control);  // wakes it from wait_any
  helper_->thread.join();
  helper_->quit();
  ::close(fd_);
  ::close(helper_->write_fd);
}

std::vector<std::size_t> Notifier::ready() {
  const pid_t me = detail::this_process_id();
  if (me != owner_) {
    throw InvalidArgument("shmq::Notifier: used in a forked child (pid " + std::to_string(me) +
                          "); its helper thread runs only in pid " + std::to_string(owner_) +
                          ": make a new notifier here");
  }
  std::lock_guard<std::mutex> lock(helper_->owner_lock);
  return helper_->serve();
}

}  // namespace shmq
