// Model-side checks of a golden fixtures folder (the official code's outputs for small
// checkpoints): for every model folder (one with checkpoint/ and cases/*/manifest.json) and
// every case, run the C++ forward pass and compare with the official outputs, using the
// tolerances written in each manifest. Everything is read from the folder (configs,
// manifests, arrays): nothing about a particular fixture set is assumed.
//
// Checked per case, where the case has the file: vision tower hidden states, vision features,
// image embeddings, input embeddings, every decoder layer's output, logits at the last two
// prompt positions, the top-10 logits at every position, greedy tokens (repetition penalty 1.0
// and 1.005), the official beam-search tokens of 1.0 (generated_ids_official_beam5_rep1.5.npy,
// its settings read from the manifest), and in bf16 the agreement of the argmax with the
// official top-k. FixtureCheckOptions::device and ::kernels choose where and how it computes.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "xcpipe/base/status.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/model/compute.h"

namespace xcpipe::model {

struct FixtureCheckResult {
  std::string name;     // "<folder>/<case>/<check>"
  bool passed = false;
  std::string message;  // the worst error seen, or why it failed
};

struct FixtureCheckOptions {
  bool check_bf16 = true;
  std::string only_folder;  // run just this model folder (empty: all)
  std::string device = "cpu";                    // compute device of the stages checked
  KernelPath kernels = KernelPath::kCpuFast;     // kGeneric: the op sequence a GPU runs
  // Called after each result (progress); may be empty.
  std::function<void(const FixtureCheckResult&)> on_result;
};

// Returns a result per check; a folder that cannot be read at all gives one failed result.
std::vector<FixtureCheckResult> RunModelFixtureChecks(const std::filesystem::path& root,
                                                      const FixtureCheckOptions& options);

}  // namespace xcpipe::model
