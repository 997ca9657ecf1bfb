#include "helios/tokenizer/utf8.h"

#include <cstdint>

namespace helios::tokenizer {
namespace {

bool is_continuation(uint8_t b) {
  return (b & 0xC0) == 0x80;
}

// Total sequence length announced by a lead byte, or 0 when it cannot start a sequence.
size_t lead_length(uint8_t b) {
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return 2;
  if (b >= 0xE0 && b <= 0xEF) return 3;
  if (b >= 0xF0 && b <= 0xF4) return 4;
  return 0;
}

// The second byte of a sequence has a narrower range for some lead bytes; this is what rules
// out overlong forms, surrogates and code points above U+10FFFF.
bool valid_second(uint8_t lead, uint8_t b) {
  switch (lead) {
    case 0xE0: return b >= 0xA0 && b <= 0xBF;
    case 0xED: return b >= 0x80 && b <= 0x9F;
    case 0xF0: return b >= 0x90 && b <= 0xBF;
    case 0xF4: return b >= 0x80 && b <= 0x8F;
    default: return is_continuation(b);
  }
}

}  // namespace

void append_utf8(std::string* out, char32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

size_t utf8_sequence_length(std::string_view text, size_t pos) {
  if (pos >= text.size()) return 0;
  const auto lead = static_cast<uint8_t>(text[pos]);
  const size_t length = lead_length(lead);
  if (length <= 1) return length;
  if (pos + length > text.size()) return 0;
  if (!valid_second(lead, static_cast<uint8_t>(text[pos + 1]))) return 0;
  for (size_t i = 2; i < length; ++i) {
    if (!is_continuation(static_cast<uint8_t>(text[pos + i]))) return 0;
  }
  return length;
}

size_t decode_utf8(std::string_view text, size_t pos, char32_t* cp) {
  const size_t length = utf8_sequence_length(text, pos);
  if (length == 0) return 0;
  const auto lead = static_cast<uint8_t>(text[pos]);
  char32_t value = length == 1 ? lead : lead & (0x7F >> length);
  for (size_t i = 1; i < length; ++i) {
    value = (value << 6) | (static_cast<uint8_t>(text[pos + i]) & 0x3F);
  }
  *cp = value;
  return length;
}

size_t incomplete_utf8_tail(std::string_view text) {
  // Walk back over at most three bytes to the lead byte of the last sequence, then check that
  // everything after it is a valid (but too short) continuation.
  const size_t n = text.size();
  for (size_t k = 1; k <= 3 && k <= n; ++k) {
    const auto b = static_cast<uint8_t>(text[n - k]);
    if (is_continuation(b)) continue;
    const size_t length = lead_length(b);
    if (length <= k) return 0;  // ASCII, an invalid lead, or a sequence that is complete
    if (k >= 2 && !valid_second(b, static_cast<uint8_t>(text[n - k + 1]))) return 0;
    return k;
  }
  return 0;
}

}  // namespace helios::tokenizer

namespace helios::tokenizer {

std::string replace_invalid_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const size_t length = utf8_sequence_length(text, pos);
    if (length == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD REPLACEMENT CHARACTER, one per ill-formed byte
      ++pos;
    } else {
      out.append(text.substr(pos, length));
      pos += length;
    }
  }
  return out;
}

}  // namespace helios::tokenizer
