// How a new queue is made.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <string>

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

  // ---- Leased gets (lease.hpp). The queue keeps a lease area of max_leases slots beside its
  // ring, each holding a copy of one leased message until it is acked.
  // Most leases outstanding at once (at most 4096); 0: no leased gets (get_leased throws
  // InvalidArgument). A leased get that finds every slot held waits as a get on an empty queue.
  std::size_t max_leases = 0;
  // With max_leases: the largest message the queue takes (each slot holds one; puts of larger
  // ones throw MessageTooLarge). 0: the ring's largest, capacity - 4 bytes. The lease area takes
  // max_leases * round_up(64 + lease_message_bytes, 64) bytes (at most 1 GiB).
  std::size_t lease_message_bytes = 0;
  // A lease held this long without an ack is delivered again, and its holder's late ack throws
  // LeaseExpired. 0: no limit (only the holder's death returns the message).
  std::chrono::milliseconds lease_timeout{0};
  // A message delivered this many times (at most 254) without an ack goes to dead_letter_queue
  // instead of being delivered again. 0: no limit.
  unsigned max_deliveries = 0;
  // The name of an existing queue of the same type that takes those messages; required with
  // max_deliveries.
  std::string dead_letter_queue = {};
};

}  // namespace shmq
