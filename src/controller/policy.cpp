#include "helios/controller/policy.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "helios/common/exception_message.h"
#include "helios/common/error.h"
#include "helios/engine/memory_plan.h"

namespace helios::controller {
namespace {

namespace fs = std::filesystem;

// Feasible first, then the objective's score, then throughput, then the name (a stable order
// for equal figures).
bool better(const Option& a, const Option& b) {
  if (a.feasible != b.feasible) return a.feasible;
  if (a.score != b.score) return a.score > b.score;
  if (a.tokens_per_second != b.tokens_per_second) return a.tokens_per_second > b.tokens_per_second;
  return a.model < b.model;
}

// The first violated constraint of `o`, or "" when it meets them all.
std::string first_violation(const Option& o, const SloConfig& slo) {
  if (o.kv_sequences < 1) {
    return fmt::format("memory: {} weight bytes leave {} KV blocks, fewer than one full-context "
                       "sequence",
                       o.weight_bytes, o.kv_blocks);
  }
  if (!(o.perplexity <= o.perplexity_bound)) {
    return fmt::format("max_perplexity_increase: predicted perplexity {:.3f} > bound {:.3f}",
                       o.perplexity, o.perplexity_bound);
  }
  if (slo.p95_tpot_ms && o.tpot_p95_ms > *slo.p95_tpot_ms) {
    return fmt::format("p95_tpot_ms: predicted {:.2f} > {:.2f}", o.tpot_p95_ms, *slo.p95_tpot_ms);
  }
  if (slo.p95_ttft_ms && o.ttft_p95_ms > *slo.p95_ttft_ms) {
    return fmt::format("p95_ttft_ms: predicted {:.2f} > {:.2f}", o.ttft_p95_ms, *slo.p95_ttft_ms);
  }
  return {};
}

}  // namespace

double objective_score(Objective objective, const Option& option) {
  switch (objective) {
    case Objective::kThroughput: return option.tokens_per_second;
    case Objective::kLatency: return -option.tpot_p95_ms;
    case Objective::kEnergy: return -option.energy_joules_per_token;
  }
  return 0.0;
}

nlohmann::json Option::to_json() const {
  // JSON has no infinity; an unknown perplexity is written as null.
  const auto finite = [](double x) { return std::isfinite(x) ? nlohmann::json(x) : nullptr; };
  return {{"model", model},
          {"depth", depth},
          {"coverage", coverage},
          {"perplexity", finite(perplexity)},
          {"perplexity_bound", finite(perplexity_bound)},
          {"cost_ratio", cost_ratio},
          {"tokens_per_second", tokens_per_second},
          {"tpot_p95_ms", tpot_p95_ms},
          {"ttft_p95_ms", ttft_p95_ms},
          {"energy_joules_per_token", energy_joules_per_token},
          {"weight_bytes", weight_bytes},
          {"kv_blocks", kv_blocks},
          {"kv_sequences", kv_sequences},
          {"feasible", feasible},
          {"infeasible_reason", infeasible_reason},
          {"score", finite(score)}};
}

double token_cost(const ProfileRow& row, int64_t depth) {
  const double run = mean_layers_run(row, depth);
  return 1.0 + run + row.footprint.kv_projection_share * (static_cast<double>(depth) - run);
}

Option evaluate(const ProfileRow& row, int64_t depth, const SloConfig& slo,
                const PolicyLimits& limits, double best_full_perplexity) {
  Option o;
  o.model = row.model;
  o.depth = depth;
  o.coverage = coverage(row, depth);
  o.perplexity = policy_perplexity(row, depth);
  o.perplexity_bound = (1.0 + slo.max_perplexity_increase) * best_full_perplexity;

  const engine::KvCapacity here =
      engine::kv_capacity(row.footprint, depth, limits.memory_budget_bytes, limits.kv_block_size);
  const engine::KvCapacity profiled = engine::kv_capacity(
      row.footprint, row.profiled_layers, limits.memory_budget_bytes, limits.kv_block_size);
  o.weight_bytes = here.weight_bytes;
  o.kv_blocks = here.kv_blocks;
  o.kv_sequences = here.kv_sequences;

  o.cost_ratio = token_cost(row, depth) / token_cost(row, row.profiled_layers);
  o.tpot_p95_ms = row.tpot_p95_ms * o.cost_ratio;
  o.energy_joules_per_token = row.energy_joules_per_token * o.cost_ratio;
  // Prefill runs every loaded layer for every prompt token.
  o.ttft_p95_ms = row.profiled_layers > 0 ? row.ttft_p95_ms * static_cast<double>(depth) /
                                                static_cast<double>(row.profiled_layers)
                                          : row.ttft_p95_ms;
  // Throughput scales with the sequences the pool can hold, up to what the load asks for: a
  // larger pool buys nothing once every request in flight fits.
  const double demand =
      std::max({1.0, row.peak_concurrency, static_cast<double>(limits.max_running)});
  const double capacity_factor =
      std::min(static_cast<double>(here.kv_sequences), demand) /
      std::max(1.0, std::min(static_cast<double>(profiled.kv_sequences), demand));
  o.tokens_per_second = row.decode_tokens_per_second / o.cost_ratio * capacity_factor;

  o.infeasible_reason = first_violation(o, slo);
  o.feasible = o.infeasible_reason.empty();
  o.score = objective_score(slo.objective, o);
  return o;
}

int64_t choose_depth(const ProfileRow& row, const SloConfig& slo, double best_full_perplexity) {
  const double bound = (1.0 + slo.max_perplexity_increase) * best_full_perplexity;
  for (const int32_t d : row.exit_points) {
    if (coverage(row, d) >= slo.load_quantile && policy_perplexity(row, d) <= bound) return d;
  }
  return row.profiled_layers;
}

double best_full_perplexity(const PerformanceTable& table) {
  double best = std::numeric_limits<double>::infinity();
  for (const ProfileRow& row : table.rows()) {
    // Fully loaded with early exit on: the accuracy of the static baseline. The SLO bounds
    // what truncation (and the choice of model) adds to that, not the cost of early exit.
    if (row.prompt_tokens > 0) best = std::min(best, policy_perplexity(row, row.profiled_layers));
  }
  return best;
}

std::optional<std::string> outclassed(const ProfileRow& row, const PerformanceTable& table,
                                      const SloConfig& slo) {
  if (row.evidence_key == 0 || row.prompt_tokens <= 0 || row.evidence_prompts < kScreenMinPrompts) {
    return std::nullopt;
  }
  const ProfileRow* best = nullptr;
  double best_perplexity = std::numeric_limits<double>::infinity();
  for (const ProfileRow& other : table.rows()) {
    if (other.model == row.model || other.evidence_key != row.evidence_key ||
        other.prompt_tokens <= 0) {
      continue;
    }
    const double p = policy_perplexity(other, other.profiled_layers);
    if (p < best_perplexity) best_perplexity = p, best = &other;
  }
  const double own = policy_perplexity(row, row.profiled_layers);
  const double bound = (1.0 + slo.max_perplexity_increase) * best_perplexity;
  if (best == nullptr || !(own > bound)) return std::nullopt;
  return fmt::format("prompt perplexity {:.3f} on the pass's {} shared prompts > bound {:.3f} "
                     "({} scores {:.3f} on them)",
                     own, row.evidence_prompts, bound, best->model, best_perplexity);
}

std::vector<Option> rank_options(const PerformanceTable& table, const SloConfig& slo,
                                 const PolicyLimits& limits) {
  const double best = best_full_perplexity(table);
  std::vector<Option> options;
  for (const ProfileRow& row : table.rows()) {
    options.push_back(evaluate(row, choose_depth(row, slo, best), slo, limits, best));
  }
  std::sort(options.begin(), options.end(), better);
  return options;
}

std::optional<Option> best_option(const PerformanceTable& table, const SloConfig& slo,
                                  const PolicyLimits& limits) {
  std::vector<Option> ranked = rank_options(table, slo, limits);
  if (ranked.empty() || !ranked.front().feasible) return std::nullopt;
  return std::move(ranked.front());
}

std::string_view decision_kind_name(Decision::Kind kind) {
  switch (kind) {
    case Decision::Kind::kKeep: return "keep";
    case Decision::Kind::kExtend: return "extend";
    case Decision::Kind::kSwitch: return "switch";
    case Decision::Kind::kReprofile: return "reprofile";
  }
  return "unknown";
}

double serving_seconds_before_reprofile(double profile_seconds, double max_share) {
  if (!(max_share > 0) || max_share >= 1 || !(profile_seconds > 0)) return 0.0;
  return profile_seconds * (1.0 - max_share) / max_share;
}

Decision decide_on_breach(const PerformanceTable& table, std::string_view current_model,
                          int64_t current_depth, const SloConfig& slo, const PolicyLimits& limits,
                          int64_t now_requests) {
  Decision decision;
  decision.kind = Decision::Kind::kReprofile;
  const ProfileRow* current = table.find(current_model);
  if (current == nullptr) {
    decision.reason = fmt::format("rows stale: no row for the current model {}", current_model);
    return decision;
  }
  if (table.stale(*current, now_requests, slo.reprofile_interval_requests)) {
    decision.reason = fmt::format(
        "rows stale: {} profiled at request {}, now {}, reprofile interval {}", current_model,
        current->profiled_at_request, now_requests, slo.reprofile_interval_requests);
    return decision;
  }
  const double best = best_full_perplexity(table);

  // Extend: the shallowest deeper exit point whose predicted breach share stays well under the
  // trigger (half of it, so the counter does not fire again at once), else the full depth.
  const double breach_share_limit = static_cast<double>(slo.breach_max) /
                                    static_cast<double>(slo.breach_window_tokens) / 2.0;
  std::optional<Option> extend;
  if (current_depth < current->profiled_layers) {
    int64_t depth = current->profiled_layers;
    for (const int32_t d : current->exit_points) {
      if (d > current_depth && 1.0 - coverage(*current, d) <= breach_share_limit) {
        depth = d;
        break;
      }
    }
    extend = evaluate(*current, depth, slo, limits, best);
  }

  std::optional<Option> other;
  for (Option& o : rank_options(table, slo, limits)) {
    if (o.model != current_model && o.feasible) {
      other = std::move(o);
      break;
    }
  }

  const auto describe = [](const std::optional<Option>& o) {
    if (!o) return std::string("none");
    return fmt::format("{}@{} score {:.4g}{}", o->model, o->depth, o->score,
                       o->feasible ? "" : " (infeasible: " + o->infeasible_reason + ")");
  };
  const std::string figures =
      fmt::format("extend {}, predicted breach share {:.3f} (limit {:.3f}); switch {}",
                  describe(extend), extend ? 1.0 - extend->coverage : 0.0, breach_share_limit,
                  describe(other));
  const bool extend_ok = extend && extend->feasible;
  if (extend_ok && (!other || better(*extend, *other))) {
    decision.kind = Decision::Kind::kExtend;
    decision.option = std::move(*extend);
    decision.reason = "extend scores higher: " + figures;
  } else if (other) {
    decision.kind = Decision::Kind::kSwitch;
    decision.option = std::move(*other);
    decision.reason = "switch scores higher: " + figures;
  } else {
    decision.reason = "no feasible option: " + figures;
  }
  return decision;
}

std::vector<Candidate> scan_repository(const fs::path& dir, int64_t element_size,
                                       std::vector<UnavailableModel>* unavailable) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw Error(ErrorCode::kNotFound, "model repository " + dir.string() + " is not a directory");
  }
  std::vector<Candidate> candidates;
  std::vector<UnavailableModel> broken;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir)) {
    // One model folder must not take the others down with it, whatever it throws.
    try {
      if (!entry.is_directory() || !fs::exists(entry.path() / "config.json")) continue;
      Candidate c;
      c.name = entry.path().filename().string();
      c.path = entry.path();
      c.config = model::ModelConfig::from_file(entry.path() / "config.json");
      c.footprint = ModelFootprint::of(c.config, element_size);
      candidates.push_back(std::move(c));
    } catch (const std::exception& e) {
      spdlog::warn("model repository: skipping {}: {}", entry.path().string(), exception_message(e));
      broken.push_back({entry.path().filename().string(), exception_message(e)});
    }
  }
  std::sort(candidates.begin(), candidates.end(),
            [](const Candidate& a, const Candidate& b) { return a.name < b.name; });
  std::sort(broken.begin(), broken.end(),
            [](const UnavailableModel& a, const UnavailableModel& b) { return a.name < b.name; });
  if (unavailable != nullptr) *unavailable = std::move(broken);
  return candidates;
}

std::vector<Candidate> shortlist(std::vector<Candidate> candidates, const SloConfig& slo,
                                 const PolicyLimits& limits) {
  std::erase_if(candidates, [&](const Candidate& c) {
    const bool fits = engine::kv_capacity(c.footprint, c.footprint.total_layers,
                                          limits.memory_budget_bytes, limits.kv_block_size)
                          .kv_sequences >= 1;
    if (!fits) spdlog::info("shortlist: {} does not fit the memory budget at full depth", c.name);
    return !fits;
  });
  const auto compute = [](const Candidate& c) {
    return c.footprint.weight_bytes(c.footprint.total_layers);
  };
  const auto sequences = [&](const Candidate& c) {
    return std::min(engine::kv_capacity(c.footprint, c.footprint.total_layers,
                                        limits.memory_budget_bytes, limits.kv_block_size)
                        .kv_sequences,
                    limits.max_running);
  };
  std::stable_sort(candidates.begin(), candidates.end(),
                   [&](const Candidate& a, const Candidate& b) {
                     if (slo.objective == Objective::kThroughput &&
                         sequences(a) != sequences(b)) {
                       return sequences(a) > sequences(b);
                     }
                     return compute(a) < compute(b);
                   });
  if (static_cast<int64_t>(candidates.size()) > slo.candidates_top_k) {
    candidates.resize(static_cast<size_t>(slo.candidates_top_k));
  }
  return candidates;
}

}  // namespace helios::controller
