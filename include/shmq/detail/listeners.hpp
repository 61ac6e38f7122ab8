// Listeners on an EventCount: Notifiers woken by a byte that wake() writes into their pipe.
// Internal; the slots are in layout.hpp (ListenerSlot), the protocol in src/listeners.cpp.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>

#include "shmq/detail/layout.hpp"
#include "shmq/detail/robust_mutex.hpp"

namespace shmq::detail {

// This process's pid without a syscall once one of its threads has taken a queue lock (the
// fork-checked process mark, robust_mutex.hpp, holds it); getpid() before that.
inline pid_t this_process_id() noexcept {
  const std::uint32_t pid = this_thread.process_mark->load(std::memory_order_relaxed);
  return pid != 0 ? static_cast<pid_t>(pid) : getpid();
}

// This process's pipe, whose read end wakers write into.
struct ListenerPipe {
  int read_fd;
  std::uint64_t inode;
};

// Whether other processes can write into this process's pipe through /proc/PID/fd/read_fd (not
// with /proc missing or mounted with hidepid): if not, a notifier claims no slot.
bool reopenable(int read_fd) noexcept;
// Claims a free slot of `ev` for `pipe`; returns its index, or -1 when every slot is taken by a
// live listener (slots whose listener is gone are released first).
int listen(EventCount& ev, const ListenerPipe& pipe) noexcept;
// Whether slot `slot` of `ev` still names `pipe` (a waker may have released it by mistake only
// if the descriptor vanished; the notifier then claims again).
bool listening(const EventCount& ev, int slot, const ListenerPipe& pipe) noexcept;
// Releases the slot claimed by listen(), if it still names `pipe`.
void unlisten(EventCount& ev, int slot, const ListenerPipe& pipe) noexcept;
// wake()'s part: writes one byte into the pipe of every listener on `ev`, and releases the slots
// of listeners found gone (their process died, or it closed the pipe). Keeps the ends it opens,
// per process, until forget_listeners() or until they stop matching.
void ring_listeners(EventCount& ev) noexcept;
// Closes the kept write ends of the slots in [begin, begin + bytes): a queue handle's header,
// before it is unmapped.
void forget_listeners(const void* begin, std::size_t bytes) noexcept;

}  // namespace shmq::detail
