// A C++ message type known at run time: parsed from a spelling ("std::vector<std::int64_t>") or
// from the demangled name a queue's header records, mangled back to the name typeid(T).name()
// gives (so its fingerprint matches the C++ side's), and used to encode Python objects into the
// codec's wire format (include/shmq/codec.hpp) and to decode messages back. Internal to the
// Python module.
#pragma once

#include <Python.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace shmq::python {

// The C++ shapes the module can read and write. Everything else (a user's struct, a wide string,
// a custom allocator) is refused at parse time: there is no Python form for it.
enum class Kind {
  integer,       // the built-in integer types and std::byte: a Python int
  floating,      // float, double: a Python float
  boolean,       // bool: a Python bool (a byte other than 0 or 1 does not decode)
  string,        // std::string: a Python str (UTF-8; bytes are accepted on put)
  bytes,         // std::vector of char, unsigned char or std::byte: Python bytes
  byte_array,    // std::array of char, unsigned char or std::byte: bytes of exactly its length
  vector,        // std::vector<T>: a list
  array,         // std::array<T, N>: a list of exactly N
  pair,          // std::pair<A, B>: a 2-tuple
  tuple,         // std::tuple<Ts...>: a tuple
  optional,      // std::optional<T>: None or the value
  map,           // std::map<K, V>: a dict
  unordered_map  // std::unordered_map<K, V>: a dict
};

struct CppType {
  Kind kind = Kind::integer;
  // For integer, floating and boolean: the Itanium code of the built-in type ('l' for long, 'h'
  // for unsigned char, ...), or 'B' for std::byte.
  char code = 0;
  std::size_t bytes = 0;      // integer, floating, boolean: the value's size
  bool is_signed = false;     // integer
  std::size_t length = 0;     // array, byte_array: N
  std::vector<CppType> args;  // element, key/value, members

  // How a C++ programmer writes it: std::vector<std::int64_t>, std::map<std::string, double>.
  std::string spelling() const;
  // What typeid(T).name() gives for it with GCC or Clang on Linux (the Itanium C++ ABI, with
  // libstdc++'s std::__cxx11::basic_string and default allocators, comparators and hashes).
  std::string mangled() const;
};

// Parses a spelling: the short forms (std::string, std::int64_t, int64_t, std::vector<double>,
// std::map<std::string, long>, std::array<int, 3>) and the demangled names headers record, whose
// defaulted tails (allocators, comparators, hashes, char_traits) may be cut off where the header's
// 255 bytes end. Throws shmq::InvalidArgument naming what it does not understand.
CppType parse_cpp_type(std::string_view spelling);
// Parses the (demangled, possibly cut) type name a queue's header records, as above; the caller
// checks the result against the header's fingerprint by opening the queue with its mangled name.
CppType parse_header_type(std::string_view type_name);

// The fewest bytes a message of `type` takes (at least 1): for full(), and to bound hostile counts.
std::size_t min_encoded_bytes(const CppType& type);

// Appends the encoding of `value` as `type` to `out`. Throws a Python TypeError, ValueError or
// OverflowError (as pybind11::error_already_set or a pybind11 cast error) for a value that has no
// such encoding: nothing has been written to any queue then.
void encode_value(const CppType& type, PyObject* value, std::string& out);

// Decodes one whole message as `type` into a new Python object. Throws shmq::DecodeError for
// bytes that are not an encoding of `type` (truncated, left over, a bad tag, a count larger than
// the bytes, a string that is not UTF-8, a repeated map key).
PyObject* decode_value(const CppType& type, const char* data, std::size_t size);

}  // namespace shmq::python
