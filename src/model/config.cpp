#include "helios/model/config.h"

#include <cmath>
#include <cstdint>
#include <fstream>

#include "helios/common/error.h"
#include "helios/common/json_limits.h"

namespace helios::model {
namespace {

using nlohmann::json;

constexpr const char* kArchitecture = "LlamaForCausalLM";

[[noreturn]] void fail_field(const std::string& source, const std::string& field,
                             const std::string& what) {
  throw Error(ErrorCode::kInvalidArgument, source + ": field \"" + field + "\" " + what);
}

// Parses fields of one config document; `source` (the file name) prefixes every message so an
// operator knows which file to fix.
class FieldReader {
 public:
  FieldReader(const json& root, std::string source) : root_(root), source_(std::move(source)) {}

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    fail_field(source_, field, what);
  }

  // A JSON integer (not a float or a bool: HF writes sizes as integers, so anything else is a
  // mistake worth reporting).
  static bool is_integer(const json& value) {
    return value.is_number_integer() || value.is_number_unsigned();
  }

  const json* find(const std::string& field) const {
    const auto it = root_.find(field);
    if (it == root_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  // An integer in [1, max]. Checked on the JSON value itself: an unsigned value past INT64_MAX
  // must not wrap into a small or negative one.
  int64_t positive_int(const std::string& field, int64_t max) const {
    const json* value = find(field);
    if (value == nullptr) fail(field, "is missing");
    const bool is_unsigned = value->is_number_unsigned();
    if (!is_integer(*value) || (is_unsigned ? value->get<uint64_t>() == 0
                                            : value->get<int64_t>() <= 0)) {
      fail(field, "must be a positive integer");
    }
    if (is_unsigned ? value->get<uint64_t>() > static_cast<uint64_t>(max)
                    : value->get<int64_t>() > max) {
      fail(field, "must be at most " + std::to_string(max) + ", got " +
                      (is_unsigned ? std::to_string(value->get<uint64_t>())
                                   : std::to_string(value->get<int64_t>())));
    }
    return value->get<int64_t>();
  }

  int64_t positive_int_or(const std::string& field, int64_t fallback, int64_t max) const {
    return find(field) == nullptr ? fallback : positive_int(field, max);
  }

  // Token ids: HF allows a list for eos_token_id (several stop tokens); helios keeps the first.
  int64_t token_id_or(const std::string& field, int64_t fallback) const {
    const json* value = find(field);
    if (value == nullptr) return fallback;
    const json* id = value;
    if (value->is_array()) {
      if (value->empty()) fail(field, "must be a non-negative integer or a non-empty list");
      id = &(*value)[0];
    }
    if (!is_integer(*id) || (!id->is_number_unsigned() && id->get<int64_t>() < 0)) {
      fail(field, "must be a non-negative integer or a non-empty list");
    }
    // Ids are checked against vocab_size later; one past INT64_MAX must not wrap below it.
    if (id->is_number_unsigned() && id->get<uint64_t>() > static_cast<uint64_t>(kMaxVocabSize)) {
      fail(field, "must be in [0, vocab_size), got " + std::to_string(id->get<uint64_t>()));
    }
    return id->get<int64_t>();
  }

  double positive_number_or(const std::string& field, double fallback) const {
    const json* value = find(field);
    if (value == nullptr) return fallback;
    if (!value->is_number() || !(value->get<double>() > 0) ||
        !std::isfinite(value->get<double>())) {
      fail(field, "must be a positive number");
    }
    return value->get<double>();
  }

  bool bool_or(const std::string& field, bool fallback) const {
    const json* value = find(field);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) fail(field, "must be true or false");
    return value->get<bool>();
  }

  std::string string_or(const std::string& field, const std::string& fallback) const {
    const json* value = find(field);
    if (value == nullptr) return fallback;
    if (!value->is_string()) fail(field, "must be a string");
    return value->get<std::string>();
  }

 private:
  const json& root_;
  std::string source_;
};

std::vector<int> all_layers(int64_t num_layers) {
  std::vector<int> layers;
  for (int64_t l = 1; l <= num_layers; ++l) layers.push_back(static_cast<int>(l));
  return layers;
}

void validate_as(const ModelConfig& c, const std::string& source) {
  const auto fail = [&](const std::string& field, const std::string& what) {
    fail_field(source, field, what);
  };
  if (c.architecture != kArchitecture) {
    fail("architectures", "must be [\"LlamaForCausalLM\"], got \"" + c.architecture + "\"");
  }
  const std::pair<const char*, int64_t> sizes[] = {
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"vocab_size", c.vocab_size},
      {"max_position_embeddings", c.max_position_embeddings}};
  for (const auto& [field, value] : sizes) {
    if (value <= 0) fail(field, "must be a positive integer");
  }
  const std::pair<const char*, int64_t> bounds[] = {
      {"hidden_size", kMaxHiddenSize},
      {"intermediate_size", kMaxIntermediateSize},
      {"num_hidden_layers", kMaxLayers},
      {"num_attention_heads", kMaxAttentionHeads},
      {"num_key_value_heads", kMaxAttentionHeads},
      {"vocab_size", kMaxVocabSize},
      {"max_position_embeddings", kMaxPositionEmbeddings}};
  for (size_t i = 0; i < std::size(bounds); ++i) {
    if (sizes[i].second > bounds[i].second) {
      fail(sizes[i].first, "must be at most " + std::to_string(bounds[i].second) + ", got " +
                               std::to_string(sizes[i].second));
    }
  }
  if (c.hidden_size % c.num_attention_heads != 0) {
    fail("num_attention_heads", "must divide hidden_size (" + std::to_string(c.hidden_size) +
                                    "), got " + std::to_string(c.num_attention_heads));
  }
  // Rotary embeddings rotate pairs of dimensions, so a head must have an even width.
  if (c.head_dim() % 2 != 0) {
    fail("num_attention_heads", "must leave an even head dimension (hidden_size / heads = " +
                                    std::to_string(c.head_dim()) + ")");
  }
  // Both factors are bounded above, so the product cannot overflow.
  if (c.max_position_embeddings * c.head_dim() > kMaxRopeTableElements) {
    fail("max_position_embeddings",
         "times the head dimension (" + std::to_string(c.head_dim()) + ") must be at most " +
             std::to_string(kMaxRopeTableElements) + " (the rotary tables), got " +
             std::to_string(c.max_position_embeddings));
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    fail("num_key_value_heads", "must divide num_attention_heads (" +
                                    std::to_string(c.num_attention_heads) + "), got " +
                                    std::to_string(c.num_key_value_heads));
  }
  if (!(c.rms_norm_eps > 0) || !std::isfinite(c.rms_norm_eps)) {
    fail("rms_norm_eps", "must be a positive number");
  }
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta)) {
    fail("rope_theta", "must be a positive number");
  }
  for (const auto& [field, id] :
       {std::pair{"bos_token_id", c.bos_token_id}, std::pair{"eos_token_id", c.eos_token_id}}) {
    if (id < 0 || id >= c.vocab_size) {
      fail(field, "must be in [0, vocab_size), got " + std::to_string(id));
    }
  }
  if (c.torch_dtype != "float32" && c.torch_dtype != "float16" && c.torch_dtype != "bfloat16") {
    fail("torch_dtype",
         "must be \"float32\", \"float16\" or \"bfloat16\", got \"" + c.torch_dtype + "\"");
  }
  for (size_t i = 0; i < c.exit_layers.size(); ++i) {
    const int layer = c.exit_layers[i];
    if (layer < 1 || layer > c.num_hidden_layers) {
      fail("early_exit.exit_layers",
           "entries must be in [1, num_hidden_layers = " + std::to_string(c.num_hidden_layers) +
               "], got " + std::to_string(layer));
    }
    if (i > 0 && layer <= c.exit_layers[i - 1]) {
      fail("early_exit.exit_layers", "must be strictly increasing");
    }
  }
  if (c.tokenizer == TokenizerKind::kByte && c.vocab_size < 256) {
    fail("vocab_size", "must be at least 256 with the byte tokenizer");
  }
}

ModelConfig parse_as(const json& root, const std::string& source) {
  if (!root.is_object()) {
    throw Error(ErrorCode::kInvalidArgument, source + ": must be a JSON object");
  }
  const FieldReader r(root, source);
  ModelConfig c;
  if (const json* archs = r.find("architectures")) {
    if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
      r.fail("architectures", "must be a non-empty list of strings");
    }
    c.architecture = (*archs)[0].get<std::string>();
  }
  if (r.string_or("model_type", "llama") != "llama") r.fail("model_type", "must be \"llama\"");
  // Bounded as they are read: the exit list below is sized from num_hidden_layers.
  c.hidden_size = r.positive_int("hidden_size", kMaxHiddenSize);
  c.intermediate_size = r.positive_int("intermediate_size", kMaxIntermediateSize);
  c.num_hidden_layers = r.positive_int("num_hidden_layers", kMaxLayers);
  c.num_attention_heads = r.positive_int("num_attention_heads", kMaxAttentionHeads);
  c.num_key_value_heads =
      r.positive_int_or("num_key_value_heads", c.num_attention_heads, kMaxAttentionHeads);
  c.vocab_size = r.positive_int("vocab_size", kMaxVocabSize);
  // HF LlamaConfig's own defaults, for configs that omit the optional keys.
  c.max_position_embeddings =
      r.positive_int_or("max_position_embeddings", 2048, kMaxPositionEmbeddings);
  c.rms_norm_eps = r.positive_number_or("rms_norm_eps", 1e-6);
  c.rope_theta = r.positive_number_or("rope_theta", 10000.0);
  c.tie_word_embeddings = r.bool_or("tie_word_embeddings", false);
  c.bos_token_id = r.token_id_or("bos_token_id", 1);
  c.eos_token_id = r.token_id_or("eos_token_id", 2);
  c.torch_dtype = r.string_or("torch_dtype", "float32");

  // Keys that change the computation in ways helios does not implement: refusing them beats
  // silently producing a different model.
  if (r.string_or("hidden_act", "silu") != "silu") r.fail("hidden_act", "must be \"silu\"");
  if (r.bool_or("attention_bias", false)) r.fail("attention_bias", "is not supported");
  if (r.bool_or("mlp_bias", false)) r.fail("mlp_bias", "is not supported");
  if (r.find("rope_scaling") != nullptr) r.fail("rope_scaling", "is not supported");
  if (const json* head_dim = r.find("head_dim")) {
    // Compared by division: head_dim is unbounded and the product could overflow.
    const bool matches = FieldReader::is_integer(*head_dim) &&
                         c.hidden_size % c.num_attention_heads == 0 &&
                         (head_dim->is_number_unsigned() || head_dim->get<int64_t>() >= 0) &&
                         head_dim->get<uint64_t>() ==
                             static_cast<uint64_t>(c.hidden_size / c.num_attention_heads);
    if (!matches) {
      r.fail("head_dim", "must equal hidden_size / num_attention_heads");
    }
  }

  c.exit_layers = all_layers(c.num_hidden_layers);
  if (const json* early_exit = r.find("early_exit")) {
    if (!early_exit->is_object()) r.fail("early_exit", "must be an object");
    const auto layers = early_exit->find("exit_layers");
    if (layers == early_exit->end() || !layers->is_array()) {
      r.fail("early_exit.exit_layers", "must be a list of integers");
    }
    // Strictly increasing entries in [1, num_hidden_layers] are at most that many.
    if (static_cast<int64_t>(layers->size()) > c.num_hidden_layers) {
      r.fail("early_exit.exit_layers",
             "has " + std::to_string(layers->size()) + " entries, more than num_hidden_layers = " +
                 std::to_string(c.num_hidden_layers));
    }
    c.exit_layers.clear();
    for (const json& layer : *layers) {
      if (!FieldReader::is_integer(layer)) {
        r.fail("early_exit.exit_layers", "must be a list of integers");
      }
      const bool huge = layer.is_number_unsigned() && layer.get<uint64_t>() > uint64_t{INT64_MAX};
      const int64_t value = huge ? INT64_MAX : layer.get<int64_t>();
      if (value < 1 || value > c.num_hidden_layers) {
        r.fail("early_exit.exit_layers",
               "entries must be in [1, num_hidden_layers = " + std::to_string(c.num_hidden_layers) +
                   "], got " + std::to_string(value));
      }
      c.exit_layers.push_back(static_cast<int>(value));
    }
  }
  if (const json* tokenizer = r.find("tokenizer")) {
    const auto type = tokenizer->is_object() ? tokenizer->find("type") : tokenizer->end();
    if (!tokenizer->is_object() || type == tokenizer->end() || !type->is_string()) {
      r.fail("tokenizer.type", "must be \"byte\" or \"huggingface\"");
    }
    const std::string kind = type->get<std::string>();
    if (kind == "byte") {
      c.tokenizer = TokenizerKind::kByte;
    } else if (kind == "huggingface") {
      c.tokenizer = TokenizerKind::kHuggingFace;
    } else {
      r.fail("tokenizer.type", "must be \"byte\" or \"huggingface\", got \"" + kind + "\"");
    }
  }
  validate_as(c, source);
  return c;
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& json) {
  return parse_as(json, "config.json");
}

ModelConfig ModelConfig::parse(std::string_view text, const std::string& source) {
  return parse_as(parse_json(text, source, {.syntax_error = ErrorCode::kDataLoss}), source);
}

ModelConfig ModelConfig::from_file(const std::filesystem::path& path) {
  return parse(read_json_file(path), path.string());
}

void ModelConfig::validate() const {
  validate_as(*this, "config.json");
}

nlohmann::json ModelConfig::to_json() const {
  json out = {
      {"architectures", {architecture}},
      {"model_type", "llama"},
      {"hidden_act", "silu"},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_key_value_heads},
      {"vocab_size", vocab_size},
      {"max_position_embeddings", max_position_embeddings},
      {"rms_norm_eps", rms_norm_eps},
      {"rope_theta", rope_theta},
      {"tie_word_embeddings", tie_word_embeddings},
      {"bos_token_id", bos_token_id},
      {"eos_token_id", eos_token_id},
      {"torch_dtype", torch_dtype},
  };
  // Written only when they differ from what a plain HF config implies, so a LayerSkip or stock
  // Llama config saved back stays a stock config.
  if (exit_layers != all_layers(num_hidden_layers)) {
    out["early_exit"] = {{"exit_layers", exit_layers}};
  }
  if (tokenizer == TokenizerKind::kByte) out["tokenizer"] = {{"type", "byte"}};
  return out;
}

void ModelConfig::save(const std::filesystem::path& path) const {
  validate();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << to_json().dump(2) << "\n";
  out.close();
  if (!out) throw Error(ErrorCode::kUnavailable, path.string() + ": cannot write config file");
}

}  // namespace helios::model
