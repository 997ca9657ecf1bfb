#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace re2 {
class RE2;
}

namespace helios::tokenizer {

// GPT-2's pre-tokenizer pattern (the one Hugging Face's ByteLevel pre-tokenizer applies when
// use_regex is true).
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Llama 3's (also tiktoken's cl100k) pre-tokenizer pattern.
inline constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// One Hugging Face Split pre-tokenizer with behavior "Isolated": every match becomes a piece,
// and so does every stretch of text between matches.
//
// Patterns are Oniguruma/PCRE-style as written in tokenizer.json and run on RE2, which lacks
// lookaround and whose \s is ASCII-only. What is supported:
//  - everything RE2 accepts: alternation, classes, \p{..} properties, counted repetition,
//    (?i:...) groups, non-capturing and capturing groups;
//  - \s and \S are rewritten to Unicode White_Space (what Oniguruma and the regex crate use:
//    \t-\r, U+0085 and the Z categories), inside and outside character classes (\S only outside);
//  - the lookahead idiom \s+(?!\S) as a top-level alternative ("a whitespace run not followed
//    by a non-space"): it is run as a plain \s+ and its match is fixed up afterwards exactly as
//    a backtracking engine would: a run followed by a non-space gives back its last character,
//    which is then matched again from there by the rest of the pattern (usually becoming the
//    leading space of the next word); a one-character run followed by a non-space fails that
//    alternative, and the pattern's later alternatives are tried at the same place.
// Any other lookahead or lookbehind is rejected. \d, \w and \b keep RE2's ASCII meaning.
//
// Input need not be valid UTF-8: RE2 matches no character class against an ill-formed byte,
// and such bytes end up in the between-matches pieces, so the pieces always tile the input.
class RegexSplitter {
 public:
  // Throws helios::Error(kInvalidArgument) when the pattern is unsupported or does not compile.
  explicit RegexSplitter(std::string_view pattern);
  ~RegexSplitter();
  RegexSplitter(RegexSplitter&&) noexcept;
  RegexSplitter& operator=(RegexSplitter&&) noexcept;

  // Appends the pieces of `text`, in order, to `pieces` (views into `text`, none empty).
  void split(std::string_view text, std::vector<std::string_view>* pieces) const;

 private:
  std::unique_ptr<re2::RE2> regex_;     // the pattern with the lookahead alternative as \s+
  std::unique_ptr<re2::RE2> fallback_;  // the same with that alternative unable to match
  int ws_group_ = -1;                   // capture group of that alternative, -1 when absent
};

// The pre-tokenization chain of a byte-level BPE tokenizer: an optional leading space
// (ByteLevel's add_prefix_space), then each splitter applied to every piece of the previous.
class PreTokenizer {
 public:
  PreTokenizer() = default;
  PreTokenizer(bool add_prefix_space, std::vector<RegexSplitter> splitters)
      : add_prefix_space_(add_prefix_space), splitters_(std::move(splitters)) {}

  // The pieces of `text`; they concatenate to `text`, with a space in front when
  // add_prefix_space is set and `text` does not already start with one.
  std::vector<std::string> split(std::string_view text) const;

 private:
  bool add_prefix_space_ = false;
  std::vector<RegexSplitter> splitters_;
};

}  // namespace helios::tokenizer
