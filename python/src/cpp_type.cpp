#include "cpp_type.hpp"

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstring>
#include <limits>
#include <utility>

#include "shmq/errors.hpp"

namespace py = pybind11;

namespace shmq::python {
namespace {

// ---------------------------------------------------------------------------------------------
// Parsing

// The built-in types a name can spell, by their words in a canonical order ("int" dropped where
// another word is present, as C++ allows), with their Itanium code, size and signedness.
struct Builtin {
  const char* words;
  char code;
  std::size_t bytes;
  bool is_signed;
  Kind kind;
};
constexpr Builtin kBuiltins[] = {
    {"bool", 'b', 1, false, Kind::boolean},
    {"char", 'c', 1, CHAR_MIN < 0, Kind::integer},
    {"signed char", 'a', 1, true, Kind::integer},
    {"unsigned char", 'h', 1, false, Kind::integer},
    {"short", 's', 2, true, Kind::integer},
    {"signed short", 's', 2, true, Kind::integer},
    {"unsigned short", 't', 2, false, Kind::integer},
    {"int", 'i', 4, true, Kind::integer},
    {"signed", 'i', 4, true, Kind::integer},
    {"unsigned", 'j', 4, false, Kind::integer},
    {"long", 'l', 8, true, Kind::integer},
    {"signed long", 'l', 8, true, Kind::integer},
    {"unsigned long", 'm', 8, false, Kind::integer},
    {"long long", 'x', 8, true, Kind::integer},
    {"signed long long", 'x', 8, true, Kind::integer},
    {"unsigned long long", 'y', 8, false, Kind::integer},
    {"float", 'f', 4, true, Kind::floating},
    {"double", 'd', 8, true, Kind::floating},
};

// <cstdint>'s names and std::byte, as the built-in types they are on 64-bit Linux.
constexpr std::pair<const char*, const char*> kAliases[] = {
    {"int8_t", "signed char"},   {"uint8_t", "unsigned char"},
    {"int16_t", "short"},        {"uint16_t", "unsigned short"},
    {"int32_t", "int"},          {"uint32_t", "unsigned"},
    {"int64_t", "long"},         {"uint64_t", "unsigned long"},
    {"size_t", "unsigned long"}, {"ptrdiff_t", "long"},
    {"intptr_t", "long"},        {"uintptr_t", "unsigned long"},
};

bool is_builtin_word(std::string_view w) {
  return w == "bool" || w == "char" || w == "signed" || w == "unsigned" || w == "short" ||
         w == "int" || w == "long" || w == "float" || w == "double";
}

CppType builtin_type(std::string_view words) {
  for (const Builtin& b : kBuiltins) {
    if (words == b.words) {
      CppType t;
      t.kind = b.kind;
      t.code = b.code;
      t.bytes = b.bytes;
      t.is_signed = b.is_signed;
      return t;
    }
  }
  throw InvalidArgument("shmq: '" + std::string(words) + "' is not a C++ type the module knows");
}

CppType byte_type() {
  CppType t;
  t.kind = Kind::integer;
  t.code = 'B';
  t.bytes = 1;
  return t;
}

bool is_byte_like(const CppType& t) {
  return t.kind == Kind::integer && (t.code == 'c' || t.code == 'h' || t.code == 'B');
}

constexpr int kMaxNesting = 16;

class Parser {
 public:
  Parser(std::string_view text, bool header_name) : text_(text), header_name_(header_name) {}

  CppType parse_all() {
    CppType t = type(0);
    skip_space();
    if (!cut_ && pos_ != text_.size()) fail("unexpected '" + std::string(text_.substr(pos_)) + "'");
    return t;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw InvalidArgument("shmq: cannot read the C++ type '" + std::string(text_) + "': " + why);
  }

  void skip_space() {
    while (pos_ < text_.size() && text_[pos_] == ' ') ++pos_;
  }
  bool at_end() {
    skip_space();
    return pos_ == text_.size();
  }
  // The next identifier or number, or "" if the next character is punctuation.
  std::string_view word() {
    skip_space();
    const std::size_t start = pos_;
    while (pos_ < text_.size() &&
           (std::isalnum(static_cast<unsigned char>(text_[pos_])) != 0 || text_[pos_] == '_')) {
      ++pos_;
    }
    return text_.substr(start, pos_ - start);
  }
  bool accept(std::string_view punct) {
    skip_space();
    if (text_.substr(pos_, punct.size()) != punct) return false;
    pos_ += punct.size();
    return true;
  }
  // A header's name may stop anywhere in a defaulted tail; a spelling given by a user may not.
  void expect(std::string_view punct) {
    if (accept(punct)) return;
    if (header_name_ && at_end()) {
      cut_ = true;
      return;
    }
    fail("expected '" + std::string(punct) + "' at offset " + std::to_string(pos_));
  }
  void require_more() {
    if (cut_) fail("the name is cut off before its arguments end; pass type=... to open it");
  }

  // Skips defaulted template arguments (allocators, comparators, hashes, char_traits) up to and
  // including the '>' that closes the current argument list, or to the end of a cut header name.
  // The mangled name built from what was parsed is checked against the header's fingerprint, so
  // nothing skipped here can make a wrong type look right.
  void skip_tail() {
    int depth = 0;
    while (true) {
      if (at_end()) {
        if (!header_name_) fail("unbalanced '<'");
        cut_ = true;
        return;
      }
      const char c = text_[pos_++];
      if (c == '<') ++depth;
      if (c == '>' && depth-- == 0) return;
    }
  }
  void close_args() {
    if (cut_) return;
    if (accept(">")) return;
    if (accept(",")) return skip_tail();
    expect(">");
  }

  CppType type(int depth) {
    if (depth > kMaxNesting) fail("nested more than " + std::to_string(kMaxNesting) + " deep");
    require_more();
    skip_space();
    const std::size_t start = pos_;
    std::string_view first = word();
    if (first.empty()) fail("expected a type at offset " + std::to_string(start));
    if (is_builtin_word(first)) {
      std::vector<std::string_view> words{first};
      while (true) {
        const std::size_t here = pos_;
        const std::string_view next = word();
        if (next.empty() || !is_builtin_word(next)) {
          pos_ = here;
          break;
        }
        words.push_back(next);
      }
      std::string canonical;
      for (std::string_view w : words) {
        if (w == "int" && words.size() > 1) continue;
        if (!canonical.empty()) canonical += ' ';
        canonical += w;
      }
      return builtin_type(canonical);
    }
    // A qualified name: [::]std[::__cxx11]::name, or a <cstdint> name alone.
    pos_ = start;
    accept("::");
    std::vector<std::string_view> parts{word()};
    while (accept("::")) parts.push_back(word());
    std::string_view name = parts.back();
    const bool in_std = parts.size() >= 2 && parts[0] == "std" &&
                        (parts.size() == 2 || (parts.size() == 3 && parts[1] == "__cxx11"));
    if (!in_std && parts.size() != 1)
      fail("unknown name '" + std::string(text_.substr(start, pos_ - start)) + "'");
    for (const auto& [alias, builtin] : kAliases) {
      if (name == alias) return builtin_type(builtin);
    }
    if (!in_std) fail("unknown type '" + std::string(name) + "' (the module reads std:: types)");
    return std_type(name, depth);
  }

  CppType std_type(std::string_view name, int depth) {
    CppType t;
    if (name == "byte") return byte_type();
    if (name == "string") {
      t.kind = Kind::string;
      return t;
    }
    expect("<");
    if (name == "basic_string") {
      const CppType ch = type(depth + 1);
      if (ch.kind != Kind::integer || ch.code != 'c') fail("only basic_string<char> is read");
      close_args();
      t.kind = Kind::string;
      return t;
    }
    if (name == "vector" || name == "optional") {
      t.args.push_back(type(depth + 1));
      close_args();
      if (name == "optional") {
        t.kind = Kind::optional;
      } else {
        t.kind = is_byte_like(t.args[0]) ? Kind::bytes : Kind::vector;
      }
      return t;
    }
    if (name == "array") {
      t.args.push_back(type(depth + 1));
      expect(",");
      require_more();
      std::string_view n = word();
      // Demangled lengths carry a suffix: 4ul.
      while (!n.empty() &&
             (n.back() == 'u' || n.back() == 'l' || n.back() == 'U' || n.back() == 'L')) {
        n.remove_suffix(1);
      }
      if (n.empty() || n.size() > 9 || !std::all_of(n.begin(), n.end(), [](char c) {
            return std::isdigit(static_cast<unsigned char>(c)) != 0;
          })) {
        fail("std::array needs a length below 10^9");
      }
      t.length = std::stoul(std::string(n));
      expect(">");
      t.kind = is_byte_like(t.args[0]) ? Kind::byte_array : Kind::array;
      return t;
    }
    if (name == "map" || name == "unordered_map" || name == "pair") {
      t.args.push_back(type(depth + 1));
      expect(",");
      t.args.push_back(type(depth + 1));
      if (name == "pair") {
        expect(">");
        t.kind = Kind::pair;
      } else {
        close_args();
        t.kind = name == "map" ? Kind::map : Kind::unordered_map;
      }
      return t;
    }
    if (name == "tuple") {
      t.kind = Kind::tuple;
      if (accept(">")) return t;
      do {
        t.args.push_back(type(depth + 1));
      } while (!cut_ && accept(","));
      expect(">");
      return t;
    }
    fail("std::" + std::string(name) + " has no Python form");
  }

  std::string_view text_;
  bool header_name_;
  std::size_t pos_ = 0;
  bool cut_ = false;  // a header name ended inside a defaulted tail
};

// ---------------------------------------------------------------------------------------------
// Mangling (the Itanium C++ ABI, as far as these types need it)

// A type as the mangler sees it: a built-in code, a literal template argument, `T const`,
// std::__cxx11::basic_string<char>, or std::name<args...> (a pack when `pack`).
struct Mangled {
  enum Form { builtin, literal, constant, string, std_template } form;
  std::string text;  // builtin: its code; literal: "Lm4E"; std_template: the name in std
  std::vector<Mangled> args;
  bool pack = false;

  // A unique key per type, for the substitution table.
  std::string key() const {
    switch (form) {
      case builtin:
      case literal:
        return text;
      case constant:
        return args[0].key() + " const";
      case string:
        return "std::string";
      case std_template:
        break;
    }
    std::string k = "std::" + text;
    if (form == std_template && (!args.empty() || pack)) {
      k += '<';
      for (const Mangled& a : args) k += a.key() + ',';
      k += pack ? "...>" : ">";
    }
    return k;
  }
};

Mangled std_class(std::string name, std::vector<Mangled> args, bool pack = false) {
  return Mangled{Mangled::std_template, std::move(name), std::move(args), pack};
}
Mangled mangled_builtin(char code) {
  return Mangled{Mangled::builtin, std::string(1, code), {}};
}

Mangled to_mangled(const CppType& t) {
  auto arg = [&](std::size_t i) { return to_mangled(t.args[i]); };
  auto allocator_of = [](Mangled m) { return std_class("allocator", {std::move(m)}); };
  auto map_like = [&](bool ordered) {
    Mangled key = arg(0), value = arg(1);
    Mangled entry = std_class("pair", {Mangled{Mangled::constant, "", {key}}, value});
    std::vector<Mangled> args{key, value};
    if (ordered) {
      args.push_back(std_class("less", {key}));
    } else {
      args.push_back(std_class("hash", {key}));
      args.push_back(std_class("equal_to", {key}));
    }
    args.push_back(allocator_of(entry));
    return std_class(ordered ? "map" : "unordered_map", std::move(args));
  };
  switch (t.kind) {
    case Kind::integer:
    case Kind::floating:
    case Kind::boolean:
      return t.code == 'B' ? std_class("byte", {}) : mangled_builtin(t.code);
    case Kind::string:
      return Mangled{Mangled::string, "", {}};
    case Kind::bytes:
    case Kind::vector:
      return std_class("vector", {arg(0), allocator_of(arg(0))});
    case Kind::byte_array:
    case Kind::array:
      return std_class(
          "array", {arg(0), Mangled{Mangled::literal, "Lm" + std::to_string(t.length) + "E", {}}});
    case Kind::pair:
      return std_class("pair", {arg(0), arg(1)});
    case Kind::tuple: {
      std::vector<Mangled> members;
      for (std::size_t i = 0; i < t.args.size(); ++i) members.push_back(arg(i));
      return std_class("tuple", std::move(members), true);
    }
    case Kind::optional:
      return std_class("optional", {arg(0)});
    case Kind::map:
      return map_like(true);
    case Kind::unordered_map:
      return map_like(false);
  }
  return {};
}

// Writes a name with the ABI's substitutions: each class, template name, namespace prefix and
// qualified type is numbered as it is first written, and written again as S<n>_.
class Mangler {
 public:
  std::string run(const Mangled& m) {
    type(m);
    return out_;
  }

 private:
  bool substitute(const std::string& key) {
    const auto it = std::find(seen_.begin(), seen_.end(), key);
    if (it == seen_.end()) return false;
    const auto n = static_cast<std::size_t>(it - seen_.begin());
    out_ += 'S';
    if (n > 0) out_ += base36(n - 1);
    out_ += '_';
    return true;
  }
  static std::string base36(std::size_t n) {
    std::string digits;
    do {
      const auto d = static_cast<char>(n % 36);
      digits.insert(digits.begin(),
                    d < 10 ? static_cast<char>('0' + d) : static_cast<char>('A' + d - 10));
      n /= 36;
    } while (n != 0);
    return digits;
  }
  void source_name(const std::string& name) { out_ += std::to_string(name.size()) + name; }

  void args(const Mangled& m) {
    out_ += 'I';
    if (m.pack) out_ += 'J';
    for (const Mangled& a : m.args) type(a);
    if (m.pack) out_ += 'E';
    out_ += 'E';
  }

  void type(const Mangled& m) {
    switch (m.form) {
      case Mangled::builtin:
      case Mangled::literal:
        out_ += m.text;
        return;
      case Mangled::constant:
        if (substitute(m.key())) return;
        out_ += 'K';
        type(m.args[0]);
        seen_.push_back(m.key());
        return;
      case Mangled::string:
        if (substitute(m.key())) return;
        out_ += 'N';
        if (!substitute("std::__cxx11")) {
          out_ += "St";
          source_name("__cxx11");
          seen_.push_back("std::__cxx11");
        }
        if (!substitute("std::__cxx11::basic_string")) {
          source_name("basic_string");
          seen_.push_back("std::__cxx11::basic_string");
        }
        args(Mangled{Mangled::std_template,
                     "",
                     {mangled_builtin('c'), std_class("char_traits", {mangled_builtin('c')}),
                      std_class("allocator", {mangled_builtin('c')})}});
        out_ += 'E';
        seen_.push_back(m.key());
        return;
      case Mangled::std_template:
        break;
    }
    const std::string key = m.key();
    if (substitute(key)) return;
    if (m.args.empty() && !m.pack) {  // a plain class in std: std::byte
      out_ += "St";
      source_name(m.text);
    } else {
      if (m.text == "allocator") {
        out_ += "Sa";  // a standard abbreviation: never numbered itself
      } else if (!substitute("std::" + m.text)) {
        out_ += "St";
        source_name(m.text);
        seen_.push_back("std::" + m.text);
      }
      args(m);
    }
    seen_.push_back(key);
  }

  std::string out_;
  std::vector<std::string> seen_;
};

// ---------------------------------------------------------------------------------------------
// Encoding

[[noreturn]] void throw_python() {
  throw py::error_already_set();
}

[[noreturn]] void type_error(const CppType& type, PyObject* value, const char* expected) {
  PyErr_Format(PyExc_TypeError, "shmq: %s needs %s, not %s", type.spelling().c_str(), expected,
               Py_TYPE(value)->tp_name);
  throw_python();
}

void append(std::string& out, const void* data, std::size_t n) {
  out.append(static_cast<const char*>(data), n);
}

void append_length(std::string& out, std::size_t n) {
  if (n > UINT32_MAX) {
    throw MessageTooLarge("shmq::codec: a length of " + std::to_string(n) +
                          " exceeds the 4 GiB a message can carry");
  }
  const auto len = static_cast<std::uint32_t>(n);
  append(out, &len, sizeof len);
}

void encode_integer(const CppType& type, PyObject* value, std::string& out) {
  if (PyFloat_Check(value)) type_error(type, value, "an int");
  py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(value));
  if (!index) throw_python();
  const unsigned bits = static_cast<unsigned>(type.bytes * 8);
  if (type.is_signed) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
    if (v == -1 && PyErr_Occurred()) throw_python();
    const long long lo = bits == 64 ? LLONG_MIN : -(1LL << (bits - 1));
    const long long hi = bits == 64 ? LLONG_MAX : (1LL << (bits - 1)) - 1;
    if (overflow != 0 || v < lo || v > hi) {
      PyErr_Format(PyExc_OverflowError, "shmq: %R does not fit %s", value, type.spelling().c_str());
      throw_python();
    }
    append(out, &v, type.bytes);  // little-endian: the low bytes come first
  } else {
    if (Py_SIZE(index.ptr()) < 0) {
      PyErr_Format(PyExc_OverflowError, "shmq: %R does not fit %s", value, type.spelling().c_str());
      throw_python();
    }
    const unsigned long long v = PyLong_AsUnsignedLongLong(index.ptr());
    if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
      PyErr_Clear();
      PyErr_Format(PyExc_OverflowError, "shmq: %R does not fit %s", value, type.spelling().c_str());
      throw_python();
    }
    if (bits < 64 && v >> bits != 0) {
      PyErr_Format(PyExc_OverflowError, "shmq: %R does not fit %s", value, type.spelling().c_str());
      throw_python();
    }
    append(out, &v, type.bytes);
  }
}

// Bytes-like objects (bytes, bytearray, memoryview, ...), by the buffer protocol.
class Buffer {
 public:
  explicit Buffer(PyObject* value) {
    if (PyObject_GetBuffer(value, &view_, PyBUF_SIMPLE) != 0) throw_python();
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { PyBuffer_Release(&view_); }
  const void* data() const { return view_.buf; }
  std::size_t size() const { return static_cast<std::size_t>(view_.len); }

 private:
  Py_buffer view_;
};

// The items of a list, tuple or other sequence, refusing str, bytes and dicts, whose items are
// not what a C++ container of them would hold.
py::object sequence_items(const CppType& type, PyObject* value) {
  if (PyUnicode_Check(value) || PyBytes_Check(value) || PyByteArray_Check(value) ||
      PyDict_Check(value)) {
    type_error(type, value, "a sequence (list or tuple)");
  }
  py::object items = py::reinterpret_steal<py::object>(
      PySequence_Fast(value, "shmq: a C++ sequence needs a Python sequence"));
  if (!items) throw_python();
  return items;
}

void check_length(const CppType& type, std::size_t n) {
  if (n != type.length) {
    PyErr_Format(PyExc_ValueError, "shmq: %s needs exactly %zu items, not %zu",
                 type.spelling().c_str(), type.length, n);
    throw_python();
  }
}

void encode_into(const CppType& type, PyObject* value, std::string& out, int depth);

void encode_members(const CppType& type, PyObject* value, std::string& out, int depth) {
  py::object items = sequence_items(type, value);
  const auto n = static_cast<std::size_t>(PySequence_Fast_GET_SIZE(items.ptr()));
  PyObject** item = PySequence_Fast_ITEMS(items.ptr());
  switch (type.kind) {
    case Kind::vector:
      append_length(out, n);
      for (std::size_t i = 0; i < n; ++i) encode_into(type.args[0], item[i], out, depth + 1);
      return;
    case Kind::array:
      check_length(type, n);
      for (std::size_t i = 0; i < n; ++i) encode_into(type.args[0], item[i], out, depth + 1);
      return;
    default:  // pair, tuple
      if (n != type.args.size()) {
        PyErr_Format(PyExc_ValueError, "shmq: %s needs a sequence of %zu items, not %zu",
                     type.spelling().c_str(), type.args.size(), n);
        throw_python();
      }
      for (std::size_t i = 0; i < n; ++i) encode_into(type.args[i], item[i], out, depth + 1);
      return;
  }
}

void encode_into(const CppType& type, PyObject* value, std::string& out, int depth) {
  if (Py_EnterRecursiveCall(" while encoding a shmq message") != 0) throw_python();
  struct Leave {
    ~Leave() { Py_LeaveRecursiveCall(); }
  } leave;
  switch (type.kind) {
    case Kind::integer:
      return encode_integer(type, value, out);
    case Kind::floating: {
      if (!PyFloat_Check(value) && !PyLong_Check(value)) type_error(type, value, "a float");
      const double v = PyFloat_AsDouble(value);
      if (v == -1.0 && PyErr_Occurred()) throw_python();
      if (type.bytes == 4) {
        const auto f = static_cast<float>(v);
        return append(out, &f, 4);
      }
      return append(out, &v, 8);
    }
    case Kind::boolean: {
      if (!PyBool_Check(value)) type_error(type, value, "a bool");
      const char b = value == Py_True ? 1 : 0;
      return append(out, &b, 1);
    }
    case Kind::string: {
      if (PyUnicode_Check(value)) {
        Py_ssize_t n = 0;
        const char* utf8 = PyUnicode_AsUTF8AndSize(value, &n);
        if (utf8 == nullptr) throw_python();
        append_length(out, static_cast<std::size_t>(n));
        return append(out, utf8, static_cast<std::size_t>(n));
      }
      if (!PyObject_CheckBuffer(value)) type_error(type, value, "a str (or bytes)");
      const Buffer buffer(value);
      append_length(out, buffer.size());
      return append(out, buffer.data(), buffer.size());
    }
    case Kind::bytes:
    case Kind::byte_array: {
      if (!PyObject_CheckBuffer(value) || PyUnicode_Check(value)) {
        type_error(type, value, "bytes (or another bytes-like object)");
      }
      const Buffer buffer(value);
      if (type.kind == Kind::bytes) {
        append_length(out, buffer.size());
      } else {
        check_length(type, buffer.size());
      }
      return append(out, buffer.data(), buffer.size());
    }
    case Kind::vector:
    case Kind::array:
    case Kind::pair:
    case Kind::tuple:
      return encode_members(type, value, out, depth);
    case Kind::optional: {
      const char tag = value == Py_None ? 0 : 1;
      append(out, &tag, 1);
      if (value != Py_None) encode_into(type.args[0], value, out, depth + 1);
      return;
    }
    case Kind::map:
    case Kind::unordered_map: {
      // A list is a mapping to the C API (it has __getitem__); a mapping has items().
      if (!PyDict_Check(value) && PyObject_HasAttrString(value, "items") == 0) {
        type_error(type, value, "a dict");
      }
      py::object items = py::reinterpret_steal<py::object>(PyMapping_Items(value));
      if (!items) throw_python();
      const auto n = static_cast<std::size_t>(PyList_GET_SIZE(items.ptr()));
      append_length(out, n);
      for (std::size_t i = 0; i < n; ++i) {
        PyObject* entry = PyList_GET_ITEM(items.ptr(), static_cast<Py_ssize_t>(i));
        encode_into(type.args[0], PyTuple_GET_ITEM(entry, 0), out, depth + 1);
        encode_into(type.args[1], PyTuple_GET_ITEM(entry, 1), out, depth + 1);
      }
      return;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Decoding

// The fewest bytes an encoding of `type` takes, so that a hostile count is refused before it
// drives a long loop or a large allocation (as detail::decode_count does in C++). At least 1.
}  // namespace

std::size_t min_encoded_bytes(const CppType& type) {
  std::size_t n = 0;
  switch (type.kind) {
    case Kind::integer:
    case Kind::floating:
    case Kind::boolean:
      n = type.bytes;
      break;
    case Kind::string:
    case Kind::bytes:
    case Kind::vector:
    case Kind::map:
    case Kind::unordered_map:
      n = sizeof(std::uint32_t);
      break;
    case Kind::byte_array:
      n = type.length;
      break;
    case Kind::array:
      n = type.length * min_encoded_bytes(type.args[0]);
      break;
    case Kind::pair:
    case Kind::tuple:
      for (const CppType& a : type.args) n += min_encoded_bytes(a);
      break;
    case Kind::optional:
      n = 1;
      break;
  }
  return std::max<std::size_t>(n, 1);
}

namespace {

class Decoder {
 public:
  Decoder(const char* data, std::size_t size) : cur_(data), left_(size) {}

  std::size_t left() const { return left_; }

  // `as_key`: a list inside a dict key becomes a tuple, which Python can hash.
  py::object value(const CppType& type, bool as_key) {
    switch (type.kind) {
      case Kind::integer:
        return integer(type);
      case Kind::floating: {
        if (type.bytes == 4) {
          float f;
          read(&f, 4);
          return steal(PyFloat_FromDouble(static_cast<double>(f)));
        }
        double d;
        read(&d, 8);
        return steal(PyFloat_FromDouble(d));
      }
      case Kind::boolean: {
        unsigned char b;
        read(&b, 1);
        if (b > 1)
          throw DecodeError("shmq::codec: a bool byte of " + std::to_string(b) + " is not 0 or 1");
        return py::reinterpret_borrow<py::object>(b != 0 ? Py_True : Py_False);
      }
      case Kind::string: {
        const std::size_t n = count(1);
        const char* at = take(n);
        PyObject* s = PyUnicode_DecodeUTF8(at, static_cast<Py_ssize_t>(n), "strict");
        if (s == nullptr) {
          PyErr_Clear();
          throw DecodeError("shmq::codec: a std::string of " + std::to_string(n) +
                            " bytes is not UTF-8 (a str needs it)");
        }
        return steal(s);
      }
      case Kind::bytes: {
        const std::size_t n = count(1);
        return steal(PyBytes_FromStringAndSize(take(n), static_cast<Py_ssize_t>(n)));
      }
      case Kind::byte_array:
        return steal(
            PyBytes_FromStringAndSize(take(type.length), static_cast<Py_ssize_t>(type.length)));
      case Kind::vector:
      case Kind::array: {
        const std::size_t n =
            type.kind == Kind::vector ? count(min_encoded_bytes(type.args[0])) : type.length;
        if (type.kind == Kind::array && n > left_ / min_encoded_bytes(type.args[0])) {
          throw DecodeError("shmq::codec: message truncated inside a " + type.spelling());
        }
        const auto size = static_cast<Py_ssize_t>(n);
        py::object seq = steal(as_key ? PyTuple_New(size) : PyList_New(size));
        for (Py_ssize_t i = 0; i < size; ++i) {
          PyObject* item = value(type.args[0], as_key).release().ptr();
          if (as_key) {
            PyTuple_SET_ITEM(seq.ptr(), i, item);
          } else {
            PyList_SET_ITEM(seq.ptr(), i, item);
          }
        }
        return seq;
      }
      case Kind::pair:
      case Kind::tuple: {
        const auto size = static_cast<Py_ssize_t>(type.args.size());
        py::object seq = steal(PyTuple_New(size));
        for (Py_ssize_t i = 0; i < size; ++i) {
          PyTuple_SET_ITEM(seq.ptr(), i,
                           value(type.args[static_cast<std::size_t>(i)], as_key).release().ptr());
        }
        return seq;
      }
      case Kind::optional: {
        unsigned char tag;
        read(&tag, 1);
        if (tag > 1) {
          throw DecodeError("shmq::codec: optional tag " + std::to_string(tag) + " is not 0 or 1");
        }
        if (tag == 0) return py::none();
        return value(type.args[0], as_key);
      }
      case Kind::map:
      case Kind::unordered_map: {
        const std::size_t n =
            count(min_encoded_bytes(type.args[0]) + min_encoded_bytes(type.args[1]));
        py::object dict = steal(PyDict_New());
        for (std::size_t i = 0; i < n; ++i) {
          py::object k = value(type.args[0], true);
          py::object v = value(type.args[1], false);
          const int had = PyDict_Contains(dict.ptr(), k.ptr());
          if (had < 0) throw_python();
          if (had == 1) throw DecodeError("shmq::codec: a map holds the same key twice");
          if (PyDict_SetItem(dict.ptr(), k.ptr(), v.ptr()) != 0) throw_python();
        }
        return dict;
      }
    }
    return py::none();
  }

 private:
  static py::object steal(PyObject* o) {
    if (o == nullptr) throw_python();
    return py::reinterpret_steal<py::object>(o);
  }
  const char* take(std::size_t n) {
    if (n > left_) {
      throw DecodeError("shmq::codec: message truncated: needs " + std::to_string(n) +
                        " more bytes, has " + std::to_string(left_));
    }
    const char* at = cur_;
    cur_ += n;
    left_ -= n;
    return at;
  }
  void read(void* dst, std::size_t n) { std::memcpy(dst, take(n), n); }
  std::size_t count(std::size_t min_element_bytes) {
    std::uint32_t n;
    read(&n, sizeof n);
    if (n > left_ / min_element_bytes) {
      throw DecodeError("shmq::codec: a count of " + std::to_string(n) +
                        " elements cannot fit in the " + std::to_string(left_) +
                        " bytes that remain");
    }
    return n;
  }
  py::object integer(const CppType& type) {
    if (type.is_signed) {
      long long v = 0;
      read(&v, type.bytes);
      const unsigned shift = static_cast<unsigned>(64 - type.bytes * 8);
      v = static_cast<long long>(static_cast<unsigned long long>(v) << shift) >>
          shift;  // sign-extend
      return steal(PyLong_FromLongLong(v));
    }
    unsigned long long v = 0;
    read(&v, type.bytes);
    return steal(PyLong_FromUnsignedLongLong(v));
  }

  const char* cur_;
  std::size_t left_;
};

}  // namespace

std::string CppType::spelling() const {
  auto list = [this](std::size_t from) {
    std::string s;
    for (std::size_t i = from; i < args.size(); ++i)
      s += (i > from ? ", " : "") + args[i].spelling();
    return s;
  };
  switch (kind) {
    case Kind::integer:
    case Kind::floating:
    case Kind::boolean:
      switch (code) {
        case 'a':
          return "std::int8_t";
        case 'h':
          return "std::uint8_t";
        case 's':
          return "std::int16_t";
        case 't':
          return "std::uint16_t";
        case 'i':
          return "std::int32_t";
        case 'j':
          return "std::uint32_t";
        case 'l':
          return "std::int64_t";
        case 'm':
          return "std::uint64_t";
        case 'x':
          return "long long";
        case 'y':
          return "unsigned long long";
        case 'c':
          return "char";
        case 'b':
          return "bool";
        case 'f':
          return "float";
        case 'd':
          return "double";
        case 'B':
          return "std::byte";
        default:
          return "?";
      }
    case Kind::string:
      return "std::string";
    case Kind::bytes:
    case Kind::vector:
      return "std::vector<" + list(0) + ">";
    case Kind::byte_array:
    case Kind::array:
      return "std::array<" + list(0) + ", " + std::to_string(length) + ">";
    case Kind::pair:
      return "std::pair<" + list(0) + ">";
    case Kind::tuple:
      return "std::tuple<" + list(0) + ">";
    case Kind::optional:
      return "std::optional<" + list(0) + ">";
    case Kind::map:
      return "std::map<" + list(0) + ">";
    case Kind::unordered_map:
      return "std::unordered_map<" + list(0) + ">";
  }
  return "?";
}

std::string CppType::mangled() const {
  return Mangler().run(to_mangled(*this));
}

CppType parse_cpp_type(std::string_view spelling) {
  return Parser(spelling, false).parse_all();
}

CppType parse_header_type(std::string_view type_name) {
  return Parser(type_name, true).parse_all();
}

void encode_value(const CppType& type, PyObject* value, std::string& out) {
  encode_into(type, value, out, 0);
}

PyObject* decode_value(const CppType& type, const char* data, std::size_t size) {
  Decoder in(data, size);
  py::object v = in.value(type, false);
  if (in.left() != 0) {
    throw DecodeError("shmq::codec: " + std::to_string(in.left()) +
                      " bytes left over after decoding");
  }
  return v.release().ptr();
}

}  // namespace shmq::python
