// Sampling settings between their value type (edge.h) and the wire's SamplingParams, in one
// place for the client's submit, the coordinator's intake and its admissions.
#pragma once

#include <algorithm>
#include <cstdint>

#include "xcpipe/coordinator/edge.h"
#include "xcpipe/schemas/wire.h"

namespace xcpipe::coordinator {

inline void SamplingToWire(const Sampling& s, proto::SamplingParams::Builder out) {
  out.setGreedy(s.greedy);
  out.setTemperature(s.temperature);
  out.setTopK(s.top_k);
  out.setTopP(s.top_p);
  out.setRepetitionPenalty(s.repetition_penalty);
  out.setSeed(s.seed);
  out.setMinNewTokens(static_cast<uint32_t>(std::max<int64_t>(0, s.min_new_tokens)));
  out.setIgnoreEos(s.ignore_eos);
}

inline Sampling SamplingFromWire(proto::SamplingParams::Reader in) {
  Sampling s;
  s.greedy = in.getGreedy();
  s.temperature = in.getTemperature();
  s.top_k = in.getTopK();
  s.top_p = in.getTopP();
  s.repetition_penalty = in.getRepetitionPenalty();
  s.seed = in.getSeed();
  s.min_new_tokens = in.getMinNewTokens();
  s.ignore_eos = in.getIgnoreEos();
  return s;
}

}  // namespace xcpipe::coordinator
