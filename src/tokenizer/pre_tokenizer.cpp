#include "helios/tokenizer/pre_tokenizer.h"

#include <re2/re2.h>

#include "helios/common/error.h"
#include "helios/tokenizer/utf8.h"

namespace helios::tokenizer {
namespace {

constexpr std::string_view kLookaheadIdiom = R"(\s+(?!\S))";
constexpr std::string_view kWsGroupName = "helios_ws";
// Unicode White_Space as class members (without brackets), for splicing into classes.
constexpr std::string_view kWhiteSpaceMembers = R"(\t-\r\x{85}\p{Z})";
// A class that matches nothing: used to switch the lookahead alternative off.
constexpr std::string_view kNeverMatch = R"([^\x00-\x{10FFFF}])";

Error unsupported(std::string_view pattern, std::string_view why) {
  return Error(ErrorCode::kInvalidArgument, "unsupported pre-tokenizer regex '" +
                                                std::string(pattern) + "': " + std::string(why));
}

// Rewrites \s and \S to Unicode White_Space and rejects lookaround. Tracks whether the scan is
// inside a character class, since \s must be spliced without brackets there.
std::string rewrite_escapes(std::string_view pattern, std::string_view original) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      if (e == 's') {
        out += in_class ? std::string(kWhiteSpaceMembers)
                        : "[" + std::string(kWhiteSpaceMembers) + "]";
      } else if (e == 'S') {
        if (in_class) throw unsupported(original, "\\S inside a character class");
        out += "[^" + std::string(kWhiteSpaceMembers) + "]";
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (in_class) {
      if (c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
        // A POSIX class such as [:alpha:] inside a bracket expression: copy it whole.
        const size_t end = pattern.find(":]", i + 2);
        if (end == std::string_view::npos) throw unsupported(original, "unterminated [:class:]");
        out += pattern.substr(i, end + 2 - i);
        i = end + 1;
        continue;
      }
      if (c == ']') in_class = false;
      out += c;
      continue;
    }
    if (c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (c == '(' && pattern.substr(i).starts_with("(?")) {
      const std::string_view rest = pattern.substr(i);
      if (rest.starts_with("(?=") || rest.starts_with("(?!") || rest.starts_with("(?<=") ||
          rest.starts_with("(?<!")) {
        throw unsupported(original, "lookaround other than \\s+(?!\\S)");
      }
    }
    out += c;
  }
  return out;
}

std::unique_ptr<RE2> compile(const std::string& pattern, std::string_view original) {
  RE2::Options options;
  options.set_log_errors(false);
  auto regex = std::make_unique<RE2>(pattern, options);
  if (!regex->ok()) throw unsupported(original, regex->error());
  return regex;
}

// Unicode White_Space, the set the rewritten \s matches (\p{Z} is Zs, Zl and Zp).
bool is_white_space(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

bool all_white_space(std::string_view text) {
  for (size_t pos = 0; pos < text.size();) {
    char32_t cp = 0;
    const size_t length = decode_utf8(text, pos, &cp);
    if (length == 0 || !is_white_space(cp)) return false;
    pos += length;
  }
  return true;
}

}  // namespace

RegexSplitter::RegexSplitter(std::string_view pattern) {
  std::string with_group(pattern);
  std::string without(pattern);
  const size_t at = with_group.find(kLookaheadIdiom);
  if (at != std::string::npos) {
    const std::string group_open = "(?P<" + std::string(kWsGroupName) + ">";
    with_group.replace(at, kLookaheadIdiom.size(), group_open + R"(\s+))");
    without.replace(at, kLookaheadIdiom.size(), group_open + std::string(kNeverMatch) + ")");
    if (with_group.find(kLookaheadIdiom) != std::string::npos) {
      throw unsupported(pattern, "\\s+(?!\\S) appears more than once");
    }
  }
  regex_ = compile(rewrite_escapes(with_group, pattern), pattern);
  if (at != std::string::npos) {
    fallback_ = compile(rewrite_escapes(without, pattern), pattern);
    ws_group_ = regex_->NamedCapturingGroups().at(std::string(kWsGroupName));
  }
}

RegexSplitter::~RegexSplitter() = default;
RegexSplitter::RegexSplitter(RegexSplitter&&) noexcept = default;
RegexSplitter& RegexSplitter::operator=(RegexSplitter&&) noexcept = default;

void RegexSplitter::split(std::string_view text, std::vector<std::string_view>* pieces) const {
  const int groups = regex_->NumberOfCapturingGroups() + 1;
  std::vector<re2::StringPiece> match(groups);
  const re2::StringPiece input(text.data(), text.size());
  const auto offset = [&](const re2::StringPiece& piece) {
    return static_cast<size_t>(piece.data() - text.data());
  };
  const auto emit = [&](size_t begin, size_t end) {
    if (end > begin) pieces->push_back(text.substr(begin, end - begin));
  };
  // Each character (or ill-formed byte) is its own step when a search must move on by one.
  const auto next_char = [&](size_t pos) {
    const size_t length = utf8_sequence_length(text, pos);
    return pos + (length == 0 ? 1 : length);
  };

  size_t covered = 0;  // text[0, covered) is already in `pieces`
  size_t search = 0;   // where the next search starts (> covered after a failed attempt)
  while (search < text.size()) {
    // Asking for the overall match only lets RE2 answer with its DFA; the slower capturing
    // search is needed only for all-whitespace matches, which may be the lookahead alternative.
    if (!regex_->Match(input, search, text.size(), RE2::UNANCHORED, match.data(), 1)) break;
    const size_t begin = offset(match[0]);
    size_t end = begin + match[0].size();
    bool lookahead_alternative = false;
    if (ws_group_ >= 0 && end > begin && all_white_space(text.substr(begin, end - begin)) &&
        regex_->Match(input, begin, text.size(), RE2::ANCHOR_START, match.data(), groups)) {
      lookahead_alternative =
          match[ws_group_].data() == match[0].data() && match[ws_group_].size() == match[0].size();
    }
    if (lookahead_alternative && end < text.size()) {
      // The run is followed by a non-space (the greedy \s+ stopped there), so (?!\S) fails at
      // its end: backtracking gives the run's last character back.
      size_t last = begin;
      for (size_t p = begin; p < end; p = next_char(p)) last = p;
      if (last > begin) {
        end = last;
      } else if (fallback_->Match(input, begin, text.size(), RE2::ANCHOR_START, match.data(),
                                  groups)) {
        // A one-character run: the alternative fails outright and later ones get their turn.
        end = begin + match[0].size();
      } else {
        search = next_char(begin);  // nothing in the original pattern matches here
        continue;
      }
    }
    if (end == begin) {  // an empty match yields no piece, as in Hugging Face's Split
      search = next_char(begin);
      continue;
    }
    emit(covered, begin);
    emit(begin, end);
    covered = search = end;
  }
  emit(covered, text.size());
}

std::vector<std::string> PreTokenizer::split(std::string_view text) const {
  std::string prefixed;
  if (add_prefix_space_ && !text.empty() && text.front() != ' ') {
    prefixed.reserve(text.size() + 1);
    prefixed.push_back(' ');
    prefixed.append(text.data(), text.size());
    text = prefixed;
  }
  std::vector<std::string_view> pieces;
  if (!text.empty()) pieces.push_back(text);
  std::vector<std::string_view> next;
  for (const RegexSplitter& splitter : splitters_) {
    next.clear();
    for (const std::string_view piece : pieces) splitter.split(piece, &next);
    pieces.swap(next);
  }
  return {pieces.begin(), pieces.end()};
}

}  // namespace helios::tokenizer
