// shmq::codec<T>: round trips of every built-in codec, a user codec, and hostile bytes.
#include <catch2/catch.hpp>
#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "shmq/shmq.hpp"

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
  CHECK_THROWS_WITH(q.get(), Catch::Contains(q.name()) && Catch::Contains("negative"));
  CHECK(q.get().v == 2);
  CHECK(q.empty());
}
