// libFuzzer target: every built-in codec, and the Pool's task and result messages, decoding
// arbitrary bytes; and a queue handle's message got from a real queue, where whatever decoding
// throws (NotFound, InvalidArgument, Incompatible for the name the bytes hold) must come out as
// DecodeError. DecodeError is the only acceptable failure; ASan and UBSan watch the reads.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "shmq/pool.hpp"
#include "shmq/shmq.hpp"

namespace {

// What decodes must encode back to as many bytes, and to the same bytes where the encoding is
// canonical (a map re-encodes in its own key order, so not for maps).
template <class T, bool kCanonical = true>
void try_decode(const std::byte* data, std::size_t size) {
  try {
    const T value = shmq::detail::decode_exactly<T>(data, size);
    const std::string again = shmq::detail::encode_to_string(value);
    if (again.size() != size) __builtin_trap();
    if (kCanonical && std::memcmp(again.data(), data, size) != 0) __builtin_trap();
  } catch (const shmq::DecodeError&) {
  }
}

// The bytes as a message of a Queue<Queue<int>>, got back: a handle, or DecodeError (and the
// message dropped, so the queue is empty again); anything else escapes and fails the run.
void try_get_handle(const std::byte* data, std::size_t size) {
  static shmq::Queue<shmq::Queue<int>> handles;  // unnamed: its name goes at exit
  if (size > handles.max_message_bytes()) return;
  handles.put_with(size, [&](std::byte* at, std::size_t) {
    if (size != 0) std::memcpy(at, data, size);
  });
  try {
    handles.get_nowait();
  } catch (const shmq::DecodeError&) {
  }
  if (!handles.empty()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* bytes, std::size_t size) {
  if (size == 0) return 0;
  // The first byte picks the type, the rest is the message.
  const auto* data = reinterpret_cast<const std::byte*>(bytes + 1);
  const std::size_t n = size - 1;
  switch (bytes[0] % 9) {
    case 0: try_decode<std::string>(data, n); break;
    case 1: try_decode<std::vector<std::string>>(data, n); break;
    case 2: try_decode<std::map<int, std::vector<std::optional<std::string>>>, false>(data, n); break;
    case 3: try_decode<std::tuple<std::int64_t, std::string, std::array<std::uint16_t, 3>>>(data, n); break;
    case 4: try_decode<std::unordered_map<std::string, std::pair<double, std::vector<char>>>, false>(data, n); break;
    case 5: try_decode<std::optional<std::vector<std::vector<std::int32_t>>>>(data, n); break;
    case 6: try_decode<shmq::detail::TaskMessage>(data, n); break;
    case 7: try_decode<shmq::detail::ResultMessage>(data, n); break;
    case 8: try_get_handle(data, n); break;
  }
  return 0;
}
