// Pieces the bench tools share: errors that end a tool with one line, UTF-8 checks, word-boundary
// text slices, Prometheus scraping and percentile summaries. Only the standard library, fmt,
// httplib, nlohmann/json and helios/common/cli_errors.h: the tools talk to helios over the wire
// and do not link helios_core.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "helios/common/cli_errors.h"

namespace helios::bench {

using Clock = std::chrono::steady_clock;

// Raised for anything that should end the program with one line on stderr and exit status 1.
struct Fatal : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A bad combination of flags: one line on stderr and exit status 2 (helios::run_cli).
using helios::UsageError;

bool valid_utf8(std::string_view s);
bool is_space(char c);
std::string read_file(const std::filesystem::path& path);  // Fatal naming the path on failure

// Random slices of one text that start and end at word boundaries and are valid UTF-8 (what
// the server accepts as a prompt). `what` names the source in errors.
class TextSlicer {
 public:
  TextSlicer(std::string text, std::string what);
  const std::string& text() const { return text_; }
  // At most max_bytes (and, where the text allows, at least min_bytes); Fatal when no valid
  // slice turns up in 1000 tries.
  std::string slice(std::mt19937_64& rng, size_t max_bytes, size_t min_bytes = 1) const;

 private:
  std::string text_;
  std::string what_;
};

struct MetricsEndpoint {
  std::string scheme_host_port;
  std::string path;
};
MetricsEndpoint parse_metrics_url(const std::string& url);  // UsageError naming --metrics-url

// Prometheus text exposition: `name{labels} value [timestamp]` or `name value [timestamp]`.
struct MetricSamples {
  std::map<std::string, double> by_name;    // summed over each name's label sets
  std::map<std::string, double> by_series;  // "name{labels}" exactly as exposed -> value
  std::optional<double> delta_since(const MetricSamples& before, const std::string& name) const;
};
MetricSamples parse_prometheus(const std::string& body);
MetricSamples fetch_metrics(const MetricsEndpoint& endpoint);  // Fatal when unreachable

struct Summary {
  std::optional<double> mean, p50, p95, p99;
};
// Nearest rank: the smallest sample with at least p% of the samples at or below it.
double percentile(const std::vector<double>& sorted, size_t p);
Summary summarize(std::vector<double> samples);
nlohmann::json to_json(const std::optional<double>& v);
nlohmann::json to_json(const Summary& s);

double ms(Clock::duration d);

}  // namespace helios::bench
