// shmq::Lease<T>: a message taken by Queue<T>::get_leased, kept by the queue until it is acked.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <memory>
#include <utility>

#include "shmq/detail/lease_table.hpp"
#include "shmq/detail/segment.hpp"

namespace shmq {

template <class T>
class Queue;

namespace detail {
// Only Queue<T> makes leases: the key to Lease's constructor.
class LeaseKey {
  template <class T>
  friend class shmq::Queue;
  LeaseKey() = default;
};
// Why ack() or nack() was refused (LeaseExpired, or InvalidArgument for a lease already ended).
[[noreturn]] void throw_lease_refused(const Segment& segment, const LeaseTicket& ticket, bool ended,
                                      const char* call);
}  // namespace detail

// A leased message: its value, and the queue's copy of it, which stays in the queue's lease area
// until ack(). If this process dies first (at any instruction, SIGKILL included) the message is
// delivered again to another consumer; so it is if the lease is nacked, destroyed without an ack
// (an exception unwinding), or held longer than the queue's lease_timeout. A redelivered message
// may arrive after messages put later than it.
//
// Move-only; not thread-safe (one thread finishes it). A forked child may ack or nack a lease it
// inherited, but its destructor there does nothing: the lease stays the parent's.
template <class T>
class Lease {
 public:
  Lease(Lease&& other) noexcept
      : segment_(std::move(other.segment_)),
        ticket_(other.ticket_),
        holder_(other.holder_),
        value_(std::move(other.value_)),
        held_(std::exchange(other.held_, false)) {}
  Lease& operator=(Lease&& other) noexcept {
    if (this != &other) {
      release();
      segment_ = std::move(other.segment_);
      ticket_ = other.ticket_;
      holder_ = other.holder_;
      value_ = std::move(other.value_);
      held_ = std::exchange(other.held_, false);
    }
    return *this;
  }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  // Nacks the lease if it is still held by this process.
  ~Lease() { release(); }

  T& value() noexcept { return value_; }
  const T& value() const noexcept { return value_; }
  // How many times the message has been delivered, this time included (1 the first time).
  std::uint32_t deliveries() const noexcept {
    return detail::LeaseState::unpack(ticket_.word).deliveries;
  }
  // Whether ack() or nack() may still be called.
  bool held() const noexcept { return held_; }

  // Done with the message: the queue forgets it. Throws LeaseExpired if it was already delivered
  // again (lease_timeout), InvalidArgument if this lease was already acked or nacked.
  void ack() { finish(true, "ack"); }
  // Gives the message back now, for its next delivery (before the ring's messages). Throws as ack.
  void nack() { finish(false, "nack"); }

  // For Queue<T> (the key): the lease `ticket`, its value made in place by decode(). Inlined into
  // every leased get (Queue::make_lease).
  template <class Decode>
  __attribute__((always_inline))
  Lease(detail::LeaseKey, const std::shared_ptr<detail::Segment>& segment,
        const detail::LeaseTicket& ticket, Decode&& decode)
      : segment_(segment),
        ticket_(ticket),
        holder_(detail::LeaseState::unpack(ticket.word).pid),
        value_(decode()),
        held_(true) {}

 private:
  // Ends the lease, once: acks it or nacks it (called directly, so that the ack inlines).
  void finish(bool ack, const char* call) {
    if (!held_) detail::throw_lease_refused(*segment_, ticket_, true, call);
    held_ = false;
    detail::LeaseTable& leases = *segment_->leases();
    if (!(ack ? leases.ack(ticket_) : leases.nack(ticket_))) {
      detail::throw_lease_refused(*segment_, ticket_, false, call);
    }
  }
  void release() noexcept {
    if (held_ && holder_ == detail::this_holder().pid) segment_->leases()->nack(ticket_);
    held_ = false;
  }

  std::shared_ptr<detail::Segment> segment_;
  detail::LeaseTicket ticket_;
  std::uint32_t holder_;  // this_holder().pid of the process that took it
  T value_;
  bool held_;
};

}  // namespace shmq
