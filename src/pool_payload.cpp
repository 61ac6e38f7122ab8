// Out-of-band pool payloads: sealed memfds, opened through /proc or passed over a socket.
#include "shmq/detail/pool_payload.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <optional>
#include <utility>

#include "shmq/detail/pool_wire.hpp"
#include "shmq/errors.hpp"

namespace shmq::detail {

namespace {

constexpr int kSizeSeals = F_SEAL_SHRINK | F_SEAL_GROW;
constexpr std::size_t kPage = 4096;
// Caller-made memfds are rounded up to this, so a payload a little larger than the last one still
// fits its memfd.
constexpr std::size_t kCapacityStep = std::size_t{1} << 20;

std::string errno_text(int err) {
  return std::strerror(err);
}

// What /proc shows as a descriptor's target; nullopt if it cannot be read.
std::optional<std::string> link_target(const std::string& path) {
  char buf[256];
  const ssize_t n = readlink(path.c_str(), buf, sizeof buf);
  if (n < 0 || static_cast<std::size_t>(n) == sizeof buf) return std::nullopt;
  return std::string(buf, static_cast<std::size_t>(n));
}

std::string descriptor_path(pid_t pid, int fd) {
  return "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
}
std::string memfd_target(const std::string& name) {
  return "/memfd:" + name + " (deleted)";
}

// The name a memfd was created with, from what /proc shows for descriptor `fd` of this process.
std::string own_memfd_name(int fd) {
  const std::string prefix = "/memfd:", suffix = " (deleted)";
  const std::string target = link_target(descriptor_path(getpid(), fd)).value_or("");
  if (target.size() < prefix.size() + suffix.size() ||
      target.compare(0, prefix.size(), prefix) != 0 ||
      target.compare(target.size() - suffix.size(), suffix.size(), suffix) != 0) {
    return {};
  }
  return target.substr(prefix.size(), target.size() - prefix.size() - suffix.size());
}

// A number for the next memfd this process makes, in its name.
std::uint64_t next_payload_serial() noexcept {
  static std::atomic<std::uint64_t> made{0};
  return made.fetch_add(1, std::memory_order_relaxed) + 1;
}

}  // namespace

PayloadFile::PayloadFile(PayloadFile&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      name_(std::move(other.name_)),
      data_(std::exchange(other.data_, nullptr)),
      capacity_(std::exchange(other.capacity_, 0)),
      size_(std::exchange(other.size_, 0)),
      populated_(std::exchange(other.populated_, 0)),
      writable_(std::exchange(other.writable_, false)),
      home_(std::move(other.home_)) {}

PayloadFile& PayloadFile::operator=(PayloadFile&& other) noexcept {
  if (this != &other) {
    PayloadFile old(std::move(*this));
    fd_ = std::exchange(other.fd_, -1);
    name_ = std::move(other.name_);
    data_ = std::exchange(other.data_, nullptr);
    capacity_ = std::exchange(other.capacity_, 0);
    size_ = std::exchange(other.size_, 0);
    populated_ = std::exchange(other.populated_, 0);
    writable_ = std::exchange(other.writable_, false);
    home_ = std::move(other.home_);
  }
  return *this;
}

PayloadFile::~PayloadFile() {
  if (home_ && fd_ >= 0) {
    const auto home = std::move(home_);
    home->give_back(std::move(*this));
  } else {
    release();
  }
}

void PayloadFile::release() noexcept {
  if (data_ != nullptr) munmap(data_, capacity_);
  if (fd_ >= 0) close(fd_);
  data_ = nullptr;
  fd_ = -1;
}

void PayloadFile::discard() noexcept {
  if (home_ && fd_ >= 0) std::exchange(home_, nullptr)->dropped(capacity_);
  release();
}

PayloadFile PayloadFile::create(const std::string& name, std::size_t capacity,
                                const std::string& what) {
  const auto fail = [&](const char* doing) {
    const int err = errno;
    throw Error("shmq::Pool: cannot " + std::string(doing) + " a memfd of " +
                std::to_string(capacity) + " bytes for " + what + ": " + errno_text(err));
  };
  constexpr unsigned kNoExecSeal = 0x0008U;  // MFD_NOEXEC_SEAL (Linux 6.3); older kernels: EINVAL
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING | kNoExecSeal);
  if (fd < 0 && errno == EINVAL) fd = memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) fail("create");
  PayloadFile unmapped;  // closes fd on every throw until checked() takes it
  unmapped.fd_ = fd;
  if (ftruncate(fd, static_cast<off_t>(capacity)) != 0) fail("size");
  if (capacity != 0 && fallocate(fd, 0, 0, static_cast<off_t>(capacity)) != 0) fail("allocate");
  if (fcntl(fd, F_ADD_SEALS, kSizeSeals | F_SEAL_SEAL) != 0) fail("seal");
  return checked(std::exchange(unmapped.fd_, -1), name, capacity);
}

PayloadFile PayloadFile::open(pid_t pid, int fd, const std::string& name, std::size_t size) {
  const std::string link = descriptor_path(pid, fd);
  const std::string expected = memfd_target(name);
  const auto gone = [&] {
    return DecodeError("shmq::Pool: a task's payload (" + std::to_string(size) +
                       " bytes out of band) is no longer held by the pool's process " +
                       std::to_string(pid));
  };
  // Looked at before opening, so a descriptor number reused for a FIFO or a device is never
  // opened; after, so that what was opened is the memfd looked at.
  const auto target = link_target(link);
  if (!target && (errno == EACCES || errno == EPERM)) {
    throw Error("shmq::Pool: a worker cannot open a task's payload (" + std::to_string(size) +
                " bytes out of band): " + link + " is closed to it (" + errno_text(errno) +
                "): the process that made the pool is not dumpable");
  }
  if (target != expected) throw gone();
  const int opened = ::open(link.c_str(), O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (opened < 0) throw gone();
  if (link_target(descriptor_path(getpid(), opened)) != expected) {
    close(opened);
    throw gone();
  }
  return checked(opened, name, size);
}

PayloadFile PayloadFile::adopt(int fd, std::size_t size) {
  return checked(fd, own_memfd_name(fd), size);
}

PayloadFile PayloadFile::checked(int fd, std::string name, std::size_t size) {
  PayloadFile file;  // closes fd on every throw below
  file.fd_ = fd;
  file.name_ = std::move(name);
  struct stat st;
  const int seals = fcntl(fd, F_GET_SEALS);
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || seals < 0 ||
      (seals & kSizeSeals) != kSizeSeals || static_cast<std::size_t>(st.st_size) < size) {
    throw DecodeError(
        "shmq::Pool: an out-of-band payload is not a memfd sealed at a size of at "
        "least its " +
        std::to_string(size) + " bytes");
  }
  file.capacity_ = static_cast<std::size_t>(st.st_size);
  file.size_ = size;
  if (file.capacity_ == 0) return file;
  void* p = mmap(nullptr, file.capacity_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  file.writable_ = p != MAP_FAILED;
  // Read-only when the descriptor or a seal allows no more (a result sent by a worker could be).
  if (p == MAP_FAILED) p = mmap(nullptr, file.capacity_, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    throw Error("shmq::Pool: cannot map an out-of-band payload of " + std::to_string(size) +
                " bytes: " + errno_text(errno));
  }
  file.data_ = static_cast<std::byte*>(p);
  // A child the program forks gets no copy of it: the mapping is this process's alone.
  madvise(p, file.capacity_, MADV_DONTFORK);
  return file;
}

bool PayloadFile::held_by(pid_t pid, int fd) const {
  return link_target(descriptor_path(pid, fd)) == memfd_target(name_);
}

void PayloadFile::populate(std::size_t bytes) noexcept {
  bytes = std::min(capacity_, (bytes + kPage - 1) / kPage * kPage);
  if (data_ == nullptr || bytes <= populated_) return;
  // One call maps the pages (on Linux >= 5.14; before, they fault in one by one as used). The
  // memory is there (create() allocated it), so this cannot fail for want of it.
  madvise(data_ + populated_, bytes - populated_,
          writable_ ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
  populated_ = bytes;
}

PayloadFile PayloadFiles::take(std::size_t size, const std::string& what) {
  PayloadFile file;
  {
    std::lock_guard lock(mutex_);
    auto best = spares_.end();
    for (auto it = spares_.begin(); it != spares_.end(); ++it) {
      if (it->capacity() >= size && (best == spares_.end() || it->capacity() < best->capacity())) {
        best = it;
      }
    }
    if (best != spares_.end()) {
      file = std::move(*best);
      spares_.erase(best);
      spare_count_.store(spares_.size(), std::memory_order_relaxed);
      file.home_ = shared_from_this();
    }
  }
  if (!file.is_open()) {
    const std::size_t capacity = (size + kCapacityStep - 1) / kCapacityStep * kCapacityStep;
    file = PayloadFile::create(
        "shmq.pool." + std::to_string(getpid()) + "." + std::to_string(next_payload_serial()),
        capacity, what);
    keep(file);
  }
  file.set_size(size);
  file.populate(size);
  return file;
}

PayloadFile PayloadFiles::lend() {
  if (spare_count_.load(std::memory_order_relaxed) == 0) return {};
  std::lock_guard lock(mutex_);
  if (spares_.empty()) return {};
  const auto largest = std::max_element(
      spares_.begin(), spares_.end(),
      [](const PayloadFile& a, const PayloadFile& b) { return a.capacity() < b.capacity(); });
  PayloadFile file = std::move(*largest);
  spares_.erase(largest);
  spare_count_.store(spares_.size(), std::memory_order_relaxed);
  file.home_ = shared_from_this();
  return file;
}

void PayloadFiles::keep(PayloadFile& file) noexcept {
  if (!file.writable() || file.home_) return;
  std::vector<PayloadFile> closing;  // closed after the lock is let go
  std::lock_guard lock(mutex_);
  if (retired_) return;
  // Room made by closing the smallest spares, so that a larger payload that repeats gets warm.
  std::sort(spares_.begin(), spares_.end(),
            [](const PayloadFile& a, const PayloadFile& b) { return a.capacity() > b.capacity(); });
  const auto fits = [&] {
    return files_ + 1 <= most_files_ && bytes_ + file.capacity() <= most_bytes_;
  };
  while (!fits() && !spares_.empty() && spares_.back().capacity() <= file.capacity()) {
    --files_;
    bytes_ -= spares_.back().capacity();
    closing.push_back(std::move(spares_.back()));
    spares_.pop_back();
  }
  spare_count_.store(spares_.size(), std::memory_order_relaxed);
  if (!fits()) return;
  ++files_;
  bytes_ += file.capacity();
  file.home_ = shared_from_this();
}

void PayloadFiles::give_back(PayloadFile file) noexcept {
  std::lock_guard lock(mutex_);
  if (retired_) {
    --files_;
    bytes_ -= file.capacity();
    return;  // file closes as it goes
  }
  spares_.push_back(std::move(file));
  spare_count_.store(spares_.size(), std::memory_order_relaxed);
}

void PayloadFiles::dropped(std::size_t capacity) noexcept {
  std::lock_guard lock(mutex_);
  --files_;
  bytes_ -= capacity;
}

void PayloadFiles::retire() noexcept {
  std::vector<PayloadFile> closing;
  std::lock_guard lock(mutex_);
  retired_ = true;
  for (const auto& spare : spares_) {
    --files_;
    bytes_ -= spare.capacity();
  }
  closing.swap(spares_);
  spare_count_.store(0, std::memory_order_relaxed);
}

PayloadFile& WorkerMappings::get(pid_t holder, int fd, const std::string& name, std::size_t size) {
  const auto kept = std::find_if(kept_.begin(), kept_.end(),
                                 [&](const PayloadFile& f) { return f.name() == name; });
  if (kept != kept_.end()) {
    if (kept->capacity() < size || !kept->held_by(holder, fd)) {
      kept_.erase(kept);
      throw DecodeError("shmq::Pool: a task's payload (" + std::to_string(size) +
                        " bytes out of band) is no longer held by the pool's process " +
                        std::to_string(holder));
    }
    kept_.splice(kept_.end(), kept_, kept);
  } else {
    keep(PayloadFile::open(holder, fd, name, size));
  }
  PayloadFile& file = kept_.back();
  file.set_size(size);
  file.populate(size);
  return file;
}

void WorkerMappings::keep(PayloadFile file) {
  kept_.push_back(std::move(file));
  if (kept_.size() > kKept) kept_.pop_front();
}

void WorkerMappings::trim() noexcept {
  kept_.remove_if([&](const PayloadFile& f) { return f.capacity() > most_bytes_; });
}

PayloadChannel::PayloadChannel() {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, fds) != 0) {
    throw Error("shmq::Pool: cannot make the socket pair for large results: " + errno_text(errno));
  }
  receive_fd_ = fds[0];
  send_fd_ = fds[1];
}

PayloadChannel::~PayloadChannel() {
  close_receiving_end();
  close_sending_end();
  for (const auto& [id, fd] : received_) close_fd(fd);
}

void PayloadChannel::close_fd(int fd) noexcept {
  close(fd);
}

void PayloadChannel::close_receiving_end() noexcept {
  if (receive_fd_ >= 0) close(receive_fd_);
  receive_fd_ = -1;
}

void PayloadChannel::close_sending_end() noexcept {
  if (send_fd_ >= 0) close(send_fd_);
  send_fd_ = -1;
}

namespace {

// One datagram of the channel: a task id, and room for the one descriptor that travels with it.
struct DescriptorDatagram {
  std::uint64_t id = 0;
  iovec data{&id, sizeof id};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr message{};

  DescriptorDatagram() {
    message.msg_iov = &data;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof control;
  }
  DescriptorDatagram(const DescriptorDatagram&) = delete;  // `message` points into itself
  DescriptorDatagram& operator=(const DescriptorDatagram&) = delete;
};

}  // namespace

void PayloadChannel::send(std::uint64_t id, const PayloadFile& file) {
  DescriptorDatagram datagram;
  datagram.id = id;
  cmsghdr* header = CMSG_FIRSTHDR(&datagram.message);
  header->cmsg_level = SOL_SOCKET;
  header->cmsg_type = SCM_RIGHTS;
  header->cmsg_len = CMSG_LEN(sizeof(int));
  const int fd = file.fd();
  std::memcpy(CMSG_DATA(header), &fd, sizeof fd);
  ssize_t sent;
  do {
    sent = sendmsg(send_fd_, &datagram.message, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) {
    throw Error("shmq::Pool: cannot pass a result of " + std::to_string(file.size()) +
                " bytes to the pool's process: " + errno_text(errno));
  }
}

void PayloadChannel::drain() {
  for (;;) {
    DescriptorDatagram datagram;
    const ssize_t n = recvmsg(receive_fd_, &datagram.message, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return;  // EAGAIN: nothing more waiting
    const cmsghdr* header = CMSG_FIRSTHDR(&datagram.message);
    if (header == nullptr || header->cmsg_type != SCM_RIGHTS) continue;
    int fd;
    std::memcpy(&fd, CMSG_DATA(header), sizeof fd);
    if (n != sizeof datagram.id || (datagram.message.msg_flags & MSG_CTRUNC) != 0) {
      close(fd);
      continue;
    }
    // A second datagram for one id (a task run twice): the first stands, as for results.
    if (!received_.emplace(datagram.id, fd).second) close(fd);
  }
}

int PayloadChannel::receive(std::uint64_t id) {
  drain();
  const auto it = received_.find(id);
  if (it == received_.end()) return -1;
  const int fd = it->second;
  received_.erase(it);
  return fd;
}

}  // namespace shmq::detail
