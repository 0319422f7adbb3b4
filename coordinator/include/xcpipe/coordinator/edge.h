// The serving edge: turns what a client sends (a prompt as JSON text, encoded images,
// generation settings) into what the pipeline runs (token ids with image slots, the image mask,
// preprocessed images, stop ids, the repetition-penalty context), exactly as the official
// chat() builds them. Bad input is refused here, before it reaches any worker, with a message
// naming what was wrong and what was expected.
// Architecture: docs/architecture.md, "The request lifecycle" (edge checks, the stop rule).
//
// RequestPreparer is immutable after Create and safe to share between threads.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "xcpipe/base/status.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/image/model_image_spec.h"
#include "xcpipe/tokenizer/chat_template.h"
#include "xcpipe/tokenizer/tokenizer.h"

namespace xcpipe::coordinator {

struct EdgeLimits {
  size_t max_prompt_bytes = 64 << 10;
  int64_t max_prompt_tokens = 8192;  // text tokens plus image rows
  int64_t max_new_tokens = 4096;
  int max_images = 4;
  size_t max_image_bytes = 32 << 20;
  int max_prompts = 16;  // entries of a list-of-strings prompt
};

struct Sampling {
  bool greedy = true;
  double temperature = 1.0;
  uint32_t top_k = 0;
  double top_p = 1.0;
  double repetition_penalty = 1.0;
  uint64_t seed = 0;
  int64_t min_new_tokens = 0;  // the stop ids are masked on the last stage until this many
  bool ignore_eos = false;     // a stop id does not end the sequence; it runs to the length
  // Beam search (Hugging Face 4.33's, as the official chat() runs it) when num_beams > 1: the
  // coordinator keeps the search and delivers the best hypothesis whole at the end. Needs greedy.
  int64_t num_beams = 1;
  double length_penalty = 1.0;
  int early_stopping = 0;  // 0: HF's False, 1: True, 2: "never" (beam::EarlyStopping)
  int64_t min_length = 0;  // HF min_length: counts the penalty context's ids too
  bool beams() const { return num_beams > 1; }
};

// The generation settings of each version's official chat() (what `--official-defaults` applies):
// 1.0 beam search with 5 beams, repetition penalty 1.5, min_length 1; 2.x sampling (top_p 0.8,
// temperature 1.0, repetition penalty 1.005) with beams 1. `max_new_tokens` is chat()'s too.
struct OfficialGeneration {
  Sampling sampling;
  int64_t max_new_tokens = 0;
};
OfficialGeneration OfficialChatGeneration(checkpoint::ModelArch arch);

// The stop rule, applied by the coordinator after each generated token (beam requests: once, to
// the best hypothesis): "stop" when the last
// token is a stop id (unless ignore_eos, or fewer than min_new_tokens tokens exist: the last
// stage masks the stop ids until then, so such a token is not expected, but it never ends a
// sequence early), "length" when max_new tokens exist, "" to go on.
std::string_view FinishReasonAfter(const std::vector<int64_t>& generated, int64_t max_new,
                                   const std::vector<int64_t>& stop_ids, const Sampling& sampling);

struct PreparedImage {
  std::vector<float> pixels;  // CHW float32
  int64_t channels = 0, height = 0, width = 0;
  int64_t grid_h = 1, grid_w = 1;
  int64_t rows = 0;  // LLM rows this image occupies
};

// One sequence to generate.
struct PreparedPrompt {
  std::vector<int64_t> ids;      // -1 at image rows
  std::vector<uint8_t> im_mask;  // 1 at image rows (Partial-LoRA positions)
  std::vector<PreparedImage> images;
  std::vector<int64_t> penalty_context;
};

class RequestPreparer {
 public:
  // model_dir: checkpoint folder; tokenizer: its tokenizer.model (see FindTokenizer).
  static StatusOr<std::unique_ptr<RequestPreparer>> Create(const std::filesystem::path& model_dir,
                                                           const std::filesystem::path& tokenizer_model,
                                                           EdgeLimits limits = {});

  // `prompt_json`: a JSON string, or a list of strings (each becomes its own sequence).
  // Images are given in placeholder order across the list.
  StatusOr<std::vector<PreparedPrompt>> Prepare(const std::string& prompt_json,
                                                const std::vector<std::string>& encoded_images) const;
  Status ValidateGeneration(int64_t max_new_tokens, const Sampling& sampling) const;

  // Decodes generated ids to the response text (special tokens skipped, cut at the turn end).
  StatusOr<std::string> DecodeResponse(const std::vector<int64_t>& ids) const;

  const checkpoint::ModelSpec& spec() const { return spec_; }
  const std::vector<int64_t>& stop_ids() const { return stop_ids_; }
  // The ids every chat prompt of this version starts with before its query (the system text
  // of the template): the longest common start of the prompts built for two different
  // queries, so a tokenization that merges into the query is never counted. Empty when it is
  // shorter than kMinSharedHead tokens. A prompt whose ids begin with these rows can take
  // their KV from a copy computed once (the coordinator's shared prefix).
  const std::vector<int64_t>& shared_head() const { return shared_head_; }
  static constexpr size_t kMinSharedHead = 16;
  const EdgeLimits& limits() const { return limits_; }
  tokenizer::ChatVersion version() const { return version_; }

 private:
  RequestPreparer() = default;
  checkpoint::ModelSpec spec_;
  image::ModelImageSpec image_spec_;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer_;
  tokenizer::ChatVersion version_ = tokenizer::ChatVersion::kIxc2Vl;
  std::vector<int64_t> stop_ids_;
  std::vector<int64_t> shared_head_;
  EdgeLimits limits_;
};

// The tokenizer of a model folder: <dir>/tokenizer.model, else <dir>/../tokenizer/tokenizer.model,
// else <dir>/../../tokenizer/tokenizer.model (the fixtures' layout). NotFound naming the paths tried.
StatusOr<std::filesystem::path> FindTokenizer(const std::filesystem::path& model_dir);

tokenizer::ChatVersion ChatVersionFor(checkpoint::ModelArch arch);

}  // namespace xcpipe::coordinator
