#include "xcpipe/model/sampling.h"

#include <ATen/ATen.h>

#include <cmath>
#include <set>

namespace xcpipe::model {

Status ValidateSamplingParams(const SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature <= 0.0 || p.temperature > 100.0) {
    return InvalidArgumentError("temperature " + std::to_string(p.temperature) +
                                " is out of range; expected 0 < t <= 100");
  }
  if (p.top_k < 0)
    return InvalidArgumentError("top_k " + std::to_string(p.top_k) + " is negative; expected 0 (off) or more");
  if (!std::isfinite(p.top_p) || p.top_p <= 0.0 || p.top_p > 1.0) {
    return InvalidArgumentError("top_p " + std::to_string(p.top_p) + " is out of range; expected 0 < p <= 1");
  }
  if (!std::isfinite(p.repetition_penalty) || p.repetition_penalty <= 0.0 || p.repetition_penalty > 10.0) {
    return InvalidArgumentError("repetition_penalty " + std::to_string(p.repetition_penalty) +
                                " is out of range; expected 0 < r <= 10 (1 = off)");
  }
  if (p.min_new_tokens < 0) {
    return InvalidArgumentError("min_new_tokens " + std::to_string(p.min_new_tokens) +
                                " is negative; expected 0 (off) or more");
  }
  return OkStatus();
}

Sampler::Sampler(const SamplingParams& params, int64_t already_generated)
    : params_(params), generated_(already_generated), rng_(params.seed) {
  // A replayed sequence continues the draws where the lost run left them: each earlier token
  // took one uniform draw, so the tokens after the replay point are the fault-free run's.
  if (!params_.greedy) {
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    for (int64_t i = 0; i < already_generated; ++i) (void)uniform(rng_);
  }
}

int64_t Sampler::Next(const at::Tensor& logits_in, const std::vector<int64_t>& penalty_context) {
  const int64_t token = Select(logits_in, penalty_context);
  ++generated_;
  return token;
}

int64_t Sampler::Select(const at::Tensor& logits_in, const std::vector<int64_t>& penalty_context) {
  // Sampling runs on the host: a stage on a CUDA device hands over its logits row here (the
  // only tensor that must leave the device on the last stage).
  at::Tensor logits = logits_in.to(at::kCPU).to(at::kFloat).contiguous().clone();
  const int64_t V = logits.numel();
  float* data = logits.data_ptr<float>();
  if (params_.repetition_penalty != 1.0) {
    // Hugging Face RepetitionPenaltyLogitsProcessor: each distinct token once.
    const float r = static_cast<float>(params_.repetition_penalty);
    std::set<int64_t> seen(penalty_context.begin(), penalty_context.end());
    for (int64_t t : seen) {
      if (t < 0 || t >= V) continue;
      data[t] = data[t] < 0 ? data[t] * r : data[t] / r;
    }
  }
  if (generated_ < params_.min_new_tokens) {
    for (int64_t t : params_.stop_ids) {
      if (t >= 0 && t < V) data[t] = -std::numeric_limits<float>::infinity();
    }
  }
  if (params_.greedy) return logits.argmax().item<int64_t>();

  if (params_.temperature != 1.0) logits.div_(params_.temperature);
  if (params_.top_k > 0 && params_.top_k < V) {
    float kth = std::get<0>(logits.topk(params_.top_k)).min().item<float>();
    logits.masked_fill_(logits < kth, -std::numeric_limits<float>::infinity());
  }
  if (params_.top_p < 1.0) {
    // Hugging Face TopPLogitsWarper: sort ascending, drop the low tail whose cumulative
    // probability is <= 1 - top_p, always keeping the most likely token.
    auto [sorted, order] = logits.sort(/*dim=*/0, /*descending=*/false);
    at::Tensor cumulative = sorted.softmax(0).cumsum(0);
    at::Tensor remove = cumulative <= (1.0 - params_.top_p);
    remove[V - 1] = false;
    logits.index_put_({order.masked_select(remove)}, -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs = logits.softmax(0).to(at::kDouble).contiguous();
  const double* p = probs.data_ptr<double>();
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  double u = uniform(rng_), acc = 0.0;
  int64_t last_nonzero = 0;
  for (int64_t i = 0; i < V; ++i) {
    if (p[i] <= 0.0) continue;
    last_nonzero = i;
    acc += p[i];
    if (u < acc) return i;
  }
  return last_nonzero;
}

}  // namespace xcpipe::model
