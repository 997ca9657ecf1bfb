// Reading Hugging Face tokenizer.json files, and load_tokenizer.
//
// Supported (byte-level BPE as GPT-2, Llama 3, Qwen 2 and models trained with train_bpe use):
//  - model: type "BPE" (or no type), vocab {token: id}, merges as "a b" strings or [a, b]
//    pairs, ignore_merges. dropout is ignored (inference never drops merges) and unk_token is
//    never needed (every byte has a token). continuing_subword_prefix / end_of_word_suffix are
//    rejected.
//  - added_tokens: id, content, special; matched verbatim (leftmost, longest first) before
//    pre-tokenization. lstrip / rstrip / single_word / normalized are ignored.
//  - pre_tokenizer: ByteLevel {add_prefix_space, use_regex}, or a Sequence of Split
//    {pattern: {Regex | String}, behavior: "Isolated", invert: false} steps followed by one
//    ByteLevel (see RegexSplitter for the regex dialect).
//  - normalizer: none, or NFC, which is skipped with a warning (exact for NFC input).
//  - decoder: none or ByteLevel. post_processor is ignored: encode() adds no BOS/EOS.
#include <re2/re2.h>
#include <spdlog/spdlog.h>

#include <limits>

#include "helios/tokenizer/tokenizer_json.h"
#include "helios/common/error.h"
#include "helios/common/json_limits.h"
#include "helios/tokenizer/bpe_tokenizer.h"
#include "helios/tokenizer/byte_tokenizer.h"

namespace helios::tokenizer {
namespace {

using nlohmann::json;

// Error helpers: every message is "<source>: <field> <problem>".
class Fields {
 public:
  explicit Fields(const std::string& source) : source_(source) {}
  const std::string& source() const { return source_; }

  Error malformed(const std::string& field, const std::string& problem) const {
    return Error(ErrorCode::kDataLoss, source_ + ": " + field + " " + problem);
  }
  Error unsupported(const std::string& field, const std::string& problem) const {
    return Error(ErrorCode::kInvalidArgument, source_ + ": " + field + " " + problem);
  }

  // The member `key` of `object`, or nullptr when it is absent or null.
  static const json* find(const json& object, const char* key) {
    const auto it = object.find(key);
    return it == object.end() || it->is_null() ? nullptr : &*it;
  }
  const json& require(const json& object, const char* key, const std::string& field) const {
    const json* value = find(object, key);
    if (value == nullptr) throw malformed(field, "is missing");
    return *value;
  }
  std::string string(const json& value, const std::string& field) const {
    if (!value.is_string()) throw malformed(field, "is not a string");
    return value.get<std::string>();
  }
  bool boolean(const json& object, const char* key, bool fallback, const std::string& field) const {
    const json* value = find(object, key);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) throw malformed(field, "is not a boolean");
    return value->get<bool>();
  }
  int64_t integer(const json& value, const std::string& field) const {
    if (!value.is_number_integer()) throw malformed(field, "is not an integer");
    // get<int64_t>() would wrap an unsigned value past INT64_MAX into a negative one.
    if (value.is_number_unsigned() &&
        value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      throw malformed(field, std::to_string(value.get<uint64_t>()) + " is out of range");
    }
    return value.get<int64_t>();
  }
  void expect_object(const json& value, const std::string& field) const {
    if (!value.is_object()) throw malformed(field, "is not an object");
  }
  void expect_array(const json& value, const std::string& field) const {
    if (!value.is_array()) throw malformed(field, "is not an array");
  }

 private:
  const std::string& source_;
};

RegexSplitter parse_split(const json& step, const std::string& field, const Fields& f) {
  const json& pattern = f.require(step, "pattern", field + ".pattern");
  f.expect_object(pattern, field + ".pattern");
  std::string regex;
  std::string pattern_field;
  if (const json* value = Fields::find(pattern, "Regex")) {
    pattern_field = field + ".pattern.Regex";
    regex = f.string(*value, pattern_field);
  } else if (const json* literal = Fields::find(pattern, "String")) {
    pattern_field = field + ".pattern.String";
    regex = RE2::QuoteMeta(f.string(*literal, pattern_field));
  } else {
    throw f.malformed(field + ".pattern", "has neither Regex nor String");
  }
  const std::string behavior =
      f.string(f.require(step, "behavior", field + ".behavior"), field + ".behavior");
  if (behavior != "Isolated") {
    throw f.unsupported(field + ".behavior", "'" + behavior + "' is not supported (only Isolated)");
  }
  if (f.boolean(step, "invert", false, field + ".invert")) {
    throw f.unsupported(field + ".invert", "true is not supported");
  }
  try {
    return RegexSplitter(regex);
  } catch (const Error& e) {
    throw f.unsupported(pattern_field, e.what());
  }
}

PreTokenizer parse_pre_tokenizer(const json& root, const Fields& f) {
  const json* node = Fields::find(root, "pre_tokenizer");
  if (node == nullptr) {
    throw f.unsupported("pre_tokenizer", "is missing: only byte-level BPE is supported");
  }
  f.expect_object(*node, "pre_tokenizer");
  std::vector<std::pair<const json*, std::string>> steps;
  if (f.string(f.require(*node, "type", "pre_tokenizer.type"), "pre_tokenizer.type") ==
      "Sequence") {
    const json& list = f.require(*node, "pretokenizers", "pre_tokenizer.pretokenizers");
    f.expect_array(list, "pre_tokenizer.pretokenizers");
    for (size_t i = 0; i < list.size(); ++i) {
      steps.emplace_back(&list[i], "pre_tokenizer.pretokenizers[" + std::to_string(i) + "]");
    }
  } else {
    steps.emplace_back(node, "pre_tokenizer");
  }

  std::vector<RegexSplitter> splitters;
  bool byte_level = false;
  bool add_prefix_space = false;
  for (const auto& [step, field] : steps) {
    f.expect_object(*step, field);
    const std::string type = f.string(f.require(*step, "type", field + ".type"), field + ".type");
    if (byte_level) {
      throw f.unsupported(field, "follows the ByteLevel step; only Split steps may precede it");
    }
    if (type == "Split") {
      splitters.push_back(parse_split(*step, field, f));
    } else if (type == "ByteLevel") {
      byte_level = true;
      add_prefix_space = f.boolean(*step, "add_prefix_space", false, field + ".add_prefix_space");
      // After a Split, Hugging Face would add the prefix space to every piece; nobody does that.
      if (add_prefix_space && !splitters.empty()) {
        throw f.unsupported(field + ".add_prefix_space", "true after a Split is not supported");
      }
      if (f.boolean(*step, "use_regex", true, field + ".use_regex")) {
        splitters.emplace_back(kGpt2Pattern);
      }
    } else {
      throw f.unsupported(field + ".type", "'" + type + "' is not supported (Split, ByteLevel)");
    }
  }
  if (!byte_level) {
    throw f.unsupported("pre_tokenizer", "has no ByteLevel step: only byte-level BPE is supported");
  }
  return PreTokenizer(add_prefix_space, std::move(splitters));
}

void check_normalizer_and_decoder(const json& root, const Fields& f) {
  if (const json* normalizer = Fields::find(root, "normalizer")) {
    f.expect_object(*normalizer, "normalizer");
    const std::string type =
        f.string(f.require(*normalizer, "type", "normalizer.type"), "normalizer.type");
    if (type != "NFC") {
      throw f.unsupported("normalizer.type", "'" + type + "' is not supported (none or NFC)");
    }
    // NFC changes nothing in text that is already NFC, which is nearly all text in practice.
    spdlog::warn("{}: normalizer NFC is not applied (exact for text that is already NFC)",
                 f.source());
  }
  if (const json* decoder = Fields::find(root, "decoder")) {
    f.expect_object(*decoder, "decoder");
    const std::string type = f.string(f.require(*decoder, "type", "decoder.type"), "decoder.type");
    if (type != "ByteLevel") {
      throw f.unsupported("decoder.type", "'" + type + "' is not supported (ByteLevel)");
    }
  }
}

void parse_model(const json& root, const Fields& f, BpeSpec* spec) {
  const json& model = f.require(root, "model", "model");
  f.expect_object(model, "model");
  if (const json* type = Fields::find(model, "type")) {
    const std::string name = f.string(*type, "model.type");
    if (name != "BPE") {
      throw f.unsupported("model.type", "'" + name + "' is not supported (only BPE)");
    }
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const std::string field = std::string("model.") + key;
    if (const json* value = Fields::find(model, key); value && !f.string(*value, field).empty()) {
      throw f.unsupported(field, "is not supported in byte-level BPE");
    }
  }
  spec->ignore_merges = f.boolean(model, "ignore_merges", false, "model.ignore_merges");

  const json& vocab = f.require(model, "vocab", "model.vocab");
  f.expect_object(vocab, "model.vocab");
  spec->vocab.reserve(vocab.size());
  for (const auto& [token, id] : vocab.items()) {
    spec->vocab.emplace_back(token, f.integer(id, "model.vocab['" + token + "']"));
  }

  const json& merges = f.require(model, "merges", "model.merges");
  f.expect_array(merges, "model.merges");
  spec->merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string field = "model.merges[" + std::to_string(i) + "]";
    const json& merge = merges[i];
    if (merge.is_string()) {
      // The older format: one space separates the halves (byte-level tokens have no spaces).
      const std::string line = merge.get<std::string>();
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        throw f.malformed(field, "'" + line + "' is not two tokens separated by one space");
      }
      spec->merges.emplace_back(line.substr(0, space), line.substr(space + 1));
    } else if (merge.is_array() && merge.size() == 2) {
      std::string left = f.string(merge[0], field + "[0]");  // left first: errors in order
      spec->merges.emplace_back(std::move(left), f.string(merge[1], field + "[1]"));
    } else {
      throw f.malformed(field, "is neither \"a b\" nor [a, b]");
    }
  }
}

void parse_added_tokens(const json& root, const Fields& f, BpeSpec* spec) {
  const json* added = Fields::find(root, "added_tokens");
  if (added == nullptr) return;
  f.expect_array(*added, "added_tokens");
  for (size_t i = 0; i < added->size(); ++i) {
    const std::string field = "added_tokens[" + std::to_string(i) + "]";
    const json& entry = (*added)[i];
    f.expect_object(entry, field);
    AddedToken token;
    const int64_t id = f.integer(f.require(entry, "id", field + ".id"), field + ".id");
    if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
      throw f.malformed(field + ".id", std::to_string(id) + " is out of range");
    }
    token.id = static_cast<int32_t>(id);
    token.content = f.string(f.require(entry, "content", field + ".content"), field + ".content");
    token.special = f.boolean(entry, "special", false, field + ".special");
    spec->added_tokens.push_back(std::move(token));
  }
}

}  // namespace

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_json(const nlohmann::json& json,
                                                      const model::ModelConfig& config,
                                                      std::string source) {
  const Fields f(source);
  if (!json.is_object()) throw f.malformed("(document)", "is not a JSON object");
  BpeSpec spec;
  parse_model(json, f, &spec);
  parse_added_tokens(json, f, &spec);
  check_normalizer_and_decoder(json, f);
  spec.pre_tokenizer = parse_pre_tokenizer(json, f);
  return std::make_unique<BpeTokenizer>(std::move(spec), config, std::move(source));
}

std::unique_ptr<BpeTokenizer> parse_tokenizer_json(std::string_view text,
                                                   const model::ModelConfig& config,
                                                   std::string source) {
  const json document = parse_json(text, source, {.syntax_error = ErrorCode::kDataLoss});
  return BpeTokenizer::from_json(document, config, std::move(source));
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_file(const std::filesystem::path& path,
                                                      const model::ModelConfig& config) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    throw Error(ErrorCode::kNotFound, path.string() + ": tokenizer file does not exist");
  }
  return parse_tokenizer_json(read_json_file(path, kMaxTokenizerJsonBytes), config,
                              path.string());
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& model_dir,
                                          const model::ModelConfig& config) {
  if (config.tokenizer == model::TokenizerKind::kByte) {
    return std::make_unique<ByteTokenizer>(config);
  }
  return BpeTokenizer::from_file(model_dir / "tokenizer.json", config);
}

}  // namespace helios::tokenizer
