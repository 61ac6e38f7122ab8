// shmq::Pool, shmq::AsyncResult and shmq::IMapIterator: Python's multiprocessing.Pool, by fork().
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "shmq/codec.hpp"
#include "shmq/detail/deadline.hpp"
#include "shmq/detail/pool_results.hpp"
#include "shmq/detail/pool_wire.hpp"
#include "shmq/errors.hpp"

namespace shmq {

struct PoolOptions {
  // Worker processes; 0: as many as this process may run on CPUs.
  std::size_t processes = 0;
  // Run once in each worker as it starts (a copy made when the pool starts, so it may capture;
  // Pool's constructor also takes an initializer with initargs, as Python's does).
  std::function<void()> initializer{};
  // A worker is replaced after this many tasks; 0: never.
  std::size_t maxtasksperchild = 0;
  // Ring bytes of the task queue and of the result queue. Arguments, results and chunks of any
  // size travel: those that do not fit go out of band, in memfds. 1 MiB, not more: each process
  // faults in every page of a ring on its first pass round it, and a small ring stays in cache
  // (an imap of 1M ints took ~13.5 ms in a new pool, ~8 ms after, against ~17 and ~11 with 4 MiB
  // rings); a payload too large for it goes faster in a reused memfd than through a larger ring.
  std::size_t queue_bytes = std::size_t{1} << 20;
  // The memfds of out-of-band payloads are kept for reuse (a warm one costs no page faults), at
  // most two per worker and at most this many bytes in all; 0: none kept. Freed once the pool is
  // joined or terminated.
  std::size_t payload_cache_bytes = std::size_t{256} << 20;
};

namespace detail {
template <class F>
struct OnResult {
  F f;
};
template <class F>
struct OnError {
  F f;
};
template <class T>
inline constexpr bool is_callback_v = false;
template <class F>
inline constexpr bool is_callback_v<OnResult<F>> = true;
template <class F>
inline constexpr bool is_callback_v<OnError<F>> = true;
}  // namespace detail

// Python's callback= for apply_async, map_async and starmap_async: called with the result (no
// argument for a void task) once it has arrived. Passed after the task's arguments (after the
// chunksize for the map forms). See Pool's comment for where callbacks run.
template <class F>
detail::OnResult<F> callback(F f) {
  return {std::move(f)};
}
// Python's error_callback=: called with the exception (a RemoteError or a WorkerLost, as a
// `const shmq::Error&`) when the task raised or was lost.
template <class F>
detail::OnError<F> error_callback(F f) {
  return {std::move(f)};
}

// The result of apply_async / map_async / starmap_async. Movable; one owner. Thread-safe with
// respect to the pool (any thread may wait), not to itself.
template <class R>
class AsyncResult {
 public:
  // Blocks until the result arrives (and its callback, if any, has run); returns it, or throws
  // RemoteError (the task, or an item of a map, threw) or WorkerLost (its worker died, or the
  // pool ended first). May be called again.
  R get() {
    pending_.wait(detail::Deadline::never());
    return assemble_(pending_.results());
  }
  // As get(), for at most `timeout`; throws TimeoutError if the result has not arrived.
  template <class Rep, class Period>
  R get(const std::chrono::duration<Rep, Period>& timeout) {
    if (!pending_.wait(detail::Deadline::after(timeout))) {
      throw TimeoutError("shmq::AsyncResult: no result within the timeout");
    }
    return assemble_(pending_.results());
  }
  void wait() { pending_.wait(detail::Deadline::never()); }
  template <class Rep, class Period>
  bool wait(const std::chrono::duration<Rep, Period>& timeout) {
    return pending_.wait(detail::Deadline::after(timeout));
  }
  // Whether the result has arrived (collects what has arrived; never blocks on the pool).
  bool ready() { return pending_.wait(detail::Deadline::now()); }
  // Whether the task returned normally (every item, for a map); throws Error if not ready(), as
  // Python raises ValueError.
  bool successful() {
    if (!ready()) throw Error("shmq::AsyncResult: successful() called before the result is ready");
    try {
      assemble_(pending_.results());
      return true;
    } catch (const Error&) {
      return false;
    }
  }

 private:
  friend class Pool;
  using Assemble = R (*)(const std::vector<detail::TaskResult>&);
  AsyncResult(detail::PendingTasks pending, Assemble assemble)
      : pending_(std::move(pending)), assemble_(assemble) {}

  detail::PendingTasks pending_;
  Assemble assemble_;
};

// The results of imap / imap_unordered, as Python's IMapIterator: an input range (range-for) and
// a timed next(). Each item's outcome comes once: its result, or RemoteError (the item threw) or
// WorkerLost (its worker died; every item of that chunk) thrown at its position, after which
// iteration goes on with the next item. A range-for stops at such a throw; a later range-for or
// next() resumes after it. The input is read lazily, as workers take chunks; if its iterator
// throws, that exception comes once every item before it has. Movable; one owner; not
// thread-safe. Destroying it early drops the chunks in flight (their tasks still run).
template <class R>
class IMapIterator {
 public:
  // The next result; nullopt at the end (Python's StopIteration). Blocks until it arrives.
  std::optional<R> next() { return next_until(detail::Deadline::never()); }
  // As next(), for at most `timeout`; throws TimeoutError if no result came (the iteration stays
  // where it was: call again to wait on).
  template <class Rep, class Period>
  std::optional<R> next(const std::chrono::duration<Rep, Period>& timeout) {
    return next_until(detail::Deadline::after(timeout));
  }

  struct sentinel {};
  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = R;
    using difference_type = std::ptrdiff_t;
    using pointer = R*;
    using reference = R&;

    explicit iterator(IMapIterator* owner) : owner_(owner) {}
    // Waits for the next outcome (never throws: a failure is thrown by operator*).
    bool operator!=(sentinel) const { return owner_->fetch(); }
    bool operator==(sentinel s) const { return !(*this != s); }
    // The result; throws the item's RemoteError or WorkerLost.
    R& operator*() const { return owner_->current(); }
    iterator& operator++() {
      owner_->advance();
      return *this;
    }

   private:
    IMapIterator* owner_;
  };
  iterator begin() { return iterator(this); }
  sentinel end() { return {}; }

 private:
  friend class Pool;
  explicit IMapIterator(std::unique_ptr<detail::IMapCore> core) : core_(std::move(core)) {}

  std::optional<R> next_until(const detail::Deadline& deadline) {
    if (!to_next_item(deadline)) return std::nullopt;
    return std::move(*value_++);
  }

  // Moves to the next item, whose result is then *value_; false at the end. Throws the item's
  // failure. (Not an optional<R> returned: a range-for over a million ints would pay a store-
  // forwarding stall on each.)
  bool to_next_item(const detail::Deadline& deadline) {
    while (position_ == items_) {
      auto chunk = core_->next(deadline);
      if (!chunk) return false;
      unpack(chunk->first, chunk->second);
    }
    const std::size_t at = position_++;
    if (lost_) std::rethrow_exception(lost_);
    if (failure_ != failures_.end() && std::get<0>(*failure_) == at) {
      const auto& [index, type, what] = *failure_++;
      throw RemoteError(type, what);
    }
    if (value_ == values_.end()) {
      throw DecodeError("shmq::IMapIterator: a chunk came back with fewer results than items");
    }
    return true;
  }

  // The chunk's outcomes become the ones to_next_item gives, item by item.
  void unpack(const detail::TaskResult& chunk, std::size_t items) {
    position_ = 0;
    items_ = items;
    lost_ = nullptr;
    values_.clear();
    failures_.clear();
    if (chunk.outcome == detail::TaskOutcome::returned) {
      std::tie(values_, failures_) = chunk.decode<detail::ChunkResults<R>>();
    } else {
      try {
        chunk.throw_failure();
      } catch (...) {
        lost_ = std::current_exception();  // every item of the chunk
      }
    }
    value_ = values_.begin();
    failure_ = failures_.begin();
  }

  bool fetch() {
    if (has_current_) return true;
    try {
      if (!to_next_item(detail::Deadline::never())) return false;
      current_.emplace(std::move(*value_++));
    } catch (...) {
      current_error_ = std::current_exception();
    }
    has_current_ = true;
    return true;
  }
  R& current() {
    fetch();
    if (current_error_) {
      has_current_ = false;
      std::rethrow_exception(std::exchange(current_error_, nullptr));
    }
    return *current_;
  }
  void advance() {
    if (!has_current_) fetch();  // ++ without *: that item is skipped
    has_current_ = false;
    current_error_ = nullptr;
    current_.reset();
  }

  std::unique_ptr<detail::IMapCore> core_;
  // The chunk being returned: its item count, the next item's index, and its outcomes.
  std::size_t items_ = 0;
  std::size_t position_ = 0;
  std::exception_ptr lost_;  // the chunk's WorkerLost (or RemoteError), for each of its items
  std::vector<R> values_;    // the results of the items that returned, in order
  std::vector<detail::ItemFailure> failures_;
  typename std::vector<R>::iterator value_ = values_.begin();
  std::vector<detail::ItemFailure>::iterator failure_ = failures_.begin();
  // The range-for's current item: fetched by operator!=, given out (or thrown) by operator*.
  bool has_current_ = false;
  std::optional<R> current_;
  std::exception_ptr current_error_;
};

// A pool of worker processes, forked when the pool is made.
//
// A task is a plain function or a lambda with no capture (its address is the same in the forked
// workers) and its arguments; anything else is a compile error that says so. Arguments and
// results travel through shmq::codec, so a Queue handle is a valid argument and reaches the same
// queue; they may be of any size (what does not fit the rings travels in a memfd, reused warm). A
// task that throws makes its result throw RemoteError; a worker that dies mid-task is replaced
// and its task's result throws WorkerLost — never a hang. Workers are named ForkPoolWorker-N
// (current_process()), numbered from 1 in each pool, replacements counting on.
//
// Threads: results are collected by whichever call waits for them; the pool starts no thread,
// except one for callbacks, started by the first submission that has a callback. Callbacks run
// there, one at a time, in the order their tasks completed, before the AsyncResult becomes
// ready; one that throws has its exception printed to stderr and the pool goes on. A callback may
// submit tasks and get() results of tasks without callbacks; get() of one whose callback has not
// run yet, or join(), from inside a callback throws Error (it would wait for itself). When the
// pool ends (terminate(), the destructor) the error_callback of every pending task runs with
// WorkerLost before the destructor returns. Thread-safe.
//
// The pool's processes follow the process that made the pool, not the thread: a pool made on a
// thread that then ends keeps working. They do not depend on the program's signal dispositions
// (an ignored SIGCHLD, a SIGCHLD handler that reaps children); workers run tasks with the program's
// dispositions and signal mask as they were when the pool was made. No call waits forever on a
// dead manager: each notices it within a second and throws PoolBroken or WorkerLost.
class Pool {
 public:
  Pool() : Pool(PoolOptions{}) {}
  explicit Pool(std::size_t processes) : Pool(PoolOptions{processes}) {}
  explicit Pool(PoolOptions options);
  // Python's Pool(processes, initializer, initargs): initializer(initargs...) runs in each worker
  // as it starts (the arguments are copied when the pool is made; any copyable type).
  template <class Init, class... InitArgs>
  Pool(PoolOptions options, Init initializer, InitArgs... initargs)
      : Pool(with_initializer(std::move(options), std::move(initializer),
                              std::make_tuple(std::move(initargs)...))) {}
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  // Terminates the workers, as leaving Python's `with Pool() as pool:` does; returns once every
  // pending callback has run.
  ~Pool();

  // Runs fn(args...) in a worker and blocks for its result.
  template <class Fn, class... Args>
  auto apply(Fn fn, const Args&... args) {
    return apply_async(fn, args...).get();
  }
  // As apply, returning at once; shmq::callback(f) and shmq::error_callback(f) may follow args.
  template <class Fn, class... Args>
  auto apply_async(Fn fn, const Args&... args) {
    if constexpr (!detail::is_task_v<Fn>) {
      detail::RejectTask<Fn>{};
    } else {
      constexpr std::size_t kCallbacks = trailing_callbacks<Args...>();
      const auto all = std::forward_as_tuple(args...);
      return call_async(static_cast<detail::task_pointer_t<Fn>>(fn), all,
                        std::make_index_sequence<sizeof...(Args) - kCallbacks>(),
                        std::make_index_sequence<kCallbacks>());
    }
  }

  // fn applied to each item, results in the order of the items. Items go to workers in chunks of
  // `chunksize` (0: about a quarter of the items per worker, as Python chooses). An item that
  // throws makes the result throw its RemoteError (the first such item's).
  template <class Fn, class Range>
  auto map(Fn fn, const Range& items, std::size_t chunksize = 0) {
    return map_async(fn, items, chunksize).get();
  }
  template <class Fn, class Range, class... Callbacks>
  auto map_async(Fn fn, const Range& items, std::size_t chunksize = 0, Callbacks... callbacks) {
    return chunked<false>(fn, items, chunksize, std::move(callbacks)...);
  }
  // fn(args...) for each tuple (or pair) of arguments.
  template <class Fn, class Range>
  auto starmap(Fn fn, const Range& tuples, std::size_t chunksize = 0) {
    return starmap_async(fn, tuples, chunksize).get();
  }
  template <class Fn, class Range, class... Callbacks>
  auto starmap_async(Fn fn, const Range& tuples, std::size_t chunksize = 0,
                     Callbacks... callbacks) {
    return chunked<true>(fn, tuples, chunksize, std::move(callbacks)...);
  }

  // Lazily, as Python's imap: results in the order of the items, as an IMapIterator. The input
  // is read `chunksize` items at a time as workers take them, with at most 4 chunks per worker in
  // flight; an lvalue range must outlive the iteration, an rvalue one is kept. Throws
  // InvalidArgument for a chunksize of 0 (Python's ValueError).
  template <class Fn, class Range>
  auto imap(Fn fn, Range&& items, std::size_t chunksize = 1) {
    return lazily(fn, std::forward<Range>(items), chunksize, true);
  }
  // As imap, results in the order they complete.
  template <class Fn, class Range>
  auto imap_unordered(Fn fn, Range&& items, std::size_t chunksize = 1) {
    return lazily(fn, std::forward<Range>(items), chunksize, false);
  }

  // No more tasks; the workers finish what was submitted, then exit.
  void close();
  // Waits for the workers to exit and for every callback to have run; call close() or
  // terminate() first (Error otherwise).
  void join();
  // Ends the workers now; results not yet arrived throw WorkerLost.
  void terminate();
  // The number of worker processes.
  std::size_t processes() const noexcept;

 private:
  template <class Init, class Tuple>
  static PoolOptions with_initializer(PoolOptions options, Init initializer, Tuple initargs) {
    options.initializer = [initializer = std::move(initializer), initargs = std::move(initargs)] {
      std::apply(initializer, initargs);
    };
    return options;
  }

  // How many of the last Args are callbacks (none may come before the task's arguments end).
  template <class... Args>
  static constexpr std::size_t trailing_callbacks() {
    constexpr bool flags[] = {false, detail::is_callback_v<Args>...};
    std::size_t n = 0;
    for (std::size_t i = sizeof...(Args); i > 0 && flags[i]; --i) ++n;
    return n;
  }

  // What the callbacks do with a job's outcomes; empty without callbacks.
  template <class R, class... Callbacks>
  static detail::Deliver deliver(R (*assemble)(const std::vector<detail::TaskResult>&),
                                 Callbacks... callbacks) {
    if constexpr (sizeof...(Callbacks) == 0) {
      return {};
    } else {
      return [assemble, callbacks...](const std::vector<detail::TaskResult>& results) mutable {
        std::optional<std::conditional_t<std::is_void_v<R>, bool, R>> value;
        try {
          if constexpr (std::is_void_v<R>) {
            assemble(results);
            value = true;
          } else {
            value = assemble(results);
          }
        } catch (const Error& e) {
          (on_error(callbacks, e), ...);
          return;
        }
        (on_result<R>(callbacks, *value), ...);
      };
    }
  }
  template <class R, class F, class V>
  static void on_result(detail::OnResult<F>& c, V& value) {
    if constexpr (std::is_void_v<R>) {
      c.f();
    } else {
      c.f(value);
    }
  }
  template <class R, class F, class V>
  static void on_result(detail::OnError<F>&, V&) {}
  template <class F>
  static void on_error(detail::OnError<F>& c, const Error& e) {
    c.f(e);
  }
  template <class F>
  static void on_error(detail::OnResult<F>&, const Error&) {}

  template <class R>
  static R assemble_one(const std::vector<detail::TaskResult>& results) {
    if constexpr (std::is_void_v<R>) {
      results.front().decode<std::tuple<>>();
    } else {
      return results.front().decode<R>();
    }
  }
  template <class R>
  static std::vector<R> assemble_chunks(const std::vector<detail::TaskResult>& results) {
    std::vector<R> all;
    for (const auto& chunk : results) {
      auto [values, failures] = chunk.decode<detail::ChunkResults<R>>();
      if (!failures.empty()) {
        throw RemoteError(std::move(std::get<1>(failures.front())), std::get<2>(failures.front()));
      }
      if (all.empty()) {
        all = std::move(values);
      } else {
        all.insert(all.end(), std::make_move_iterator(values.begin()),
                   std::make_move_iterator(values.end()));
      }
    }
    return all;
  }

  // A task's message, its arguments encoded (out of band if larger than the target's limit).
  template <class F, class Args>
  static detail::OutgoingTask task(detail::Runner runner, F f, const Args& args, std::size_t items,
                                   const detail::PayloadTarget& target) {
    detail::OutgoingTask out;
    auto payload = detail::encode_payload(args, target, "a task's arguments");
    out.message.runner = detail::address_of(runner);
    out.message.function = detail::address_of(f);
    out.message.args = std::move(payload.wire);
    out.args = std::move(payload.file);
    out.items = items;
    return out;
  }

  // An argument as the parameter's type: itself if it has that type, else converted.
  template <class P, class A>
  static decltype(auto) as_parameter(const A& a) {
    if constexpr (std::is_same_v<P, A>) {
      return (a);
    } else {
      return P(a);
    }
  }

  template <class F, class All, std::size_t... I, std::size_t... C>
  auto call_async(F f, const All& all, std::index_sequence<I...>, std::index_sequence<C...>) {
    using S = detail::signature<F>;
    using R = typename S::result;
    static_assert(std::tuple_size_v<typename S::args> == sizeof...(I),
                  "shmq::Pool::apply: the arguments do not match the task's parameters");
    using Params = typename S::args;
    // Encoded as a Params would be, without copying the arguments into one first.
    const detail::ArgumentPack<decltype(as_parameter<std::tuple_element_t<I, Params>>(
        std::get<I>(all)))...>
        packed{{as_parameter<std::tuple_element_t<I, Params>>(std::get<I>(all))...}};
    std::vector<detail::OutgoingTask> tasks;
    tasks.push_back(task(&detail::run_call<F>, f, packed, 1, payload_target()));
    constexpr std::size_t kArgs = sizeof...(I);
    return AsyncResult<R>(submit(tasks, deliver(&assemble_one<R>, std::get<kArgs + C>(all)...)),
                          &assemble_one<R>);
  }

  template <bool kStar, class F>
  using item_t = std::conditional_t<kStar, typename detail::signature<F>::args,
                                    std::tuple_element_t<0, typename detail::signature<F>::args>>;

  template <bool kStar, class Fn, class Range, class... Callbacks>
  auto chunked(Fn fn, const Range& items, std::size_t chunksize, Callbacks... callbacks) {
    if constexpr (!detail::is_task_v<Fn>) {
      detail::RejectTask<Fn>{};
    } else {
      using F = detail::task_pointer_t<Fn>;
      using R = typename detail::signature<F>::result;
      using Item = item_t<kStar, F>;
      static_assert(!std::is_void_v<R>, "shmq::Pool::map: the function must return a value");
      const F f = fn;
      std::vector<Item> all;
      for (const auto& item : items) all.emplace_back(item);
      if (chunksize == 0) chunksize = default_chunksize(all.size());
      std::vector<detail::OutgoingTask> tasks;
      std::vector<Item> chunk;
      const detail::PayloadTarget target = payload_target();
      for (std::size_t at = 0; at < all.size(); at += chunksize) {
        const std::size_t n = std::min(chunksize, all.size() - at);
        chunk.assign(std::make_move_iterator(all.begin() + static_cast<std::ptrdiff_t>(at)),
                     std::make_move_iterator(all.begin() + static_cast<std::ptrdiff_t>(at + n)));
        tasks.push_back(task(&detail::run_chunk<F, kStar>, f, chunk, n, target));
      }
      return AsyncResult<std::vector<R>>(
          submit(tasks, deliver(&assemble_chunks<R>, std::move(callbacks)...)),
          &assemble_chunks<R>);
    }
  }

  // The most items an imap chunk reserves room for before it reads them (a chunksize may be huge).
  static constexpr std::size_t kChunkReserve = 1 << 16;

  // The input of an imap: the range (kept if it was an rvalue) and where it has been read to.
  template <class Range>
  struct Source {
    explicit Source(Range&& r) : range(std::forward<Range>(r)) {}
    Range range;  // a reference for an lvalue range
    decltype(std::begin(range)) next = std::begin(range);
    decltype(std::end(range)) end = std::end(range);
    std::exception_ptr error;  // thrown while a chunk was being filled; given after that chunk
  };

  template <class Fn, class Range>
  auto lazily(Fn fn, Range&& items, std::size_t chunksize, bool ordered) {
    if constexpr (!detail::is_task_v<Fn>) {
      detail::RejectTask<Fn>{};
    } else {
      using F = detail::task_pointer_t<Fn>;
      using R = typename detail::signature<F>::result;
      using Item = item_t<false, F>;
      static_assert(!std::is_void_v<R>, "shmq::Pool::imap: the function must return a value");
      if (chunksize == 0)
        throw InvalidArgument("shmq::Pool::imap: chunksize must be 1 or more, not 0");
      const F f = fn;
      auto source = std::make_shared<Source<Range>>(std::forward<Range>(items));
      detail::IMapCore::Feed feed =
          [f, source, chunksize,
           target = payload_target()]() -> std::optional<detail::OutgoingTask> {
        if (source->error) std::rethrow_exception(std::exchange(source->error, nullptr));
        std::vector<Item> chunk;
        chunk.reserve(std::min<std::size_t>(chunksize, kChunkReserve));
        try {
          for (; chunk.size() < chunksize && source->next != source->end; ++source->next) {
            chunk.emplace_back(*source->next);
          }
        } catch (...) {
          if (chunk.empty()) throw;
          source->error = std::current_exception();
        }
        if (chunk.empty()) return std::nullopt;
        return task(&detail::run_chunk<F, false>, f, chunk, chunk.size(), target);
      };
      return IMapIterator<R>(start_imap(std::move(feed), ordered));
    }
  }

  detail::PendingTasks submit(std::vector<detail::OutgoingTask>& tasks, detail::Deliver deliver);
  std::unique_ptr<detail::IMapCore> start_imap(detail::IMapCore::Feed feed, bool ordered);
  std::size_t default_chunksize(std::size_t items) const noexcept;
  detail::PayloadTarget payload_target() const noexcept;

  std::shared_ptr<detail::PoolCore> core_;
};

}  // namespace shmq
