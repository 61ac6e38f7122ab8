// When a blocking call gives up. Internal.
#pragma once

#include <time.h>

#include <algorithm>
#include <chrono>
#include <limits>

namespace shmq::detail {

// A point on the monotonic clock (steady_clock is CLOCK_MONOTONIC on Linux), so setting the wall
// clock never shortens or lengthens a wait. Three kinds: never (block forever), already passed
// (the _nowait and try_ calls) and a finite instant.
class Deadline {
 public:
  using clock = std::chrono::steady_clock;
  // Timeouts this long (a century) or longer wait forever; it also keeps clock arithmetic in range.
  static constexpr std::chrono::hours kForever{24 * 365 * 100};

  static Deadline never() noexcept { return Deadline(clock::time_point::max(), {}); }
  static Deadline now() noexcept { return Deadline(clock::time_point::min(), {}); }

  // A timeout of zero or less means "do not wait"; one too long to represent means "forever".
  // Rounded up to whole nanoseconds so that a wait is never early.
  template <class Rep, class Period>
  static Deadline after(const std::chrono::duration<Rep, Period>& timeout) {
    using std::chrono::nanoseconds;
    if (timeout <= timeout.zero()) return now();
    if (timeout >= kForever) return never();
    const auto ns = std::chrono::ceil<nanoseconds>(timeout);
    return Deadline(clock::now() + ns, ns);
  }

  bool is_never() const noexcept { return at_ == clock::time_point::max(); }
  bool is_now() const noexcept { return at_ == clock::time_point::min(); }
  bool expired() const noexcept { return !is_never() && (is_now() || clock::now() >= at_); }
  clock::time_point at() const noexcept { return at_; }
  // The timeout this deadline was made from, for error messages (zero for never/now).
  std::chrono::nanoseconds timeout() const noexcept { return timeout_; }

  // The earlier of this deadline and `most` from now: for a wait that must look again by then.
  template <class Rep, class Period>
  Deadline capped(const std::chrono::duration<Rep, Period>& most) const {
    const Deadline cap = after(most);
    return at_ <= cap.at_ ? *this : cap;
  }

  // The time left until a finite deadline (zero once it has passed), as a relative timespec for
  // calls that take one (ppoll).
  timespec left_timespec() const noexcept {
    const auto left = std::max(at_ - clock::now(), clock::duration::zero());
    return to_timespec(clock::time_point(left));
  }

  // The deadline as an absolute CLOCK_MONOTONIC timespec, for futex and pthread calls.
  static timespec to_timespec(clock::time_point t) noexcept {
    const auto ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
    timespec ts;
    ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    return ts;
  }

 private:
  Deadline(clock::time_point at, std::chrono::nanoseconds timeout) noexcept
      : at_(at), timeout_(timeout) {}

  clock::time_point at_;
  std::chrono::nanoseconds timeout_;
};

}  // namespace shmq::detail
