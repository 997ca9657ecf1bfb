// The helios binary as a user runs it: exit codes, one-line errors, the perplexity JSON.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/scratch_dir.h"

namespace {

namespace fs = std::filesystem;

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

RunResult run(const std::string& args) {
  const fs::path err_file =
      fs::temp_directory_path() / ("helios_cli_err_" + std::to_string(getpid()));
  const std::string command = std::string(HELIOS_BINARY) + " " + args + " 2>" + err_file.string();
  RunResult result;
  FILE* pipe = popen(command.c_str(), "r");
  std::array<char, 4096> buffer{};
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0)
    result.out.append(buffer.data(), n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(err_file);
  result.err.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  fs::remove(err_file);
  return result;
}

int lines(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

const std::string kModel = std::string(HELIOS_MICRO_ZOO_DIR) + "/prose-micro";

fs::path sample_text() {
  const fs::path path = fs::temp_directory_path() / "helios_cli_text.txt";
  std::ofstream(path) << "The jury said that the city had been charged with the election.\n";
  return path;
}

TEST(Cli, VersionAndHelp) {
  const RunResult version = run("--version");
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_NE(version.out.find("helios "), std::string::npos);
  const RunResult help = run("--help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* command : {"train", "generate", "perplexity", "info", "zoo", "convert"}) {
    EXPECT_NE(help.out.find(command), std::string::npos) << command;
  }
}

TEST(Cli, PerplexityJsonHasOneValuePerExitLayer) {
  const RunResult r = run("perplexity --model " + kModel + " --text " + sample_text().string() +
                          " --threshold 0.5 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto json = nlohmann::json::parse(r.out);
  ASSERT_TRUE(json.contains("exit_layers") && json.contains("perplexity") &&
              json.contains("tokens"));
  EXPECT_EQ(json["exit_layers"].size(), json["perplexity"].size());
  EXPECT_EQ(json["exit_layers"], nlohmann::json({1, 2, 3, 4}));
  EXPECT_EQ(json["tokens"].get<int64_t>(), 64);  // one per byte of the text
  for (const double p : json["perplexity"]) EXPECT_GT(p, 1.0);
}

TEST(Cli, GeneratePrintsTextExitsAndSummary) {
  const RunResult r = run("generate --model " + kModel + " --prompt 'The jury' --max-tokens 12");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("The jury", 0), 0u);
  EXPECT_NE(r.out.find("summary: 12 tokens"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("mean exit layer"), std::string::npos);
}

TEST(Cli, ConvertToShardedBf16KeepsPerplexity) {
  const helios::testing::ScratchDir scratch("helios_cli_bf16");
  const fs::path out = scratch.path() / "model";
  const RunResult convert = run("convert --model " + kModel + " --out " + out.string() +
                                " --dtype bf16 --max-shard-bytes 200000");
  ASSERT_EQ(convert.exit_code, 0) << convert.err;
  EXPECT_TRUE(fs::exists(out / "model.safetensors.index.json"));
  const std::string text = " --text " + sample_text().string() + " --json";
  const auto original = nlohmann::json::parse(run("perplexity --model " + kModel + text).out);
  const auto converted =
      nlohmann::json::parse(run("perplexity --model " + out.string() + text).out);
  const double a = original["perplexity"].back(), b = converted["perplexity"].back();
  EXPECT_NEAR(b, a, 0.02 * a) << "bf16 rounding of the weights moves perplexity by under 2%";
}

TEST(Cli, ConvertToGgufWritesOneFileAndRefusesWhatGgufCannotHold) {
  const helios::testing::ScratchDir scratch("helios_cli_gguf");
  const fs::path out = scratch.path() / "model.gguf";
  const RunResult convert = run("convert --model " + kModel + " --out " + out.string() +
                                " --format gguf");
  ASSERT_EQ(convert.exit_code, 0) << convert.err;
  ASSERT_TRUE(fs::is_regular_file(out));
  std::ifstream in(out, std::ios::binary);
  char magic[4] = {};
  in.read(magic, 4);
  EXPECT_EQ(std::string(magic, 4), "GGUF");
  EXPECT_GT(fs::file_size(out), 100000u);
  const RunResult bf16 = run("convert --model " + kModel + " --out " + out.string() +
                             " --format gguf --dtype bf16");
  EXPECT_NE(bf16.exit_code, 0);
  EXPECT_NE(bf16.err.find("--dtype: GGUF export writes f32 only"), std::string::npos) << bf16.err;
}

TEST(Cli, BadFlagValuesNameTheFlag) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--threshold -1", "--threshold: must be >= 0, got -1"},
      {"--top-p 1.5", "--top-p: must be in (0, 1], got 1.5"},
      {"--top-p 0", "--top-p: must be in (0, 1], got 0"},
      {"--max-tokens 0", "--max-tokens: must be >= 1, got 0"},
      {"--temperature -0.5", "--temperature: must be >= 0, got -0.5"},
      {"--max-layers -2", "--max-layers: must be >= 0, got -2"},
  };
  for (const auto& [flag, message] : cases) {
    const RunResult r = run("generate --model " + kModel + " --prompt x " + flag);
    EXPECT_NE(r.exit_code, 0) << flag;
    EXPECT_EQ(r.err, "helios: error: " + message + "\n") << flag;
  }
}

TEST(Cli, ErrorsAreOneLineOnStderrWithNonZeroExit) {
  const std::vector<std::string> bad = {
      "perplexity --model /nonexistent --text /etc/hostname",
      "perplexity --model " + kModel,  // missing --text
      "generate --model " + kModel + " --prompt x --temperature -1",
      "generate --model " + kModel + " --prompt x --max-tokens 100000",
      "generate --model " + kModel + " --prompt ''",
      "info --model /tmp",  // a directory without config.json
      "frobnicate",
  };
  for (const auto& args : bad) {
    const RunResult r = run(args);
    EXPECT_NE(r.exit_code, 0) << args;
    EXPECT_EQ(lines(r.err), 1) << args << "\n" << r.err;
    EXPECT_EQ(r.err.rfind("helios: error: ", 0), 0u) << r.err;
  }
}

}  // namespace
