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

}  // namespace shmq
