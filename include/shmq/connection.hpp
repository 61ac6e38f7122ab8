// shmq::Pipe and shmq::Connection: Python's multiprocessing.Pipe, in shared memory.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <typeinfo>
#include <utility>

#include "shmq/codec.hpp"
#include "shmq/detail/deadline.hpp"
#include "shmq/detail/pipe_end.hpp"
#include "shmq/detail/queue_access.hpp"
#include "shmq/detail/wait_core.hpp"
#include "shmq/errors.hpp"
#include "shmq/queue_options.hpp"

namespace shmq {

// One end of a Pipe: sends T values to the other end and receives the values it sends, in order,
// each exactly once. Made by Pipe() only.
//
// A handle: copies in one process share the end (close() on one closes them all, as Python's one
// Connection object), and the last copy's destruction closes it. A child forked while this process
// holds the end holds it too (Process arguments and captures included), as Python's children
// inherit descriptors; close the ends a process does not use, as in Python.
//
// End of stream — when the other end is gone, recv() returns what was sent and then throws
// EOFError, and send() throws BrokenPipeError. The other end is gone when no live process holds it:
//  - every process that made it, inherited it by fork, or used it has close()d it (or dropped its
//    last handle), or has died, however (SIGKILL at any instruction included); a dead holder is
//    noticed within 100 ms by a receiver waiting in recv, poll, wait or a Notifier;
//  - but once any process has sent or received on an end, only processes that have sent or received
//    on it count: a parent that passed the end to a child and never used it does not keep the
//    stream open when the child dies, even if it never closed its copy (unlike Python, where that
//    parent's recv would hang). Passing an end through a queue (a Pool task's argument) is a use:
//    the passing process holds it until it closes its copy.
// Once gone, an end stays gone: its remaining copies fail too (send: BrokenPipeError, recv: the
// rest of what was sent, then EOFError). A send to a peer killed without closing fails with
// BrokenPipeError once the death is noticed: at once if the pipe is full (the send waits), else
// at the first send 100 ms or more after the last check; sends before that are lost with the peer.
// At most 32 processes can hold one end at a time (Error beyond).
//
// Waiting, as Queue: send blocks while the pipe is full (capacity_bytes of Pipe's options), recv
// while it is empty, each looking at the peer's holders every 100 ms; both spin first.
// Thread safety: as Queue's handles.
template <class T>
class Connection {
 public:
  // Copyable: a handle; copies in this process share the end.
  Connection(const Connection&) = default;
  Connection& operator=(const Connection&) = default;
  Connection(Connection&&) noexcept = default;
  Connection& operator=(Connection&&) noexcept = default;
  ~Connection() = default;

  // Sends a value. Throws BrokenPipeError (see the class comment), Closed after close(),
  // InvalidArgument on a receive-only end, MessageTooLarge (nothing sent), and what codec<T>
  // throws. Blocks while the pipe is full.
  void send(const T& value) {
    transmit(detail::QueueAccess::encoder<T>([&value](std::size_t) -> const T& { return value; }),
             "send");
  }
  // Sends `bytes` as one message whose encoding (codec.hpp) they are: recv_bytes() returns them,
  // recv() decodes them. Throws as send(), and InvalidArgument for a size no T can have.
  void send_bytes(std::string_view bytes) {
    if (is_bitwise_v<T> && bytes.size() != sizeof(T)) {
      throw InvalidArgument("shmq: " + end_->description() + ": send_bytes of " +
                            std::to_string(bytes.size()) + " bytes, but " + typeid(T).name() +
                            " always takes " + std::to_string(sizeof(T)));
    }
    transmit(std::make_pair([&](std::size_t) { return bytes.size(); },
                            [&](std::size_t, std::byte* dst, std::size_t size) {
                              std::memcpy(dst, bytes.data(), size);
                            }),
             "send_bytes");
  }

  // Receives the next value, blocking until one arrives. Throws EOFError once the other end is
  // gone and everything it sent has been received; Closed after close(); InvalidArgument on a
  // send-only end; DecodeError for a message that does not decode as T (dropped).
  T recv() { return recv_until(detail::Deadline::never()); }
  // As recv(), giving up after `timeout` with TimeoutError (not in Python: poll(timeout) first).
  template <class Rep, class Period>
  T recv(const std::chrono::duration<Rep, Period>& timeout) {
    return recv_until(detail::Deadline::after(timeout));
  }
  // Receives the next message's encoded bytes (see send_bytes); throws as recv().
  std::string recv_bytes() {
    std::string bytes;
    receive([&](const std::byte* at,
                std::uint32_t size) { bytes.assign(reinterpret_cast<const char*>(at), size); },
            detail::Deadline::never(), "recv_bytes");
    return bytes;
  }

  // Whether recv() would not block now: a message is waiting, or end of stream (noticed as the
  // class comment says). Never waits. Throws as recv() for a closed or send-only end.
  bool poll() { return poll_until(detail::Deadline::now()); }
  // As poll(), waiting up to `timeout` for it to become true.
  template <class Rep, class Period>
  bool poll(const std::chrono::duration<Rep, Period>& timeout) {
    return poll_until(detail::Deadline::after(timeout));
  }

  // Gives up this process's hold on the end (every copy in this process); see "End of stream".
  // Idempotent; never waits.
  void close() noexcept { end_->close(); }
  bool closed() const noexcept { return end_->closed(); }
  // Python's readable / writable: whether this end can receive / send.
  bool readable() const noexcept { return end_->in() != nullptr; }
  bool writable() const noexcept { return end_->out() != nullptr; }

  // For shmq::wait and Notifier: ready when recv would not block (see wait.hpp).
  friend detail::WaitItem wait_item(const Connection& c) {
    c.receiving("wait");
    return {c.end_.get(), &kWaitOps};
  }

 private:
  template <class U>
  friend std::pair<Connection<U>, Connection<U>> Pipe(bool, const QueueOptions&);
  friend struct codec<Connection<T>>;

  explicit Connection(std::shared_ptr<detail::PipeEnd> end) : end_(std::move(end)) {}

  static inline const detail::WaitOps kWaitOps{
      [](const void* end) noexcept {
        return static_cast<const detail::PipeEnd*>(end)->in()->ring().readable();
      },
      [](const void* end) noexcept -> detail::EventCount* {
        return &static_cast<const detail::PipeEnd*>(end)->in()->ring().not_empty();
      },
      nullptr,
      [](const void* end) {
        const_cast<detail::PipeEnd*>(static_cast<const detail::PipeEnd*>(end))->peer_gone(true);
      }};

  detail::Segment& receiving(const char* call) const {
    check_open(call);
    if (end_->in() == nullptr) {
      throw InvalidArgument("shmq: " + end_->description() + ": " + call +
                            " on the sending end of a one-way pipe");
    }
    return *end_->in();
  }
  detail::Segment& sending(const char* call) const {
    check_open(call);
    if (end_->out() == nullptr) {
      throw InvalidArgument("shmq: " + end_->description() + ": " + call +
                            " on the receiving end of a one-way pipe");
    }
    return *end_->out();
  }
  void check_open(const char* call) const {
    if (end_->closed()) {
      throw Closed("shmq: " + end_->description() + " was closed in this process: " + call +
                   " refused");
    }
  }

  T recv_until(const detail::Deadline& deadline) {
    std::optional<T> value;
    receive([&](const std::byte* at,
                std::uint32_t bytes) { value.emplace(detail::QueueAccess::decode<T>(at, bytes)); },
            deadline, "recv");
    return std::move(*value);
  }

  // The one core of every receive: one message's bytes to take(data, size), waiting at most
  // kLongestSleep at a time and looking at the peer's holders after each such wait.
  template <class Take>
  void receive(Take&& take, const detail::Deadline& deadline, const char* call) {
    detail::Segment& in = receiving(call);
    end_->mark_used();
    for (;;) {
      detail::Progress progress;
      try {
        progress = in.ring().get_many(1, take, deadline.capped(detail::kLongestSleep));
      } catch (const DecodeError& e) {
        throw DecodeError("shmq: " + end_->description() + ": a message does not decode as " +
                          in.type_name() + " and was dropped: " + e.what());
      }
      if (progress.outcome == detail::Outcome::done) return;
      if (progress.outcome == detail::Outcome::shut_down) {
        throw EOFError("shmq: " + end_->description() + ": " + call +
                       ": end of stream (the other end is gone and everything it sent was "
                       "received)");
      }
      // At most one /proc scan per kLongestSleep, however often a recv(0) polls.
      if (end_->peer_gone(true)) continue;  // the rings are shut down: the get drains or ends
      if (deadline.expired()) {
        throw TimeoutError("shmq: " + end_->description() + ": " + call + ": nothing received in " +
                           std::to_string(deadline.timeout().count()) + " ns");
      }
    }
  }

  // The one core of every send: one message of size_of(0) bytes written by fill(0, dst, size).
  template <class SizeOf, class Fill>
  void transmit(const std::pair<SizeOf, Fill>& message, const char* call) {
    detail::Segment& out = sending(call);
    end_->mark_used();
    end_->peer_gone(true);  // a peer killed while the pipe had room; at most every 100 ms
    for (;;) {
      const auto progress = out.ring().put_many(
          1,
          [&](std::size_t i) {
            const std::size_t bytes = message.first(i);
            out.check_message_size(bytes);
            return static_cast<std::uint32_t>(bytes);
          },
          [&](std::size_t i, std::byte* dst, std::uint32_t bytes) {
            message.second(i, dst, std::size_t{bytes});
          },
          detail::Deadline::never().capped(detail::kLongestSleep));
      if (progress.outcome == detail::Outcome::done) return;
      if (progress.outcome == detail::Outcome::shut_down) {
        throw BrokenPipeError("shmq: " + end_->description() + ": " + call +
                              ": broken pipe (the other end is gone)");
      }
      end_->peer_gone(true);  // full for 100 ms: is anybody still receiving?
    }
  }

  bool poll_until(const detail::Deadline& deadline) {
    const detail::WaitItem item = wait_item(*this);
    bool ready = false;
    return detail::wait_any(&item, 1, &ready, deadline) != 0;
  }

  std::shared_ptr<detail::PipeEnd> end_;
};

// A Connection travels through queues (as a Pool task's argument, say) by the names of its rings:
// the process that decodes it becomes a holder of the end (see "End of stream"), and gives its hold
// up when its last copy goes, as a forked child does when it ends. Encoding counts as a use of the
// end by the passing process: its copy keeps the stream open until it closes it (or dies), so
// that one end can serve task after task. Decoding opens the rings, which
// works while the process that made the Pipe still holds a handle to either end.
template <class T>
struct codec<Connection<T>> {
  static std::string name_of(const detail::Segment* segment) {
    return segment != nullptr ? segment->name() : std::string();
  }
  static std::size_t size(const Connection<T>& c) {
    return codec<std::string>::size(name_of(c.end_->in())) +
           codec<std::string>::size(name_of(c.end_->out()));
  }
  static void encode(const Connection<T>& c, Writer& out) {
    // Passing an end on is a use: the passing process keeps counting as a holder (to pass it to the
    // next task) until it closes its copy, whatever the receivers do, as in Python.
    c.check_open("passing it on");
    c.end_->mark_used();
    codec<std::string>::encode(name_of(c.end_->in()), out);
    codec<std::string>::encode(name_of(c.end_->out()), out);
  }
  static Connection<T> decode(Reader& in) {
    const std::string from = codec<std::string>::decode(in);
    const std::string to = codec<std::string>::decode(in);
    if (from.empty() && to.empty()) throw DecodeError("shmq: a Connection with no ring");
    const auto open = [](const std::string& name) -> std::shared_ptr<detail::Segment> {
      if (name.empty()) return nullptr;
      return detail::Segment::open(name, &detail::QueueAccess::type_tag<T>());
    };
    return Connection<T>(std::make_shared<detail::PipeEnd>(open(from), open(to)));
  }
};

// Python's multiprocessing.Pipe(duplex): two connected ends, each in shared memory (one unnamed
// queue per direction, of options.capacity_bytes). Duplex (the default): both ends send and
// receive. Not duplex: the first end only receives, the second only sends. Throws Error if
// /dev/shm or this process's descriptors run out (each direction keeps one memfd open here).
template <class T>
std::pair<Connection<T>, Connection<T>> Pipe(bool duplex = true, const QueueOptions& options = {}) {
  const detail::TypeTag& tag = detail::QueueAccess::type_tag<T>();
  auto to_first = detail::Segment::create_anonymous(options, tag);
  auto to_second = duplex ? detail::Segment::create_anonymous(options, tag) : nullptr;
  auto first = std::make_shared<detail::PipeEnd>(to_first, to_second);
  auto second = std::make_shared<detail::PipeEnd>(to_second, to_first);
  return {Connection<T>(std::move(first)), Connection<T>(std::move(second))};
}

}  // namespace shmq
