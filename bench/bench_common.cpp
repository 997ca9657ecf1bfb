#include "bench_common.h"

#include <fmt/format.h>
#include <httplib.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace helios::bench {

namespace fs = std::filesystem;

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t extra = 0;
    uint32_t min = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1, min = 0x80, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2, min = 0x800, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3, min = 0x10000, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + extra >= s.size()) return false;  // truncated sequence
    for (size_t k = 1; k <= extra; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, UTF-16 surrogates and code points past U+10FFFF are not valid UTF-8, and
    // protobuf rejects such a string field on the server.
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += extra + 1;
  }
  return true;
}

bool is_space(char c) {
  return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Fatal(fmt::format("cannot read {}: {}", path.string(), std::strerror(errno)));
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) throw Fatal(fmt::format("cannot read {}", path.string()));
  return out.str();
}

TextSlicer::TextSlicer(std::string text, std::string what)
    : text_(std::move(text)), what_(std::move(what)) {
  if (std::all_of(text_.begin(), text_.end(), is_space)) {
    throw Fatal(fmt::format("{}: no text", what_));
  }
}

std::string TextSlicer::slice(std::mt19937_64& rng, size_t max_bytes, size_t min_bytes) const {
  std::uniform_int_distribution<size_t> pick(0, text_.size() - 1);
  std::string fallback;
  for (int attempt = 0; attempt < 1000; ++attempt) {
    size_t begin = pick(rng);
    // Start at the beginning of a word: skip the rest of the word we landed in. A start
    // right after ASCII whitespace is also always a code point boundary.
    if (begin > 0 && !is_space(text_[begin - 1])) {
      while (begin < text_.size() && !is_space(text_[begin])) ++begin;
    }
    while (begin < text_.size() && is_space(text_[begin])) ++begin;
    if (begin >= text_.size()) continue;
    size_t end = std::min(text_.size(), begin + max_bytes);
    // End at a word boundary too, so no word (nor a multi-byte character) is cut.
    if (end < text_.size() && !is_space(text_[end])) {
      while (end > begin && !is_space(text_[end - 1])) --end;
    }
    while (end > begin && is_space(text_[end - 1])) --end;
    if (end == begin) continue;
    std::string slice = text_.substr(begin, end - begin);
    if (!valid_utf8(slice)) continue;
    if (slice.size() >= min_bytes) return slice;
    if (fallback.empty()) fallback = std::move(slice);
  }
  if (!fallback.empty()) return fallback;
  throw Fatal(fmt::format(
      "{}: could not cut a valid UTF-8 slice of at most {} bytes at word boundaries", what_,
      max_bytes));
}

MetricsEndpoint parse_metrics_url(const std::string& url) {
  std::string scheme = "http://";
  // httplib here is built with OpenSSL, so https:// works too.
  if (url.rfind("https://", 0) == 0) scheme = "https://";
  if (url.rfind(scheme, 0) != 0) {
    throw UsageError(fmt::format("--metrics-url {}: not an http:// or https:// URL", url));
  }
  const size_t slash = url.find('/', scheme.size());
  MetricsEndpoint endpoint;
  endpoint.scheme_host_port = url.substr(0, slash);
  endpoint.path = slash == std::string::npos ? "/metrics" : url.substr(slash);
  if (endpoint.scheme_host_port.size() == scheme.size()) {
    throw UsageError(fmt::format("--metrics-url {}: no host", url));
  }
  return endpoint;
}

MetricSamples parse_prometheus(const std::string& body) {
  MetricSamples values;
  std::istringstream lines(body);
  std::string line;
  while (std::getline(lines, line)) {
    size_t i = 0;
    while (i < line.size() && is_space(line[i])) ++i;
    if (i == line.size() || line[i] == '#') continue;
    const size_t name_begin = i;
    while (i < line.size() && line[i] != '{' && !is_space(line[i])) ++i;
    const std::string name = line.substr(name_begin, i - name_begin);
    size_t series_end = i;
    if (i < line.size() && line[i] == '{') {
      // Label values are quoted and may hold '}', spaces and escaped quotes.
      bool quoted = false;
      for (++i; i < line.size(); ++i) {
        if (quoted && line[i] == '\\') {
          ++i;
        } else if (line[i] == '"') {
          quoted = !quoted;
        } else if (!quoted && line[i] == '}') {
          ++i;
          break;
        }
      }
      series_end = i;
    }
    while (i < line.size() && is_space(line[i])) ++i;
    const size_t value_begin = i;
    while (i < line.size() && !is_space(line[i])) ++i;
    const std::string text = line.substr(value_begin, i - value_begin);
    if (name.empty() || text.empty()) continue;
    char* end = nullptr;
    const double value = std::strtod(text.c_str(), &end);
    if (end != text.c_str() + text.size()) continue;  // not a number: skip the line
    values.by_name[name] += value;
    values.by_series[line.substr(name_begin, series_end - name_begin)] = value;
  }
  return values;
}

std::optional<double> MetricSamples::delta_since(const MetricSamples& before,
                                                 const std::string& name) const {
  const auto b = before.by_name.find(name);
  const auto a = by_name.find(name);
  if (b == before.by_name.end() || a == by_name.end()) return std::nullopt;
  return a->second - b->second;
}

MetricSamples fetch_metrics(const MetricsEndpoint& endpoint) {
  httplib::Client client(endpoint.scheme_host_port);
  client.set_connection_timeout(5, 0);
  client.set_read_timeout(5, 0);
  const auto response = client.Get(endpoint.path.c_str());
  if (!response) {
    throw Fatal(fmt::format("cannot fetch {}{}: {}", endpoint.scheme_host_port, endpoint.path,
                            httplib::to_string(response.error())));
  }
  if (response->status != 200) {
    throw Fatal(fmt::format("cannot fetch {}{}: HTTP {}", endpoint.scheme_host_port, endpoint.path,
                            response->status));
  }
  return parse_prometheus(response->body);
}

// Integer arithmetic, since in floating point 95% of 20 can come out as 19.000000000000004 -> rank 20.
double percentile(const std::vector<double>& sorted, size_t p) {
  const size_t rank = std::max<size_t>(1, (p * sorted.size() + 99) / 100);
  return sorted[std::min(rank, sorted.size()) - 1];
}

Summary summarize(std::vector<double> samples) {
  Summary s;
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  double sum = 0.0;
  for (double v : samples) sum += v;
  s.mean = sum / static_cast<double>(samples.size());
  s.p50 = percentile(samples, 50);
  s.p95 = percentile(samples, 95);
  s.p99 = percentile(samples, 99);
  return s;
}

nlohmann::json to_json(const std::optional<double>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

nlohmann::json to_json(const Summary& s) {
  return {{"mean", to_json(s.mean)},
          {"p50", to_json(s.p50)},
          {"p95", to_json(s.p95)},
          {"p99", to_json(s.p99)}};
}

double ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

}  // namespace helios::bench
