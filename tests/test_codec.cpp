// shmq::codec<T>: round trips of every built-in codec, a user codec, and hostile bytes.
#include <catch2/catch.hpp>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "shmq/shmq.hpp"
#include "support.hpp"

namespace {

struct Pod {
  int a;
  double b;
  char c[3];
  bool operator==(const Pod& o) const { return a == o.a && b == o.b && c[0] == o.c[0]; }
};

// A user type with a string member: not trivially copyable, so it needs a codec of its own.
struct Point {
  std::string label;
  double x = 0;
  double y = 0;
  bool operator==(const Point& o) const { return label == o.label && x == o.x && y == o.y; }
};

template <class T>
std::vector<std::byte> encode_bytes(const T& v) {
  std::vector<std::byte> bytes(shmq::encoded_size(v));
  shmq::Writer w(bytes.data(), bytes.size());
  shmq::encode(v, w);
  REQUIRE(w.remaining() == 0);
  return bytes;
}

template <class T>
T decode_bytes(const std::vector<std::byte>& bytes) {
  shmq::Reader r(bytes.data(), bytes.size());
  T v = shmq::decode<T>(r);
  REQUIRE(r.remaining() == 0);
  return v;
}

template <class T>
void round_trip(const T& v) {
  CHECK(decode_bytes<T>(encode_bytes(v)) == v);
}

}  // namespace

template <>
struct shmq::codec<Point> {
  static std::size_t size(const Point& p) { return shmq::encoded_size(p.label) + 2 * sizeof(double); }
  static void encode(const Point& p, Writer& w) {
    shmq::encode(p.label, w);
    w.write(&p.x, sizeof p.x);
    w.write(&p.y, sizeof p.y);
  }
  static Point decode(Reader& r) {
    Point p{shmq::decode<std::string>(r)};
    r.read(&p.x, sizeof p.x);
    r.read(&p.y, sizeof p.y);
    return p;
  }
};

TEST_CASE("built-in codecs round-trip every supported type, nested", "[codec]") {
  round_trip(42);
  round_trip(3.5);
  round_trip(Pod{1, 2.0, {'x', 'y', 'z'}});
  round_trip(std::string());
  round_trip(std::string("héllo\0world", 12));
  round_trip(std::vector<int>{1, 2, 3});
  round_trip(std::vector<std::string>{"a", "", "ccc"});
  round_trip(std::array<int, 3>{7, 8, 9});
  round_trip(std::array<std::string, 2>{"x", "yz"});
  round_trip(std::pair<int, std::string>{1, "one"});
  round_trip(std::tuple<int, std::string, double>{1, "two", 3.0});
  round_trip(std::tuple<>{});
  round_trip(std::optional<std::string>{});
  round_trip(std::optional<std::string>{"present"});
  round_trip(std::map<std::string, std::vector<int>>{{"a", {1}}, {"b", {}}});
  round_trip(std::unordered_map<int, std::optional<std::string>>{{1, "x"}, {2, std::nullopt}});
  round_trip(std::vector<std::map<int, std::pair<std::string, std::array<char, 2>>>>{
      {{1, {"n", {'a', 'b'}}}}, {}});
}

TEST_CASE("encodings are compact: trivially copyable values are their bytes", "[codec]") {
  CHECK(shmq::encoded_size(std::int64_t{1}) == 8);
  CHECK(shmq::encoded_size(std::string("abc")) == 4 + 3);
  CHECK(shmq::encoded_size(std::vector<std::int32_t>(10)) == 4 + 40);
  CHECK(shmq::encoded_size(std::optional<int>{}) == 1);
  CHECK(shmq::is_bitwise_v<Pod>);
  CHECK_FALSE(shmq::is_bitwise_v<std::string>);
  CHECK(shmq::is_bitwise_v<std::array<int, 4>>);
}

TEST_CASE("large sequences of bytes and of numbers decode exactly, and truncated ones throw",
          "[codec]") {
  // 6 MiB plus a few bytes: the decoder's huge-page advice covers an unaligned interior.
  const std::size_t n = (std::size_t{6} << 20) + 13;
  std::string text(n, '\0');
  for (std::size_t i = 0; i < n; ++i) text[i] = static_cast<char>(i * 7 + i / 4096);
  const auto check = [](const auto& value) {
    using T = std::decay_t<decltype(value)>;
    const std::string bytes = shmq::detail::encode_to_string(value);
    CHECK(shmq::detail::decode_from_string<T>(bytes) == value);
    CHECK_THROWS_AS(shmq::detail::decode_from_string<T>(bytes.substr(0, bytes.size() - 1)),
                    shmq::DecodeError);
  };
  check(text);
  check(std::vector<unsigned char>(text.begin(), text.end()));
  std::vector<std::byte> raw(n);
  std::memcpy(raw.data(), text.data(), n);
  check(raw);
  std::vector<std::uint32_t> numbers(n / 4);
  std::memcpy(numbers.data(), text.data(), numbers.size() * 4);
  check(numbers);
}

TEST_CASE("a user type travels through a queue once it has a codec", "[codec][queue]") {
  shmq::Queue<Point> q;
  q.put(Point{"origin", 0, 0});
  q.put(Point{"far", 1e9, -1e9});
  CHECK(q.get() == Point{"origin", 0, 0});
  CHECK(q.get() == Point{"far", 1e9, -1e9});
}

TEST_CASE("decoding hostile bytes throws DecodeError and never reads out of bounds", "[codec]") {
  using Bytes = std::vector<std::byte>;
  auto bytes_of = [](std::initializer_list<int> v) {
    Bytes b;
    for (int x : v) b.push_back(static_cast<std::byte>(x));
    return b;
  };
  SECTION("truncated value") { CHECK_THROWS_AS(decode_bytes<std::int64_t>(bytes_of({1, 2, 3})), shmq::DecodeError); }
  SECTION("a string longer than the message") {
    CHECK_THROWS_AS(decode_bytes<std::string>(bytes_of({200, 0, 0, 0, 'a'})), shmq::DecodeError);
  }
  SECTION("a huge element count is refused before allocating") {
    CHECK_THROWS_AS(decode_bytes<std::vector<std::string>>(bytes_of({255, 255, 255, 255, 0})),
                    shmq::DecodeError);
    CHECK_THROWS_AS(decode_bytes<std::vector<std::int64_t>>(bytes_of({255, 255, 255, 15})),
                    shmq::DecodeError);
  }
  SECTION("an optional tag other than 0 or 1") {
    CHECK_THROWS_AS(decode_bytes<std::optional<int>>(bytes_of({2, 0, 0, 0, 0})), shmq::DecodeError);
  }
  SECTION("a map with a repeated key") {
    const auto b = bytes_of({2, 0, 0, 0, 1, 0, 0, 0, 5, 1, 0, 0, 0, 6});
    using Map = std::map<int, char>;
    CHECK_THROWS_WITH(decode_bytes<Map>(b), Catch::Contains("same key"));
  }
}

namespace {
// Decodes like int but rejects negative values: a stand-in for a message another program wrote.
struct Checked {
  int v;
};
}  // namespace

template <>
struct shmq::codec<Checked> {
  static std::size_t size(const Checked&) { return sizeof(int); }
  static void encode(const Checked& c, Writer& w) { w.write(&c.v, sizeof c.v); }
  static Checked decode(Reader& r) {
    Checked c{};
    r.read(&c.v, sizeof c.v);
    if (c.v < 0) throw DecodeError("negative");
    return c;
  }
};

TEST_CASE("a message that fails to decode is dropped with a DecodeError naming the queue", "[codec][queue]") {
  shmq::Queue<Checked> q;
  q.put(Checked{-1});
  q.put(Checked{2});
  CHECK_THROWS_WITH(q.get(), Catch::Contains(shmq::test::described(q.name())) && Catch::Contains("negative"));
  CHECK(q.get().v == 2);
  CHECK(q.empty());
}

namespace {

using namespace std::chrono_literals;

// Every get form but get_with (which leaves the decoding to its reader), as a call that takes one
// message: the poison-message tests run each of them.
template <class T>
struct GetForm {
  const char* name;
  std::function<std::optional<T>(shmq::Queue<T>&)> get;
};

template <class T>
std::optional<T> only(std::vector<T> got) {
  REQUIRE(got.size() <= 1);
  if (got.empty()) return std::nullopt;
  return std::move(got.front());
}

template <class T>
std::vector<GetForm<T>> every_get_form() {
  using Q = shmq::Queue<T>;
  return {
      {"get", [](Q& q) { return std::optional<T>(q.get()); }},
      {"get(timeout)", [](Q& q) { return std::optional<T>(q.get(10s)); }},
      {"get_nowait", [](Q& q) { return std::optional<T>(q.get_nowait()); }},
      {"try_get", [](Q& q) { return q.try_get(); }},
      {"get_many", [](Q& q) { std::vector<T> out; q.get_many(out, 1); return only(std::move(out)); }},
      {"get_many(timeout)",
       [](Q& q) { std::vector<T> out; q.get_many(out, 1, 10s); return only(std::move(out)); }},
      {"try_get_many", [](Q& q) { std::vector<T> out; q.try_get_many(out, 1); return only(std::move(out)); }},
      {"get(out)", [](Q& q) { T out{}; q.get(out); return std::optional<T>(std::move(out)); }},
      {"get(out, timeout)", [](Q& q) { T out{}; q.get(out, 10s); return std::optional<T>(std::move(out)); }},
      {"get_nowait(out)", [](Q& q) { T out{}; q.get_nowait(out); return std::optional<T>(std::move(out)); }},
      {"try_get(out)",
       [](Q& q) { T out{}; return q.try_get(out) ? std::optional<T>(std::move(out)) : std::nullopt; }},
  };
}

// What fn throws, as "<type>: <what()>", to check an exception's type and message in one call.
template <class Fn>
std::string exception_of(Fn&& fn) {
  try {
    fn();
  } catch (const shmq::DecodeError& e) {
    return std::string("DecodeError: ") + e.what();
  } catch (const std::exception& e) {
    return std::string("another exception: ") + e.what();
  }
  return "no exception";
}

// Puts a message whose bytes are the encoding of the string `name`: what a queue handle named
// `name` travels as.
void put_handle_named(shmq::Queue<shmq::Queue<int>>& q, const std::string& name) {
  const std::size_t bytes = shmq::encoded_size(name);
  q.put_with(bytes, [&](std::byte* at, std::size_t size) {
    shmq::Writer out(at, size);
    shmq::encode(name, out);
  });
}

// Decodes like int, but a few values make decode throw what a user codec might, none of them a
// shmq exception.
struct Fussy {
  int v;
};
constexpr int kRefused = 1;   // std::runtime_error
constexpr int kHostile = 2;   // std::bad_alloc, as from a length too large to allocate
constexpr int kNotStd = 3;    // an int: not even a std::exception

}  // namespace

template <>
struct shmq::codec<Fussy> {
  static std::size_t size(const Fussy&) { return sizeof(int); }
  static void encode(const Fussy& f, Writer& w) { w.write(&f.v, sizeof f.v); }
  static Fussy decode(Reader& r) {
    Fussy f{};
    r.read(&f.v, sizeof f.v);
    if (f.v == kRefused) throw std::runtime_error("refused by the codec");
    if (f.v == kHostile) throw std::bad_alloc();
    if (f.v == kNotStd) throw 42;
    return f;
  }
};

TEST_CASE("a handle naming a removed queue, or an invalid name, is dropped with DecodeError by every get form",
          "[codec][queue]") {
  using Handles = shmq::Queue<shmq::Queue<int>>;
  struct Poison {
    const char* what;
    const char* cause;
    std::function<void(Handles&)> put;
  };
  const Poison poisons[] = {
      {"a queue that no longer exists", "NotFound",
       [](Handles& handles) {
         shmq::test::NameGuard gone(shmq::test::unique_name("gone"));
         handles.put(shmq::Queue<int>::create(gone.name()));
       }},  // the guard removes the name
      {"an invalid name", "InvalidArgument",
       [](Handles& handles) { put_handle_named(handles, "no/such/queue"); }},
  };
  for (const auto& form : every_get_form<shmq::Queue<int>>()) {
    for (const auto& poison : poisons) {
      DYNAMIC_SECTION(form.name << ": " << poison.what) {
        Handles handles;
        shmq::Queue<int> good;
        poison.put(handles);
        handles.put(good);
        CHECK_THAT(exception_of([&] { form.get(handles); }),
                   Catch::Contains("DecodeError: shmq: " + shmq::test::described(handles.name())) &&
                       Catch::Contains("shmq::Queue<int>") && Catch::Contains(poison.cause) &&
                       Catch::Contains("dropped"));
        const std::optional<shmq::Queue<int>> next = form.get(handles);
        REQUIRE(next.has_value());
        CHECK(next->name() == good.name());
        CHECK(handles.empty());
      }
    }
  }
}

TEST_CASE("a message whose codec throws anything is dropped with DecodeError naming the cause, by every get form",
          "[codec][queue]") {
  const std::pair<int, const char*> poisons[] = {
      {kRefused, "std::runtime_error: refused by the codec"},
      {kHostile, "std::bad_alloc"},
      {kNotStd, "an exception of type int"},
  };
  for (const auto& form : every_get_form<Fussy>()) {
    for (const auto& [poison, cause] : poisons) {
      DYNAMIC_SECTION(form.name << ", decode throwing " << cause) {
        shmq::Queue<Fussy> q;
        q.put(Fussy{poison});
        q.put(Fussy{10});
        CHECK_THAT(exception_of([&] { form.get(q); }),
                   Catch::Contains("DecodeError: shmq: " + shmq::test::described(q.name())) &&
                       Catch::Contains("Fussy") && Catch::Contains(cause));
        const std::optional<Fussy> next = form.get(q);
        REQUIRE(next.has_value());
        CHECK(next->v == 10);
        CHECK(q.empty());
      }
    }
  }
}

TEST_CASE("get_many stops at a message that cannot be decoded: the ones before are got, it is dropped, the ones after stay",
          "[codec][queue][batch]") {
  shmq::Queue<Fussy> q;
  for (const int v : {10, kRefused, 11, 12}) q.put(Fussy{v});
  std::vector<Fussy> out;
  CHECK_THROWS_AS(q.get_many(out, 10), shmq::DecodeError);
  REQUIRE(out.size() == 1);
  CHECK(out[0].v == 10);
  out.clear();
  CHECK(q.try_get_many(out, 10) == 2);
  REQUIRE(out.size() == 2);
  CHECK((out[0].v == 11 && out[1].v == 12));
}

TEST_CASE("get_with keeps a message its reader fails on with an exception other than DecodeError",
          "[codec][queue][zero-copy]") {
  shmq::Queue<Fussy> q;
  q.put(Fussy{kRefused});
  const auto decode_fussy = [](const std::byte* at, std::size_t bytes) {
    shmq::Reader in(at, bytes);
    return shmq::codec<Fussy>::decode(in);
  };
  CHECK_THROWS_AS(q.get_with(decode_fussy), std::runtime_error);
  CHECK(q.qsize() == 1);  // get_with's rule: only DecodeError drops
  CHECK_THROWS_AS(q.get(), shmq::DecodeError);
  CHECK(q.empty());
}
