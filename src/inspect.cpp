// Inspection from outside: list segments, read any queue's stats, find who maps it.
#include "shmq/inspect.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "shmq/detail/segment.hpp"
#include "shmq/detail/sync_object.hpp"

namespace shmq {

namespace {

std::vector<std::string> directory(const char* path) {
  std::vector<std::string> names;
  if (DIR* dir = opendir(path)) {
    while (const dirent* entry = readdir(dir)) names.emplace_back(entry->d_name);
    closedir(dir);
  }
  return names;
}

// When a process started, in seconds since the epoch; nullopt if it does not exist.
std::optional<double> start_time(pid_t pid) {
  const auto ticks = detail::process_start_ticks(pid);
  if (!ticks) return std::nullopt;
  std::ifstream proc_stat("/proc/stat");
  std::string key;
  double boot = 0;
  while (proc_stat >> key) {
    if (key == "btime") {
      proc_stat >> boot;
      break;
    }
  }
  return boot + double(*ticks) / double(sysconf(_SC_CLK_TCK));
}

}  // namespace

namespace {

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  for (std::size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
    s.replace(at, from.size(), to);
  }
}

// Where the template argument list opened at s[open] ('<') closes, or npos.
std::size_t matching_close(const std::string& s, std::size_t open) {
  int depth = 0;
  for (std::size_t i = open; i < s.size(); ++i) {
    if (s[i] == '<') ++depth;
    if (s[i] == '>' && --depth == 0) return i;
  }
  return std::string::npos;
}

// Removes one trailing template argument that only restates a default (", std::allocator<...>"
// right before its list's '>'); false when there is none left.
bool drop_a_default_argument(std::string& s) {
  for (const std::string_view defaulted :
       {", std::allocator<", ", std::less<", ", std::hash<", ", std::equal_to<",
        ", std::char_traits<", ", std::default_delete<"}) {
    for (std::size_t at = s.find(defaulted); at != std::string::npos;
         at = s.find(defaulted, at + 1)) {
      const std::size_t close = matching_close(s, at + defaulted.size() - 1);
      if (close == std::string::npos) continue;
      std::size_t next = close + 1;
      while (next < s.size() && s[next] == ' ') ++next;
      if (next < s.size() && s[next] == '>') {
        s.erase(at, next - at);
        return true;
      }
    }
  }
  return false;
}

// "3ul" -> "3": integer literals as template arguments (std::array<int, 3ul>).
void drop_integer_suffixes(std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    out += s[i];
    const bool starts_number = std::isdigit(static_cast<unsigned char>(s[i])) &&
                               (i == 0 || s[i - 1] == ' ' || s[i - 1] == '<' || s[i - 1] == '-');
    if (!starts_number) continue;
    while (i + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[i + 1]))) out += s[++i];
    std::size_t end = i + 1;
    while (end < s.size() && (s[end] == 'u' || s[end] == 'l')) ++end;
    if (end == s.size() || s[end] == ',' || s[end] == '>') i = end - 1;
  }
  s = std::move(out);
}

}  // namespace

std::string short_type_name(std::string_view type_name) {
  std::string s(type_name);
  // A name cut short where it was stored: close its open lists after a marker, so that what was
  // cut can be recognised as a default argument and dropped, or else shown as "...".
  constexpr char kCut = '\x01';
  long open = 0;
  for (const char c : s) open += c == '<' ? 1 : c == '>' ? -1 : 0;
  if (open > 0) s += kCut + std::string(static_cast<std::size_t>(open), '>');
  replace_all(s, "std::__cxx11::", "std::");
  replace_all(s, "std::__1::", "std::");  // libc++
  for (const auto& [chars, alias] : {std::pair{"char", "string"},
                                     {"wchar_t", "wstring"},
                                     {"char8_t", "u8string"},
                                     {"char16_t", "u16string"},
                                     {"char32_t", "u32string"}}) {
    const std::string traits = std::string("std::char_traits<") + chars + ">";
    replace_all(s,
                std::string("std::basic_string<") + chars + ", " + traits + ", std::allocator<" +
                    chars + "> >",
                std::string("std::") + alias);
    replace_all(s, std::string("std::basic_string_view<") + chars + ", " + traits + " >",
                std::string("std::") + alias + "_view");
  }
  while (drop_a_default_argument(s)) {
  }
  drop_integer_suffixes(s);
  replace_all(s, "> >", ">>");
  if (const std::size_t cut = s.find(kCut); cut != std::string::npos) {
    s.erase(s.find_last_not_of(' ', cut - 1) + 1);  // nothing after the cut is known
    s.erase(s.find_last_not_of(',') + 1);
    s += "...";
  }
  return s;
}

std::vector<std::string> list_queues() {
  std::vector<std::string> names;
  const std::string prefix(detail::kSegmentPrefix);
  for (const auto& entry : directory("/dev/shm")) {
    if (entry.size() > prefix.size() && entry.compare(0, prefix.size(), prefix) == 0) {
      names.push_back(entry.substr(prefix.size()));
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

QueueStats inspect(std::string_view name) {
  return detail::Segment::open(name, nullptr)->stats();
}

QueueUsers queue_users(const QueueStats& stats) {
  QueueUsers users;
  const std::string path = detail::mapped_file(stats.name);
  const std::string deleted = path + " (deleted)";
  auto ends_with = [](const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
  };
  for (const auto& entry : directory("/proc")) {
    const pid_t pid = static_cast<pid_t>(std::atoi(entry.c_str()));
    if (pid <= 0) continue;
    std::ifstream maps("/proc/" + entry + "/maps");
    for (std::string line; std::getline(maps, line);) {
      if (ends_with(line, path) || ends_with(line, deleted)) {
        users.mapped_by.push_back(pid);
        break;
      }
    }
  }
  std::sort(users.mapped_by.begin(), users.mapped_by.end());
  // A recycled pid is not the creator: the creator started before it made the queue (allowing
  // for the clock-tick granularity of /proc's start times).
  if (const auto started = start_time(stats.creator_pid)) {
    users.creator_alive = *started <= double(stats.created_unix_ns) / 1e9 + 1.0;
  }
  return users;
}

namespace {

// Whether the segment `name` starts with an object's magic word: read without mapping or waiting,
// so that a queue, a foreign file or a missing name goes on to inspect() and its messages.
bool is_object(std::string_view name) {
  if (name.rfind(detail::kUnnamedPrefix, 0) == 0) {
    try {
      detail::SyncObject::open(name, ~std::uint32_t{0});
      return true;
    } catch (const Error&) {
      return false;
    }
  }
  std::uint64_t magic = 0;
  const int fd = open(
      ("/dev/shm/" + std::string(detail::kSegmentPrefix) + detail::validate_name(name)).c_str(),
      O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return false;
  const bool read = pread(fd, &magic, sizeof magic, 0) == static_cast<ssize_t>(sizeof magic);
  close(fd);
  return read && magic == detail::kObjectMagic;
}

}  // namespace

std::optional<ObjectStats> inspect_object(std::string_view name) {
  if (!is_object(name)) return std::nullopt;
  const auto object = detail::SyncObject::open(name, ~std::uint32_t{0});
  const auto& h = object->header();
  const auto relaxed = std::memory_order_relaxed;
  ObjectStats s;
  s.name = object->name();
  s.kind = detail::kind_name(h.kind);
  s.type_name.assign(h.type_name, strnlen(h.type_name, sizeof h.type_name));
  s.mode = h.mode;
  s.creator_pid = h.creator_pid;
  s.created_unix_ns = h.created_unix_ns;
  const auto kind = object->kind();
  using detail::ObjectKind;
  if (kind == ObjectKind::value || kind == ObjectKind::array || kind == ObjectKind::shared_memory)
    s.data_bytes = object->data_bytes();
  s.has_lock = kind == ObjectKind::lock || kind == ObjectKind::rlock ||
               kind == ObjectKind::barrier ||
               ((kind == ObjectKind::value || kind == ObjectKind::array) && h.has_lock != 0);
  if (s.has_lock) {
    const std::uint32_t word = h.lock.mutex.word.load(relaxed);
    s.lock_holder = static_cast<pid_t>(word & FUTEX_TID_MASK);
    s.holder_died = (word & FUTEX_OWNER_DIED) != 0 && s.lock_holder == 0;
    s.lock_recoveries = h.lock.recoveries.load(relaxed);
  }
  s.value = h.count.load(relaxed);
  if (kind == ObjectKind::event) s.value = detail::event_is_set(s.value) ? 1 : 0;
  s.limit = h.limit;
  s.waiting = kind == ObjectKind::barrier ? std::min(h.arrived.load(relaxed), h.limit)
                                          : detail::sleepers_of(h.wakeups.sleep.load(relaxed));
  s.broken = kind == ObjectKind::barrier && h.broken.load(relaxed) != 0;
  if (kind == ObjectKind::condition)
    s.lock_name.assign(h.lock_name, strnlen(h.lock_name, sizeof h.lock_name));
  return s;
}

}  // namespace shmq
