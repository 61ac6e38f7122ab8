// How Pool tasks and results travel: what a task may be, the messages in the pool's two rings,
// and the runners that decode, call and encode in a worker. Internal.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "shmq/codec.hpp"
#include "shmq/detail/pool_payload.hpp"
#include "shmq/errors.hpp"

namespace shmq::detail {

// ---- What a task may be: a function pointer, or a class whose one, non-template operator()
// converts to one (a captureless lambda). Workers are forks: they share the program's code, so a
// code address means the same function there, but a capture made after the fork does not exist
// there.

template <class F>
struct signature {};  // not a task
template <class R, class... P>
struct signature<R (*)(P...)> {
  using result = R;
  using pointer = R (*)(P...);
  using args = std::tuple<std::decay_t<P>...>;
};
template <class R, class... P>
struct signature<R (*)(P...) noexcept> : signature<R (*)(P...)> {};

// The function pointer a lambda's call operator stands for.
template <class M>
struct call_operator {};
template <class R, class C, class... P>
struct call_operator<R (C::*)(P...) const> {
  using pointer = R (*)(P...);
};
template <class R, class C, class... P>
struct call_operator<R (C::*)(P...) const noexcept> {
  using pointer = R (*)(P...);
};

template <class Fn, class = void>
struct task_traits {
  static constexpr bool valid = false;
};
template <class R, class... P>
struct task_traits<R (*)(P...), void> {
  static constexpr bool valid = true;
  using pointer = R (*)(P...);
};
template <class R, class... P>
struct task_traits<R (*)(P...) noexcept, void> : task_traits<R (*)(P...)> {};
template <class R, class... P>
struct task_traits<R(P...), void> : task_traits<R (*)(P...)> {};
template <class Fn>
struct task_traits<Fn, std::void_t<typename call_operator<decltype(&Fn::operator())>::pointer>> {
  using pointer = typename call_operator<decltype(&Fn::operator())>::pointer;
  static constexpr bool valid = std::is_convertible_v<Fn, pointer>;
};

template <class Fn>
inline constexpr bool is_task_v = task_traits<std::decay_t<Fn>>::valid;
template <class Fn>
using task_pointer_t = typename task_traits<std::decay_t<Fn>>::pointer;

template <class>
inline constexpr bool always_false_v = false;

// Made in place of a Pool call's body when fn is no task, so that this is the first error. (A
// class: its definition is instantiated where it is used, where a function template's body is
// instantiated at the end of the file, after the errors its void return causes.)
template <class Fn>
struct RejectTask {
  static_assert(always_false_v<Fn>,
                "shmq::Pool: a task must be a plain function or a lambda with no capture and no "
                "auto parameter (not a std::function, a member function or a capturing lambda): "
                "pass what it would capture as task arguments instead");
};

template <class F>
std::uint64_t address_of(F f) {
  return reinterpret_cast<std::uint64_t>(reinterpret_cast<void*>(f));
}
template <class F>
F from_address(std::uint64_t address) {
  return reinterpret_cast<F>(reinterpret_cast<void*>(address));
}

// ---- Payloads: an encoding, in the message when it fits the ring, else out of band.

// A memfd that process `holder` holds as descriptor `fd`, by its name (which the opener checks
// through /proc); fd -1: none.
struct MemfdRef {
  std::int32_t holder = 0;
  std::int32_t fd = -1;
  std::uint64_t size = 0;  // a payload's: its encoding's size; a loan's: the memfd's capacity
  std::string name;
  bool is_set() const noexcept { return fd >= 0; }
};

struct Payload {
  // out_of_band: an argument, in the memfd `memfd` names; a result, in the memfd sent with it over
  // the PayloadChannel. lent: a result, in the memfd lent with its task.
  enum class Where : std::uint8_t { inline_bytes = 0, out_of_band = 1, lent = 2 };
  Where where = Where::inline_bytes;
  std::string bytes;  // inline: the encoding
  MemfdRef memfd;     // otherwise: memfd.size is the encoding's size
};

// Where a caller's payloads are encoded: in the message up to inline_limit bytes, else in a memfd
// of `files` (owned by the pool, which outlives every encoding).
struct PayloadTarget {
  std::size_t inline_limit = 0;
  PayloadFiles* files = nullptr;
};

// A payload's encoding as the sender made it: the wire form, and the memfd when out of band.
struct EncodedPayload {
  Payload wire;
  PayloadFile file;
};

// Encodes v: inline if it is at most target.inline_limit bytes, else into a memfd of the caller's.
template <class T>
EncodedPayload encode_payload(const T& v, const PayloadTarget& target, const char* what) {
  EncodedPayload out;
  const std::size_t size = codec<T>::size(v);
  if (size <= target.inline_limit) {
    out.wire.bytes.resize(size);
    Writer w(reinterpret_cast<std::byte*>(out.wire.bytes.data()), size);
    codec<T>::encode(v, w);
    return out;
  }
  out.file = target.files->take(size, what);
  Writer w(out.file.data(), size);
  codec<T>::encode(v, w);
  out.wire.where = Payload::Where::out_of_band;
  out.wire.memfd = {static_cast<std::int32_t>(getpid()), out.file.fd(), size, out.file.name()};
  return out;
}

// ---- The messages.

struct TaskMessage {
  std::uint64_t id = 0;
  std::uint64_t runner = 0;    // Runner address
  std::uint64_t function = 0;  // the task's function address
  Payload args;
  MemfdRef loan;  // a caller's memfd the result may be written into, if it fits; or none
};

enum class TaskOutcome : std::uint8_t { returned = 0, raised = 1, lost = 2 };

struct ResultMessage {
  std::uint64_t id = 0;
  TaskOutcome outcome = TaskOutcome::returned;
  Payload result;         // returned: the encoded result
  std::string type_name;  // raised: the exception's type
  std::string what;       // raised: what(); lost: why the worker was lost
};

// Where a runner encodes its result: inline bytes or a memfd, as the worker decides by size.
class ResultSink {
 public:
  template <class T>
  void put(const T& value) {
    const std::size_t n = codec<T>::size(value);
    Writer w(reserve(n), n);
    codec<T>::encode(value, w);
  }

 protected:
  ~ResultSink() = default;
  virtual std::byte* reserve(std::size_t bytes) = 0;
};

// Runs a task in a worker: decodes the arguments, calls the function, encodes what it returns.
using Runner = void (*)(std::uint64_t function, Reader& args, ResultSink& out);

// apply: one call.
template <class F>
void run_call(std::uint64_t function, Reader& in, ResultSink& out) {
  using S = signature<F>;
  auto args = codec<typename S::args>::decode(in);
  if (in.remaining() != 0) throw DecodeError("shmq::Pool: bytes left over after the arguments");
  if constexpr (std::is_void_v<typename S::result>) {
    std::apply(from_address<F>(function), std::move(args));
    out.put(std::tuple<>{});
  } else {
    out.put(std::apply(from_address<F>(function), std::move(args)));
  }
}

// A task's arguments on their way out: references to the caller's where they have the parameters'
// types, converted values where not. Encodes as the tuple of the parameters' types does.
template <class... E>
struct ArgumentPack {
  std::tuple<E...> elements;
};

// A failed item of a chunk: its index in the chunk, the exception's type and what().
using ItemFailure = std::tuple<std::uint64_t, std::string, std::string>;
// A chunk's outcome: the results of the items that returned, in order, and the failures.
template <class R>
using ChunkResults = std::pair<std::vector<R>, std::vector<ItemFailure>>;

// The type name and what() of the exception being handled.
std::pair<std::string, std::string> describe_current_exception();

// Calls `call`, recording an exception as the failure of item `index`; whether it returned.
template <class Call>
bool run_item(std::uint64_t index, std::vector<ItemFailure>& failures, Call&& call) {
  try {
    call();
    return true;
  } catch (...) {
    auto [type, what] = describe_current_exception();
    failures.emplace_back(index, std::move(type), std::move(what));
    return false;
  }
}

// map, starmap, imap: a chunk of items, each item's exception caught on its own, so that one
// failing item leaves the others' results.
template <class F, bool kStar>
void run_chunk(std::uint64_t function, Reader& in, ResultSink& out) {
  using S = signature<F>;
  using Item =
      std::conditional_t<kStar, typename S::args, std::tuple_element_t<0, typename S::args>>;
  const auto items = codec<std::vector<Item>>::decode(in);
  if (in.remaining() != 0) throw DecodeError("shmq::Pool: bytes left over after the chunk");
  ChunkResults<typename S::result> results;
  results.first.reserve(items.size());
  const F f = from_address<F>(function);
  for (std::size_t i = 0; i < items.size(); ++i) {
    run_item(i, results.second, [&] {
      if constexpr (kStar) {
        results.first.push_back(std::apply(f, items[i]));
      } else {
        results.first.push_back(f(items[i]));
      }
    });
  }
  out.put(results);
}

}  // namespace shmq::detail

namespace shmq {

template <>
struct codec<detail::MemfdRef> {
  using M = detail::MemfdRef;
  static std::size_t size(const M& m) { return 16 + encoded_size(m.name); }
  static void encode(const M& m, Writer& out) {
    out.write(&m.holder, 4);
    out.write(&m.fd, 4);
    out.write(&m.size, 8);
    shmq::encode(m.name, out);
  }
  static M decode(Reader& in) {
    M m;
    in.read(&m.holder, 4);
    in.read(&m.fd, 4);
    in.read(&m.size, 8);
    m.name = shmq::decode<std::string>(in);
    return m;
  }
};

template <>
struct codec<detail::Payload> {
  using P = detail::Payload;
  static std::size_t size(const P& p) {
    return 1 + (p.where == P::Where::inline_bytes ? encoded_size(p.bytes) : encoded_size(p.memfd));
  }
  static void encode(const P& p, Writer& out) {
    out.write(&p.where, 1);
    if (p.where == P::Where::inline_bytes) {
      shmq::encode(p.bytes, out);
    } else {
      shmq::encode(p.memfd, out);
    }
  }
  static P decode(Reader& in) {
    P p;
    in.read(&p.where, 1);
    if (p.where == P::Where::inline_bytes) {
      p.bytes = shmq::decode<std::string>(in);
    } else if (p.where == P::Where::out_of_band || p.where == P::Where::lent) {
      p.memfd = shmq::decode<detail::MemfdRef>(in);
    } else {
      throw DecodeError("shmq::Pool: bad payload kind");
    }
    return p;
  }
};

template <class... E>
struct codec<detail::ArgumentPack<E...>> {
  static std::size_t size(const detail::ArgumentPack<E...>& p) {
    return std::apply([](const auto&... e) { return (std::size_t{0} + ... + encoded_size(e)); },
                      p.elements);
  }
  static void encode(const detail::ArgumentPack<E...>& p, Writer& out) {
    std::apply([&](const auto&... e) { (shmq::encode(e, out), ...); }, p.elements);
  }
};

template <>
struct codec<detail::TaskMessage> {
  // The loan, when there is none (nearly always), costs one byte.
  static std::size_t size(const detail::TaskMessage& t) {
    return 25 + encoded_size(t.args) + (t.loan.is_set() ? encoded_size(t.loan) : 0);
  }
  static void encode(const detail::TaskMessage& t, Writer& out) {
    out.write(&t.id, 8);
    out.write(&t.runner, 8);
    out.write(&t.function, 8);
    shmq::encode(t.args, out);
    const std::uint8_t lent = t.loan.is_set() ? 1 : 0;
    out.write(&lent, 1);
    if (lent) shmq::encode(t.loan, out);
  }
  static detail::TaskMessage decode(Reader& in) {
    detail::TaskMessage t;
    in.read(&t.id, 8);
    in.read(&t.runner, 8);
    in.read(&t.function, 8);
    t.args = shmq::decode<detail::Payload>(in);
    std::uint8_t lent = 0;
    in.read(&lent, 1);
    if (lent > 1) throw DecodeError("shmq::Pool: bad loan flag in a task message");
    if (lent == 1) {
      t.loan = shmq::decode<detail::MemfdRef>(in);
      // One encoding per message: a loan that names no memfd is sent as none.
      if (!t.loan.is_set()) throw DecodeError("shmq::Pool: a task's loan names no memfd");
    }
    return t;
  }
};

template <>
struct codec<detail::ResultMessage> {
  static std::size_t size(const detail::ResultMessage& r) {
    return 9 + encoded_size(r.result) + encoded_size(r.type_name) + encoded_size(r.what);
  }
  static void encode(const detail::ResultMessage& r, Writer& out) {
    out.write(&r.id, 8);
    out.write(&r.outcome, 1);
    shmq::encode(r.result, out);
    shmq::encode(r.type_name, out);
    shmq::encode(r.what, out);
  }
  static detail::ResultMessage decode(Reader& in) {
    detail::ResultMessage r;
    in.read(&r.id, 8);
    in.read(&r.outcome, 1);
    if (static_cast<std::uint8_t>(r.outcome) > 2) throw DecodeError("shmq::Pool: bad task outcome");
    r.result = shmq::decode<detail::Payload>(in);
    r.type_name = shmq::decode<std::string>(in);
    r.what = shmq::decode<std::string>(in);
    return r;
  }
};

}  // namespace shmq
