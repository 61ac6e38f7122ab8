// Inspection from outside: list segments, read any queue's stats, find who maps it.
#include "shmq/inspect.hpp"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "shmq/detail/segment.hpp"

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

QueueStats inspect(std::string_view name) { return detail::Segment::open(name, nullptr)->stats(); }

QueueUsers queue_users(const QueueStats& stats) {
  QueueUsers users;
  const std::string path = "/dev/shm/" + std::string(detail::kSegmentPrefix) + stats.name;
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

}  // namespace shmq
