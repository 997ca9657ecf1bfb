// Resident sets, pinned by an operator or chosen by a pass's decision (resident_policy.h):
// several candidates loaded at once, each to its depth with its own KV pool inside the one
// memory budget, and every request routed to one of them by the engine's router.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "helios/common/error.h"
#include "helios/controller/controller.h"
#include "helios/engine/memory_plan.h"
#include "helios/engine/serving_engine.h"
#include "controller_internal.h"

namespace helios::controller {

DecisionRecord Controller::pin_set(std::vector<ResidentTarget> targets) {
  return run_command<DecisionRecord>([this, targets] {
    if (targets.size() < 2 || targets.size() > kMaxResidentModels) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("set: a resident set holds 2 to {} models, got {} (pin one model "
                              "with PinModelRequest.model)",
                              kMaxResidentModels, targets.size()));
    }
    std::vector<SetTarget> members;
    for (const ResidentTarget& target : targets) {
      const Candidate* candidate = find_candidate(target.model);
      if (candidate == nullptr) {
        throw Error(ErrorCode::kNotFound, "set.model: no candidate named '" + target.model +
                                              "' in " + slo_.model_repository.string());
      }
      for (const SetTarget& m : members) {
        if (m.candidate == candidate) {
          throw Error(ErrorCode::kInvalidArgument,
                      "set.model: '" + target.model + "' is in the set twice");
        }
      }
      const int64_t total = candidate->config.num_hidden_layers;
      if (target.layers < 0 || target.layers > total) {
        throw Error(ErrorCode::kInvalidArgument,
                    fmt::format("set.layers: must be in [0, {}] for {}, got {}", total,
                                target.model, target.layers));
      }
      int64_t depth = target.layers;
      if (depth == 0) {
        const ProfileRow* row = table_.find(target.model);
        depth = row != nullptr ? choose_depth(*row, slo_, best_full_perplexity(table_)) : total;
      }
      members.push_back({candidate, depth, 1.0});
    }
    const std::string from = current_name_;
    const int64_t from_layers = current_->transformer().loaded_layers();
    nlohmann::json figures = serve_set(members);
    resident_choice_.reset();  // pinned: the breach counter does not act
    const engine::EngineStats after = engine_->stats();
    DecisionRecord decision{.kind = DecisionRecord::Kind::kPin,
                            .trigger = DecisionRecord::Trigger::kOperator,
                            .from_model = from,
                            .from_layers = from_layers,
                            .to_model = served_name(),
                            .to_layers = members.front().depth,
                            .reason = fmt::format("resident set of {} models pinned by an operator; "
                                                  "{:.2f} MiB of weights and KV cache",
                                                  members.size(),
                                                  (after.weight_bytes + after.kv_cache_bytes) /
                                                      1048576.0),
                            .figures = {{"resident", std::move(figures)}}};
    enter_pinned(decision);
    return decision;
  });
}

nlohmann::json Controller::serve_set(const std::vector<SetTarget>& members) {
  // The plan first, from the footprints: a set that cannot fit changes nothing.
  const int64_t budget = limits().memory_budget_bytes;
  const int64_t block = options_.kv_block_size;
  std::vector<engine::SetMemberFootprint> plan;
  for (const SetTarget& m : members) {
    plan.push_back({m.candidate->footprint, m.depth, m.candidate->footprint.weight_bytes(m.depth),
                    m.share});
  }
  engine::kv_blocks_for_set(plan, budget, block, "memory.budget_mib");

  // Room for the loads: what serves now keeps one full-context sequence per model while the
  // set's weights are read (the old weights are freed when the engine takes the new set).
  shrink_resident_pools();
  std::vector<std::shared_ptr<const engine::ModelInstance>> loaded;
  const engine::EngineStats serving = engine_->stats();
  int64_t loading_peak = serving.weight_bytes + serving.kv_cache_bytes;
  for (const SetTarget& m : members) {
    loaded.push_back(load(*m.candidate, m.depth));
    loading_peak += loaded.back()->resident_bytes();
  }
  // The pools from what the loads really hold.
  for (size_t i = 0; i < plan.size(); ++i) plan[i].weight_bytes = loaded[i]->resident_bytes();
  const std::vector<int64_t> blocks =
      engine::kv_blocks_for_set(plan, budget, block, "memory.budget_mib");
  std::vector<engine::ResidentMember> set;
  for (size_t i = 0; i < members.size(); ++i) {
    set.push_back({loaded[i], members[i].candidate->name, blocks[i]});
  }
  engine_->set_resident(set).get();
  const engine::EngineStats after = engine_->stats();
  if (loading_peak > budget) {
    spdlog::warn("controller: loading the resident set next to the models serving held "
                 "{:.2f} MiB, over the budget of {:.2f} MiB",
                 loading_peak / 1048576.0, budget / 1048576.0);
  }
  peak_memory_bytes_ =
      std::max({peak_memory_bytes_, loading_peak, after.weight_bytes + after.kv_cache_bytes});
  if (metrics_) {
    for (const std::string& name : resident_names_) metrics_->active->labels({name}).set(0);
    metrics_->active->labels({current_name_}).set(0);
    for (const SetTarget& m : members) metrics_->active->labels({m.candidate->name}).set(1);
    metrics_->peak_memory->set(static_cast<double>(peak_memory_bytes_));
  }
  current_ = loaded.front();
  current_name_ = members.front().candidate->name;
  epoch_ = after.model_epoch;
  resident_names_.clear();
  nlohmann::json figures = nlohmann::json::array();
  for (size_t i = 0; i < members.size(); ++i) {
    resident_names_.push_back(members[i].candidate->name);
    figures.push_back({{"model", members[i].candidate->name},
                       {"layers", members[i].depth},
                       {"weight_bytes", after.members.at(i).weight_bytes},
                       {"kv_blocks", after.members.at(i).kv_blocks_total},
                       {"kv_cache_bytes", after.members.at(i).kv_cache_bytes},
                       {"kv_sequences", after.members.at(i).kv_sequences}});
  }
  return figures;
}

void Controller::apply_set(const SetOption& set, DecisionRecord::Trigger trigger,
                           const std::string& reason, nlohmann::json figures,
                           std::optional<GateResult> gate) {
  std::vector<SetTarget> members;
  for (const SetMember& m : set.members) {
    const Candidate* candidate = find_candidate(m.model);
    if (candidate == nullptr) {
      throw Error(ErrorCode::kNotFound, "model: no candidate named '" + m.model + "'");
    }
    members.push_back({candidate, m.depth, std::max(m.share, 1e-3)});
  }
  const std::string from = served_name();
  const int64_t from_layers = current_->transformer().loaded_layers();
  figures["resident"] = serve_set(members);
  resident_choice_ = set;
  resident_routed_base_.clear();
  for (const engine::MemberStats& m : engine_->stats().members) {
    resident_routed_base_.push_back(m.routed);
  }
  // Sets are chosen without latency bounds (resident_policy.h): the pools limit the batch.
  set_max_batch(options_.max_running);
  record(DecisionRecord{.kind = DecisionRecord::Kind::kResident,
                        .trigger = trigger,
                        .from_model = from,
                        .from_layers = from_layers,
                        .to_model = served_name(),
                        .to_layers = set.members.front().depth,
                        .max_batch = max_batch_,
                        .reason = reason,
                        .figures = std::move(figures),
                        .gate = std::move(gate)});
  spdlog::info("controller: serving the resident set {} ({})", set.name(), reason);
  phase_ = Phase::kServing;
  engine_->set_prompt_sampling(slo_.monitor_sample_rate);
  reset_windows();
  breaches_.reset();
}

std::string Controller::served_name() const {
  return resident_names_.empty() ? current_name_
                                 : fmt::format("{}", fmt::join(resident_names_, "+"));
}

void Controller::shrink_resident_pools() {
  const auto models = engine_->resident_models();
  const engine::EngineStats stats = engine_->stats();
  std::vector<engine::ResidentMember> smaller;
  bool shrinks = false;
  for (size_t i = 0; i < models.size() && i < stats.members.size(); ++i) {
    const int64_t one_sequence =
        engine::ModelFootprint::of(models[i]->transformer()).sequence_blocks(options_.kv_block_size);
    shrinks = shrinks || stats.members[i].kv_blocks_total > one_sequence;
    smaller.push_back({models[i], stats.members[i].name,
                       std::min(one_sequence, stats.members[i].kv_blocks_total)});
  }
  if (shrinks) engine_->set_resident(smaller).get();
}

void Controller::collapse_resident_set() {
  if (resident_names_.empty()) return;
  // First the other members leave (their pools and weights are freed), then the one model
  // left gets the budget's pool.
  const engine::EngineStats stats = engine_->stats();
  engine_->set_resident({{current_, current_name_, stats.members.front().kv_blocks_total}}).get();
  if (metrics_) {
    for (const std::string& name : resident_names_) {
      if (name != current_name_) metrics_->active->labels({name}).set(0);
    }
  }
  resident_names_.clear();
  resident_choice_.reset();
  engine_->resize_kv(engine::kv_blocks_for_budget(*current_, limits().memory_budget_bytes,
                                                  options_.kv_block_size, "memory.budget_mib"))
      .get();
  epoch_ = engine_->stats().model_epoch;
  spdlog::info("controller: the resident set is released; {} serves alone", current_name_);
}

}  // namespace helios::controller
