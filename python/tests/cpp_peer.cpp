// The C++ side of the Python module's tests across languages. Each command works on one type,
// named as Python's type= spells it:
//
//   shmq_python_peer types                     prints "<spelling>\t<typeid(T).name()>" per type
//   shmq_python_peer fill  <type> <queue>      creates <queue> as Queue<T> and puts samples<T>()
//   shmq_python_peer check <type> <queue>      opens <queue> as Queue<T>, gets as many messages
//                                              as samples<T>() has and exits 0 if they are equal
//   shmq_python_peer echo  <type> <in> <out> <n>  gets n messages from <in>, puts them to <out>
//   shmq_python_peer bad   <queue>             puts into a Queue<std::vector<std::int64_t>>: a
//                                              good message, one whose count exceeds its bytes,
//                                              a truncated one, then a good one
//   shmq_python_peer raw   <queue> <hex>...    puts each <hex> as one message's bytes into any
//                                              queue, whatever its type (a hostile writer)
//   shmq_python_peer hold  <queue> put|get     holds the producers' lock (inside a put that
//                                              writes nothing) or the consumers' lock (inside a
//                                              get of a queued message, which stays queued) of
//                                              any queue: prints "held" once it has it, lets go
//                                              when stdin ends, then exits
//
// Exit status: 0 done, 1 a check failed (what differed on stderr), 2 usage, 3 a shmq error.
#include <shmq/shmq.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

template <class T>
struct Samples;

#define SAMPLES(T, ...)                                   \
  template <>                                             \
  struct Samples<T> {                                     \
    static std::vector<T> get() { return {__VA_ARGS__}; } \
  }

using Strings = std::vector<std::string>;
using Record = std::map<std::string, std::vector<double>>;
using Tuple = std::tuple<std::int64_t, std::string, double>;
using Pair = std::pair<std::int32_t, float>;
using Bytes = std::vector<std::uint8_t>;
using ByteVector = std::vector<std::byte>;
using Short3 = std::array<std::int16_t, 3>;
using Index = std::unordered_map<std::int64_t, Strings>;
using Keyed = std::map<std::vector<std::int32_t>, std::string>;
using Prices = std::map<std::string, double>;
using Ints = std::vector<std::int64_t>;
using Maybe = std::optional<std::string>;
using Records = std::vector<Record>;

SAMPLES(std::string, "", "hello", "消息1", std::string(5000, 'x'));
SAMPLES(std::int64_t, 0, -1, INT64_MIN, INT64_MAX);
SAMPLES(std::uint64_t, 0, UINT64_MAX);
SAMPLES(double, 0.0, -2.5, 1e300);
SAMPLES(bool, true, false);
SAMPLES(Ints, Ints{}, Ints{1, 2, 3}, Ints(1000, 7));
SAMPLES(Prices, Prices{}, Prices{{"apple", 1.5}, {"pear", -0.25}});
SAMPLES(Tuple, Tuple{1, "one", 1.0}, Tuple{-7, "", 0.5});
SAMPLES(Pair, Pair{1, 2.5f}, Pair{-3, 0.0f});
SAMPLES(Bytes, Bytes{}, Bytes{0, 255, 10});
SAMPLES(ByteVector, ByteVector{std::byte{1}, std::byte{200}});
SAMPLES(Maybe, Maybe{}, Maybe{"x"});
SAMPLES(Short3, Short3{1, -2, 3});
SAMPLES(Index, Index{{5, Strings{"a", "b"}}, {-1, Strings{}}});
SAMPLES(Keyed, Keyed{{{1, 2}, "a"}, {{}, "empty"}});
SAMPLES(Records, Records{Record{{"x", {1.0, 2.0}}}, Record{}});

template <class F>
bool with_type(std::string_view spelling, F&& f) {
  bool found = false;
  auto one = [&](std::string_view name, auto tag) {
    if (!found && (spelling == name || spelling == "*")) {
      f(name, tag);
      found = spelling != "*";
    }
  };
  using std::type_identity;
  one("std::string", type_identity<std::string>{});
  one("std::int64_t", type_identity<std::int64_t>{});
  one("std::uint64_t", type_identity<std::uint64_t>{});
  one("double", type_identity<double>{});
  one("bool", type_identity<bool>{});
  one("std::vector<std::int64_t>", type_identity<Ints>{});
  one("std::map<std::string, double>", type_identity<Prices>{});
  one("std::tuple<std::int64_t, std::string, double>", type_identity<Tuple>{});
  one("std::pair<std::int32_t, float>", type_identity<Pair>{});
  one("std::vector<std::uint8_t>", type_identity<Bytes>{});
  one("std::vector<std::byte>", type_identity<ByteVector>{});
  one("std::optional<std::string>", type_identity<Maybe>{});
  one("std::array<std::int16_t, 3>", type_identity<Short3>{});
  one("std::unordered_map<std::int64_t, std::vector<std::string>>", type_identity<Index>{});
  one("std::map<std::vector<std::int32_t>, std::string>", type_identity<Keyed>{});
  one("std::vector<std::map<std::string, std::vector<double>>>", type_identity<Records>{});
  return found || spelling == "*";
}

int run(int argc, char** argv) {
  const std::string_view cmd = argc > 1 ? argv[1] : "";
  if (cmd == "types") {
    with_type("*", [](std::string_view name, auto tag) {
      using T = typename decltype(tag)::type;
      std::cout << name << '\t' << typeid(T).name() << '\n';
    });
    return 0;
  }
  if (cmd == "bad" && argc == 3) {
    auto q = shmq::Queue<Ints>::open(argv[2]);
    q.put(Ints{1});
    q.put_with(8, [](std::byte* at, std::size_t) {  // a count of 1000, no elements
      const std::uint32_t count = 1000;
      std::memcpy(at, &count, 4);
      std::memset(at + 4, 0, 4);
    });
    q.put_with(6, [](std::byte* at, std::size_t) {  // one element announced, 2 of its 8 bytes
      const std::uint32_t count = 1;
      std::memcpy(at, &count, 4);
      std::memset(at + 4, 0, 2);
    });
    q.put(Ints{2});
    return 0;
  }
  if (cmd == "raw" && argc >= 3) {
    auto segment = shmq::detail::Segment::open(argv[2], nullptr);  // any type: bytes as they come
    for (int i = 3; i < argc; ++i) {
      const std::string hex = argv[i];
      std::string bytes;
      for (std::size_t j = 0; j + 1 < hex.size(); j += 2) {
        bytes += static_cast<char>(std::stoi(hex.substr(j, 2), nullptr, 16));
      }
      segment->ring().put_many(
          1, [&](std::size_t) { return static_cast<std::uint32_t>(bytes.size()); },
          [&](std::size_t, std::byte* at, std::uint32_t) {
            std::memcpy(at, bytes.data(), bytes.size());
          },
          shmq::detail::Deadline::never());
    }
    return 0;
  }
  if (cmd == "hold" && argc == 4 &&
      (argv[3] == std::string_view("put") || argv[3] == std::string_view("get"))) {
    auto segment = shmq::detail::Segment::open(argv[2], nullptr);
    struct LetGo {};  // thrown to leave the queue as it was: nothing put, nothing taken
    const auto hold = [](auto&&...) {
      std::cout << "held" << std::endl;
      while (std::cin.get() != std::char_traits<char>::eof()) {
      }
      throw LetGo{};
    };
    try {
      if (argv[3] == std::string_view("put")) {
        segment->ring().put_many(
            1, [](std::size_t) { return 1u; }, hold, shmq::detail::Deadline::never());
      } else {
        segment->ring().get_many(1, hold, shmq::detail::Deadline::never());
      }
    } catch (const LetGo&) {
    }
    return 0;
  }
  int status = 2;
  const bool known = argc >= 4 && with_type(argv[2], [&](std::string_view, auto tag) {
                       using T = typename decltype(tag)::type;
                       const std::vector<T> samples = Samples<T>::get();
                       if (cmd == "fill") {
                         auto q = shmq::Queue<T>::create(argv[3]);
                         for (const T& v : samples) q.put(v);
                         status = 0;
                       } else if (cmd == "check") {
                         auto q = shmq::Queue<T>::open(argv[3]);
                         status = 0;
                         for (std::size_t i = 0; i < samples.size(); ++i) {
                           if (!(q.get(std::chrono::seconds(10)) == samples[i])) {
                             std::cerr << "message " << i << " differs from the sample\n";
                             status = 1;
                           }
                         }
                       } else if (cmd == "echo" && argc == 6) {
                         auto in = shmq::Queue<T>::open(argv[3]);
                         auto out = shmq::Queue<T>::open(argv[4]);
                         for (long n = std::stol(argv[5]); n > 0; --n) out.put(in.get());
                         status = 0;
                       }
                     });
  if (!known || status == 2) {
    std::cerr << "usage: see the top of python/tests/cpp_peer.cpp\n";
    return 2;
  }
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const shmq::Error& e) {
    std::cerr << e.what() << '\n';
    return 3;
  }
}
