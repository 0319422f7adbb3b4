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
  out.setNumBeams(static_cast<uint32_t>(std::clamp<int64_t>(s.num_beams, 0, UINT32_MAX)));
  out.setLengthPenalty(s.length_penalty);
  out.setEarlyStopping(static_cast<uint8_t>(std::clamp(s.early_stopping, 0, 255)));
  out.setMinLength(static_cast<uint32_t>(std::clamp<int64_t>(s.min_length, 0, UINT32_MAX)));
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
  s.num_beams = std::max<int64_t>(1, in.getNumBeams());  // 0: a client that predates beams
  s.length_penalty = in.getLengthPenalty();
  s.early_stopping = in.getEarlyStopping();
  s.min_length = in.getMinLength();
  return s;
}

}  // namespace xcpipe::coordinator
