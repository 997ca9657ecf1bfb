#include "helios/tokenizer/bpe_trainer.h"

#include <algorithm>
#include <fstream>
#include <limits>
#include <map>
#include <queue>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "helios/common/error.h"
#include "helios/tokenizer/byte_level.h"
#include "helios/tokenizer/pre_tokenizer.h"

namespace helios::tokenizer {
namespace {

using Pair = std::pair<int32_t, int32_t>;

uint64_t key(Pair p) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(p.first)) << 32) |
         static_cast<uint32_t>(p.second);
}
Pair unkey(uint64_t k) {
  return {static_cast<int32_t>(k >> 32), static_cast<int32_t>(k & 0xFFFFFFFFu)};
}

// A distinct pre-tokenized piece of the corpus, as current symbols, with its occurrence count.
struct Word {
  std::vector<int32_t> symbols;
  int64_t count;
};

// Adjacent-pair statistics over all words, kept up to date incrementally: a merge only
// rewrites the words that contain its pair, found through `where`.
class PairStats {
 public:
  void add_word(const Word& word, int32_t index, int64_t sign) {
    for (size_t i = 0; i + 1 < word.symbols.size(); ++i) {
      const uint64_t k = key({word.symbols[i], word.symbols[i + 1]});
      counts_[k] += sign * word.count;
      changed_.insert(k);
      if (sign > 0) where_[k].push_back(index);
    }
  }
  // Queues the current count of every pair touched since the last call.
  void publish() {
    for (const uint64_t k : changed_) {
      const int64_t count = counts_[k];
      if (count > 0) heap_.push({count, unkey(k)});
    }
    changed_.clear();
  }
  // The most frequent pair (smallest ids on ties), skipping queue entries that are out of date.
  bool best(Pair* pair, int64_t* count) {
    while (!heap_.empty()) {
      const auto [c, p] = heap_.top();
      heap_.pop();
      if (counts_[key(p)] == c) {
        *pair = p;
        *count = c;
        return true;
      }
    }
    return false;
  }
  std::vector<int32_t> take_words(Pair p) {
    std::vector<int32_t> words = std::move(where_[key(p)]);
    where_.erase(key(p));
    std::sort(words.begin(), words.end());
    words.erase(std::unique(words.begin(), words.end()), words.end());
    return words;
  }

 private:
  struct Entry {
    int64_t count;
    Pair pair;
    bool operator<(const Entry& o) const {  // max-heap: higher count, then smaller pair
      return count != o.count ? count < o.count : pair > o.pair;
    }
  };
  std::unordered_map<uint64_t, int64_t> counts_;
  std::unordered_map<uint64_t, std::vector<int32_t>> where_;
  std::unordered_set<uint64_t> changed_;
  std::priority_queue<Entry> heap_;
};

void merge_in_place(std::vector<int32_t>* symbols, Pair pair, int32_t merged) {
  size_t out = 0;
  for (size_t i = 0; i < symbols->size(); ++i) {
    if (i + 1 < symbols->size() && (*symbols)[i] == pair.first &&
        (*symbols)[i + 1] == pair.second) {
      (*symbols)[out++] = merged;
      ++i;
    } else {
      (*symbols)[out++] = (*symbols)[i];
    }
  }
  symbols->resize(out);
}

nlohmann::ordered_json byte_level_step(bool add_prefix_space, bool trim_offsets) {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", add_prefix_space},
          {"trim_offsets", trim_offsets},
          {"use_regex", true}};
}

}  // namespace

nlohmann::ordered_json train_bpe(std::string_view corpus, const BpeTrainerOptions& options) {
  const auto n_special = static_cast<int64_t>(options.special_tokens.size());
  if (options.vocab_size < 256 + n_special) {
    throw Error(ErrorCode::kInvalidArgument,
                "train_bpe: vocab_size " + std::to_string(options.vocab_size) +
                    " is below 256 bytes + " + std::to_string(n_special) + " special tokens");
  }
  if (options.vocab_size > std::numeric_limits<int32_t>::max()) {
    throw Error(ErrorCode::kInvalidArgument, "train_bpe: vocab_size is too large");
  }
  std::vector<std::string> tokens;  // id -> byte-level spelling
  std::unordered_map<std::string, int32_t> ids;
  for (const std::string& special : options.special_tokens) {
    if (special.empty() || !ids.emplace(special, static_cast<int32_t>(tokens.size())).second) {
      throw Error(ErrorCode::kInvalidArgument,
                  "train_bpe: special_tokens has an empty or repeated entry '" + special + "'");
    }
    tokens.push_back(special);
  }
  for (int b = 0; b < 256; ++b) {
    const std::string spelling = byte_level_encode(std::string(1, static_cast<char>(b)));
    ids.emplace(spelling, static_cast<int32_t>(tokens.size()));
    tokens.push_back(spelling);
  }

  // Distinct pieces in sorted order, so that word indices (and thus training) are deterministic.
  const PreTokenizer pre_tokenizer(false, [] {
    std::vector<RegexSplitter> splitters;
    splitters.emplace_back(kGpt2Pattern);
    return splitters;
  }());
  std::map<std::string, int64_t> piece_counts;
  for (std::string& piece : pre_tokenizer.split(corpus)) ++piece_counts[std::move(piece)];
  std::vector<Word> words;
  words.reserve(piece_counts.size());
  for (const auto& [piece, count] : piece_counts) {
    Word word{{}, count};
    for (const char c : piece) {
      word.symbols.push_back(static_cast<int32_t>(n_special + static_cast<uint8_t>(c)));
    }
    words.push_back(std::move(word));
  }

  PairStats stats;
  for (size_t i = 0; i < words.size(); ++i) stats.add_word(words[i], static_cast<int32_t>(i), 1);
  stats.publish();

  std::vector<Pair> merges;
  Pair pair;
  int64_t count = 0;
  while (static_cast<int64_t>(tokens.size()) < options.vocab_size && stats.best(&pair, &count) &&
         count >= options.min_frequency) {
    // Two merges can spell the same token ("a"+"bc", "ab"+"c"); they share its id. A merge
    // spelling a special token is skipped: ordinary text must never produce a special id.
    const std::string spelling = tokens[pair.first] + tokens[pair.second];
    if (const auto found = ids.find(spelling); found != ids.end() && found->second < n_special) {
      continue;
    }
    const auto [it, is_new] = ids.emplace(spelling, static_cast<int32_t>(tokens.size()));
    if (is_new) tokens.push_back(spelling);
    merges.push_back(pair);
    for (const int32_t w : stats.take_words(pair)) {
      stats.add_word(words[w], w, -1);
      merge_in_place(&words[w].symbols, pair, it->second);
      stats.add_word(words[w], w, 1);
    }
    stats.publish();
  }

  nlohmann::ordered_json added = nlohmann::ordered_json::array();
  for (int64_t i = 0; i < n_special; ++i) {
    added.push_back({{"id", i},
                     {"content", tokens[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (size_t id = 0; id < tokens.size(); ++id) vocab[tokens[id]] = id;
  nlohmann::ordered_json merge_list = nlohmann::ordered_json::array();
  for (const Pair& p : merges) merge_list.push_back(tokens[p.first] + " " + tokens[p.second]);

  nlohmann::ordered_json model = {{"type", "BPE"},
                                  {"dropout", nullptr},
                                  {"unk_token", nullptr},
                                  {"continuing_subword_prefix", nullptr},
                                  {"end_of_word_suffix", nullptr},
                                  {"fuse_unk", false},
                                  {"byte_fallback", false},
                                  {"ignore_merges", false}};
  model["vocab"] = std::move(vocab);
  model["merges"] = std::move(merge_list);
  nlohmann::ordered_json document = {
      {"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}};
  document["added_tokens"] = std::move(added);
  document["normalizer"] = nullptr;
  document["pre_tokenizer"] = byte_level_step(false, true);
  document["post_processor"] = byte_level_step(true, false);
  document["decoder"] = byte_level_step(true, true);
  document["model"] = std::move(model);
  return document;
}

void write_tokenizer_json(const nlohmann::ordered_json& document,
                          const std::filesystem::path& path) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << document.dump(2, ' ', false) << '\n';
  out.flush();
  if (!out) {
    throw Error(ErrorCode::kInvalidArgument, path.string() + ": cannot write tokenizer.json");
  }
}

}  // namespace helios::tokenizer
