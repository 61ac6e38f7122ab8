// shmq: see, watch and clean up shmq queues.
//
//   shmq ls [--json]                           every named shmq queue on this machine, and every
//                                              named lock, event, semaphore, value... (their kind
//                                              and state, for locks who holds them)
//   shmq stat NAME [--json]                    one queue's state and its counters since creation
//   shmq watch NAME [--interval SECONDS] [--count N]   live depth and rates
//   shmq rm NAME...                            remove queues by name
//   shmq rm --stale [--with-messages] [PREFIX] remove queues whose creator is dead and that no live
//                                              process maps (only names starting with PREFIX);
//                                              those holding messages only with --with-messages
//
// Exit status: 0 success; 1 failure (a queue not found, not a shmq queue, not permitted); 2 usage.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "shmq/errors.hpp"
#include "shmq/inspect.hpp"
#include "shmq/queue.hpp"

namespace {

constexpr int kOk = 0;
constexpr int kFailed = 1;
constexpr int kUsage = 2;

const char* const kUsageText =
    "usage: shmq <command> [options]\n"
    "\n"
    "commands:\n"
    "  ls [--json]                      list every named shmq queue on this machine\n"
    "  stat NAME [--json]               one queue's state and counters since creation\n"
    "  watch NAME [--interval SECONDS] [--count N]\n"
    "                                   live depth and rates; in place on a terminal,\n"
    "                                   one line per interval when piped\n"
    "  rm NAME...                       remove queues by name\n"
    "  rm --stale [--with-messages] [PREFIX]\n"
    "                                   remove queues whose creator is dead and that no\n"
    "                                   live process maps (with PREFIX, only names that\n"
    "                                   start with it); lists what it removed; keeps (and\n"
    "                                   lists) those holding messages unless --with-messages\n"
    "\n"
    "`shmq COMMAND --help` describes one command. Exit status: 0 success, 1 failure, 2 usage.\n";

int usage_error(const std::string& why) {
  std::fprintf(stderr, "shmq: %s\n%s", why.c_str(), kUsageText);
  return kUsage;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (const unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

std::string octal(std::uint32_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", mode);
  return buf;
}

std::string pids(const std::vector<pid_t>& list) {
  std::string out;
  for (const pid_t p : list) out += (out.empty() ? "" : ", ") + std::to_string(p);
  return out;
}

std::string utc(std::uint64_t unix_ns) {
  const std::time_t t = static_cast<std::time_t>(unix_ns / 1'000'000'000);
  char buf[32];
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

// Leased gets (issue 15): the lease settings, counters and outstanding leases, as JSON members
// (each with its leading ", ") and as `stat` rows.
std::string leases_json(const shmq::QueueStats& s) {
  auto n = [](std::uint64_t v) { return std::to_string(v); };
  std::string leases = "[";
  for (std::size_t i = 0; i < s.leases.size(); ++i) {
    const auto& l = s.leases[i];
    leases += std::string(i ? ", " : "") + "{\"slot\": " + n(l.slot) +
              ", \"waiting\": " + (l.waiting ? "true" : "false") +
              ", \"holder\": " + std::to_string(l.holder) +
              ", \"holder_alive\": " + (l.holder_alive ? "true" : "false") +
              ", \"age_ns\": " + n(l.age_ns) + ", \"deliveries\": " + n(l.deliveries) + "}";
  }
  leases += "]";
  return ", \"max_leases\": " + n(s.max_leases) +
         ", \"lease_timeout_ns\": " + n(s.lease_timeout_ns) +
         ", \"max_deliveries\": " + n(s.max_deliveries) +
         ", \"dead_letter_queue\": " + json_string(s.dead_letter_queue) +
         ", \"redeliveries\": " + n(s.redeliveries) + ", \"dead_lettered\": " + n(s.dead_lettered) +
         ", \"leases\": " + leases;
}

template <class Row>
void lease_rows(const shmq::QueueStats& s, Row&& row) {
  if (s.max_leases == 0) return;
  auto n = [](std::uint64_t v) { return std::to_string(v); };
  char timeout[32];
  std::snprintf(timeout, sizeof timeout, "%.3f s", double(s.lease_timeout_ns) / 1e9);
  row("leases:", n(s.leases.size()) + " outstanding of " + n(s.max_leases) + ", timeout " +
                     (s.lease_timeout_ns ? std::string(timeout) : std::string("none")));
  for (const auto& l : s.leases) {
    char age[32];
    std::snprintf(age, sizeof age, "%.3f s", double(l.age_ns) / 1e9);
    const std::string who =
        l.waiting ? std::string("waiting for its next delivery")
                  : "held by pid " + std::to_string(l.holder) +
                        (l.holder_alive ? " (alive)" : " (dead: delivered again by the next get)") +
                        " for " + age;
    row(("  slot " + n(l.slot) + ":").c_str(), who + ", delivery " + n(l.deliveries));
  }
  row("redeliveries:", n(s.redeliveries));
  row("dead-lettered:",
      n(s.dead_lettered) + (s.dead_letter_queue.empty() ? std::string()
                                                        : " to " + s.dead_letter_queue + " after " +
                                                              n(s.max_deliveries) + " deliveries"));
}

// One queue as a JSON object (no trailing newline).
std::string stats_json(const shmq::QueueStats& s, const shmq::QueueUsers& u) {
  std::string mapped = "[";
  for (std::size_t i = 0; i < u.mapped_by.size(); ++i) {
    mapped += (i ? ", " : "") + std::to_string(u.mapped_by[i]);
  }
  mapped += "]";
  auto n = [](std::uint64_t v) { return std::to_string(v); };
  return "{\"name\": " + json_string(s.name) + ", \"type\": " + json_string(s.type_name) +
         ", \"messages\": " + n(s.messages) + ", \"bytes_used\": " + n(s.bytes_used) +
         ", \"capacity_bytes\": " + n(s.capacity_bytes) + ", \"maxsize\": " + n(s.maxsize) +
         ", \"mode\": " + json_string(octal(s.mode)) +
         ", \"creator_pid\": " + std::to_string(s.creator_pid) +
         ", \"creator_alive\": " + (u.creator_alive ? "true" : "false") +
         ", \"mapped_by\": " + mapped + ", \"created_unix_ns\": " + n(s.created_unix_ns) +
         ", \"shut_down\": " + (s.shut_down ? "true" : "false") + ", \"puts\": " + n(s.puts) +
         ", \"gets\": " + n(s.gets) + ", \"put_timeouts\": " + n(s.put_timeouts) +
         ", \"get_timeouts\": " + n(s.get_timeouts) + ", \"full_waits\": " + n(s.full_waits) +
         ", \"empty_waits\": " + n(s.empty_waits) +
         ", \"lock_recoveries\": " + n(s.lock_recoveries) + ", \"peak_depth\": " + n(s.peak_depth) +
         ", \"sleeping_producers\": " + n(s.sleeping_producers) +
         ", \"sleeping_consumers\": " + n(s.sleeping_consumers) +
         ", \"put_lock_holder\": " + std::to_string(s.put_lock_holder) +
         ", \"get_lock_holder\": " + std::to_string(s.get_lock_holder) + leases_json(s) + "}";
}

// ---- Locks, events, semaphores, conditions, barriers, values and shared memory

// Who maps an object, and whether its creator runs: as for a queue.
shmq::QueueUsers object_users(const shmq::ObjectStats& o) {
  shmq::QueueStats as_queue;
  as_queue.name = o.name;
  as_queue.creator_pid = o.creator_pid;
  as_queue.created_unix_ns = o.created_unix_ns;
  return shmq::queue_users(as_queue);
}

// What an object is doing now, in a few words: "held by thread 1234", "set", "2 free of 3".
std::string object_state(const shmq::ObjectStats& o) {
  std::string state;
  if (o.has_lock) {
    state = o.lock_holder != 0 ? "held by thread " + std::to_string(o.lock_holder)
            : o.holder_died    ? "free (its last holder died holding it)"
                               : "free";
  }
  if (o.kind == "semaphore") state = std::to_string(o.value) + " free";
  if (o.kind == "bounded semaphore")
    state = std::to_string(o.value) + " free of " + std::to_string(o.limit);
  if (o.kind == "event") state = o.value != 0 ? "set" : "clear";
  if (o.kind == "barrier") {
    state = std::to_string(o.waiting) + " of " + std::to_string(o.limit) + " waiting" +
            (o.broken ? ", broken" : "") + "; lock " + state;
  }
  if (o.kind == "condition") state = "over " + o.lock_name;
  return state;
}

std::string object_json(const shmq::ObjectStats& o, const shmq::QueueUsers& u) {
  std::string mapped = "[";
  for (std::size_t i = 0; i < u.mapped_by.size(); ++i) {
    mapped += (i ? ", " : "") + std::to_string(u.mapped_by[i]);
  }
  mapped += "]";
  auto n = [](std::uint64_t v) { return std::to_string(v); };
  return "{\"name\": " + json_string(o.name) + ", \"kind\": " + json_string(o.kind) +
         ", \"type\": " + json_string(o.type_name) + ", \"data_bytes\": " + n(o.data_bytes) +
         ", \"mode\": " + json_string(octal(o.mode)) +
         ", \"creator_pid\": " + std::to_string(o.creator_pid) +
         ", \"creator_alive\": " + (u.creator_alive ? "true" : "false") +
         ", \"mapped_by\": " + mapped + ", \"created_unix_ns\": " + n(o.created_unix_ns) +
         ", \"lock_holder\": " + std::to_string(o.lock_holder) +
         ", \"holder_died\": " + (o.holder_died ? "true" : "false") +
         ", \"lock_recoveries\": " + n(o.lock_recoveries) + ", \"value\": " + n(o.value) +
         ", \"limit\": " + n(o.limit) + ", \"waiting\": " + n(o.waiting) +
         ", \"broken\": " + (o.broken ? "true" : "false") +
         ", \"state\": " + json_string(object_state(o)) + "}";
}

// One line of `shmq ls` for an object, in the queue columns: its kind and state under TYPE.
void print_object_row(const shmq::ObjectStats& o, const shmq::QueueUsers& u) {
  const std::string creator =
      std::to_string(o.creator_pid) + (u.creator_alive ? " alive" : " dead");
  const std::string kind =
      o.type_name.empty() ? o.kind : o.kind + "<" + shmq::short_type_name(o.type_name) + ">";
  const std::string state = object_state(o);
  std::printf("%-32s %9s %23s %8s %5s %-16s %7zu  %s%s%s\n", o.name.c_str(), "-",
              o.data_bytes != 0 ? std::to_string(o.data_bytes).c_str() : "-", "-",
              octal(o.mode).c_str(), creator.c_str(), u.mapped_by.size(), kind.c_str(),
              state.empty() ? "" : ": ", state.c_str());
}

// `shmq stat` of an object.
void print_object_stat(const shmq::ObjectStats& o, const shmq::QueueUsers& u) {
  auto row = [](const char* key, const std::string& value) {
    std::printf("%-20s %s\n", key, value.c_str());
  };
  row("name:", o.name);
  row("kind:", o.kind);
  if (!o.type_name.empty()) row("type:", o.type_name);
  if (o.data_bytes != 0) row("bytes:", std::to_string(o.data_bytes));
  row("mode:", octal(o.mode));
  row("creator:",
      "pid " + std::to_string(o.creator_pid) + (u.creator_alive ? " (alive)" : " (dead)"));
  row("created:", utc(o.created_unix_ns));
  row("mapped by:", std::to_string(u.mapped_by.size()) + " process(es)" +
                        (u.mapped_by.empty() ? "" : " (" + pids(u.mapped_by) + ")"));
  if (const std::string state = object_state(o); !state.empty()) row("state:", state);
  if (o.has_lock) row("lock recoveries:", std::to_string(o.lock_recoveries));
  if (o.kind != "barrier") row("sleeping now:", std::to_string(o.waiting) + " process(es)");
}

// ---- ls

int ls(const std::vector<std::string>& args) {
  bool json = false;
  for (const auto& a : args) {
    if (a == "--help") {
      std::printf(
          "usage: shmq ls [--json]\n\n"
          "Lists every named shmq queue (/dev/shm/shmq.*): messages, bytes used of the\n"
          "capacity, maxsize, mode, creator pid and whether it runs, processes mapping it, and\n"
          "the message type, shortened (std::string, std::vector<int>): `stat` and --json give\n"
          "its full name. Segments it cannot read are listed with the reason. Unnamed queues\n"
          "have no file in /dev/shm and are not listed; `shmq stat` opens one by the name()\n"
          "of a handle to it, while its creator holds it.\n"
          "Named locks, events, semaphores, conditions, barriers, values, arrays and shared\n"
          "memory are listed too, their kind and state under TYPE (a lock: the thread that\n"
          "holds it, or that its last holder died holding it).\n");
      return kOk;
    }
    if (a != "--json") return usage_error("ls: unknown option " + a);
    json = true;
  }
  const auto names = shmq::list_queues();
  if (json)
    std::printf("[");
  else
    std::printf("%-32s %9s %23s %8s %5s %-16s %7s  %s\n", "NAME", "MESSAGES", "BYTES USED/CAPACITY",
                "MAXSIZE", "MODE", "CREATOR", "MAPPED", "TYPE");
  for (std::size_t i = 0; i < names.size(); ++i) {
    const auto& name = names[i];
    try {
      if (const auto o = shmq::inspect_object(name)) {
        const auto u = object_users(*o);
        if (json) {
          std::printf("%s\n  %s", i ? "," : "", object_json(*o, u).c_str());
        } else {
          print_object_row(*o, u);
        }
        continue;
      }
      const auto s = shmq::inspect(name);
      const auto u = shmq::queue_users(s);
      if (json) {
        std::printf("%s\n  %s", i ? "," : "", stats_json(s, u).c_str());
      } else {
        const std::string used =
            std::to_string(s.bytes_used) + "/" + std::to_string(s.capacity_bytes);
        const std::string creator =
            std::to_string(s.creator_pid) + (u.creator_alive ? " alive" : " dead");
        std::printf("%-32s %9llu %23s %8llu %5s %-16s %7zu  %s\n", name.c_str(),
                    static_cast<unsigned long long>(s.messages), used.c_str(),
                    static_cast<unsigned long long>(s.maxsize), octal(s.mode).c_str(),
                    creator.c_str(), u.mapped_by.size(),
                    shmq::short_type_name(s.type_name).c_str());
      }
    } catch (const std::exception& e) {
      if (json) {
        std::printf("%s\n  {\"name\": %s, \"error\": %s}", i ? "," : "", json_string(name).c_str(),
                    json_string(e.what()).c_str());
      } else {
        std::printf("%-32s (unreadable: %s)\n", name.c_str(), e.what());
      }
    }
  }
  if (json) std::printf("%s]\n", names.empty() ? "" : "\n");
  return kOk;
}

// ---- stat

int stat(const std::vector<std::string>& args) {
  bool json = false;
  std::string name;
  for (const auto& a : args) {
    if (a == "--help") {
      std::printf(
          "usage: shmq stat NAME [--json]\n\nOne queue's state and its counters since creation: "
          "puts, gets, timeouts,\n"
          "waits on full and on empty, lock recoveries after a crashed holder, peak depth.\n");
      return kOk;
    }
    if (a == "--json") {
      json = true;
    } else if (name.empty() && a.rfind("--", 0) != 0) {
      name = a;
    } else {
      return usage_error("stat: unexpected argument " + a);
    }
  }
  if (name.empty()) return usage_error("stat: which queue?");
  try {
    if (const auto o = shmq::inspect_object(name)) {
      const auto u = object_users(*o);
      if (json) {
        std::printf("%s\n", object_json(*o, u).c_str());
      } else {
        print_object_stat(*o, u);
      }
      return kOk;
    }
    const auto s = shmq::inspect(name);
    const auto u = shmq::queue_users(s);
    if (json) {
      std::printf("%s\n", stats_json(s, u).c_str());
      return kOk;
    }
    auto row = [](const char* key, const std::string& value) {
      std::printf("%-20s %s\n", key, value.c_str());
    };
    auto n = [](std::uint64_t v) { return std::to_string(v); };
    row("name:", s.name);
    row("type:", s.type_name);
    row("messages:", n(s.messages));
    row("bytes used:", n(s.bytes_used) + " of " + n(s.capacity_bytes));
    row("maxsize:", s.maxsize ? n(s.maxsize) : "none (bounded by bytes)");
    row("mode:", octal(s.mode));
    row("creator:",
        "pid " + std::to_string(s.creator_pid) + (u.creator_alive ? " (alive)" : " (dead)"));
    row("created:", utc(s.created_unix_ns));
    row("mapped by:", std::to_string(u.mapped_by.size()) + " process(es)" +
                          (u.mapped_by.empty() ? "" : " (" + pids(u.mapped_by) + ")"));
    row("shut down:", s.shut_down ? "yes" : "no");
    row("puts:", n(s.puts));
    row("gets:", n(s.gets));
    row("put timeouts:", n(s.put_timeouts));
    row("get timeouts:", n(s.get_timeouts));
    row("waits on full:", n(s.full_waits));
    row("waits on empty:", n(s.empty_waits));
    row("lock recoveries:", n(s.lock_recoveries));
    row("peak depth:", n(s.peak_depth));
    row("sleeping now:",
        n(s.sleeping_producers) + " producer(s), " + n(s.sleeping_consumers) + " consumer(s)");
    auto holder = [](pid_t tid) {
      return tid == 0 ? std::string("free") : "held by thread " + std::to_string(tid);
    };
    row("locks now:", "put " + holder(s.put_lock_holder) + ", get " + holder(s.get_lock_holder));
    lease_rows(s, row);
    return kOk;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shmq stat: %s\n", e.what());
    return kFailed;
  }
}

// ---- watch

volatile sig_atomic_t interrupted = 0;
extern "C" void on_interrupt(int) {
  interrupted = 1;
}

int watch(const std::vector<std::string>& args) {
  std::string name;
  double interval = 1.0;
  long count = -1;  // forever
  for (std::size_t i = 0; i < args.size(); ++i) {
    const auto& a = args[i];
    if (a == "--help") {
      std::printf(
          "usage: shmq watch NAME [--interval SECONDS] [--count N]\n\nA live view of the queue's "
          "depth and put/get rates, refreshed in place on a\n"
          "terminal, one line per interval when piped. Ctrl-C, or --count lines, ends it.\n");
      return kOk;
    }
    if (a == "--interval" && i + 1 < args.size()) {
      interval = std::atof(args[++i].c_str());
      if (interval <= 0)
        return usage_error("watch: --interval must be a positive number of seconds");
    } else if (a == "--count" && i + 1 < args.size()) {
      count = std::atol(args[++i].c_str());
      if (count <= 0) return usage_error("watch: --count must be positive");
    } else if (name.empty() && a.rfind("--", 0) != 0) {
      name = a;
    } else {
      return usage_error("watch: unexpected argument " + a);
    }
  }
  if (name.empty()) return usage_error("watch: which queue?");
  signal(SIGINT, on_interrupt);
  const bool tty = isatty(STDOUT_FILENO) != 0;
  try {
    auto before = shmq::inspect(name);
    auto at = std::chrono::steady_clock::now();
    for (long shown = 0; !interrupted && (count < 0 || shown < count); ++shown) {
      std::this_thread::sleep_for(std::chrono::duration<double>(interval));
      const auto now = shmq::inspect(name);
      const auto then = std::exchange(at, std::chrono::steady_clock::now());
      const double secs = std::chrono::duration<double>(at - then).count();
      std::printf(
          "%s%s  depth %llu  bytes %llu/%llu  puts/s %.0f  gets/s %.0f  sleeping %u producer(s), "
          "%u consumer(s)%s",
          tty ? "\r\033[K" : "", name.c_str(), static_cast<unsigned long long>(now.messages),
          static_cast<unsigned long long>(now.bytes_used),
          static_cast<unsigned long long>(now.capacity_bytes),
          double(now.puts - before.puts) / secs, double(now.gets - before.gets) / secs,
          now.sleeping_producers, now.sleeping_consumers, tty ? "" : "\n");
      std::fflush(stdout);
      before = now;
    }
    if (tty) std::printf("\n");
    return kOk;
  } catch (const std::exception& e) {
    if (tty) std::printf("\n");
    std::fprintf(stderr, "shmq watch: %s\n", e.what());
    return kFailed;
  }
}

// ---- rm

// `rm --stale [--with-messages] [PREFIX]`: removes the queues nobody can be using any more. A named
// queue exists to outlive its producers, so one that still holds messages is pending work, not
// litter: it is kept (and said so) unless --with-messages asks for it.
// `rm --stale` for an object: removed when its creator is dead and no process maps it; one that
// holds data (a value, an array, shared memory) only with --with-messages, as a queue's messages.
void remove_if_stale(const shmq::ObjectStats& o, bool with_data, std::size_t& removed,
                     std::size_t& skipped) {
  const auto u = object_users(o);
  if (u.creator_alive || !u.mapped_by.empty()) return;
  const std::string why =
      "creator pid " + std::to_string(o.creator_pid) + " is dead; no process maps it";
  if (o.data_bytes != 0 && !with_data) {
    std::printf("skipped %s [%s]: it holds %llu bytes (%s); --with-messages removes it too\n",
                o.name.c_str(), o.kind.c_str(), static_cast<unsigned long long>(o.data_bytes),
                why.c_str());
    ++skipped;
  } else if (shmq::Queue<char>::remove(o.name)) {
    std::printf("removed %s [%s] (%s)\n", o.name.c_str(), o.kind.c_str(), why.c_str());
    ++removed;
  }
}

int rm_stale(const std::vector<std::string>& args) {
  bool with_messages = false;
  std::string prefix;
  bool have_prefix = false;
  for (const auto& a : args) {
    if (a == "--with-messages") {
      with_messages = true;
    } else if (!have_prefix && a.rfind("--", 0) != 0) {
      prefix = a;
      have_prefix = true;
    } else {
      return usage_error("rm --stale: unexpected argument " + a);
    }
  }
  int status = kOk;
  std::size_t removed = 0;
  std::size_t skipped = 0;
  for (const auto& name : shmq::list_queues()) {
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    try {
      if (const auto o = shmq::inspect_object(name)) {
        remove_if_stale(*o, with_messages, removed, skipped);
        continue;
      }
      const auto s = shmq::inspect(name);
      const auto u = shmq::queue_users(s);
      if (u.creator_alive || !u.mapped_by.empty()) continue;
      const std::string why =
          "creator pid " + std::to_string(s.creator_pid) + " is dead; no process maps it";
      if (s.messages != 0 && !with_messages) {
        std::printf("skipped %s: it holds %llu messages (%s); --with-messages removes it too\n",
                    name.c_str(), static_cast<unsigned long long>(s.messages), why.c_str());
        ++skipped;
      } else if (shmq::Queue<char>::remove(name)) {
        const std::string lost = s.messages != 0
                                     ? " with its " + std::to_string(s.messages) + " messages"
                                     : std::string();
        std::printf("removed %s%s (%s)\n", name.c_str(), lost.c_str(), why.c_str());
        ++removed;
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "shmq rm: %s: %s\n", name.c_str(), e.what());
      status = kFailed;
    }
  }
  if (removed == 0 && skipped == 0 && status == kOk) {
    std::printf("no stale queues%s: nothing removed\n",
                prefix.empty() ? "" : (" starting with " + prefix).c_str());
  }
  return status;
}

int rm(const std::vector<std::string>& args) {
  if (args.empty()) return usage_error("rm: which queues? (names, or --stale)");
  if (args.size() == 1 && args[0] == "--help") {
    std::printf(
        "usage: shmq rm NAME...\n       shmq rm --stale [--with-messages] [PREFIX]\n\n"
        "Removes queues by name (processes that have them open keep using them), or,\n"
        "with --stale, every queue whose creator is dead and that no live process maps\n"
        "(only those whose names start with PREFIX, if given), listing what it removed.\n"
        "A stale queue that still holds messages is kept, and listed as skipped with its\n"
        "message count: named queues exist to outlive their producers. --with-messages\n"
        "removes those too, messages and all.\n");
    return kOk;
  }
  if (args[0] == "--stale") return rm_stale({args.begin() + 1, args.end()});
  int status = kOk;
  for (const auto& name : args) {
    if (name.rfind("--", 0) == 0) return usage_error("rm: unexpected option " + name);
    try {
      // Refuse to remove what is not a shmq queue or object.
      if (!shmq::inspect_object(name)) shmq::inspect(name);
      shmq::Queue<char>::remove(name);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "shmq rm: %s\n", e.what());
      status = kFailed;
    }
  }
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage_error("a command is needed");
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "--help" || command == "-h" || command == "help") {
    std::printf("%s", kUsageText);
    return kOk;
  }
  if (command == "ls") return ls(args);
  if (command == "stat") return stat(args);
  if (command == "watch") return watch(args);
  if (command == "rm") return rm(args);
  return usage_error("unknown command " + command);
}
