// The lease area's out-of-line parts: holders' identity and liveness, acks, recovery after a
// death, and the dead-letter queue. See include/shmq/detail/lease_table.hpp.
#include "shmq/detail/lease_table.hpp"

#include <signal.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

#include "shmq/detail/ring.hpp"
#include "shmq/detail/segment.hpp"
#include "shmq/errors.hpp"

namespace shmq::detail {

namespace {

// How often a process checks the lease area for dead and timed-out holders when a get finds
// nothing to deliver. A sleeping get looks again at least every kLongestSleep (ring.hpp).
constexpr std::uint64_t kReclaimPeriodNs = 10'000'000;

}  // namespace

namespace {

// This process's packed held state, cached on a page that every fork (fork, _Fork, clone without
// CLONE_VM) gives the child zeroed (MADV_WIPEONFORK): a child computes its own on first use, and
// nobody pays a getpid() a leased get. Where the kernel refuses the advice (before Linux 4.14),
// the cache is null and every call asks getpid().
std::atomic<std::uint64_t>* make_holder_cache() noexcept {
  static std::atomic<std::uint64_t>* const cache = []() -> std::atomic<std::uint64_t>* {
    const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    void* p = mmap(nullptr, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    if (madvise(p, page, MADV_WIPEONFORK) != 0) {
      munmap(p, page);
      return nullptr;
    }
    return new (p) std::atomic<std::uint64_t>(0);
  }();
  return cache;
}

}  // namespace

std::atomic<std::uint64_t>* const holder_cache = make_holder_cache();

std::uint64_t compute_this_holder() noexcept {
  const pid_t pid = getpid();
  const auto ticks = static_cast<std::uint32_t>(process_start_ticks(pid).value_or(0));
  const std::uint64_t word = LeaseState{static_cast<std::uint32_t>(pid) & LeaseState::kPidMask,
                                        ticks & LeaseState::kTicksMask, 0, 0, LeaseKind::held}
                                 .pack();
  // make_holder_cache(), not holder_cache: this may run before the static initialisers.
  if (std::atomic<std::uint64_t>* cache = make_holder_cache()) {
    cache->store(word, std::memory_order_relaxed);
  }
  return word;
}

bool holder_alive(const LeaseState& s) noexcept {
  if (s.pid == 0) return false;
  const LeaseState me = this_holder();
  if (s.pid == me.pid) return s.ticks == me.ticks;
  try {
    const auto stat = process_stat(static_cast<pid_t>(s.pid));
    if (!stat) return !(kill(static_cast<pid_t>(s.pid), 0) != 0 && errno == ESRCH);
    if (stat->state == 'Z' || stat->state == 'X') return false;
    return (stat->start_ticks & LeaseState::kTicksMask) == s.ticks;
  } catch (...) {
    return true;  // out of memory reading /proc: take nothing from anybody
  }
}

LeaseTable::LeaseTable(SharedHeader& header, std::byte* area, std::uint32_t slots,
                       std::uint32_t payload, std::uint64_t timeout_ns,
                       std::uint32_t max_deliveries, std::string dead_letter_queue,
                       const std::string& queue)
    : h_(&header),
      area_(area),
      slots_(slots),
      payload_(payload),
      stride_(lease_stride(payload)),
      timeout_ns_(timeout_ns),
      max_deliveries_(max_deliveries),
      dead_letter_queue_(std::move(dead_letter_queue)),
      queue_(&queue) {}

LeaseTable::~LeaseTable() = default;

bool LeaseTable::nack(const LeaseTicket& ticket) noexcept {
  LeaseState ready = LeaseState::unpack(ticket.word);
  ready.generation += 1;
  ready.kind = LeaseKind::ready;
  if (!end_lease(ticket, ready.pack())) return false;
  mark_ready();
  wake_getters();
  return true;
}

void LeaseTable::settle_takes(std::uint64_t head) noexcept {
  bool readied = false;
  for (std::uint32_t i = 0; i < slots_; ++i) {
    LeaseState s = state(i);
    if (s.kind != LeaseKind::taking) continue;
    if (slot(i).from_head.load(std::memory_order_relaxed) == head) {
      s = LeaseState{0, 0, s.generation, 0, LeaseKind::free};  // never taken: still in the ring
    } else {
      s.generation += 1;  // taken, and its taker died before the lease was handed out
      s.kind = LeaseKind::ready;
      readied = true;
    }
    slot(i).state.store(s.pack(), std::memory_order_seq_cst);
  }
  if (readied) mark_ready();
}

bool LeaseTable::any_outstanding() const noexcept {
  for (std::uint32_t i = 0; i < slots_; ++i) {
    const LeaseState s = state(i);
    // A ready slot past max_deliveries is never delivered here again: it waits for room in the
    // dead-letter queue (which may be gone, full for good or of another type), and no consumer of
    // this queue can help it, so a draining get must not wait for it. It stays in its slot
    // (`shmq stat` shows it) and moves whenever a get of this queue finds the dead-letter queue
    // able to take it.
    if (s.kind != LeaseKind::free && !(s.kind == LeaseKind::ready && over_deliveries(s))) {
      return true;
    }
  }
  return false;
}

bool LeaseTable::redeliver(std::uint32_t i, std::uint64_t held) noexcept {
  LeaseState s = LeaseState::unpack(held);
  s.generation += 1;
  s.kind = LeaseKind::ready;
  return slot(i).state.compare_exchange_strong(held, s.pack(), std::memory_order_seq_cst);
}

void LeaseTable::reclaim(std::uint64_t now) noexcept {
  std::uint64_t due = next_reclaim_ns_.load(std::memory_order_relaxed);
  if (now < due || !next_reclaim_ns_.compare_exchange_strong(due, now + kReclaimPeriodNs,
                                                             std::memory_order_relaxed)) {
    return;
  }
  bool ready = false;
  for (std::uint32_t i = 0; i < slots_; ++i) {
    const std::uint64_t word = slot(i).state.load(std::memory_order_acquire);
    const LeaseState s = LeaseState::unpack(word);
    if (s.kind == LeaseKind::ready) {
      ready = true;  // one the hint may have missed (its maker died between the two stores)
    } else if (s.kind == LeaseKind::held) {
      const std::uint64_t taken = slot(i).taken_ns.load(std::memory_order_relaxed);
      const bool expired = timeout_ns_ != 0 && now > taken && now - taken >= timeout_ns_;
      if ((expired || !holder_alive(s)) && redeliver(i, word)) ready = true;
    }
  }
  if (ready) {
    mark_ready();
    wake_getters();
  }
}

std::uint32_t LeaseTable::checked_length(std::uint32_t i) {
  const std::uint32_t bytes = slot(i).bytes.load(std::memory_order_relaxed);
  if (bytes <= payload_) return bytes;
  release_ready(i, state(i));
  throw_corrupt(*queue_, "lease slot " + std::to_string(i) + " claims a message of " +
                             std::to_string(bytes) + " bytes, over its " +
                             std::to_string(payload_) + "; it was dropped");
}

bool LeaseTable::dead_letter(std::uint32_t i, const LeaseState& s) noexcept {
  const std::uint32_t bytes = slot(i).bytes.load(std::memory_order_relaxed);
  if (bytes > payload_) return false;
  try {
    if (!dead_letters_) {
      const TypeTag type{h_->type_fingerprint,
                         std::string(h_->type_name, strnlen(h_->type_name, sizeof h_->type_name))};
      dead_letters_ = Segment::open(dead_letter_queue_, &type);
    }
    Ring& target = dead_letters_->ring();
    if (bytes > target.max_payload()) return false;
    const Progress put = target.put_many(
        1, [&](std::size_t) { return bytes; },
        [&](std::size_t, std::byte* dst, std::uint32_t size) {
          std::memcpy(dst, this->bytes(i), size);
        },
        Deadline::now());
    if (put.count != 1) return false;
  } catch (...) {
    return false;  // missing, incompatible, shut down: the message waits in its slot
  }
  // Put there first, then freed here: a death in between leaves it in both (at least once).
  release_ready(i, s);
  h_->dead_lettered.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void throw_lease_refused(const Segment& segment, const LeaseTicket& ticket, bool ended,
                         const char* call) {
  const std::string lease =
      "shmq: " + segment.description() + ": the lease on slot " + std::to_string(ticket.slot) + " ";
  if (ended) throw InvalidArgument(lease + "was already acked or nacked: " + call + " refused");
  const LeaseTable& leases = *segment.leases();
  std::string why = "was taken back and its message delivered again";
  if (leases.timeout_ns() != 0) {
    why += " (held past the queue's lease_timeout of " +
           std::to_string(leases.timeout_ns() / 1'000'000) + " ms)";
  }
  throw LeaseExpired(lease + why + ": " + call + " refused");
}

}  // namespace shmq::detail
