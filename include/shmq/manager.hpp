// shmq::Manager: the port of Python's multiprocessing.Manager() for its queues.
#pragma once

#include <string>

#include "shmq/detail/spawn.hpp"
#include "shmq/joinable_queue.hpp"
#include "shmq/queue.hpp"

namespace shmq {

// Makes named queues that it owns: any process can open them by name, Pool workers included (a
// handle passed to a task travels by name), and all are removed when the Manager goes away. A
// small guardian process also removes them if this process dies without destroying the Manager
// (a crash, SIGKILL), so they never outlive the program that made them. The guardian follows the
// process, not the thread that made the Manager (which may end first), and is out of reach of the
// signals a terminal sends to the program's process group (its own group; SIGINT, SIGQUIT,
// SIGTSTP, SIGHUP and SIGTERM ignored): only the end of this process, or ~Manager, ends it.
//
// In shmq every queue handle already reaches Pool workers, so a Manager is not needed for that (it
// is in Python); what it adds is a named lifetime tied to one object and cleanup after a crash.
class Manager {
 public:
  Manager();
  Manager(const Manager&) = delete;
  Manager& operator=(const Manager&) = delete;
  // Removes every queue made by this Manager (itself, whether or not the guardian still lives),
  // then ends the guardian; handles already open keep working.
  ~Manager();

  template <class T>
  shmq::Queue<T> Queue(const QueueOptions& options = {}) {
    return shmq::Queue<T>::create(next_name(), options);
  }
  template <class T>
  shmq::JoinableQueue<T> JoinableQueue(const QueueOptions& options = {}) {
    return shmq::JoinableQueue<T>::create(next_name(), options);
  }

 private:
  std::string next_name();

  std::string prefix_;  // every name this Manager makes starts with it
  unsigned made_ = 0;
  detail::Child guardian_;
};

}  // namespace shmq
