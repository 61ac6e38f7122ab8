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

  // Blocks while the queue is full, however long that takes; throws as Queue<T>::put.
  void put(const T& value) { queue_.put(value); }
  // Blocks while the queue is empty, however long that takes; throws as Queue<T>::get (a message
  // that cannot be decoded is dropped with DecodeError).
  T get() { return queue_.get(); }
  // A snapshot; never waits.
  bool empty() const noexcept { return queue_.empty(); }
  // This handle then refuses put and get (Closed). Never waits.
  void close() noexcept { queue_.close(); }

 private:
  Queue<T> queue_;
};

}  // namespace shmq
