// Creating, opening, validating, mapping and removing queue segments.
#include "shmq/detail/segment.hpp"

#include "shmq/detail/demangle.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/interprocess/shared_memory_object.hpp>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <thread>

namespace bip = boost::interprocess;

namespace shmq::detail {

namespace {

// How long an opener waits for a creator that has made the file but not yet published its header.
constexpr std::chrono::seconds kInitPatience{2};
constexpr unsigned kMaxSpinPolls = 1u << 20;

std::string quoted(const std::string& name) { return "'" + name + "'"; }

std::string shm_path(const std::string& name) { return "/" + std::string(kSegmentPrefix) + name; }

std::string errno_text(int err) { return std::strerror(err); }

std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::size_t page_size() {
  static const std::size_t size = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return size;
}

// Boost reports a failed shm_open as an interprocess_exception; recover its errno.
int native_error(const bip::interprocess_exception& e) {
  const int err = e.get_native_error();
  return err != 0 ? err : EIO;
}

}  // namespace

// The header and ring mapped once, then the ring mapped again right after itself:
//
//   base: [ header | ring ][ ring again ]
//
// Both ring views show the same pages, so a frame that starts near the end of the first view runs
// on into the second. One PROT_NONE reservation is replaced by the two MAP_FIXED views, so nothing
// else can be mapped in between; one munmap releases all of it. (Boost's mapped_region maps one
// view per object and cannot place the second view atomically inside a reservation; that is why
// the mapping is made here with mmap, while the segment itself is made and opened through
// boost::interprocess::shared_memory_object.)
class Mapping {
 public:
  Mapping(int fd, std::size_t capacity, const std::string& name)
      : bytes_(kHeaderBytes + 2 * capacity), capacity_(capacity) {
    void* reserved = mmap(nullptr, bytes_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (reserved == MAP_FAILED) fail(errno, name);
    base_ = static_cast<std::byte*>(reserved);
    const int prot = PROT_READ | PROT_WRITE;
    if (mmap(base_, kHeaderBytes + capacity, prot, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED ||
        mmap(base_ + kHeaderBytes + capacity, capacity, prot, MAP_SHARED | MAP_FIXED, fd,
             static_cast<off_t>(kHeaderBytes)) == MAP_FAILED) {
      const int err = errno;
      munmap(base_, bytes_);
      fail(err, name);
    }
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { munmap(base_, bytes_); }

  SharedHeader& header() const noexcept { return *reinterpret_cast<SharedHeader*>(base_); }
  std::byte* ring() const noexcept { return base_ + kHeaderBytes; }
  std::size_t capacity() const noexcept { return capacity_; }

 private:
  [[noreturn]] static void fail(int err, const std::string& name) {
    throw Error("shmq: cannot map queue " + quoted(name) + ": " + errno_text(err));
  }

  std::byte* base_ = nullptr;
  std::size_t bytes_;
  std::size_t capacity_;
};

namespace {

// Removes a half-made segment if creation fails part-way.
class RemoveUnlessReleased {
 public:
  explicit RemoveUnlessReleased(std::string name) : name_(std::move(name)) {}
  ~RemoveUnlessReleased() {
    if (!name_.empty()) shm_unlink(shm_path(name_).c_str());
  }
  void release() noexcept { name_.clear(); }

 private:
  std::string name_;
};

struct CheckedOptions {
  std::uint32_t capacity;
  std::uint32_t maxsize;
};

CheckedOptions check_options(const QueueOptions& o, const std::string& name) {
  const std::string what = "shmq: queue " + quoted(name) + ": ";
  if (o.capacity_bytes == 0 || o.capacity_bytes > kMaxCapacity) {
    throw InvalidArgument(what + "capacity_bytes of " + std::to_string(o.capacity_bytes) +
                          " is outside 1 byte to " + std::to_string(kMaxCapacity) + " (1 GiB)");
  }
  if (o.maxsize > INT32_MAX) {
    throw InvalidArgument(what + "maxsize of " + std::to_string(o.maxsize) + " exceeds " +
                          std::to_string(INT32_MAX));
  }
  if ((o.mode & ~mode_t{0777}) != 0 || (o.mode & 0600) != 0600) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(o.mode));
    throw InvalidArgument(what + "mode " + buf +
                          " must be permission bits only (at most 0777) that include 0600");
  }
  if (o.spin_polls > kMaxSpinPolls) {
    throw InvalidArgument(what + "spin_polls of " + std::to_string(o.spin_polls) + " exceeds " +
                          std::to_string(kMaxSpinPolls));
  }
  if (kHeaderBytes % page_size() != 0) {
    throw Error("shmq: pages of " + std::to_string(page_size()) + " bytes are not supported");
  }
  const std::size_t pages = (std::max(o.capacity_bytes, kMinCapacity) + page_size() - 1) / page_size();
  return {static_cast<std::uint32_t>(pages * page_size()), static_cast<std::uint32_t>(o.maxsize)};
}

void init_header(SharedHeader& h, const CheckedOptions& sizes, const QueueOptions& o,
                 const TypeTag& type) {
  new (&h) SharedHeader{};
  h.layout_version = kLayoutVersion;
  h.header_bytes = kHeaderBytes;
  h.capacity_bytes = sizes.capacity;
  h.maxsize = sizes.maxsize;
  h.type_fingerprint = type.fingerprint;
  h.creator_pid = getpid();
  h.mode = static_cast<std::uint32_t>(o.mode);
  h.spin_polls = o.spin_polls;
  h.created_unix_ns = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count());
  std::snprintf(h.type_name, sizeof h.type_name, "%s", type.name.c_str());
  h.magic.store(kMagic, std::memory_order_release);  // last: publishes everything above
}

// Everything an opener checks before trusting the header; `capacity` comes from fstat.
void validate_header(const SharedHeader& h, std::size_t capacity, const TypeTag* type,
                     const std::string& name) {
  const std::string what = "shmq: queue " + quoted(name) + " is incompatible: ";
  if (h.layout_version != kLayoutVersion) {
    throw Incompatible(what + "layout version " + std::to_string(h.layout_version) +
                       ", this library reads version " + std::to_string(kLayoutVersion));
  }
  if (h.header_bytes != kHeaderBytes || h.capacity_bytes != capacity) {
    throw Incompatible(what + "its header claims " + std::to_string(h.header_bytes) + " + " +
                       std::to_string(h.capacity_bytes) + " bytes, its file holds " +
                       std::to_string(kHeaderBytes) + " + " + std::to_string(capacity));
  }
  if (h.maxsize > INT32_MAX || h.spin_polls > kMaxSpinPolls) {
    throw Incompatible(what + "maxsize " + std::to_string(h.maxsize) + " or spin_polls " +
                       std::to_string(h.spin_polls) + " is out of range");
  }
  if (type != nullptr && h.type_fingerprint != type->fingerprint) {
    const std::string theirs(h.type_name, strnlen(h.type_name, sizeof h.type_name));
    throw Incompatible(what + "it carries messages of type " + theirs + " (" +
                       hex(h.type_fingerprint) + "), not " + type->name + " (" +
                       hex(type->fingerprint) + ")");
  }
}

// Maps the segment behind fd once its creator has published the header. The size comes from
// fstat, never from the header, so the mapping always matches the file.
std::unique_ptr<Mapping> map_published(int fd, const std::string& name) {
  const auto give_up = std::chrono::steady_clock::now() + kInitPatience;
  for (auto pause = std::chrono::microseconds(50);; pause = std::min(pause * 2, decltype(pause)(5000))) {
    struct stat st;
    if (fstat(fd, &st) != 0) {
      throw Error("shmq: cannot stat queue " + quoted(name) + ": " + errno_text(errno));
    }
    const auto size = static_cast<std::size_t>(st.st_size);
    if (size != 0) {  // the creator sets the whole size in one posix_fallocate
      const std::size_t capacity = size > kHeaderBytes ? size - kHeaderBytes : 0;
      if (capacity < kMinCapacity || capacity > kMaxCapacity || capacity % page_size() != 0) {
        throw Incompatible("shmq: " + quoted(name) + " is not a shmq queue: a segment of " +
                           std::to_string(size) + " bytes");
      }
      auto mapping = std::make_unique<Mapping>(fd, capacity, name);
      const std::uint64_t magic = mapping->header().magic.load(std::memory_order_acquire);
      if (magic == kMagic) return mapping;
      if (magic != 0) {
        throw Incompatible("shmq: " + quoted(name) + " is not a shmq queue (magic " + hex(magic) + ")");
      }
    }
    if (std::chrono::steady_clock::now() >= give_up) {
      throw Incompatible("shmq: queue " + quoted(name) +
                         " was never initialised (did its creator die while creating it?); "
                         "remove it");
    }
    std::this_thread::sleep_for(pause);
  }
}

std::string anonymous_name() {
  static std::atomic<std::uint64_t> counter{0};
  static const std::uint32_t salt = std::random_device{}();
  char buf[64];
  std::snprintf(buf, sizeof buf, "anon-%d-%llu-%08x", static_cast<int>(getpid()),
                static_cast<unsigned long long>(counter.fetch_add(1)), salt);
  return buf;
}

// Refuses to share a segment that open_or_create did not make and would not have made.
void check_ownership(int fd, const QueueOptions& options, const std::string& name) {
  struct stat st;
  if (fstat(fd, &st) != 0) throw Error("shmq: cannot stat queue " + quoted(name) + ": " + errno_text(errno));
  if (st.st_uid != geteuid()) {
    throw Error("shmq: queue " + quoted(name) + " belongs to uid " + std::to_string(st.st_uid) +
                ", not to this user (uid " + std::to_string(geteuid()) + "): refusing to use it");
  }
  const auto mode = static_cast<unsigned>(st.st_mode & 0777);
  if ((mode & ~static_cast<unsigned>(options.mode)) != 0) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "mode %04o, wider than the %04o asked for", mode,
                  static_cast<unsigned>(options.mode));
    throw Error("shmq: queue " + quoted(name) + " has " + buf + ": refusing to use it");
  }
}

}  // namespace

TypeTag make_type_tag(const char* mangled_name) {
  std::uint64_t hash = 0xcbf29ce484222325ULL;  // FNV-1a, 64 bits
  for (const char* p = mangled_name; *p != '\0'; ++p) {
    hash = (hash ^ static_cast<unsigned char>(*p)) * 0x100000001b3ULL;
  }
  return TypeTag{hash, demangle(mangled_name)};
}

std::string validate_name(std::string_view name) {
  const std::string shown(name);
  if (!name.empty() && name.front() == '/') name.remove_prefix(1);
  const char* problem = nullptr;
  if (name.empty()) {
    problem = "is empty";
  } else if (name.size() > kMaxNameBytes) {
    problem = "is longer than 250 bytes";
  } else if (name == "." || name == "..") {
    problem = "is '.' or '..'";
  } else if (name.find('/') != std::string_view::npos) {
    problem = "holds a '/' after the first character";
  } else if (name.find('\0') != std::string_view::npos) {
    problem = "holds a NUL byte";
  }
  if (problem != nullptr) throw InvalidArgument("shmq: queue name " + quoted(shown) + " " + problem);
  return std::string(name);
}
static_assert(kMaxNameBytes == 250, "validate_name's message states the limit");

Segment::Segment(std::string name, std::unique_ptr<Mapping> mapping, bool remove_on_close)
    : name_(std::move(name)),
      mapping_(std::move(mapping)),
      header_(&mapping_->header()),
      type_name_(header_->type_name, strnlen(header_->type_name, sizeof header_->type_name)),
      ring_(*header_, mapping_->ring(), static_cast<std::uint32_t>(mapping_->capacity()),
            static_cast<std::uint32_t>(header_->maxsize), header_->spin_polls, name_),
      remover_pid_(remove_on_close ? getpid() : 0) {}

Segment::~Segment() {
  if (remover_pid_ == getpid()) shm_unlink(shm_path(name_).c_str());
}


std::shared_ptr<Segment> Segment::create(std::string_view raw_name, const QueueOptions& options,
                                         const TypeTag& type) {
  const std::string name = validate_name(raw_name);
  const CheckedOptions sizes = check_options(options, name);
  bip::shared_memory_object shm;
  try {
    shm = bip::shared_memory_object(bip::create_only, shm_path(name).c_str(), bip::read_write,
                                    bip::permissions(static_cast<int>(options.mode)));
  } catch (const bip::interprocess_exception& e) {
    if (native_error(e) == EEXIST) throw AlreadyExists("shmq: queue " + quoted(name) + " already exists");
    throw Error("shmq: cannot create queue " + quoted(name) + ": " + errno_text(native_error(e)));
  }
  RemoveUnlessReleased undo(name);
  const int fd = shm.get_mapping_handle().handle;
  const std::size_t file_bytes = kHeaderBytes + sizes.capacity;
  // Reserve every page now: a full /dev/shm is an error here, never a SIGBUS in a later put.
  if (const int err = posix_fallocate(fd, 0, static_cast<off_t>(file_bytes)); err != 0) {
    throw Error("shmq: cannot reserve " + std::to_string(file_bytes) + " bytes for queue " +
                quoted(name) + " in /dev/shm: " + errno_text(err));
  }
  auto mapping = std::make_unique<Mapping>(fd, sizes.capacity, name);
  init_header(mapping->header(), sizes, options, type);
  undo.release();
  return std::shared_ptr<Segment>(new Segment(name, std::move(mapping), false));
}

std::shared_ptr<Segment> Segment::create_anonymous(const QueueOptions& options, const TypeTag& type) {
  auto segment = create(anonymous_name(), options, type);
  segment->remover_pid_ = getpid();
  return segment;
}

namespace {

// Opens the segment's file, mapping Boost's errors to ours.
bip::shared_memory_object open_file(const std::string& name) {
  try {
    return bip::shared_memory_object(bip::open_only, shm_path(name).c_str(), bip::read_write);
  } catch (const bip::interprocess_exception& e) {
    if (native_error(e) == ENOENT) throw NotFound("shmq: no queue named " + quoted(name));
    throw Error("shmq: cannot open queue " + quoted(name) + ": " + errno_text(native_error(e)));
  }
}

}  // namespace

std::shared_ptr<Segment> Segment::open(std::string_view raw_name, const TypeTag* type) {
  const std::string name = validate_name(raw_name);
  const bip::shared_memory_object shm = open_file(name);
  auto mapping = map_published(shm.get_mapping_handle().handle, name);
  validate_header(mapping->header(), mapping->capacity(), type, name);
  return std::shared_ptr<Segment>(new Segment(name, std::move(mapping), false));
}

std::shared_ptr<Segment> Segment::open_or_create(std::string_view raw_name,
                                                 const QueueOptions& options, const TypeTag& type) {
  const std::string name = validate_name(raw_name);
  for (;;) {
    try {
      return create(name, options, type);
    } catch (const AlreadyExists&) {
    }
    try {
      const bip::shared_memory_object shm = open_file(name);
      const int fd = shm.get_mapping_handle().handle;
      check_ownership(fd, options, name);
      auto mapping = map_published(fd, name);
      validate_header(mapping->header(), mapping->capacity(), &type, name);
      return std::shared_ptr<Segment>(new Segment(name, std::move(mapping), false));
    } catch (const NotFound&) {
      // Removed between our create and our open: race again.
    }
  }
}

bool Segment::remove(std::string_view raw_name) {
  const std::string name = validate_name(raw_name);
  if (shm_unlink(shm_path(name).c_str()) == 0) return true;
  if (errno == ENOENT) return false;
  throw Error("shmq: cannot remove queue " + quoted(name) + ": " + errno_text(errno));
}

QueueStats Segment::stats() const {
  const SharedHeader& h = *header_;
  const auto relaxed = std::memory_order_relaxed;
  const Occupancy now = ring_.occupancy();
  QueueStats s;
  s.name = name_;
  s.type_name = type_name_;
  s.messages = now.messages;
  s.bytes_used = now.bytes;
  s.capacity_bytes = ring_.capacity();
  s.maxsize = ring_.maxsize();
  s.mode = h.mode;
  s.creator_pid = h.creator_pid;
  s.created_unix_ns = h.created_unix_ns;
  s.shut_down = ring_.shutdown_state() != ShutdownState::running;
  s.puts = ring_.puts();
  s.gets = ring_.gets();
  s.put_timeouts = h.put_timeouts.load(relaxed);
  s.get_timeouts = h.get_timeouts.load(relaxed);
  s.full_waits = h.full_waits.load(relaxed);
  s.empty_waits = h.empty_waits.load(relaxed);
  s.lock_recoveries = h.lock_recoveries.load(relaxed);
  s.peak_depth = h.peak_depth.load(relaxed);
  s.sleeping_producers = sleepers_of(h.not_full.sleep.load(relaxed));
  s.sleeping_consumers = sleepers_of(h.not_empty.sleep.load(relaxed));
  s.put_lock_holder = static_cast<pid_t>(h.put_lock.word.load(relaxed) & FUTEX_TID_MASK);
  s.get_lock_holder = static_cast<pid_t>(h.get_lock.word.load(relaxed) & FUTEX_TID_MASK);
  return s;
}

std::size_t remove_segments_with_prefix(std::string_view prefix) {
  const std::string full = std::string(kSegmentPrefix) + std::string(prefix);
  std::size_t removed = 0;
  if (DIR* dir = opendir("/dev/shm")) {
    while (const dirent* entry = readdir(dir)) {
      if (std::string_view(entry->d_name).substr(0, full.size()) == full &&
          shm_unlink(("/" + std::string(entry->d_name)).c_str()) == 0) {
        ++removed;
      }
    }
    closedir(dir);
  }
  return removed;
}

void Segment::throw_too_large(std::size_t bytes) const {
  throw MessageTooLarge("shmq: a message of " + std::to_string(bytes) + " bytes can never fit queue " +
                        quoted(name_) + ": its ring of " + std::to_string(ring_.capacity()) +
                        " bytes holds messages of at most " + std::to_string(ring_.max_payload()) +
                        " bytes");
}

namespace {

std::string how_long(const Deadline& deadline, const char* call) {
  if (deadline.is_now()) return std::string(" (") + call + ")";
  char buf[96];
  std::snprintf(buf, sizeof buf, " (%s timed out after %.3f s)", call,
                std::chrono::duration<double>(deadline.timeout()).count());
  return buf;
}

}  // namespace

void Segment::throw_put_failure(Outcome outcome, const Deadline& deadline, const char* call) const {
  if (outcome == Outcome::shut_down) {
    throw ShutDown("shmq: queue " + quoted(name_) + " is shut down: " + call + " refused");
  }
  const Occupancy now = ring_.occupancy();
  const std::string limit =
      ring_.maxsize() != 0 ? " (maxsize " + std::to_string(ring_.maxsize()) + ")" : "";
  throw Full("shmq: queue " + quoted(name_) + " is full: " + std::to_string(now.messages) +
             " messages" + limit + ", " + std::to_string(now.bytes) + " of " +
             std::to_string(ring_.capacity()) + " bytes used" + how_long(deadline, call));
}

void Segment::throw_get_failure(Outcome outcome, const Deadline& deadline, const char* call) const {
  if (outcome == Outcome::shut_down) {
    throw ShutDown("shmq: queue " + quoted(name_) + " is shut down and drained: " + call + " refused");
  }
  throw Empty("shmq: queue " + quoted(name_) + " is empty" + how_long(deadline, call));
}

}  // namespace shmq::detail
