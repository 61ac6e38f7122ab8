// shmq error policy, stated once:
//  - set-up failures (create, open, map) and the blocking API throw a type derived from
//  shmq::Error,
//    whose message names the queue and the figure involved (and the errno text where there is one);
//  - the try_* calls never throw for "full", "empty" or "timed out": they return bool /
//    std::optional / a count (they still throw DecodeError, Closed, ShutDown, MessageTooLarge).
#pragma once

#include <stdexcept>
#include <string>

namespace shmq {

// Base of everything shmq throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A bad argument: an invalid queue name, option or call order, rejected before anything is touched.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// create() found the name taken.
class AlreadyExists : public Error {
 public:
  using Error::Error;
};

// open() found no queue of that name.
class NotFound : public Error {
 public:
  using Error::Error;
};

// The segment is not a shmq queue of this layout version and message type, or is corrupt.
class Incompatible : public Error {
 public:
  using Error::Error;
};

// A non-blocking or timed put found no room (Python's queue.Full).
class Full : public Error {
 public:
  using Error::Error;
};

// A non-blocking or timed get found no message (Python's queue.Empty).
class Empty : public Error {
 public:
  using Error::Error;
};

// This handle was close()d.
class Closed : public Error {
 public:
  using Error::Error;
};

// The queue was shut down (Python 3.13's queue.ShutDown).
class ShutDown : public Error {
 public:
  using Error::Error;
};

// A message larger than the queue can ever hold.
class MessageTooLarge : public Error {
 public:
  using Error::Error;
};

// Bytes that do not decode as the expected type; never read out of bounds.
class DecodeError : public Error {
 public:
  using Error::Error;
};

// A task run by a Pool worker threw: carries the exception's type name and what().
class RemoteError : public Error {
 public:
  RemoteError(std::string type_name, const std::string& what)
      : Error("task raised " + type_name + ": " + what), type_name_(std::move(type_name)) {}
  const std::string& type_name() const noexcept { return type_name_; }

 private:
  std::string type_name_;
};

// The Pool worker running a task died before finishing it.
class WorkerLost : public Error {
 public:
  using Error::Error;
};

// The pool's manager process has died (killed, or it could not fork a worker): no task will run
// or finish any more. Thrown by calls that would otherwise wait for it forever (submitting into a
// full task queue); the results of tasks pending then throw WorkerLost with the same reason. A
// WorkerLost, since the pool's workers are lost with their manager.
class PoolBroken : public WorkerLost {
 public:
  using WorkerLost::WorkerLost;
};

// Process::exitcode() of a child whose end was collected by someone else — the kernel, with
// SIGCHLD set to SIG_IGN, or a SIGCHLD handler that reaps children — after it was ended other than
// by returning from its function (a signal; exit() called in it): its exit code is unknown.
class ExitStatusLost : public Error {
 public:
  using Error::Error;
};

// AsyncResult::get(timeout) gave up before the result arrived.
class TimeoutError : public Error {
 public:
  using Error::Error;
};

// ---- Locks, semaphores and barriers (lock.hpp, semaphore.hpp, condition.hpp, barrier.hpp).

// A Lock, RLock, Semaphore or Condition used against its rules; the subclasses name the rule.
// Thrown itself for an RLock acquired more than 2^32 - 1 times, a Value's lock asked of a Value
// made without one.
class LockMisuse : public Error {
 public:
  using Error::Error;
};

// release() of a Lock or RLock that this thread does not hold (nobody holds it, or another thread
// or process does), or Condition wait/notify without holding its lock. Python: ValueError,
// RuntimeError, AssertionError by case.
class NotHeld : public LockMisuse {
 public:
  using LockMisuse::LockMisuse;
};

// A blocking acquire of a Lock by the thread that holds it: it would wait forever.
class SelfDeadlock : public LockMisuse {
 public:
  using LockMisuse::LockMisuse;
};

// A BoundedSemaphore released more times than acquired, or a Semaphore past its largest value
// (Python's ValueError).
class OverReleased : public LockMisuse {
 public:
  using LockMisuse::LockMisuse;
};

// A Barrier's wait() on a broken barrier: aborted, reset while waiting, timed out, its action
// threw, or a party died while others waited (Python's threading.BrokenBarrierError).
class BrokenBarrier : public Error {
 public:
  using Error::Error;
};

// ---- Pipe and Connection (connection.hpp).
// recv on a Connection whose other end is gone (closed by every holder, or its holders died),
// after everything sent was received (Python's EOFError).
class EOFError : public Error {
 public:
  using Error::Error;
};
// send on a Connection whose other end is gone (Python's BrokenPipeError).
class BrokenPipeError : public Error {
 public:
  using Error::Error;
};

// Leased gets (lease.hpp): a Lease's ack() or nack() came too late: the lease was held longer than
// the queue's lease_timeout (or its holder was taken for dead) and its message was delivered
// again; this holder no longer has it.
class LeaseExpired : public Error {
 public:
  using Error::Error;
};

}  // namespace shmq
