// shmq::JoinableQueue<T>: Python's multiprocessing.JoinableQueue.
#pragma once

#include <chrono>
#include <string_view>

#include "shmq/queue.hpp"

namespace shmq {

// A Queue<T> that also counts items put and not yet marked task_done(), across every process that
// uses it through a JoinableQueue handle; join() waits for that count to reach zero. The count
// lives in the queue's header: every handle to the segment shares it (plain Queue handles do not
// change it). A producer killed between counting an item and putting it leaves the count one too
// high, as in Python.
template <class T>
class JoinableQueue : public Queue<T> {
 public:
  using Queue<T>::Queue;
  static JoinableQueue create(std::string_view name, const QueueOptions& options = {}) {
    return JoinableQueue(Queue<T>::create(name, options));
  }
  static JoinableQueue open(std::string_view name) { return JoinableQueue(Queue<T>::open(name)); }
  static JoinableQueue open_or_create(std::string_view name, const QueueOptions& options = {}) {
    return JoinableQueue(Queue<T>::open_or_create(name, options));
  }

  // The puts of Queue<T>, each counting the item as unfinished.
  void put(const T& value) {
    counted([&] { return Queue<T>::put(value), true; });
  }
  template <class Rep, class Period>
  void put(const T& value, const std::chrono::duration<Rep, Period>& timeout) {
    counted([&] { return Queue<T>::put(value, timeout), true; });
  }
  void put_nowait(const T& value) {
    counted([&] { return Queue<T>::put_nowait(value), true; });
  }
  bool try_put(const T& value) {
    return counted([&] { return Queue<T>::try_put(value); });
  }

  // Marks one item got from the queue as processed. Throws Error if called more times than items
  // were put (Python's ValueError).
  void task_done() {
    if (!this->segment().ring().task_done()) {
      throw Error("shmq: queue '" + this->name() + "': task_done() called more times than items were put");
    }
  }
  // Blocks until every item put has been marked task_done().
  void join() { this->segment().ring().join_tasks(); }
  // Items put and not yet marked done (a snapshot).
  std::int64_t unfinished_tasks() const noexcept { return this->segment().ring().unfinished_tasks(); }

 private:
  explicit JoinableQueue(Queue<T> q) : Queue<T>(std::move(q)) {}

  // Counts the item before putting it, so that a consumer's task_done() never sees the count
  // before the item's increment; takes the count back if put() throws or reports no put.
  template <class Put>
  bool counted(Put&& put) {
    auto& ring = this->segment().ring();
    ring.add_unfinished_tasks(1);
    bool done = false;
    try {
      done = put();
    } catch (...) {
      ring.add_unfinished_tasks(-1);
      throw;
    }
    if (!done) ring.add_unfinished_tasks(-1);
    return done;
  }
};

// Travels by name, as Queue<T> does.
template <class T>
struct codec<JoinableQueue<T>> {
  static std::size_t size(const JoinableQueue<T>& q) { return codec<std::string>::size(q.name()); }
  static void encode(const JoinableQueue<T>& q, Writer& out) { codec<std::string>::encode(q.name(), out); }
  static JoinableQueue<T> decode(Reader& in) {
    return JoinableQueue<T>::open(codec<std::string>::decode(in));
  }
};

}  // namespace shmq
