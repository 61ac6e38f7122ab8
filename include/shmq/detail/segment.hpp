// One mapped queue segment: creating, opening, validating and removing it. Internal.
#pragma once

#include <sys/types.h>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "shmq/detail/deadline.hpp"
#include "shmq/detail/layout.hpp"
#include "shmq/detail/lease_table.hpp"
#include "shmq/detail/ring.hpp"
#include "shmq/queue_options.hpp"
#include "shmq/stats.hpp"

namespace shmq::detail {

// What a queue's header records of its message type: a hash of the type's mangled name (the same
// in every process built with the same ABI) and, for error messages, its readable name.
struct TypeTag {
  std::uint64_t fingerprint;
  std::string name;
};
TypeTag make_type_tag(const char* mangled_name);

// Limits on names, stated once. A queue `jobs` (or `/jobs`) lives at /dev/shm/shmq.jobs.
inline constexpr std::string_view kSegmentPrefix = "shmq.";
inline constexpr std::size_t kMaxNameBytes = 255 - kSegmentPrefix.size();

// An unnamed queue has no file in /dev/shm: it is a memfd, gone when the last process holding it
// (by descriptor or mapping) ends. Its handle's name(), which travels through queues, reads
//   unnamed/<creator pid>/<descriptor in the creator>/<counter>/<creator start time in ticks>
// (a '/' after the first character, which no queue name may hold, so the forms cannot be confused)
// and is opened through /proc/<pid>/fd/<descriptor> while the creator holds the queue.
inline constexpr std::string_view kUnnamedPrefix = "unnamed/";

// Checks a queue name and returns it without its optional leading '/'; throws InvalidArgument
// for an empty name, one over kMaxNameBytes, ".", "..", or one holding '/' or NUL.
std::string validate_name(std::string_view name);

// How /proc/PID/maps names the file of the queue `name` (named or unnamed), less the " (deleted)"
// it may carry: /dev/shm/shmq.jobs, /memfd:shmq.unnamed.1234.3. Throws InvalidArgument as open
// does.
std::string mapped_file(std::string_view name);

// When process `pid` started, in clock ticks after boot (/proc/PID/stat), or nullopt if there is
// no such process. With the pid, it names one process for good: pids are recycled, this is not.
std::optional<std::uint64_t> process_start_ticks(pid_t pid);
// Process `pid`'s state letter (R, S, Z for a zombie, ...) and start time, or nullopt if there is
// no such process.
struct ProcessStat {
  char state;
  std::uint64_t start_ticks;
  pid_t parent;
};
std::optional<ProcessStat> process_stat(pid_t pid);

// Removes every queue whose name starts with `prefix`; returns how many.
std::size_t remove_segments_with_prefix(std::string_view prefix);

class Mapping;  // the segment's mirrored mmap; see segment.cpp

class Segment {
 public:
  // Makes a new queue at `name`; throws AlreadyExists if the name is taken.
  static std::shared_ptr<Segment> create(std::string_view name, const QueueOptions& options,
                                         const TypeTag& type);
  // Makes an unnamed queue: a sealed memfd that vanishes with the last process holding it. This
  // process keeps its descriptor while it holds the Segment, so that others can open it by name().
  // Throws Error (naming the limit) when this process has no descriptor left (RLIMIT_NOFILE).
  static std::shared_ptr<Segment> create_anonymous(const QueueOptions& options,
                                                   const TypeTag& type);
  // Maps an existing queue, named or unnamed (by the name() of a handle to it); throws NotFound,
  // InvalidArgument for a malformed name, or Incompatible naming what differs. A null `type`
  // accepts any message type (for inspection, never for puts and gets).
  static std::shared_ptr<Segment> open(std::string_view name, const TypeTag* type);
  // Opens `name` if it exists (refusing one owned by another user, or with a wider mode than
  // options.mode), else creates it. Exactly one of many racing callers creates.
  static std::shared_ptr<Segment> open_or_create(std::string_view name, const QueueOptions& options,
                                                 const TypeTag& type);
  // Removes the name; processes that have the queue mapped keep using it. Throws InvalidArgument
  // for an unnamed queue's name: it has nothing to remove.
  static bool remove(std::string_view name);

  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  ~Segment();  // unmaps; the creator of an unnamed queue also closes its descriptor

  // The name it was made or opened with; for an unnamed queue, the form that opens it elsewhere.
  const std::string& name() const noexcept { return name_; }
  // The queue as error messages name it: `queue 'jobs'`, or `unnamed queue (pid 1234, #3)`.
  const std::string& description() const noexcept { return description_; }
  const std::string& type_name() const noexcept { return type_name_; }
  Ring& ring() noexcept { return ring_; }
  const Ring& ring() const noexcept { return ring_; }
  // The lease area, or null when the queue was made with max_leases 0.
  LeaseTable* leases() const noexcept { return leases_.get(); }

  QueueStats stats() const;
  // Throws MessageTooLarge unless a payload of `bytes` can ever fit.
  void check_message_size(std::size_t bytes) const {
    if (bytes > ring_.max_payload()) throw_too_large(bytes);
  }
  // Turn a failed put/get into the exception the blocking API promises.
  [[noreturn]] void throw_too_large(std::size_t bytes) const;
  [[noreturn]] void throw_put_failure(Outcome outcome, const Deadline& deadline,
                                      const char* call) const;
  [[noreturn]] void throw_get_failure(Outcome outcome, const Deadline& deadline,
                                      const char* call) const;

 private:
  friend class ObjectFile;  // which keeps an unnamed object's memfd the same way
  class Descriptor;         // the creator's memfd of an unnamed queue; see segment.cpp

  Segment(std::string name, std::string label, std::unique_ptr<Mapping> mapping,
          std::unique_ptr<Descriptor> kept);
  void add_lease_stats(QueueStats& s) const;

  std::string name_;
  std::string label_;        // what the Ring's lock and corruption errors quote: the name, or
                             // `unnamed queue (pid N, #k)`
  std::string description_;  // see description()
  std::unique_ptr<Mapping> mapping_;
  SharedHeader* header_;
  std::string type_name_;
  std::unique_ptr<LeaseTable> leases_;  // null without a lease area; before ring_, which uses it
  Ring ring_;
  std::unique_ptr<Descriptor> kept_;  // the creator's memfd of an unnamed queue, else null
};

// ---- Objects other than queues (locks, events, shared values: sync_object.hpp lays them out).
// One file per object, under the queue's name rules, modes and removal (Segment::remove serves
// both), or an unnamed sealed memfd that opens by name() while its creator holds it; mapped whole.
// `kind` ("lock", "event", ...) names the object in messages: `lock 'jobs'`, `unnamed lock (pid
// 1234, #3)`.
class ObjectFile {
 public:
  // Makes a file of `bytes` zero bytes; throws AlreadyExists if the name is taken, InvalidArgument
  // for a bad name or mode. The caller publishes what it writes (see open).
  static std::unique_ptr<ObjectFile> create(std::string_view name, std::size_t bytes, mode_t mode,
                                            std::string_view kind);
  static std::unique_ptr<ObjectFile> create_anonymous(std::size_t bytes, std::string_view kind);
  // Maps an existing object once its first 8 bytes (the caller's magic word, stored last by its
  // creator) are not zero, waiting as Segment::open does for a creator still at work; throws
  // NotFound, InvalidArgument, Incompatible (never published). `owner_mode`, when given, refuses a
  // file of another user or with a wider mode (open_or_create).
  static std::unique_ptr<ObjectFile> open(std::string_view name, std::string_view kind,
                                          std::optional<mode_t> owner_mode = std::nullopt);

  ObjectFile(const ObjectFile&) = delete;
  ObjectFile& operator=(const ObjectFile&) = delete;
  ~ObjectFile();  // unmaps; the creator of an unnamed object also closes its descriptor

  std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }  // from fstat, never from the contents
  const std::string& name() const noexcept { return name_; }
  const std::string& description() const noexcept { return description_; }

 private:
  ObjectFile(int fd, std::string name, std::string description, bool keep_fd);

  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::string name_;
  std::string description_;
  std::unique_ptr<Segment::Descriptor> kept_;  // the creator's memfd of an unnamed object
};

}  // namespace shmq::detail
