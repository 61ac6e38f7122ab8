// Looking at queues from outside: for monitoring, and for the `shmq` command-line tool.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shmq/stats.hpp"

namespace shmq {

// The names of every shmq segment on the machine (/dev/shm/shmq.*), sorted: the named queues.
// Unnamed queues are memfds with no name in /dev/shm, and are not listed. Names only: a segment
// listed here may still fail to open (another user's, not a queue, corrupt).
std::vector<std::string> list_queues();

// The state and counters of a queue, whatever its message type: a named queue by its name, an
// unnamed one by the name() of a handle to it (while its creator holds it). Opens it for reading
// only in the sense that nothing is changed. Throws NotFound, Incompatible (not a queue of this
// layout), or Error (no permission, ...).
QueueStats inspect(std::string_view name);

// A type name as a person writes it, for listings: std::string for
// std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >,
// std::vector<int>, std::map<std::string, int>: the standard library's inline namespaces and
// default arguments (allocators, comparators, hashes, traits) dropped, "> >" closed up. A name cut
// short where it was stored (QueueStats::type_name keeps at most 255 bytes) ends in "..." unless
// only default arguments were lost.
std::string short_type_name(std::string_view type_name);

// Who has a queue mapped, and whether its creator still runs; read from /proc (best effort: the
// processes of other users are invisible to a non-root caller).
struct QueueUsers {
  std::vector<pid_t> mapped_by;  // live processes with the segment mapped
  bool creator_alive = false;    // its creator pid runs and started before the queue was made
};
QueueUsers queue_users(const QueueStats& stats);

// A lock, event, semaphore, condition, barrier, value, array or shared memory block, as `shmq ls`
// and `shmq stat` show it. A snapshot, as QueueStats.
struct ObjectStats {
  std::string name;
  std::string kind;  // "lock", "rlock", "semaphore", "bounded semaphore", "event", "condition",
                     // "barrier", "value", "array", "shared memory"
  std::string type_name;         // Value, Array: the element type, as its creator named it
  std::uint64_t data_bytes = 0;  // Value, Array, SharedMemory: bytes of payload
  std::uint32_t mode = 0;
  pid_t creator_pid = 0;
  std::uint64_t created_unix_ns = 0;
  // Lock, RLock, Value, Array (with a lock), Barrier (its internal lock): the thread holding it
  // now, or 0; and whether its last holder died holding it with nobody taking it since.
  bool has_lock = false;
  pid_t lock_holder = 0;
  bool holder_died = false;
  std::uint64_t lock_recoveries = 0;  // takeovers from dead holders
  std::uint32_t value = 0;            // Semaphore: units free; Event: 1 if set
  std::uint32_t limit = 0;            // BoundedSemaphore: its bound; Barrier: parties
  std::uint32_t waiting = 0;          // Barrier: parties waiting; others: processes asleep on it
  bool broken = false;                // Barrier
  std::string lock_name;              // Condition: its lock's name
};

// The state of the object named `name`, or nullopt if there is no such segment or it is not a
// lock, event, value... (a queue, say, which inspect() reads). Throws Incompatible (corrupt),
// Error.
std::optional<ObjectStats> inspect_object(std::string_view name);

}  // namespace shmq
