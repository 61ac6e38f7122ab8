// libFuzzer target: hostile segments and hostile peers.
//  - open() of a segment whose header page is the input (the rest a valid ring), which must
//    either throw Incompatible or yield a queue that is safe to use;
//  - a valid, running queue whose header is then overwritten with the input (a peer scribbling on
//    it), after which every call must throw or work, never read or write outside the mapping.
// The input's bytes past the header's size go over the lease area's slots (their state words,
// lengths and messages): hostile lease state must never crash a reader either.
// The locks are left intact: a process that can scribble on them can also hold them forever,
// which the timed calls already survive (tests/fault), at 50 ms a call: too slow to fuzz.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "shmq/detail/layout.hpp"
#include "shmq/shmq.hpp"

namespace {

using shmq::detail::SharedHeader;

const std::string& name() {
  static const std::string n = "fuzz-" + std::to_string(getpid());
  return n;
}

// Copies the input over the header, keeping the two locks as they were.
void scribble(SharedHeader& h, const std::uint8_t* data, std::size_t size) {
  std::byte locks[2][sizeof(shmq::detail::RobustMutex)];
  std::memcpy(locks[0], static_cast<void*>(&h.put_lock), sizeof locks[0]);
  std::memcpy(locks[1], static_cast<void*>(&h.get_lock), sizeof locks[1]);
  std::memcpy(static_cast<void*>(&h), data, std::min(size, sizeof(SharedHeader)));
  std::memcpy(static_cast<void*>(&h.put_lock), locks[0], sizeof locks[0]);
  std::memcpy(static_cast<void*>(&h.get_lock), locks[1], sizeof locks[1]);
}

// Copies the rest of the input over the lease area.
void scribble_leases(std::byte* area, std::size_t area_bytes, const std::uint8_t* data,
                     std::size_t size) {
  if (size <= sizeof(SharedHeader)) return;
  std::memcpy(area, data + sizeof(SharedHeader), std::min(size - sizeof(SharedHeader), area_bytes));
}

// Every call a user can make; each may throw a shmq::Error, none may crash.
void exercise(shmq::Queue<std::string>& q) {
  for (int i = 0; i < 3; ++i) {
    try {
      if (auto lease = q.try_get_leased()) {
        (void)lease->value().size();
        (void)lease->deliveries();
        if (i == 0) lease->ack();
        if (i == 1) lease->nack();
      }  // i == 2: dropped, nacked
    } catch (const shmq::Error&) {
    }
  }
  try {
    std::vector<shmq::Lease<std::string>> leases;
    q.try_get_leased_many(leases, 8);
  } catch (const shmq::Error&) {
  }
  for (int i = 0; i < 4; ++i) {
    try {
      q.try_put(std::string(static_cast<std::size_t>(i) * 100, 'x'));
    } catch (const shmq::Error&) {
    }
    try {
      (void)q.try_get();
    } catch (const shmq::Error&) {
    }
  }
  std::vector<std::string> out;
  try {
    q.try_get_many(out, 16);
  } catch (const shmq::Error&) {
  }
  (void)q.qsize();
  (void)q.full();
  (void)q.stats();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  shmq::Queue<std::string>::remove(name());
  {
    shmq::QueueOptions options;
    options.capacity_bytes = 4096;
    options.max_leases = 4;
    options.lease_timeout = std::chrono::milliseconds(1);
    auto q = shmq::Queue<std::string>::create(name(), options);
    q.put("one");
    q.put(std::string(3000, 'b'));  // wraps the ring on the next put
    q.get();
    q.put("three");
    q.put("four");
    auto held = q.get_leased();  // leaves slots in use: held, and ready
    q.get_leased().nack();
    // A peer with the queue mapped scribbles on the header.
    const int fd = shm_open(("/shmq." + name()).c_str(), O_RDWR, 0);
    struct stat st {};
    fstat(fd, &st);
    const auto file_bytes = static_cast<std::size_t>(st.st_size);
    void* p = mmap(nullptr, file_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    // The lease area follows the header and the 4096-byte ring.
    std::byte* area = static_cast<std::byte*>(p) + shmq::detail::kHeaderBytes + 4096;
    const std::size_t area_bytes = file_bytes - shmq::detail::kHeaderBytes - 4096;
    std::vector<std::byte> saved_area(area, area + area_bytes);
    auto* header = static_cast<SharedHeader*>(p);
    std::vector<std::byte> saved(sizeof(SharedHeader));  // to restore once the input has had its go
    std::memcpy(saved.data(), static_cast<void*>(header), saved.size());
    scribble(*header, data, size);
    scribble_leases(area, area_bytes, data, size);
    exercise(q);
    try {
      held.ack();
    } catch (const shmq::Error&) {
    }
    // The same bytes met by a fresh open; but not a zero magic word, which open() takes for a
    // creator still at work and waits two seconds for (tests/test_queue_processes.cpp covers it).
    if (header->magic.load() != 0) {
      try {
        auto reopened = shmq::Queue<std::string>::open(name());
        exercise(reopened);
      } catch (const shmq::Error&) {
      }
    }
    std::memcpy(static_cast<void*>(header), saved.data(), saved.size());
    std::memcpy(area, saved_area.data(), area_bytes);
    munmap(p, file_bytes);
  }
  shmq::Queue<std::string>::remove(name());
  return 0;
}
