// How a new queue is made.
#pragma once

#include <sys/types.h>

#include <cstddef>

namespace shmq {

struct QueueOptions {
  // Most messages held at once, as Python's Queue(maxsize); 0: bounded only by capacity_bytes.
  std::size_t maxsize = 0;
  // Bytes of ring shared by all messages, rounded up to a whole number of pages; from 4 KiB to
  // 1 GiB. A message of n bytes takes round_up(n + 4, 4) of them.
  std::size_t capacity_bytes = std::size_t{1} << 20;
  // Permission bits of the segment; the owner needs read and write. Widen (0660, 0666) to let
  // other users in.
  mode_t mode = 0600;
  // How many times a call that must wait polls before it sleeps. Polling answers in well under
  // a microsecond when the peer runs on another core; sleeping costs tens of microseconds to wake.
  // 0 sleeps at once (best when processes outnumber cores).
  unsigned spin_polls = 2000;
};

}  // namespace shmq
