// shmq::JoinableQueue<T>: Python's multiprocessing.JoinableQueue.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "shmq/queue.hpp"

namespace shmq {

// A Queue<T> that also counts items put and not yet marked task_done(), across every process that
// uses it; join() waits for that count to reach zero. The count lives in the queue's header.
//
// What counts: every message put into the queue once it is joinable, through any handle and by
// every put form (put, the timed and _nowait forms, try_put, put_many, try_put_many, put_with),
// exactly as many as went in: a put_many that throws midway, or a try_put_many that puts some,
// counts the ones it put. A plain Queue<T> handle on the same queue counts too (a JoinableQueue
// passed where a Queue<T> is taken, a Queue<T>::open of its name): as in Python, the queue is
// joinable, not the handle. A queue made by a JoinableQueue is joinable from its creation; a
// plain queue becomes joinable when first opened as a JoinableQueue, and counts the puts from
// then on (the messages already queued are not tasks).
//
// The count is not kept on the put path: it is the count of messages ever put, which the tail word
// commits with the message in one store, minus the task_done() calls. So a producer killed at any
// instruction of a put leaves the count exact: the message it was writing is lost, uncounted, or
// was published, counted. The count is exact while fewer than 2^32 tasks are unfinished at once.
template <class T>
class JoinableQueue : public Queue<T> {
 public:
  // As Queue<T>'s constructors.
  JoinableQueue() : JoinableQueue(Queue<T>()) {}
  explicit JoinableQueue(std::size_t maxsize) : JoinableQueue(Queue<T>(maxsize)) {}
  explicit JoinableQueue(const QueueOptions& options) : JoinableQueue(Queue<T>(options)) {}

  static JoinableQueue create(std::string_view name, const QueueOptions& options = {}) {
    return JoinableQueue(Queue<T>::create(name, options));
  }
  static JoinableQueue open(std::string_view name) { return JoinableQueue(Queue<T>::open(name)); }
  static JoinableQueue open_or_create(std::string_view name, const QueueOptions& options = {}) {
    return JoinableQueue(Queue<T>::open_or_create(name, options));
  }

  // Every put form is Queue<T>'s, and counts what it puts (see above); they wait as Queue<T>'s do.

  // Marks one item got from the queue as processed. Throws Error if called more times than items
  // were put (Python's ValueError). Never waits.
  void task_done() {
    if (!this->segment().ring().task_done()) {
      throw Error("shmq: " + this->segment().description() +
                  ": task_done() called more times than items were put");
    }
  }
  // Blocks, however long it takes, until every item put has been marked task_done(). shutdown()
  // wakes it: after shutdown(true) it throws ShutDown if items are unfinished (those still queued
  // will never be got; Python's shutdown(immediate=True) discards them instead, but shmq leaves
  // them queued and cannot tell which were counted); after shutdown() it goes on waiting, since
  // consumers still get every queued item, as Python's join() does.
  void join() {
    if (!this->segment().ring().join_tasks()) {
      throw ShutDown("shmq: " + this->segment().description() + " was shut down immediately with " +
                     std::to_string(unfinished_tasks()) +
                     " tasks unfinished: join() refused (queued items will never be got)");
    }
  }
  // Items put and not yet marked done (a snapshot; never waits).
  std::int64_t unfinished_tasks() const noexcept {
    return std::int64_t{this->segment().ring().unfinished_tasks()};
  }

 private:
  explicit JoinableQueue(Queue<T> q) : Queue<T>(std::move(q)) {
    this->segment().ring().make_joinable();
  }
};

// Travels by name, as Queue<T> does (so does a Queue<T> copy of it; either way its puts count).
template <class T>
struct codec<JoinableQueue<T>> : detail::queue_handle_codec<JoinableQueue<T>> {};

}  // namespace shmq
