// The messages of a queue of Python objects (C++ type name shmq::python::PythonObject): the
// commonest small objects in a form of their own, everything else as a pickle. Internal.
//
// Wire format: the first byte says what follows.
//   0x80  a pickle (every pickle of protocol 2 or later starts with the PROTO opcode, 0x80);
//         the whole message, first byte included, is what pickle.loads reads
//   'i'   an int (exactly int, not a subclass) in [-2^63, 2^63): 8 bytes, little-endian
//   'f'   a float (exactly): 8 bytes, the double
//   's'   a str (exactly): its UTF-8 bytes, the rest of the message
//   'b'   a bytes (exactly): the rest of the message
//   'n'   None;  'T' True;  'F' False  (no more bytes)
// Everything else, including subclasses of these types, is pickled with the highest protocol, so
// get() returns an equal object of the same type either way.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <string>

namespace shmq::python {

// One encoded message: bytes of its own (the tagged forms), or a pickle kept alive as the bytes
// object pickle.dumps returned, so it is copied once, into the ring. data() stays valid while the
// Encoded lives; a moved Encoded must be asked again.
class Encoded {
 public:
  Encoded() = default;
  explicit Encoded(std::string own) : own_(std::move(own)) {}
  explicit Encoded(pybind11::bytes pickle) : pickle_(std::move(pickle)) {}

  const char* data() const { return pickle_ ? PyBytes_AS_STRING(pickle_.ptr()) : own_.data(); }
  std::size_t size() const {
    return pickle_ ? static_cast<std::size_t>(PyBytes_GET_SIZE(pickle_.ptr())) : own_.size();
  }
  std::string& own() { return own_; }

 private:
  std::string own_;
  pybind11::bytes pickle_{pybind11::reinterpret_steal<pybind11::bytes>(nullptr)};
};

// Encodes any picklable object; raises what pickle.dumps raises.
Encoded encode_object(PyObject* obj);
// Decodes a message; raises what pickle.loads raises, or DecodeError for an unknown tag or a
// tagged form of the wrong length.
pybind11::object decode_object(const char* data, std::size_t size);

}  // namespace shmq::python
