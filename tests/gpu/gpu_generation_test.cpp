// End to end on the GPU: greedy generation of a trained zoo model on CUDA against the same on
// CPU, token for token in float32, and the served daemon on the GPU.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <future>
#include <string>
#include <vector>

#include "common/cuda_available.h"
#include "helios/engine/generator.h"
#include "helios/engine/model_instance.h"
#include "serve/daemon_process.h"

namespace helios::testing {
namespace {

std::vector<std::vector<int32_t>> greedy_tokens(const engine::ModelInstance& instance,
                                                const std::vector<std::string>& prompts,
                                                int64_t max_tokens, double threshold,
                                                std::vector<std::vector<int32_t>>* exits) {
  std::vector<engine::GenerationRequest> requests;
  for (const std::string& prompt : prompts) {
    engine::GenerationRequest r;
    r.prompt = instance.tokenizer().encode(prompt);
    r.prompt.insert(r.prompt.begin(), static_cast<int32_t>(instance.config().bos_token_id));
    r.max_tokens = max_tokens;
    r.stop_at_eos = false;
    requests.push_back(std::move(r));
  }
  kv::KvCache cache = engine::make_cache_for(instance.transformer(),
                                             static_cast<int64_t>(prompts.size()), 512);
  model::ExitPolicy policy;
  policy.threshold = threshold;
  const auto results = engine::generate_batch(instance.transformer(), cache, requests, policy);
  std::vector<std::vector<int32_t>> tokens;
  for (const auto& result : results) {
    tokens.emplace_back();
    if (exits != nullptr) exits->emplace_back();
    for (const auto& t : result.tokens) {
      tokens.back().push_back(t.id);
      if (exits != nullptr) exits->back().push_back(t.exit.exit_layer);
    }
  }
  return tokens;
}

// Batched greedy decoding with early exit, float32: the GPU (cuBLAS GEMMs, the kernels) picks
// the same token and the same exit layer as the CPU at every step. Both use the micro zoo's
// prose model with its early-exit heads; the threshold makes exits happen at several layers.
TEST(GpuGeneration, GreedyFloat32MatchesCpuTokenForToken) {
  HELIOS_REQUIRE_CUDA();
  const std::string dir = kMicroZoo + "/prose-micro";
  model::LoadOptions cpu_options;
  model::LoadOptions gpu_options;
  gpu_options.device = at::Device(at::kCUDA, 0);
  const auto cpu = engine::ModelInstance::load(dir, cpu_options);
  const auto gpu = engine::ModelInstance::load(dir, gpu_options);
  const std::vector<std::string> prompts = test_prompts(8);
  for (const double threshold : {2.0, 0.3}) {
    std::vector<std::vector<int32_t>> cpu_exits, gpu_exits;
    const auto expected = greedy_tokens(*cpu, prompts, 48, threshold, &cpu_exits);
    const auto actual = greedy_tokens(*gpu, prompts, 48, threshold, &gpu_exits);
    EXPECT_EQ(actual, expected) << "threshold " << threshold;
    EXPECT_EQ(gpu_exits, cpu_exits) << "threshold " << threshold;
  }
}

// The decode step through CUDA graphs (captured per padded batch and context bucket, replayed
// segment by segment between exit heads) gives the eager step's tokens and exits, for batches
// that fill a bucket and batches padded into one, with and without early exits.
TEST(GpuGeneration, CudaGraphDecodeMatchesTheEagerStep) {
  HELIOS_REQUIRE_CUDA();
  const std::string dir = kMicroZoo + "/prose-micro";
  model::LoadOptions eager_options;
  eager_options.device = at::Device(at::kCUDA, 0);
  eager_options.cuda_graphs = false;
  model::LoadOptions graph_options = eager_options;
  graph_options.cuda_graphs = true;
  const auto eager = engine::ModelInstance::load(dir, eager_options);
  const auto graphed = engine::ModelInstance::load(dir, graph_options);
  ASSERT_FALSE(eager->transformer().cuda_graphs());
  ASSERT_TRUE(graphed->transformer().cuda_graphs());
  for (const size_t batch : {8u, 3u}) {
    const std::vector<std::string> prompts = test_prompts(batch);
    for (const double threshold : {2.0, 0.3}) {
      std::vector<std::vector<int32_t>> eager_exits, graph_exits;
      const auto expected = greedy_tokens(*eager, prompts, 40, threshold, &eager_exits);
      const auto actual = greedy_tokens(*graphed, prompts, 40, threshold, &graph_exits);
      EXPECT_EQ(actual, expected) << "batch " << batch << " threshold " << threshold;
      EXPECT_EQ(graph_exits, eager_exits) << "batch " << batch << " threshold " << threshold;
    }
  }
}

// bfloat16 cannot match float32 token for token over long runs; greedy continuations of the
// trained model still agree on most of their first tokens.
TEST(GpuGeneration, GreedyBfloat16MostlyAgreesWithFloat32) {
  HELIOS_REQUIRE_CUDA();
  const std::string dir = kMicroZoo + "/prose-micro";
  model::LoadOptions f32;
  f32.device = at::Device(at::kCUDA, 0);
  model::LoadOptions bf16 = f32;
  bf16.dtype = at::kBFloat16;
  const auto full = engine::ModelInstance::load(dir, f32);
  const auto half = engine::ModelInstance::load(dir, bf16);
  const std::vector<std::string> prompts = test_prompts(8);
  const auto expected = greedy_tokens(*full, prompts, 8, 2.0, nullptr);
  const auto actual = greedy_tokens(*half, prompts, 8, 2.0, nullptr);
  int same = 0, total = 0;
  for (size_t p = 0; p < prompts.size(); ++p) {
    for (size_t i = 0; i < expected[p].size(); ++i, ++total) same += actual[p][i] == expected[p][i];
  }
  EXPECT_GE(same, total * 3 / 4) << same << " of " << total << " tokens agree";
}

// The daemon on the GPU: the same completions as a CPU daemon in float32, concurrent streams in
// bfloat16, and the GPU's own energy counter (NVML) on /metrics.
TEST(GpuDaemon, ServesOnTheGpuAsOnTheCpu) {
  HELIOS_REQUIRE_CUDA();
  const std::vector<std::string> prompts = test_prompts(4);
  auto completions = [&](const nlohmann::json& model_overrides) {
    nlohmann::json overrides = {{"model", model_overrides}};
    DaemonProcess daemon(daemon_config("prose-micro", overrides));
    EXPECT_TRUE(daemon.wait_ready());
    auto stub = daemon.inference();
    std::vector<std::string> texts;
    for (const std::string& prompt : prompts) {
      const StreamResult r = generate(*stub, greedy_request(prompt, 24));
      EXPECT_TRUE(r.status.ok()) << r.status.error_message();
      texts.push_back(r.text);
    }
    return texts;
  };
  EXPECT_EQ(completions({{"device", "cuda"}, {"dtype", "float32"}}),
            completions({{"device", "cpu"}, {"dtype", "float32"}}));

  DaemonProcess daemon(daemon_config(
      "prose-micro", {{"model", {{"device", "cuda"}, {"dtype", "bfloat16"}}},
                      {"energy", {{"source", "nvml"}}}}));
  ASSERT_TRUE(daemon.wait_ready());
  for (const StreamResult& r : concurrent_streams(daemon, test_prompts(16), 32)) {
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.usage.completion_tokens(), 32u);
  }
  EXPECT_GT(sample_value(scrape(daemon), "helios_energy_joules_total{source=\"nvml\"}"), 0.0);
}

}  // namespace
}  // namespace helios::testing
