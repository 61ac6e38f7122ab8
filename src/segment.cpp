// Creating, opening, validating, mapping and removing queue segments.
#include "shmq/detail/segment.hpp"

#include "shmq/detail/demangle.hpp"
#include "shmq/detail/listeners.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <thread>

namespace bip = boost::interprocess;

namespace shmq::detail {

namespace {

// How long an opener waits for a creator that has made the file but not yet published its header.
constexpr std::chrono::seconds kInitPatience{2};
constexpr unsigned kMaxSpinPolls = 1u << 20;

std::string quoted(const std::string& name) {
  return "'" + name + "'";
}
std::string described(const std::string& name) {
  return "queue " + quoted(name);
}

std::string shm_path(const std::string& name) {
  return "/" + std::string(kSegmentPrefix) + name;
}

std::string errno_text(int err) {
  return std::strerror(err);
}

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
// What a queue's lease area holds (its header's lease fields, validated; see layout.hpp).
struct LeaseGeometry {
  std::uint32_t slots = 0;
  std::uint32_t payload = 0;
  std::uint64_t timeout_ns = 0;
  std::uint32_t max_deliveries = 0;
  std::string dead_letter_queue;

  // Bytes of the area in the file, after the ring: whole pages, none without slots.
  std::size_t area_bytes() const noexcept {
    if (slots == 0) return 0;
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    return (slots * lease_stride(payload) + page - 1) / page * page;
  }
};

// The header, ring and lease area mapped once, then the ring mapped again right after itself,
// and the lease area after that:
//
//   base: [ header | ring ][ ring again ][ lease area ]
//
class Mapping {
 public:
  Mapping(int fd, std::size_t capacity, LeaseGeometry leases, const std::string& what)
      : bytes_(kHeaderBytes + 2 * capacity + leases.area_bytes()),
        capacity_(capacity),
        leases_(std::move(leases)) {
    void* reserved =
        mmap(nullptr, bytes_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (reserved == MAP_FAILED) fail(errno, what);
    base_ = static_cast<std::byte*>(reserved);
    const int prot = PROT_READ | PROT_WRITE;
    if (mmap(base_, kHeaderBytes + capacity, prot, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED ||
        mmap(base_ + kHeaderBytes + capacity, capacity, prot, MAP_SHARED | MAP_FIXED, fd,
             static_cast<off_t>(kHeaderBytes)) == MAP_FAILED ||
        (leases_.slots != 0 &&
         mmap(lease_area(), leases_.area_bytes(), prot, MAP_SHARED | MAP_FIXED, fd,
              static_cast<off_t>(kHeaderBytes + capacity)) == MAP_FAILED)) {
      const int err = errno;
      munmap(base_, bytes_);
      fail(err, what);
    }
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    forget_listeners(base_, kHeaderBytes);  // the Notifier write ends kept for this header
    munmap(base_, bytes_);
  }

  SharedHeader& header() const noexcept { return *reinterpret_cast<SharedHeader*>(base_); }
  std::byte* ring() const noexcept { return base_ + kHeaderBytes; }
  std::size_t capacity() const noexcept { return capacity_; }
  std::byte* lease_area() const noexcept { return base_ + kHeaderBytes + 2 * capacity_; }
  const LeaseGeometry& leases() const noexcept { return leases_; }

 private:
  [[noreturn]] static void fail(int err, const std::string& what) {
    throw Error("shmq: cannot map " + what + ": " + errno_text(err));
  }

  std::byte* base_ = nullptr;
  std::size_t bytes_;
  std::size_t capacity_;
  LeaseGeometry leases_;
};

namespace {

// A descriptor, closed at the end of its scope unless released.
class UniqueFd {
 public:
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const noexcept { return fd_; }
  int release() noexcept { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

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
  LeaseGeometry leases;
};

// The lease options, checked against the ring's capacity.
LeaseGeometry check_lease_options(const QueueOptions& o, std::uint32_t capacity,
                                  const std::string& where) {
  const std::uint32_t ring_payload = capacity - static_cast<std::uint32_t>(kFrameHeaderBytes);
  if (o.max_leases == 0) {
    if (o.lease_timeout.count() != 0 || o.max_deliveries != 0 || !o.dead_letter_queue.empty() ||
        o.lease_message_bytes != 0) {
      throw InvalidArgument(where +
                            "lease_timeout, max_deliveries, dead_letter_queue and "
                            "lease_message_bytes need max_leases (leased gets) above 0");
    }
    return {};
  }
  if (o.max_leases > kMaxLeaseSlots) {
    throw InvalidArgument(where + "max_leases of " + std::to_string(o.max_leases) + " exceeds " +
                          std::to_string(kMaxLeaseSlots));
  }
  if (o.lease_message_bytes > ring_payload) {
    throw InvalidArgument(
        where + "lease_message_bytes of " + std::to_string(o.lease_message_bytes) +
        " exceeds the ring's largest message of " + std::to_string(ring_payload) + " bytes");
  }
  LeaseGeometry g;
  g.slots = static_cast<std::uint32_t>(o.max_leases);
  g.payload =
      o.lease_message_bytes != 0 ? static_cast<std::uint32_t>(o.lease_message_bytes) : ring_payload;
  if (std::size_t{g.slots} * lease_stride(g.payload) > kMaxLeaseAreaBytes) {
    throw InvalidArgument(where + "max_leases of " + std::to_string(g.slots) +
                          " slots of messages up to " + std::to_string(g.payload) +
                          " bytes (lease_message_bytes) need over 1 GiB");
  }
  if (o.lease_timeout.count() < 0) {
    throw InvalidArgument(where + "lease_timeout of " + std::to_string(o.lease_timeout.count()) +
                          " ms is negative");
  }
  g.timeout_ns = static_cast<std::uint64_t>(std::chrono::nanoseconds(o.lease_timeout).count());
  if (o.max_deliveries > LeaseState::kMaxDeliveries - 1) {
    throw InvalidArgument(where + "max_deliveries of " + std::to_string(o.max_deliveries) +
                          " exceeds " + std::to_string(LeaseState::kMaxDeliveries - 1));
  }
  if (o.max_deliveries != 0 && o.dead_letter_queue.empty()) {
    throw InvalidArgument(where + "max_deliveries needs a dead_letter_queue to send messages to");
  }
  if (o.dead_letter_queue.size() >= kTypeNameBytes) {
    throw InvalidArgument(where + "dead_letter_queue's name is longer than " +
                          std::to_string(kTypeNameBytes - 1) + " bytes");
  }
  g.max_deliveries = o.max_deliveries;
  g.dead_letter_queue = o.dead_letter_queue;
  return g;
}

// `what` names the queue in messages: "queue 'jobs'", "unnamed queue (pid 1234, #3)".
CheckedOptions check_options(const QueueOptions& o, const std::string& what) {
  const std::string where = "shmq: " + what + ": ";
  if (o.capacity_bytes == 0 || o.capacity_bytes > kMaxCapacity) {
    throw InvalidArgument(where + "capacity_bytes of " + std::to_string(o.capacity_bytes) +
                          " is outside 1 byte to " + std::to_string(kMaxCapacity) + " (1 GiB)");
  }
  if (o.maxsize > INT32_MAX) {
    throw InvalidArgument(where + "maxsize of " + std::to_string(o.maxsize) + " exceeds " +
                          std::to_string(INT32_MAX));
  }
  if ((o.mode & ~mode_t{0777}) != 0 || (o.mode & 0600) != 0600) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(o.mode));
    throw InvalidArgument(where + "mode " + buf +
                          " must be permission bits only (at most 0777) that include 0600");
  }
  if (o.spin_polls > kMaxSpinPolls) {
    throw InvalidArgument(where + "spin_polls of " + std::to_string(o.spin_polls) + " exceeds " +
                          std::to_string(kMaxSpinPolls));
  }
  if (kHeaderBytes % page_size() != 0) {
    throw Error("shmq: pages of " + std::to_string(page_size()) + " bytes are not supported");
  }
  const std::size_t pages =
      (std::max(o.capacity_bytes, kMinCapacity) + page_size() - 1) / page_size();
  const auto capacity = static_cast<std::uint32_t>(pages * page_size());
  return {capacity, static_cast<std::uint32_t>(o.maxsize), check_lease_options(o, capacity, where)};
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
  h.created_unix_ns =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count());
  std::snprintf(h.type_name, sizeof h.type_name, "%s", type.name.c_str());
  h.lease_slots = sizes.leases.slots;
  h.lease_payload = sizes.leases.payload;
  h.lease_timeout_ns = sizes.leases.timeout_ns;
  h.max_deliveries = sizes.leases.max_deliveries;
  std::snprintf(h.dead_letter_queue, sizeof h.dead_letter_queue, "%s",
                sizes.leases.dead_letter_queue.c_str());
  h.magic.store(kMagic, std::memory_order_release);  // last: publishes everything above
}

// This process's RLIMIT_FSIZE, or nullopt if it has none.
std::optional<rlim_t> file_size_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_FSIZE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return std::nullopt;
  return limit.rlim_cur;
}

[[noreturn]] void throw_over_file_size_limit(std::size_t bytes, rlim_t limit,
                                             const std::string& what) {
  throw Error("shmq: cannot create " + what + ": it needs a file of " + std::to_string(bytes) +
              " bytes, over this process's RLIMIT_FSIZE of " + std::to_string(limit) + " bytes");
}

// Gives a new segment its whole size at once, every page reserved: no room (a full /dev/shm, no
// memory) is an error here, never a SIGBUS in a later put. RLIMIT_FSIZE is checked first: going
// over it would raise SIGXFSZ, which kills by default (with SIGXFSZ ignored the call fails with
// EFBIG, reported the same way).
void reserve(int fd, std::size_t bytes, const std::string& what) {
  if (const auto limit = file_size_limit(); limit && bytes > *limit) {
    throw_over_file_size_limit(bytes, *limit, what);
  }
  if (const int err = posix_fallocate(fd, 0, static_cast<off_t>(bytes)); err != 0) {
    const auto limit = file_size_limit();  // lowered by another thread since the check?
    if (err == EFBIG && limit) throw_over_file_size_limit(bytes, *limit, what);
    throw Error("shmq: cannot reserve " + std::to_string(bytes) + " bytes for " + what + ": " +
                errno_text(err));
  }
}

// Maps a reserved segment and publishes its header.
std::unique_ptr<Mapping> initialise(int fd, const CheckedOptions& sizes,
                                    const QueueOptions& options, const TypeTag& type,
                                    const std::string& what) {
  auto mapping = std::make_unique<Mapping>(fd, sizes.capacity, sizes.leases, what);
  init_header(mapping->header(), sizes, options, type);
  return mapping;
}

// What an opener checks of the header besides its geometry (checked by geometry(), which made
// the mapping).
void validate_header(const SharedHeader& h, const TypeTag* type, const std::string& what) {
  const std::string where = "shmq: " + what + " is incompatible: ";
  if (h.maxsize > INT32_MAX || h.spin_polls > kMaxSpinPolls) {
    throw Incompatible(where + "maxsize " + std::to_string(h.maxsize) + " or spin_polls " +
                       std::to_string(h.spin_polls) + " is out of range");
  }
  if (type != nullptr && h.type_fingerprint != type->fingerprint) {
    const std::string theirs(h.type_name, strnlen(h.type_name, sizeof h.type_name));
    throw Incompatible(where + "it carries messages of type " + theirs + " (" +
                       hex(h.type_fingerprint) + "), not " + type->name + " (" +
                       hex(type->fingerprint) + ")");
  }
}

// The header page alone, read-only: what an opener reads before it knows the segment's geometry.
class HeaderView {
 public:
  HeaderView(int fd, const std::string& what)
      : p_(mmap(nullptr, kHeaderBytes, PROT_READ, MAP_SHARED, fd, 0)) {
    if (p_ == MAP_FAILED) throw Error("shmq: cannot map " + what + ": " + errno_text(errno));
  }
  HeaderView(const HeaderView&) = delete;
  HeaderView& operator=(const HeaderView&) = delete;
  ~HeaderView() { munmap(p_, kHeaderBytes); }
  const SharedHeader& header() const noexcept { return *static_cast<const SharedHeader*>(p_); }

 private:
  void* p_;
};

// The ring's capacity and the lease area a published header describes, checked against each other
// and against the file's `size`: whatever the header says, the mapping made from them matches the
// file. Read once: a peer changing the header later cannot change this process's copies.
std::pair<std::size_t, LeaseGeometry> geometry(const SharedHeader& h, std::size_t size,
                                               const std::string& what) {
  const std::string where = "shmq: " + what + " is incompatible: ";
  if (h.layout_version != kLayoutVersion) {
    throw Incompatible(where + "layout version " + std::to_string(h.layout_version) +
                       ", this library reads version " + std::to_string(kLayoutVersion));
  }
  const std::uint64_t capacity = h.capacity_bytes;
  LeaseGeometry leases;
  leases.slots = h.lease_slots;
  leases.payload = h.lease_payload;
  leases.timeout_ns = h.lease_timeout_ns;
  leases.max_deliveries = h.max_deliveries;
  const char* dlq = h.dead_letter_queue;
  const std::size_t dlq_length = strnlen(dlq, sizeof h.dead_letter_queue);
  const bool leases_fit =
      leases.slots <= kMaxLeaseSlots && leases.max_deliveries < LeaseState::kMaxDeliveries &&
      dlq_length < sizeof h.dead_letter_queue &&
      (leases.slots == 0 ||
       (capacity >= kFrameHeaderBytes && leases.payload <= capacity - kFrameHeaderBytes &&
        leases.slots * lease_stride(leases.payload) <= kMaxLeaseAreaBytes));
  if (!leases_fit) {
    throw Incompatible(where + "its lease fields are out of range (" +
                       std::to_string(leases.slots) + " slots of " +
                       std::to_string(leases.payload) + " bytes)");
  }
  if (leases.slots == 0) leases = LeaseGeometry{};
  leases.dead_letter_queue.assign(dlq, dlq_length);
  if (h.header_bytes != kHeaderBytes || capacity < kMinCapacity || capacity > kMaxCapacity ||
      capacity % page_size() != 0 || kHeaderBytes + capacity + leases.area_bytes() != size) {
    throw Incompatible(where + "its header claims " + std::to_string(h.header_bytes) + " + " +
                       std::to_string(capacity) + " + " + std::to_string(leases.area_bytes()) +
                       " bytes (header, ring, lease area), its file holds " + std::to_string(size));
  }
  return {static_cast<std::size_t>(capacity), std::move(leases)};
}

// Whether an opener may find a segment whose creator has not yet published its header: a named
// one, made before it is initialised; never an unnamed one, reachable only once initialised.
enum class Publication { may_be_pending, done };

// Polls fd until its creator has published it: `published` is handed the file's current stat and
// returns the opened object once the creator's last store is visible, or null while it is not. A
// segment whose publication may be pending gets kInitPatience; any other must be published already.
template <class Published>
auto await_publication(int fd, const std::string& what, Publication publication,
                       Published&& published) {
  const auto give_up =
      std::chrono::steady_clock::now() +
      (publication == Publication::may_be_pending ? kInitPatience : std::chrono::seconds(0));
  for (auto pause = std::chrono::microseconds(50);;
       pause = std::min(pause * 2, decltype(pause)(5000))) {
    struct stat st;
    if (fstat(fd, &st) != 0) {
      throw Error("shmq: cannot stat " + what + ": " + errno_text(errno));
    }
    if (auto object = published(st)) return object;
    if (std::chrono::steady_clock::now() >= give_up) {
      throw Incompatible("shmq: " + what + " was never initialised" +
                         (publication == Publication::may_be_pending
                              ? " (did its creator die while creating it?); remove it"
                              : ""));
    }
    std::this_thread::sleep_for(pause);
  }
}

// Maps the segment behind fd once its creator has published the header. The size comes from
// fstat, never from the header, so the mapping always matches the file.
std::unique_ptr<Mapping> map_published(int fd, const std::string& what, Publication publication) {
  return await_publication(fd, what, publication, [&](const struct stat& st) {
    const auto size = static_cast<std::size_t>(st.st_size);
    std::unique_ptr<Mapping> mapping;
    if (size == 0) return mapping;  // the creator sets the whole size in one posix_fallocate
    if (size < kHeaderBytes + kMinCapacity || (size - kHeaderBytes) % page_size() != 0) {
      throw Incompatible("shmq: " + what + " is not a shmq queue: a segment of " +
                         std::to_string(size) + " bytes");
    }
    const HeaderView view(fd, what);
    const std::uint64_t magic = view.header().magic.load(std::memory_order_acquire);
    if (magic == kMagic) {
      const auto [capacity, leases] = geometry(view.header(), size, what);
      mapping = std::make_unique<Mapping>(fd, capacity, leases, what);
    } else if (magic != 0) {
      throw Incompatible("shmq: " + what + " is not a shmq queue (magic " + hex(magic) + ")");
    }
    return mapping;
  });
}

// Refuses to share a segment that open_or_create did not make and would not have made.
void check_ownership(int fd, const QueueOptions& options, const std::string& what) {
  struct stat st;
  if (fstat(fd, &st) != 0) throw Error("shmq: cannot stat " + what + ": " + errno_text(errno));
  if (st.st_uid != geteuid()) {
    throw Error("shmq: " + what + " belongs to uid " + std::to_string(st.st_uid) +
                ", not to this user (uid " + std::to_string(geteuid()) + "): refusing to use it");
  }
  const auto mode = static_cast<unsigned>(st.st_mode & 0777);
  if ((mode & ~static_cast<unsigned>(options.mode)) != 0) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "mode %04o, wider than the %04o asked for", mode,
                  static_cast<unsigned>(options.mode));
    throw Error("shmq: " + what + " has " + buf + ": refusing to use it");
  }
}

// A failed call that takes a descriptor (memfd_create, open), explained.
[[noreturn]] void throw_descriptor_error(int err, const std::string& doing,
                                         const std::string& what) {
  std::string why = errno_text(err);
  if (err == EMFILE) {
    rlimit limit{};
    getrlimit(RLIMIT_NOFILE, &limit);
    why += " (this process has all of its RLIMIT_NOFILE of " + std::to_string(limit.rlim_cur) +
           " descriptors open; the creator of an unnamed queue keeps one per queue it holds)";
  } else if (err == ENFILE) {
    why += " (the system's table of open files is full)";
  }
  throw Error("shmq: cannot " + doing + " " + what + ": " + why);
}

// ---- Unnamed queues.
//
// What identifies one: its creator (pid and start time: pids are recycled), a counter of the
// creator's unnamed queues, and the creator's descriptor for its memfd. The memfd is named after
// the first three, so an opener can check, through /proc, that the descriptor is still that memfd.
struct UnnamedId {
  pid_t pid;
  std::uint64_t counter;
  std::uint64_t start_ticks;
  int fd;
};

constexpr std::uint64_t kMaxPid = 4194304;  // PID_MAX_LIMIT on 64-bit Linux

std::string memfd_name(const UnnamedId& id) {
  return "shmq.unnamed." + std::to_string(id.pid) + "." + std::to_string(id.counter);
}

// How /proc shows the memfd as a descriptor's target.
std::string memfd_link_target(const UnnamedId& id) {
  return "/memfd:" + memfd_name(id) + " (deleted)";
}

std::string unnamed_label(const UnnamedId& id) {
  return "unnamed queue (pid " + std::to_string(id.pid) + ", #" + std::to_string(id.counter) + ")";
}

std::string unnamed_name(const UnnamedId& id) {
  return std::string(kUnnamedPrefix) + std::to_string(id.pid) + "/" + std::to_string(id.fd) + "/" +
         std::to_string(id.counter) + "/" + std::to_string(id.start_ticks);
}

// A memfd for an unnamed queue. Close-on-exec: a program this process execs must neither keep the
// queue alive nor use it. Never executable (MFD_NOEXEC_SEAL, Linux 6.3 on: a system set to
// vm.memfd_noexec = 2 refuses memfds without it); older kernels reject the flag, and get none.
int make_memfd(const UnnamedId& id) {
  constexpr unsigned kNoExecSeal = 0x0008U;  // MFD_NOEXEC_SEAL, missing from older headers
  const unsigned flags = MFD_CLOEXEC | MFD_ALLOW_SEALING;
  const int fd = memfd_create(memfd_name(id).c_str(), flags | kNoExecSeal);
  if (fd >= 0 || errno != EINVAL) return fd;
  return memfd_create(memfd_name(id).c_str(), flags);
}

// A new unnamed queue's or object's identity, its descriptor still to be filled in: the counter is
// one for both, so that no two memfds of this process share a name.
UnnamedId new_unnamed_id() {
  static std::atomic<std::uint64_t> made{0};
  return {getpid(), made.fetch_add(1, std::memory_order_relaxed) + 1,
          process_start_ticks(getpid()).value_or(0), -1};
}

// Takes one field of an unnamed queue's name off the front of `rest`: decimal digits up to the
// next '/' (or the end, for the last), no sign, no leading zero, at most `max`.
bool take_field(std::string_view& rest, bool last, std::uint64_t max, std::uint64_t& value) {
  const std::size_t end = last ? rest.size() : rest.find('/');
  if (end == std::string_view::npos || end == 0 || (end > 1 && rest[0] == '0')) return false;
  const char* const stop = rest.data() + end;
  const auto [ptr, ec] = std::from_chars(rest.data(), stop, value);
  if (ec != std::errc() || ptr != stop || value > max) return false;
  rest.remove_prefix(last ? end : end + 1);
  return true;
}

// Parses the name() of an unnamed queue's handle; throws InvalidArgument for anything else.
UnnamedId parse_unnamed(std::string_view name) {
  std::string_view rest = name.substr(kUnnamedPrefix.size());
  std::uint64_t pid = 0, fd = 0, counter = 0, start_ticks = 0;
  if (!take_field(rest, false, kMaxPid, pid) || pid == 0 ||
      !take_field(rest, false, INT32_MAX, fd) || !take_field(rest, false, UINT64_MAX, counter) ||
      counter == 0 || !take_field(rest, true, UINT64_MAX, start_ticks)) {
    throw InvalidArgument("shmq: " + quoted(std::string(name.substr(0, 100))) +
                          " is not an unnamed queue's name (unnamed/PID/FD/COUNTER/START)");
  }
  return {static_cast<pid_t>(pid), counter, start_ticks, static_cast<int>(fd)};
}

// A symbolic link's target (for /proc's magic links: what the descriptor is); sets errno and
// returns nullopt if it cannot be read.
std::optional<std::string> link_target(const std::string& path) {
  char buf[512];
  const ssize_t n = readlink(path.c_str(), buf, sizeof buf);
  if (n < 0) return std::nullopt;
  if (static_cast<std::size_t>(n) == sizeof buf) return std::string();  // too long to be ours
  return std::string(buf, static_cast<std::size_t>(n));
}

}  // namespace

// The creator's descriptor for an unnamed queue's memfd: what lets another process open it.
class Segment::Descriptor {
 public:
  explicit Descriptor(int fd) : fd_(fd) {
    struct stat st;
    if (fstat(fd, &st) != 0) throw Error("shmq: cannot stat a new memfd: " + errno_text(errno));
    device_ = st.st_dev;
    inode_ = st.st_ino;
  }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  // A forked child inherits the descriptor with the Segment and closes its copy too, unless the
  // number now stands for another file (the child closed ours itself).
  ~Descriptor() {
    struct stat st;
    if (fstat(fd_, &st) == 0 && st.st_dev == device_ && st.st_ino == inode_) close(fd_);
  }

 private:
  int fd_;
  dev_t device_;
  ino_t inode_;
};

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
  } else if (shown.rfind(kUnnamedPrefix, 0) == 0) {
    problem =
        "is an unnamed queue's: only open() takes it, and an unnamed queue has nothing to remove";
  } else if (name.find('/') != std::string_view::npos) {
    problem = "holds a '/' after the first character";
  } else if (name.find('\0') != std::string_view::npos) {
    problem = "holds a NUL byte";
  }
  if (problem != nullptr)
    throw InvalidArgument("shmq: queue name " + quoted(shown) + " " + problem);
  return std::string(name);
}
static_assert(kMaxNameBytes == 250, "validate_name's message states the limit");

std::string mapped_file(std::string_view name) {
  if (name.rfind(kUnnamedPrefix, 0) == 0) return "/memfd:" + memfd_name(parse_unnamed(name));
  return "/dev/shm" + shm_path(validate_name(name));
}

std::optional<ProcessStat> process_stat(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return std::nullopt;
  // Field 3 is the state, field 4 the parent's pid, field 22 starttime; the command name (field 2)
  // may hold spaces and ')', so count from the last ')'.
  const auto close = line.rfind(')');
  if (close == std::string::npos || close + 2 >= line.size()) return std::nullopt;
  const char state = line[close + 2];
  int parent = 0;
  if (std::sscanf(line.c_str() + close + 3, " %d", &parent) != 1) return std::nullopt;
  const char* p = line.c_str() + close + 1;
  for (int field = 3; field < 22 && p != nullptr; ++field) p = std::strchr(p + 1, ' ');
  unsigned long long ticks = 0;
  if (p == nullptr || std::sscanf(p, " %llu", &ticks) != 1) return std::nullopt;
  return ProcessStat{state, ticks, static_cast<pid_t>(parent)};
}

std::optional<std::uint64_t> process_start_ticks(pid_t pid) {
  const auto stat = process_stat(pid);
  if (!stat) return std::nullopt;
  return stat->start_ticks;
}

namespace {

// A queue's dead-letter queue must exist when the queue is made, carry the same type, and not be
// the queue itself (`name`, empty for an unnamed queue, which cannot yet be named).
void check_dead_letter_queue(const LeaseGeometry& leases, const std::string& name,
                             const TypeTag& type, const std::string& what) {
  if (leases.dead_letter_queue.empty()) return;
  std::string_view target = leases.dead_letter_queue;
  if (target.front() == '/') target.remove_prefix(1);
  if (!name.empty() && target == name) {
    throw InvalidArgument("shmq: " + what + " cannot be its own dead_letter_queue");
  }
  (void)Segment::open(leases.dead_letter_queue, &type);  // throws NotFound or Incompatible
}

}  // namespace

Segment::Segment(std::string name, std::string label, std::unique_ptr<Mapping> mapping,
                 std::unique_ptr<Descriptor> kept)
    : name_(std::move(name)),
      label_(std::move(label)),
      description_(name_.rfind(kUnnamedPrefix, 0) == 0 ? label_ : described(label_)),
      mapping_(std::move(mapping)),
      header_(&mapping_->header()),
      type_name_(header_->type_name, strnlen(header_->type_name, sizeof header_->type_name)),
      leases_(mapping_->leases().slots == 0
                  ? nullptr
                  : std::make_unique<LeaseTable>(
                        *header_, mapping_->lease_area(), mapping_->leases().slots,
                        mapping_->leases().payload, mapping_->leases().timeout_ns,
                        mapping_->leases().max_deliveries, mapping_->leases().dead_letter_queue,
                        description_)),
      ring_(*header_, mapping_->ring(), static_cast<std::uint32_t>(mapping_->capacity()),
            static_cast<std::uint32_t>(header_->maxsize), header_->spin_polls, description_,
            leases_.get()),
      kept_(std::move(kept)) {}

Segment::~Segment() = default;

std::shared_ptr<Segment> Segment::create(std::string_view raw_name, const QueueOptions& options,
                                         const TypeTag& type) {
  const std::string name = validate_name(raw_name);
  const std::string what = described(name);
  const CheckedOptions sizes = check_options(options, what);
  check_dead_letter_queue(sizes.leases, name, type, what);
  bip::shared_memory_object shm;
  try {
    shm = bip::shared_memory_object(bip::create_only, shm_path(name).c_str(), bip::read_write,
                                    bip::permissions(static_cast<int>(options.mode)));
  } catch (const bip::interprocess_exception& e) {
    if (native_error(e) == EEXIST) throw AlreadyExists("shmq: " + what + " already exists");
    throw Error("shmq: cannot create " + what + ": " + errno_text(native_error(e)));
  }
  RemoveUnlessReleased undo(name);  // whatever fails below leaves nothing at the name
  const int fd = shm.get_mapping_handle().handle;
  reserve(fd, kHeaderBytes + sizes.capacity + sizes.leases.area_bytes(), what + " in /dev/shm");
  auto mapping = initialise(fd, sizes, options, type, what);
  auto segment = std::shared_ptr<Segment>(new Segment(name, name, std::move(mapping), nullptr));
  undo.release();
  return segment;
}

std::shared_ptr<Segment> Segment::create_anonymous(const QueueOptions& options,
                                                   const TypeTag& type) {
  UnnamedId id = new_unnamed_id();
  const std::string what = unnamed_label(id);
  const CheckedOptions sizes = check_options(options, what);
  check_dead_letter_queue(sizes.leases, "", type, what);
  UniqueFd memfd(make_memfd(id));
  if (memfd.get() < 0) throw_descriptor_error(errno, "create", what);
  reserve(memfd.get(), kHeaderBytes + sizes.capacity + sizes.leases.area_bytes(), what);
  // Sealed at its size: no process can shrink it under another's mapping (which would SIGBUS it),
  // grow it, or change the seals.
  if (fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    throw Error("shmq: cannot seal " + what + ": " + errno_text(errno));
  }
  auto mapping = initialise(memfd.get(), sizes, options, type, what);
  id.fd = memfd.get();
  auto kept = std::make_unique<Descriptor>(memfd.get());
  memfd.release();
  return std::shared_ptr<Segment>(
      new Segment(unnamed_name(id), what, std::move(mapping), std::move(kept)));
}

namespace {

// Opens the segment's file, mapping Boost's errors to ours.
bip::shared_memory_object open_file(const std::string& name) {
  try {
    return bip::shared_memory_object(bip::open_only, shm_path(name).c_str(), bip::read_write);
  } catch (const bip::interprocess_exception& e) {
    if (native_error(e) == ENOENT) throw NotFound("shmq: no queue named " + quoted(name));
    throw Error("shmq: cannot open " + described(name) + ": " + errno_text(native_error(e)));
  }
}

// Opens an unnamed queue's memfd through its creator's descriptor, checking before the open that
// the descriptor is that memfd (never opening a FIFO, a device or another file that took its
// number), and after it that what was opened is still that memfd, sealed at its size.
UniqueFd open_unnamed(const UnnamedId& id, const std::string& what) {
  const auto gone = [&](const std::string& why) {
    return NotFound("shmq: " + what + " cannot be opened: " + why);
  };
  const auto check_creator_runs = [&] {
    if (process_start_ticks(id.pid) != id.start_ticks) {
      throw gone(
          "its creator has exited (an unnamed queue opens by name only while its creator holds "
          "it)");
    }
  };
  check_creator_runs();
  const std::string link = "/proc/" + std::to_string(id.pid) + "/fd/" + std::to_string(id.fd);
  const std::string expected = memfd_link_target(id);
  const auto target = link_target(link);
  if (!target) {
    if (errno == EACCES || errno == EPERM) {
      throw Error("shmq: cannot open " + what + ": " + link + " is closed to this process (" +
                  errno_text(errno) + "): its creator runs as another user, or is not dumpable");
    }
    throw gone("its creator no longer holds it");
  }
  if (*target != expected)
    throw gone("its creator no longer holds it (descriptor " + std::to_string(id.fd) +
               " is another file)");
  UniqueFd fd(open(link.c_str(), O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (fd.get() < 0) {
    if (errno == ENOENT) throw gone("its creator no longer holds it");
    throw_descriptor_error(errno, "open", what);
  }
  struct stat st;
  if (fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) ||
      link_target("/proc/self/fd/" + std::to_string(fd.get())) != expected) {
    throw gone("its creator no longer holds it (descriptor " + std::to_string(id.fd) +
               " changed while it was opened)");
  }
  // The creator ran before the look and still runs after the open, so the pid was never recycled
  // in between: what was opened is the creator's memfd, not a namesake of a later process.
  check_creator_runs();
  constexpr int kSealedSize = F_SEAL_SHRINK | F_SEAL_GROW;
  const int seals = fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0 || (seals & kSealedSize) != kSealedSize) {
    throw Incompatible("shmq: " + what +
                       " is not a shmq queue: its memfd is not sealed at its size");
  }
  return fd;
}

}  // namespace

std::shared_ptr<Segment> Segment::open(std::string_view raw_name, const TypeTag* type) {
  if (raw_name.rfind(kUnnamedPrefix, 0) == 0) {
    const UnnamedId id = parse_unnamed(raw_name);
    const std::string what = unnamed_label(id);
    const UniqueFd fd = open_unnamed(id, what);
    auto mapping = map_published(fd.get(), what, Publication::done);
    validate_header(mapping->header(), type, what);
    return std::shared_ptr<Segment>(
        new Segment(std::string(raw_name), what, std::move(mapping), nullptr));
  }
  const std::string name = validate_name(raw_name);
  const std::string what = described(name);
  const bip::shared_memory_object shm = open_file(name);
  auto mapping = map_published(shm.get_mapping_handle().handle, what, Publication::may_be_pending);
  validate_header(mapping->header(), type, what);
  return std::shared_ptr<Segment>(new Segment(name, name, std::move(mapping), nullptr));
}

std::shared_ptr<Segment> Segment::open_or_create(std::string_view raw_name,
                                                 const QueueOptions& options, const TypeTag& type) {
  const std::string name = validate_name(raw_name);
  const std::string what = described(name);
  for (;;) {
    try {
      return create(name, options, type);
    } catch (const AlreadyExists&) {
    }
    try {
      const bip::shared_memory_object shm = open_file(name);
      const int fd = shm.get_mapping_handle().handle;
      check_ownership(fd, options, what);
      auto mapping = map_published(fd, what, Publication::may_be_pending);
      validate_header(mapping->header(), &type, what);
      return std::shared_ptr<Segment>(new Segment(name, name, std::move(mapping), nullptr));
    } catch (const NotFound&) {
      // Removed between our create and our open: race again.
    }
  }
}

bool Segment::remove(std::string_view raw_name) {
  const std::string name = validate_name(raw_name);
  if (shm_unlink(shm_path(name).c_str()) == 0) return true;
  if (errno == ENOENT) return false;
  throw Error("shmq: cannot remove " + described(name) + ": " + errno_text(errno));
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
  if (leases_ != nullptr) add_lease_stats(s);
  return s;
}

void Segment::add_lease_stats(QueueStats& s) const {
  const LeaseTable& leases = *leases_;
  s.max_leases = leases.slots();
  s.lease_timeout_ns = leases.timeout_ns();
  s.max_deliveries = leases.max_deliveries();
  s.dead_letter_queue = leases.dead_letter_queue();
  s.redeliveries = header_->redeliveries.load(std::memory_order_relaxed);
  s.dead_lettered = header_->dead_lettered.load(std::memory_order_relaxed);
  const std::uint64_t now = monotonic_ns();
  for (std::uint32_t i = 0; i < leases.slots(); ++i) {
    const LeaseState state = leases.state(i);
    if (state.kind == LeaseKind::free) continue;
    QueueStats::Lease lease;
    lease.slot = i;
    lease.deliveries = state.deliveries;
    lease.waiting = state.kind == LeaseKind::ready;
    if (!lease.waiting) {
      lease.holder = static_cast<pid_t>(state.pid);
      lease.holder_alive = holder_alive(state);
      const std::uint64_t taken = leases.slot(i).taken_ns.load(std::memory_order_relaxed);
      lease.age_ns = now > taken ? now - taken : 0;
    }
    s.leases.push_back(lease);
  }
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
  throw MessageTooLarge("shmq: a message of " + std::to_string(bytes) + " bytes can never fit " +
                        description_ + ": its ring of " + std::to_string(ring_.capacity()) +
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

// The message of a call that gave up because `side`'s lock stayed held by another thread or
// process all the time the call could wait for it.
std::string lock_stayed_held(const std::string& description, const RobustMutex& lock,
                             const char* side, const Deadline& deadline, const char* call) {
  const std::uint32_t holder = lock.word.load(std::memory_order_relaxed) & FUTEX_TID_MASK;
  char waited[64];
  std::snprintf(waited, sizeof waited, "%.3f s",
                deadline.is_now()
                    ? std::chrono::duration<double>(RobustLock::kNowaitLockPatience).count()
                    : std::chrono::duration<double>(deadline.timeout()).count());
  return "shmq: " + description + ": the " + side + "' lock stayed held" +
         (holder != 0 ? " by thread " + std::to_string(holder) : std::string()) +
         " (a call in progress elsewhere, or a stopped process) for the " + waited + " " + call +
         " could wait for it; the queue itself may have " +
         (std::string(side) == "producers" ? "room" : "messages");
}

}  // namespace

void Segment::throw_put_failure(Outcome outcome, const Deadline& deadline, const char* call) const {
  if (outcome == Outcome::shut_down) {
    throw ShutDown("shmq: " + description_ + " is shut down: " + call + " refused");
  }
  if (outcome == Outcome::lock_busy) {
    throw Full(lock_stayed_held(description_, header_->put_lock, "producers", deadline, call));
  }
  const Occupancy now = ring_.occupancy();
  const std::string limit =
      ring_.maxsize() != 0 ? " (maxsize " + std::to_string(ring_.maxsize()) + ")" : "";
  throw Full("shmq: " + description_ + " is full: " + std::to_string(now.messages) + " messages" +
             limit + ", " + std::to_string(now.bytes) + " of " + std::to_string(ring_.capacity()) +
             " bytes used" + how_long(deadline, call));
}

void Segment::throw_get_failure(Outcome outcome, const Deadline& deadline, const char* call) const {
  if (outcome == Outcome::shut_down) {
    throw ShutDown("shmq: " + description_ + " is shut down and drained: " + call + " refused");
  }
  if (outcome == Outcome::lock_busy) {
    throw Empty(lock_stayed_held(description_, header_->get_lock, "consumers", deadline, call));
  }
  throw Empty("shmq: " + description_ + " is empty" + how_long(deadline, call));
}

// ---- ObjectFile

namespace {

std::string object_label(std::string_view kind, const std::string& name) {
  return std::string(kind) + " " + quoted(name);
}
std::string unnamed_object_label(std::string_view kind, const UnnamedId& id) {
  return "unnamed " + std::string(kind) + " (pid " + std::to_string(id.pid) + ", #" +
         std::to_string(id.counter) + ")";
}

}  // namespace

ObjectFile::ObjectFile(int fd, std::string name, std::string description, bool keep_fd)
    : name_(std::move(name)), description_(std::move(description)) {
  struct stat st;
  if (fstat(fd, &st) != 0)
    throw Error("shmq: cannot stat " + description_ + ": " + errno_text(errno));
  size_ = static_cast<std::size_t>(st.st_size);
  void* at = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (at == MAP_FAILED) throw Error("shmq: cannot map " + description_ + ": " + errno_text(errno));
  data_ = static_cast<std::byte*>(at);
  if (keep_fd) kept_ = std::make_unique<Segment::Descriptor>(fd);
}

ObjectFile::~ObjectFile() {
  munmap(data_, size_);
}

std::unique_ptr<ObjectFile> ObjectFile::create(std::string_view raw_name, std::size_t bytes,
                                               mode_t mode, std::string_view kind) {
  const std::string name = validate_name(raw_name);
  const std::string what = object_label(kind, name);
  QueueOptions options;
  options.mode = mode;
  check_options(options, what);  // the mode's rules are the queue's
  bip::shared_memory_object shm;
  try {
    shm = bip::shared_memory_object(bip::create_only, shm_path(name).c_str(), bip::read_write,
                                    bip::permissions(static_cast<int>(mode)));
  } catch (const bip::interprocess_exception& e) {
    if (native_error(e) == EEXIST) throw AlreadyExists("shmq: " + what + " already exists");
    throw Error("shmq: cannot create " + what + ": " + errno_text(native_error(e)));
  }
  RemoveUnlessReleased undo(name);
  const int fd = shm.get_mapping_handle().handle;
  reserve(fd, bytes, what + " in /dev/shm");
  auto file = std::unique_ptr<ObjectFile>(new ObjectFile(fd, name, what, false));
  undo.release();
  return file;
}

std::unique_ptr<ObjectFile> ObjectFile::create_anonymous(std::size_t bytes, std::string_view kind) {
  UnnamedId id = new_unnamed_id();
  const std::string what = unnamed_object_label(kind, id);
  UniqueFd memfd(make_memfd(id));
  if (memfd.get() < 0) throw_descriptor_error(errno, "create", what);
  reserve(memfd.get(), bytes, what);
  if (fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    throw Error("shmq: cannot seal " + what + ": " + errno_text(errno));
  }
  id.fd = memfd.get();
  auto file =
      std::unique_ptr<ObjectFile>(new ObjectFile(memfd.get(), unnamed_name(id), what, true));
  memfd.release();
  return file;
}

std::unique_ptr<ObjectFile> ObjectFile::open(std::string_view raw_name, std::string_view kind,
                                             std::optional<mode_t> owner_mode) {
  std::optional<UniqueFd> fd;
  std::string name, what;
  auto publication = Publication::done;
  if (raw_name.rfind(kUnnamedPrefix, 0) == 0) {
    const UnnamedId id = parse_unnamed(raw_name);
    name = std::string(raw_name);
    what = unnamed_object_label(kind, id);
    fd.emplace(open_unnamed(id, what));
  } else {
    name = validate_name(raw_name);
    what = object_label(kind, name);
    UniqueFd opened(::open(("/dev/shm" + shm_path(name)).c_str(),
                           O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK));
    if (opened.get() < 0) {
      if (errno == ENOENT)
        throw NotFound("shmq: no " + std::string(kind) + " named " + quoted(name));
      throw_descriptor_error(errno, "open", what);
    }
    fd.emplace(std::move(opened));
    publication = Publication::may_be_pending;
  }
  if (owner_mode) {
    QueueOptions options;
    options.mode = *owner_mode;
    check_ownership(fd->get(), options, what);
  }
  // As map_published: the creator sets the size in one call, then stores its magic word last.
  return await_publication(fd->get(), what, publication, [&](const struct stat& st) {
    std::unique_ptr<ObjectFile> file;
    if (!S_ISREG(st.st_mode)) throw Incompatible("shmq: " + what + " is not a regular file");
    if (static_cast<std::size_t>(st.st_size) >= sizeof(std::uint64_t)) {
      file.reset(new ObjectFile(fd->get(), name, what, false));
      if (__atomic_load_n(reinterpret_cast<const std::uint64_t*>(file->data()), __ATOMIC_ACQUIRE) ==
          0)
        file.reset();
    } else if (st.st_size != 0) {
      throw Incompatible("shmq: " + what + " is not a shmq object: a file of " +
                         std::to_string(st.st_size) + " bytes");
    }
    return file;
  });
}

}  // namespace shmq::detail
