#include "object_codec.hpp"

#include <cstdint>
#include <cstring>
#include <string>

#include "shmq/errors.hpp"

namespace py = pybind11;

namespace shmq::python {
namespace {

constexpr char kPickle = '\x80';

// pickle's functions, looked up once. Never destroyed: a py::object released after the
// interpreter has finalized (by a static destructor at exit) aborts the process.
struct Pickle {
  py::object module = py::module_::import("pickle");
  py::object dumps = module.attr("dumps");
  py::object loads = module.attr("loads");
  py::object protocol = module.attr("HIGHEST_PROTOCOL");
};
const Pickle& pickle() {
  static const Pickle* const once = new Pickle();
  return *once;
}

std::string tagged(char tag, const void* data, std::size_t size) {
  std::string out(1 + size, tag);
  if (size != 0) std::memcpy(out.data() + 1, data, size);
  return out;
}

py::object steal(PyObject* o) {
  if (o == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(o);
}

DecodeError wrong_length(const char* what, std::size_t size, std::size_t payload) {
  return DecodeError("shmq: a tagged " + std::string(what) + " of " + std::to_string(size) +
                     " bytes (it takes " + std::to_string(1 + payload) + ")");
}

}  // namespace

Encoded encode_object(PyObject* obj) {
  if (obj == Py_None) return Encoded(std::string(1, 'n'));
  if (obj == Py_True) return Encoded(std::string(1, 'T'));
  if (obj == Py_False) return Encoded(std::string(1, 'F'));
  if (PyLong_CheckExact(obj)) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow == 0 && !(v == -1 && PyErr_Occurred())) {
      const std::int64_t i = v;
      return Encoded(tagged('i', &i, sizeof i));
    }
    PyErr_Clear();  // a big int: pickled below
  } else if (PyFloat_CheckExact(obj)) {
    const double d = PyFloat_AS_DOUBLE(obj);
    return Encoded(tagged('f', &d, sizeof d));
  } else if (PyUnicode_CheckExact(obj)) {
    Py_ssize_t n = 0;
    const char* utf8 = PyUnicode_AsUTF8AndSize(obj, &n);  // cached in the str: borrowed
    if (utf8 != nullptr) {
      return Encoded(std::string(1, 's'), py::reinterpret_borrow<py::object>(obj), utf8,
                     static_cast<std::size_t>(n));
    }
    PyErr_Clear();  // lone surrogates: pickle keeps them
  } else if (PyBytes_CheckExact(obj)) {
    return Encoded(std::string(1, 'b'), py::reinterpret_borrow<py::object>(obj),
                   PyBytes_AS_STRING(obj), static_cast<std::size_t>(PyBytes_GET_SIZE(obj)));
  }
  py::object pickled = pickle().dumps(py::handle(obj), pickle().protocol);
  if (!PyBytes_Check(pickled.ptr()))
    throw py::type_error("shmq: pickle.dumps did not return bytes");
  const char* data = PyBytes_AS_STRING(pickled.ptr());
  const auto size = static_cast<std::size_t>(PyBytes_GET_SIZE(pickled.ptr()));
  return Encoded(std::string(), std::move(pickled), data, size);
}

py::object decode_object(const char* data, std::size_t size) {
  PyObject* untracked = nullptr;
  if (decode_untracked(data, size, &untracked)) return steal(untracked);
  if (size == 0)
    throw DecodeError("shmq: an empty message (a Python object takes at least 1 byte)");
  switch (data[0]) {
    case kPickle:
      return pickle().loads(py::memoryview::from_memory(data, static_cast<py::ssize_t>(size)));
    case 's': {
      PyObject* s = PyUnicode_DecodeUTF8(data + 1, static_cast<Py_ssize_t>(size - 1), "strict");
      if (s == nullptr) {
        PyErr_Clear();
        throw DecodeError("shmq: a tagged str is not UTF-8");
      }
      return steal(s);
    }
    // The forms decode_untracked makes, when it refused them: malformed.
    case 'i':
      throw wrong_length("int", size, sizeof(std::int64_t));
    case 'f':
      throw wrong_length("float", size, sizeof(double));
    case 'n':
    case 'T':
    case 'F':
      throw DecodeError("shmq: a tagged None, True or False with bytes after it");
    default:
      throw DecodeError("shmq: a message starting with byte " +
                        std::to_string(static_cast<unsigned char>(data[0])) +
                        ", which is no Python object's tag");
  }
}

bool decode_untracked(const char* data, std::size_t size, PyObject** out) {
  if (size == 0) return false;
  const auto exactly = [&](std::size_t payload) { return size == 1 + payload; };
  switch (data[0]) {
    case 'b':
      *out = PyBytes_FromStringAndSize(data + 1, static_cast<Py_ssize_t>(size - 1));
      return true;
    case 'i': {
      if (!exactly(sizeof(std::int64_t))) return false;
      std::int64_t v;
      std::memcpy(&v, data + 1, sizeof v);
      *out = PyLong_FromLongLong(v);
      return true;
    }
    case 'f': {
      if (!exactly(sizeof(double))) return false;
      double v;
      std::memcpy(&v, data + 1, sizeof v);
      *out = PyFloat_FromDouble(v);
      return true;
    }
    case 'n':
    case 'T':
    case 'F':
      if (!exactly(0)) return false;
      *out = data[0] == 'n' ? Py_None : data[0] == 'T' ? Py_True : Py_False;
      Py_INCREF(*out);
      return true;
    default:
      return false;
  }
}

}  // namespace shmq::python
