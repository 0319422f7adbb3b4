// Token selection on the last stage, with Hugging Face generate() semantics: the repetition
// penalty (divide positive / multiply negative logits of every token already in the penalty
// context, once per distinct token), the minimum length (the stop ids get -inf while fewer than
// min_new_tokens tokens have been generated, as MinNewTokensLengthLogitsProcessor does), then
// temperature, top-k, top-p; greedy takes the argmax after the penalty and the mask. Sampling uses our own seeded
// generator so the same seed gives the same tokens on any stage layout. Value types; Sampler is not thread-safe (one
// per sequence).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <random>
#include <vector>

#include "xcpipe/base/status.h"

namespace xcpipe::model {

struct SamplingParams {
  bool greedy = true;
  double temperature = 1.0;
  int64_t top_k = 0;   // 0 = off
  double top_p = 1.0;  // 1.0 = off
  double repetition_penalty = 1.0;
  uint64_t seed = 0;
  int64_t min_new_tokens = 0;     // 0 = off
  std::vector<int64_t> stop_ids;  // masked while fewer than min_new_tokens are generated
};

// Refuses out-of-range parameters with a message naming the parameter and its range.
Status ValidateSamplingParams(const SamplingParams& params);

class Sampler {
 public:
  // already_generated: new tokens the sequence produced before this sampler existed (a
  // replayed sequence); they count toward min_new_tokens, and the random draws they took are
  // skipped, so a seeded sequence continues as it would have without the replay.
  explicit Sampler(const SamplingParams& params, int64_t already_generated = 0);
  // logits: [V] float32. penalty_context: tokens the repetition penalty applies to. Each call
  // is one new token.
  int64_t Next(const at::Tensor& logits, const std::vector<int64_t>& penalty_context);
  int64_t generated() const { return generated_; }

 private:
  int64_t Select(const at::Tensor& logits, const std::vector<int64_t>& penalty_context);

  SamplingParams params_;
  int64_t generated_ = 0;
  std::mt19937_64 rng_;
};

}  // namespace xcpipe::model
