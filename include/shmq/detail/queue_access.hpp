// What the types built beside Queue (Connection, wait) borrow of its insides: its segment, and its
// one encoding and decoding of messages. Internal.
#pragma once

#include <cstddef>

#include "shmq/queue.hpp"

namespace shmq::detail {

struct QueueAccess {
  template <class T>
  static Segment& segment(const Queue<T>& q) noexcept {
    return q.segment();
  }
  template <class T>
  static const TypeTag& type_tag() {
    return Queue<T>::type_tag();
  }
  // Queue::encoder: (size_of(i), fill(i, dst, bytes)) for the value at(i).
  template <class T, class At>
  static auto encoder(At at) {
    return Queue<T>::encoder(at);
  }
  // Queue::decode_message: the value, or DecodeError whatever decoding threw.
  template <class T>
  static T decode(const std::byte* at, std::size_t bytes) {
    return Queue<T>::decode_message(at, bytes);
  }
};

}  // namespace shmq::detail
