// `xcpipe bench strategies` end to end on the tiny fixture checkpoint: two strategies on two
// worker processes, a short mixed workload, the --json report read back and checked for its
// structure, positive figures, identical greedy tokens and a best-per-column marking that
// agrees with the numbers. Also the command's usage and bad-model exit codes.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "xcpipe/base/exit_codes.h"
#include "xcpipe/base/files.h"
#include "xcpipe/base/subprocess.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

struct Outcome {
  int exit_code = -1;
  std::string stdout_text;
};

Outcome RunXcpipe(std::vector<std::string> args, std::chrono::seconds timeout) {
  args.insert(args.begin(), (testing::BinDir() / "xcpipe").string());
  Outcome out;
  auto p = Subprocess::Start(args, {.capture_stdout = true, .silence_stderr = false, .extra_env = {}});
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  if (!p.ok()) return out;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto line = (*p)->ReadLine(1s);
    if (!line.ok()) continue;  // nothing within a second: keep waiting until the deadline
    if (!line->has_value()) break;
    out.stdout_text += **line + "\n";
  }
  auto code = (*p)->Wait(10s);
  EXPECT_TRUE(code.ok()) << "xcpipe did not exit in time";
  if (code.ok()) out.exit_code = *code;
  return out;
}

fs::path FixtureCheckpoint() { return testing::FixturesDir() / "ixc2_vl" / "checkpoint"; }

TEST(BenchStrategiesTest, ReportsEveryStrategyWithIdenticalTokensAndConsistentBest) {
  const fs::path model = FixtureCheckpoint();
  if (!fs::exists(model / "config.json")) GTEST_SKIP() << "no fixture checkpoint at " << model;
  const fs::path out_file = fs::temp_directory_path() / ("xcpipe-bench-strategies-" + std::to_string(getpid()) + ".json");
  const std::vector<std::string> strategies = {"balanced", "even"};
  Outcome run = RunXcpipe({"bench", "strategies", "--model", model.string(), "--workers", "2", "--strategies",
                           "balanced,even", "--requests", "4", "--clients", "2", "--max-new-tokens", "6",
                           "--threads-per-worker", "1,1", "--max-sequences", "4", "--json", "--out",
                           out_file.string()},
                          240s);
  ASSERT_EQ(run.exit_code, 0) << run.stdout_text;
  nlohmann::json report = nlohmann::json::parse(run.stdout_text, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(report.is_discarded()) << "stdout is not JSON:\n" << run.stdout_text;

  // --out holds the same report.
  auto written = ReadFileToString(out_file);
  ASSERT_TRUE(written.ok()) << written.status().ToString();
  EXPECT_EQ(nlohmann::json::parse(*written), report);
  fs::remove(out_file);

  ASSERT_TRUE(report.contains("config"));
  EXPECT_EQ(report["config"]["workers"], 2);
  EXPECT_EQ(report["config"]["threads_per_worker"], nlohmann::json({1, 1}));
  ASSERT_TRUE(report["strategies"].is_array());
  ASSERT_EQ(report["strategies"].size(), strategies.size());
  for (size_t k = 0; k < strategies.size(); ++k) {
    const auto& s = report["strategies"][k];
    SCOPED_TRACE(strategies[k]);
    EXPECT_EQ(s["strategy"], strategies[k]);
    EXPECT_GT(s["tokens"].get<double>(), 0);
    EXPECT_GT(s["wall_s"].get<double>(), 0);
    EXPECT_GT(s["tokens_per_s"].get<double>(), 0);
    EXPECT_NEAR(s["tokens_per_s"].get<double>(), s["tokens"].get<double>() / s["wall_s"].get<double>(), 1e-6);
    EXPECT_GT(s["ttft_p50_ms"].get<double>(), 0);
    EXPECT_GE(s["ttft_p99_ms"].get<double>(), s["ttft_p50_ms"].get<double>());
    EXPECT_GE(s["busy_imbalance"].get<double>(), 1.0 - 1e-9);  // max over mean
    EXPECT_GT(s["bottleneck_predicted_ms"].get<double>(), 0);
    ASSERT_TRUE(s["stages"].is_array());
    ASSERT_EQ(s["stages"].size(), 2u);
    EXPECT_EQ(s["stages_used"], 2);
    double busy_max = 0, busy_sum = 0, predicted_max = 0;
    uint64_t peak_max = 0;
    for (size_t i = 0; i < 2; ++i) {
      const auto& st = s["stages"][i];
      EXPECT_EQ(st["stage"], static_cast<int>(i));
      EXPECT_FALSE(st["blocks"].get<std::string>().empty());
      EXPECT_EQ(st["threads"], 1);
      EXPECT_GT(st["busy_ms"].get<double>(), 0);
      EXPECT_GT(st["predicted_step_ms"].get<double>(), 0);
      EXPECT_GT(st["planned_bytes"].get<uint64_t>(), 0u);
      EXPECT_GT(st["peak_resident_bytes"].get<uint64_t>(), 0u);
      busy_max = std::max(busy_max, st["busy_ms"].get<double>());
      busy_sum += st["busy_ms"].get<double>();
      predicted_max = std::max(predicted_max, st["predicted_step_ms"].get<double>());
      peak_max = std::max(peak_max, st["peak_resident_bytes"].get<uint64_t>());
    }
    // Over every worker of the cluster (here both hold a stage).
    EXPECT_NEAR(s["busy_imbalance"].get<double>(), busy_max / (busy_sum / 2), 1e-6);
    EXPECT_DOUBLE_EQ(s["bottleneck_predicted_ms"].get<double>(), predicted_max);
    EXPECT_EQ(s["peak_resident_max_bytes"].get<uint64_t>(), peak_max);
    ASSERT_EQ(s["request_tokens"].size(), 4u);
    for (const auto& ids : s["request_tokens"]) EXPECT_FALSE(ids.empty());
  }

  // Greedy: the same tokens from every strategy, and the report says so.
  EXPECT_EQ(report["strategies"][0]["request_tokens"], report["strategies"][1]["request_tokens"]);
  EXPECT_EQ(report["tokens_identical"], true);
  EXPECT_TRUE(report["token_mismatches"].empty());

  // The best strategy of each column holds that column's best value.
  const std::vector<std::pair<std::string, bool>> columns = {
      {"tokens_per_s", true},       {"ttft_p50_ms", false},           {"ttft_p99_ms", false},
      {"busy_imbalance", false},    {"bottleneck_predicted_ms", false}, {"peak_resident_max_bytes", false}};
  ASSERT_TRUE(report["best"].is_object());
  EXPECT_EQ(report["best"].size(), columns.size());
  for (const auto& [column, higher_is_better] : columns) {
    SCOPED_TRACE(column);
    ASSERT_TRUE(report["best"].contains(column));
    const std::string winner = report["best"][column];
    double best_value = higher_is_better ? -1e300 : 1e300;
    double winner_value = 0;
    bool found = false;
    for (const auto& s : report["strategies"]) {
      const double v = s[column].get<double>();
      best_value = higher_is_better ? std::max(best_value, v) : std::min(best_value, v);
      if (s["strategy"] == winner) {
        winner_value = v;
        found = true;
      }
    }
    ASSERT_TRUE(found) << "best names '" << winner << "', not a strategy of the run";
    EXPECT_EQ(winner_value, best_value);
  }
}

TEST(BenchStrategiesTest, RefusesBadUsageAndABadModel) {
  const fs::path model = FixtureCheckpoint();
  EXPECT_EQ(RunXcpipe({"bench", "strategies", "--model", model.string(), "--strategies", "fastest"}, 30s).exit_code,
            kExitUsage);
  EXPECT_EQ(RunXcpipe({"bench", "strategies", "--model", model.string(), "--workers", "3", "--threads-per-worker",
                       "1,2"},
                      30s)
                .exit_code,
            kExitUsage);
  EXPECT_EQ(RunXcpipe({"bench", "strategies"}, 30s).exit_code, kExitUsage);  // --model is required
  const fs::path empty = fs::temp_directory_path() / ("xcpipe-bench-no-model-" + std::to_string(getpid()));
  fs::create_directories(empty);
  EXPECT_EQ(RunXcpipe({"bench", "strategies", "--model", empty.string()}, 30s).exit_code, kExitInvalidInput);
  fs::remove_all(empty);
}

}  // namespace
}  // namespace xcpipe
