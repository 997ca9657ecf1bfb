#include "helios/tokenizer/byte_level.h"

#include "helios/tokenizer/utf8.h"

namespace helios::tokenizer {
namespace {

bool is_self_mapped(int b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

std::array<char32_t, 256> make_table() {
  std::array<char32_t, 256> table{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) table[b] = is_self_mapped(b) ? static_cast<char32_t>(b) : next++;
  return table;
}

// Every table value is below U+0144, so the inverse is a small dense array.
constexpr char32_t kInverseSize = 0x144;

std::array<int16_t, kInverseSize> make_inverse() {
  std::array<int16_t, kInverseSize> inverse{};
  inverse.fill(-1);
  const auto& table = byte_to_unicode();
  for (int b = 0; b < 256; ++b) inverse[table[b]] = static_cast<int16_t>(b);
  return inverse;
}

}  // namespace

const std::array<char32_t, 256>& byte_to_unicode() {
  static const std::array<char32_t, 256> table = make_table();
  return table;
}

std::optional<uint8_t> unicode_to_byte(char32_t cp) {
  static const std::array<int16_t, kInverseSize> inverse = make_inverse();
  if (cp >= kInverseSize || inverse[cp] < 0) return std::nullopt;
  return static_cast<uint8_t>(inverse[cp]);
}

std::string byte_level_encode(std::string_view bytes) {
  const auto& table = byte_to_unicode();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) append_utf8(&out, table[static_cast<uint8_t>(c)]);
  return out;
}

std::string byte_level_decode(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  size_t pos = 0;
  while (pos < token.size()) {
    char32_t cp = 0;
    const size_t length = decode_utf8(token, pos, &cp);
    if (length == 0) {
      out.push_back(token[pos++]);
      continue;
    }
    if (const auto byte = unicode_to_byte(cp)) {
      out.push_back(static_cast<char>(*byte));
    } else {
      out.append(token.substr(pos, length));
    }
    pos += length;
  }
  return out;
}

}  // namespace helios::tokenizer
