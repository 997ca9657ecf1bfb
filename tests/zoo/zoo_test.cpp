// Checks on the trained micro zoo (built once by the build_micro_zoo fixture): the models
// learned their domains, and exit telemetry tells the domains apart.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "helios/common/files.h"
#include "helios/engine/generator.h"
#include "helios/engine/model_instance.h"
#include "helios/model/perplexity.h"

namespace helios {
namespace {

namespace fs = std::filesystem;

constexpr double kThreshold = model::kDefaultExitThreshold;

// `count` prompts of `bytes` bytes spread evenly over a held-out test split.
std::vector<std::string> prompts_from(const std::string& domain, int count, size_t bytes) {
  const std::string text = read_file(fs::path(HELIOS_DATA_DIR) / domain / "test.txt");
  std::vector<std::string> prompts;
  for (int i = 0; i < count; ++i) {
    prompts.push_back(text.substr((text.size() - bytes) / count * i, bytes));
  }
  return prompts;
}

struct DomainStats {
  double teacher_forced_mean_exit = 0.0;  // over every prompt position
  double generated_mean_exit = 0.0;       // over greedily generated tokens
  double final_perplexity = 0.0;
};

DomainStats measure(const engine::ModelInstance& instance,
                    const std::vector<std::string>& prompts) {
  const auto& transformer = instance.transformer();
  const model::ExitPolicy policy{kThreshold};
  DomainStats stats;
  double exit_sum = 0.0, nll_sum = 0.0;
  int64_t positions = 0;
  std::vector<engine::GenerationRequest> requests;
  for (const auto& prompt : prompts) {
    const std::vector<int32_t> ids = instance.tokenizer().encode(prompt);
    const model::ExitPerplexity report = model::evaluate_perplexity(transformer, ids, policy);
    for (size_t e = 0; e < report.exit_layers.size(); ++e) {
      exit_sum += static_cast<double>(report.exit_layers[e] * report.exit_histogram[e]);
    }
    nll_sum += report.mean_nll.back() * static_cast<double>(report.tokens);
    positions += report.tokens;
    engine::GenerationRequest request;
    request.prompt.push_back(instance.tokenizer().bos_id());
    request.prompt.insert(request.prompt.end(), ids.begin(), ids.end());
    request.max_tokens = 32;
    requests.push_back(request);
  }
  stats.teacher_forced_mean_exit = exit_sum / static_cast<double>(positions);
  stats.final_perplexity = std::exp(nll_sum / static_cast<double>(positions));
  kv::KvCache cache =
      engine::make_cache_for(transformer, static_cast<int64_t>(requests.size()), 256);
  double generated_sum = 0.0;
  int64_t generated = 0;
  for (const auto& result : engine::generate_batch(transformer, cache, requests, policy)) {
    for (const auto& token : result.tokens) {
      generated_sum += token.exit.exit_layer;
      ++generated;
    }
  }
  stats.generated_mean_exit = generated_sum / static_cast<double>(generated);
  return stats;
}

class MicroZooTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const fs::path zoo(HELIOS_MICRO_ZOO_DIR);
    prose_model_ = engine::ModelInstance::load(zoo / "prose-micro").release();
    code_model_ = engine::ModelInstance::load(zoo / "code-micro").release();
    const auto prose = prompts_from("prose", 24, 192);
    const auto code = prompts_from("code", 24, 192);
    prose_on_prose_ = measure(*prose_model_, prose);
    code_on_prose_ = measure(*prose_model_, code);
    prose_on_code_ = measure(*code_model_, prose);
    code_on_code_ = measure(*code_model_, code);
  }
  static void TearDownTestSuite() {
    delete prose_model_;
    delete code_model_;
  }
  static inline engine::ModelInstance* prose_model_ = nullptr;
  static inline engine::ModelInstance* code_model_ = nullptr;
  // <text domain>_on_<model domain>
  static inline DomainStats prose_on_prose_, code_on_prose_, prose_on_code_, code_on_code_;
};

TEST_F(MicroZooTest, EachModelPredictsItsOwnDomainBetter) {
  EXPECT_LT(prose_on_prose_.final_perplexity, code_on_prose_.final_perplexity);
  EXPECT_LT(code_on_code_.final_perplexity, prose_on_code_.final_perplexity);
  RecordProperty("prose_model_ppl_prose", std::to_string(prose_on_prose_.final_perplexity));
  RecordProperty("prose_model_ppl_code", std::to_string(code_on_prose_.final_perplexity));
}

TEST_F(MicroZooTest, ProsePromptsExitEarlierOnTheProseModel) {
  std::printf(
      "prose model: mean exit on prose %.3f (generated %.3f), on code %.3f (generated %.3f)\n",
      prose_on_prose_.teacher_forced_mean_exit, prose_on_prose_.generated_mean_exit,
      code_on_prose_.teacher_forced_mean_exit, code_on_prose_.generated_mean_exit);
  EXPECT_LT(prose_on_prose_.teacher_forced_mean_exit, code_on_prose_.teacher_forced_mean_exit);
}

TEST_F(MicroZooTest, CodePromptsExitEarlierOnTheCodeModel) {
  std::printf(
      "code model: mean exit on code %.3f (generated %.3f), on prose %.3f (generated %.3f)\n",
      code_on_code_.teacher_forced_mean_exit, code_on_code_.generated_mean_exit,
      prose_on_code_.teacher_forced_mean_exit, prose_on_code_.generated_mean_exit);
  EXPECT_LT(code_on_code_.teacher_forced_mean_exit, prose_on_code_.teacher_forced_mean_exit);
}

}  // namespace
}  // namespace helios
