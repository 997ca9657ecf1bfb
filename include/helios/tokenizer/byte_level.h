#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace helios::tokenizer {

// GPT-2's byte-to-unicode table, which byte-level BPE vocabularies are written in: the printable
// bytes '!'..'~', 0xA1..0xAC and 0xAE..0xFF stand for themselves, and the remaining 68 bytes
// (controls, space, 0x7F-0xA0, 0xAD) map in increasing order to U+0100, U+0101, ... so that
// every token string is printable (a space is 'Ġ' U+0120, a newline 'Ċ' U+010A).
const std::array<char32_t, 256>& byte_to_unicode();

// The byte a code point of that table stands for, or nullopt when it is not in the table.
std::optional<uint8_t> unicode_to_byte(char32_t cp);

// Maps raw bytes to their byte-level token spelling (UTF-8 encoded).
std::string byte_level_encode(std::string_view bytes);

// Inverse of byte_level_encode. Characters outside the table (which a hand-edited vocabulary
// may contain) and ill-formed UTF-8 are copied through unchanged, so no input is rejected.
std::string byte_level_decode(std::string_view token);

}  // namespace helios::tokenizer
