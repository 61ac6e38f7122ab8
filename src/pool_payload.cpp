// Out-of-band pool payloads: sealed memfds, opened through /proc or passed over a socket.
#include "shmq/detail/pool_payload.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

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

std::byte* map(int fd, std::size_t size, int protection) {
  if (size == 0) return nullptr;
  // MAP_POPULATE: the pages are used at once, front to back; one fault-in beats one per page.
  void* p = mmap(nullptr, size, protection, MAP_SHARED | MAP_POPULATE, fd, 0);
  return p == MAP_FAILED ? nullptr : static_cast<std::byte*>(p);
}

}  // namespace

std::uint64_t next_payload_serial() noexcept {
  static std::atomic<std::uint64_t> sent{0};
  return sent.fetch_add(1, std::memory_order_relaxed) + 1;
}

PayloadFile::PayloadFile(PayloadFile&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

PayloadFile& PayloadFile::operator=(PayloadFile&& other) noexcept {
  if (this != &other) {
    PayloadFile old(std::move(*this));
    fd_ = std::exchange(other.fd_, -1);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

PayloadFile::~PayloadFile() {
  unmap();
  if (fd_ >= 0) close(fd_);
}

void PayloadFile::unmap() noexcept {
  if (data_ != nullptr) munmap(data_, size_);
  data_ = nullptr;
}

PayloadFile PayloadFile::create(const std::string& name, std::size_t size,
                                const std::string& what) {
  const auto fail = [&](const char* doing) {
    const int err = errno;
    throw Error("shmq::Pool: cannot " + std::string(doing) + " a memfd of " + std::to_string(size) +
                " bytes for " + what + ": " + errno_text(err));
  };
  constexpr unsigned kNoExecSeal = 0x0008U;  // MFD_NOEXEC_SEAL (Linux 6.3); older kernels: EINVAL
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING | kNoExecSeal);
  if (fd < 0 && errno == EINVAL) fd = memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) fail("create");
  PayloadFile file(fd, nullptr, size);
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) fail("size");
  file.data_ = map(fd, size, PROT_READ | PROT_WRITE);
  if (size != 0 && file.data_ == nullptr) fail("map");
  return file;
}

void PayloadFile::seal(const std::string& what) {
  unmap();  // F_SEAL_WRITE refuses while a writable mapping exists
  if (fcntl(fd_, F_ADD_SEALS, kSizeSeals | F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
    throw Error("shmq::Pool: cannot seal the memfd of " + what + ": " + errno_text(errno));
  }
}

PayloadFile PayloadFile::open(pid_t pid, int fd, const std::string& name, std::size_t size) {
  const std::string link = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
  const std::string expected = "/memfd:" + name + " (deleted)";
  const auto gone = [&] {
    return DecodeError("shmq::Pool: the task's arguments (" + std::to_string(size) +
                       " bytes out of band) are no longer held by the pool's process " +
                       std::to_string(pid));
  };
  // Looked at before opening, so a descriptor number reused for a FIFO or a device is never
  // opened; after, so that what was opened is the memfd looked at.
  const auto target = link_target(link);
  if (!target && (errno == EACCES || errno == EPERM)) {
    throw Error("shmq::Pool: a worker cannot open the task's arguments (" + std::to_string(size) +
                " bytes out of band): " + link + " is closed to it (" + errno_text(errno) +
                "): the process that made the pool is not dumpable");
  }
  if (target != expected) throw gone();
  const int opened = ::open(link.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (opened < 0) throw gone();
  if (link_target("/proc/self/fd/" + std::to_string(opened)) != expected) {
    close(opened);
    throw gone();
  }
  return read_only(opened, size);
}

PayloadFile PayloadFile::adopt(int fd, std::size_t size) {
  return read_only(fd, size);
}

PayloadFile PayloadFile::read_only(int fd, std::size_t size) {
  PayloadFile file(fd, nullptr, size);  // closes fd on every throw below
  struct stat st;
  const int seals = fcntl(fd, F_GET_SEALS);
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || seals < 0 ||
      (seals & kSizeSeals) != kSizeSeals || static_cast<std::size_t>(st.st_size) != size) {
    throw DecodeError("shmq::Pool: an out-of-band payload is not a memfd sealed at its " +
                      std::to_string(size) + " bytes");
  }
  file.data_ = map(fd, size, PROT_READ);
  if (size != 0 && file.data_ == nullptr) {
    throw Error("shmq::Pool: cannot map an out-of-band payload of " + std::to_string(size) +
                " bytes: " + errno_text(errno));
  }
  return file;
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
