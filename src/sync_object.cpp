// Synchronisation objects and shared values: making, opening and checking their files, and the
// contended paths of their locks.
#include "shmq/detail/sync_object.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

namespace shmq::detail {

const char* kind_name(std::uint32_t kind) noexcept {
  switch (static_cast<ObjectKind>(kind)) {
    case ObjectKind::lock:
      return "lock";
    case ObjectKind::rlock:
      return "rlock";
    case ObjectKind::semaphore:
      return "semaphore";
    case ObjectKind::bounded_semaphore:
      return "bounded semaphore";
    case ObjectKind::event:
      return "event";
    case ObjectKind::condition:
      return "condition";
    case ObjectKind::barrier:
      return "barrier";
    case ObjectKind::value:
      return "value";
    case ObjectKind::array:
      return "array";
    case ObjectKind::shared_memory:
      return "shared memory";
  }
  return "unknown";
}

namespace {

std::uint64_t payload_bytes(const ObjectSpec& spec) {
  if (spec.kind == ObjectKind::barrier) return std::uint64_t{2} * spec.limit * sizeof(BarrierSlot);
  return spec.data_bytes;
}

std::string spec_label(const ObjectSpec& spec) {
  return kind_name(static_cast<std::uint32_t>(spec.kind));
}

// Checks what the caller asked for before anything is made.
void check_spec(const ObjectSpec& spec, const std::string& what) {
  const std::string where = "shmq: " + what + ": ";
  if (spec.kind == ObjectKind::barrier && (spec.limit == 0 || spec.limit > kMaxBarrierParties)) {
    throw InvalidArgument(where + std::to_string(spec.limit) + " parties: a barrier takes 1 to " +
                          std::to_string(kMaxBarrierParties));
  }
  if (spec.initial_count > kMaxSemaphoreValue) {
    throw InvalidArgument(where + "an initial value of " + std::to_string(spec.initial_count) +
                          " exceeds " + std::to_string(kMaxSemaphoreValue));
  }
  if (spec.data_bytes > kMaxObjectBytes) {
    throw InvalidArgument(where + std::to_string(spec.data_bytes) + " bytes exceeds the limit of " +
                          std::to_string(kMaxObjectBytes) + " (1 TiB)");
  }
  if (spec.lock_name.size() >= kLockNameBytes) {
    throw InvalidArgument(where + "its lock's name is longer than " +
                          std::to_string(kLockNameBytes - 1) + " bytes");
  }
}

void init_header(ObjectHeader& h, const ObjectSpec& spec, mode_t mode) {
  new (&h) ObjectHeader{};
  h.layout_version = kObjectLayoutVersion;
  h.kind = static_cast<std::uint32_t>(spec.kind);
  h.data_bytes = payload_bytes(spec);
  if (spec.type != nullptr) {
    h.type_fingerprint = spec.type->fingerprint;
    std::snprintf(h.type_name, sizeof h.type_name, "%s", spec.type->name.c_str());
  }
  h.element_bytes = spec.element_bytes;
  h.limit = spec.limit;
  h.creator_pid = getpid();
  h.mode = static_cast<std::uint32_t>(mode);
  h.created_unix_ns =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count());
  h.timeout_ns = static_cast<std::uint64_t>(std::max(spec.timeout.count(), std::int64_t{0}));
  h.has_lock = spec.has_lock ? 1 : 0;
  h.lock_kind = static_cast<std::uint32_t>(spec.lock_kind);
  std::snprintf(h.lock_name, sizeof h.lock_name, "%s", spec.lock_name.c_str());
  h.count.store(spec.initial_count, std::memory_order_relaxed);
  h.magic.store(kObjectMagic, std::memory_order_release);  // last: publishes everything above
}

std::unique_ptr<ObjectFile> initialised(std::unique_ptr<ObjectFile> file, const ObjectSpec& spec,
                                        mode_t mode) {
  init_header(*reinterpret_cast<ObjectHeader*>(file->data()), spec, mode);
  return file;
}

std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// Everything an opener checks before trusting the header.
void validate(const ObjectFile& file, std::uint32_t kinds, const TypeTag* type) {
  const std::string where = "shmq: " + file.description() + " ";
  const auto& h = *reinterpret_cast<const ObjectHeader*>(file.data());
  const std::uint64_t magic = h.magic.load(std::memory_order_acquire);
  if (magic == kMagic) throw Incompatible(where + "is a queue, not a lock, event or value");
  if (magic != kObjectMagic || file.size() < kObjectHeaderBytes) {
    throw Incompatible(where + "is not a shmq object (magic " + hex(magic) + ", " +
                       std::to_string(file.size()) + " bytes)");
  }
  if (h.layout_version != kObjectLayoutVersion) {
    throw Incompatible(where + "has layout version " + std::to_string(h.layout_version) +
                       ", this library reads version " + std::to_string(kObjectLayoutVersion));
  }
  const std::uint32_t kind = h.kind;
  if (kind >= 32 || (kinds & (1u << kind)) == 0) {
    std::string wanted;
    for (std::uint32_t k = 0; k < 32; ++k) {
      if ((kinds & (1u << k)) != 0)
        wanted += std::string(wanted.empty() ? "" : " or ") + kind_name(k);
    }
    throw Incompatible(where + "is a " + kind_name(kind) + ", not a " + wanted);
  }
  const bool barrier = kind == static_cast<std::uint32_t>(ObjectKind::barrier);
  if (h.data_bytes != file.size() - kObjectHeaderBytes ||
      (barrier && (h.limit == 0 || h.limit > kMaxBarrierParties ||
                   h.data_bytes != std::uint64_t{2} * h.limit * sizeof(BarrierSlot)))) {
    throw Incompatible(where + "is corrupt: its header claims " + std::to_string(h.data_bytes) +
                       " bytes of payload (limit " + std::to_string(h.limit) +
                       "), its file holds " + std::to_string(file.size() - kObjectHeaderBytes));
  }
  if (type != nullptr && h.type_fingerprint != type->fingerprint) {
    const std::string theirs(h.type_name, strnlen(h.type_name, sizeof h.type_name));
    throw Incompatible(where + "holds elements of type " + theirs + " (" + hex(h.type_fingerprint) +
                       "), not " + type->name + " (" + hex(type->fingerprint) + ")");
  }
  if (type != nullptr && h.element_bytes != 0 && h.data_bytes % h.element_bytes != 0) {
    throw Incompatible(where + "is corrupt: " + std::to_string(h.data_bytes) +
                       " bytes is no whole number of elements");
  }
}

}  // namespace

SyncObject::SyncObject(std::unique_ptr<ObjectFile> file)
    : file_(std::move(file)),
      header_(reinterpret_cast<ObjectHeader*>(file_->data())),
      kind_(static_cast<ObjectKind>(header_->kind)),
      data_bytes_(file_->size() - kObjectHeaderBytes),
      limit_(header_->limit) {}

namespace {

bool held_in_this_process(const RobustMutex& m) {
  const auto tid = static_cast<pid_t>(m.word.load(std::memory_order_relaxed) & FUTEX_TID_MASK);
  return tid != 0 && syscall(SYS_tgkill, getpid(), tid, 0) == 0;
}

}  // namespace

// A lock held by a thread is an entry of that thread's robust list, whose links live in the
// object's memory: the kernel walks them when the thread ends, and glibc writes through them when
// the thread unlocks a robust pthread mutex taken after it. Unmapping the object under such an
// entry (the last handle dropped while its lock is held) would turn that write into a crash, so
// the mapping then stays for the life of the process (one page, for a program that lets go of a
// lock it holds).
SyncObject::~SyncObject() {
  bool held = held_in_this_process(header_->lock.mutex);
  if (kind_ == ObjectKind::barrier) {
    const auto* slots = reinterpret_cast<const BarrierSlot*>(data());
    for (std::uint32_t i = 0; i < 2 * limit_ && !held; ++i) {
      held = held_in_this_process(slots[i].presence);
    }
  }
  if (held) {
    // Kept where the process can still reach it (not leaked: a leak checker would say so).
    static std::mutex kept_lock;
    static auto* kept = new std::vector<std::unique_ptr<ObjectFile>>;
    const std::lock_guard<std::mutex> hold(kept_lock);
    kept->push_back(std::move(file_));
  }
}

std::shared_ptr<SyncObject> SyncObject::create(std::string_view name, const ObjectSpec& spec,
                                               mode_t mode) {
  check_spec(spec, spec_label(spec) + " '" + std::string(name) + "'");
  auto file =
      ObjectFile::create(name, kObjectHeaderBytes + payload_bytes(spec), mode, spec_label(spec));
  return std::make_shared<SyncObject>(initialised(std::move(file), spec, mode));
}

std::shared_ptr<SyncObject> SyncObject::create_anonymous(const ObjectSpec& spec) {
  check_spec(spec, "unnamed " + spec_label(spec));
  auto file =
      ObjectFile::create_anonymous(kObjectHeaderBytes + payload_bytes(spec), spec_label(spec));
  return std::make_shared<SyncObject>(initialised(std::move(file), spec, 0600));
}

namespace {
std::string label_of(std::uint32_t kinds) {
  for (std::uint32_t k = 0; k < 32; ++k) {
    if ((kinds & (1u << k)) != 0) return kind_name(k);
  }
  return "object";
}
}  // namespace

std::shared_ptr<SyncObject> SyncObject::open(std::string_view name, std::uint32_t kinds,
                                             const TypeTag* type) {
  auto file = ObjectFile::open(name, label_of(kinds));
  validate(*file, kinds, type);
  return std::make_shared<SyncObject>(std::move(file));
}

std::shared_ptr<SyncObject> SyncObject::open_or_create(std::string_view name,
                                                       const ObjectSpec& spec, mode_t mode) {
  for (;;) {
    try {
      return create(name, spec, mode);
    } catch (const AlreadyExists&) {
    }
    try {
      auto file = ObjectFile::open(name, spec_label(spec), mode);
      validate(*file, kind_bit(spec.kind), spec.type);
      auto object = std::make_shared<SyncObject>(std::move(file));
      if (object->data_bytes() != payload_bytes(spec)) {
        throw Incompatible("shmq: " + object->description() + " holds " +
                           std::to_string(object->data_bytes()) + " bytes, not the " +
                           std::to_string(payload_bytes(spec)) + " asked for");
      }
      return object;
    } catch (const NotFound&) {
      // Removed between our create and our open: race again.
    }
  }
}

Deadline deadline_after_seconds(std::optional<double> seconds, const std::string& what) {
  if (!seconds) return Deadline::never();
  if (std::isnan(*seconds)) throw InvalidArgument("shmq: " + what + ": a timeout of NaN seconds");
  return Deadline::after(std::chrono::duration<double>(*seconds));
}

// ---- LockCore

bool LockCore::deeper() {
  if (state_->depth == UINT32_MAX) {
    throw LockMisuse(
        "shmq: " + object_->description() + ": acquired " + std::to_string(UINT32_MAX) +
        " times by this thread without release: " + "an RLock holds at most that many");
  }
  ++state_->depth;
  return true;
}

bool LockCore::acquire_contended(const Deadline& deadline) {
  ThisThread& me = this_thread_identity();
  const int rc = lock_contended(state_->mutex, me, deadline);
  if (rc == 0 || rc == EOWNERDEAD) {
    state_->depth = 1;
    // Not cleared otherwise: a mark passed on by a Value's get() or set() stays for this holder.
    if (rc == EOWNERDEAD) {
      state_->owner_died = 1;
      state_->recoveries.fetch_add(1, std::memory_order_relaxed);
    }
    return true;
  }
  if (rc == ETIMEDOUT) return false;
  if (rc == EDEADLK) {
    if (!deadline.is_never()) return false;  // nobody else can release it before any deadline
    throw SelfDeadlock("shmq: " + object_->description() +
                       ": this thread already holds it; acquiring it again would wait forever");
  }
  throw_lock_error(rc, object_->description());
}

void LockCore::throw_not_held() const {
  const std::uint32_t holder = state_->mutex.word.load(std::memory_order_relaxed) & FUTEX_TID_MASK;
  throw NotHeld(
      "shmq: " + object_->description() + ": release() by thread " +
      std::to_string(this_thread_identity().tid) + ", which does not hold it (" +
      (holder == 0 ? std::string("nobody does") : "thread " + std::to_string(holder) + " does") +
      ")");
}

std::uint32_t LockCore::release_all() {
  ThisThread& me = this_thread_identity();
  if (!held_by(me)) throw_not_held();
  const std::uint32_t depth = recursive_ ? std::max(state_->depth, 1u) : 1u;
  state_->depth = 1;
  release();
  return depth;
}

void LockCore::reacquire(std::uint32_t depth) {
  acquire(Deadline::never());
  state_->depth = recursive_ ? depth : 1;
}

}  // namespace shmq::detail
