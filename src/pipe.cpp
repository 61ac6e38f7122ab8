// Pipe ends: who holds each end, and the fork handlers that hand a forked child its ends.
#include "shmq/detail/pipe_end.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <unordered_set>

#include "shmq/detail/ring.hpp"
#include "shmq/errors.hpp"

namespace shmq::detail {

namespace {

std::uint64_t monotonic_ms() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000 +
         static_cast<std::uint64_t>(ts.tv_nsec) / 1000000;
}

// This process's start time, read once per process (a forked child reads its own).
std::uint64_t own_start_ticks() noexcept {
  static std::atomic<pid_t> for_pid{0};
  static std::atomic<std::uint64_t> ticks{0};
  const pid_t me = getpid();
  if (for_pid.load(std::memory_order_acquire) != me) {
    ticks.store(process_start_ticks(me).value_or(0), std::memory_order_relaxed);
    for_pid.store(me, std::memory_order_release);
  }
  return ticks.load(std::memory_order_relaxed);
}

pid_t pid_of(std::uint64_t owner) noexcept {
  return static_cast<pid_t>(static_cast<std::uint32_t>(owner));
}

// Whether the holder recorded in a slot still counts: a live process (not a zombie) with the same
// start time, or a pending slot not yet expired whose forking parent lives.
bool holder_alive(std::uint64_t owner, std::uint64_t stamp) {
  const pid_t pid = pid_of(owner);
  if ((owner & kHolderPending) != 0 && monotonic_ms() >= stamp) return false;
  if (pid == getpid()) return true;
  const auto stat = process_stat(pid);
  if (!stat || stat->state == 'Z' || stat->state == 'X') return false;
  return (owner & kHolderPending) != 0 || stamp == 0 || stat->start_ticks == stamp;
}

// Claims a free slot for `owner`, clearing the slots of dead holders if none is free; -1 if full.
int claim(EndTable& table, std::uint64_t owner, std::uint64_t stamp) {
  for (int pass = 0; pass < 2; ++pass) {
    for (std::size_t i = 0; i < kHolderSlots; ++i) {
      HolderSlot& slot = table.slots[i];
      std::uint64_t seen = slot.owner.load(std::memory_order_acquire);
      if (seen != 0 && pass == 1 && !holder_alive(seen, slot.stamp.load(std::memory_order_relaxed)))
        slot.owner.compare_exchange_strong(seen, 0);  // a dead holder's slot
      if (seen != 0) continue;
      // The stamp first: a holder killed between the two stores leaves a stamp nobody reads.
      slot.stamp.store(stamp, std::memory_order_relaxed);
      if (slot.owner.compare_exchange_strong(seen, owner, std::memory_order_release))
        return static_cast<int>(i);
    }
  }
  return -1;
}

// Whether any live process counts as a holder of the end (see pipe_end.hpp); clears dead ones.
bool held(EndTable& table) {
  const bool only_users = table.ever_used.load(std::memory_order_acquire) != 0;
  for (HolderSlot& slot : table.slots) {
    std::uint64_t owner = slot.owner.load(std::memory_order_acquire);
    if (owner == 0) continue;
    if (!holder_alive(owner, slot.stamp.load(std::memory_order_relaxed))) {
      slot.owner.compare_exchange_strong(owner, 0);
      continue;
    }
    if (!only_users || (owner & kHolderUsed) != 0) return true;
  }
  return false;
}

bool gone(EndTable& table) {
  if (table.gone.load(std::memory_order_acquire) != 0) return true;
  if (held(table)) return false;
  table.gone.store(1, std::memory_order_release);
  return true;
}

// The last pid handed out in this process's pid namespace, or 0 if it cannot be read.
pid_t last_pid() noexcept {
  const int fd = open("/proc/sys/kernel/ns_last_pid", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char text[16];
  const ssize_t n = read(fd, text, sizeof text - 1);
  close(fd);
  if (n <= 0) return 0;
  text[n] = '\0';
  return static_cast<pid_t>(std::strtol(text, nullptr, 10));
}

// Whether `pid` names a process (its first thread), not one of its other threads.
bool leads_its_process(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("Tgid:", 0) == 0) return std::strtol(line.c_str() + 5, nullptr, 10) == pid;
  }
  return false;
}

// The pids handed out between two reads of last_pid() that we look at, at most, to find the
// child a fork just made (other processes fork and start threads meanwhile).
constexpr pid_t kForkWindow = 32;

// The child that the fork between `before` and now made: the one pid handed out since `before`,
// or else the one process among them whose parent we are; 0 if that is not one process (or
// cannot be known). If our child is alive, it is among them, so a single candidate is it; if it
// died, whatever we name counts for no longer than the parent would have (see name_child).
pid_t forked_child(pid_t before) {
  const pid_t after = last_pid();
  if (before == 0 || after <= before || after - before > kForkWindow) return 0;
  if (after == before + 1) return after;  // the only pid handed out: our child's, alive or not
  const pid_t me = getpid();
  pid_t child = 0;
  for (pid_t pid = before + 1; pid <= after; ++pid) {
    const auto stat = process_stat(pid);
    // A thread of our child (a tid shows its process's parent) is not another child.
    if (!stat || stat->parent != me || !leads_its_process(pid)) continue;
    if (child != 0) return 0;  // two children (another thread forked too): which one is ours?
    child = pid;
  }
  return child;
}

// Every PipeEnd of this process, for the fork handlers. The prepare handler holds the mutex across
// the fork, so the child gets it unlocked and the set complete.
struct Registry {
  std::mutex mutex;
  std::unordered_set<PipeEnd*> ends;
  pid_t last_pid_before_fork = 0;  // when some end kept a slot for the child; else 0
};
Registry& registry() {
  static Registry* r = [] {
    static Registry instance;
    pthread_atfork(
        [] {
          Registry& self = registry();
          self.mutex.lock();
          bool kept = false;
          for (PipeEnd* end : self.ends) kept |= end->before_fork();
          self.last_pid_before_fork = kept ? last_pid() : 0;
        },
        [] {
          Registry& self = registry();
          try {
            if (const pid_t child = forked_child(self.last_pid_before_fork)) {
              for (PipeEnd* end : self.ends) end->name_child(child);
            }
          } catch (...) {  // reading /proc failed: the kept slots expire after kPendingMs
          }
          self.mutex.unlock();
        },
        [] {
          for (PipeEnd* end : registry().ends) end->in_child();
          registry().mutex.unlock();
        });
    return &instance;
  }();
  return *r;
}

}  // namespace

PipeEnd::PipeEnd(std::shared_ptr<Segment> in, std::shared_ptr<Segment> out)
    : in_(std::move(in)),
      out_(std::move(out)),
      // A ring's pipe_ends[0] is its receiver's, [1] its sender's; each end's own table is in
      // the ring it sends into (the receiving one for a receive-only end).
      own_(out_ ? &out_->ring().pipe_end(1) : &in_->ring().pipe_end(0)),
      peer_(in_ ? &in_->ring().pipe_end(1) : &out_->ring().pipe_end(0)),
      description_("pipe (" + (in_ ? in_ : out_)->description() + ")") {
  const int slot = claim(*own_, static_cast<std::uint32_t>(getpid()), own_start_ticks());
  if (slot < 0) {
    throw Error("shmq: " + description_ + ": this end already has " + std::to_string(kHolderSlots) +
                " holder processes (the most it can record)");
  }
  slot_.store(slot, std::memory_order_relaxed);
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.ends.insert(this);
}

PipeEnd::~PipeEnd() {
  close();
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.ends.erase(this);
}

void PipeEnd::close() noexcept {
  if (closed_.exchange(true, std::memory_order_acq_rel)) return;
  const int slot = slot_.exchange(-1, std::memory_order_relaxed);
  if (slot >= 0) {
    std::uint64_t owner = own_->slots[slot].owner.load(std::memory_order_relaxed);
    if (pid_of(owner) == getpid()) own_->slots[slot].owner.compare_exchange_strong(owner, 0);
  }
  try {
    if (gone(*own_)) shut_down_rings();
  } catch (...) {
    // Reading /proc failed (no memory, no descriptor): the peer finds out with its own check.
  }
}

void PipeEnd::mark_used_slow() {
  int slot = slot_.load(std::memory_order_relaxed);
  if (slot < 0) {  // a child whose slot could not be kept at the fork
    slot = claim(*own_, static_cast<std::uint32_t>(getpid()), own_start_ticks());
    if (slot < 0) {
      throw Error("shmq: " + description_ + ": this end already has " +
                  std::to_string(kHolderSlots) + " holder processes (the most it can record)");
    }
    slot_.store(slot, std::memory_order_relaxed);
  }
  own_->slots[slot].owner.fetch_or(kHolderUsed, std::memory_order_release);
  own_->ever_used.store(1, std::memory_order_release);
  used_.store(true, std::memory_order_relaxed);
}

bool PipeEnd::peer_gone(bool now_and_then) {
  if (now_and_then) {
    const std::int64_t now = std::chrono::steady_clock::now().time_since_epoch().count();
    const std::int64_t last = last_peer_check_ns_.load(std::memory_order_relaxed);
    if (now - last < std::chrono::nanoseconds(kLongestSleep).count()) {
      return peer_->gone.load(std::memory_order_acquire) != 0;
    }
    last_peer_check_ns_.store(now, std::memory_order_relaxed);
  }
  if (!gone(*peer_)) return false;
  shut_down_rings();
  return true;
}

void PipeEnd::shut_down_rings() noexcept {
  if (in_) in_->ring().shutdown(false);
  if (out_) out_->ring().shutdown(false);
}

// Before a fork, in the parent: keeps a slot for the child, so that the parent closing its copy
// right after the fork cannot leave the end without holders before the child has run in_child().
// Returns whether it kept one.
bool PipeEnd::before_fork() noexcept {
  pending_.store(-1, std::memory_order_relaxed);
  if (closed()) return false;
  try {
    pending_owner_ = static_cast<std::uint32_t>(getpid()) | kHolderPending;
    pending_.store(claim(*own_, pending_owner_, monotonic_ms() + kPendingMs),
                   std::memory_order_relaxed);
  } catch (...) {
    // No slot kept: the child claims one for itself in in_child() (or at its first use).
  }
  return pending_.load(std::memory_order_relaxed) >= 0;
}

// After the fork, in the parent: the kept slot names the child from now on, so that a child
// killed before it took the slot over counts as dead at once (a zombie, or gone), not only once
// the slot expires. Unless the child has let the slot go already (then it is not ours to touch).
void PipeEnd::name_child(pid_t child) noexcept {
  const int kept = pending_.load(std::memory_order_relaxed);
  if (kept < 0) return;
  std::uint64_t owner = pending_owner_;
  own_->slots[kept].owner.compare_exchange_strong(
      owner, static_cast<std::uint32_t>(child) | kHolderPending, std::memory_order_release);
}

// In the child, first thing after the fork: a slot of its own (its pid and start time), then the
// kept one let go; in this order, so that the end has a holder at every instant. Not yet used here.
void PipeEnd::in_child() noexcept {
  used_.store(false, std::memory_order_relaxed);
  slot_.store(-1, std::memory_order_relaxed);
  if (closed()) return;
  try {
    slot_.store(claim(*own_, static_cast<std::uint32_t>(getpid()), own_start_ticks()),
                std::memory_order_relaxed);
  } catch (...) {
  }
  const int kept = pending_.exchange(-1, std::memory_order_relaxed);
  if (kept >= 0) {  // naming the parent still, or already us (name_child)
    std::uint64_t owner = pending_owner_;
    if (!own_->slots[kept].owner.compare_exchange_strong(owner, 0)) {
      owner = static_cast<std::uint32_t>(getpid()) | kHolderPending;
      own_->slots[kept].owner.compare_exchange_strong(owner, 0);
    }
  }
}

}  // namespace shmq::detail
