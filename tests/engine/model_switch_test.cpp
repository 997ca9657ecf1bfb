// Live model changes in the serving engine: switching to another model or another depth of
// the same one, and resizing the KV pool, must not change or lose what clients receive.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/expect_error.h"
#include "common/scratch_dir.h"
#include "common/held_out_text.h"
#include "engine/wait_for_result.h"
#include "helios/common/files.h"
#include "helios/engine/router.h"
#include "helios/engine/serving_engine.h"
#include "helios/tokenizer/utf8.h"

namespace helios::engine {
namespace {

using namespace std::chrono_literals;
using helios::testing::held_out_prompts;

std::string zoo(const std::string& name) { return std::string(HELIOS_MICRO_ZOO_DIR) + "/" + name; }

std::shared_ptr<const ModelInstance> prose() {
  static const std::shared_ptr<const ModelInstance> model = ModelInstance::load(zoo("prose-micro"));
  return model;
}
std::shared_ptr<const ModelInstance> code() {
  static const std::shared_ptr<const ModelInstance> model = ModelInstance::load(zoo("code-micro"));
  return model;
}

std::vector<std::string> prompts(size_t count) {
  return held_out_prompts("prose", count, 7000, 613, [](size_t i) { return 30 + (i % 4) * 11; });
}

std::vector<int32_t> encode(const std::string& text) {
  std::vector<int32_t> ids{prose()->tokenizer().bos_id()};
  for (const int32_t t : prose()->tokenizer().encode(text)) ids.push_back(t);
  return ids;
}

std::shared_ptr<Request> make_request(std::vector<int32_t> prompt, int64_t max_tokens,
                                      const std::string& id) {
  RequestSpec spec;
  spec.id = id;
  spec.prompt = std::move(prompt);
  spec.max_tokens = max_tokens;
  spec.token_details = true;
  return std::make_shared<Request>(std::move(spec));
}

std::vector<int32_t> ids(const Update& u) {
  std::vector<int32_t> out;
  for (const auto& t : u.tokens) out.push_back(t.id);
  return out;
}

EngineOptions options(const std::string& name, int64_t blocks, TelemetrySink* sink = nullptr) {
  EngineOptions o;
  o.model_name = name;
  o.kv_blocks = blocks;
  o.telemetry = sink;
  return o;
}

// Runs each prompt alone on `model`; returns the generated ids.
std::vector<std::vector<int32_t>> alone(std::shared_ptr<const ModelInstance> model,
                                        const std::vector<std::vector<int32_t>>& prompts,
                                        int64_t max_tokens) {
  ServingEngine engine(std::move(model), options("m", 64));
  engine.start();
  std::vector<std::vector<int32_t>> out;
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto request = make_request(prompts[i], max_tokens, "a" + std::to_string(i));
    engine.submit(request);
    out.push_back(ids(result_of(*request)));
  }
  return out;
}

// Records telemetry and runs actions at chosen step counts (on the engine thread, which is
// where a controller's reactions would be queued from too).
class Recorder : public TelemetrySink {
 public:
  void at_step(int64_t step, std::function<void()> action) {
    std::lock_guard lock(mutex_);
    actions_.emplace_back(step, std::move(action));
  }
  void on_step(const StepTelemetry& step) override {
    std::vector<std::function<void()>> due;
    {
      std::lock_guard lock(mutex_);
      steps.push_back(step);
      for (auto& [at, action] : actions_) {
        if (at == static_cast<int64_t>(steps.size())) due.push_back(action);
      }
    }
    for (auto& action : due) action();
  }
  void on_request(RequestTelemetry request) override {
    std::lock_guard lock(mutex_);
    order.push_back("finish " + request.id);
    requests.push_back(std::move(request));
  }
  void on_prompt(PromptTelemetry prompt) override {
    std::lock_guard lock(mutex_);
    order.push_back("prompt " + prompt.id);
    prompts.push_back(std::move(prompt));
  }

  std::mutex mutex_;
  std::vector<StepTelemetry> steps;
  std::vector<RequestTelemetry> requests;
  std::vector<PromptTelemetry> prompts;
  std::vector<std::string> order;  // "prompt <id>" and "finish <id>", as reported

 private:
  std::vector<std::pair<int64_t, std::function<void()>>> actions_;
};

// Submits every prompt before starting, so that all are admitted in the first step and each
// then gains one token per step.
std::vector<Update> run_all(ServingEngine& engine, const std::vector<std::vector<int32_t>>& prompts,
                            int64_t max_tokens) {
  std::vector<std::shared_ptr<Request>> requests;
  for (size_t i = 0; i < prompts.size(); ++i) {
    requests.push_back(make_request(prompts[i], max_tokens, "r" + std::to_string(i)));
    engine.submit(requests.back());
  }
  engine.start();
  std::vector<Update> results;
  for (auto& r : requests) results.push_back(result_of(*r));
  return results;
}

// Runs `prompt` alone on `first`, switched to `then` once it holds `before` tokens: the path
// each request of a batch takes through a switch (its recompute prefills all but its last
// token, which the next decode feeds). A fresh prefill of the continued text would compute the
// first token after the switch from a prefill's last position instead of a decode, whose
// float32 sums differ in the last bits; on a near tie that flips the token.
std::vector<int32_t> alone_switched(std::shared_ptr<const ModelInstance> first,
                                    std::shared_ptr<const ModelInstance> then,
                                    const std::vector<int32_t>& prompt, int64_t before,
                                    int64_t tokens);

std::vector<std::vector<int32_t>> prompt_ids(size_t count) {
  std::vector<std::vector<int32_t>> out;
  for (const std::string& p : prompts(count)) out.push_back(encode(p));
  return out;
}

TEST(ModelInstance, WithDepthSharesWeightsAndReadsOnlyNewLayers) {
  model::LoadOptions two;
  two.max_layers = 2;
  const std::shared_ptr<const ModelInstance> shallow = ModelInstance::load(zoo("prose-micro"), two);
  const std::shared_ptr<const ModelInstance> full = ModelInstance::load(zoo("prose-micro"));
  const std::shared_ptr<const ModelInstance> deep = ModelInstance::with_depth(*shallow, 0);
  ASSERT_EQ(deep->transformer().loaded_layers(), 4);
  EXPECT_EQ(deep->loaded().bytes_read, full->loaded().bytes_read - shallow->loaded().bytes_read);
  const model::ModelWeights &a = shallow->loaded().weights, &b = deep->loaded().weights;
  EXPECT_EQ(a.embed_tokens.data_ptr(), b.embed_tokens.data_ptr());
  EXPECT_EQ(a.final_norm.data_ptr(), b.final_norm.data_ptr());
  EXPECT_EQ(a.lm_head.data_ptr(), b.lm_head.data_ptr());
  for (size_t l = 0; l < 2; ++l) {
    const auto ta = a.layers[l].tensors(), tb = b.layers[l].tensors();
    for (size_t i = 0; i < ta.size(); ++i) EXPECT_EQ(ta[i].data_ptr(), tb[i].data_ptr());
  }
  EXPECT_EQ(&deep->tokenizer(), &shallow->tokenizer());
  EXPECT_EQ(deep->resident_bytes(), full->resident_bytes());
  EXPECT_EQ(deep->options().max_layers, 0);
  EXPECT_EQ(deep->options().reuse, nullptr);

  // Shallower from deeper reads nothing at all.
  const auto again = ModelInstance::with_depth(*deep, 2);
  EXPECT_EQ(again->loaded().bytes_read, 0);
  EXPECT_EQ(again->loaded().weights.layers[1].q_proj.data_ptr(), b.layers[1].q_proj.data_ptr());

  // The deeper load built on the shallow one computes what a fresh full load computes.
  const auto texts = prompt_ids(3);
  EXPECT_EQ(alone(deep, texts, 24), alone(full, texts, 24));

  // Reused weights must match what the load asks for.
  model::LoadOptions half;
  half.dtype = c10::kHalf;
  half.reuse = &a;
  testing::expect_error([&] { model::load_model(zoo("prose-micro"), half); },
                        ErrorCode::kInvalidArgument, {"reuse", "model.embed_tokens.weight"});
}

std::vector<int32_t> alone_switched(std::shared_ptr<const ModelInstance> first,
                                    std::shared_ptr<const ModelInstance> then,
                                    const std::vector<int32_t>& prompt, int64_t before,
                                    int64_t tokens) {
  Recorder recorder;
  ServingEngine engine(std::move(first), options("first", 64, &recorder));
  std::future<void> switched;
  recorder.at_step(before, [&] { switched = engine.switch_model(then, "then", 64); });
  const std::vector<Update> results = run_all(engine, {prompt}, tokens);
  switched.get();
  return ids(results.at(0));
}

TEST(ModelSwitch, ToAnotherModelMidStreamKeepsEveryTokenExact) {
  const auto prompts = prompt_ids(6);
  constexpr int64_t kTokens = 48, kBefore = 16;
  Recorder recorder;
  ServingEngine engine(prose(), options("prose-micro", 128, &recorder));
  std::future<void> switched;
  // After step s every request holds s tokens (all admitted together, one token per step).
  recorder.at_step(kBefore, [&] { switched = engine.switch_model(code(), "code-micro", 128); });
  const std::vector<Update> results = run_all(engine, prompts, kTokens);
  ASSERT_TRUE(switched.valid());
  switched.get();

  for (size_t s = 0; s < static_cast<size_t>(kBefore); ++s) {
    EXPECT_EQ(recorder.steps[s].generated, 6) << "step " << s;
  }
  const auto before = alone(prose(), prompts, kBefore);
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    const std::vector<int32_t> expected =
        alone_switched(prose(), code(), prompts[i], kBefore, kTokens);
    EXPECT_EQ(std::vector<int32_t>(expected.begin(), expected.begin() + kBefore), before[i]);
    EXPECT_EQ(results[i].finish, Finish::kLength);
    EXPECT_EQ(results[i].usage.completion_tokens, kTokens);
    EXPECT_EQ(results[i].usage.model, "code-micro");
    EXPECT_EQ(ids(results[i]), expected);
  }
  const EngineStats stats = engine.stats();
  EXPECT_EQ(stats.model_name, "code-micro");
  EXPECT_EQ(stats.model_epoch, 1u);
  EXPECT_EQ(stats.recomputes, 6);
  EXPECT_EQ(stats.preemptions, 0);
  EXPECT_EQ(engine.model(), code());
}

TEST(ModelSwitch, ShallowerThenDeeperLoadOfTheSameModelUnderLoad) {
  const auto prompts = prompt_ids(8);
  constexpr int64_t kTokens = 40;
  const std::shared_ptr<const ModelInstance> shallow = ModelInstance::with_depth(*prose(), 2);
  const std::shared_ptr<const ModelInstance> deep = ModelInstance::with_depth(*shallow, 4);
  Recorder recorder;
  metrics::Registry registry;
  ServingEngine engine(prose(), options("prose", 96, &recorder), &registry);
  std::future<void> first, second;
  recorder.at_step(6, [&] { first = engine.switch_model(shallow, "prose", 64); });
  recorder.at_step(20, [&] { second = engine.switch_model(deep, "prose", 80); });
  const std::vector<Update> results = run_all(engine, prompts, kTokens);
  first.get();
  second.get();
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    EXPECT_EQ(results[i].finish, Finish::kLength);
    EXPECT_EQ(results[i].usage.completion_tokens, kTokens);
    ASSERT_EQ(results[i].tokens.size(), static_cast<size_t>(kTokens));
    // The streamed text is exactly the generated tokens' text: nothing repeated or dropped.
    const std::vector<int32_t> generated = ids(results[i]);
    EXPECT_EQ(results[i].text, tokenizer::replace_invalid_utf8(prose()->tokenizer().decode(generated)));
    bool shallow_exit = false;
    for (const TokenDetail& t : results[i].tokens) shallow_exit |= t.exit.exit_layer <= 2;
    EXPECT_TRUE(shallow_exit);
  }
  const EngineStats stats = engine.stats();
  EXPECT_EQ(stats.model_epoch, 2u);
  EXPECT_EQ(stats.kv_blocks_used, 0);
  EXPECT_EQ(stats.kv_blocks_total, 80);
  EXPECT_EQ(stats.kv_sequences, 80 * 16 / 256);
  EXPECT_EQ(stats.loaded_layers, 4);
  EXPECT_EQ(stats.recomputes, 16);
  EXPECT_EQ(stats.weight_bytes, prose()->resident_bytes());
  const std::string text = registry.render();
  EXPECT_NE(text.find("helios_loaded_layers{model=\"prose\"} 4"), std::string::npos) << text;
  EXPECT_NE(text.find("helios_kv_capacity_sequences 5"), std::string::npos) << text;
}

TEST(ModelSwitch, ResizeUnderLoadKeepsOutputsIdentical) {
  const auto prompts = prompt_ids(8);
  constexpr int64_t kTokens = 40;
  std::vector<Update> reference;
  {
    ServingEngine engine(prose(), options("prose", 128));
    reference = run_all(engine, prompts, kTokens);
  }
  Recorder recorder;
  ServingEngine engine(prose(), options("prose", 128, &recorder));
  std::future<void> shrink, grow;
  // 24 blocks hold fewer sequences than run: preemptions follow as well.
  recorder.at_step(5, [&] { shrink = engine.resize_kv(24); });
  recorder.at_step(25, [&] { grow = engine.resize_kv(64); });
  const std::vector<Update> resized = run_all(engine, prompts, kTokens);
  shrink.get();
  grow.get();
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    EXPECT_EQ(resized[i].finish, Finish::kLength);
    EXPECT_EQ(ids(resized[i]), ids(reference[i]));
    EXPECT_EQ(resized[i].text, reference[i].text);
  }
  const EngineStats stats = engine.stats();
  EXPECT_EQ(stats.model_epoch, 2u);
  EXPECT_EQ(stats.kv_blocks_total, 64);
  EXPECT_GT(stats.recomputes, 0);
  EXPECT_EQ(stats.kv_blocks_used, 0);
}

TEST(ModelSwitch, TooFewBlocksFailsAndTheOldModelKeepsServing) {
  const auto prompts = prompt_ids(4);
  Recorder recorder;
  ServingEngine engine(prose(), options("prose-micro", 64, &recorder));
  std::future<void> refused;
  recorder.at_step(3, [&] { refused = engine.switch_model(code(), "code-micro", 10); });
  const std::vector<Update> results = run_all(engine, prompts, 24);
  ASSERT_TRUE(refused.valid());
  testing::expect_error([&] { refused.get(); }, ErrorCode::kInvalidArgument,
                        {"code-micro", "10 KV blocks"});
  const auto reference = alone(prose(), prompts, 24);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(results[i].finish, Finish::kLength);
    EXPECT_EQ(ids(results[i]), reference[i]);
    EXPECT_EQ(results[i].usage.model, "prose-micro");
  }
  const EngineStats stats = engine.stats();
  EXPECT_EQ(stats.model_name, "prose-micro");
  EXPECT_EQ(stats.model_epoch, 0u);
  EXPECT_EQ(stats.kv_blocks_total, 64);
  EXPECT_EQ(stats.recomputes, 0);
  EXPECT_EQ(engine.model(), prose());
}

// prose-micro with a context of `context` positions (the same weights).
std::shared_ptr<const ModelInstance> with_context(const helios::testing::ScratchDir& dir,
                                                  int64_t context) {
  const std::filesystem::path to = dir.path() / "short-micro";
  std::filesystem::create_directories(to);
  nlohmann::json config = nlohmann::json::parse(read_file(zoo("prose-micro") + "/config.json"));
  config["max_position_embeddings"] = context;
  std::ofstream(to / "config.json") << config.dump();
  std::filesystem::create_symlink(zoo("prose-micro") + "/model.safetensors",
                                  to / "model.safetensors");
  return ModelInstance::load(to);
}

// The first `count` prompt tokens of a held-out text, BOS included.
std::vector<int32_t> prompt_of_length(size_t count) {
  std::vector<int32_t> ids =
      encode(held_out_prompts("prose", 1, 9000, 1, [](size_t) { return size_t{400}; })[0]);
  EXPECT_GE(ids.size(), count);
  ids.resize(count);
  return ids;
}

TEST(ModelSwitch, QueuedRequestsThatNoLongerFitASmallerContextFailAsInvalid) {
  helios::testing::ScratchDir dir("short_context");
  const std::shared_ptr<const ModelInstance> short_model = with_context(dir, 128);
  Recorder recorder;
  EngineOptions o = options("prose-micro", 64, &recorder);
  o.limits.max_running = 1;  // the others wait in the queue
  ServingEngine engine(prose(), o);
  auto running = make_request(prompt_ids(1)[0], 24, "running");
  // Fits the serving model's 256 positions, not the next one's 128: no room to generate.
  auto queued = make_request(prompt_of_length(128), 8, "queued");
  auto fits = make_request(prompt_of_length(100), 8, "fits");
  std::shared_ptr<Request> arriving = make_request(prompt_of_length(140), 8, "arriving");
  std::future<void> switched;
  recorder.at_step(3, [&] {
    switched = engine.switch_model(short_model, "short-micro", 64);
    // Accepted by the front end under the old model, still in the engine's inbox at the switch.
    engine.submit(arriving);
  });
  engine.submit(running);
  engine.submit(queued);
  engine.submit(fits);
  engine.start();
  const Update running_result = result_of(*running);
  const Update queued_result = result_of(*queued);
  const Update fits_result = result_of(*fits);
  const Update arriving_result = result_of(*arriving);
  switched.get();

  EXPECT_EQ(running_result.finish, Finish::kLength) << running_result.error;
  EXPECT_EQ(running_result.usage.model, "short-micro");
  EXPECT_EQ(fits_result.finish, Finish::kLength) << fits_result.error;
  for (const Update* refused : {&queued_result, &arriving_result}) {
    EXPECT_EQ(refused->finish, Finish::kError);
    EXPECT_EQ(refused->error_code, ErrorCode::kInvalidArgument) << refused->error;
    EXPECT_NE(refused->error.find("context of 128 tokens"), std::string::npos) << refused->error;
    EXPECT_EQ(refused->usage.completion_tokens, 0);
  }
  EXPECT_EQ(engine.stats().kv_blocks_used, 0);
  EXPECT_EQ(engine.in_flight(), 0);
}

TEST(ModelSwitch, RunsWhileIdleAndFailsWhenStopped) {
  ServingEngine engine(prose(), options("prose-micro", 64));
  engine.start();
  engine.switch_model(code(), "code-micro", 32).get();
  EXPECT_EQ(engine.stats().model_name, "code-micro");
  EXPECT_EQ(engine.stats().kv_blocks_total, 32);
  engine.resize_kv(40).get();
  EXPECT_EQ(engine.stats().model_epoch, 2u);

  ServingEngine idle(prose(), options("prose-micro", 64));  // never started
  std::future<void> never = idle.resize_kv(32);
  idle.stop();
  testing::expect_error([&] { never.get(); }, ErrorCode::kUnavailable, {"stopped"});
  testing::expect_error([&] { engine.set_prompt_sampling(1.5); }, ErrorCode::kInvalidArgument,
                        {"sampling"});
  testing::expect_error([&] { engine.set_exit_threshold(-1); }, ErrorCode::kInvalidArgument,
                        {"threshold"});
}

TEST(Telemetry, PromptSamplingExitCountsAndEpochs) {
  const auto prompts = prompt_ids(6);
  constexpr int64_t kTokens = 20;
  Recorder recorder;
  ServingEngine engine(prose(), options("prose-micro", 64, &recorder));
  engine.set_prompt_sampling(0.5);
  std::future<void> resized;
  recorder.at_step(8, [&] { resized = engine.resize_kv(48); });
  const std::vector<Update> results = run_all(engine, prompts, kTokens);
  resized.get();
  // One more request, admitted and finished after the resize.
  auto late = make_request(prompts[0], kTokens, "late");
  engine.submit(late);
  const Update late_result = result_of(*late);
  engine.stop();

  std::lock_guard lock(recorder.mutex_);
  ASSERT_EQ(recorder.requests.size(), 7u);
  int64_t generated = 0;
  for (const RequestTelemetry& t : recorder.requests) {
    SCOPED_TRACE(t.id);
    generated += t.generated;
    EXPECT_EQ(t.generated, kTokens);
    EXPECT_EQ(t.finish, Finish::kLength);
    EXPECT_EQ(t.model, "prose-micro");
    EXPECT_EQ(t.loaded_layers, 4);
    EXPECT_EQ(t.model_epoch, 1u);
    ASSERT_EQ(t.exit_counts.size(), 5u);
    int64_t sum = 0;
    for (const int64_t c : t.exit_counts) sum += c;
    EXPECT_EQ(sum, t.generated);
    EXPECT_EQ(t.exit_counts[0], 0);
    EXPECT_LE(t.greedy_exits, t.exit_counts[4]);
    EXPECT_GT(t.total_s, 0.0);
    EXPECT_GT(t.tpot_s, 0.0);
    EXPECT_LE(t.ttft_s, t.total_s);
    if (t.id == "late") {
      EXPECT_TRUE(t.single_epoch);
      // The seventh admission (n = 6) is not sampled at rate 0.5.
      EXPECT_FALSE(t.prompt_scores.has_value());
      continue;
    }
    EXPECT_FALSE(t.single_epoch);
    const size_t n = std::stoul(t.id.substr(1));
    EXPECT_EQ(t.prompt_tokens, static_cast<int64_t>(prompts[n].size()));
    // Admission n is sampled when floor((n + 1) / 2) > floor(n / 2): the odd ones.
    ASSERT_EQ(t.prompt_scores.has_value(), n % 2 == 1);
    if (t.prompt_scores) {
      const model::ExitScores& s = *t.prompt_scores;
      EXPECT_EQ(s.tokens, t.prompt_tokens - 1);
      ASSERT_EQ(s.policy_nll_sum.size(), 4u);
      EXPECT_GT(s.nll_sum[3], 0.0);
      EXPECT_LT(s.policy_perplexity(3), 258.0);
      // The same scores and ids were reported when the prefill ended, before the request
      // decoded (under the epoch it was admitted in).
      const auto prompt = std::find_if(recorder.prompts.begin(), recorder.prompts.end(),
                                       [&](const PromptTelemetry& p) { return p.id == t.id; });
      ASSERT_NE(prompt, recorder.prompts.end());
      EXPECT_EQ(prompt->model, "prose-micro");
      EXPECT_EQ(prompt->model_epoch, 0u);
      EXPECT_EQ(prompt->loaded_layers, 4);
      EXPECT_EQ(prompt->scores.tokens, s.tokens);
      EXPECT_EQ(prompt->scores.policy_nll_sum, s.policy_nll_sum);
      EXPECT_EQ(prompt->ids, t.prompt_ids);
      EXPECT_EQ(prompt->ids, prompts[n]);
      EXPECT_GT(prompt->wait_s, 0.0);
      EXPECT_LE(prompt->wait_s, t.ttft_s);
      const auto reported = std::find(recorder.order.begin(), recorder.order.end(), "prompt " + t.id);
      const auto finished = std::find(recorder.order.begin(), recorder.order.end(), "finish " + t.id);
      EXPECT_LT(reported, finished);
    }
  }
  // Only sampled prompts are reported: r1, r3, r5.
  EXPECT_EQ(recorder.prompts.size(), 3u);
  int64_t stepped = 0, greedy = 0;
  for (const StepTelemetry& s : recorder.steps) {
    EXPECT_EQ(static_cast<int64_t>(s.breaches.size()), s.generated);
    int64_t flagged = 0;
    for (const uint8_t b : s.breaches) flagged += b;
    EXPECT_EQ(flagged, s.greedy_exits);
    stepped += s.generated;
    greedy += s.greedy_exits;
  }
  EXPECT_EQ(stepped, generated);
  int64_t request_greedy = 0;
  for (const RequestTelemetry& t : recorder.requests) request_greedy += t.greedy_exits;
  EXPECT_EQ(greedy, request_greedy);
  EXPECT_EQ(recorder.steps.front().model_epoch, 0u);
  EXPECT_EQ(recorder.steps.back().model_epoch, 1u);
  EXPECT_EQ(late_result.finish, Finish::kLength);
}

TEST(Telemetry, ExitThresholdTakesEffectAtTheNextStep) {
  Recorder recorder;
  ServingEngine engine(prose(), options("prose-micro", 64, &recorder));
  engine.set_exit_threshold(0.0);  // every token leaves at the first exit point
  const auto prompts = prompt_ids(2);
  const std::vector<Update> results = run_all(engine, prompts, 12);
  for (const Update& u : results) {
    for (const TokenDetail& t : u.tokens) EXPECT_EQ(t.exit.exit_layer, 1);
  }
  EXPECT_EQ(engine.exit_threshold(), 0.0);
}

}  // namespace
}  // namespace helios::engine

// ---- Resident sets: several models at once, each request routed to one ----

namespace helios::engine {
namespace {

std::vector<std::vector<int32_t>> code_prompt_ids(size_t count) {
  std::vector<std::vector<int32_t>> out;
  for (const std::string& p : held_out_prompts("code", count, 5000, 701,
                                               [](size_t i) { return 40 + (i % 3) * 13; })) {
    out.push_back(encode(p));
  }
  return out;
}

// Prose and code prompts, alternating.
std::vector<std::vector<int32_t>> mixed_prompt_ids(size_t each) {
  const auto prose_ids = prompt_ids(each), code_ids = code_prompt_ids(each);
  std::vector<std::vector<int32_t>> out;
  for (size_t i = 0; i < each; ++i) {
    out.push_back(prose_ids[i]);
    out.push_back(code_ids[i]);
  }
  return out;
}

// The member the engine routes each prompt to when they all arrive at once (scored as one batch).
std::vector<size_t> routed_members(const std::vector<std::vector<int32_t>>& prompts) {
  const model::Transformer* members[] = {&prose()->transformer(), &code()->transformer()};
  std::vector<std::span<const int32_t>> spans(prompts.begin(), prompts.end());
  return route_prompts(members, spans, EngineOptions{}.router_max_tokens).members;
}

TEST(ResidentSet, TheRouterSendsEachDomainToItsModel) {
  const model::Transformer* members[] = {&prose()->transformer(), &code()->transformer()};
  std::vector<std::vector<int32_t>> prompts = prompt_ids(10);
  for (auto& p : code_prompt_ids(10)) prompts.push_back(std::move(p));
  const std::vector<int32_t> bos{prose()->tokenizer().bos_id()};
  prompts.push_back(bos);
  std::vector<std::span<const int32_t>> spans(prompts.begin(), prompts.end());
  const RouteChoices batched = route_prompts(members, spans, 64);
  ASSERT_EQ(batched.members.size(), 21u);
  EXPECT_GT(batched.seconds, 0.0);
  int right = 0;
  for (size_t p = 0; p < 20; ++p) {
    SCOPED_TRACE("prompt " + std::to_string(p));
    ASSERT_EQ(batched.nll[p].size(), 2u);
    EXPECT_TRUE(std::isfinite(batched.nll[p][0]) && std::isfinite(batched.nll[p][1]));
    right += batched.members[p] == (p < 10 ? 0u : 1u);
    // One prompt alone scores as it does in the batch (padding never reaches it).
    const RouteChoices alone = route_prompts(members, std::span(spans).subspan(p, 1), 64);
    EXPECT_NEAR(alone.nll[0][0], batched.nll[p][0], 1e-4);
    EXPECT_NEAR(alone.nll[0][1], batched.nll[p][1], 1e-4);
  }
  EXPECT_GE(right, 18) << "of 20 held-out prompts routed to their domain's model";
  // A prompt with nothing to predict goes to the first member; one member is never scored.
  EXPECT_TRUE(std::isnan(batched.nll[20][0]));
  EXPECT_EQ(batched.members[20], 0u);
  EXPECT_TRUE(route_prompts(std::span(members, 1), spans, 64).nll.empty());
}

TEST(ResidentSet, EachRequestDecodesAsOnItsRoutedModelAlone) {
  constexpr int64_t kTokens = 24;
  const auto prompts = mixed_prompt_ids(4);
  ServingEngine engine(prose(), options("prose-micro", 128));
  std::future<void> resident = engine.set_resident(
      {{prose(), "prose-micro", 128}, {code(), "code-micro", 96}});
  const std::vector<Update> results = run_all(engine, prompts, kTokens);
  resident.get();
  size_t to_code = 0;
  const std::vector<size_t> routed = routed_members(prompts);
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    const size_t member = routed[i];
    to_code += member;
    EXPECT_EQ(results[i].finish, Finish::kLength);
    EXPECT_EQ(results[i].usage.model, member == 1 ? "code-micro" : "prose-micro");
    EXPECT_EQ(ids(results[i]), alone(member == 1 ? code() : prose(), {prompts[i]}, kTokens)[0]);
  }
  EXPECT_GT(to_code, 0u);
  EXPECT_LT(to_code, prompts.size());
  const EngineStats stats = engine.stats();
  ASSERT_EQ(stats.members.size(), 2u);
  EXPECT_EQ(stats.members[0].name, "prose-micro");
  EXPECT_EQ(stats.members[1].name, "code-micro");
  EXPECT_EQ(stats.members[0].kv_blocks_total, 128);
  EXPECT_EQ(stats.members[1].kv_blocks_total, 96);
  EXPECT_EQ(stats.kv_blocks_total, 224);
  EXPECT_EQ(stats.kv_cache_bytes, stats.members[0].kv_cache_bytes + stats.members[1].kv_cache_bytes);
  EXPECT_EQ(stats.weight_bytes, prose()->resident_bytes() + code()->resident_bytes());
  EXPECT_EQ(stats.routed, static_cast<int64_t>(prompts.size()));
  EXPECT_EQ(stats.members[1].routed, static_cast<int64_t>(to_code));
  EXPECT_GT(stats.router_seconds, 0.0);
  EXPECT_EQ(engine.resident_models(), (std::vector<std::shared_ptr<const ModelInstance>>{prose(), code()}));
}

TEST(ResidentSet, AMemberThatLeavesHandsItsRequestsOnWithoutALostToken) {
  constexpr int64_t kTokens = 36, kBefore = 12;
  const auto prompts = mixed_prompt_ids(3);
  Recorder recorder;
  ServingEngine engine(prose(), options("prose-micro", 128, &recorder));
  std::future<void> resident =
      engine.set_resident({{prose(), "prose-micro", 128}, {code(), "code-micro", 128}});
  std::future<void> left;
  recorder.at_step(kBefore, [&] { left = engine.set_resident({{prose(), "prose-micro", 128}}); });
  const std::vector<Update> results = run_all(engine, prompts, kTokens);
  resident.get();
  ASSERT_TRUE(left.valid());
  left.get();

  int64_t moved = 0;
  const std::vector<size_t> routed = routed_members(prompts);
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    EXPECT_EQ(results[i].finish, Finish::kLength);
    EXPECT_EQ(results[i].usage.completion_tokens, kTokens);
    EXPECT_EQ(results[i].usage.model, "prose-micro");
    if (routed[i] == 0) {
      // Its member stayed with its pool: untouched.
      EXPECT_EQ(ids(results[i]), alone(prose(), {prompts[i]}, kTokens)[0]);
      continue;
    }
    ++moved;
    EXPECT_EQ(ids(results[i]), alone_switched(code(), prose(), prompts[i], kBefore, kTokens));
  }
  ASSERT_GT(moved, 0);
  const EngineStats stats = engine.stats();
  EXPECT_EQ(stats.recomputes, moved) << "only the leaving member's requests are recomputed";
  EXPECT_EQ(stats.model_epoch, 2u);
  ASSERT_EQ(stats.members.size(), 1u);
  EXPECT_EQ(stats.kv_blocks_total, 128);
  EXPECT_EQ(stats.preemptions, 0);
}

TEST(ResidentSet, BadSetsAreRefusedAndTheOldSetKeepsServing) {
  ServingEngine engine(prose(), options("prose-micro", 64));
  engine.start();
  // Each future is held until its error has been read: its shared state (and the exception in
  // it) then outlives the catch, whichever thread drops the last reference.
  std::future<void> empty = engine.set_resident({});
  testing::expect_error([&] { empty.get(); }, ErrorCode::kInvalidArgument, {"empty"});
  std::future<void> twice = engine.set_resident({{prose(), "a", 64}, {code(), "a", 64}});
  testing::expect_error([&] { twice.get(); }, ErrorCode::kInvalidArgument, {"twice"});
  std::future<void> small =
      engine.set_resident({{prose(), "prose-micro", 64}, {code(), "code-micro", 1}});
  testing::expect_error([&] { small.get(); }, ErrorCode::kInvalidArgument,
                        {"cannot hold one full-context sequence"});
  engine.set_resident({{prose(), "prose-micro", 64}, {code(), "code-micro", 64}}).get();
  std::future<void> resize = engine.resize_kv(80);
  testing::expect_error([&] { resize.get(); }, ErrorCode::kFailedPrecondition, {"set_resident"});
  EXPECT_EQ(engine.stats().members.size(), 2u);
  auto request = make_request(prompt_ids(1)[0], 4, "after");
  engine.submit(request);
  EXPECT_EQ(result_of(*request).finish, Finish::kLength);
}

}  // namespace
}  // namespace helios::engine
