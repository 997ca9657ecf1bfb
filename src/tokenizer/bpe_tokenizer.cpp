#include "helios/tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <queue>

#include "helios/common/error.h"
#include "helios/tokenizer/byte_level.h"

namespace helios::tokenizer {
namespace {

std::string in_quotes(std::string_view s) {
  std::string out = "'";
  out.append(s.data(), s.size());
  out.push_back('\'');
  return out;
}

std::string code_point_name(char32_t cp) {
  char buffer[16];
  std::snprintf(buffer, sizeof(buffer), "U+%04X", static_cast<unsigned>(cp));
  return buffer;
}

}  // namespace

BpeTokenizer::BpeTokenizer(BpeSpec spec, const model::ModelConfig& config, std::string source)
    : source_(std::move(source)),
      pre_tokenizer_(std::move(spec.pre_tokenizer)),
      ignore_merges_(spec.ignore_merges) {
  const auto fail = [&](ErrorCode code, const std::string& message) {
    return Error(code, source_ + ": " + message);
  };

  // Vocabulary: ids must be unique and fit an int32.
  int64_t max_id = -1;
  std::unordered_map<int64_t, std::string> by_id;
  for (const auto& [token, id] : spec.vocab) {
    const std::string field = "model.vocab[" + in_quotes(token) + "]";
    if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
      throw fail(ErrorCode::kDataLoss, field + ": id " + std::to_string(id) + " is out of range");
    }
    if (const auto [it, added] = by_id.emplace(id, token); !added) {
      throw fail(ErrorCode::kDataLoss, field + ": id " + std::to_string(id) +
                                           " is already used by " + in_quotes(it->second));
    }
    vocab_.emplace(token, static_cast<int32_t>(id));
    max_id = std::max(max_id, id);
  }

  // Byte-level BPE starts every piece from one token per byte, so all 256 must exist.
  const auto& table = byte_to_unicode();
  for (int b = 0; b < 256; ++b) {
    const std::string spelling = byte_level_encode(std::string(1, static_cast<char>(b)));
    const auto it = vocab_.find(spelling);
    if (it == vocab_.end()) {
      throw fail(ErrorCode::kDataLoss, "model.vocab: no token for byte " + std::to_string(b) +
                                           " (spelled " + code_point_name(table[b]) +
                                           "), so some inputs could not be encoded");
    }
    byte_ids_[b] = it->second;
  }

  // Merges: both halves and their concatenation must be vocab tokens.
  for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
    const auto& [left, right] = spec.merges[rank];
    const std::string field = "model.merges[" + std::to_string(rank) + "]";
    const auto find = [&](const std::string& token, std::string_view role) {
      const auto it = vocab_.find(token);
      if (it == vocab_.end()) {
        throw fail(ErrorCode::kDataLoss, field + ": " + std::string(role) + " token " +
                                             in_quotes(token) + " is not in model.vocab");
      }
      return it->second;
    };
    const int32_t left_id = find(left, "left");
    const int32_t right_id = find(right, "right");
    const int32_t merged_id = find(left + right, "merged");
    // A repeated merge keeps its first (highest priority) rank, as Hugging Face does.
    merges_.emplace(pair_key(left_id, right_id), Merge{static_cast<int32_t>(rank), merged_id});
  }

  // Added tokens.
  for (size_t i = 0; i < spec.added_tokens.size(); ++i) {
    const AddedToken& token = spec.added_tokens[i];
    const std::string field = "added_tokens[" + std::to_string(i) + "]";
    if (token.content.empty()) throw fail(ErrorCode::kDataLoss, field + ".content is empty");
    if (token.id < 0) {
      throw fail(ErrorCode::kDataLoss, field + ".id " + std::to_string(token.id) + " is negative");
    }
    if (!added_by_content_.emplace(token.content, token.id).second) {
      throw fail(ErrorCode::kDataLoss,
                 field + ".content " + in_quotes(token.content) + " is listed twice");
    }
    max_id = std::max<int64_t>(max_id, token.id);
  }
  added_ = std::move(spec.added_tokens);
  std::stable_sort(added_.begin(), added_.end(), [](const AddedToken& a, const AddedToken& b) {
    return a.content.size() > b.content.size();
  });
  for (size_t i = 0; i < added_.size(); ++i) {
    added_by_first_byte_[static_cast<uint8_t>(added_[i].content[0])].push_back(
        static_cast<int32_t>(i));
  }

  // Sizes and specials against the model config.
  vocab_size_ = config.vocab_size > 0 ? config.vocab_size : max_id + 1;
  if (max_id >= vocab_size_) {
    throw fail(ErrorCode::kInvalidArgument, "token id " + std::to_string(max_id) +
                                                " does not fit the model's vocab_size " +
                                                std::to_string(vocab_size_) + " (config.json)");
  }
  const auto special = [&](std::string_view field, int64_t id) {
    if (id < 0 || id >= vocab_size_) {
      throw fail(ErrorCode::kInvalidArgument,
                 "config " + std::string(field) + " " + std::to_string(id) +
                     " is outside [0, vocab_size " + std::to_string(vocab_size_) + ")");
    }
    return static_cast<int32_t>(id);
  };
  bos_id_ = special("bos_token_id", config.bos_token_id);
  eos_id_ = special("eos_token_id", config.eos_token_id);

  id_bytes_.resize(static_cast<size_t>(max_id + 1));
  for (const auto& [token, id] : vocab_) id_bytes_[id] = byte_level_decode(token);
  for (const AddedToken& token : added_) id_bytes_[token.id] = token.special ? "" : token.content;
}

std::optional<int32_t> BpeTokenizer::token_id(std::string_view token) const {
  const std::string key(token);
  if (const auto it = added_by_content_.find(key); it != added_by_content_.end()) {
    return it->second;
  }
  if (const auto it = vocab_.find(key); it != vocab_.end()) return it->second;
  return std::nullopt;
}

const AddedToken* BpeTokenizer::match_added(std::string_view text, size_t pos) const {
  for (const int32_t index : added_by_first_byte_[static_cast<uint8_t>(text[pos])]) {
    const AddedToken& token = added_[index];
    if (text.substr(pos).starts_with(token.content)) return &token;
  }
  return nullptr;
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3);
  if (added_.empty()) {
    encode_segment(text, &ids);
    return ids;
  }
  // Leftmost-longest matching of the added tokens; the text between them is encoded normally.
  size_t segment = 0;
  for (size_t pos = 0; pos < text.size();) {
    if (const AddedToken* token = match_added(text, pos)) {
      encode_segment(text.substr(segment, pos - segment), &ids);
      ids.push_back(token->id);
      pos += token->content.size();
      segment = pos;
    } else {
      ++pos;
    }
  }
  encode_segment(text.substr(segment), &ids);
  return ids;
}

void BpeTokenizer::encode_segment(std::string_view text, std::vector<int32_t>* ids) const {
  if (text.empty()) return;
  for (const std::string& piece : pre_tokenizer_.split(text)) encode_piece(piece, ids);
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<int32_t>* ids) const {
  if (piece.size() == 1) {
    ids->push_back(byte_ids_[static_cast<uint8_t>(piece[0])]);
    return;
  }
  if (ignore_merges_) {
    if (const auto it = vocab_.find(byte_level_encode(piece)); it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }

  // Symbols form a doubly linked list over the piece; a merge folds the right symbol into the
  // left one. Candidate merges wait in a heap ordered by (rank, position) and are checked for
  // staleness when popped: a symbol's id only ever changes to a longer token, so a candidate
  // whose two ids still match is still valid.
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
  };
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t left_id;
    int32_t right_id;
    bool operator>(const Candidate& other) const {
      return rank != other.rank ? rank > other.rank : pos > other.pos;
    }
  };
  const auto n = static_cast<int32_t>(piece.size());
  std::vector<Symbol> symbols(n);
  for (int32_t i = 0; i < n; ++i) {
    symbols[i] = {byte_ids_[static_cast<uint8_t>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1};
  }
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  const auto consider = [&](int32_t left) {
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    const auto it = merges_.find(pair_key(symbols[left].id, symbols[right].id));
    if (it != merges_.end()) {
      heap.push({it->second.rank, left, symbols[left].id, symbols[right].id});
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);

  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    Symbol& left = symbols[top.pos];
    if (left.id != top.left_id || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    if (right.id != top.right_id) continue;
    left.id = merges_.at(pair_key(top.left_id, top.right_id)).merged_id;
    right.id = -1;  // dead: no candidate can name it again
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) ids->push_back(symbols[i].id);
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids) const {
  std::string text;
  for (const int32_t id : ids) {
    if (id < 0 || id >= vocab_size_) {
      throw Error(ErrorCode::kOutOfRange, source_ + ": token id " + std::to_string(id) +
                                              " is outside [0, " + std::to_string(vocab_size_) +
                                              ")");
    }
    if (static_cast<size_t>(id) < id_bytes_.size()) text += id_bytes_[id];
  }
  return text;
}

}  // namespace helios::tokenizer
