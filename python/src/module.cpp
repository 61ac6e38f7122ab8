// shmq._shmq: the C++ half of the Python module. One class, _Queue, is a handle on a shmq queue
// segment whose message type is chosen at run time: Python objects as pickles (a type of their
// own, which no C++ Queue<T> opens), or one of the C++ types cpp_type.hpp reads and writes, so a
// queue made by a C++ Queue<T> opens here and the reverse. The Python package (shmq/__init__.py)
// builds Queue, SimpleQueue and JoinableQueue on it.
//
// A single put or get first tries once holding the GIL (Ring::put_at_once / get_at_once: one
// attempt that never waits, not even for the ring's lock, so no thread that needs the GIL can be
// kept waiting on this one). Only if that cannot finish at once does the call release the GIL and
// wait, in slices of kSignalSlice, taking the GIL back between slices to run Python's signal
// handlers, so Ctrl-C (KeyboardInterrupt) ends a blocked put or get within that time. Messages
// are encoded before the wait and decoded after it, with the GIL held: the ring's locks are never
// held while Python code runs. The one exception is a get that succeeds at once: it builds a
// bytes, int, float, None, True or False straight from the ring (decode_untracked: no Python code
// runs and the garbage collector is off meanwhile); everything else is copied out and decoded
// after the lock is released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cxxabi.h>
#include <sched.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#include "cpp_type.hpp"
#include "object_codec.hpp"
#include "shmq/detail/deadline.hpp"
#include "shmq/detail/segment.hpp"
#include "shmq/errors.hpp"
#include "shmq/queue_options.hpp"

namespace py = pybind11;

namespace shmq::python {

// The message type of queues that carry pickled Python objects. Never defined: only its name
// matters, recorded in the header so that a C++ Queue<T> refuses to open such a queue
// (Incompatible) and shmq ls shows what it holds.
struct PythonObject;

namespace {

using detail::Deadline;
using detail::Outcome;
using detail::Segment;
using detail::TypeTag;

constexpr std::chrono::milliseconds kSignalSlice{50};
// Releases the GIL for as long as it lives, like py::gil_scoped_release, but never takes it back
// while the interpreter is exiting. Python ends a daemon thread that takes the GIL back then with
// pthread_exit, whose forced unwinding through a noexcept frame aborts the whole process
// ("terminate called without an active exception") at exit. Such a thread instead sleeps until
// the process ends, as Python 3.14 does with its own threads; one that finalization catches
// already waiting for the GIL is ended by CPython, and its unwinding passes through here.
class WithoutGil {
 public:
  WithoutGil() : state_(PyEval_SaveThread()) {}
  WithoutGil(const WithoutGil&) = delete;
  WithoutGil& operator=(const WithoutGil&) = delete;
  // noexcept(false): if finalization begins while this thread waits for the GIL, CPython ends the
  // thread with pthread_exit, whose forced unwinding must pass through here (and through guarded
  // below) to the thread's start; a noexcept frame on the way would abort the process.
  ~WithoutGil() noexcept(false) {
    while (interpreter_exiting()) pause();
    PyEval_RestoreThread(state_);
  }

 private:
  static bool interpreter_exiting() {
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
  }
  PyThreadState* state_;
};

// How a put or get waits for a Python peer before the ring's own wait. The ring polls for a few
// hundred nanoseconds, then sleeps on a futex; a Python peer takes 1-3 us to answer (its own put
// or get), so from there every hand-off would pay a sleep and a wake-up. So a put or get first
// looks at the queue without the GIL, for up to kPoll (or its deadline), in one of two ways:
//  - spinning (a pause between looks) sees the answer within ~0.1 us, but pays only while the
//    peer runs on another core: on this core it only keeps the peer from answering (measured:
//    round trip p50 50 us, against 7 us for sleeping at once);
//  - yielding (sched_yield between looks) hands this core to the peer when both share it, for a
//    context switch (round trip p50 4 us; a C ping-pong of sched_yield between two processes on
//    one core takes 2.8 us here), and costs a system call (0.3-0.7 us) per look otherwise.
// A yield hands the core to any process that wants it, and the scheduler charges a whole time
// slice for each (Linux's EEVDF pushes the yielder's deadline back a slice): with a third process
// busy on the same core, yielding loses the core to it for milliseconds (measured: round trip p99
// 16 ms), where a sleeper woken by a futex preempts it. So:
//  - a wait spins for up to kSpinFirst, then yields; unless the last answer came after a yield
//    during which the peer most likely ran on this core (see yield_until): then it yields at
//    once. An answer seen while spinning, or after a yield that ran nobody (the peer is on
//    another core), makes the next wait spin first again;
//  - a yield that loses the core for kPoll or longer without the peer answering (another process
//    took the core) ends the polling, and for kNoYieldTime after it waits only spin (then the
//    ring's futex wait), as on a core shared with a busy process the sleep and wake-up cost
//    less: with such a process there for good, one hand-off in kNoYieldTime pays a time slice;
//  - after kMissesToStop waits in a row that the polling did not answer (the peer is busy with
//    something else), only every kMissProbeEvery-th wait polls, and the first that pays polls
//    every time again.
// The state is a hint shared by a handle's threads (relaxed: a lost update only changes how the
// next wait starts).
class PeerPoll {
 public:
  template <class Ready>
  void wait(const Deadline& deadline, Ready&& ready) {
    if (deadline.is_now() || ready()) return;
    const unsigned misses = misses_.load(std::memory_order_relaxed);
    if (misses >= kMissesToStop && misses % kMissProbeEvery != 0) {
      misses_.store(misses + 1, std::memory_order_relaxed);
      return;
    }
    Answer answer = Answer::none;
    {
      WithoutGil nogil;
      const auto start = Deadline::clock::now();
      const auto cap = [&](std::chrono::microseconds d) {
        return std::min(start + d, deadline.at());
      };
      if (start.time_since_epoch().count() < no_yield_until_.load(std::memory_order_relaxed)) {
        answer = spin_until(ready, cap(kPoll));
      } else {
        if (!yield_first_.load(std::memory_order_relaxed)) {
          answer = spin_until(ready, cap(kSpinFirst));
        }
        if (answer == Answer::none) answer = yield_until(ready, cap(kPoll));
      }
      if (answer == Answer::core_taken) {
        const auto until = Deadline::clock::now() + kNoYieldTime;
        no_yield_until_.store(until.time_since_epoch().count(), std::memory_order_relaxed);
      }
    }
    misses_.store(answer == Answer::none ? misses + 1 : 0, std::memory_order_relaxed);
    if (answer != Answer::none) {
      yield_first_.store(answer == Answer::after_peer_ran, std::memory_order_relaxed);
    }
  }

 private:
  using TimePoint = Deadline::clock::time_point;
  static constexpr std::chrono::microseconds kPoll{20};  // about a futex sleep and wake-up
  static constexpr std::chrono::microseconds kSpinFirst{3};
  // A yield that returns within this ran nobody else (a system call); one that switched to the
  // peer and back takes the peer's put or get and two context switches (over 2.8 us).
  static constexpr std::chrono::nanoseconds kSwitched{1500};
  static constexpr std::chrono::seconds kNoYieldTime{1};
  static constexpr unsigned kMissesToStop = 4;
  static constexpr unsigned kMissProbeEvery = 16;

  enum class Answer { none, seen, after_peer_ran, core_taken };

  template <class Ready>
  static Answer spin_until(Ready& ready, TimePoint until) {
    do {
      for (int i = 0; i < 16; ++i) detail::cpu_relax();
      if (ready()) return Answer::seen;
    } while (Deadline::clock::now() < until);
    return Answer::none;
  }

  // after_peer_ran: the answer came after a yield that took kSwitched or longer (a yield to a
  // peer with much to do, such as a consumer draining a full queue, takes long and pays).
  // core_taken: a yield took kPoll or longer and brought no answer: another process used it.
  template <class Ready>
  static Answer yield_until(Ready& ready, TimePoint until) {
    TimePoint before = Deadline::clock::now();
    while (before < until) {
      sched_yield();
      const TimePoint after = Deadline::clock::now();
      const auto took = after - before;
      if (ready()) return took >= kSwitched ? Answer::after_peer_ran : Answer::seen;
      if (took >= kPoll) return Answer::core_taken;
      before = after;
    }
    return Answer::none;
  }

  std::atomic<unsigned> misses_{0};  // waits in a row that the polling did not answer
  std::atomic<Deadline::clock::rep> no_yield_until_{0};  // a time_since_epoch().count()
  std::atomic<bool> yield_first_{false};
};

// The most a thread keeps allocated between gets for copying messages out of the ring.
constexpr std::size_t kKeptBufferBytes = 1 << 20;

// The largest message a put or get copies while it holds the GIL when it tries at once (a few
// microseconds of copying): a larger one is copied without it, so that the process's other
// threads run meanwhile. A get builds a bytes of any size at once all the same: that copy needs
// the GIL anyway.
constexpr std::size_t kGilHeldCopyBytes = 64 << 10;

const TypeTag& pickle_tag() {
  static const TypeTag tag = detail::make_type_tag(typeid(PythonObject*).name() + 1);  // drop 'P'
  return tag;
}

// What a queue's messages are: pickles, or encodings of one C++ type.
struct Format {
  std::optional<CppType> cpp;  // empty: pickles
  TypeTag tag;
};

std::shared_ptr<const Format> pickle_format() {
  static const auto format = std::make_shared<const Format>(Format{std::nullopt, pickle_tag()});
  return format;
}

std::shared_ptr<const Format> cpp_format(CppType type) {
  const std::string mangled = type.mangled();
  TypeTag tag = detail::make_type_tag(mangled.c_str());
  return std::make_shared<const Format>(Format{std::move(type), std::move(tag)});
}

// type=: None (pickles), a C++ spelling, or one of the Python types str, int, float, bytes, bool.
std::shared_ptr<const Format> format_from(const py::object& type) {
  if (type.is_none()) return pickle_format();
  if (py::isinstance<py::str>(type)) return cpp_format(parse_cpp_type(type.cast<std::string>()));
  const auto is = [&](PyTypeObject* t) { return type.ptr() == reinterpret_cast<PyObject*>(t); };
  if (is(&PyUnicode_Type)) return cpp_format(parse_cpp_type("std::string"));
  if (is(&PyLong_Type)) return cpp_format(parse_cpp_type("std::int64_t"));
  if (is(&PyFloat_Type)) return cpp_format(parse_cpp_type("double"));
  if (is(&PyBytes_Type)) return cpp_format(parse_cpp_type("std::vector<std::uint8_t>"));
  if (is(&PyBool_Type)) return cpp_format(parse_cpp_type("bool"));
  throw InvalidArgument(
      "shmq: type= takes None (pickled objects), a C++ type as a string "
      "(\"std::vector<double>\") or one of str, int, float, bytes, bool; not " +
      py::repr(type).cast<std::string>());
}

// The format a queue's own header records: pickles, or a C++ type parsed from its name and then
// confirmed by opening the queue again with the mangled name's fingerprint (a header's name may
// lie, or be cut at 255 bytes).
std::pair<std::shared_ptr<Segment>, std::shared_ptr<const Format>> open_as_recorded(
    const std::string& name) {
  auto any = Segment::open(name, nullptr);
  const std::string& recorded = any->type_name();
  if (recorded == pickle_tag().name) return {Segment::open(name, &pickle_tag()), pickle_format()};
  std::shared_ptr<const Format> format;
  try {
    format = cpp_format(parse_header_type(recorded));
  } catch (const InvalidArgument& e) {
    throw Incompatible("shmq: " + any->description() + " carries messages of C++ type " + recorded +
                       ", which the Python module cannot read: " + e.what());
  }
  return {Segment::open(name, &format->tag), format};
}

// A timeout as Python gives it: None waits forever; block=False, or a timeout of zero or less
// (as multiprocessing.Queue treats it), does not wait.
Deadline deadline_from(bool block, py::handle timeout) {
  if (!block) return Deadline::now();
  if (timeout.is_none()) return Deadline::never();
  const double seconds = PyFloat_AsDouble(timeout.ptr());  // TypeError for a non-number
  if (seconds == -1.0 && PyErr_Occurred() != nullptr) throw py::error_already_set();
  if (std::isnan(seconds)) throw InvalidArgument("shmq: a timeout of NaN seconds");
  if (seconds >= static_cast<double>(std::chrono::seconds(Deadline::kForever).count())) {
    return Deadline::never();
  }
  return Deadline::after(std::chrono::duration<double>(seconds));
}

// The Python objects the module calls, looked up once. Never destroyed: a py::object released
// after the interpreter has finalized (by a static destructor at exit) aborts the process.
struct Imports {
  py::object errors = py::module_::import("shmq._errors");
};
const Imports& imports() {
  static const Imports* const once = new Imports();
  return *once;
}

void check_signals() {
  if (PyErr_CheckSignals() != 0) throw py::error_already_set();
}

// Thrown where a Python error is set but no Python code may run (under a ring lock held through
// list_op_pending, where pybind11's error_already_set would format the error): the caller's
// caller (set_python_error) leaves the error as it is.
struct PythonErrorSet {};
// Thrown by a get's try at once to leave a message it would rather copy without the GIL queued.
struct TakeWithoutGil {};

// What a get's try at once does with a message it copies out: copies it if it is small enough
// to copy holding the GIL, else leaves it queued for the call's next try, without the GIL.
template <class Copy>
auto at_once_copy(Copy& copy) {
  return [&copy](const std::byte* at, std::uint32_t bytes) {
    if (bytes > kGilHeldCopyBytes) throw TakeWithoutGil{};
    copy(at, bytes);
  };
}

// Keeps the garbage collector from running for as long as it lives (see decode_untracked): with
// the GIL held, no other thread turns it back on meanwhile.
class NoCollection {
 public:
  NoCollection() : was_enabled_(PyGC_Disable() != 0) {}
  NoCollection(const NoCollection&) = delete;
  NoCollection& operator=(const NoCollection&) = delete;
  ~NoCollection() {
    if (was_enabled_) PyGC_Enable();
  }

 private:
  bool was_enabled_;
};

class PyQueue {
 public:
  // how: "anonymous" (an unnamed queue), "create", "open", "open_or_create".
  PyQueue(std::size_t maxsize, const py::object& type, std::size_t capacity_bytes, unsigned mode,
          const std::optional<std::string>& name, const std::string& how) {
    QueueOptions options;
    options.maxsize = maxsize;
    options.capacity_bytes = capacity_bytes;
    options.mode = mode;
    if (how == "open" && type.is_none()) {
      std::tie(segment_, format_) = open_as_recorded(name.value());
      return;
    }
    format_ = format_from(type);
    if (how == "anonymous") {
      segment_ = Segment::create_anonymous(options, format_->tag);
    } else if (how == "create") {
      segment_ = Segment::create(name.value(), options, format_->tag);
    } else if (how == "open") {
      segment_ = Segment::open(name.value(), &format_->tag);
    } else if (how == "open_or_create") {
      segment_ = Segment::open_or_create(name.value(), options, format_->tag);
    } else {
      throw InvalidArgument("shmq: unknown way to make a queue: " + how);
    }
  }

  // ---- put: every form encodes first (an object that cannot be encoded raises before anything
  // is written), then waits as `deadline` says.
  void put(py::handle obj, bool block, py::handle timeout) {
    const Deadline deadline = deadline_from(block, timeout);
    const Encoded message = encode(obj);
    put_encoded(&message, 1, deadline, block ? "put" : "put_nowait");
  }
  void put_many(const py::iterable& objs, bool block, const py::object& timeout) {
    const Deadline deadline = deadline_from(block, timeout);
    std::vector<Encoded> messages;
    for (const py::handle obj : objs) messages.push_back(encode(obj));
    put_encoded(messages.data(), messages.size(), deadline, "put_many");
  }

  // ---- get: decodes a bytes, int, float, None, True or False straight from the ring when it
  // takes it at once; otherwise takes the message's bytes (waiting without the GIL), then
  // decodes them.
  py::object get(bool block, py::handle timeout) {
    // A buffer per thread, so that a get allocates nothing for messages the last one had room
    // for. Taken out while in use: unpickling may run code that calls get again on this thread.
    thread_local std::string kept;
    std::string message = std::move(kept);
    const auto copy = [&](const std::byte* at, std::uint32_t bytes) {
      message.assign(reinterpret_cast<const char*>(at), bytes);
    };
    py::object value;
    take(
        1, deadline_from(block, timeout), block ? "get" : "get_nowait",
        [&](const std::byte* at, std::uint32_t bytes) {
          PyObject* made = nullptr;
          if (format_->cpp || !decode_untracked(reinterpret_cast<const char*>(at), bytes, &made)) {
            return at_once_copy(copy)(at, bytes);
          }
          if (made == nullptr) throw PythonErrorSet{};  // the message stays queued
          value = py::reinterpret_steal<py::object>(made);
        },
        copy);
    if (!value) value = decode(message);
    if (message.capacity() <= kKeptBufferBytes) kept = std::move(message);
    return value;
  }

  // Up to max_items messages, waiting (as get) for the first. A message that does not decode is
  // dropped; the others taken with it are not: DecodeError carries them in order as `.items`.
  py::list get_many(std::size_t max_items, bool block, const py::object& timeout) {
    if (max_items == 0) throw InvalidArgument("shmq: get_many of 0 items");
    std::vector<std::string> messages;
    const auto copy = [&](const std::byte* at, std::uint32_t bytes) {
      messages.emplace_back(reinterpret_cast<const char*>(at), bytes);
    };
    try {
      take(max_items, deadline_from(block, timeout), "get_many", at_once_copy(copy), copy);
    } catch (...) {
      // The messages copied before the failure (no memory for a later one's copy, or a corrupt
      // frame after them) have left the ring; the one that failed has not. Return those: the
      // next get meets the failure again.
      if (messages.empty()) throw;
    }
    py::list items;
    std::optional<py::error_already_set> first_failure;
    for (const std::string& m : messages) {
      try {
        items.append(decode(m));
      } catch (py::error_already_set& e) {
        if (!first_failure) first_failure.emplace(std::move(e));
      }
    }
    if (first_failure) {
      first_failure->value().attr("items") = items;
      first_failure->restore();
      throw py::error_already_set();
    }
    return items;
  }

  std::size_t qsize() const { return segment_->ring().occupancy().messages; }
  bool empty() const { return qsize() == 0; }
  // True when not even the smallest message could go in now.
  bool full() const { return !has_room_for(format_->cpp ? min_encoded_bytes(*format_->cpp) : 1); }

  void close() { closed_ = true; }
  bool closed() const { return closed_; }
  void shutdown(bool immediate) { segment_->ring().shutdown(immediate); }
  bool is_shutdown() const {
    return segment_->ring().shutdown_state() != detail::ShutdownState::running;
  }

  // ---- JoinableQueue
  void make_joinable() { segment_->ring().make_joinable(); }
  void task_done() {
    if (!segment_->ring().task_done()) {
      PyErr_Format(PyExc_ValueError, "task_done() called too many times (shmq: %s)",
                   segment_->description().c_str());
      throw py::error_already_set();
    }
  }
  std::int64_t unfinished_tasks() const { return segment_->ring().unfinished_tasks(); }
  // Waits until every task put is done: sleeps in the ring's join, in slices (Ctrl-C).
  void join() {
    while (true) {
      Outcome outcome;
      {
        WithoutGil nogil;
        outcome = segment_->ring().join_tasks(Deadline::after(kSignalSlice));
      }
      if (outcome == Outcome::done) return;
      if (outcome == Outcome::shut_down) {
        throw ShutDown("shmq: " + segment_->description() + " was shut down immediately with " +
                       std::to_string(unfinished_tasks()) +
                       " tasks unfinished: join() refused (queued items will never be got)");
      }
      check_signals();
    }
  }

  py::dict stats() const {
    const QueueStats s = segment_->stats();
    py::dict d;
    d["name"] = s.name;
    d["type_name"] = s.type_name;
    d["messages"] = s.messages;
    d["bytes_used"] = s.bytes_used;
    d["capacity_bytes"] = s.capacity_bytes;
    d["maxsize"] = s.maxsize;
    d["mode"] = s.mode;
    d["creator_pid"] = s.creator_pid;
    d["created_unix_ns"] = s.created_unix_ns;
    d["shut_down"] = s.shut_down;
    d["puts"] = s.puts;
    d["gets"] = s.gets;
    d["put_timeouts"] = s.put_timeouts;
    d["get_timeouts"] = s.get_timeouts;
    d["full_waits"] = s.full_waits;
    d["empty_waits"] = s.empty_waits;
    d["lock_recoveries"] = s.lock_recoveries;
    d["peak_depth"] = s.peak_depth;
    d["sleeping_producers"] = s.sleeping_producers;
    d["sleeping_consumers"] = s.sleeping_consumers;
    d["put_lock_holder"] = s.put_lock_holder;
    d["get_lock_holder"] = s.get_lock_holder;
    return d;
  }

  const std::string& name() const { return segment_->name(); }
  std::size_t maxsize() const { return segment_->ring().maxsize(); }
  std::size_t capacity_bytes() const { return segment_->ring().capacity(); }
  std::size_t max_message_bytes() const { return segment_->ring().max_payload(); }
  // The C++ type of the messages (its spelling), or None for pickles.
  py::object cpp_type() const {
    if (!format_->cpp) return py::none();
    return py::str(format_->cpp->spelling());
  }
  const std::string& type_name() const { return segment_->type_name(); }

  static bool remove(const std::string& name) { return Segment::remove(name); }

 private:
  void check_open(const char* call) const {
    if (closed_) {
      throw Closed("shmq: " + segment_->description() + " was closed on this handle: " + call +
                   " refused");
    }
  }

  Encoded encode(const py::handle& obj) const {
    Encoded message;
    if (format_->cpp) {
      encode_value(*format_->cpp, obj.ptr(), message.own());
    } else {
      message = encode_object(obj.ptr());
    }
    segment_->check_message_size(message.size());
    return message;
  }

  py::object decode(const std::string& message) const {
    try {
      if (format_->cpp) {
        return py::reinterpret_steal<py::object>(
            decode_value(*format_->cpp, message.data(), message.size()));
      }
      return decode_object(message.data(), message.size());
    } catch (const DecodeError& e) {
      throw DecodeError("shmq: " + segment_->description() + ": a message does not decode as " +
                        format_->tag.name + " and was dropped: " + e.what());
    } catch (py::error_already_set& e) {
      if (e.matches(PyExc_KeyboardInterrupt) || e.matches(PyExc_SystemExit)) throw;
      if (e.matches(PyExc_MemoryError)) {
        // Taken out of the queue before it could be decoded (a pickle can run code, so it is
        // never decoded under the queue's lock): lost, as multiprocessing.Queue's would be.
        const std::string what = "shmq: " + segment_->description() +
                                 ": out of memory decoding a message of " +
                                 std::to_string(message.size()) + " bytes, which is lost";
        py::raise_from(e, PyExc_MemoryError, what.c_str());
        throw py::error_already_set();
      }
      // Raised from the unpickling error, so the traceback shows both.
      const std::string what =
          "shmq: " + segment_->description() + ": a message does not unpickle and was dropped";
      py::raise_from(e, imports().errors.attr("DecodeError").ptr(), what.c_str());
      throw py::error_already_set();
    }
  }

  // Whether a message of `bytes` fits now (a snapshot).
  bool has_room_for(std::size_t bytes) const {
    const auto& ring = segment_->ring();
    const auto now = ring.occupancy();
    if (ring.maxsize() != 0 && now.messages >= ring.maxsize()) return false;
    return ring.capacity() - now.bytes >= detail::frame_bytes(static_cast<std::uint32_t>(bytes));
  }

  // The one wait of every put form: all of `messages`, in order. The last one left is first
  // tried at once, holding the GIL (write_to touches no Python object).
  void put_encoded(const Encoded* messages, std::size_t n, const Deadline& deadline,
                   const char* call) {
    std::size_t done = 0;
    const auto size_of = [&](std::size_t i) {
      return static_cast<std::uint32_t>(messages[done + i].size());
    };
    const auto fill = [&](std::size_t i, std::byte* dst, std::uint32_t) {
      messages[done + i].write_to(dst);
    };
    detail::SlicedWait sliced{deadline};
    const Outcome outcome = wait_in_slices(
        deadline, call,
        [&] {
          if (n - done != 1 || size_of(0) > kGilHeldCopyBytes ||
              !segment_->ring().put_at_once(size_of(0), fill)) {
            return false;
          }
          ++done;
          return true;
        },
        [&](const Deadline& slice) {
          const detail::Progress progress =
              segment_->ring().put_many(n - done, size_of, fill, slice, &sliced);
          done += progress.count;
          return progress.outcome;
        },
        [&] { return has_room_for(messages[done].size()); });
    if (outcome != Outcome::done) segment_->throw_put_failure(outcome, deadline, call);
  }

  // The one wait of every get form: up to `max` messages. A single message is first tried at
  // once, holding the GIL, with at_once(const std::byte*, std::uint32_t) (see decode_untracked
  // for what it may do there); otherwise `copy` takes them, without the GIL, under the
  // consumers' lock: it only copies the bytes out.
  template <class AtOnce, class Copy>
  void take(std::size_t max, const Deadline& deadline, const char* call, AtOnce&& at_once,
            Copy&& copy) {
    detail::SlicedWait sliced{deadline};
    const Outcome outcome = wait_in_slices(
        deadline, call,
        [&] {
          if (max != 1) return false;
          NoCollection no_collection;
          try {
            return segment_->ring().get_at_once(at_once);
          } catch (const TakeWithoutGil&) {
            return false;
          }
        },
        [&](const Deadline& slice) {
          return segment_->ring().get_many(max, copy, slice, &sliced).outcome;
        },
        [this] { return qsize() != 0; });
    if (outcome != Outcome::done) segment_->throw_get_failure(outcome, deadline, call);
  }

  // Until the put or get is done, is shut down, or `deadline` passes, tries at_once(), holding
  // the GIL (true: done), then runs attempt(slice), one put or get of the ring, without the GIL;
  // returns how the last attempt ended. The first attempt does not wait (no lock-free look at
  // the ring first: the ring's own calls read the other side's word only when their cached copy
  // says they must); if it finds no room or no message, the call polls for the peer (PeerPoll)
  // until ready() says the next try may succeed, then waits in slices of kSignalSlice, running
  // Python's signal handlers between them. at_once() must never wait: while it holds the GIL a
  // thread of this process may hold the ring's lock, and wait for the GIL itself.
  template <class AtOnce, class Attempt, class Ready>
  Outcome wait_in_slices(const Deadline& deadline, const char* call, AtOnce&& at_once,
                         Attempt&& attempt, Ready&& ready) {
    Deadline slice = Deadline::now();
    while (true) {
      check_open(call);
      if (at_once()) return Outcome::done;
      Outcome outcome;
      {
        WithoutGil nogil;
        outcome = attempt(slice);
      }
      if (outcome == Outcome::done || outcome == Outcome::shut_down || deadline.expired()) {
        return outcome;
      }
      if (slice.is_now()) {
        peer_poll_.wait(deadline, ready);
      } else {
        check_signals();
      }
      slice = deadline.capped(kSignalSlice);
    }
  }

  std::shared_ptr<Segment> segment_;
  std::shared_ptr<const Format> format_;
  bool closed_ = false;
  PeerPoll peer_poll_;  // see there
};

// Raises, as a Python exception, the C++ exception `p`: shmq's errors as the classes
// shmq/_errors.py defines (deriving from the standard library's where Python has one:
// queue.Full, queue.Empty, ValueError, ...), anything else as pybind11 would.
void set_python_error(std::exception_ptr p) {
  const auto raise = [](const char* cls, const std::exception& e) {
    // A message may quote hostile bytes (a header's type name): never lose it to bad UTF-8.
    const py::object text = py::reinterpret_steal<py::object>(PyUnicode_DecodeUTF8(
        e.what(), static_cast<py::ssize_t>(std::strlen(e.what())), "backslashreplace"));
    PyErr_SetObject(imports().errors.attr(cls).ptr(), text.ptr());
  };
  try {
    std::rethrow_exception(p);
  } catch (const PythonErrorSet&) {
    // set already
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (const py::builtin_exception& e) {
    e.set_error();
  } catch (const Full& e) {
    raise("Full", e);
  } catch (const Empty& e) {
    raise("Empty", e);
  } catch (const Closed& e) {
    raise("Closed", e);
  } catch (const ShutDown& e) {
    raise("ShutDown", e);
  } catch (const InvalidArgument& e) {
    raise("InvalidArgument", e);
  } catch (const AlreadyExists& e) {
    raise("AlreadyExists", e);
  } catch (const NotFound& e) {
    raise("NotFound", e);
  } catch (const Incompatible& e) {
    raise("Incompatible", e);
  } catch (const MessageTooLarge& e) {
    raise("MessageTooLarge", e);
  } catch (const DecodeError& e) {
    raise("DecodeError", e);
  } catch (const Error& e) {
    raise("Error", e);
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
}

// ---- put, put_nowait, get and get_nowait without pybind11's dispatcher: its argument
// conversion and instance lookup cost more than the rest of a small put (0.7 µs of 0.9).
// These are METH_FASTCALL methods parsing their arguments as Python does.

PyQueue& queue_of(PyObject* self) {
  // _Queue has one C++ type and no C++ base: the instance's first value is the PyQueue.
  auto value = reinterpret_cast<py::detail::instance*>(self)->get_value_and_holder();
  if (!value.holder_constructed()) throw py::type_error("shmq: _Queue.__init__ was not called");
  return *value.value_ptr<PyQueue>();
}

// Fills `out` (null where not given) from positional and keyword arguments named `names`, the
// first `required` of them required. Returns false with a TypeError set on a bad call.
template <std::size_t N>
bool parse_arguments(const char* function, PyObject* const* args, Py_ssize_t nargs,
                     PyObject* kwnames, const std::array<const char*, N>& names,
                     std::size_t required, std::array<PyObject*, N>& out) {
  out.fill(nullptr);
  if (static_cast<std::size_t>(nargs) > N) {
    PyErr_Format(PyExc_TypeError, "%s() takes at most %zu arguments (%zd given)", function, N,
                 nargs);
    return false;
  }
  for (Py_ssize_t i = 0; i < nargs; ++i) out[static_cast<std::size_t>(i)] = args[i];
  const Py_ssize_t keywords = kwnames != nullptr ? PyTuple_GET_SIZE(kwnames) : 0;
  for (Py_ssize_t k = 0; k < keywords; ++k) {
    PyObject* key = PyTuple_GET_ITEM(kwnames, k);
    std::size_t j = 0;
    while (j < N && PyUnicode_CompareWithASCIIString(key, names[j]) != 0) ++j;
    if (j == N) {
      PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", function, key);
      return false;
    }
    if (out[j] != nullptr) {
      PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", function,
                   names[j]);
      return false;
    }
    out[j] = args[nargs + k];
  }
  for (std::size_t i = 0; i < required; ++i) {
    if (out[i] == nullptr) {
      PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", function, names[i]);
      return false;
    }
  }
  return true;
}

// block=: absent is True; otherwise its truth value, as Python takes it.
bool block_of(PyObject* block) {
  if (block == nullptr) return true;
  const int truth = PyObject_IsTrue(block);
  if (truth < 0) throw py::error_already_set();
  return truth != 0;
}

template <class Body>
PyObject* guarded(Body&& body) {
  try {
    return body();
  } catch (abi::__forced_unwind&) {
    throw;  // the thread is being ended (see ~WithoutGil)
  } catch (...) {
    set_python_error(std::current_exception());
    return nullptr;
  }
}

PyObject* fast_put(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    std::array<PyObject*, 3> a;
    if (!parse_arguments("put", args, nargs, kwnames, std::array{"obj", "block", "timeout"}, 1,
                         a)) {
      return nullptr;
    }
    queue_of(self).put(a[0], block_of(a[1]), a[2] != nullptr ? a[2] : Py_None);
    Py_RETURN_NONE;
  });
}

PyObject* fast_put_nowait(PyObject* self, PyObject* const* args, Py_ssize_t nargs,
                          PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    std::array<PyObject*, 1> a;
    if (!parse_arguments("put_nowait", args, nargs, kwnames, std::array{"obj"}, 1, a)) {
      return nullptr;
    }
    queue_of(self).put(a[0], false, Py_None);
    Py_RETURN_NONE;
  });
}

PyObject* fast_get(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    std::array<PyObject*, 2> a;
    if (!parse_arguments("get", args, nargs, kwnames, std::array{"block", "timeout"}, 0, a)) {
      return nullptr;
    }
    return queue_of(self).get(block_of(a[0]), a[1] != nullptr ? a[1] : Py_None).release().ptr();
  });
}

PyObject* fast_get_nowait(PyObject* self, PyObject* const* args, Py_ssize_t nargs,
                          PyObject* kwnames) {
  return guarded([&]() -> PyObject* {
    std::array<PyObject*, 0> a;
    if (!parse_arguments("get_nowait", args, nargs, kwnames, std::array<const char*, 0>{}, 0, a)) {
      return nullptr;
    }
    return queue_of(self).get(false, Py_None).release().ptr();
  });
}

template <PyObject* (*F)(PyObject*, PyObject* const*, Py_ssize_t, PyObject*)>
PyMethodDef fast_method(const char* name, const char* doc) {
  // The documented way to store a METH_FASTCALL function in PyMethodDef's PyCFunction.
  return {name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(F)),
          METH_FASTCALL | METH_KEYWORDS, doc};
}

void add_fast_methods(py::handle cls) {
  static PyMethodDef methods[] = {
      fast_method<fast_put>("put", "put(obj, block=True, timeout=None)"),
      fast_method<fast_put_nowait>("put_nowait", "put_nowait(obj)"),
      fast_method<fast_get>("get", "get(block=True, timeout=None)"),
      fast_method<fast_get_nowait>("get_nowait", "get_nowait()"),
  };
  for (PyMethodDef& def : methods) {
    py::object method = py::reinterpret_steal<py::object>(
        PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(cls.ptr()), &def));
    if (!method) throw py::error_already_set();
    cls.attr(def.ml_name) = method;
  }
}

}  // namespace
}  // namespace shmq::python

PYBIND11_MODULE(_shmq, m) {
  using shmq::python::PyQueue;
  m.doc() = "The C++ half of the shmq Python module; use the shmq package.";
  shmq::python::imports();
  py::register_exception_translator(shmq::python::set_python_error);

  auto cls = py::class_<PyQueue>(m, "_Queue")
                 .def(py::init<std::size_t, const py::object&, std::size_t, unsigned,
                               const std::optional<std::string>&, const std::string&>(),
                      py::arg("maxsize"), py::arg("type"), py::arg("capacity_bytes"),
                      py::arg("mode"), py::arg("name"), py::arg("how"))
                 .def("put_many", &PyQueue::put_many, py::arg("objs"), py::arg("block") = true,
                      py::arg("timeout") = py::none())
                 .def("get_many", &PyQueue::get_many, py::arg("max_items"), py::arg("block") = true,
                      py::arg("timeout") = py::none())
                 .def("qsize", &PyQueue::qsize)
                 .def("empty", &PyQueue::empty)
                 .def("full", &PyQueue::full)
                 .def("close", &PyQueue::close)
                 .def_property_readonly("closed", &PyQueue::closed)
                 .def("shutdown", &PyQueue::shutdown, py::arg("immediate") = false)
                 .def_property_readonly("is_shutdown", &PyQueue::is_shutdown)
                 .def("_make_joinable", &PyQueue::make_joinable)
                 .def("_task_done", &PyQueue::task_done)
                 .def("_unfinished_tasks", &PyQueue::unfinished_tasks)
                 .def("_join", &PyQueue::join)
                 .def("stats", &PyQueue::stats)
                 .def_property_readonly("name", &PyQueue::name)
                 .def_property_readonly("maxsize", &PyQueue::maxsize)
                 .def_property_readonly("capacity_bytes", &PyQueue::capacity_bytes)
                 .def_property_readonly("max_message_bytes", &PyQueue::max_message_bytes)
                 .def_property_readonly("cpp_type", &PyQueue::cpp_type)
                 .def_property_readonly("type_name", &PyQueue::type_name)
                 .def_static("_remove", &PyQueue::remove, py::arg("name"));
  shmq::python::add_fast_methods(cls);
  m.def("_mangle", [](const std::string& spelling) {
    return shmq::python::parse_cpp_type(spelling).mangled();
  });
}
