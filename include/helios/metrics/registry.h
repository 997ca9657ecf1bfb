#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace helios::metrics {

// A monotonically increasing count (requests served, tokens generated). Lock-free: updated from
// the engine's hot loop while the HTTP thread renders.
class Counter {
 public:
  Counter() = default;
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  void inc(double amount = 1.0);  // amount < 0 (or NaN) -> Error kInvalidArgument
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// A value that goes up and down (queue depth, KV blocks in use). Lock-free.
class Gauge {
 public:
  Gauge() = default;
  Gauge(const Gauge&) = delete;
  Gauge& operator=(const Gauge&) = delete;

  void set(double v) { value_.store(v, std::memory_order_relaxed); }
  void inc(double amount = 1.0);
  void dec(double amount = 1.0) { inc(-amount); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Counts observations into buckets given by their upper bounds; +Inf is implicit. Lock-free:
// each observation touches one bucket, the sum and nothing else.
class Histogram {
 public:
  // `bounds` must pass validate_buckets (field "bounds").
  explicit Histogram(std::vector<double> bounds);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  void observe(double v);

  struct Snapshot {
    std::vector<uint64_t> cumulative;  // per bound, then +Inf
    double sum = 0;
    uint64_t count = 0;  // always equals cumulative.back()
  };
  Snapshot snapshot() const;
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  std::vector<double> bounds_;
  // Per-bucket (not cumulative) counts, bounds_.size() + 1 of them; the last is +Inf.
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;
  std::atomic<double> sum_{0.0};
};

class Registry;

// What every family has, whatever its metric type; lets the registry render them in one list.
class FamilyBase {
 public:
  virtual ~FamilyBase() = default;
  FamilyBase(const FamilyBase&) = delete;
  FamilyBase& operator=(const FamilyBase&) = delete;

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<std::string>& label_names() const { return label_names_; }

 protected:
  FamilyBase(std::string name, std::string help, std::vector<std::string> label_names)
      : name_(std::move(name)), help_(std::move(help)), label_names_(std::move(label_names)) {}

 private:
  friend class Registry;
  // Appends this family's # HELP, # TYPE and sample lines.
  virtual void render(std::string& out) const = 0;

  std::string name_;
  std::string help_;
  std::vector<std::string> label_names_;
};

// One metric name with its children, one per distinct combination of label values.
template <typename Metric>
class Family : public FamilyBase {
 public:
  // The child for these label values (in label-name order), created on first use; references
  // stay valid for the registry's lifetime. Wrong number of values -> Error kInvalidArgument.
  // Takes a lock: hot paths should keep the reference rather than look it up per update.
  Metric& labels(const std::vector<std::string>& values);
  Metric& get();  // families without labels; others -> Error kInvalidArgument

 private:
  friend class Registry;
  struct Child {
    std::vector<std::string> values;
    std::unique_ptr<Metric> metric;
  };

  Family(std::string name, std::string help, std::vector<std::string> label_names,
         std::function<std::unique_ptr<Metric>()> make);
  void render(std::string& out) const override;

  std::function<std::unique_ptr<Metric>()> make_;
  mutable std::mutex mutex_;
  std::vector<Child> children_;  // creation order, which is render order
  std::map<std::vector<std::string>, Metric*> index_;
};

// The daemon's metrics, rendered for Prometheus. Families are registered once at startup;
// children are created and updated from any thread while another thread renders.
class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Bad metric or label names, or a name already registered -> Error kInvalidArgument.
  Family<Counter>& counter(const std::string& name, const std::string& help,
                           std::vector<std::string> label_names = {});
  Family<Gauge>& gauge(const std::string& name, const std::string& help,
                       std::vector<std::string> label_names = {});
  // `buckets` must pass validate_buckets (field "buckets"); `le` is not a valid label name here.
  Family<Histogram>& histogram(const std::string& name, const std::string& help,
                               std::vector<double> buckets,
                               std::vector<std::string> label_names = {});

  // The counter family registered as `name`; nullptr when there is none (or it is not a
  // counter). Lets one part of the daemon derive a figure from another's counter (energy per
  // generated token) without either exposing it.
  Family<Counter>* find_counter(const std::string& name);

  // Hooks run (in registration order) at the start of every render(), e.g. to copy live state
  // into gauges. Renders are serialized, so a hook never runs concurrently with itself. Each
  // render runs a copy of the hook: state that must last from one render to the next belongs
  // outside it (e.g. in the metric it updates).
  void on_collect(std::function<void()> hook);

  // Prometheus text exposition format 0.0.4: # HELP / # TYPE per family, families in
  // registration order, children in creation order, histograms as _bucket{le=...}, _sum, _count.
  std::string render();

 private:
  // Checks names and reserves the family's sample names; throws on any conflict.
  void check_new_family(const std::string& name, const std::vector<std::string>& label_names,
                        bool histogram);
  template <typename Metric>
  Family<Metric>& add(std::unique_ptr<Family<Metric>> family);

  std::mutex mutex_;  // guards families_, sample_names_ and hooks_
  std::mutex render_mutex_;
  std::vector<std::unique_ptr<FamilyBase>> families_;
  // Every name a family puts on a sample line (a histogram owns name_bucket, name_sum and
  // name_count), so two families can never emit the same series name.
  std::map<std::string, std::string> sample_names_;  // sample name -> family that owns it
  std::vector<std::function<void()>> hooks_;
};

// Strictly increasing, finite, non-empty bucket bounds, or Error kInvalidArgument whose message
// names `field` (e.g. "metrics.ttft_buckets_seconds: bounds must be strictly increasing").
void validate_buckets(const std::vector<double>& bounds, std::string_view field);

// `count` bounds start, start * factor, start * factor^2, ...; start > 0, factor > 1 and
// count >= 1, else Error kInvalidArgument.
std::vector<double> exponential_buckets(double start, double factor, int count);

// A sample value as Prometheus parses it: integers without an exponent where exact, +Inf,
// -Inf, NaN, otherwise the shortest representation that round-trips.
std::string format_value(double v);

extern template class Family<Counter>;
extern template class Family<Gauge>;
extern template class Family<Histogram>;

}  // namespace helios::metrics
