#include "helios/metrics/registry.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <utility>

#include "helios/common/error.h"

namespace helios::metrics {
namespace {

// Prometheus sample values and `le` labels are parsed with Go's ParseFloat, which takes any
// decimal or exponent form; the spellings below are the ones every client library emits.
void append_value(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else {
    char buf[64];
    std::to_chars_result result;
    // Every integral double below 2^63 converts to int64 exactly, so counts print as "1000000"
    // rather than the "1e+06" the shortest form would choose.
    if (std::trunc(v) == v && std::fabs(v) < 9.2e18) {
      result = std::to_chars(buf, buf + sizeof(buf), static_cast<int64_t>(v));
    } else {
      result = std::to_chars(buf, buf + sizeof(buf), v);  // shortest round-trip
    }
    out.append(buf, result.ptr);
  }
}

void append_escaped(std::string& out, std::string_view text, bool quote) {
  for (const char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quote) {  // HELP text keeps quotes as they are
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

// `name{a="x",b="y"}`, with an optional trailing `le` for histogram buckets; the braces are left
// out when there are no labels at all.
void append_series(std::string& out, const std::string& name, std::string_view suffix,
                   const std::vector<std::string>& label_names,
                   const std::vector<std::string>& values, const char* le = nullptr) {
  out += name;
  out += suffix;
  if (label_names.empty() && le == nullptr) return;
  out += '{';
  for (size_t i = 0; i < label_names.size(); ++i) {
    if (i > 0) out += ',';
    out += label_names[i];
    out += "=\"";
    append_escaped(out, values[i], /*quote=*/true);
    out += '"';
  }
  if (le != nullptr) {
    if (!label_names.empty()) out += ',';
    out += "le=\"";
    out += le;
    out += '"';
  }
  out += '}';
}

void append_header(std::string& out, const FamilyBase& family, std::string_view type) {
  out += "# HELP ";
  out += family.name();
  out += ' ';
  append_escaped(out, family.help(), /*quote=*/false);
  out += "\n# TYPE ";
  out += family.name();
  out += ' ';
  out += type;
  out += '\n';
}

template <typename Metric>
struct MetricTraits;
template <>
struct MetricTraits<Counter> {
  static constexpr std::string_view kType = "counter";
};
template <>
struct MetricTraits<Gauge> {
  static constexpr std::string_view kType = "gauge";
};
template <>
struct MetricTraits<Histogram> {
  static constexpr std::string_view kType = "histogram";
};

bool is_metric_name(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

bool is_label_name(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

// std::atomic<double>::fetch_add is C++20 but is a compare-exchange loop underneath anyway;
// spelling it out keeps the memory order visible and works with every standard library.
void atomic_add(std::atomic<double>& target, double amount) {
  double current = target.load(std::memory_order_relaxed);
  while (!target.compare_exchange_weak(current, current + amount, std::memory_order_relaxed)) {
  }
}

}  // namespace

std::string format_value(double v) {
  std::string out;
  append_value(out, v);
  return out;
}

void Counter::inc(double amount) {
  if (!(amount >= 0)) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("counter increment must be non-negative, got {}", amount));
  }
  atomic_add(value_, amount);
}

void Gauge::inc(double amount) {
  atomic_add(value_, amount);
}

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)) {
  validate_buckets(bounds_, "bounds");
  buckets_ = std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1);
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::observe(double v) {
  // Bucket i counts bounds[i-1] < v <= bounds[i]. NaN compares false with every bound, so it
  // lands in +Inf (and poisons the sum), which is what the Prometheus clients do too.
  const size_t bucket =
      std::isnan(v) ? bounds_.size()
                    : static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) -
                                          bounds_.begin());
  atomic_add(sum_, v);
  buckets_[bucket].fetch_add(1, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot snap;
  snap.cumulative.resize(bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    snap.cumulative[i] = running;
  }
  // Derived from the buckets rather than kept apart, so _count always equals the +Inf bucket
  // even while observations race with the snapshot.
  snap.count = running;
  snap.sum = sum_.load(std::memory_order_relaxed);
  return snap;
}

template <typename Metric>
Family<Metric>::Family(std::string name, std::string help, std::vector<std::string> label_names,
                       std::function<std::unique_ptr<Metric>()> make)
    : FamilyBase(std::move(name), std::move(help), std::move(label_names)), make_(std::move(make)) {
  // An unlabelled metric exists from registration on, so it is exported (as 0) before its first
  // update and a dashboard can tell "nothing happened" from "not exported".
  if (this->label_names().empty()) labels({});
}

template <typename Metric>
Metric& Family<Metric>::labels(const std::vector<std::string>& values) {
  if (values.size() != label_names().size()) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("metric {}: {} label values given for {} labels ({})", name(),
                            values.size(), label_names().size(), fmt::join(label_names(), ", ")));
  }
  std::lock_guard lock(mutex_);
  const auto found = index_.find(values);
  if (found != index_.end()) return *found->second;
  children_.push_back(Child{values, make_()});
  Metric* metric = children_.back().metric.get();
  index_.emplace(values, metric);
  return *metric;
}

template <typename Metric>
Metric& Family<Metric>::get() {
  if (!label_names().empty()) {
    throw Error(ErrorCode::kInvalidArgument, fmt::format("metric {} has labels ({}); use labels()",
                                                         name(), fmt::join(label_names(), ", ")));
  }
  return labels({});
}

template <typename Metric>
void Family<Metric>::render(std::string& out) const {
  append_header(out, *this, MetricTraits<Metric>::kType);
  std::lock_guard lock(mutex_);
  for (const Child& child : children_) {
    if constexpr (std::is_same_v<Metric, Histogram>) {
      const Histogram::Snapshot snap = child.metric->snapshot();
      const std::vector<double>& bounds = child.metric->bounds();
      for (size_t i = 0; i < snap.cumulative.size(); ++i) {
        const std::string le = i < bounds.size() ? format_value(bounds[i]) : "+Inf";
        append_series(out, name(), "_bucket", label_names(), child.values, le.c_str());
        out += ' ';
        append_value(out, static_cast<double>(snap.cumulative[i]));
        out += '\n';
      }
      append_series(out, name(), "_sum", label_names(), child.values);
      out += ' ';
      append_value(out, snap.sum);
      out += '\n';
      append_series(out, name(), "_count", label_names(), child.values);
      out += ' ';
      append_value(out, static_cast<double>(snap.count));
      out += '\n';
    } else {
      append_series(out, name(), "", label_names(), child.values);
      out += ' ';
      append_value(out, child.metric->value());
      out += '\n';
    }
  }
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

void Registry::check_new_family(const std::string& name,
                                const std::vector<std::string>& label_names, bool histogram) {
  if (!is_metric_name(name)) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("metric name \"{}\" must match [a-zA-Z_:][a-zA-Z0-9_:]*", name));
  }
  for (size_t i = 0; i < label_names.size(); ++i) {
    const std::string& label = label_names[i];
    if (!is_label_name(label)) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("metric {}: label name \"{}\" must match [a-zA-Z_][a-zA-Z0-9_]*",
                              name, label));
    }
    if (label.starts_with("__")) {
      throw Error(
          ErrorCode::kInvalidArgument,
          fmt::format("metric {}: label name \"{}\" is reserved (starts with __)", name, label));
    }
    if (histogram && label == "le") {
      throw Error(
          ErrorCode::kInvalidArgument,
          fmt::format("metric {}: label name \"le\" is reserved for histogram buckets", name));
    }
    if (std::find(label_names.begin(), label_names.begin() + i, label) != label_names.begin() + i) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("metric {}: label name \"{}\" appears twice", name, label));
    }
  }
  std::vector<std::string> samples{name};
  if (histogram) {
    for (const char* suffix : {"_bucket", "_sum", "_count"}) samples.push_back(name + suffix);
  }
  // Caller holds mutex_.
  for (const std::string& sample : samples) {
    const auto owner = sample_names_.find(sample);
    if (owner == sample_names_.end()) continue;
    throw Error(ErrorCode::kInvalidArgument,
                owner->second == name
                    ? fmt::format("metric {} is already registered", name)
                    : fmt::format("metric {} clashes with {}, which already exports {}", name,
                                  owner->second, sample));
  }
  for (const std::string& sample : samples) sample_names_.emplace(sample, name);
}

template <typename Metric>
Family<Metric>& Registry::add(std::unique_ptr<Family<Metric>> family) {
  Family<Metric>& ref = *family;
  families_.push_back(std::move(family));
  return ref;
}

Family<Counter>& Registry::counter(const std::string& name, const std::string& help,
                                   std::vector<std::string> label_names) {
  std::lock_guard lock(mutex_);
  check_new_family(name, label_names, /*histogram=*/false);
  return add(std::unique_ptr<Family<Counter>>(new Family<Counter>(
      name, help, std::move(label_names), [] { return std::make_unique<Counter>(); })));
}

Family<Gauge>& Registry::gauge(const std::string& name, const std::string& help,
                               std::vector<std::string> label_names) {
  std::lock_guard lock(mutex_);
  check_new_family(name, label_names, /*histogram=*/false);
  return add(std::unique_ptr<Family<Gauge>>(new Family<Gauge>(
      name, help, std::move(label_names), [] { return std::make_unique<Gauge>(); })));
}

Family<Histogram>& Registry::histogram(const std::string& name, const std::string& help,
                                       std::vector<double> buckets,
                                       std::vector<std::string> label_names) {
  try {
    validate_buckets(buckets, "buckets");
  } catch (const Error& e) {
    throw Error(e.code(), fmt::format("metric {}: {}", name, e.what()));
  }
  std::lock_guard lock(mutex_);
  check_new_family(name, label_names, /*histogram=*/true);
  return add(std::unique_ptr<Family<Histogram>>(
      new Family<Histogram>(name, help, std::move(label_names),
                            [buckets] { return std::make_unique<Histogram>(buckets); })));
}

Family<Counter>* Registry::find_counter(const std::string& name) {
  std::lock_guard lock(mutex_);
  for (const auto& family : families_) {
    if (family->name() == name) return dynamic_cast<Family<Counter>*>(family.get());
  }
  return nullptr;
}

void Registry::on_collect(std::function<void()> hook) {
  std::lock_guard lock(mutex_);
  hooks_.push_back(std::move(hook));
}

std::string Registry::render() {
  std::lock_guard render_lock(render_mutex_);
  std::vector<std::function<void()>> hooks;
  {
    std::lock_guard lock(mutex_);
    hooks = hooks_;
  }
  // Outside mutex_, so a hook may create children or even register families.
  for (const auto& hook : hooks) hook();

  std::vector<const FamilyBase*> families;
  {
    std::lock_guard lock(mutex_);
    families.reserve(families_.size());
    for (const auto& family : families_) families.push_back(family.get());
  }
  std::string out;
  for (const FamilyBase* family : families) family->render(out);
  return out;
}

void validate_buckets(const std::vector<double>& bounds, std::string_view field) {
  if (bounds.empty()) {
    throw Error(ErrorCode::kInvalidArgument, fmt::format("{}: bounds must not be empty", field));
  }
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (!std::isfinite(bounds[i])) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("{}: bounds must be finite (+Inf is implicit), got {} at index {}",
                              field, format_value(bounds[i]), i));
    }
    if (i > 0 && !(bounds[i] > bounds[i - 1])) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("{}: bounds must be strictly increasing, got {} after {}", field,
                              format_value(bounds[i]), format_value(bounds[i - 1])));
    }
  }
}

std::vector<double> exponential_buckets(double start, double factor, int count) {
  if (!(start > 0) || !std::isfinite(start) || !(factor > 1) || !std::isfinite(factor) ||
      count < 1) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("exponential buckets need start > 0, factor > 1 and count >= 1; got "
                            "start {}, factor {}, count {}",
                            start, factor, count));
  }
  std::vector<double> bounds;
  bounds.reserve(count);
  double bound = start;
  for (int i = 0; i < count; ++i) {
    // Rounded to 15 significant digits so that 0.001 * 10 * 10 is exported as le="0.1" rather
    // than le="0.10000000000000002"; the products stay strictly increasing for any factor > 1
    // that is not within 1e-15 of 1.
    double rounded = bound;
    const std::string text = fmt::format("{:.15g}", bound);
    std::from_chars(text.data(), text.data() + text.size(), rounded);
    bounds.push_back(rounded);
    bound *= factor;
  }
  validate_buckets(bounds, "exponential buckets");
  return bounds;
}

}  // namespace helios::metrics
