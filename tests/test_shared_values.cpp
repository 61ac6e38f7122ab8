// Value<T>, Array<T> and SharedMemory across processes: every call, locks, names, errors.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <mutex>
#include <span>
#include <vector>

#include "shmq/detail/sync_object.hpp"
#include "shmq/lock.hpp"
#include "shmq/pool.hpp"
#include "shmq/process.hpp"
#include "shmq/queue.hpp"
#include "shmq/shared_memory.hpp"
#include "shmq/value.hpp"
#include "support.hpp"

using namespace shmq;
using shmq::test::Child;
using shmq::test::NameGuard;
using shmq::test::unique_name;

namespace {
struct Point {
  double x, y;
};
long add_in_worker(Value<long> v, long n) {
  std::scoped_lock held(v.get_lock());
  v.set(v.get() + n);
  return v.get();
}
}  // namespace

TEST_CASE("a Value incremented under its lock by several processes loses no increment",
          "[sync][value]") {
  Value<long> counter(0);
  CHECK(counter.has_lock());
  std::vector<Child> children;
  for (int i = 0; i < 4; ++i) {
    children.emplace_back([&] {
      for (int n = 0; n < 2000; ++n) {
        std::scoped_lock held(counter.get_lock());
        counter.set(counter.get() + 1);
      }
    });
  }
  for (auto& c : children) CHECK(c.succeeded());
  CHECK(counter.get() == 8000);
}

TEST_CASE("Value holds any trivially copyable type; lock = false has no lock", "[sync][value]") {
  Value<Point> p(Point{1.5, -2});
  CHECK(p.get().x == 1.5);
  p.set(Point{3, 4});
  Child child([&] {
    if (p.get().y != 4) throw std::runtime_error("child saw another value");
    p.set(Point{5, 6});
  });
  CHECK(child.succeeded());
  CHECK(p.get().x == 5);
  Value<int> raw(7, false);
  CHECK_FALSE(raw.has_lock());
  CHECK_THROWS_AS(raw.get_lock(), LockMisuse);
  CHECK(raw.get() == 7);
  *raw.data() = 8;
  CHECK(raw.get() == 8);
}

TEST_CASE("a Value's get and set nest inside its held lock, which another process waits for",
          "[sync][value]") {
  Value<int> v(1);
  RLock lock = v.get_lock();
  lock.lock();
  v.set(v.get() + 1);  // recursive: no self-deadlock
  Queue<int> result;
  Child child([&] { result.put(v.get_lock().try_lock() ? 1 : 0); });
  CHECK(result.get(std::chrono::seconds(10)) == 0);
  CHECK(child.succeeded());
  lock.unlock();
  CHECK(v.get() == 2);
}

TEST_CASE("named values: create, open, open_or_create, type checks, remove", "[sync][value]") {
  NameGuard name(unique_name("value"));
  auto v = Value<double>::create(name.name(), 2.5);
  CHECK(Value<double>::open(name.name()).get() == 2.5);
  CHECK(Value<double>::open_or_create(name.name()).get() == 2.5);
  CHECK_THROWS_AS(Value<double>::create(name.name(), 1), AlreadyExists);
  CHECK_THROWS_WITH(Value<int>::open(name.name()), Catch::Contains("not int"));
  CHECK_THROWS_AS(Array<double>::open(name.name()), Incompatible);
  CHECK_THROWS_AS(Lock::open(name.name()), Incompatible);
  struct stat st;
  REQUIRE(stat(("/dev/shm/shmq." + name.name()).c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(Value<double>::remove(name.name()));
  CHECK_THROWS_AS(Value<double>::open(name.name()), NotFound);
}

TEST_CASE("values pass to Process children and as Pool arguments", "[sync][value]") {
  Value<long> v(10);
  Process p([](Value<long> shared) { shared.set(shared.get() * 2); }, v);
  p.start();
  p.join();
  CHECK(v.get() == 20);
  Pool pool(1);
  CHECK(pool.apply(add_in_worker, v, 5L) == 25);
  CHECK(v.get() == 25);
}

TEST_CASE("an Array reads, writes and copies its elements under its lock", "[sync][value]") {
  Array<int> a(5, 7);
  CHECK(a.size() == 5);
  CHECK(a.to_vector() == std::vector<int>(5, 7));
  a.set(2, 9);
  CHECK(a.get(2) == 9);
  CHECK_THROWS_AS(a.get(5), InvalidArgument);
  CHECK_THROWS_AS(a.set(99, 1), InvalidArgument);
  CHECK_THROWS_AS(a.assign({1, 2}), InvalidArgument);
  Child child([&] {
    for (std::size_t i = 0; i < a.size(); ++i) a.set(i, static_cast<int>(i));
  });
  CHECK(child.succeeded());
  CHECK(a.to_vector() == std::vector<int>{0, 1, 2, 3, 4});
  Array<double> from(std::vector<double>{1.0, 2.0, 3.0});
  CHECK(from.to_vector() == std::vector<double>{1.0, 2.0, 3.0});
  Array<char> empty(0);
  CHECK(empty.size() == 0);
  CHECK(empty.to_vector().empty());
  CHECK_THROWS_AS(Array<std::uint64_t>(std::size_t{1} << 62), InvalidArgument);
}

TEST_CASE("named arrays: open_or_create refuses another length", "[sync][value]") {
  NameGuard name(unique_name("array"));
  auto a = Array<int>::create(name.name(), 4, 1, false);
  CHECK_FALSE(a.has_lock());
  auto b = Array<int>::open_or_create(name.name(), 4);
  CHECK(b.get(3) == 1);
  CHECK_THROWS_WITH(Array<int>::open_or_create(name.name(), 5), Catch::Contains("not the 20"));
}

TEST_CASE("a Value's get() or set() that takes its lock from a dead holder leaves owner_died() "
          "to the next holder of the lock",
          "[sync][value]") {
  Value<long> v(1);
  Array<long> a(3, 1);
  Child holder([&] {
    v.get_lock().lock();
    a.get_lock().lock();
    raise(SIGKILL);  // dies holding both, as a writer killed inside set()
  });
  holder.wait_status();
  CHECK(v.get() == 1);  // takes the lock over, and cannot say so
  v.set(2);
  CHECK(a.get(0) == 1);
  for (RLock lock : {v.get_lock(), a.get_lock()}) {
    std::scoped_lock held(lock);
    CHECK(lock.owner_died());  // the mark waited for a holder who can repair
  }
  for (RLock lock : {v.get_lock(), a.get_lock()}) {
    std::scoped_lock held(lock);
    CHECK_FALSE(lock.owner_died());  // told once
  }
}

TEST_CASE("a Value or Array whose header claims a size its type does not fill is refused at open",
          "[sync][value]") {
  NameGuard name(unique_name("value"));
  const auto set_payload = [&](std::uint64_t bytes) {
    const int fd = open(("/dev/shm/shmq." + name.name()).c_str(), O_RDWR);
    REQUIRE(fd >= 0);
    void* page =
        mmap(nullptr, detail::kObjectHeaderBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    REQUIRE(page != MAP_FAILED);
    auto* header = static_cast<detail::ObjectHeader*>(page);
    header->data_bytes = bytes;  // hostile, but consistent with the file's size
    header->element_bytes = 0;   // which no longer tells the element size
    munmap(page, detail::kObjectHeaderBytes);
    REQUIRE(ftruncate(fd, static_cast<off_t>(detail::kObjectHeaderBytes + bytes)) == 0);
    close(fd);
  };
  SECTION("a Value of no bytes: get() would read past the file") {
    Value<long>::create(name.name(), 5);
    set_payload(0);
    CHECK_THROWS_AS(Value<long>::open(name.name()), Incompatible);
  }
  SECTION("a Value of half an element") {
    Value<long>::create(name.name(), 5);
    set_payload(4);
    CHECK_THROWS_AS(Value<long>::open(name.name()), Incompatible);
  }
  SECTION("an Array of 2.5 elements") {
    Array<long>::create(name.name(), 3);
    set_payload(20);
    CHECK_THROWS_AS(Array<long>::open(name.name()), Incompatible);
  }
}

TEST_CASE("SharedMemory: create, open, buf as a span, size, close, unlink, 0600",
          "[sync][value]") {
  NameGuard name(unique_name("shm"));
  auto shm = SharedMemory::create(name.name(), 10000);
  CHECK(shm.size() == 10000);
  std::span<std::byte> bytes = shm.buf();
  CHECK(bytes.size() == 10000);
  std::memcpy(bytes.data(), "hello", 5);
  Child child([&] {
    auto other = SharedMemory::open(name.name());
    if (std::memcmp(other.buf().data(), "hello", 5) != 0) throw std::runtime_error("not shared");
    other.buf()[9999] = std::byte{42};
  });
  CHECK(child.succeeded());
  CHECK(shm.buf()[9999] == std::byte{42});
  struct stat st;
  REQUIRE(stat(("/dev/shm/shmq." + name.name()).c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK_THROWS_AS(SharedMemory::create(name.name(), 10), AlreadyExists);
  CHECK_THROWS_AS(SharedMemory::create(unique_name("zero"), 0), InvalidArgument);
  CHECK_THROWS_AS(Value<int>::open(name.name()), Incompatible);
  auto copy = shm;
  shm.close();
  CHECK_THROWS_AS(shm.buf(), Closed);
  CHECK(copy.buf()[9999] == std::byte{42});  // a copy keeps its view
  copy.unlink();
  CHECK_FALSE(test::segment_exists(name.name()));
  CHECK(copy.buf()[0] == std::byte{'h'});  // unlinked, still mapped
  SharedMemory anonymous(64);
  anonymous.buf()[0] = std::byte{1};
  Child forked([&] { anonymous.buf()[1] = std::byte{2}; });
  CHECK(forked.succeeded());
  CHECK(anonymous.buf()[1] == std::byte{2});
  CHECK(SharedMemory::open(anonymous.name()).buf()[0] == std::byte{1});
  anonymous.unlink();  // nothing to remove
}
