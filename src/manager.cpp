#include "shmq/manager.hpp"

#include <signal.h>
#include <unistd.h>

#include <atomic>

#include "shmq/detail/segment.hpp"

namespace shmq {

namespace {

std::string unique_prefix() {
  static std::atomic<unsigned> managers{0};
  return "mgr-" + std::to_string(getpid()) + "-" + std::to_string(managers.fetch_add(1)) + "-";
}

// Runs in the guardian: waits for SIGTERM (from ~Manager, or from the kernel when the parent
// dies), then removes the Manager's queues. SIGTERM is blocked from before the fork (see
// Manager::Manager), so it cannot arrive before sigwait and end the guardian without cleaning up.
void guard(const std::string& prefix) {
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  int sig = 0;
  sigwait(&term, &sig);
  detail::remove_segments_with_prefix(prefix);
}

}  // namespace

Manager::Manager()
    : prefix_(unique_prefix()),
      guardian_(ProcessOptions{"ManagerGuardian", /*daemon=*/true},
                [prefix = prefix_] { guard(prefix); }) {
  sigset_t term, before;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &term, &before);  // the guardian inherits this mask
  try {
    guardian_.start();
  } catch (...) {
    pthread_sigmask(SIG_SETMASK, &before, nullptr);
    throw;
  }
  pthread_sigmask(SIG_SETMASK, &before, nullptr);
}

// The guardian's destructor sends SIGTERM and joins: the guardian removes the queues and exits.
Manager::~Manager() = default;

std::string Manager::next_name() { return prefix_ + std::to_string(++made_); }

}  // namespace shmq
