// Listeners on an EventCount (Notifier's direct wake-up): the slot protocol.
//
// A notifier claims a slot (listen: CAS owner 0 -> pid << 32 | fd, then a release store of the
// pipe's inode) and counts itself as a listener on the EventCount (layout.hpp), as a waiting get
// counts itself as a sleeper.
// A producer that finds a listener counted calls wake(), which calls ring_listeners(): for each
// slot whose owner and inode it reads consistently, it opens /proc/PID/fd/FD for reading and
// writing (a pipe's read end reopened that way is an end of the same pipe; an eventfd cannot be
// reopened), checks that the descriptor is a pipe with the registered inode, and writes one byte
// (non-blocking: a full pipe is readable already). So the notifier's event loop is woken by the
// producer itself: one wake-up, no thread in between.
//
// Why reading and writing: the pipe then always has a reader, the producer itself, so a write can
// never fail with EPIPE nor raise SIGPIPE, whatever the notifier's process does, and no signal
// mask has to be changed around it (two syscalls per write). The price: a write into a dead
// notifier's pipe succeeds, so its death is not seen by the write. It is seen when the pipe is
// full (a write fails with EAGAIN: the producer then looks whether the descriptor still exists),
// by every producer that opens the pipe afresh, and by a notifier that finds every slot taken
// (listen() looks at each and releases the gone ones). A dead notifier's slot costs nothing else:
// the first wake-up after its death clears its count, and later puts do not call wake() for it.
//
// Reopening through /proc costs some 10 us (path walk, permission check), so a waker keeps the
// end it opened, in a small per-process table keyed by the slot's address, owner and inode: while
// the slot still shows the same owner and inode, the kept descriptor is an end of that very pipe
// (holding it keeps the inode from being reused). An entry is dropped when its slot changes, when
// a full pipe's notifier is found gone, when its space is needed, and when the queue handle whose
// header holds the slot is unmapped (forget_listeners, from segment.cpp): descriptors live no
// longer than the handles they serve. The table's lock is only tried: a waker that finds it busy
// takes the uncached path, so nothing waits on it, and a lock left held by a thread that a fork did
// not copy is taken over (it records its pid).
//
// Crash safety. A producer killed anywhere in here has written its byte or not; a byte not written
// is a wake-up lost exactly as a futex wake is, and the notifier's helper thread, which looks at
// every object at least every kLongestSleep, makes up for it. A notifier killed leaves its slot
// naming a descriptor that no longer exists: whoever looks (above) finds that stat() fails with
// ENOENT and releases the slot (zeroing `pipe`, then a CAS of owner from the value it read). The
// pid may have been reused by then: the inode check keeps a byte out of anybody else's descriptor
// (pipe inodes are not reused while the pipe exists), and the slot is released if that descriptor
// is not the registered pipe. A waker killed while releasing leaves owner set with pipe 0, which
// the next waker releases once the descriptor is gone. Every step is one syscall or one atomic;
// nothing here waits.
#include "shmq/detail/listeners.hpp"

#include <fcntl.h>
#include <sched.h>
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
int open_pipe_end(const ProcPath& path) noexcept {
  return open(path.text, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
}

// One byte into an end of a listener's pipe; false if the pipe is full (EAGAIN), when it is worth
// looking whether its notifier is still there. Never EPIPE: the end we write with reads too.
bool write_bell(int fd) noexcept {
  const char bell = 1;
  return write(fd, &bell, 1) == 1 || errno != EAGAIN;
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
  const pid_t me = this_process_id();
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

// Whether the descriptor a slot names is still the registered pipe (stat before any open: opening
// whatever now has that number, a device, could have side effects). Releases the slot if the
// descriptor is gone or is something else now.
bool still_there(ListenerSlot& slot, std::uint64_t owner, std::uint64_t inode,
                 const ProcPath& path) noexcept {
  struct stat st;
  if (stat(path.text, &st) != 0) {
    if (errno == ENOENT) release(slot, owner, inode);  // the process or its descriptor is gone
    return false;                                      // EACCES and the like: not ours to judge
  }
  if (inode == 0) return false;  // being claimed (or a release half done: released once gone)
  if (!S_ISFIFO(st.st_mode) || st.st_ino != inode) {
    release(slot, owner, inode);  // the number names something else now: the pipe is gone
    return false;
  }
  return true;
}

// Opens an end of the pipe a slot names, checked to be that pipe; -1 if it cannot (and releases
// the slot if the descriptor is gone).
int open_listener(ListenerSlot& slot, std::uint64_t owner, std::uint64_t inode) noexcept {
  const ProcPath path(owner);
  if (!still_there(slot, owner, inode, path)) return -1;
  const int fd = open_pipe_end(path);
  if (fd < 0) return -1;
  // Checked again on what we opened: the descriptor may have changed since the stat.
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode) || st.st_ino != inode) {
    close(fd);
    return -1;
  }
  return fd;
}

// Rings through `fd`; a full pipe makes us look whether the listener is still there. False if it
// is not (the slot is released then).
bool ring_through(int fd, ListenerSlot& slot, std::uint64_t owner, std::uint64_t inode) noexcept {
  return write_bell(fd) || still_there(slot, owner, inode, ProcPath(owner));
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
    ring_through(fd, slot, owner, inode);
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
  if (entry != nullptr && !ring_through(entry->fd, slot, owner, inode)) drop(*entry);
  release_table();
}

}  // namespace

bool reopenable(int read_fd) noexcept {
  const int fd = open_pipe_end(ProcPath(key_of(this_process_id(), read_fd)));
  if (fd < 0) return false;
  close(fd);
  return true;
}

int listen(EventCount& ev, const ListenerPipe& pipe) noexcept {
  const std::uint64_t me = key_of(this_process_id(), pipe.read_fd);
  // The second pass after looking at every taken slot: a listener's death is not seen by the
  // writes into its pipe (see the file comment), so its slot may still look taken.
  for (int pass = 0; pass < 2; ++pass) {
    for (ListenerSlot& slot : ev.listeners) {
      std::uint64_t owner = slot.owner.load(std::memory_order_acquire);
      if (owner != 0 && pass == 1 && owner != me) {
        still_there(slot, owner, slot.pipe.load(std::memory_order_acquire), ProcPath(owner));
        owner = slot.owner.load(std::memory_order_acquire);
      }
      if (owner != 0) continue;
      if (slot.owner.compare_exchange_strong(owner, me, std::memory_order_acq_rel)) {
        slot.pipe.store(pipe.inode, std::memory_order_release);
        return static_cast<int>(&slot - ev.listeners);
      }
    }
  }
  return -1;
}

bool listening(const EventCount& ev, int slot, const ListenerPipe& pipe) noexcept {
  const ListenerSlot& s = ev.listeners[slot];
  return s.owner.load(std::memory_order_acquire) == key_of(this_process_id(), pipe.read_fd) &&
         s.pipe.load(std::memory_order_acquire) == pipe.inode;
}

void unlisten(EventCount& ev, int slot, const ListenerPipe& pipe) noexcept {
  release(ev.listeners[slot], key_of(this_process_id(), pipe.read_fd), pipe.inode);
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
