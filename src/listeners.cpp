// Listeners on an EventCount (Notifier's direct wake-up): the slot protocol.
//
// A notifier claims a slot (listen: CAS owner 0 -> pid << 32 | fd, then a release store of the
// pipe's inode) and announces itself as a sleeper on the EventCount, as a waiting get would.
// A producer that finds sleepers calls wake(), which calls ring_listeners(): for each slot whose
// owner and inode it reads consistently, it opens /proc/PID/fd/FD for writing (a pipe's read end
// reopened that way gives a write end of the same pipe; an eventfd cannot be reopened), checks
// that the descriptor is a pipe with the registered inode, writes one byte (non-blocking: a full
// pipe is readable already) and closes it. So the notifier's event loop is woken by the producer
// itself: one wake-up, no thread in between.
//
// Reopening through /proc costs some 10 us (path walk, permission check), so a waker keeps the
// write end it opened, in a small per-process table keyed by the slot's address, owner and
// inode: while the slot still shows the same owner and inode, the kept descriptor is a write end
// of that very pipe (holding it keeps the inode from being reused). An entry is dropped when its
// slot changes, when the write finds no reader (EPIPE: the notifier is gone), when its space is
// needed, and when the queue handle whose header holds the slot is unmapped (forget_listeners,
// from segment.cpp): descriptors live no longer than the handles they serve. The table's lock
// is only tried: a waker that finds it busy takes the uncached path, so nothing waits on it, and
// a lock left held by a thread that a fork did not copy is taken over (it records its pid).
//
// Writes are made with SIGPIPE blocked: a notifier that dies between our check and our write
// must cost an EPIPE, not the producer's life.
//
// Crash safety. A producer killed anywhere in here has written its byte or not; a byte not written
// is a wake-up lost exactly as a futex wake is, and the notifier's helper thread, which looks at
// every object at least every kLongestSleep, makes up for it. A notifier killed leaves its slot
// naming a descriptor that no longer exists: the next waker's stat() fails with ENOENT and
// releases the slot (zeroing `pipe`, then a CAS of owner from the value it read). The pid may
// have been reused by then: the inode check keeps a byte out of anybody else's descriptor (pipe
// inodes are not reused while the pipe exists), and the slot is released if that descriptor is
// not the registered pipe. A waker killed while releasing leaves owner set with pipe 0, which
// the next waker releases once the descriptor is gone. Every step is one syscall or one atomic;
// nothing here waits.
#include "shmq/detail/listeners.hpp"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdio>

namespace shmq::detail {

namespace {

std::uint64_t key_of(pid_t pid, int fd) noexcept {
  return (static_cast<std::uint64_t>(pid) << 32) | static_cast<std::uint32_t>(fd);
}

// Releases a slot found stale: `pipe` first, so that nobody claims the slot while a reader could
// still pair the new owner with the old inode.
void release(ListenerSlot& slot, std::uint64_t owner, std::uint64_t inode) noexcept {
  if (inode != 0 && !slot.pipe.compare_exchange_strong(inode, 0, std::memory_order_acq_rel)) {
    return;  // somebody else released it (and it may be claimed again since)
  }
  slot.owner.compare_exchange_strong(owner, 0, std::memory_order_release);
}

// /proc/PID/fd/FD for a slot's owner word.
struct ProcPath {
  char text[48];
  explicit ProcPath(std::uint64_t owner) noexcept {
    std::snprintf(text, sizeof text, "/proc/%u/fd/%u", static_cast<unsigned>(owner >> 32),
                  static_cast<unsigned>(owner));
  }
};
int open_write_end(const ProcPath& path) noexcept {
  return open(path.text, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
}

// One byte into a write end of a listener's pipe, SIGPIPE blocked; false if the pipe has no
// reader any more (its notifier is gone).
bool write_bell(int fd) noexcept {
  sigset_t pipe_signal, old;
  sigemptyset(&pipe_signal);
  sigaddset(&pipe_signal, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_signal, &old);
  const char bell = 1;
  const bool reader = write(fd, &bell, 1) == 1 || errno != EPIPE;  // EAGAIN: full, so readable
  if (!reader && !sigismember(&old, SIGPIPE)) {
    const timespec now{0, 0};
    sigtimedwait(&pipe_signal, nullptr, &now);  // ours: consumed before SIGPIPE is unblocked
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return reader;
}

// The per-process table of write ends already opened (see the file comment).
struct Kept {
  const ListenerSlot* slot;  // null when the entry is free
  std::uint64_t owner;
  std::uint64_t inode;
  int fd;
};
constexpr std::size_t kKept = 16;
Kept kept[kKept];
std::size_t next_victim = 0;
std::atomic<pid_t> kept_holder{0};  // pid of the thread's process holding the table, or 0

bool try_hold_table() noexcept {
  const pid_t me = getpid();
  pid_t holder = kept_holder.load(std::memory_order_relaxed);
  // A holder from before a fork (another pid) is a thread this process does not have.
  if (holder == me) return false;
  return kept_holder.compare_exchange_strong(holder, me, std::memory_order_acquire);
}
void release_table() noexcept {
  kept_holder.store(0, std::memory_order_release);
}

void drop(Kept& entry) noexcept {
  close(entry.fd);
  entry.slot = nullptr;
}

// Opens a write end of the pipe a slot names, checked to be that pipe; -1 if it cannot (and
// releases the slot if the descriptor is gone).
int open_listener(ListenerSlot& slot, std::uint64_t owner, std::uint64_t inode) noexcept {
  const ProcPath path(owner);
  struct stat st;
  // stat before open: opening whatever now has that number (a device) could have side effects.
  if (stat(path.text, &st) != 0) {
    if (errno == ENOENT) release(slot, owner, inode);  // the process or its descriptor is gone
    return -1;                                         // EACCES and the like: not ours to judge
  }
  if (inode == 0) return -1;  // being claimed (or a release half done: released once it is gone)
  if (!S_ISFIFO(st.st_mode) || st.st_ino != inode) {
    release(slot, owner, inode);  // the number names something else now: the pipe is gone
    return -1;
  }
  const int fd = open_write_end(path);
  if (fd < 0) return -1;
  // Checked again on what we opened: the descriptor may have changed since the stat.
  if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode) || st.st_ino != inode) {
    close(fd);
    return -1;
  }
  return fd;
}

void ring(ListenerSlot& slot) noexcept {
  const std::uint64_t owner = slot.owner.load(std::memory_order_acquire);
  if (owner == 0) return;
  const std::uint64_t inode = slot.pipe.load(std::memory_order_acquire);
  // Consistent pair: the owner did not change while we read the inode (see release()).
  if (slot.owner.load(std::memory_order_acquire) != owner) return;
  if (!try_hold_table()) {  // another thread rings: the uncached path, which waits for nobody
    const int fd = open_listener(slot, owner, inode);
    if (fd < 0) return;
    if (!write_bell(fd)) release(slot, owner, inode);
    close(fd);
    return;
  }
  Kept* entry = nullptr;
  for (Kept& k : kept) {
    if (k.slot != &slot) continue;
    if (k.owner == owner && k.inode == inode) {
      entry = &k;
    } else {
      drop(k);  // the slot changed hands: that pipe is not this listener's
    }
  }
  if (entry == nullptr) {
    const int fd = open_listener(slot, owner, inode);
    if (fd >= 0) {
      entry = &kept[next_victim];
      next_victim = (next_victim + 1) % kKept;
      if (entry->slot != nullptr) drop(*entry);
      *entry = {&slot, owner, inode, fd};
    }
  }
  if (entry != nullptr && !write_bell(entry->fd)) {
    drop(*entry);
    release(slot, owner, inode);
  }
  release_table();
}

}  // namespace

bool reopenable(int read_fd) noexcept {
  const int fd = open_write_end(ProcPath(key_of(getpid(), read_fd)));
  if (fd < 0) return false;
  close(fd);
  return true;
}

int listen(EventCount& ev, const ListenerPipe& pipe) noexcept {
  const std::uint64_t me = key_of(getpid(), pipe.read_fd);
  for (std::size_t i = 0; i < kListenerSlots; ++i) {
    std::uint64_t free = 0;
    if (ev.listeners[i].owner.compare_exchange_strong(free, me, std::memory_order_acq_rel)) {
      ev.listeners[i].pipe.store(pipe.inode, std::memory_order_release);
      return static_cast<int>(i);
    }
  }
  return -1;
}

bool listening(const EventCount& ev, int slot, const ListenerPipe& pipe) noexcept {
  const ListenerSlot& s = ev.listeners[slot];
  return s.owner.load(std::memory_order_acquire) == key_of(getpid(), pipe.read_fd) &&
         s.pipe.load(std::memory_order_acquire) == pipe.inode;
}

void unlisten(EventCount& ev, int slot, const ListenerPipe& pipe) noexcept {
  release(ev.listeners[slot], key_of(getpid(), pipe.read_fd), pipe.inode);
}

void ring_listeners(EventCount& ev) noexcept {
  for (ListenerSlot& slot : ev.listeners) ring(slot);
}

void forget_listeners(const void* begin, std::size_t bytes) noexcept {
  while (!try_hold_table()) sched_yield();  // held for one write at most
  const auto* first = static_cast<const std::byte*>(begin);
  for (Kept& k : kept) {
    const auto* at = reinterpret_cast<const std::byte*>(k.slot);
    if (k.slot != nullptr && at >= first && at < first + bytes) drop(k);
  }
  release_table();
}

}  // namespace shmq::detail
