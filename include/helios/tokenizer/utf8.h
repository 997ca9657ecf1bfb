#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace helios::tokenizer {

// Appends the UTF-8 encoding of `cp` (which must be a Unicode scalar value) to `out`.
void append_utf8(std::string* out, char32_t cp);

// Length of the well-formed UTF-8 sequence starting at text[pos] (1-4), or 0 when the bytes
// there do not form one (a stray continuation byte, an overlong form, a surrogate, a truncated
// sequence). "Well-formed" follows Unicode table 3-7, so 0xC0, 0xC1 and 0xF5-0xFF never start
// a sequence.
size_t utf8_sequence_length(std::string_view text, size_t pos);

// Decodes the well-formed sequence at text[pos]; returns its length (0 when ill-formed, in
// which case *cp is left unchanged).
size_t decode_utf8(std::string_view text, size_t pos, char32_t* cp);

// Number of trailing bytes of `text` that are a proper prefix of a well-formed sequence, i.e.
// bytes that may still become a character when more bytes arrive (0-3).
size_t incomplete_utf8_tail(std::string_view text);

// `text` with every byte that is not part of a well-formed sequence replaced by U+FFFD, so it
// can go where valid UTF-8 is required (protobuf string fields).
std::string replace_invalid_utf8(std::string_view text);

}  // namespace helios::tokenizer
