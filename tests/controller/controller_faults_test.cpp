// The controller when something breaks: a model folder that does not scan or load, a switch
// whose load fails after the KV pool was shrunk for it, an SLO edit that is half written or
// cannot be applied. The engine keeps serving what it served, and the failure is visible in
// the status and the metrics. Runs a real engine on the micro zoo.
#include "helios/controller/controller.h"

#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <new>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/expect_error.h"
#include "common/scratch_dir.h"
#include "helios/common/files.h"
#include "helios/engine/serving_engine.h"

namespace helios::controller {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;

const std::string kZoo = HELIOS_MICRO_ZOO_DIR;
constexpr int64_t kBudget = 4 << 20;

json slo_json(const fs::path& repository) {
  return {
      {"objective", "throughput"},
      {"constraints", {{"max_perplexity_increase", 0.10}}},
      {"early_exit", {{"threshold", 0.3}, {"load_quantile", 0.7}}},
      {"controller",
       {{"candidates_top_k", 3},
        {"profile_requests", 4},
        {"reprofile_interval_requests", 0},
        {"breach_window_tokens", 100},
        {"breach_max", 90},
        {"drift_window_requests", 8},
        {"monitor_sample_rate", 1.0}}},
      {"model_repository", repository.string()},
  };
}

void write(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::trunc) << text;
}

// Replaces `path` at once (write, then rename), so the watcher reads all of `text` or none.
void replace(const fs::path& path, const std::string& text) {
  write(path.string() + ".tmp", text);
  fs::rename(path.string() + ".tmp", path);
}

ControllerOptions controller_options(const fs::path& slo_file) {
  ControllerOptions o;
  o.slo_file = slo_file;
  o.memory_budget_bytes = kBudget;
  o.kv_block_size = 16;
  o.max_running = 32;
  o.watch_interval = 20ms;
  return o;
}

// The sample of `series` ("" when absent).
std::string sample(metrics::Registry& registry, const std::string& series) {
  const std::string text = registry.render();
  const size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return "";
  const size_t begin = at + series.size() + 2;
  return text.substr(begin, text.find('\n', begin) - begin);
}

const UnavailableModel* find(const std::vector<UnavailableModel>& list, const std::string& name) {
  for (const UnavailableModel& u : list) {
    if (u.name == name) return &u;
  }
  return nullptr;
}

// A controller over `repository` and the engine it starts, as the daemon wires them.
class Served {
 public:
  Served(const fs::path& dir, const fs::path& repository, ModelLoader loader = nullptr,
         std::function<void(const SloConfig&)> applying_slo = nullptr)
      : slo_file_(dir / "slo.json") {
    write(slo_file_, slo_json(repository).dump(2));
    ControllerOptions o = controller_options(slo_file_);
    o.loader = std::move(loader);
    o.applying_slo = std::move(applying_slo);
    controller_ = std::make_unique<Controller>(std::move(o), &registry_);
    controller_->prepare();
    engine::EngineOptions e;
    e.model_name = controller_->initial_model_name();
    e.kv_blocks = controller_->initial_kv_blocks();
    e.telemetry = controller_.get();
    engine_ = std::make_unique<engine::ServingEngine>(controller_->initial_model(), e, &registry_);
    engine_->start();
    controller_->start(engine_.get());
  }
  ~Served() {
    controller_->stop();
    engine_->stop();
  }

  // Generates a few tokens; the finish reason.
  engine::Finish generate(const std::string& id) {
    engine::RequestSpec spec;
    spec.id = id;
    spec.prompt = {engine_->model()->tokenizer().bos_id()};
    for (const int32_t t : engine_->model()->tokenizer().encode("The river ran")) {
      spec.prompt.push_back(t);
    }
    spec.max_tokens = 8;
    auto request = std::make_shared<engine::Request>(std::move(spec));
    engine_->submit(request);
    engine::Update all;
    const auto until = std::chrono::steady_clock::now() + 60s;
    while (!all.finished() && std::chrono::steady_clock::now() < until) {
      engine::Update update;
      if (request->channel().take(update)) all.merge(std::move(update));
      std::this_thread::sleep_for(1ms);
    }
    return all.finish;
  }

  // Polls the status until `done` holds (at most a minute); returns the last status.
  ControllerStatus wait_for(const std::function<bool(const ControllerStatus&)>& done) {
    const auto until = std::chrono::steady_clock::now() + 60s;
    ControllerStatus status = controller_->status();
    while (!done(status) && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(10ms);
      status = controller_->status();
    }
    EXPECT_TRUE(done(status)) << "timed out; last reload error: " << status.last_reload_error;
    return status;
  }

  const fs::path& slo_file() const { return slo_file_; }
  Controller& controller() { return *controller_; }
  engine::ServingEngine& engine() { return *engine_; }
  metrics::Registry& registry() { return registry_; }

 private:
  fs::path slo_file_;
  metrics::Registry registry_;
  std::unique_ptr<Controller> controller_;
  std::unique_ptr<engine::ServingEngine> engine_;
};

TEST(ControllerFaults, FailedLoadGivesTheKvPoolBackAndKeepsServing) {
  helios::testing::ScratchDir dir("controller_load");
  std::string refused;  // set before any switch, read on the controller thread
  ModelLoader fallible = [&refused, real = default_model_loader({})](
                             const fs::path& path, int64_t depth,
                             const engine::ModelInstance* serving) {
    if (path.filename() == refused) {
      throw Error(ErrorCode::kDataLoss, path.string() + ": injected read failure");
    }
    return real(path, depth, serving);
  };
  Served served(dir.path(), kZoo, fallible);
  const std::string initial = served.controller().initial_model_name();
  refused = initial == "code-micro" ? "prose-micro" : "code-micro";
  const engine::EngineStats before = served.engine().stats();
  const std::string phase = served.controller().status().phase;

  testing::expect_error([&] { served.controller().pin(refused, 0); }, ErrorCode::kDataLoss,
                        {refused, "injected read failure"});

  const engine::EngineStats after = served.engine().stats();
  // The pool was shrunk for the load (a new epoch), then grew back (another).
  EXPECT_EQ(after.model_epoch, before.model_epoch + 2);
  EXPECT_EQ(after.kv_blocks_total, before.kv_blocks_total);
  EXPECT_EQ(after.model_name, initial);
  EXPECT_EQ(served.generate("after"), engine::Finish::kLength);
  const ControllerStatus status = served.controller().status();
  EXPECT_EQ(status.active_model, initial);
  EXPECT_EQ(status.phase, phase);
  const UnavailableModel* broken = find(status.unavailable, refused);
  ASSERT_NE(broken, nullptr);
  EXPECT_NE(broken->reason.find("injected read failure"), std::string::npos) << broken->reason;
  metrics::Registry& registry = served.registry();
  EXPECT_EQ(sample(registry, "helios_model_load_failures_total{model=\"" + refused + "\"}"), "1");
  EXPECT_EQ(sample(registry, "helios_model_unavailable{model=\"" + refused + "\"}"), "1");

  // Once the model loads again it is available again.
  refused.clear();
  served.controller().pin(initial == "code-micro" ? "prose-micro" : "code-micro", 0);
  EXPECT_TRUE(served.controller().status().unavailable.empty());
  EXPECT_EQ(served.generate("switched"), engine::Finish::kLength);
}

// A repository of prose-micro and broken folders: one whose weights do not load (named to
// come first in the shortlist), one whose config.json is a symlink loop (a filesystem error,
// not a helios::Error), one whose sizes overflow a byte count.
fs::path broken_repository(const fs::path& dir, bool with_prose) {
  const fs::path repo = dir / "repo";
  fs::create_directories(repo);
  if (with_prose) fs::create_directory_symlink(kZoo + "/prose-micro", repo / "prose-micro");
  fs::create_directories(repo / "a-broken");
  fs::copy_file(kZoo + "/prose-micro/config.json", repo / "a-broken" / "config.json");
  write(repo / "a-broken" / "model.safetensors", "not a safetensors file");
  fs::create_directories(repo / "loop");
  fs::create_symlink(repo / "loop" / "config.json", repo / "loop" / "config.json");
  fs::create_directories(repo / "huge");
  json huge = json::parse(read_file(kZoo + "/prose-micro/config.json"));
  huge["vocab_size"] = int64_t{1} << 40;
  huge["hidden_size"] = int64_t{1} << 30;
  huge["intermediate_size"] = int64_t{1} << 30;
  write(repo / "huge" / "config.json", huge.dump());
  return repo;
}

TEST(ControllerFaults, StartupSkipsModelsThatCannotServe) {
  helios::testing::ScratchDir dir("controller_startup");
  Served served(dir.path(), broken_repository(dir.path(), true));
  EXPECT_EQ(served.controller().initial_model_name(), "prose-micro");
  EXPECT_EQ(served.generate("served"), engine::Finish::kLength);
  const ControllerStatus status = served.controller().status();
  EXPECT_EQ(status.candidates, std::vector<std::string>{"prose-micro"});
  ASSERT_EQ(status.unavailable.size(), 3u);
  const UnavailableModel* weights = find(status.unavailable, "a-broken");
  const UnavailableModel* loop = find(status.unavailable, "loop");
  const UnavailableModel* huge = find(status.unavailable, "huge");
  ASSERT_TRUE(weights != nullptr && loop != nullptr && huge != nullptr);
  EXPECT_NE(weights->reason.find("load failed"), std::string::npos) << weights->reason;
  EXPECT_NE(loop->reason.find("config.json"), std::string::npos) << loop->reason;
  EXPECT_NE(huge->reason.find("hidden_size"), std::string::npos) << huge->reason;
  metrics::Registry& registry = served.registry();
  for (const char* name : {"a-broken", "loop", "huge"}) {
    EXPECT_EQ(sample(registry, std::string("helios_model_unavailable{model=\"") + name + "\"}"),
              "1")
        << name;
  }
  EXPECT_EQ(sample(registry, "helios_model_load_failures_total{model=\"a-broken\"}"), "1");
}

TEST(ControllerFaults, StartupFailsListingEveryModelWhenNoneLoads) {
  helios::testing::ScratchDir dir("controller_none");
  const fs::path repo = broken_repository(dir.path(), false);
  write(dir.path() / "slo.json", slo_json(repo).dump(2));
  Controller controller(controller_options(dir.path() / "slo.json"), nullptr);
  testing::expect_error([&] { controller.prepare(); }, ErrorCode::kFailedPrecondition,
                        {"no model", "a-broken: load failed", "loop: ", "huge: "});
}

// Sample mode keeps the scoring's memory aside of the budget: the pool is sized within the
// rest, and a budget the reserve leaves too little of is refused naming the reserve.
TEST(ControllerFaults, SampleModeKeepsTheScoringMemoryAsideOfTheBudget) {
  helios::testing::ScratchDir dir("controller_reserve");
  json slo = slo_json(kZoo);
  slo["controller"]["profile_mode"] = "sample";
  write(dir.path() / "slo.json", slo.dump(2));
  ControllerOptions options = controller_options(dir.path() / "slo.json");
  Controller small(options, nullptr);
  testing::expect_error([&] { small.prepare(); }, ErrorCode::kInvalidArgument,
                        {"memory.budget_mib", "kept for scoring candidates"});

  options.memory_budget_bytes = 16 << 20;
  Controller roomy(options, nullptr);
  roomy.prepare();
  const ControllerStatus status = roomy.status();
  ASSERT_GT(status.evidence_reserve_bytes, 0);
  const engine::ModelInstance& model = *roomy.initial_model();
  const int64_t block_bytes =
      engine::ModelFootprint::of(model.transformer())
          .kv_block_bytes(model.transformer().loaded_layers(), options.kv_block_size);
  const int64_t weights = model.resident_bytes();
  EXPECT_LE(weights + roomy.initial_kv_blocks() * block_bytes + status.evidence_reserve_bytes,
            options.memory_budget_bytes);
  // Within one block of the rest: the pool takes what the reserve leaves.
  EXPECT_GT(weights + (roomy.initial_kv_blocks() + 1) * block_bytes + status.evidence_reserve_bytes,
            options.memory_budget_bytes);

  // In serve mode nothing is kept aside.
  write(dir.path() / "slo.json", slo_json(kZoo).dump(2));
  Controller serve(options, nullptr);
  serve.prepare();
  EXPECT_EQ(serve.status().evidence_reserve_bytes, 0);
  EXPECT_GT(serve.initial_kv_blocks(), roomy.initial_kv_blocks());
}

TEST(ControllerFaults, SloEditIsAppliedWholeOrNotAtAll) {
  helios::testing::ScratchDir dir("controller_slo");
  // Applying an edit with a latency objective fails the first time (memory ran out, say).
  auto failures = std::make_shared<std::atomic<int>>(0);
  Served served(dir.path(), kZoo, nullptr, [failures](const SloConfig& next) {
    if (next.objective == Objective::kLatency && failures->fetch_add(1) == 0) {
      throw std::bad_alloc();
    }
  });
  const double threshold = served.engine().exit_threshold();
  ASSERT_EQ(threshold, 0.3);
  json next = slo_json(kZoo);
  next["objective"] = "latency";
  next["early_exit"]["threshold"] = 0.2;
  next["controller"]["breach_window_tokens"] = 50;
  next["controller"]["breach_max"] = 40;
  const std::string full = next.dump(2);

  // Half written: the old SLO stays, the rejection is counted and the reason kept.
  replace(served.slo_file(), full.substr(0, full.size() / 2));
  ControllerStatus status =
      served.wait_for([](const ControllerStatus& s) { return s.reloads_rejected >= 1; });
  EXPECT_EQ(status.slo.objective, Objective::kThroughput);
  EXPECT_FALSE(status.last_reload_error.empty());

  // Complete, but applying it fails part way: none of it is in force.
  replace(served.slo_file(), full);
  status = served.wait_for([](const ControllerStatus& s) {
    return s.last_reload_error.find("applying it failed") != std::string::npos;
  });
  EXPECT_EQ(status.reloads_applied, 0);
  EXPECT_EQ(status.slo.objective, Objective::kThroughput);
  EXPECT_EQ(status.slo.breach_window_tokens, 100);
  EXPECT_EQ(served.engine().exit_threshold(), threshold);
  EXPECT_EQ(sample(served.registry(), "helios_config_reloads_total{result=\"applied\"}"), "0");

  // The same file written again (an editor saving once more) is applied whole.
  replace(served.slo_file(), full + "\n");
  status = served.wait_for([](const ControllerStatus& s) { return s.reloads_applied >= 1; });
  EXPECT_EQ(status.slo.objective, Objective::kLatency);
  EXPECT_EQ(status.slo.breach_window_tokens, 50);
  EXPECT_EQ(served.engine().exit_threshold(), 0.2);
  EXPECT_TRUE(status.last_reload_error.empty());
  EXPECT_EQ(served.generate("after"), engine::Finish::kLength);
}

}  // namespace
}  // namespace helios::controller
