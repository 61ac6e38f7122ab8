// One mapped queue segment: creating, opening, validating and removing it. Internal.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <sys/types.h>

#include "shmq/detail/deadline.hpp"
#include "shmq/detail/layout.hpp"
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

// Checks a queue name and returns it without its optional leading '/'; throws InvalidArgument
// for an empty name, one over kMaxNameBytes, ".", "..", or one holding '/' or NUL.
std::string validate_name(std::string_view name);

// Removes every queue whose name starts with `prefix`; returns how many.
std::size_t remove_segments_with_prefix(std::string_view prefix);

class Mapping;  // the segment's mirrored mmap; see segment.cpp

class Segment {
 public:
  // Makes a new queue at `name`; throws AlreadyExists if the name is taken.
  static std::shared_ptr<Segment> create(std::string_view name, const QueueOptions& options,
                                         const TypeTag& type);
  // Makes a queue under a fresh unique name that this process removes when its last handle goes.
  static std::shared_ptr<Segment> create_anonymous(const QueueOptions& options,
                                                   const TypeTag& type);
  // Maps an existing queue; throws NotFound, or Incompatible naming what differs. A null `type`
  // accepts any message type (for inspection, never for puts and gets).
  static std::shared_ptr<Segment> open(std::string_view name, const TypeTag* type);
  // Opens `name` if it exists (refusing one owned by another user, or with a wider mode than
  // options.mode), else creates it. Exactly one of many racing callers creates.
  static std::shared_ptr<Segment> open_or_create(std::string_view name,
                                                 const QueueOptions& options, const TypeTag& type);
  // Removes the name; processes that have the queue mapped keep using it.
  static bool remove(std::string_view name);

  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  ~Segment();  // unmaps; the creator of an anonymous queue also removes its name

  const std::string& name() const noexcept { return name_; }
  const std::string& type_name() const noexcept { return type_name_; }
  Ring& ring() noexcept { return ring_; }
  const Ring& ring() const noexcept { return ring_; }

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
  Segment(std::string name, std::unique_ptr<Mapping> mapping, bool remove_on_close);

  std::string name_;
  std::unique_ptr<Mapping> mapping_;
  SharedHeader* header_;
  std::string type_name_;
  Ring ring_;
  pid_t remover_pid_;  // the process that removes the name on close, or 0
};

}  // namespace shmq::detail
