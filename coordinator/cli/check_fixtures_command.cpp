// xcpipe check-fixtures DIR: every check of a golden fixtures folder, with a line per check
// and, last, exactly "N passed, M failed". Tokenizer and image checks run in this process;
// the model checks run in an xcpipe-worker process (libtorch and the tokenizer's
// sentencepiece cannot share a process, see PLATFORM.md) whose JSON lines are merged here.
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

#include "commands.h"
#include "xcpipe/base/exit_codes.h"
#include "xcpipe/base/subprocess.h"
#include "xcpipe/image/fixture_checks.h"
#include "xcpipe/tokenizer/fixture_checks.h"

namespace xcpipe::cli {
namespace {

struct Tally {
  int passed = 0;
  int failed = 0;
  void Print(bool ok, const std::string& name, const std::string& message) {
    (ok ? passed : failed)++;
    std::printf("%s %s: %s\n", ok ? "PASS" : "FAIL", name.c_str(), message.c_str());
    std::fflush(stdout);
  }
};

int RunCheckFixtures(const std::string& dir, const std::string& only_folder, bool bf16, int workers) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) {
    std::fprintf(stderr, "xcpipe check-fixtures: '%s' is not a folder; expected a fixtures folder with\n"
                         "tokenizer/ and model folders holding checkpoint/ and cases/\n", dir.c_str());
    return kExitInvalidInput;
  }
  if (workers != 0) {
    std::fprintf(stderr, "xcpipe check-fixtures --workers: running through a local cluster is not available yet\n");
    return kExitNotImplemented;
  }
  Tally tally;
  auto in_folder = [&](const std::string& name) {
    return only_folder.empty() || name.rfind(only_folder + "/", 0) == 0 || name.rfind("tokenizer", 0) == 0;
  };
  for (const auto& r : tokenizer::RunTokenizerFixtureChecks(dir)) {
    if (in_folder(r.name)) tally.Print(r.passed, "tokenizer/" + r.name, r.message);
  }
  for (const auto& r : image::RunImageFixtureChecks(dir)) {
    if (in_folder(r.case_name)) tally.Print(r.passed, "image/" + r.case_name, r.message);
  }

  std::vector<std::string> argv = {(ExecutableDir() / "xcpipe-worker").string(), "check-fixtures", dir};
  if (!only_folder.empty()) argv.insert(argv.end(), {"--folder", only_folder});
  if (!bf16) argv.push_back("--no-bf16");
  auto worker = Subprocess::Start(argv, {.capture_stdout = true});
  if (!worker.ok()) {
    tally.Print(false, "model", worker.status().ToString());
  } else {
    while (true) {
      // A single case of a tiny model takes seconds; a silent worker for minutes is stuck.
      auto line = (*worker)->ReadLine(std::chrono::minutes(10));
      if (!line.ok()) {
        tally.Print(false, "model", "worker gave no result: " + line.status().ToString());
        break;
      }
      if (!line->has_value()) break;
      try {
        auto j = nlohmann::json::parse(**line);
        tally.Print(j.at("passed").get<bool>(), "model/" + j.at("case").get<std::string>(),
                    j.at("message").get<std::string>());
      } catch (const std::exception& e) {
        tally.Print(false, "model", "unreadable worker output: " + **line);
      }
    }
    auto code = (*worker)->Wait(std::chrono::seconds(30));
    if (!code.ok() || (*code != kExitOk && *code != kExitCheckFailed)) {
      tally.Print(false, "model", "worker exited abnormally (" +
                                      (code.ok() ? "exit code " + std::to_string(*code) : code.status().ToString()) +
                                      ")");
    }
  }
  std::printf("%d passed, %d failed\n", tally.passed, tally.failed);
  return tally.failed == 0 ? kExitOk : kExitCheckFailed;
}

}  // namespace

void AddCheckFixturesCommand(CLI::App& app, Action& action) {
  auto* sub = app.add_subcommand(
      "check-fixtures",
      "compare tokenizer, image preprocessing and the C++ model with the official outputs in a fixtures folder");
  sub->footer(
      "Reads every model folder (checkpoint/ + cases/*/manifest.json) and tokenizer_cases.json under DIR and\n"
      "compares with the manifest tolerances. Prints a line per check and, last, 'N passed, M failed'.\n"
      "Exit 0 when all pass, 6 when any differs, 4 when DIR is not a fixtures folder.\n\n"
      "Example:\n  xcpipe check-fixtures ../shared/fixtures\n  xcpipe check-fixtures ../shared/fixtures --folder ixc2_vl");
  auto dir = std::make_shared<std::string>();
  auto folder = std::make_shared<std::string>();
  auto no_bf16 = std::make_shared<bool>(false);
  auto workers = std::make_shared<int>(0);
  sub->add_option("dir", *dir, "fixtures folder")->required();
  sub->add_option("--folder", *folder, "only this model folder (e.g. ixc2_vl)");
  sub->add_flag("--no-bf16", *no_bf16, "skip the bf16 top-k agreement checks");
  sub->add_option("--workers", *workers, "run the model through a local cluster of N worker processes");
  sub->callback([&action, dir, folder, no_bf16, workers] {
    action = [=] { return RunCheckFixtures(*dir, *folder, !*no_bf16, *workers); };
  });
}

}  // namespace xcpipe::cli
