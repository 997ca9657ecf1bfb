#include "helios/train/trainer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/scratch_dir.h"
#include "helios/engine/model_instance.h"

namespace helios::train {
namespace {

namespace fs = std::filesystem;

// Real text that exists on every machine that builds helios: the C++ standard headers.
fs::path write_text(const fs::path& dir, const std::string& name,
                    const std::vector<std::string>& headers) {
  std::string text;
  for (const auto& header : headers) {
    for (const auto& root : fs::directory_iterator("/usr/include/c++")) {
      std::ifstream in(root.path() / header);
      if (in) {
        text.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
        break;
      }
    }
  }
  const fs::path path = dir / name;
  std::ofstream(path) << text;
  return path;
}

TEST(ExitLossWeights, RiseWithDepthAndSumToOne) {
  const auto w = exit_loss_weights({1, 2, 4});
  ASSERT_EQ(w.size(), 3u);
  EXPECT_LT(w[0], w[1]);
  EXPECT_LT(w[1], w[2]);
  EXPECT_NEAR(w[0] + w[1] + w[2], 1.0, 1e-12);
}

// A small byte-level model trained on a few standard headers: a second or two on 2 cores.
TrainOptions small_run(const fs::path& dir) {
  TrainOptions options;
  options.train_text = write_text(dir, "train.txt", {"vector", "string", "map", "memory"});
  options.valid_text = write_text(dir, "valid.txt", {"deque", "set"});
  options.out_dir = dir / "model";
  model::ModelConfig& c = options.config;
  c.hidden_size = 48;
  c.intermediate_size = 96;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.vocab_size = 258;
  c.max_position_embeddings = 128;
  c.tie_word_embeddings = true;
  c.bos_token_id = 256;
  c.eos_token_id = 257;
  c.tokenizer = model::TokenizerKind::kByte;
  c.exit_layers = {1, 2, 3};
  options.steps = 60;
  options.batch_size = 8;
  options.seq_len = 128;
  options.warmup_steps = 5;
  options.learning_rate = 5e-3;
  options.eval_windows = 16;
  options.progress = false;

  return options;
}

TEST(Trainer, LowersHeldOutLossAtEveryExitAndWritesALoadableModel) {
  const helios::testing::ScratchDir scratch("helios_trainer_test");
  const fs::path& dir = scratch.path();
  TrainOptions options = small_run(dir);
  const TrainReport report = train_model(options);
  ASSERT_EQ(report.final_valid_nll.size(), 3u);
  for (size_t e = 0; e < 3; ++e) {
    EXPECT_LT(report.final_valid_nll[e], report.initial_valid_nll[e] - 0.5)
        << "exit " << report.exit_layers[e];
  }
  EXPECT_LT(report.final_valid_nll.back(), report.final_valid_nll.front() + 0.05)
      << "the deepest exit should be at least as good as the first";

  const auto instance = engine::ModelInstance::load(options.out_dir);
  EXPECT_EQ(instance->config().num_hidden_layers, 3);
  EXPECT_TRUE(fs::exists(options.out_dir / "training.json"));
}

}  // namespace
}  // namespace helios::train

namespace helios::train {
namespace {

TEST(Trainer, SameSeedTrainsTheSameModel) {
  const helios::testing::ScratchDir scratch("helios_trainer_seed_test");
  const fs::path& dir = scratch.path();
  TrainOptions options = small_run(dir);
  options.steps = 8;
  const TrainReport first = train_model(options);
  const TrainReport second = train_model(options);
  EXPECT_EQ(first.final_valid_nll, second.final_valid_nll);
  options.seed += 1;
  const TrainReport other = train_model(options);
  EXPECT_NE(first.final_valid_nll, other.final_valid_nll);
}

}  // namespace
}  // namespace helios::train
