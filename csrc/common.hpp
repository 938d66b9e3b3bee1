// Shared vocabulary of the kernels: argument errors and a non-owning view of an array.
// Kernels know arrays, not Python: bindings translate InvalidArgument to ValueError.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace orbitfl {

// A bad value or shape reaching a kernel. Bindings map it to Python's ValueError.
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Raised when an input contains NaN or Inf where the kernel cannot give them a meaning.
class NonFinite : public InvalidArgument {
 public:
  using InvalidArgument::InvalidArgument;
};

inline void require(bool ok, const std::string& message) {
  if (!ok) throw InvalidArgument(message);
}

// For a literal message: the std::string overload would build its message on every call, which
// cost ~15 ns per index in the index-coding loops that check each one.
inline void require(bool ok, const char* message) {
  if (!ok) throw InvalidArgument(message);
}

}  // namespace orbitfl
