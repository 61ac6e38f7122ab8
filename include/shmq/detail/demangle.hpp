// Readable type names, for error messages and the type recorded in a queue's header. Internal.
#pragma once

#include <string>

namespace shmq::detail {

// The demangled form of a mangled name (from typeid(T).name()), or the name as given if it does
// not demangle.
std::string demangle(const char* mangled_name);

// The type name of the exception being handled (inside a catch block), demangled; "unknown" when
// there is none.
std::string current_exception_type_name();

}  // namespace shmq::detail
