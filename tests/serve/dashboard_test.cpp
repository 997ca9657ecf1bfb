// The operator files in configs/ against the real daemon: every metric and label the Grafana
// dashboard (configs/grafana/helios-dashboard.json) queries is one helios exports, every query
// evaluates on a Prometheus server scraping the daemon, and promtool accepts the example scrape
// config (configs/prometheus.yml).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cctype>
#include <cstdlib>
#include <cstring>
#include <future>
#include <map>
#include <optional>
#include <regex>
#include <set>

#include "common/run_command.h"
#include "serve/daemon_process.h"
#include "serve/prometheus_server.h"

namespace helios::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

const std::filesystem::path kDashboard =
    std::filesystem::path(HELIOS_SOURCE_DIR) / "configs" / "grafana" / "helios-dashboard.json";
const std::filesystem::path kScrapeConfig =
    std::filesystem::path(HELIOS_SOURCE_DIR) / "configs" / "prometheus.yml";

// ------------------------------------------------------------------------------------------
// The dashboard's queries.

struct Query {
  enum class Source { kPanel, kVariable, kAnnotation };
  Source source;
  std::string where;  // "panel 'Time to first token' A", "variable $instance", ...
  std::string expr;
};

json load_dashboard() {
  return json::parse(read_file(kDashboard));
}

// Every panel, rows' nested panels (collapsed rows keep theirs inside) included.
void collect_panels(const json& panels, std::vector<json>& out) {
  for (const json& panel : panels) {
    out.push_back(panel);
    if (panel.contains("panels")) collect_panels(panel["panels"], out);
  }
}

std::vector<json> all_panels(const json& dashboard) {
  std::vector<json> out;
  collect_panels(dashboard.at("panels"), out);
  return out;
}

// A query variable's query: a string in older dashboards, {"query": ...} in newer ones.
std::string variable_query(const json& variable) {
  const json& query = variable.at("query");
  return query.is_string() ? query.get<std::string>() : query.at("query").get<std::string>();
}

std::vector<Query> dashboard_queries(const json& dashboard) {
  std::vector<Query> queries;
  for (const json& panel : all_panels(dashboard)) {
    for (const json& target : panel.value("targets", json::array())) {
      queries.push_back({Query::Source::kPanel,
                         "panel '" + panel.value("title", "") + "' " + target.value("refId", ""),
                         target.value("expr", "")});
    }
  }
  for (const json& variable : dashboard.at("templating").at("list")) {
    if (variable.value("type", "") != "query") continue;
    queries.push_back({Query::Source::kVariable, "variable $" + variable.value("name", ""),
                       variable_query(variable)});
  }
  for (const json& annotation : dashboard.at("annotations").at("list")) {
    if (!annotation.contains("expr")) continue;
    queries.push_back({Query::Source::kAnnotation,
                       "annotation '" + annotation.value("name", "") + "'",
                       annotation["expr"].get<std::string>()});
  }
  return queries;
}

// ------------------------------------------------------------------------------------------
// A PromQL scanner: enough of the language to tell which metrics a query reads and which labels
// it needs on each.

struct Token {
  enum class Kind { kIdent, kString, kNumber, kVariable, kPunct };
  Kind kind;
  std::string text;
};

bool ident_char(char c, bool first) {
  const auto u = static_cast<unsigned char>(c);
  return std::isalpha(u) || c == '_' || c == ':' || (!first && std::isdigit(u));
}

std::vector<Token> tokenize(const std::string& expr) {
  std::vector<Token> tokens;
  const size_t n = expr.size();
  size_t i = 0;
  while (i < n) {
    const char c = expr[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
    } else if (c == '"' || c == '\'' || c == '`') {
      std::string text;
      size_t j = i + 1;
      while (j < n && expr[j] != c) {
        if (expr[j] == '\\' && c != '`' && j + 1 < n) ++j;
        text += expr[j++];
      }
      tokens.push_back({Token::Kind::kString, text});
      i = j + 1;
    } else if (c == '$') {  // a Grafana variable: $name or ${name} or ${name:format}
      size_t j = i + 1;
      if (j < n && expr[j] == '{') {
        const size_t close = expr.find('}', j);
        j = close == std::string::npos ? n : close + 1;
      } else {
        while (j < n && ident_char(expr[j], false)) ++j;
      }
      tokens.push_back({Token::Kind::kVariable, expr.substr(i, j - i)});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c)) || c == '.') {
      size_t j = i;
      while (j < n && (std::isalnum(static_cast<unsigned char>(expr[j])) || expr[j] == '.')) ++j;
      tokens.push_back({Token::Kind::kNumber, expr.substr(i, j - i)});
      i = j;
    } else if (ident_char(c, true)) {
      size_t j = i;
      while (j < n && ident_char(expr[j], false)) ++j;
      tokens.push_back({Token::Kind::kIdent, expr.substr(i, j - i)});
      i = j;
    } else {
      tokens.push_back({Token::Kind::kPunct, std::string(1, c)});
      ++i;
    }
  }
  return tokens;
}

// Metric name -> the labels a query needs on it: its selector's matchers, the `by` / `without`
// labels of the aggregations around it, the `on` / `ignoring` / `group_left` / `group_right`
// labels of the vector matches in its parenthesised group, and the label of Grafana's
// `label_values(selector, label)`. instance and job are left out: Prometheus attaches them to
// every scraped series. Throws std::runtime_error on unbalanced brackets.
using Requirements = std::map<std::string, std::set<std::string>>;

Requirements required_labels(const std::string& expr) {
  const std::vector<Token> t = tokenize(expr);
  const size_t n = t.size();
  constexpr size_t kNone = std::string::npos;
  auto is = [&](size_t i, const char* text) { return i < n && t[i].text == text; };

  // The closing bracket of every opening one, and the parenthesis enclosing every token.
  std::vector<size_t> match(n, kNone), enclosing(n, kNone);
  std::vector<size_t> open;
  for (size_t i = 0; i < n; ++i) {
    for (size_t k = open.size(); k-- > 0;) {
      if (t[open[k]].text == "(") {
        enclosing[i] = open[k];
        break;
      }
    }
    if (t[i].kind != Token::Kind::kPunct) continue;
    const std::string& s = t[i].text;
    if (s == "(" || s == "{" || s == "[") {
      open.push_back(i);
    } else if (s == ")" || s == "}" || s == "]") {
      const char* expected = s == ")" ? "(" : s == "}" ? "{" : "[";
      if (open.empty() || t[open.back()].text != expected) {
        throw std::runtime_error("unbalanced '" + s + "' in: " + expr);
      }
      match[open.back()] = i;
      open.pop_back();
    }
  }
  if (!open.empty()) throw std::runtime_error("unclosed '" + t[open.back()].text + "' in: " + expr);

  Requirements required;
  std::vector<size_t> metrics;  // token positions of metric names
  for (size_t i = 0; i < n; ++i) {
    if (t[i].kind != Token::Kind::kIdent || !t[i].text.starts_with("helios_") || is(i + 1, "(")) {
      continue;
    }
    metrics.push_back(i);
    std::set<std::string>& labels = required[t[i].text];
    if (is(i + 1, "{")) {  // matchers: the identifier after '{' or ','
      for (size_t k = i + 2; k < match[i + 1]; ++k) {
        if (t[k].kind == Token::Kind::kIdent && (is(k - 1, "{") || is(k - 1, ","))) {
          labels.insert(t[k].text);
        }
      }
    }
  }
  // The identifiers of a "(a, b)" list opening at `at`.
  auto label_list = [&](size_t at) {
    std::vector<std::string> labels;
    for (size_t k = at + 1; k < match[at]; ++k) {
      if (t[k].kind == Token::Kind::kIdent) labels.push_back(t[k].text);
    }
    return labels;
  };
  // Adds `labels` to every metric strictly between the tokens `from` and `to`.
  auto require = [&](size_t from, size_t to, const std::vector<std::string>& labels) {
    for (const size_t m : metrics) {
      if ((from == kNone || m > from) && (to == kNone || m < to)) {
        required[t[m].text].insert(labels.begin(), labels.end());
      }
    }
  };

  static const std::set<std::string> kAggregations = {
      "sum",    "avg",  "min",     "max",      "count",        "group",  "stddev",
      "stdvar", "topk", "bottomk", "quantile", "count_values", "limitk", "limit_ratio"};
  static const std::set<std::string> kMatching = {"on", "ignoring", "group_left", "group_right"};
  for (size_t i = 0; i < n; ++i) {
    if (t[i].kind != Token::Kind::kIdent) continue;
    if (kAggregations.contains(t[i].text)) {
      // sum by (a) (body)  or  sum (body) by (a)
      size_t j = i + 1;
      std::vector<std::string> labels;
      if ((is(j, "by") || is(j, "without")) && is(j + 1, "(")) {
        labels = label_list(j + 1);
        j = match[j + 1] + 1;
      }
      if (!is(j, "(")) continue;
      const size_t body_end = match[j];
      if (labels.empty() && (is(body_end + 1, "by") || is(body_end + 1, "without")) &&
          is(body_end + 2, "(")) {
        labels = label_list(body_end + 2);
      }
      require(j, body_end, labels);
    } else if (kMatching.contains(t[i].text) && is(i + 1, "(")) {
      // Both operands: every metric in the group the binary operation sits in.
      const size_t group = enclosing[i];
      require(group, group == kNone ? kNone : match[group], label_list(i + 1));
    } else if (t[i].text == "label_values" && is(i + 1, "(")) {
      // label_values(selector, label): the last top-level comma separates the label.
      size_t comma = kNone;
      for (size_t k = i + 2; k < match[i + 1]; ++k) {
        if (is(k, ",") && enclosing[k] == i + 1) comma = k;
      }
      if (comma != kNone && comma + 1 < match[i + 1]) {
        require(i + 1, comma, {t[comma + 1].text});
      }
    }
  }
  for (auto& [metric, labels] : required) {
    labels.erase("instance");
    labels.erase("job");
  }
  return required;
}

// ------------------------------------------------------------------------------------------
// What a scrape of /metrics exports.

struct Exposition {
  std::map<std::string, std::string> types;             // family -> type, from # TYPE lines
  std::map<std::string, std::set<std::string>> labels;  // sample name -> label names seen on it

  // The family that exports series `name`: the name itself for counters and gauges, the name
  // less _bucket, _sum or _count for histograms; nullopt when no family does.
  std::optional<std::string> family_of(const std::string& name) const {
    const auto found = types.find(name);
    if (found != types.end()) {
      if (found->second == "histogram") return std::nullopt;  // only its suffixed series exist
      return name;
    }
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      if (!name.ends_with(suffix)) continue;
      const std::string base = name.substr(0, name.size() - std::strlen(suffix));
      const auto histogram = types.find(base);
      if (histogram != types.end() && histogram->second == "histogram") return base;
    }
    return std::nullopt;
  }
};

Exposition parse_exposition(const std::string& text) {
  Exposition scraped;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line.starts_with("# TYPE ")) {
      std::istringstream fields(line.substr(7));
      std::string name, type;
      fields >> name >> type;
      scraped.types[name] = type;
      continue;
    }
    if (line[0] == '#') continue;
    const size_t name_end = line.find_first_of("{ ");
    const std::string name = line.substr(0, name_end);
    std::set<std::string>& labels = scraped.labels[name];
    if (name_end == std::string::npos || line[name_end] != '{') continue;
    // name{a="x",b="y\"z"} value
    size_t i = name_end + 1;
    while (i < line.size() && line[i] != '}') {
      const size_t eq = line.find('=', i);
      if (eq == std::string::npos) break;
      labels.insert(line.substr(i, eq - i));
      i = eq + 2;  // past ="
      while (i < line.size() && line[i] != '"') i += line[i] == '\\' ? 2 : 1;
      ++i;  // past the closing quote
      if (i < line.size() && line[i] == ',') ++i;
    }
  }
  return scraped;
}

// What `required` asks of the scrape that it lacks, one line each; empty when all is there.
std::vector<std::string> missing(const Exposition& scraped, const Requirements& required) {
  std::vector<std::string> problems;
  for (const auto& [metric, labels] : required) {
    const std::optional<std::string> family = scraped.family_of(metric);
    if (!family) {
      problems.push_back(metric +
                         " is not a series helios exports (no such family, or a "
                         "histogram without _bucket/_sum/_count)");
      continue;
    }
    if (scraped.types.at(*family) == "histogram" && !scraped.labels.contains(*family + "_bucket")) {
      problems.push_back(*family + " is a histogram without _bucket series");
    }
    const auto seen = scraped.labels.find(metric);
    for (const std::string& label : labels) {
      if (seen != scraped.labels.end() && seen->second.contains(label)) continue;
      std::string have;
      if (seen != scraped.labels.end()) {
        for (const std::string& l : seen->second) have += (have.empty() ? "" : ", ") + l;
      }
      problems.push_back(metric + " has no label '" + label + "' (" +
                         (seen == scraped.labels.end() ? std::string("no series in the scrape")
                                                       : "its labels: " + have) +
                         ")");
    }
  }
  return problems;
}

// ------------------------------------------------------------------------------------------
// A helios-policy daemon on the micro zoo, driven so that every family has a series.

json slo_for_test() {
  return {
      {"objective", "throughput"},
      {"early_exit", {{"threshold", 0.3}, {"load_quantile", 0.7}}},
      {"controller",
       {{"candidates_top_k", 3}, {"profile_requests", 2}, {"reprofile_interval_requests", 0}}},
      {"model_repository", kMicroZoo},
  };
}

class HeliosDaemon {
 public:
  HeliosDaemon() {
    const auto slo_path = dir_.path() / "slo.json";
    std::ofstream(slo_path) << "// dashboard test SLO\n" << slo_for_test().dump(2);
    daemon_.emplace(json{
        {"grpc", {{"address", "127.0.0.1:0"}}},
        {"http", {{"host", "127.0.0.1"}, {"port", 0}}},
        {"openai", {{"port", 0}}},
        {"memory", {{"budget_mib", 4}, {"kv_block_size", 16}}},
        {"scheduler", {{"max_running_requests", 32}, {"max_batch_tokens", 512}}},
        {"controller", {{"policy", "helios"}, {"slo_file", slo_path.string()}}},
        {"logging", {{"level", "info"}}},
    });
  }
  DaemonProcess& operator*() { return *daemon_; }
  DaemonProcess* operator->() { return &*daemon_; }

 private:
  ScratchDir dir_{"dashboard"};
  std::optional<DaemonProcess> daemon_;
};

void pin(const DaemonProcess& daemon, const std::string& model, uint32_t layers) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + 30s);
  v1::PinModelRequest request;
  request.set_model(model);
  request.set_layers(layers);
  v1::PinModelResponse response;
  const grpc::Status status = daemon.admin()->PinModel(&context, request, &response);
  ASSERT_TRUE(status.ok()) << "pin " << model << " at " << layers << ": " << status.error_message();
}

// Streams in parallel (batches form), a rejected call (helios_requests_rejected_total{code}),
// a completion through the OpenAI-compatible API (helios_openai_responses_total),
// then pins: code-micro at 2 layers, prose-micro at 2 (a switch whatever was served before:
// helios_model_switches_total, helios_active_model), prose-micro at 3 (a depth change of the
// same model: helios_layer_loads_total), and tokens on the pinned model.
void drive(const DaemonProcess& daemon) {
  for (const StreamResult& r : concurrent_streams(daemon, test_prompts(6), 16)) {
    ASSERT_TRUE(r.status.ok());
  }
  auto stub = daemon.inference();
  ASSERT_EQ(generate(*stub, greedy_request("", 4)).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_NO_FATAL_FAILURE(pin(daemon, "code-micro", 2));
  ASSERT_NO_FATAL_FAILURE(pin(daemon, "prose-micro", 2));
  ASSERT_NO_FATAL_FAILURE(pin(daemon, "prose-micro", 3));
  for (const std::string& prompt : test_prompts(2)) {
    ASSERT_TRUE(generate(*stub, greedy_request(prompt, 8)).status.ok());
  }
  // One completion through the OpenAI-compatible API (helios_openai_responses_total).
  httplib::Client openai("127.0.0.1", daemon.openai_port());
  const auto result = openai.Post(
      "/v1/completions", R"({"model": "prose-micro", "prompt": "The", "max_tokens": 4})",
      "application/json");
  ASSERT_TRUE(result);
  ASSERT_EQ(result->status, 200) << result->body;
}

bool has_tool(const std::string& name) {
  return std::system(("command -v " + name + " > /dev/null 2>&1").c_str()) == 0;
}

// ------------------------------------------------------------------------------------------

TEST(Dashboard, ScannerFindsMetricsAndLabels) {
  EXPECT_EQ(
      required_labels(
          R"(histogram_quantile(0.95, sum by (le) (rate(helios_time_to_first_token_seconds_bucket{instance=~"$instance", model="m"}[$__rate_interval]))))"),
      (Requirements{{"helios_time_to_first_token_seconds_bucket", {"le", "model"}}}));
  EXPECT_EQ(
      required_labels(
          R"(sum(rate(helios_x_total{a!="1",b=~"2"}[5m])) by (c) / on (instance, d) group_left () helios_y)"),
      (Requirements{{"helios_x_total", {"a", "b", "c", "d"}}, {"helios_y", {"d"}}}));
  // An aggregation's labels stay within its parentheses.
  EXPECT_EQ(
      required_labels(
          R"(sum by (source) (rate(helios_e_total[1m])) / scalar(sum(rate(helios_t_total[1m]))))"),
      (Requirements{{"helios_e_total", {"source"}}, {"helios_t_total", {}}}));
  EXPECT_EQ(required_labels(R"(label_values(helios_loaded_layers{instance=~"$instance"}, model))"),
            (Requirements{{"helios_loaded_layers", {"model"}}}));
  // Function names and strings are not metrics.
  EXPECT_EQ(required_labels(R"(helios_f(up{job="helios_not_this"}))"), Requirements{});
  EXPECT_THROW(required_labels("sum(rate(helios_x[1m])"), std::runtime_error);

  const Exposition scraped = parse_exposition(
      "# HELP helios_h_seconds h\n# TYPE helios_h_seconds histogram\n"
      "helios_h_seconds_bucket{le=\"1\"} 1\nhelios_h_seconds_bucket{le=\"+Inf\"} 1\n"
      "helios_h_seconds_sum 0.5\nhelios_h_seconds_count 1\n"
      "# HELP helios_c_total c\n# TYPE helios_c_total counter\n"
      "helios_c_total{reason=\"a\\\"b,c\",code=\"3\"} 2\n"
      "# HELP helios_quiet_total declared, never sampled\n# TYPE helios_quiet_total counter\n");
  EXPECT_EQ(scraped.family_of("helios_h_seconds_bucket"), "helios_h_seconds");
  EXPECT_EQ(scraped.family_of("helios_h_seconds_count"), "helios_h_seconds");
  EXPECT_EQ(scraped.family_of("helios_h_seconds"), std::nullopt);
  EXPECT_EQ(scraped.family_of("helios_c_total"), "helios_c_total");
  EXPECT_EQ(scraped.labels.at("helios_c_total"), (std::set<std::string>{"code", "reason"}));
  EXPECT_THAT(missing(scraped, required_labels("sum by (reason, code) (rate(helios_c_total[1m])) + "
                                               "sum by (le) (rate(helios_h_seconds_bucket[1m]))")),
              IsEmpty());
  EXPECT_THAT(missing(scraped, required_labels("rate(helios_not_a_metric[1m])")),
              ElementsAre(HasSubstr("helios_not_a_metric is not a series")));
  EXPECT_THAT(missing(scraped, required_labels("sum by (model) (rate(helios_c_total[1m]))")),
              ElementsAre(HasSubstr("helios_c_total has no label 'model'")));
  EXPECT_THAT(missing(scraped, required_labels("helios_h_seconds")),
              ElementsAre(HasSubstr("helios_h_seconds is not a series")));
  // A declared family with no series yet exists, but its labels cannot be checked.
  EXPECT_THAT(missing(scraped, required_labels("rate(helios_quiet_total[1m])")), IsEmpty());
  EXPECT_THAT(missing(scraped, required_labels("sum by (reason) (rate(helios_quiet_total[1m]))")),
              ElementsAre(HasSubstr("no series in the scrape")));
}

TEST(Dashboard, PanelsAreWellFormed) {
  const json dashboard = load_dashboard();
  EXPECT_FALSE(dashboard.value("title", "").empty());
  EXPECT_FALSE(dashboard.value("uid", "").empty());
  EXPECT_GE(dashboard.value("schemaVersion", 0), 36);

  // One data source variable; everything Prometheus refers to it.
  std::vector<json> datasource_variables;
  std::set<std::string> variables;
  for (const json& variable : dashboard.at("templating").at("list")) {
    variables.insert(variable.at("name").get<std::string>());
    if (variable.value("type", "") == "datasource") datasource_variables.push_back(variable);
  }
  ASSERT_EQ(datasource_variables.size(), 1u);
  EXPECT_EQ(datasource_variables[0].value("query", ""), "prometheus");
  const json datasource = {
      {"type", "prometheus"},
      {"uid", "${" + datasource_variables[0]["name"].get<std::string>() + "}"}};
  EXPECT_TRUE(variables.contains("instance"));
  EXPECT_TRUE(variables.contains("model"));
  for (const json& variable : dashboard["templating"]["list"]) {
    if (variable.value("type", "") != "query") continue;
    EXPECT_EQ(variable.value("datasource", json()), datasource) << variable.dump();
    if (variable["name"] == "instance") {
      EXPECT_EQ(variable_query(variable), "label_values(helios_requests_running, instance)");
    }
  }
  for (const json& annotation : dashboard.at("annotations").at("list")) {
    if (annotation.contains("expr")) {
      EXPECT_EQ(annotation.value("datasource", json()), datasource) << annotation.dump();
    }
  }

  std::set<int> ids;
  std::vector<std::pair<std::string, json>> boxes;
  int queries = 0;
  for (const json& panel : all_panels(dashboard)) {
    const std::string title = panel.value("title", "");
    EXPECT_FALSE(title.empty()) << panel.dump();
    EXPECT_TRUE(ids.insert(panel.value("id", -1)).second) << "id repeated: " << title;
    ASSERT_TRUE(panel.contains("gridPos")) << title;
    const json& pos = panel["gridPos"];
    for (const char* key : {"h", "w", "x", "y"}) {
      ASSERT_TRUE(pos.contains(key) && pos[key].is_number_integer())
          << title << ": gridPos." << key;
    }
    EXPECT_GT(pos["w"].get<int>(), 0) << title;
    EXPECT_GT(pos["h"].get<int>(), 0) << title;
    EXPECT_GE(pos["x"].get<int>(), 0) << title;
    EXPECT_LE(pos["x"].get<int>() + pos["w"].get<int>(), 24) << title << " is wider than the grid";
    boxes.emplace_back(title, pos);
    if (panel.value("type", "") == "row") continue;
    EXPECT_EQ(panel.value("datasource", json()), datasource) << title;
    ASSERT_TRUE(panel.contains("targets") && !panel["targets"].empty()) << title << ": no target";
    std::set<std::string> ref_ids;
    for (const json& target : panel["targets"]) {
      EXPECT_FALSE(target.value("expr", "").empty()) << title;
      EXPECT_TRUE(ref_ids.insert(target.value("refId", "")).second) << title << ": refId repeated";
      if (target.contains("datasource")) EXPECT_EQ(target["datasource"], datasource) << title;
      ++queries;
    }
  }
  // Panels do not overlap (Grafana would move them on import).
  for (size_t a = 0; a < boxes.size(); ++a) {
    for (size_t b = a + 1; b < boxes.size(); ++b) {
      const json &p = boxes[a].second, &q = boxes[b].second;
      const bool apart = p["x"].get<int>() + p["w"].get<int>() <= q["x"].get<int>() ||
                         q["x"].get<int>() + q["w"].get<int>() <= p["x"].get<int>() ||
                         p["y"].get<int>() + p["h"].get<int>() <= q["y"].get<int>() ||
                         q["y"].get<int>() + q["h"].get<int>() <= p["y"].get<int>();
      EXPECT_TRUE(apart) << "'" << boxes[a].first << "' overlaps '" << boxes[b].first << "'";
    }
  }
  EXPECT_GE(queries, 30);
}

TEST(Dashboard, QueriesOnlyMetricsAndLabelsTheDaemonExports) {
  const std::vector<Query> queries = dashboard_queries(load_dashboard());
  HeliosDaemon daemon;
  ASSERT_TRUE(daemon->wait_ready());

  // Families are declared at start-up, and the registry prints # HELP / # TYPE for each from
  // then on; a labelled family has no series until its first child (helios_active_model,
  // helios_model_switches_total, helios_layer_loads_total and helios_requests_rejected_total
  // have none before traffic). So the families come from # TYPE lines, the labels from series,
  // which drive() gives every labelled family.
  const Exposition idle = parse_exposition(scrape(*daemon));
  ASSERT_NO_FATAL_FAILURE(drive(*daemon));
  const std::string text = scrape(*daemon);
  const Exposition scraped = parse_exposition(text);
  ASSERT_GE(scraped.types.size(), 30u) << text;
  std::vector<std::string> declared_late;
  for (const auto& [family, type] : scraped.types) {
    if (!idle.types.contains(family)) declared_late.push_back(family);
  }
  EXPECT_THAT(declared_late, IsEmpty()) << "families declared only after traffic";

  std::vector<std::string> problems;
  std::set<std::string> queried;
  for (const Query& query : queries) {
    Requirements required;
    try {
      required = required_labels(query.expr);
    } catch (const std::runtime_error& e) {
      problems.push_back(query.where + ": " + e.what());
      continue;
    }
    if (required.empty())
      problems.push_back(query.where + " reads no helios metric: " + query.expr);
    for (const std::string& problem : missing(scraped, required)) {
      problems.push_back(query.where + ": " + problem + "\n    " + query.expr);
    }
    for (const auto& [metric, labels] : required) {
      if (const auto family = scraped.family_of(metric)) queried.insert(*family);
    }
  }
  std::string report;
  for (const std::string& p : problems) report += p + "\n";
  EXPECT_TRUE(problems.empty()) << report;

  // Every family the daemon exports is on the dashboard.
  for (const auto& [family, type] : scraped.types) {
    EXPECT_TRUE(queried.contains(family)) << family << " (" << type << ") is on no panel";
  }
  // The same check reports what is not there, against this scrape.
  EXPECT_THAT(missing(scraped, required_labels("rate(helios_not_a_metric[5m])")),
              ElementsAre(HasSubstr("helios_not_a_metric is not a series")));
  EXPECT_THAT(
      missing(scraped, required_labels("sum by (flavour) (rate(helios_model_switches_total[5m]))")),
      ElementsAre(HasSubstr("no label 'flavour'")));
  std::printf("dashboard: %zu queries over %zu families; the daemon exports %zu families\n",
              queries.size(), queried.size(), scraped.types.size());
  EXPECT_EQ(daemon->stop(), 0) << daemon->log();
}

// Grafana's variables as a dashboard showing everything would expand them.
std::string expand(std::string expr) {
  for (const auto& [variable, value] :
       std::vector<std::pair<std::string, std::string>>{{"$__rate_interval", "1m"},
                                                        {"$__range", "1m"},
                                                        {"$__interval", "1m"},
                                                        {"$instance", ".*"},
                                                        {"$model", ".*"}}) {
    for (size_t at = expr.find(variable); at != std::string::npos; at = expr.find(variable, at)) {
      expr.replace(at, variable.size(), value);
    }
  }
  // label_values(selector, label) is Grafana's, not PromQL: ask for the label's values.
  static const std::regex kLabelValues(
      R"(^\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$)");
  std::smatch m;
  if (std::regex_match(expr, m, kLabelValues)) {
    expr = "group by (" + m[2].str() + ") (" + m[1].str() + ")";
  }
  return expr;
}

TEST(Dashboard, PrometheusEvaluatesEveryQuery) {
  if (!has_tool("prometheus")) GTEST_SKIP() << "prometheus not found (Debian package prometheus)";
  const std::vector<Query> queries = dashboard_queries(load_dashboard());
  HeliosDaemon daemon;
  ASSERT_TRUE(daemon->wait_ready());
  ASSERT_NO_FATAL_FAILURE(drive(*daemon));

  PrometheusServer prometheus(daemon->http_port());
  ASSERT_TRUE(prometheus.started()) << prometheus.start_output();

  httplib::Client client = prometheus.client();
  auto query = [&client](const std::string& expr) -> json {
    const auto response = client.Post("/api/v1/query", httplib::Params{{"query", expr}});
    if (!response) return json();
    return json::parse(response->body, nullptr, false);
  };
  // Three scrapes, so that rates over them have two points and more.
  bool scraped = false;
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (!scraped && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(250ms);
    const json answer = query(R"(count_over_time(up{job="helios"}[1m]) >= 3)");
    scraped = answer.is_object() && answer.value("status", "") == "success" &&
              !answer["data"]["result"].empty();
  }
  std::vector<std::string> problems;
  if (scraped) {
    for (const Query& q : queries) {
      const std::string expr = expand(q.expr);
      if (expr.find('$') != std::string::npos) {
        problems.push_back(q.where + ": a variable the test does not expand: " + expr);
        continue;
      }
      const json answer = query(expr);
      if (!answer.is_object() || answer.value("status", "") != "success") {
        problems.push_back(q.where + ": " + (answer.is_object() ? answer.dump() : "no answer") +
                           "\n    " + expr);
      } else if (q.source != Query::Source::kAnnotation && answer["data"]["result"].empty()) {
        // Annotations filter on events (> 0); the rest shows a series once helios serves.
        problems.push_back(q.where + ": no data\n    " + expr);
      }
    }
  }
  const std::string prometheus_log = prometheus.log();
  prometheus.stop();
  ASSERT_TRUE(scraped) << "no three scrapes of the daemon in 60 s; prometheus log:\n"
                       << prometheus_log;
  std::string report;
  for (const std::string& p : problems) report += p + "\n";
  EXPECT_TRUE(problems.empty()) << report;
  EXPECT_EQ(daemon->stop(), 0) << daemon->log();
}

TEST(Dashboard, PromtoolAcceptsTheScrapeConfig) {
  if (!has_tool("promtool")) GTEST_SKIP() << "promtool not found (Debian package prometheus)";
  const CommandResult result =
      run_command("promtool check config '" + kScrapeConfig.string() + "'");
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_THAT(result.output, HasSubstr("SUCCESS")) << result.output;
}

}  // namespace
}  // namespace helios::testing
