// shmq::Queue<T>: Python's multiprocessing.Queue for C++ processes, in POSIX shared memory.
#pragma once

#if defined(__GLIBCXX__)
#include <cxxabi.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "shmq/codec.hpp"
#include "shmq/detail/deadline.hpp"
#include "shmq/detail/demangle.hpp"
#include "shmq/detail/segment.hpp"
#include "shmq/errors.hpp"
#include "shmq/lease.hpp"
#include "shmq/queue_options.hpp"
#include "shmq/stats.hpp"

namespace shmq {

namespace detail {
struct QueueAccess;  // queue_access.hpp: for Connection and wait
}  // namespace detail

// A FIFO of T values shared by any number of producer and consumer processes. Every message is
// delivered exactly once, and messages from one producer arrive in the order it put them.
//
// A Queue is a handle: cheap to copy, and copies share the queue. A forked child uses the handles
// it inherited as they are; another process reaches a named queue with open(name). Values travel
// through shmq::codec<T> (see codec.hpp).
//
// Thread safety: a handle may be used from many threads at once (only close() is per handle and
// unsynchronised); every call is also safe against other processes.
//
// Waiting, as each call's comment says: the blocking forms wait as long as it takes (for room,
// for a message, and for a lock a stopped process holds, until it continues); the timed forms
// wait at most their timeout in all; the _nowait and try_ forms never sleep on a full or empty
// queue, but may wait up to 50 ms (detail::RobustLock::kNowaitLockPatience) for a lock that
// another thread or process holds in the middle of its own put or get, and then report "full" /
// "empty" as if there were no room or no message. shutdown() wakes every waiting call.
//
// Decoding: a message that cannot be turned into a T, for any reason codec<T>::decode gives
// (DecodeError, or any other exception: NotFound for a queue handle naming a removed queue,
// std::bad_alloc, a user codec's own exception), is dropped, and the get throws DecodeError
// naming the queue, T and the cause. It never stays at the head to fail every later get.
template <class T>
class Queue {
 public:
  // An unnamed queue, like Python's Queue(): its segment's name is removed when the creating
  // process's last handle to it goes away (processes already holding it keep working, and a forked
  // child never removes it). Throws Error if /dev/shm has no room.
  Queue() : Queue(QueueOptions{}) {}
  // Like Python's Queue(maxsize): at most `maxsize` messages at once (0: no message limit).
  explicit Queue(std::size_t maxsize) : Queue(QueueOptions{maxsize}) {}
  explicit Queue(const QueueOptions& options)
      : segment_(detail::Segment::create_anonymous(options, type_tag())) {}

  // Copyable: a handle; copies share the queue (and copy the closed flag).
  Queue(const Queue&) = default;
  Queue& operator=(const Queue&) = default;
  Queue(Queue&&) noexcept = default;
  Queue& operator=(Queue&&) noexcept = default;
  ~Queue() = default;

  // A new named queue that lives until remove(name). Throws AlreadyExists if the name is taken,
  // InvalidArgument for a bad name or option.
  static Queue create(std::string_view name, const QueueOptions& options = {}) {
    return Queue(detail::Segment::create(name, options, type_tag()));
  }
  // An existing queue. Throws NotFound, or Incompatible if it is not a queue of T (or not a shmq
  // queue at all); creates nothing. Waits (up to 2 s, then Incompatible) only for a creator that
  // has made the segment and not yet initialised it.
  static Queue open(std::string_view name) {
    return Queue(detail::Segment::open(name, &type_tag()));
  }
  // Opens `name`, or creates it with `options` if it does not exist; of many racing callers
  // exactly one creates. Refuses (Error) a segment owned by another user or with a wider mode than
  // options.mode. An existing queue keeps its own capacity and maxsize. Waits as open() does.
  static Queue open_or_create(std::string_view name, const QueueOptions& options = {}) {
    return Queue(detail::Segment::open_or_create(name, options, type_tag()));
  }
  // Removes the name (`jobs` and `/jobs` are the same); returns whether it existed. Handles already
  // open keep working.
  static bool remove(std::string_view name) { return detail::Segment::remove(name); }

  // ---- put. Every form throws MessageTooLarge (before writing anything) if the encoded value
  // can never fit, Closed after close(), ShutDown after shutdown(), and what codec<T> throws.
  // Blocks while the queue is full (by maxsize or by bytes), however long that takes.
  void put(const T& value) { put_one(value, detail::Deadline::never(), "put"); }
  // Waits at most `timeout` in all (for room and for the lock), then throws Full; a timeout of
  // zero or less is put_nowait.
  template <class Rep, class Period>
  void put(const T& value, const std::chrono::duration<Rep, Period>& timeout) {
    put_one(value, detail::Deadline::after(timeout), "put");
  }
  // Never sleeps on a full queue: throws Full at once. May wait up to 50 ms for the producers'
  // lock held by another thread or process, then throws Full too.
  void put_nowait(const T& value) { put_one(value, detail::Deadline::now(), "put_nowait"); }
  // As put_nowait (the same 50 ms at most for the lock), but returns false instead of throwing
  // Full; still throws MessageTooLarge, Closed and ShutDown.
  bool try_put(const T& value) { return put_one(value, detail::Deadline::now(), nullptr) == 1; }

  // ---- get. Every form throws Closed after close(), ShutDown once the queue is shut down and
  // drained (at once after shutdown(true)), and DecodeError for a message that cannot be decoded
  // as T, which is dropped (see "Decoding" above; the next get gets the next message).
  // Blocks while the queue is empty, however long that takes.
  T get() { return *get_one(detail::Deadline::never(), "get"); }
  // Waits at most `timeout` in all (for a message and for the lock), then throws Empty; a timeout
  // of zero or less is get_nowait.
  template <class Rep, class Period>
  T get(const std::chrono::duration<Rep, Period>& timeout) {
    return *get_one(detail::Deadline::after(timeout), "get");
  }
  // Never sleeps on an empty queue: throws Empty at once. May wait up to 50 ms for the consumers'
  // lock held by another thread or process, then throws Empty too.
  T get_nowait() { return *get_one(detail::Deadline::now(), "get_nowait"); }
  // As get_nowait (the same 50 ms at most for the lock), but returns nullopt instead of throwing
  // Empty; still throws DecodeError (the bad message is dropped), Closed and ShutDown.
  std::optional<T> try_get() { return get_one(detail::Deadline::now(), nullptr); }

  // ---- get into an existing value: as the get of the same form, but assigns the message to
  // `out`, reusing its storage (codec.hpp, decode_into): a std::string or std::vector whose
  // capacity suffices allocates nothing. Not in Python; for speed. `out` is left untouched when
  // there is no message (Empty, try_get's false); if the message does not decode it is dropped,
  // DecodeError is thrown and `out` holds a valid but unspecified value. (In a queue of
  // std::chrono durations, q.get(d) with a non-const d is this call: pass timeouts as const.)
  // Blocks while the queue is empty, however long that takes.
  void get(T& out) { get_into(out, detail::Deadline::never(), "get"); }
  // Waits at most `timeout` in all, then throws Empty; a timeout of zero or less is get_nowait.
  template <class Rep, class Period>
  void get(T& out, const std::chrono::duration<Rep, Period>& timeout) {
    get_into(out, detail::Deadline::after(timeout), "get");
  }
  // Never sleeps on an empty queue (the same 50 ms at most for the lock as get_nowait()).
  void get_nowait(T& out) { get_into(out, detail::Deadline::now(), "get_nowait"); }
  // As get_nowait(out), but returns false instead of throwing Empty.
  bool try_get(T& out) { return get_into(out, detail::Deadline::now(), nullptr); }

  // ---- Batches: many messages per lock hold, one wake-up per batch. Not in Python; for speed.
  // Puts every value of a random-access range in order, blocking while full, however long that
  // takes. Each value that fits goes in under one lock hold; a value too large to ever fit throws
  // MessageTooLarge after the values before it were put. Throws as put() does; if anything throws
  // midway, the values before it are in the queue.
  template <class Range>
  void put_many(const Range& values) {
    put_core(std::size(values), encoder(element_of(values)), detail::Deadline::never(), "put_many");
  }
  // Puts as many values of the range, in order, as there is room for now; returns how many. Never
  // sleeps on a full queue; may wait up to 50 ms for the producers' lock held by another thread
  // or process, and then returns 0. Throws as try_put does.
  template <class Range>
  std::size_t try_put_many(const Range& values) {
    return put_core(std::size(values), encoder(element_of(values)), detail::Deadline::now(),
                    nullptr);
  }
  // Appends to `out` up to `max` messages, blocking until there is at least one, however long that
  // takes; returns how many. Throws as get() does; on DecodeError the messages before the bad one
  // are already appended to `out` (and taken), the bad one is dropped, the ones after it stay.
  std::size_t get_many(std::vector<T>& out, std::size_t max) {
    return get_core(max, appender(out), detail::Deadline::never(), "get_many");
  }
  // As get_many, waiting at most `timeout` in all for the first message, then throwing Empty.
  template <class Rep, class Period>
  std::size_t get_many(std::vector<T>& out, std::size_t max,
                       const std::chrono::duration<Rep, Period>& timeout) {
    return get_core(max, appender(out), detail::Deadline::after(timeout), "get_many");
  }
  // Appends to `out` up to `max` messages already queued; returns how many (0 if none). Never
  // sleeps on an empty queue; may wait up to 50 ms for the consumers' lock held by another thread
  // or process, and then returns 0. Throws as try_get does (DecodeError as get_many).
  std::size_t try_get_many(std::vector<T>& out, std::size_t max) {
    return get_core(max, appender(out), detail::Deadline::now(), nullptr);
  }

  // ---- Leased gets (lease.hpp): the message stays in the queue, in its lease area, until the
  // lease is acked, and is delivered again if this process dies first, nacks it, drops the lease
  // unacked, or holds it past QueueOptions::lease_timeout. Ready redeliveries come first, then
  // the ring's messages; leased and plain gets may share a queue. At most max_leases leases are
  // outstanding: a leased get that finds none free waits as a get on an empty queue (the _nowait
  // and try_ forms report "empty"). Each form throws as its plain get does (a message that does
  // not decode is dropped: DecodeError), and InvalidArgument on a queue made with max_leases 0.
  Lease<T> get_leased() { return make_lease(lease_one(detail::Deadline::never(), "get_leased")); }
  template <class Rep, class Period>
  Lease<T> get_leased(const std::chrono::duration<Rep, Period>& timeout) {
    return make_lease(lease_one(detail::Deadline::after(timeout), "get_leased"));
  }
  Lease<T> get_leased_nowait() {
    return make_lease(lease_one(detail::Deadline::now(), "get_leased_nowait"));
  }
  std::optional<Lease<T>> try_get_leased() {
    const detail::LeaseTicket ticket = lease_one(detail::Deadline::now(), nullptr);
    if (ticket.word == 0) return std::nullopt;
    return make_lease(ticket);
  }
  // Appends to `out` up to `max` leases (at most 64 per lock hold), blocking for the first.
  std::size_t get_leased_many(std::vector<Lease<T>>& out, std::size_t max) {
    return lease_core(max, lease_appender(out), detail::Deadline::never(), "get_leased_many");
  }
  template <class Rep, class Period>
  std::size_t get_leased_many(std::vector<Lease<T>>& out, std::size_t max,
                              const std::chrono::duration<Rep, Period>& timeout) {
    return lease_core(max, lease_appender(out), detail::Deadline::after(timeout),
                      "get_leased_many");
  }
  std::size_t try_get_leased_many(std::vector<Lease<T>>& out, std::size_t max) {
    return lease_core(max, lease_appender(out), detail::Deadline::now(), nullptr);
  }

  // Zero-copy put: blocks until there is room for a message of `bytes` encoded bytes (however long
  // that takes), then calls writer(std::byte* data, std::size_t bytes) to write them in place in
  // the ring (see codec.hpp for what get() will expect; for a bitwise T, `bytes` must be
  // sizeof(T)). The message is put when writer returns; if writer throws, nothing is put and the
  // exception propagates. writer runs under the producers' lock: keep it short, and do not call
  // back into this queue from it.
  // Throws as put() does, and InvalidArgument for a size no T can have.
  template <class Fn>
  void put_with(std::size_t bytes, Fn&& writer) {
    if (is_bitwise_v<T> && bytes != sizeof(T)) {
      throw InvalidArgument("shmq: " + segment_->description() + ": put_with of " +
                            std::to_string(bytes) + " bytes, but " + segment_->type_name() +
                            " always takes " + std::to_string(sizeof(T)));
    }
    put_core(1,
             std::make_pair(
                 [bytes](std::size_t) { return bytes; },
                 [&writer](std::size_t, std::byte* dst, std::size_t size) { writer(dst, size); }),
             detail::Deadline::never(), "put_with");
  }

  // Zero-copy get: blocks for a message (however long that takes), then calls
  // reader(const std::byte* data, std::size_t size) on its encoded bytes (see codec.hpp) while they
  // are still in the ring, and returns what reader returns. The message is taken when reader
  // returns; if reader throws DecodeError it is dropped, and if it throws anything else it stays
  // queued (unlike the other gets, which drop whatever fails to decode: here the caller decides
  // what is the message's fault). reader runs under the consumers' lock: keep it short, and do not
  // call back into this queue from it. Throws as get() does.
  template <class Fn>
  auto get_with(Fn&& reader) -> std::invoke_result_t<Fn&, const std::byte*, std::size_t> {
    using Result = std::invoke_result_t<Fn&, const std::byte*, std::size_t>;
    if constexpr (std::is_void_v<Result>) {
      get_core(1, reader, detail::Deadline::never(), "get_with");
    } else {
      std::optional<Result> result;
      get_core(
          1, [&](const std::byte* at, std::size_t bytes) { result.emplace(reader(at, bytes)); },
          detail::Deadline::never(), "get_with");
      return std::move(*result);
    }
  }

  // ---- Snapshots: exact when taken, possibly stale by the time they are read (as in Python).
  // Lock-free: they never wait.
  std::size_t qsize() const noexcept { return segment_->ring().occupancy().messages; }
  bool empty() const noexcept { return qsize() == 0; }
  // True when maxsize is reached, or when not even the smallest T could fit in the free bytes.
  bool full() const noexcept {
    const auto& ring = segment_->ring();
    const auto now = ring.occupancy();
    if (ring.maxsize() != 0 && now.messages >= ring.maxsize()) return true;
    return ring.capacity() - now.bytes < detail::frame_bytes(smallest_message_bytes());
  }

  // Counters since creation and the state now; see QueueStats.
  QueueStats stats() const { return segment_->stats(); }

  // ---- Lifetime and identity.
  // This handle refuses later puts and gets (Closed); other handles, and other processes, are
  // unaffected. Python: "no more data will be put on this queue by the current process".
  void close() noexcept { closed_ = true; }
  bool closed() const noexcept { return closed_; }
  // Shuts the queue down for every process, as Python 3.13's Queue.shutdown: wakes every blocked
  // caller; later puts throw ShutDown; gets drain what is queued, then throw ShutDown (at once,
  // leaving the messages, if `immediate`). Irreversible. Never waits.
  void shutdown(bool immediate = false) noexcept { segment_->ring().shutdown(immediate); }
  bool is_shutdown() const noexcept {
    return segment_->ring().shutdown_state() != detail::ShutdownState::running;
  }
  // The queue's name without its leading '/' (a generated one for an unnamed queue).
  const std::string& name() const noexcept { return segment_->name(); }
  std::size_t maxsize() const noexcept { return segment_->ring().maxsize(); }
  std::size_t capacity_bytes() const noexcept { return segment_->ring().capacity(); }
  // The largest encoded message this queue can hold.
  std::size_t max_message_bytes() const noexcept { return segment_->ring().max_payload(); }

 protected:
  friend struct detail::QueueAccess;
  explicit Queue(std::shared_ptr<detail::Segment> segment) : segment_(std::move(segment)) {}
  // For the queues built on this one (JoinableQueue).
  detail::Segment& segment() const noexcept { return *segment_; }

 private:
  static const detail::TypeTag& type_tag() {
    static const detail::TypeTag tag = detail::make_type_tag(typeid(T).name());
    return tag;
  }
  static constexpr std::size_t smallest_message_bytes() { return is_bitwise_v<T> ? sizeof(T) : 0; }

  void check_open(const char* call) const {
    if (closed_) {
      throw Closed("shmq: " + segment_->description() + " was closed on this handle: " + call +
                   " refused");
    }
  }

  // Random access to a range's elements, for the batch calls.
  template <class Range>
  static auto element_of(const Range& values) {
    return [&values](std::size_t i) -> const T& {
      return std::begin(values)[static_cast<std::ptrdiff_t>(i)];
    };
  }
  // A single put or get of a bitwise T runs none but shmq's code under the queue's lock, which
  // then needs no place in the thread's robust list (detail::Tracking).
  static constexpr detail::Tracking kSingleTracking =
      is_bitwise_v<T> ? detail::Tracking::pending : detail::Tracking::listed;

  static auto appender(std::vector<T>& out) {
    return [&out](const std::byte* at, std::size_t bytes) {
      out.push_back(decode_message(at, bytes));
    };
  }

  // The one decoding of every get form but get_with. A message that codec<T> cannot turn into a T
  // will fail the same way for every consumer, so whatever decode throws becomes the DecodeError
  // that makes the ring drop it: any other exception would leave it at the head, failing every
  // later get (a handle naming a removed queue throws NotFound; a hostile length, bad_alloc).
  // Only decoding is covered: `out` running out of memory in appender leaves the message queued.
  // decode() decodes, returning what it returns. Always inlined, so that its try block costs
  // nothing on the hot path (out of line, GCC 12 made it 14 instructions a get: 3% of a put+get
  // pair).
  template <class Decode>
  __attribute__((always_inline)) static decltype(auto) decoding(Decode&& decode) {
    try {
      return decode();
    } catch (const DecodeError&) {
      throw;
#if defined(__GLIBCXX__)
    } catch (const abi::__forced_unwind&) {
      throw;  // thread cancellation must go on unwinding
#endif
    } catch (const std::exception& e) {
      throw DecodeError(detail::current_exception_type_name() + ": " + e.what());
    } catch (...) {
      throw DecodeError("an exception of type " + detail::current_exception_type_name());
    }
  }
  __attribute__((always_inline)) static T decode_message(const std::byte* at, std::size_t bytes) {
    return decoding([&] { return detail::decode_exactly<T>(at, bytes); });
  }

  std::size_t put_one(const T& value, const detail::Deadline& deadline, const char* call) {
    return put_core(1, encoder([&value](std::size_t) -> const T& { return value; }), deadline, call,
                    kSingleTracking);
  }
  std::optional<T> get_one(const detail::Deadline& deadline, const char* call) {
    std::optional<T> value;
    get_core(
        1,
        [&](const std::byte* at, std::size_t bytes) { value.emplace(decode_message(at, bytes)); },
        deadline, call, kSingleTracking);
    return value;
  }
  // Whether a message was got into `out` (the try_ form's answer).
  bool get_into(T& out, const detail::Deadline& deadline, const char* call) {
    return get_core(
               1,
               [&](const std::byte* at, std::size_t bytes) {
                 decoding([&] { detail::decode_exactly_into<T>(at, bytes, out); });
               },
               deadline, call, kSingleTracking) == 1;
  }

  // How put_core gets at(i)'s size and bytes: through codec<T>. at is a small closure over the
  // caller's values, copied into both.
  // A bitwise T is its bytes (codec.hpp): sizeof(T) of them, copied as they are.
  template <class At>
  static auto encoder(At at) {
    return std::make_pair(
        [at](std::size_t i) { return codec<T>::size(at(i)); },
        [at](std::size_t i, std::byte* dst, std::size_t bytes) {
          if constexpr (is_bitwise_v<T>) {
            std::memcpy(dst, &at(i), sizeof(T));
          } else {
            Writer out(dst, bytes);
            codec<T>::encode(at(i), out);
            if (out.remaining() != 0) {
              throw Error("shmq::codec: encode() wrote fewer bytes than size() announced");
            }
          }
        });
  }

  // The one core of every put: n messages, where size_of(i) gives the i-th one's encoded size and
  // fill(i, dst, size) writes its bytes straight into the ring. `call` names the API call for
  // errors, or is null for the try_ forms, which report "full" by returning how many messages went
  // in rather than by throwing.
  // `tracking`: Tracking::pending only if message's functions take and release no robust lock.
  template <class SizeOf, class Fill>
  std::size_t put_core(std::size_t n, const std::pair<SizeOf, Fill>& message,
                       const detail::Deadline& deadline, const char* call,
                       detail::Tracking tracking = detail::Tracking::listed) {
    check_open(call != nullptr ? call : "try_put");
    const auto progress = segment_->ring().put_many(
        n,
        [&](std::size_t i) {
          const std::size_t bytes = message.first(i);
          segment_->check_message_size(bytes);
          return static_cast<std::uint32_t>(bytes);
        },
        [&](std::size_t i, std::byte* dst, std::uint32_t bytes) {
          message.second(i, dst, std::size_t{bytes});
        },
        deadline, nullptr, tracking);
    if (progress.outcome == detail::Outcome::done ||
        (call == nullptr && detail::gave_up(progress.outcome))) {
      return progress.count;
    }
    segment_->throw_put_failure(progress.outcome, deadline, call != nullptr ? call : "try_put");
  }

  // The one core of every get: passes up to `max` messages' bytes to take(data, size); as put_core.
  template <class Take>
  std::size_t get_core(std::size_t max, Take&& take, const detail::Deadline& deadline,
                       const char* call, detail::Tracking tracking = detail::Tracking::listed) {
    check_open(call != nullptr ? call : "try_get");
    detail::Progress progress;
    try {
      progress = segment_->ring().get_many(
          max, [&](const std::byte* at, std::uint32_t bytes) { take(at, std::size_t{bytes}); },
          deadline, nullptr, tracking);
    } catch (const DecodeError& e) {
      throw_dropped(e);
    }
    if (progress.outcome == detail::Outcome::done ||
        (call == nullptr && detail::gave_up(progress.outcome))) {
      return progress.count;
    }
    segment_->throw_get_failure(progress.outcome, deadline, call != nullptr ? call : "try_get");
  }
  [[noreturn]] void throw_dropped(const DecodeError& e) const {
    throw DecodeError("shmq: " + segment_->description() + ": a message does not decode as " +
                      segment_->type_name() + " and was dropped: " + e.what());
  }

  // The ticket of one lease (nothing can throw between the ring handing it out and make_lease
  // taking it); for the try_ form, a word of 0 if there was none (a taken slot's word never is:
  // its kind is held).
  detail::LeaseTicket lease_one(const detail::Deadline& deadline, const char* call) {
    detail::LeaseTicket got{0, 0, 0};
    lease_core(
        1, [&](const detail::LeaseTicket& ticket) { got = ticket; }, deadline, call);
    return got;
  }
  auto lease_appender(std::vector<Lease<T>>& out) {
    // A lease that push_back fails to keep is nacked by its destructor.
    return [this, &out](const detail::LeaseTicket& ticket) { out.push_back(make_lease(ticket)); };
  }
  // The Lease<T> of `ticket`, its value decoded in place from the slot. A message that does not
  // decode is acked (dropped) and DecodeError thrown; any other exception nacks it. Inlined, the
  // decoding too: out of line they cost a sixth of a small message's leased get.
  __attribute__((always_inline)) Lease<T> make_lease(const detail::LeaseTicket& ticket) {
    detail::LeaseTable& leases = *segment_->leases();
    const std::size_t bytes =
        std::min(leases.slot(ticket.slot).bytes.load(std::memory_order_relaxed), leases.payload());
    try {
      return Lease<T>(
          detail::LeaseKey{}, segment_, ticket, [&]() __attribute__((always_inline)) {
            return decode_message(leases.bytes(ticket.slot), bytes);
          });
    } catch (const DecodeError& e) {
      leases.ack(ticket);
      throw_dropped(e);
    } catch (...) {
      leases.nack(ticket);
      throw;
    }
  }

  // The one core of every leased get: passes up to `max` lease tickets to keep(ticket), which
  // makes a Lease<T> of each (make_lease); as get_core. If keep throws, the leases after it in the
  // batch are nacked (the ring does that).
  template <class Keep>
  std::size_t lease_core(std::size_t max, Keep&& keep, const detail::Deadline& deadline,
                         const char* call) {
    check_open(call != nullptr ? call : "try_get_leased");
    if (segment_->leases() == nullptr) {
      throw InvalidArgument("shmq: " + segment_->description() +
                            " was made with max_leases 0: it has no leased gets");
    }
    const auto progress = segment_->ring().get_leased(max, keep, deadline);
    if (progress.outcome == detail::Outcome::done ||
        (call == nullptr && detail::gave_up(progress.outcome))) {
      return progress.count;
    }
    segment_->throw_get_failure(progress.outcome, deadline,
                                call != nullptr ? call : "try_get_leased");
  }

  std::shared_ptr<detail::Segment> segment_;
  bool closed_ = false;
};

namespace detail {
// Every queue handle type travels between processes by name (as a Pool task's argument, say):
// decoding opens the queue as Handle::open does, so it must still exist. A get drops a message
// naming a queue that does not (DecodeError, see Queue).
template <class Handle>
struct queue_handle_codec {
  static std::size_t size(const Handle& q) { return codec<std::string>::size(q.name()); }
  static void encode(const Handle& q, Writer& out) { codec<std::string>::encode(q.name(), out); }
  static Handle decode(Reader& in) { return Handle::open(codec<std::string>::decode(in)); }
};
}  // namespace detail

template <class T>
struct codec<Queue<T>> : detail::queue_handle_codec<Queue<T>> {};

}  // namespace shmq
