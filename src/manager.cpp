#include "shmq/manager.hpp"

#include <poll.h>
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

// Runs in the guardian: waits for the owning process to end (its pidfd turns readable when its last
// thread ends), then removes the Manager's queues. ~Manager ends the guardian with SIGKILL instead.
int guard(const std::string& prefix, int owner) {
  pollfd ended{owner, POLLIN, 0};
  while (poll(&ended, 1, -1) != 1) {
    // EINTR: look again.
  }
  detail::remove_segments_with_prefix(prefix);
  return 0;
}

// The guardian outlives a Ctrl-C, Ctrl-\, Ctrl-Z or hangup that the program itself survives, and a
// SIGTERM (a shutdown that signals every process): were it to die of one while the program lives,
// a later crash of the program would leave the queues behind. In a group of its own it is not sent
// the terminal's signals; ignoring them also covers one sent to it by pid. It ends only with the
// program, or by ~Manager's SIGKILL.
detail::SpawnOptions guardian_options() {
  detail::SpawnOptions options;
  options.own_process_group = true;
  for (const int sig : detail::kTerminalSignals)
    options.dispositions.push_back(detail::Disposition::ignore(sig));
  options.dispositions.push_back(detail::Disposition::ignore(SIGTERM));
  return options;
}

}  // namespace

Manager::Manager() : prefix_(unique_prefix()) {
  const std::string what = "the guardian of shmq::Manager " + prefix_;
  const int owner = detail::open_own_pidfd(what);
  try {
    guardian_ = detail::Child::spawn(what, guardian_options(),
                                     [prefix = prefix_, owner] { return guard(prefix, owner); });
  } catch (...) {
    close(owner);
    throw;
  }
  close(owner);
}

// The queues go first, by this process: the guardian may have been killed (it is then reaped
// here). Then the guardian, which has nothing left to do, is killed and reaped by guardian_.
Manager::~Manager() {
  detail::remove_segments_with_prefix(prefix_);
}

std::string Manager::next_name() {
  return prefix_ + std::to_string(++made_);
}

}  // namespace shmq
