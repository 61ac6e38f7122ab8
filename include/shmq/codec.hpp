// shmq::codec<T>: how a value becomes the bytes of one message and back.
//
// A codec is a struct with three static functions:
//
//   static std::size_t size(const T& v);          // exact number of bytes encode() will write
//   static void encode(const T& v, Writer& out);  // writes exactly size(v) bytes
//   static T decode(Reader& in);                  // reads them back; throws DecodeError on bad
//   bytes
//
// A codec may also have
//
//   static void decode_into(Reader& in, T& out);  // as decode, into an existing value, reusing its
//                                                 // storage (Queue::get(T&) uses it)
//
// which the built-in string and vector codecs have: decoding into a string or vector whose
// capacity suffices allocates nothing. Without it, decode_into assigns a decoded value.
//
// Built in: trivially copyable types (copied as their bytes), std::string, std::vector, std::array,
// std::pair, std::tuple, std::optional, std::map, std::unordered_map, nested freely. For another
// type, specialize shmq::codec in namespace shmq, composing the codecs of its members:
//
//   template <> struct shmq::codec<Point> {
//     static std::size_t size(const Point& p) { return shmq::encoded_size(p.label) + 8; }
//     static void encode(const Point& p, Writer& w) { shmq::encode(p.label, w); w.write(&p.x, 8); }
//     static Point decode(Reader& r) { Point p{shmq::decode<std::string>(r)}; r.read(&p.x, 8);
//     return p; }
//   };
//
// Decoding never trusts its input: every read is bounds-checked against the message, and lengths
// are checked against the bytes that remain before anything is allocated.
#pragma once

#include <sys/mman.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "shmq/errors.hpp"

namespace shmq {

// Writes into a buffer of known size; an overrun means a codec's size() and encode() disagree.
class Writer {
 public:
  Writer(std::byte* begin, std::size_t size) noexcept : cur_(begin), end_(begin + size) {}

  void write(const void* src, std::size_t n) {
    if (n > remaining()) {
      throw Error("shmq::codec: encode() wrote more bytes than size() announced");
    }
    if (n == 0) return;  // an empty container's data() may be null, which memcpy must not see
    std::memcpy(cur_, src, n);
    cur_ += n;
  }
  std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - cur_); }

 private:
  std::byte* cur_;
  std::byte* end_;
};

// Reads from one message; every read is checked against the bytes that remain.
class Reader {
 public:
  Reader(const std::byte* begin, std::size_t size) noexcept : cur_(begin), end_(begin + size) {}

  void read(void* dst, std::size_t n) {
    const std::byte* src = take(n);
    if (n != 0) std::memcpy(dst, src, n);  // as in Writer::write: dst may be null when n is 0
  }
  // A view of the next n bytes, valid while the message is (only inside a get_with reader).
  const std::byte* take(std::size_t n) {
    if (n > remaining()) {
      throw DecodeError("shmq::codec: message truncated: needs " + std::to_string(n) +
                        " more bytes, has " + std::to_string(remaining()));
    }
    const std::byte* at = cur_;
    cur_ += n;
    return at;
  }
  std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - cur_); }

 private:
  const std::byte* cur_;
  const std::byte* end_;
};

// The default codec: a trivially copyable value travels as its object representation.
template <class T, class Enable = void>
struct codec {
  static_assert(std::is_trivially_copyable_v<T>,
                "shmq::codec<T>: T is not trivially copyable and has no codec; specialize "
                "shmq::codec<T> (see shmq/codec.hpp)");
  static_assert(!std::is_pointer_v<T> && !std::is_member_pointer_v<T>,
                "shmq::codec<T>: a pointer means nothing in another process");

  // Marks codecs whose encoding is the object representation, so containers copy them in bulk.
  static constexpr bool bitwise = true;

  static constexpr std::size_t size(const T&) noexcept { return sizeof(T); }
  static void encode(const T& v, Writer& out) { out.write(&v, sizeof(T)); }
  static T decode(Reader& in) {
    T v;
    in.read(&v, sizeof(T));
    return v;
  }
};

namespace detail {
template <class T, class = void>
struct is_bitwise : std::false_type {};
template <class T>
struct is_bitwise<T, std::void_t<decltype(codec<T>::bitwise)>>
    : std::bool_constant<codec<T>::bitwise> {};
}  // namespace detail

// Whether codec<T> encodes T as its raw bytes (so a run of T can be copied in one memcpy).
template <class T>
inline constexpr bool is_bitwise_v = detail::is_bitwise<T>::value;

template <class T>
std::size_t encoded_size(const T& v) {
  return codec<T>::size(v);
}
template <class T>
void encode(const T& v, Writer& out) {
  codec<T>::encode(v, out);
}
template <class T>
T decode(Reader& in) {
  return codec<T>::decode(in);
}

namespace detail {
template <class T, class = void>
struct has_decode_into : std::false_type {};
template <class T>
struct has_decode_into<
    T, std::void_t<decltype(codec<T>::decode_into(std::declval<Reader&>(), std::declval<T&>()))>>
    : std::true_type {};
}  // namespace detail

// Decodes into `out`, reusing its storage where codec<T> has decode_into; otherwise assigns a
// decoded value. If it throws, `out` holds a valid but unspecified value.
template <class T>
void decode_into(Reader& in, T& out) {
  if constexpr (detail::has_decode_into<T>::value) {
    codec<T>::decode_into(in, out);
  } else {
    out = codec<T>::decode(in);
  }
}

namespace detail {

// A value's encoding as a byte string (for messages that carry other messages: Pool tasks).
template <class T>
std::string encode_to_string(const T& v) {
  std::string bytes(codec<T>::size(v), '\0');
  Writer out(reinterpret_cast<std::byte*>(bytes.data()), bytes.size());
  codec<T>::encode(v, out);
  return bytes;
}
// Out of line, so that the decoders below inline: a message of `size` bytes where decoding read
// `used` (used <= size) or wanted `used` (used > size).
[[noreturn]] __attribute__((noinline, cold)) inline void throw_size_mismatch(std::size_t used,
                                                                             std::size_t size) {
  if (used > size) {
    throw DecodeError("shmq::codec: message truncated: needs " + std::to_string(used) +
                      " more bytes, has " + std::to_string(size));
  }
  throw DecodeError("shmq::codec: " + std::to_string(size - used) +
                    " bytes left over after decoding");
}
inline void expect_end(const Reader& in) {
  if (in.remaining() != 0) throw_size_mismatch(0, in.remaining());
}
// Whether a whole message of T is a copy of its bytes into a default-constructed T.
template <class T>
inline constexpr bool is_plain_copy_v = is_bitwise_v<T>&& std::is_default_constructible_v<T>;

// Decodes a whole message as one T; DecodeError if bytes are left over.
template <class T>
T decode_exactly(const std::byte* data, std::size_t size) {
  if constexpr (is_plain_copy_v<T>) {
    if (size != sizeof(T)) throw_size_mismatch(sizeof(T), size);
    T v;
    std::memcpy(&v, data, sizeof(T));
    return v;
  } else {
    Reader in(data, size);
    T v = codec<T>::decode(in);
    expect_end(in);
    return v;
  }
}
// As decode_exactly, into `out` (shmq::decode_into).
template <class T>
void decode_exactly_into(const std::byte* data, std::size_t size, T& out) {
  if constexpr (is_plain_copy_v<T>) {
    out = decode_exactly<T>(data, size);
  } else {
    Reader in(data, size);
    decode_into(in, out);
    expect_end(in);
  }
}
template <class T>
T decode_from_string(const std::string& bytes) {
  return decode_exactly<T>(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size());
}

// Element counts and byte lengths travel as 32-bit little-endian-of-the-host words: a message
// never exceeds a ring, and a ring is at most 1 GiB.
using length_t = std::uint32_t;

inline void encode_length(std::size_t n, Writer& out) {
  if (n > UINT32_MAX)
    throw MessageTooLarge("shmq::codec: a length of " + std::to_string(n) +
                          " exceeds the 4 GiB a message can carry");
  const auto len = static_cast<length_t>(n);
  out.write(&len, sizeof len);
}

// Reads an element count and rejects one that the remaining bytes cannot hold, so that a
// hostile length never drives a huge allocation or a long loop: every element encodes to at
// least `min_element_bytes`.
inline std::size_t decode_count(Reader& in, std::size_t min_element_bytes) {
  length_t n;
  in.read(&n, sizeof n);
  if (min_element_bytes != 0 && n > in.remaining() / min_element_bytes) {
    throw DecodeError("shmq::codec: a count of " + std::to_string(n) +
                      " elements cannot fit in the " + std::to_string(in.remaining()) +
                      " bytes that remain");
  }
  return n;
}

// The fewest bytes one element of T can encode to; 1 for types whose size is not fixed (a
// conservative bound for every built-in codec; a user codec of a zero-byte type is rejected by
// the count check too, which keeps hostile counts bounded).
template <class T>
constexpr std::size_t min_encoded_bytes() {
  if constexpr (is_bitwise_v<T>) {
    return sizeof(T);
  } else {
    return 1;
  }
}

// Asks for huge pages under a large buffer about to be filled for the first time: a fresh 64 MiB
// filled through 4 KiB faults costs several copies' time; through 2 MiB pages about one. Only the
// page-aligned interior is advised; failure (THP off, not anonymous memory) changes nothing.
inline void advise_fresh_buffer(void* data, std::size_t bytes) noexcept {
  constexpr std::size_t kHugePage = std::size_t{2} << 20;
  if (bytes < 2 * kHugePage) return;
  const auto begin = (reinterpret_cast<std::uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const auto end = (reinterpret_cast<std::uintptr_t>(data) + bytes) & ~(kHugePage - 1);
#ifdef MADV_HUGEPAGE
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)begin;
  (void)end;
#endif
}

// Shared by every sequence container: a count, then the elements (in bulk when bitwise).
template <class Seq>
struct sequence_codec {
  using value_type = typename Seq::value_type;

  static std::size_t size(const Seq& s) {
    if constexpr (is_bitwise_v<value_type>) {
      return sizeof(length_t) + s.size() * sizeof(value_type);
    } else {
      std::size_t n = sizeof(length_t);
      for (const auto& e : s) n += codec<value_type>::size(e);
      return n;
    }
  }
  static void encode(const Seq& s, Writer& out) {
    encode_length(s.size(), out);
    if constexpr (is_bitwise_v<value_type>) {
      out.write(s.data(), s.size() * sizeof(value_type));
    } else {
      for (const auto& e : s) codec<value_type>::encode(e, out);
    }
  }
  static Seq decode(Reader& in) {
    Seq s;
    decode_into(in, s);
    return s;
  }
  // Into `s`: its storage is reused, and nothing is allocated while its capacity suffices; the
  // elements of a sequence of sequences (or strings) reuse theirs too.
  static void decode_into(Reader& in, Seq& s) {
    const std::size_t n = decode_count(in, min_encoded_bytes<value_type>());
    if constexpr (is_bitwise_v<value_type>) {
      if (s.capacity() < n) {
        s.clear();  // nothing to carry over into the new buffer
        // n is checked against the bytes that remain (decode_count), so reserving n is bounded.
        s.reserve(n);
        advise_fresh_buffer(s.data(), n * sizeof(value_type));
      }
      if constexpr (sizeof(value_type) == 1 &&
                    (std::is_integral_v<value_type> || std::is_same_v<value_type, std::byte>)) {
        // Characters and bytes: assigned straight from the message, with no zero-fill first.
        const auto* bytes = reinterpret_cast<const value_type*>(in.take(n));
        s.assign(bytes, bytes + n);
      } else {
        s.resize(n);
        in.read(s.data(), n * sizeof(value_type));
      }
    } else {
      if (s.size() > n) s.erase(s.begin() + static_cast<std::ptrdiff_t>(n), s.end());
      s.reserve(n);
      for (std::size_t i = 0; i < n; ++i) {
        if (i < s.size()) {
          shmq::decode_into(in, s[i]);
        } else {
          s.push_back(codec<value_type>::decode(in));
        }
      }
    }
  }
};

// Shared by both maps: a count, then key/value pairs; a repeated key is malformed input.
template <class Map>
struct map_codec {
  using key_type = typename Map::key_type;
  using mapped_type = typename Map::mapped_type;

  static std::size_t size(const Map& m) {
    std::size_t n = sizeof(length_t);
    for (const auto& [k, v] : m) n += codec<key_type>::size(k) + codec<mapped_type>::size(v);
    return n;
  }
  static void encode(const Map& m, Writer& out) {
    encode_length(m.size(), out);
    for (const auto& [k, v] : m) {
      codec<key_type>::encode(k, out);
      codec<mapped_type>::encode(v, out);
    }
  }
  static Map decode(Reader& in) {
    const std::size_t n =
        decode_count(in, min_encoded_bytes<key_type>() + min_encoded_bytes<mapped_type>());
    Map m;
    for (std::size_t i = 0; i < n; ++i) {
      key_type k = codec<key_type>::decode(in);
      mapped_type v = codec<mapped_type>::decode(in);
      if (!m.emplace(std::move(k), std::move(v)).second) {
        throw DecodeError("shmq::codec: a map holds the same key twice");
      }
    }
    return m;
  }
};

// Shared by pair and tuple: the members one after another.
template <class Tuple, std::size_t... I>
std::size_t tuple_size(const Tuple& t, std::index_sequence<I...>) {
  return (std::size_t{0} + ... + codec<std::tuple_element_t<I, Tuple>>::size(std::get<I>(t)));
}
template <class Tuple, std::size_t... I>
void tuple_encode(const Tuple& t, Writer& out, std::index_sequence<I...>) {
  (codec<std::tuple_element_t<I, Tuple>>::encode(std::get<I>(t), out), ...);
}
template <class Tuple, std::size_t... I>
Tuple tuple_decode(Reader& in, std::index_sequence<I...>) {
  // Braced initialisation evaluates left to right, so members are read in order.
  return Tuple{codec<std::tuple_element_t<I, Tuple>>::decode(in)...};
}

template <class Tuple>
struct product_codec {
  using indices = std::make_index_sequence<std::tuple_size_v<Tuple>>;
  static std::size_t size(const Tuple& t) { return tuple_size(t, indices{}); }
  static void encode(const Tuple& t, Writer& out) { tuple_encode(t, out, indices{}); }
  static Tuple decode(Reader& in) { return tuple_decode<Tuple>(in, indices{}); }
};

}  // namespace detail

template <class Char, class Traits, class Alloc>
struct codec<std::basic_string<Char, Traits, Alloc>>
    : detail::sequence_codec<std::basic_string<Char, Traits, Alloc>> {};

template <class T, class Alloc>
struct codec<std::vector<T, Alloc>> : detail::sequence_codec<std::vector<T, Alloc>> {};

template <class K, class V, class Cmp, class Alloc>
struct codec<std::map<K, V, Cmp, Alloc>> : detail::map_codec<std::map<K, V, Cmp, Alloc>> {};

template <class K, class V, class Hash, class Eq, class Alloc>
struct codec<std::unordered_map<K, V, Hash, Eq, Alloc>>
    : detail::map_codec<std::unordered_map<K, V, Hash, Eq, Alloc>> {};

template <class A, class B>
struct codec<std::pair<A, B>> : detail::product_codec<std::pair<A, B>> {};

template <class... Ts>
struct codec<std::tuple<Ts...>> : detail::product_codec<std::tuple<Ts...>> {};

// A fixed-size array needs no count; its elements go in bulk when bitwise.
template <class T, std::size_t N>
struct codec<std::array<T, N>> {
  static constexpr bool bitwise = is_bitwise_v<T>;

  static std::size_t size(const std::array<T, N>& a) {
    if constexpr (bitwise) {
      return sizeof a;
    } else {
      std::size_t n = 0;
      for (const auto& e : a) n += codec<T>::size(e);
      return n;
    }
  }
  static void encode(const std::array<T, N>& a, Writer& out) {
    if constexpr (bitwise) {
      out.write(a.data(), sizeof a);
    } else {
      for (const auto& e : a) codec<T>::encode(e, out);
    }
  }
  static std::array<T, N> decode(Reader& in) {
    if constexpr (bitwise && std::is_default_constructible_v<T>) {
      std::array<T, N> a;
      in.read(a.data(), sizeof a);
      return a;
    } else {
      return decode_each(in, std::make_index_sequence<N>{});
    }
  }

 private:
  template <std::size_t... I>
  static std::array<T, N> decode_each(Reader& in, std::index_sequence<I...>) {
    return {{((void)I, codec<T>::decode(in))...}};
  }
};

// One tag byte (0: empty, 1: a value follows); any other tag is malformed.
template <class T>
struct codec<std::optional<T>> {
  static std::size_t size(const std::optional<T>& o) { return 1 + (o ? codec<T>::size(*o) : 0); }
  static void encode(const std::optional<T>& o, Writer& out) {
    const std::uint8_t tag = o ? 1 : 0;
    out.write(&tag, 1);
    if (o) codec<T>::encode(*o, out);
  }
  static std::optional<T> decode(Reader& in) {
    std::uint8_t tag;
    in.read(&tag, 1);
    if (tag > 1)
      throw DecodeError("shmq::codec: optional tag " + std::to_string(tag) + " is not 0 or 1");
    if (tag == 0) return std::nullopt;
    return codec<T>::decode(in);
  }
};

}  // namespace shmq
