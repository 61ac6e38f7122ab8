// shmq::Pool and shmq::AsyncResult: Python's multiprocessing.Pool, by fork().
#pragma once

#include <sys/types.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "shmq/codec.hpp"
#include "shmq/detail/deadline.hpp"
#include "shmq/errors.hpp"

namespace shmq {

struct PoolOptions {
  // Worker processes; 0: as many as this process may run on CPUs.
  std::size_t processes = 0;
  // Run once in each worker as it starts (a copy made when the pool starts, so it may capture).
  std::function<void()> initializer{};
  // A worker is replaced after this many tasks; 0: never.
  std::size_t maxtasksperchild = 0;
  // Ring bytes of the task queue and of the result queue: bounds one task's arguments and one
  // result (a map chunk's items or results travel as one message).
  std::size_t queue_bytes = std::size_t{4} << 20;
};

namespace detail {

// How a task travels: which runner to call in the worker, with which function, on which encoded
// arguments. Runner and function are code addresses, the same in every worker since workers are
// forks of the process that made the pool.
struct TaskMessage {
  std::uint64_t id = 0;
  std::uint64_t runner = 0;
  std::uint64_t function = 0;
  std::string args;
};

enum class TaskOutcome : std::uint8_t { returned = 0, raised = 1, lost = 2 };

// What comes back: the encoded result; or the exception's type name and what(); or why the
// worker was lost.
struct ResultMessage {
  std::uint64_t id = 0;
  TaskOutcome outcome = TaskOutcome::returned;
  std::string payload;  // the encoded result, or the exception's type name
  std::string what;     // what() of the exception, or why the worker was lost
};

// Runs a task in a worker: decodes the arguments, calls the function, encodes what it returns.
using Runner = std::string (*)(std::uint64_t function, Reader& args);

// A function pointer's parts; a captureless lambda converts to one (a capturing lambda cannot be
// sent: workers were forked before the capture existed).
template <class F>
struct signature;
template <class R, class... P>
struct signature<R (*)(P...)> {
  using result = R;
  using pointer = R (*)(P...);
  using args = std::tuple<std::decay_t<P>...>;
};
template <class R, class... P>
struct signature<R (*)(P...) noexcept> : signature<R (*)(P...)> {};

template <class Fn>
auto function_pointer(Fn fn) {
  if constexpr (std::is_pointer_v<Fn>) {
    return typename signature<Fn>::pointer{fn};
  } else {
    static_assert(std::is_convertible_v<Fn, decltype(+fn)>,
                  "shmq::Pool: a task must be a function pointer or a captureless lambda");
    return typename signature<decltype(+fn)>::pointer{+fn};
  }
}

template <class F>
std::uint64_t address_of(F f) {
  return reinterpret_cast<std::uint64_t>(reinterpret_cast<void*>(f));
}
template <class F>
F from_address(std::uint64_t address) {
  return reinterpret_cast<F>(reinterpret_cast<void*>(address));
}

// apply: one call.
template <class F>
std::string run_call(std::uint64_t function, Reader& in) {
  using S = signature<F>;
  auto args = codec<typename S::args>::decode(in);
  if constexpr (std::is_void_v<typename S::result>) {
    std::apply(from_address<F>(function), args);
    return {};
  } else {
    return encode_to_string(std::apply(from_address<F>(function), args));
  }
}

// map (one argument per item) and starmap (a tuple of arguments per item), a chunk at a time.
template <class F, bool kStar>
std::string run_chunk(std::uint64_t function, Reader& in) {
  using S = signature<F>;
  using Item =
      std::conditional_t<kStar, typename S::args, std::tuple_element_t<0, typename S::args>>;
  const auto items = codec<std::vector<Item>>::decode(in);
  std::vector<typename S::result> results;
  results.reserve(items.size());
  const F f = from_address<F>(function);
  for (const auto& item : items) {
    if constexpr (kStar) {
      results.push_back(std::apply(f, item));
    } else {
      results.push_back(f(item));
    }
  }
  return encode_to_string(results);
}

class PoolCore;  // src/pool.cpp: the queues, the manager process, and the results that arrived

}  // namespace detail

template <>
struct codec<detail::TaskMessage> {
  static std::size_t size(const detail::TaskMessage& t) { return 24 + encoded_size(t.args); }
  static void encode(const detail::TaskMessage& t, Writer& out) {
    out.write(&t.id, 8);
    out.write(&t.runner, 8);
    out.write(&t.function, 8);
    shmq::encode(t.args, out);
  }
  static detail::TaskMessage decode(Reader& in) {
    detail::TaskMessage t;
    in.read(&t.id, 8);
    in.read(&t.runner, 8);
    in.read(&t.function, 8);
    t.args = shmq::decode<std::string>(in);
    return t;
  }
};

template <>
struct codec<detail::ResultMessage> {
  static std::size_t size(const detail::ResultMessage& r) {
    return 9 + encoded_size(r.payload) + encoded_size(r.what);
  }
  static void encode(const detail::ResultMessage& r, Writer& out) {
    out.write(&r.id, 8);
    out.write(&r.outcome, 1);
    shmq::encode(r.payload, out);
    shmq::encode(r.what, out);
  }
  static detail::ResultMessage decode(Reader& in) {
    detail::ResultMessage r;
    in.read(&r.id, 8);
    in.read(&r.outcome, 1);
    if (static_cast<std::uint8_t>(r.outcome) > 2) throw DecodeError("shmq::Pool: bad task outcome");
    r.payload = shmq::decode<std::string>(in);
    r.what = shmq::decode<std::string>(in);
    return r;
  }
};

namespace detail {

// The non-template half of AsyncResult: waits for a set of task ids and holds their results.
class PendingTasks {
 public:
  PendingTasks(std::shared_ptr<PoolCore> core, std::vector<std::uint64_t> ids);
  PendingTasks(PendingTasks&&) noexcept = default;
  PendingTasks& operator=(PendingTasks&&) noexcept = default;
  ~PendingTasks();  // tells the pool to drop results nobody will collect

  bool wait(const Deadline& deadline);
  bool ready();
  // Requires ready(): throws RemoteError or WorkerLost for the first failed task, else returns
  // every task's encoded result in order.
  const std::vector<ResultMessage>& results() const;
  bool successful() const;

 private:
  std::shared_ptr<PoolCore> core_;
  std::vector<std::uint64_t> ids_;
  std::optional<std::vector<ResultMessage>> results_;
};

}  // namespace detail

// The result of a task submitted with apply_async / map_async / starmap_async. Movable; one owner.
template <class R>
class AsyncResult {
 public:
  // Blocks until the result arrives; returns it, or throws RemoteError (the task threw) or
  // WorkerLost (its worker died, or the pool was terminated first). May be called again.
  R get() {
    pending_.wait(detail::Deadline::never());
    return assemble();
  }
  // As get(), for at most `timeout`; throws TimeoutError if the result has not arrived.
  template <class Rep, class Period>
  R get(const std::chrono::duration<Rep, Period>& timeout) {
    if (!pending_.wait(detail::Deadline::after(timeout))) {
      throw TimeoutError("shmq::AsyncResult: no result within the timeout");
    }
    return assemble();
  }
  void wait() { pending_.wait(detail::Deadline::never()); }
  template <class Rep, class Period>
  bool wait(const std::chrono::duration<Rep, Period>& timeout) {
    return pending_.wait(detail::Deadline::after(timeout));
  }
  // Whether the result has arrived (never blocks).
  bool ready() { return pending_.ready(); }
  // Whether the task returned normally; throws Error if not ready(), as Python raises ValueError.
  bool successful() {
    if (!ready()) throw Error("shmq::AsyncResult: successful() called before the result is ready");
    return pending_.successful();
  }

 private:
  friend class Pool;
  using Assemble = R (*)(const std::vector<detail::ResultMessage>&);
  AsyncResult(detail::PendingTasks pending, Assemble assembler)
      : pending_(std::move(pending)), assemble_(assembler) {}
  R assemble() { return assemble_(pending_.results()); }

  detail::PendingTasks pending_;
  Assemble assemble_;
};

// A pool of worker processes, forked when the pool is made.
//
// A task is a function pointer or a captureless lambda (its address is the same in the forked
// workers) and its arguments; arguments and results travel through shmq::codec, so a Queue handle
// is a valid argument and reaches the same queue. A task that throws makes its result throw
// RemoteError; a worker that dies mid-task is replaced and its task's result throws WorkerLost —
// never a hang.
//
// The calling process runs no threads for the pool: a small manager process forks, watches and
// replaces the workers. Results are collected by whichever call waits for them. Thread-safe.
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
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  // Terminates the workers, as leaving Python's `with Pool() as pool:` does.
  ~Pool();

  // Runs fn(args...) in a worker and blocks for its result.
  template <class Fn, class... Args>
  auto apply(Fn fn, const Args&... args) {
    return apply_async(fn, args...).get();
  }
  template <class Fn, class... Args>
  auto apply_async(Fn fn, const Args&... args) {
    const auto f = detail::function_pointer(fn);
    using F = std::decay_t<decltype(f)>;
    using R = typename detail::signature<F>::result;
    const typename detail::signature<F>::args packed(args...);
    std::vector<detail::TaskMessage> task(1);
    task[0].runner = detail::address_of(&detail::run_call<F>);
    task[0].function = detail::address_of(f);
    task[0].args = detail::encode_to_string(packed);
    return AsyncResult<R>(submit(std::move(task)), &assemble_one<R>);
  }

  // fn applied to each item, results in the order of the items. Items go to workers in chunks of
  // `chunksize` (0: about a quarter of the items per worker, as Python chooses).
  template <class Fn, class Range>
  auto map(Fn fn, const Range& items, std::size_t chunksize = 0) {
    return map_async(fn, items, chunksize).get();
  }
  template <class Fn, class Range>
  auto map_async(Fn fn, const Range& items, std::size_t chunksize = 0) {
    return chunked<false>(fn, items, chunksize);
  }
  // fn(args...) for each tuple (or pair) of arguments.
  template <class Fn, class Range>
  auto starmap(Fn fn, const Range& tuples, std::size_t chunksize = 0) {
    return starmap_async(fn, tuples, chunksize).get();
  }
  template <class Fn, class Range>
  auto starmap_async(Fn fn, const Range& tuples, std::size_t chunksize = 0) {
    return chunked<true>(fn, tuples, chunksize);
  }

  // No more tasks; the workers finish what was submitted, then exit.
  void close();
  // Waits for the workers to exit; call close() or terminate() first (Error otherwise).
  void join();
  // Ends the workers now; results not yet arrived throw WorkerLost.
  void terminate();
  std::size_t processes() const noexcept;

 private:
  // Queues the tasks (the pool numbers them) and returns their pending results.
  detail::PendingTasks submit(std::vector<detail::TaskMessage> tasks);
  std::size_t default_chunksize(std::size_t items) const noexcept;

  template <class R>
  static R assemble_one(const std::vector<detail::ResultMessage>& results) {
    if constexpr (!std::is_void_v<R>) return detail::decode_from_string<R>(results.front().payload);
  }
  template <class R>
  static std::vector<R> assemble_chunks(const std::vector<detail::ResultMessage>& results) {
    std::vector<R> all;
    for (const auto& chunk : results) {
      auto part = detail::decode_from_string<std::vector<R>>(chunk.payload);
      all.insert(all.end(), std::make_move_iterator(part.begin()),
                 std::make_move_iterator(part.end()));
    }
    return all;
  }

  template <bool kStar, class Fn, class Range>
  auto chunked(Fn fn, const Range& items, std::size_t chunksize) {
    const auto f = detail::function_pointer(fn);
    using F = std::decay_t<decltype(f)>;
    using S = detail::signature<F>;
    using R = typename S::result;
    using Item =
        std::conditional_t<kStar, typename S::args, std::tuple_element_t<0, typename S::args>>;
    static_assert(!std::is_void_v<R>, "shmq::Pool::map: the function must return a value");
    std::vector<Item> all;
    for (const auto& item : items) all.emplace_back(item);
    if (chunksize == 0) chunksize = default_chunksize(all.size());
    std::vector<detail::TaskMessage> tasks;
    for (std::size_t at = 0; at < all.size(); at += chunksize) {
      const auto first = all.begin() + static_cast<std::ptrdiff_t>(at);
      const std::vector<Item> chunk(
          first, first + static_cast<std::ptrdiff_t>(std::min(chunksize, all.size() - at)));
      detail::TaskMessage task;
      task.runner = detail::address_of(&detail::run_chunk<F, kStar>);
      task.function = detail::address_of(f);
      task.args = detail::encode_to_string(chunk);
      tasks.push_back(std::move(task));
    }
    return AsyncResult<std::vector<R>>(submit(std::move(tasks)), &assemble_chunks<R>);
  }

  std::shared_ptr<detail::PoolCore> core_;
};

}  // namespace shmq
