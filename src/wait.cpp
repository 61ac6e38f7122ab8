// shmq::wait's core: bounded polling, then one futex_waitv over every object's futex word.
#include "shmq/wait.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <string>

#include "shmq/detail/ring.hpp"
#include "shmq/errors.hpp"

namespace shmq::detail {

namespace {

// How long wait polls before sleeping, as a queue's default spin_polls; each poll looks at every
// object. Adapted per process, as get's (SpinBudget).
constexpr unsigned kWaitSpinPolls = 2000;

std::size_t look(const WaitItem* items, std::size_t n, bool* ready) noexcept {
  std::size_t count = 0;
  for (std::size_t i = 0; i < n; ++i) count += (ready[i] = items[i].ops->ready(items[i].object));
  return count;
}

// Set when the kernel answered ENOSYS to futex_waitv (before Linux 5.16).
std::atomic<bool> waitv_missing{false};

// Sleeps until one of the words no longer holds its value, a wake-up, a signal, or `until`.
// Without futex_waitv (ENOSYS) it sleeps on the first word for at most 1 ms at a time: correct
// (every object is looked at again after each ms), but an idle wait then wakes 1000 times a second.
void sleep_on(futex_waitv* words, std::size_t n, const Deadline& until) noexcept {
  const timespec at = Deadline::to_timespec(until.at());
  if (!waitv_missing.load(std::memory_order_relaxed)) {
    const long rc = syscall(SYS_futex_waitv, words, static_cast<unsigned>(n), 0u,
                            until.is_never() ? nullptr : &at, CLOCK_MONOTONIC);
    if (rc >= 0 || errno != ENOSYS) return;  // woken, EAGAIN, EINTR, ETIMEDOUT: look again
    waitv_missing.store(true, std::memory_order_relaxed);
  }
  futex_wait(*reinterpret_cast<std::atomic<std::uint32_t>*>(words[0].uaddr),
             static_cast<std::uint32_t>(words[0].val), until.capped(std::chrono::milliseconds(1)));
}

}  // namespace

std::size_t wait_any(const WaitItem* items, std::size_t n, bool* ready, const Deadline& deadline) {
  if (n > kMaxWaitObjects) {
    throw InvalidArgument("shmq::wait: " + std::to_string(n) +
                          " objects, but one wait sleeps on at most " +
                          std::to_string(kMaxWaitObjects) + " (futex_waitv's limit)");
  }
  // Every wait ends with this look, after the idle checks (which limit themselves to one /proc
  // scan per kLongestSleep): so a connection whose peer died is reported even by waits that other
  // objects always end at once.
  const auto last_look = [&] {
    for (std::size_t i = 0; i < n; ++i) {
      if (items[i].ops->idle != nullptr) items[i].ops->idle(items[i].object);
    }
    return look(items, n, ready);
  };
  if (deadline.is_now()) return last_look();  // poll(), wait(..., 0): no sleeper to announce
  static SpinBudget spin(kWaitSpinPolls);
  if (spin.spin_until([&] { return look(items, n, ready) != 0; })) return last_look();
  futex_waitv words[kMaxWaitObjects];
  SleeperTicket tickets[kMaxWaitObjects];
  for (;;) {
    // Counted as a sleeper on every EventCount first (each announce_sleeper ends with the seq_cst
    // fence that pairs with the notifiers'), then one more look: a change published after this
    // look moved a word we sleep on, so the futex_waitv returns at once.
    for (std::size_t i = 0; i < n; ++i) {
      const WaitOps& ops = *items[i].ops;
      FutexWord at;
      if (EventCount* ev = ops.event(items[i].object)) {
        tickets[i] = announce_sleeper(*ev);
        at = {&ev->seq, tickets[i].seq};
      } else {
        at = ops.word(items[i].object);
      }
      words[i] = {at.value, reinterpret_cast<std::uintptr_t>(at.word), FUTEX_32, 0};
    }
    const bool sleep = look(items, n, ready) == 0 && !deadline.expired();
    if (sleep) sleep_on(words, n, deadline.capped(kLongestSleep));
    for (std::size_t i = 0; i < n; ++i) {
      const WaitOps& ops = *items[i].ops;
      if (EventCount* ev = ops.event(items[i].object)) {
        withdraw_sleeper(*ev, tickets[i]);
      } else {
        // A plain word is changed by someone who wakes one sleeper (the kernel, for a dead lock
        // holder): pass the wake-up on to the others.
        auto& word = *reinterpret_cast<std::atomic<std::uint32_t>*>(words[i].uaddr);
        if (word.load(std::memory_order_relaxed) != words[i].val) {
          syscall(SYS_futex, &word, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
        }
      }
    }
    const std::size_t count = last_look();
    if (count != 0 || deadline.expired()) return count;
  }
}

}  // namespace shmq::detail

namespace shmq {

std::vector<std::size_t> wait_until(const std::vector<Waitable>& objects,
                                    const detail::Deadline& deadline) {
  std::vector<detail::WaitItem> items;
  items.reserve(objects.size());
  for (const Waitable& object : objects) items.push_back(object.item());
  std::unique_ptr<bool[]> ready(new bool[objects.size() + 1]);
  detail::wait_any(items.data(), items.size(), ready.get(), deadline);
  std::vector<std::size_t> which;
  for (std::size_t i = 0; i < objects.size(); ++i) {
    if (ready[i]) which.push_back(i);
  }
  return which;
}

}  // namespace shmq
