// One end of a shmq Pipe, as this process holds it: its rings and who holds each end. Internal.
//
// Who holds an end (the rule connection.hpp states for users):
//  - the process that made the Pipe holds both ends; a process forked while it holds an end holds
//    it too (a fork handler claims a slot for the child before the fork, names the child in it
//    right after, and the child takes it over; a child killed before that counts as dead at once,
//    and a slot that could not be named expires after kPendingMs); close() gives it up;
//  - once any process has sent or received on an end, only the processes that have sent or received
//    on it count as its holders (so a parent that handed the end to a child and never used it does
//    not keep the stream open when the child dies, whether or not it closed its own copy);
//  - an end is gone, for good, when no live process counts as its holder: dead holders (killed at
//    any instruction, or zombies) are found by their pid and start time in /proc.
// When either end is gone, both rings of the pipe are shut down (draining): the peer receives what
// was sent, then end of stream; its sends fail as a broken pipe.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "shmq/detail/layout.hpp"
#include "shmq/detail/segment.hpp"

namespace shmq::detail {

// A pending slot (a child not yet running its fork handler) counts as a holder at most this long;
// once the parent has named the child in it (it finds the child's pid through
// /proc/sys/kernel/ns_last_pid right after the fork), only while the child lives.
inline constexpr std::uint64_t kPendingMs = 5000;

class PipeEnd {
 public:
  // `in`: the ring this end receives from, null for a send-only end; `out`: the ring it sends into,
  // null for a receive-only end. The calling process becomes a holder. Throws Error if the end
  // already has kHolderSlots holders.
  PipeEnd(std::shared_ptr<Segment> in, std::shared_ptr<Segment> out);
  PipeEnd(const PipeEnd&) = delete;
  PipeEnd& operator=(const PipeEnd&) = delete;
  ~PipeEnd();  // close()

  Segment* in() const noexcept { return in_.get(); }
  Segment* out() const noexcept { return out_.get(); }
  // How errors name the pipe: "pipe (unnamed queue (pid N, #k))".
  const std::string& description() const noexcept { return description_; }

  bool closed() const noexcept { return closed_.load(std::memory_order_acquire); }
  // Gives up this process's hold; if no holder is left, the end is gone (see the file comment).
  void close() noexcept;
  // Marks this process as having used the end; once per process, then one load.
  void mark_used() {
    if (!used_.load(std::memory_order_relaxed)) mark_used_slow();
  }
  // Whether the peer end is gone, looking at its holders now (reads /proc for each); when it is,
  // shuts both rings down. At most every kLongestSleep (100 ms) when `now_and_then`.
  bool peer_gone(bool now_and_then = false);

  // The fork handlers (src/pipe.cpp).
  bool before_fork() noexcept;
  void name_child(pid_t child) noexcept;
  void in_child() noexcept;

 private:
  void mark_used_slow();
  void shut_down_rings() noexcept;

  std::shared_ptr<Segment> in_;
  std::shared_ptr<Segment> out_;
  EndTable* own_;
  EndTable* peer_;
  std::string description_;
  std::atomic<int> slot_{-1};        // this process's slot in own_, or -1
  std::atomic<int> pending_{-1};     // the slot kept for a child being forked, or -1
  std::uint64_t pending_owner_ = 0;  // what that slot holds; written under the fork registry lock
  std::atomic<bool> used_{false};
  std::atomic<bool> closed_{false};
  std::atomic<std::int64_t> last_peer_check_ns_{0};
};

}  // namespace shmq::detail
