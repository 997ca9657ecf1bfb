#include "helios/engine/engine_metrics.h"

#include <algorithm>
#include <cstddef>
#include <vector>

#include "helios/engine/model_instance.h"
#include "helios/engine/sequence.h"
#include "durations.h"

namespace helios::engine {
struct EngineMetrics::Series {
  Series(metrics::Registry& r, const MetricBuckets& b) {
    ttft = &r.histogram("helios_time_to_first_token_seconds",
                        "Time from arrival to the first generated token, by priority class.",
                        b.time_to_first_token, {"priority"});
    inter_token = &r.histogram("helios_inter_token_latency_seconds",
                               "Time between consecutive generated tokens of a request.",
                               b.inter_token)
                       .get();
    e2e = &r.histogram("helios_request_duration_seconds",
                       "End-to-end request latency, arrival to finish.", b.request)
               .get();
    queue = &r.histogram("helios_queue_time_seconds",
                         "Time from arrival to first admission into the batch, by priority "
                         "class.",
                         b.queue, {"priority"});
    batch_size = &r.histogram("helios_batch_size",
                              "Sequences run per engine step (prefill chunks and decodes).",
                              b.batch_size)
                      .get();
    running = &r.gauge("helios_requests_running", "Sequences in the batch.").get();
    waiting = &r.gauge("helios_requests_waiting", "Requests waiting for admission.").get();
    blocks_total = &r.gauge("helios_kv_blocks_capacity", "KV cache blocks in the pool.").get();
    blocks_used = &r.gauge("helios_kv_blocks_used", "KV cache blocks held by sequences.").get();
    usage = &r.gauge("helios_kv_usage_ratio", "Share of KV cache blocks in use (0-1).").get();
    prompt_tokens = &r.counter("helios_prompt_tokens_total", "Prompt tokens admitted.").get();
    generated_tokens = &r.counter("helios_generation_tokens_total", "Tokens generated.").get();
    finished = &r.counter("helios_requests_finished_total", "Requests finished, by reason.",
                          {"reason"});
    exits = &r.counter("helios_token_exits_total",
                       "Generated tokens by the layer they left the network at.",
                       {"model", "layer"});
    greedy_family = &r.counter("helios_greedy_exits_total",
                               "Generated tokens no exit was confident about (left at the last "
                               "loaded layer).",
                               {"model"});
    preemptions = &r.counter("helios_preemptions_total",
                             "Sequences preempted (the KV cache was full, or a more urgent "
                             "request needed their place), by the preempted one's priority "
                             "class.",
                             {"priority"});
    steps = &r.counter("helios_engine_steps_total", "Engine steps run.").get();
    step_seconds = &r.counter("helios_engine_step_seconds_total",
                              "Wall time of engine steps (scheduling, model, sampling, "
                              "streaming).")
                        .get();
    forward_seconds = &r.counter("helios_model_forward_seconds_total",
                                 "Wall time of engine steps spent in the model forward.")
                           .get();
    weight_bytes = &r.gauge("helios_resident_weight_bytes",
                            "Bytes of model weights resident in memory.", {"model"});
    loaded_layers =
        &r.gauge("helios_loaded_layers", "Decoder layers loaded, per model.", {"model"});
    kv_bytes = &r.gauge("helios_kv_cache_bytes", "Bytes of the KV cache pool.").get();
    kv_sequences = &r.gauge("helios_kv_capacity_sequences",
                            "Full-context sequences the KV cache pool holds.")
                       .get();
    faults = &r.counter("helios_engine_faults_total",
                        "Faults the engine contained, by kind: forward (a model forward failed), "
                        "sampling (a row's token could not be sampled), step (an exception "
                        "escaped a step), kv_cache (a KV pool could not be allocated).",
                        {"fault"});
    for (const char* fault : {"forward", "sampling", "step", "kv_cache"}) faults->labels({fault});
    routed_family = &r.counter("helios_routed_requests_total",
                               "Requests the router assigned to each resident model (a set of "
                               "one routes nothing).",
                               {"model"});
    router_seconds = &r.counter("helios_router_seconds_total",
                                "Wall time spent scoring prompts to route them (engine thread).")
                          .get();
    member_kv_blocks = &r.gauge("helios_resident_kv_blocks_capacity",
                                "KV cache blocks in each resident model's pool.", {"model"});
    member_kv_used = &r.gauge("helios_resident_kv_blocks_used",
                              "KV cache blocks held in each resident model's pool.", {"model"});
    member_kv_bytes = &r.gauge("helios_resident_kv_cache_bytes",
                               "Bytes of each resident model's KV cache pool.", {"model"});
    member_running = &r.gauge("helios_resident_requests_running",
                              "Sequences in the batch, per resident model.", {"model"});
    resident_bytes = &r.gauge("helios_resident_memory_bytes",
                              "Weights plus KV cache pools of every resident model.")
                          .get();
    for (const Finish f : {Finish::kStop, Finish::kLength, Finish::kCancelled, Finish::kDeadline,
                           Finish::kError}) {
      finished->labels({std::string(finish_label(f))});
    }
  }

  // The per-model series of a resident member served as `name`.
  struct Member {
    metrics::Counter* greedy = nullptr;
    std::vector<metrics::Counter*> exit_by_layer;  // by exit layer; null where no exit point
    metrics::Counter* routed = nullptr;
  };
  Member bind(const std::string& name, const ModelInstance& model) {
    weight_bytes->labels({name}).set(static_cast<double>(model.resident_bytes()));
    loaded_layers->labels({name}).set(static_cast<double>(model.transformer().loaded_layers()));
    Member member;
    member.greedy = &greedy_family->labels({name});
    member.routed = &routed_family->labels({name});
    member.exit_by_layer.assign(model.transformer().loaded_layers() + 1, nullptr);
    for (const int32_t layer : model.transformer().exit_points()) {
      member.exit_by_layer[layer] = &exits->labels({name, std::to_string(layer)});
    }
    return member;
  }
  // The model served as `name` is no longer resident (counters keep their totals).
  void unbind(const std::string& name) {
    weight_bytes->labels({name}).set(0.0);
    loaded_layers->labels({name}).set(0.0);
    member_kv_blocks->labels({name}).set(0.0);
    member_kv_used->labels({name}).set(0.0);
    member_kv_bytes->labels({name}).set(0.0);
    member_running->labels({name}).set(0.0);
  }

  metrics::Family<metrics::Histogram>*ttft, *queue;
  metrics::Histogram *inter_token, *e2e, *batch_size;
  metrics::Gauge *running, *waiting, *blocks_total, *blocks_used, *usage, *kv_bytes, *kv_sequences;
  metrics::Family<metrics::Counter>* preemptions;
  metrics::Counter *prompt_tokens, *generated_tokens, *steps, *step_seconds,
      *forward_seconds, *router_seconds;
  metrics::Family<metrics::Counter>*finished, *exits, *greedy_family, *faults, *routed_family;
  metrics::Family<metrics::Gauge>*weight_bytes, *loaded_layers, *member_kv_blocks, *member_kv_used,
      *member_kv_bytes, *member_running;
  metrics::Gauge* resident_bytes;
  std::vector<std::string> names;  // of the resident set, index = Sequence::lane
  std::vector<Member> members;     // the same order
};

EngineMetrics::EngineMetrics(metrics::Registry* registry, const MetricBuckets& buckets,
                             TelemetrySink* sink, const std::string& model_name,
                             const ModelInstance& model)
    : sink_(sink) {
  if (registry == nullptr) {
    own_registry_ = std::make_unique<metrics::Registry>();
    registry = own_registry_.get();
  }
  series_ = std::make_unique<Series>(*registry, buckets);
  on_resident({{model_name, &model}});
}

EngineMetrics::~EngineMetrics() = default;

void EngineMetrics::on_resident(const std::vector<ResidentModel>& members) {
  for (const std::string& name : series_->names) {
    const bool stays = std::any_of(members.begin(), members.end(),
                                   [&](const ResidentModel& m) { return m.name == name; });
    if (!stays) series_->unbind(name);
  }
  series_->names.clear();
  series_->members.clear();
  for (const ResidentModel& member : members) {
    series_->names.push_back(member.name);
    series_->members.push_back(series_->bind(member.name, *member.model));
  }
}

void EngineMetrics::on_route(int32_t lane) { series_->members.at(lane).routed->inc(); }

void EngineMetrics::on_router_seconds(double seconds) { series_->router_seconds->inc(seconds); }

void EngineMetrics::begin_step() { step_ = StepTelemetry{}; }

namespace {
std::string priority_label(const Sequence& sequence) {
  return std::to_string(sequence.request->spec().priority);
}
}  // namespace

void EngineMetrics::declare_priorities(int64_t levels) {
  for (int64_t p = 0; p < levels; ++p) {
    const std::string label = std::to_string(p);
    series_->ttft->labels({label});
    series_->queue->labels({label});
    series_->preemptions->labels({label});
  }
}

void EngineMetrics::on_admit(const Sequence& sequence, Clock::time_point now) {
  series_->queue->labels({priority_label(sequence)})
      .observe(seconds_between(sequence.request->arrival(), now));
  series_->prompt_tokens->inc(static_cast<double>(sequence.prompt_length));
}

void EngineMetrics::on_preempt(const std::vector<int32_t>& priorities) {
  for (const int32_t priority : priorities) {
    series_->preemptions->labels({std::to_string(priority)}).inc();
  }
}

void EngineMetrics::on_token(const Sequence& sequence, const model::TokenExit& exit,
                             Clock::time_point now) {
  ++step_.generated;
  if (exit.greedy_exit) ++step_.greedy_exits;
  if (sink_ != nullptr) step_.breaches.push_back(exit.greedy_exit ? 1 : 0);
  series_->generated_tokens->inc();
  const Series::Member& member = series_->members.at(sequence.lane);
  if (metrics::Counter* exits = member.exit_by_layer.at(exit.exit_layer)) exits->inc();
  if (exit.greedy_exit) member.greedy->inc();
  if (sequence.generated == 0) {
    series_->ttft->labels({priority_label(sequence)})
        .observe(seconds_between(sequence.request->arrival(), now));
  } else {
    series_->inter_token->observe(seconds_between(sequence.last_token_at, now));
  }
}

void EngineMetrics::on_step(int64_t batch, const ServedModel& model, int64_t running,
                            int64_t waiting, Clock::time_point start, double forward_seconds) {
  series_->steps->inc();
  series_->batch_size->observe(static_cast<double>(batch));
  series_->forward_seconds->inc(forward_seconds);
  const double seconds = seconds_between(start, Clock::now());
  series_->step_seconds->inc(seconds);
  if (sink_ == nullptr) return;
  step_.model_epoch = model.epoch;
  step_.batch = batch;
  step_.running = running;
  step_.waiting = waiting;
  step_.seconds = seconds;
  step_.forward_seconds = forward_seconds;
  sink_->on_step(step_);
}

namespace {

// The sequence's prompt token ids as prefilled (BOS included).
std::vector<int32_t> prompt_ids(const Sequence& sequence) {
  const auto end = sequence.tokens.begin() +
                   std::min<std::ptrdiff_t>(sequence.prompt_length,
                                            static_cast<std::ptrdiff_t>(sequence.tokens.size()));
  return {sequence.tokens.begin(), end};
}

}  // namespace

void EngineMetrics::on_finish(Sequence& sequence, Finish reason, const ServedModel& model,
                              Clock::time_point now) {
  const Request& request = *sequence.request;
  series_->finished->labels({std::string(finish_label(reason))}).inc();
  series_->e2e->observe(seconds_between(request.arrival(), now));
  if (!sequence.admitted) {
    series_->queue->labels({priority_label(sequence)})
        .observe(seconds_between(request.arrival(), now));
  }
  if (sink_ == nullptr) return;
  RequestTelemetry t;
  t.id = request.spec().id;
  t.priority = sequence.request->spec().priority;
  t.model = model.name;
  t.loaded_layers = model.loaded_layers;
  t.model_epoch = model.epoch;
  t.single_epoch = !sequence.admitted || sequence.admitted_epoch == model.epoch;
  t.finish = reason;
  t.prompt_tokens = sequence.prompt_length;
  t.generated = sequence.generated;
  t.greedy_exits = sequence.greedy_exits;
  t.exit_counts = std::move(sequence.exit_counts);
  t.exit_counts.resize(std::max<size_t>(t.exit_counts.size(), t.loaded_layers + 1), 0);
  // Complete scores only: a prompt whose prefill never finished reports none.
  if (sequence.prompt_scores && !sequence.score_prompt) {
    t.prompt_scores = std::move(sequence.prompt_scores);
    t.prompt_ids = prompt_ids(sequence);
  }
  if (sequence.generated > 0) {
    t.ttft_s = seconds_between(request.arrival(), sequence.first_token_at);
  }
  if (sequence.generated > 1) {
    t.tpot_s = seconds_between(sequence.first_token_at, sequence.last_token_at) /
               static_cast<double>(sequence.generated - 1);
  }
  t.total_s = seconds_between(request.arrival(), now);
  sink_->on_request(std::move(t));
}

void EngineMetrics::on_prompt_scored(const Sequence& sequence, const ServedModel& model,
                                     Clock::time_point now) {
  if (sink_ == nullptr || !sequence.prompt_scores || sequence.admitted_epoch != model.epoch) return;
  PromptTelemetry t;
  t.id = sequence.request->spec().id;
  t.model = model.name;
  t.loaded_layers = model.loaded_layers;
  t.model_epoch = model.epoch;
  t.scores = *sequence.prompt_scores;
  t.ids = prompt_ids(sequence);
  t.wait_s = seconds_between(sequence.request->arrival(), now);
  sink_->on_prompt(std::move(t));
}

void EngineMetrics::on_fault(std::string_view fault) {
  series_->faults->labels({std::string(fault)}).inc();
}

void EngineMetrics::publish(const EngineStats& stats, int64_t waiting) {
  const auto total = static_cast<double>(stats.kv_blocks_total);
  series_->running->set(static_cast<double>(stats.running));
  series_->waiting->set(static_cast<double>(waiting));
  series_->blocks_total->set(total);
  series_->blocks_used->set(static_cast<double>(stats.kv_blocks_used));
  series_->usage->set(total > 0 ? static_cast<double>(stats.kv_blocks_used) / total : 0.0);
  series_->kv_bytes->set(static_cast<double>(stats.kv_cache_bytes));
  series_->kv_sequences->set(static_cast<double>(stats.kv_sequences));
  double resident = 0;
  for (const MemberStats& member : stats.members) {
    series_->member_kv_blocks->labels({member.name}).set(static_cast<double>(member.kv_blocks_total));
    series_->member_kv_used->labels({member.name}).set(static_cast<double>(member.kv_blocks_used));
    series_->member_kv_bytes->labels({member.name}).set(static_cast<double>(member.kv_cache_bytes));
    series_->member_running->labels({member.name}).set(static_cast<double>(member.running));
    resident += static_cast<double>(member.weight_bytes + member.kv_cache_bytes);
  }
  series_->resident_bytes->set(resident);
}

}  // namespace helios::engine
