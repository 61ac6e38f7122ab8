// What a queue has done since it was created: for monitoring, `shmq stat`, and tests.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace shmq {

// A snapshot: each field is exact when read, but the fields are not read at one instant.
struct QueueStats {
  std::string name;              // as opened: a named queue's name, or an unnamed one's handle name
  std::string type_name;         // the message type, as the creator named it (its first 255
                                 // bytes); short_type_name() in inspect.hpp shortens it
  std::uint64_t messages = 0;    // queued now
  std::uint64_t bytes_used = 0;  // ring bytes queued now, frame headers included
  std::uint64_t capacity_bytes = 0;
  std::uint64_t maxsize = 0;  // 0: bounded only by bytes
  std::uint32_t mode = 0;     // permission bits asked for at creation
  pid_t creator_pid = 0;
  std::uint64_t created_unix_ns = 0;
  bool shut_down = false;
  std::uint64_t puts = 0;             // messages put
  std::uint64_t gets = 0;             // messages taken
  std::uint64_t put_timeouts = 0;     // timed, _nowait and try_ puts that found no room
  std::uint64_t get_timeouts = 0;     // likewise for gets
  std::uint64_t full_waits = 0;       // times a producer went to sleep for room
  std::uint64_t empty_waits = 0;      // times a consumer went to sleep for a message
  std::uint64_t lock_recoveries = 0;  // locks taken over from a process that died holding them
  std::uint64_t peak_depth = 0;  // most messages held at once (as producers saw it: an upper bound)
  std::uint32_t sleeping_producers = 0;  // asleep now (a process killed asleep stays counted)
  std::uint32_t sleeping_consumers = 0;
  // The thread (its TID; the process's pid for a single-threaded one) holding the producers' or
  // the consumers' lock now, or 0. A holder that stays is stuck, or stopped (SIGSTOP, a debugger).
  pid_t put_lock_holder = 0;
  pid_t get_lock_holder = 0;

  // ---- Leased gets (QueueOptions::max_leases; all zero and empty for a queue without).
  std::uint32_t max_leases = 0;
  std::uint64_t lease_timeout_ns = 0;  // 0: none
  std::uint32_t max_deliveries = 0;    // 0: no limit
  std::string dead_letter_queue;
  std::uint64_t redeliveries = 0;   // messages delivered again (holder died, timed out, nacked)
  std::uint64_t dead_lettered = 0;  // messages moved to dead_letter_queue
  // A lease outstanding now: held by a consumer, or waiting to be delivered again.
  struct Lease {
    std::uint32_t slot = 0;
    bool waiting = false;       // true: back in the queue, for its next delivery (no holder)
    pid_t holder = 0;           // the holding process
    bool holder_alive = false;  // false: it died; the next get that looks delivers it again
    std::uint64_t age_ns = 0;   // since its holder took it
    std::uint32_t deliveries = 0;
  };
  std::vector<Lease> leases;
};

}  // namespace shmq
