// Pool payloads too large for the pool's rings: each travels out of band, in a sealed memfd of its
// own, so the rings stay small whatever the size of an argument or a result. Internal.
//
// A memfd lives in no file system: the last descriptor or mapping closed frees it, so a crash at
// any instruction leaves nothing behind (nothing in /dev/shm). Its two routes:
//  - arguments (caller -> any worker): the caller keeps the descriptor until the task's outcome is
//    filed, and the worker that takes the task opens it through /proc/<caller>/fd/<fd>, checking
//    that the descriptor still names that memfd;
//  - results (a worker -> the caller): the worker sends the descriptor over a datagram socket
//    (SCM_RIGHTS) before it posts the result message, so the caller finds it waiting there.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>

namespace shmq::detail {

// A memfd holding one encoded payload, with its mapping; move-only.
class PayloadFile {
 public:
  PayloadFile() = default;
  PayloadFile(PayloadFile&& other) noexcept;
  PayloadFile& operator=(PayloadFile&& other) noexcept;
  PayloadFile(const PayloadFile&) = delete;
  PayloadFile& operator=(const PayloadFile&) = delete;
  ~PayloadFile();

  // A new memfd called `name`, of `size` bytes, mapped writable for the encoder. Throws Error
  // (naming `what` and the size) when memory or descriptors run out.
  static PayloadFile create(const std::string& name, std::size_t size, const std::string& what);
  // After encoding: unmaps it and seals it (no write, shrink or grow), keeping the descriptor.
  void seal(const std::string& what);
  // The memfd `name` that process `pid` holds as descriptor `fd`, mapped read-only; checks that
  // the descriptor names that memfd before and after opening it and that it is sealed at `size`.
  static PayloadFile open(pid_t pid, int fd, const std::string& name, std::size_t size);
  // A descriptor received over a socket: checked to be sealed at `size`, then mapped read-only.
  static PayloadFile adopt(int fd, std::size_t size);

  bool is_open() const noexcept { return fd_ >= 0; }
  int fd() const noexcept { return fd_; }
  std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }

 private:
  PayloadFile(int fd, std::byte* data, std::size_t size) noexcept
      : fd_(fd), data_(data), size_(size) {}
  static PayloadFile read_only(int fd, std::size_t size);  // takes fd; closes it on a throw
  void unmap() noexcept;

  int fd_ = -1;
  std::byte* data_ = nullptr;  // mapped while non-null
  std::size_t size_ = 0;
};

// The datagram socket pair that carries result memfds from the workers to the caller. Made before
// the manager is forked; the caller keeps the receiving end, the workers the sending end.
class PayloadChannel {
 public:
  PayloadChannel();
  PayloadChannel(const PayloadChannel&) = delete;
  PayloadChannel& operator=(const PayloadChannel&) = delete;
  ~PayloadChannel();

  // In a worker: sends the memfd holding task `id`'s result. Blocks only if the caller has left
  // hundreds of datagrams unread, which it never does while it collects results.
  void send(std::uint64_t id, const PayloadFile& file);
  // In the caller: the memfd sent for task `id`, reading every datagram waiting (never blocks);
  // -1 if none came. Datagrams of other tasks wait in `received` for their result messages.
  int receive(std::uint64_t id);
  // In the caller: closes every memfd received but not claimed whose task is not `wanted`.
  template <class Wanted>
  void discard_unless(Wanted&& wanted) {
    drain();
    for (auto it = received_.begin(); it != received_.end();) {
      if (wanted(it->first)) {
        ++it;
      } else {
        close_fd(it->second);
        it = received_.erase(it);
      }
    }
  }
  void close_receiving_end() noexcept;  // in the manager and the workers
  void close_sending_end() noexcept;    // in the caller, once the manager has its copy

 private:
  void drain();
  static void close_fd(int fd) noexcept;

  int send_fd_ = -1;
  int receive_fd_ = -1;
  std::unordered_map<std::uint64_t, int> received_;  // caller only: task id -> memfd
};

}  // namespace shmq::detail
