// shmq::SharedMemory: Python's multiprocessing.shared_memory.SharedMemory.
//
//   auto shm = shmq::SharedMemory::create("frames", 1 << 20);  // SharedMemory("frames", True,
//   1<<20) std::span<std::byte> bytes = shm.buf();                    // shm.buf  (C++20)
//   shm.close(); shm.unlink();
//
// A block of bytes in /dev/shm/shmq.<name> (0600 by default), after a one-page header that says
// what it is (so `shmq ls` lists it, and a queue's name is refused); or unnamed, as
// SharedMemory(create=True, size=n) without a name, passed to children by fork and opened
// elsewhere by name() while its creator holds it. Nothing guards the bytes: pair it with a Lock.
//
// buf() returns shmq::Bytes, a pointer and a size: the library is C++17, so it cannot return
// std::span; compiled as C++20, Bytes converts to std::span<std::byte> implicitly.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <memory>
#include <string_view>
#if __cplusplus >= 202002L && __has_include(<span>)
#include <span>
#endif

#include "shmq/detail/sync_object.hpp"
#include "shmq/queue.hpp"

namespace shmq {

// A view of bytes in shared memory, valid while the SharedMemory that gave it is open.
class Bytes {
 public:
  Bytes(std::byte* data, std::size_t size) noexcept : data_(data), size_(size) {}
  std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  std::byte* begin() const noexcept { return data_; }
  std::byte* end() const noexcept { return data_ + size_; }
  std::byte& operator[](std::size_t i) const noexcept { return data_[i]; }
#if __cplusplus >= 202002L && __has_include(<span>)
  operator std::span<std::byte>() const noexcept {
    return {data_, size_};
  }
#endif

 private:
  std::byte* data_;
  std::size_t size_;
};

class SharedMemory : public detail::NamedObject<SharedMemory> {
 public:
  // An unnamed block of `size` bytes, zeroed; InvalidArgument for 0 or over 1 TiB.
  explicit SharedMemory(std::size_t size)
      : SharedMemory(detail::SyncObject::create_anonymous(spec(size))) {}
  // Python's SharedMemory(name, create=True, size=size): AlreadyExists if the name is taken.
  static SharedMemory create(std::string_view name, std::size_t size, mode_t mode = 0600) {
    return SharedMemory(detail::SyncObject::create(name, spec(size), mode));
  }

  // The bytes; throws Closed after close().
  Bytes buf() const {
    if (!object_) throw_closed();
    return Bytes(object_->data(), object_->data_bytes());
  }
  // The size asked for at creation (Python may report a page-rounded size; this is exact).
  std::size_t size() const noexcept { return object_ ? object_->data_bytes() : 0; }
  // Unmaps this handle's view (copies keep theirs); buf() then throws Closed.
  void close() noexcept { object_.reset(); }
  // Removes the name (Python's unlink()); processes that hold it keep using it. Nothing to do for
  // an unnamed block, which ends with the last process holding it.
  void unlink() const;
  const std::string& name() const {
    if (!object_) throw_closed();
    return object_->name();
  }

  static constexpr std::uint32_t kinds() {
    return detail::kind_bit(detail::ObjectKind::shared_memory);
  }

 private:
  friend class detail::NamedObject<SharedMemory>;
  using NamedObject::NamedObject;
  static detail::ObjectSpec spec(std::size_t size);
  [[noreturn]] void throw_closed() const;
};

template <>
struct codec<SharedMemory> : detail::queue_handle_codec<SharedMemory> {};

}  // namespace shmq
