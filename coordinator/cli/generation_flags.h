// Flags shared by `xcpipe run` and `xcpipe submit`: the prompt, images and generation
// settings, and how results are printed (a stream of text, or one JSON object).
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>
#include <vector>

#include "xcpipe/base/status.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/coordinator/client.h"

namespace xcpipe::cli {

struct GenerationFlags {
  std::string prompt;
  std::string prompt_file;
  std::vector<std::string> images;
  uint32_t max_new_tokens = 64;
  bool greedy = false;
  double temperature = 1.0;
  double top_p = 1.0;
  uint32_t top_k = 0;
  uint64_t seed = 0;
  double repetition_penalty = 1.0;
  uint32_t min_tokens = 0;
  bool ignore_eos = false;
  // Beam search (num_beams > 1) and the version's official chat() settings.
  uint32_t num_beams = 1;
  double length_penalty = 1.0;
  std::string early_stopping = "false";
  uint32_t min_length = 0;
  bool official_defaults = false;
  bool json = false;
  bool sample_flags_given = false;
};

void AddGenerationFlags(CLI::App& sub, GenerationFlags& flags);

// Reads the prompt (a JSON string or list for .json files, plain text otherwise) and the image
// files into a request. InvalidArgument naming the flag when something is wrong.
StatusOr<coordinator::GenerateRequest> BuildRequest(const GenerationFlags& flags, const CLI::App& sub);
// With --official-defaults: the version's official chat() settings (coordinator::
// OfficialChatGeneration) under the flags given explicitly, which still win.
void ApplyOfficialDefaults(const GenerationFlags& flags, const CLI::App& sub, checkpoint::ModelArch arch,
                           coordinator::GenerateRequest& request);

// Prints a result: text (streamed already) or the JSON object
// {"token_ids": [...], "text": ..., "ttft_ms": ..., "tokens_per_s": ...}.
int PrintResult(const GenerationFlags& flags, const coordinator::GenerateResult& result);

}  // namespace xcpipe::cli
