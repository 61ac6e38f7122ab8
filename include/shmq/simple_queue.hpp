// shmq::SimpleQueue<T>: Python's multiprocessing.SimpleQueue.
#pragma once

#include <cstddef>

#include "shmq/queue.hpp"

namespace shmq {

// The reduced interface of Python's SimpleQueue over a Queue<T>: put, get, empty, close; copies
// share the queue, and a forked child uses an inherited handle as it is.
template <class T>
class SimpleQueue {
 public:
  SimpleQueue() = default;
  explicit SimpleQueue(const QueueOptions& options) : queue_(options) {}

  void put(const T& value) { queue_.put(value); }
  T get() { return queue_.get(); }
  bool empty() const noexcept { return queue_.empty(); }
  void close() noexcept { queue_.close(); }

 private:
  Queue<T> queue_;
};

}  // namespace shmq
