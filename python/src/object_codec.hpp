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
#include <cstring>
#include <string>
#include <utility>

namespace shmq::python {

// One encoded message, ready to be copied into the ring once: bytes of its own (the small tagged
// forms, a C++ type's encoding), or a tag followed by the bytes of a Python object that it keeps
// alive (a str's UTF-8, a bytes object, a pickle), so that large ones are not copied twice.
class Encoded {
 public:
  Encoded() = default;
  explicit Encoded(std::string own) : own_(std::move(own)) {}
  // `prefix`, then `size` bytes at `data`, which `keeper` owns.
  Encoded(std::string prefix, pybind11::object keeper, const char* data, std::size_t size)
      : own_(std::move(prefix)),
        keeper_(std::move(keeper)),
        borrowed_(data),
        borrowed_size_(size) {}

  std::size_t size() const { return own_.size() + borrowed_size_; }
  // Writes the size() bytes; needs no GIL (it touches no reference count).
  void write_to(std::byte* dst) const {
    if (!own_.empty()) std::memcpy(dst, own_.data(), own_.size());
    if (borrowed_size_ != 0) std::memcpy(dst + own_.size(), borrowed_, borrowed_size_);
  }
  std::string& own() { return own_; }

 private:
  std::string own_;          // the message, or its first bytes when borrowed_ follows
  pybind11::object keeper_;  // keeps borrowed_ alive; null when nothing is borrowed
  const char* borrowed_ = nullptr;
  std::size_t borrowed_size_ = 0;
};

// Encodes any picklable object; raises what pickle.dumps raises.
Encoded encode_object(PyObject* obj);
// Decodes a message; raises what pickle.loads raises, or DecodeError for an unknown tag or a
// tagged form of the wrong length.
pybind11::object decode_object(const char* data, std::size_t size);

// Decodes a message while it is still in the ring, under the consumers' lock held through
// list_op_pending alone (Tracking::pending), where no Python code may run and no other robust lock
// may be taken: a garbage collection could run a finalizer that calls get on this queue on this
// thread. So only the forms whose objects the collector does not track and whose construction
// runs no Python code are made here: a well-formed bytes, int, float, None, True or False.
// Returns false, having done nothing, for any other message (a pickle, a str, a malformed tagged
// form): the caller copies it out and calls decode_object once the lock is released. Else sets
// *out to the new object, or to null with a Python error set (MemoryError) if it could not be
// allocated: the caller then leaves the message queued. The caller keeps the collector disabled
// meanwhile (NoCollection): raising MemoryError may allocate an exception object, which it tracks.
bool decode_untracked(const char* data, std::size_t size, PyObject** out);

}  // namespace shmq::python
