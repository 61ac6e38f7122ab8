// Pool payloads too large for the pool's rings: each travels out of band, in a memfd, so the rings
// stay small whatever the size of an argument or a result. Internal.
//
// A memfd lives in no file system: the last descriptor or mapping closed frees it, so a crash at
// any instruction leaves nothing behind (nothing in /dev/shm). Every payload memfd is sealed at its
// size (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) as soon as it is sized, so no side can make a
// mapping of it fault (SIGBUS) by shrinking it. It is not sealed against writes, so that it can be
// reused warm: a fresh 64 MiB memfd costs ~55 ms of page faults, a warm one nothing. Nothing relies
// on its bytes staying put while they are decoded: the codec reads every byte once, bounds-checked
// against the mapping (codec.hpp), so bytes changed meanwhile decode as different values or a
// DecodeError, never as a read out of bounds, which is all a worker could do anyway by posting a
// result message of its own making.
//
// The routes:
//  - arguments (caller -> any worker): the caller writes them into one of its memfds and keeps it
//    until the task's outcome is filed; the worker that takes the task opens it through
//    /proc/<caller>/fd/<fd>, checking that the descriptor still names that memfd;
//  - results (a worker -> the caller): into the memfd the caller lent with the task (opened the
//  same
//    way) when it is large enough, else into a new memfd the worker sends over a datagram socket
//    (SCM_RIGHTS) before it posts the result message, so the caller finds it waiting there.
// The caller keeps the memfds it is done with as spares (PayloadFiles), and its workers keep the
// mappings of the last two they used (WorkerMappings), so a repeated large payload maps nothing.
// A memfd is reused only once the worker that had it has posted its outcome: a task whose first
// outcome is WorkerLost may still be run by another worker (pool_shared.hpp), so its memfds are
// dropped, never reused, and that worker writes into (or reads) a memfd nobody else will see.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace shmq::detail {

class PayloadFiles;

// A memfd holding one encoded payload, with its mapping; move-only. One that belongs to a
// PayloadFiles goes back to it when destroyed (unless discarded).
class PayloadFile {
 public:
  PayloadFile() = default;
  PayloadFile(PayloadFile&& other) noexcept;
  PayloadFile& operator=(PayloadFile&& other) noexcept;
  PayloadFile(const PayloadFile&) = delete;
  PayloadFile& operator=(const PayloadFile&) = delete;
  ~PayloadFile();

  // A new memfd called `name` of `capacity` bytes, its memory allocated (so that running out of it
  // is this Error, naming `what` and the size, not a SIGBUS later), sealed at its size and mapped
  // writable.
  static PayloadFile create(const std::string& name, std::size_t capacity, const std::string& what);
  // The memfd `name` that process `pid` holds as descriptor `fd`, mapped writable; checks that the
  // descriptor names that memfd before and after opening it, that it is sealed at its size and
  // that it holds at least `size` bytes. Throws DecodeError if it is no longer there.
  static PayloadFile open(pid_t pid, int fd, const std::string& name, std::size_t size);
  // A descriptor received over a socket: checked to be sealed at its size, at least `size` bytes,
  // then mapped writable if the descriptor allows it (reusable), else read-only. Takes `fd`.
  static PayloadFile adopt(int fd, std::size_t size);

  // Whether process `pid` still holds this memfd (by its name) as descriptor `fd`.
  bool held_by(pid_t pid, int fd) const;
  // Maps the first `bytes` in one call (not a fault per 4 KiB page); a no-op for bytes done before.
  void populate(std::size_t bytes) noexcept;
  // Closes it now, never to be reused (its last user may still be at it).
  void discard() noexcept;

  bool is_open() const noexcept { return fd_ >= 0; }
  bool writable() const noexcept { return writable_; }
  int fd() const noexcept { return fd_; }
  const std::string& name() const noexcept { return name_; }
  std::byte* data() const noexcept { return data_; }
  std::size_t capacity() const noexcept { return capacity_; }
  // The payload's bytes: the first size() of the capacity.
  std::size_t size() const noexcept { return size_; }
  void set_size(std::size_t size) noexcept { size_ = size; }

 private:
  friend class PayloadFiles;
  // Takes fd: checks that it is sealed at a size of at least `size`, and maps all of it, writable
  // if the descriptor allows.
  static PayloadFile checked(int fd, std::string name, std::size_t size);
  void release() noexcept;  // unmaps and closes

  int fd_ = -1;
  std::string name_;           // as memfd_create was given it
  std::byte* data_ = nullptr;  // mapped (all of the capacity) while non-null
  std::size_t capacity_ = 0;
  std::size_t size_ = 0;
  std::size_t populated_ = 0;  // the first bytes mapped by populate()
  bool writable_ = false;
  std::shared_ptr<PayloadFiles> home_;  // where it goes back to when destroyed; null: closed
};

// The caller's memfds for out-of-band payloads, kept as spares once a task's outcome is filed, so a
// repeated large payload is written into memory already faulted in. At most `most_files` spare or
// in use, holding at most `most_bytes`; a memfd beyond either is closed after its one use.
// Thread-safe.
class PayloadFiles : public std::enable_shared_from_this<PayloadFiles> {
 public:
  PayloadFiles(std::size_t most_files, std::size_t most_bytes)
      : most_files_(most_files), most_bytes_(most_bytes) {}
  PayloadFiles(const PayloadFiles&) = delete;
  PayloadFiles& operator=(const PayloadFiles&) = delete;

  // For a payload of `size` bytes, mapped and populated: the smallest spare that holds it, else a
  // new memfd. Throws Error (naming `what`) as PayloadFile::create does.
  PayloadFile take(std::size_t size, const std::string& what);
  // For a task's result: the largest spare, or no file if there is none.
  PayloadFile lend();
  // Makes `file` (received from a worker) one of this pool's, if it is writable and the limits
  // allow: it is then a spare once its result has been decoded.
  void keep(PayloadFile& file) noexcept;
  // Keeps a file as a spare; called by ~PayloadFile.
  void give_back(PayloadFile file) noexcept;
  // A file of this pool's was discarded; called by PayloadFile::discard.
  void dropped(std::size_t capacity) noexcept;
  // Closes the spares, and every file given back from now on (the pool has ended).
  void retire() noexcept;

 private:
  // Gives `file` a home if the limits allow, closing the smallest spares to make room.
  void adopt_locked(PayloadFile& file, std::vector<PayloadFile>& closing);

  std::mutex mutex_;
  const std::size_t most_files_;
  const std::size_t most_bytes_;
  std::vector<PayloadFile> spares_;  // each without home_ (which would make a cycle)
  // spares_.size(), read without the lock by lend(), which most tasks call with none spare.
  std::atomic<std::size_t> spare_count_{0};
  std::size_t files_ = 0;  // spare or in use, of this pool
  std::size_t bytes_ = 0;  // their capacities
  bool retired_ = false;
};

// A worker's mappings of the caller's memfds: the last two it used (a task's arguments and the
// memfd lent for its result), so the next task that names one maps nothing. Between tasks it keeps
// only those the caller may reuse (no larger than `most_bytes`, the pool's payload_cache_bytes):
// a mapping here keeps a memfd alive, so one the caller let go must not stay mapped.
class WorkerMappings {
 public:
  explicit WorkerMappings(std::size_t most_bytes) : most_bytes_(most_bytes) {}
  // The memfd `name`, descriptor `fd` of `holder`, mapped with at least `size` bytes populated.
  // Throws DecodeError if the holder no longer has it.
  PayloadFile& get(pid_t holder, int fd, const std::string& name, std::size_t size);
  // Keeps the mapping of a memfd this worker made and sent to the caller, which reuses it.
  void keep(PayloadFile file);
  // Between tasks: lets go of those larger than most_bytes.
  void trim() noexcept;

 private:
  static constexpr std::size_t kKept = 2;  // during a task: its arguments' and its result's
  const std::size_t most_bytes_;
  std::list<PayloadFile> kept_;  // most recently used last; a list, so references stay valid
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
