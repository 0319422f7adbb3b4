// `xcpipe plan` as a user runs it: the real binary, its exit codes, stdout and stderr.
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "xcpipe/testing/paths.h"

namespace xcpipe::planner {
namespace {

namespace fs = std::filesystem;

const std::vector<std::string> kLayouts = {"internlm-xcomposer2-vl-7b.layout.json",
                                           "internlm-xcomposer2-4khd-7b.layout.json",
                                           "internlm-xcomposer2d5-7b.layout.json", "ixc1_7b.layout.json"};
const std::vector<std::string> kGpuClusters = {"cluster-1x80g.toml", "cluster-2x24g.toml", "cluster-4x24g.toml",
                                               "cluster-2hosts-2x24g.toml", "cluster-mixed-48-24.toml"};

struct Result {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string ReadText(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string Quote(const std::string& arg) {
  std::string quoted = "'";
  for (char c : arg) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

fs::path ScratchDir() {
  static std::atomic<int> counter{0};
  fs::path dir =
      fs::temp_directory_path() / ("xcpipe_plan_cli_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
  fs::create_directories(dir);
  return dir;
}

Result RunPlan(const std::vector<std::string>& args) {
  const fs::path binary = xcpipe::testing::BinDir() / "xcpipe";
  EXPECT_TRUE(fs::exists(binary)) << binary << " is not built";
  const fs::path dir = ScratchDir();
  std::string command = Quote(binary.string()) + " plan";
  for (const auto& arg : args) command += " " + Quote(arg);
  command += " >" + Quote((dir / "out").string()) + " 2>" + Quote((dir / "err").string());
  const int status = std::system(command.c_str());
  Result result;
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.out = ReadText(dir / "out");
  result.err = ReadText(dir / "err");
  fs::remove_all(dir);
  return result;
}

std::string Layout(const std::string& name) {
  return (xcpipe::testing::FixturesDir() / "real_layouts" / name).string();
}
std::string Config(const std::string& name) { return (xcpipe::testing::SourceDir() / "configs" / name).string(); }

// Keys of the top-level "device_map" object, duplicates kept (a JSON object parser would
// silently keep one of two equal keys).
std::multiset<std::string> DeviceMapKeys(const std::string& text) {
  std::multiset<std::string> keys;
  std::string top_key;
  nlohmann::json::parser_callback_t callback = [&](int depth, nlohmann::json::parse_event_t event,
                                                   nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key) {
      if (depth == 1) top_key = parsed.get<std::string>();
      if (depth == 2 && top_key == "device_map") keys.insert(parsed.get<std::string>());
    }
    return true;
  };
  const nlohmann::json parsed = nlohmann::json::parse(text, callback);
  (void)parsed;
  return keys;
}

std::set<std::string> LayoutNames(const std::string& layout) {
  std::ifstream in(Layout(layout));
  const nlohmann::json parsed = nlohmann::json::parse(in);
  std::set<std::string> names;
  for (const auto& [name, entry] : parsed.at("parameters").items()) names.insert(name);
  return names;
}

class PlanCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(Layout(kLayouts[0]))) GTEST_SKIP() << "fixtures not found: " << Layout(kLayouts[0]);
  }
};

TEST_F(PlanCli, JsonMapsEveryTensorExactlyOnceAndEveryStageFits) {
  for (const auto& layout : kLayouts) {
    const std::set<std::string> names = LayoutNames(layout);
    for (const auto& cluster : kGpuClusters) {
      const std::string what = layout + " on " + cluster;
      const Result r = RunPlan({"--layout", Layout(layout), "--cluster", Config(cluster), "--json"});
      ASSERT_EQ(r.exit_code, 0) << what << "\n" << r.err;
      const auto keys = DeviceMapKeys(r.out);
      EXPECT_EQ(keys.size(), names.size()) << what;
      for (const auto& name : names) EXPECT_EQ(keys.count(name), 1u) << what << ": " << name;
      for (const auto& key : keys) EXPECT_TRUE(names.count(key)) << what << ": unknown tensor " << key;
      const auto json = nlohmann::json::parse(r.out);
      EXPECT_EQ(json.at("strategy"), "balanced");
      EXPECT_EQ(json.at("feasible"), true) << what;
      const size_t stages = json.at("stages").size();
      ASSERT_GT(stages, 0u);
      double bottleneck = 0;
      for (size_t s = 0; s < stages; ++s) {
        const auto& stage = json["stages"][s];
        EXPECT_EQ(stage.at("index"), s);
        EXPECT_LE(stage.at("predicted_bytes").at("total").get<uint64_t>(), stage.at("capacity_bytes").get<uint64_t>())
            << what << " stage " << s;
        bottleneck = std::max(bottleneck, stage.at("predicted_step_ms").get<double>());
      }
      EXPECT_DOUBLE_EQ(json.at("bottleneck_ms").get<double>(), bottleneck) << what;
      for (const auto& [name, stage] : json.at("device_map").items()) EXPECT_LT(stage.get<size_t>(), stages);
    }
  }
}

TEST_F(PlanCli, InfeasibleExitsThreeSayingByHowMuchWhereAndWhatWouldFit) {
  const Result r = RunPlan({"--layout", Layout(kLayouts[1]), "--cluster", Config("cluster-cpu-3.toml")});
  EXPECT_EQ(r.exit_code, 3) << r.err;
  for (const std::string piece :
       {"does not fit", "over by", "GiB", "stage 0 (localhost cpu:", "usable", "What would make it fit", "  - "}) {
    EXPECT_NE(r.err.find(piece), std::string::npos) << piece << " in:\n" << r.err;
  }
  EXPECT_NE(r.out.find("OVER"), std::string::npos) << r.out;

  // Limits raised by flags: the suggestions name the flags that bring it back.
  const Result big = RunPlan({"--layout", Layout(kLayouts[0]), "--cluster", Config("cluster-2x24g.toml"),
                              "--max-sequences", "64", "--max-context", "16384"});
  EXPECT_EQ(big.exit_code, 3) << big.err;
  EXPECT_NE(big.err.find("--max-context"), std::string::npos) << big.err;
  EXPECT_NE(big.err.find("--max-sequences"), std::string::npos) << big.err;
  EXPECT_NE(big.err.find("more device"), std::string::npos) << big.err;

  // --json still prints the (infeasible) plan for tools, and exits 3.
  const Result json = RunPlan({"--layout", Layout(kLayouts[1]), "--cluster", Config("cluster-cpu-3.toml"), "--json"});
  EXPECT_EQ(json.exit_code, 3);
  EXPECT_EQ(nlohmann::json::parse(json.out).at("feasible"), false);
}

TEST_F(PlanCli, BaselinesAndVisionStageFlags) {
  for (const std::string strategy : {"even", "greedy-memory"}) {
    const Result r = RunPlan(
        {"--layout", Layout(kLayouts[0]), "--cluster", Config("cluster-4x24g.toml"), "--strategy", strategy, "--json"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out).at("strategy"), strategy);
  }
  const Result r = RunPlan({"--layout", Layout(kLayouts[0]), "--cluster", Config("cluster-4x24g.toml"),
                            "--vision-stage", "separate", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["stages"][0]["blocks"], nlohmann::json::array({"vision"}));
}

// The number after "encode ~" on the first line of `text` that names `device`; -1 if none.
double EncodeMsOnLine(const std::string& text, const std::string& device) {
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    const size_t at = line.find("encode ~");
    if (at != std::string::npos && line.find(device) != std::string::npos) return std::stod(line.substr(at + 8));
  }
  return -1;
}

std::string GibText(uint64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return text;
}

TEST_F(PlanCli, VisionStageIsAutoUnlessTheFlagOrTheFileSays) {
  const std::string layout = Layout(kLayouts[1]);
  const Result json = RunPlan({"--layout", layout, "--cluster", Config("cluster-2x24g.toml"), "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  const auto vision = nlohmann::json::parse(json.out).at("vision");
  const std::string reason = vision.at("reason");
  ASSERT_FALSE(reason.empty()) << "auto says why";
  EXPECT_EQ(reason.rfind(vision.at("placement") == "first" ? "vision on stage 0: " : "vision apart: ", 0), 0u)
      << reason;
  const Result table = RunPlan({"--layout", layout, "--cluster", Config("cluster-2x24g.toml")});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_NE(table.out.find("vision   auto chose " + reason + "\n"), std::string::npos) << table.out;
  // The encode time of stage 0, as the JSON has it, and the tower passes of the worst grid.
  const double encode_ms = vision.at("encode_ms_per_image");
  ASSERT_GT(encode_ms, 0);
  const std::string device = nlohmann::json::parse(json.out)["stages"][0]["device"];
  EXPECT_NEAR(EncodeMsOnLine(table.out, device), encode_ms, 0.01 * encode_ms) << table.out;
  EXPECT_NE(
      table.out.find(std::to_string(vision.at("tower_passes").get<int>()) + " tower passes at the worst tile grid)"),
      std::string::npos)
      << table.out;

  // Named by the flag, or by the cluster file: nothing to explain.
  for (const std::string placement : {"first", "separate"}) {
    const Result named =
        RunPlan({"--layout", layout, "--cluster", Config("cluster-4x24g.toml"), "--vision-stage", placement, "--json"});
    ASSERT_EQ(named.exit_code, 0) << named.err;
    EXPECT_EQ(nlohmann::json::parse(named.out)["vision"]["placement"], placement);
    EXPECT_EQ(nlohmann::json::parse(named.out)["vision"]["reason"], "");
  }
  const fs::path dir = ScratchDir();
  std::ofstream(dir / "first.toml") << "[planner]\nvision_stage = \"first\"\n"
                                    << ReadText(Config("cluster-2x24g.toml"));
  const Result from_file = RunPlan({"--layout", layout, "--cluster", (dir / "first.toml").string(), "--json"});
  ASSERT_EQ(from_file.exit_code, 0) << from_file.err;
  EXPECT_EQ(nlohmann::json::parse(from_file.out)["vision"]["reason"], "");
  const Result flag_wins =
      RunPlan({"--layout", layout, "--cluster", (dir / "first.toml").string(), "--vision-stage", "auto", "--json"});
  ASSERT_EQ(flag_wins.exit_code, 0) << flag_wins.err;
  EXPECT_EQ(nlohmann::json::parse(flag_wins.out)["vision"]["reason"], reason);
  EXPECT_EQ(
      RunPlan({"--layout", layout, "--cluster", Config("cluster-2x24g.toml"), "--vision-stage", "middle"}).exit_code,
      2);
  fs::remove_all(dir);
}

TEST_F(PlanCli, PrintsEveryVisionWorkerWithItsMemoryAndEncodeTime) {
  // Three fast devices run the pipeline; a slow one is left over but holds the vision block,
  // and a 1 GiB one does not.
  const fs::path dir = ScratchDir();
  std::string text = "[[hosts]]\nname = \"node-a\"\nintra_host_gbps = 256\n";
  const std::vector<std::string> devices = {
      "memory_gib = 24\ntflops = 165\nmem_bw_gbps = 1008", "memory_gib = 24\ntflops = 165\nmem_bw_gbps = 1008",
      "memory_gib = 24\ntflops = 165\nmem_bw_gbps = 1008", "memory_gib = 16\ntflops = 2\nmem_bw_gbps = 5",
      "memory_gib = 1\ntflops = 2\nmem_bw_gbps = 5"};
  for (size_t d = 0; d < devices.size(); ++d) {
    text += "[[hosts.gpus]]\ndevice = \"cuda:" + std::to_string(d) + "\"\n" + devices[d] + "\n";
  }
  std::ofstream(dir / "spare.toml") << text;
  const std::vector<std::string> args = {
      "--layout", Layout(kLayouts[1]), "--cluster", (dir / "spare.toml").string(), "--vision-stage", "separate"};
  std::vector<std::string> json_args = args;
  json_args.push_back("--json");
  const Result json = RunPlan(json_args);
  const Result table = RunPlan(args);
  fs::remove_all(dir);
  ASSERT_EQ(json.exit_code, 0) << json.err;
  ASSERT_EQ(table.exit_code, 0) << table.err;
  const auto parsed = nlohmann::json::parse(json.out);
  const auto& workers = parsed.at("vision").at("workers");
  ASSERT_GE(workers.size(), 2u) << "stage 0 and the spare device\n" << table.out;
  EXPECT_EQ(workers[0]["device"], parsed["stages"][0]["device"]);
  EXPECT_NE(table.out.find("vision workers"), std::string::npos) << table.out;
  for (const auto& w : workers) {
    const std::string device = w.at("device");
    EXPECT_NE(device, "cuda:4") << "too small for the vision block";
    const double encode_ms = w.at("encode_ms_per_image");
    EXPECT_NEAR(EncodeMsOnLine(table.out, "  " + device + "  "), encode_ms, 0.01 * encode_ms) << device;
    const auto& bytes = w.at("predicted_bytes");
    for (const std::string& piece :
         {"weights " + GibText(bytes.at("weights")) + " GiB",
          "activations " + GibText(bytes.at("activations")) + " GiB",
          "workspace " + GibText(bytes.at("workspace")) + " GiB",
          "total " + GibText(bytes.at("total")) + " / " + GibText(w.at("capacity_bytes")) + " GiB"}) {
      EXPECT_NE(table.out.find(piece), std::string::npos) << piece << " in\n" << table.out;
    }
  }
  // The slow spare device takes longer per image than stage 0's.
  EXPECT_GT(workers[1]["encode_ms_per_image"].get<double>(), workers[0]["encode_ms_per_image"].get<double>());
}

TEST_F(PlanCli, AccelerateDeviceMap) {
  const Result r =
      RunPlan({"--layout", Layout(kLayouts[1]), "--cluster", Config("cluster-2x24g.toml"), "--format", "accelerate"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto map = nlohmann::json::parse(r.out);
  std::set<int> devices;
  for (const auto& [key, device] : map.items()) devices.insert(device.get<int>());
  EXPECT_EQ(devices, (std::set<int>{0, 1}));
  for (const auto& name : LayoutNames(kLayouts[1])) {
    size_t covering = 0;
    for (const auto& [key, device] : map.items()) covering += (name == key || name.rfind(key + ".", 0) == 0);
    EXPECT_EQ(covering, 1u) << name;
  }
  EXPECT_EQ(map.at("plora_glb_GN"), 0) << "the parameters the official recipe forgets";
  EXPECT_EQ(map.at("plora_sub_GN"), 0);
  EXPECT_EQ(map.at("output"), 1);

  const Result hosts = RunPlan(
      {"--layout", Layout(kLayouts[1]), "--cluster", Config("cluster-2hosts-2x24g.toml"), "--format", "accelerate"});
  EXPECT_EQ(hosts.exit_code, 2);
  EXPECT_NE(hosts.err.find("one host"), std::string::npos) << hosts.err;
}

TEST_F(PlanCli, BadClusterFilesNameTheField) {
  const fs::path dir = ScratchDir();
  std::ofstream(dir / "typo.toml") << "[[hosts]]\nname = \"a\"\n[[hosts.gpus]]\ndevice = \"cuda:0\"\n"
                                      "memory_gb = 24\ntflops = 1\nmem_bw_gbps = 1\n";
  Result r = RunPlan({"--layout", Layout(kLayouts[0]), "--cluster", (dir / "typo.toml").string()});
  EXPECT_EQ(r.exit_code, 4);
  EXPECT_NE(r.err.find("hosts[0].gpus[0].'memory_gb' (line 5)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("did you mean 'memory_gib'"), std::string::npos) << r.err;

  std::ofstream(dir / "text.toml") << "[[hosts]]\nname = \"a\"\n[[hosts.gpus]]\ndevice = \"cuda:0\"\n"
                                      "memory_gib = \"lots\"\ntflops = 1\nmem_bw_gbps = 1\n";
  r = RunPlan({"--layout", Layout(kLayouts[0]), "--cluster", (dir / "text.toml").string()});
  EXPECT_EQ(r.exit_code, 4);
  EXPECT_NE(r.err.find("hosts[0].gpus[0].memory_gib"), std::string::npos) << r.err;

  r = RunPlan({"--layout", Layout(kLayouts[0]), "--cluster", (dir / "missing.toml").string()});
  EXPECT_EQ(r.exit_code, 4);
  EXPECT_NE(r.err.find("missing.toml"), std::string::npos) << r.err;
  fs::remove_all(dir);
}

TEST_F(PlanCli, CoverageProblemsStopBeforePlanning) {
  std::ifstream in(Layout(kLayouts[1]));
  nlohmann::json layout = nlohmann::json::parse(in);
  auto& parameters = layout.at("parameters");
  parameters.erase("model.layers.5.attention.wo.Plora_B.weight");
  parameters["mystery.weight"] = {{"shape", {8}}, {"dtype", "bfloat16"}, {"numel", 8}};
  const fs::path dir = ScratchDir();
  std::ofstream(dir / "broken.layout.json") << layout.dump();
  const Result r = RunPlan({"--layout", (dir / "broken.layout.json").string(), "--cluster",
                            Config("cluster-2x24g.toml"), "--json"});
  EXPECT_EQ(r.exit_code, 4) << r.err;
  EXPECT_NE(r.err.find("model.layers.5.attention.wo.Plora_B.weight"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("mystery.weight"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "") << "nothing is planned";
  fs::remove_all(dir);
}

TEST_F(PlanCli, UsageErrors) {
  EXPECT_EQ(RunPlan({"--cluster", Config("cluster-2x24g.toml")}).exit_code, 2);
  EXPECT_EQ(RunPlan({"--layout", Layout(kLayouts[0]), "--model", "/tmp", "--cluster", Config("cluster-2x24g.toml")})
                .exit_code,
            2);
  EXPECT_EQ(RunPlan({"--layout", Layout(kLayouts[0])}).exit_code, 2) << "--cluster is required";
  EXPECT_EQ(
      RunPlan({"--layout", Layout(kLayouts[0]), "--cluster", Config("cluster-2x24g.toml"), "--strategy", "fastest"})
          .exit_code,
      2);
  EXPECT_EQ(RunPlan({"--layout", Layout(kLayouts[0]), "--cluster", Config("cluster-2x24g.toml"), "--dtype", "int4"})
                .exit_code,
            2);
  const Result help = RunPlan({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  for (const std::string piece : {"--layout", "--model", "--cluster", "--strategy", "--format", "Exit codes"}) {
    EXPECT_NE(help.out.find(piece), std::string::npos) << piece;
  }
}

// The tiny fixture checkpoints (safetensors headers) on the CPU cluster the tests serve on.
TEST_F(PlanCli, TinyCheckpointsFitTheCpuCluster) {
  for (const std::string model : {"ixc1", "ixc2_vl", "ixc2_4khd", "ixc2d5"}) {
    const fs::path dir = xcpipe::testing::FixturesDir() / model / "checkpoint";
    std::ifstream index_file(dir / "model.safetensors.index.json");
    ASSERT_TRUE(index_file) << dir;
    const nlohmann::json index = nlohmann::json::parse(index_file);
    std::set<std::string> names;
    for (const auto& [name, shard] : index.at("weight_map").items()) names.insert(name);
    const Result r = RunPlan({"--model", dir.string(), "--cluster", Config("cluster-cpu-3.toml"), "--json"});
    ASSERT_EQ(r.exit_code, 0) << model << "\n" << r.err;
    const auto keys = DeviceMapKeys(r.out);
    EXPECT_EQ(std::set<std::string>(keys.begin(), keys.end()), names) << model;
    EXPECT_EQ(keys.size(), names.size()) << model;
    const auto json = nlohmann::json::parse(r.out);
    EXPECT_EQ(json.at("feasible"), true);
  }
}

}  // namespace
}  // namespace xcpipe::planner
