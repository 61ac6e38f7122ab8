// libFuzzer target: hostile bytes in the segments of locks, semaphores, events, conditions,
// barriers and values. The input is written over an object's header (the first byte picks the
// kind, the rest is the header, identity included), after which open(), `shmq ls/stat`'s
// inspect_object() and every non-blocking call must throw a shmq::Error or work: never crash,
// never read or write outside the mapping, never hang (only try and zero-timeout calls are made:
// a lock word naming a live thread makes blocking calls wait, as documented).
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "shmq/detail/sync_object.hpp"
#include "shmq/shmq.hpp"

namespace {

const std::string& name() {
  static const std::string n = "fuzz-sync-" + std::to_string(getpid());
  return n;
}

template <class F>
void tolerate(F&& f) {
  try {
    f();
  } catch (const shmq::Error&) {
  }
}

void exercise(int kind) {
  tolerate([] { (void)shmq::inspect_object(name()); });
  switch (kind) {
    case 0:
      tolerate([] {
        auto l = shmq::Lock::open(name());
        if (l.try_lock()) l.unlock();
      });
      break;
    case 1:
      tolerate([] {
        auto l = shmq::RLock::open(name());
        if (l.try_lock() && l.try_lock()) {
          l.unlock();
          l.unlock();
        }
      });
      break;
    case 2:
      tolerate([] {
        auto s = shmq::BoundedSemaphore::open(name());
        if (s.acquire(false)) s.release();
        tolerate([&] { s.release(); });
      });
      break;
    case 3:
      tolerate([] {
        auto e = shmq::Event::open(name());
        (void)e.wait(0);
        e.set();
        e.clear();
      });
      break;
    case 4:
      tolerate([] {
        auto b = shmq::Barrier::open(name());
        (void)b.n_waiting();
        (void)b.broken();
        tolerate([&] { (void)b.wait(0); });
      });
      break;
    default:
      tolerate([] {
        auto a = shmq::Array<int>::open(name());
        if (a.size() > 0) a.data()[a.size() - 1] = 1;  // the whole payload is mapped
        (void)a.size();
      });
      break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const int kind = data[0] % 6;
  shmq::Lock::remove(name());
  switch (kind) {
    case 0: shmq::Lock::create(name()); break;
    case 1: shmq::RLock::create(name()); break;
    case 2: shmq::BoundedSemaphore::create(name(), 2); break;
    case 3: shmq::Event::create(name()); break;
    case 4: shmq::Barrier::create(name(), 3); break;
    default: shmq::Array<int>::create(name(), 10, 0, false); break;
  }
  const int fd = open(("/dev/shm/shmq." + name()).c_str(), O_RDWR);
  if (fd < 0) return 0;
  void* at = mmap(nullptr, shmq::detail::kObjectHeaderBytes, PROT_READ | PROT_WRITE, MAP_SHARED,
                  fd, 0);
  close(fd);
  if (at == MAP_FAILED) return 0;
  // A zero magic word makes open() wait 2 s for a creator at work, then throw: keep the real one
  // then, so that the fuzzer spends its time past that check.
  std::uint64_t magic = 0;
  std::memcpy(&magic, at, sizeof magic);
  std::memcpy(at, data + 1, std::min(size - 1, sizeof(shmq::detail::ObjectHeader)));
  std::uint64_t written = 0;
  std::memcpy(&written, at, sizeof written);
  if (written == 0) std::memcpy(at, &magic, sizeof magic);
  munmap(at, shmq::detail::kObjectHeaderBytes);
  exercise(kind);
  shmq::Lock::remove(name());
  return 0;
}
