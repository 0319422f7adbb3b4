// The model the worker tests run as one stage: the tiny XComposer2-VL fixture checkpoint, and a
// short text prompt of ids inside its vocabulary.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/schemas/wire.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::worker::testing {

inline std::filesystem::path TinyModelDir() { return xcpipe::testing::FixturesDir() / "ixc2_vl" / "checkpoint"; }

inline const std::vector<int64_t> kTinyPrompt = {1, 333, 4444, 5555, 777, 92543, 1008, 2024};

// An assignment of epoch 1 that gives one worker the whole tiny model (`blocks` of them) as
// its only stage, in float32 with 64 MiB of KV, over TCP.
inline void AssignWholeTinyModel(proto::AssignStage::Builder a, size_t blocks) {
  a.setEpoch(1);
  a.setStageIndex(0);
  a.setStageCount(1);
  a.setBlockBegin(0);
  a.setBlockEnd(static_cast<uint32_t>(blocks));
  a.setModelPath(std::filesystem::absolute(TinyModelDir()).string());
  a.setDtype("f32");
  a.setKvBudgetBytes(64ull << 20);
  a.setSpecOverrides(checkpoint::FixtureSpecOverrides(TinyModelDir()));
  a.setMaxBatchRows(64);
  a.setDataPlane("tcp");
}

}  // namespace xcpipe::worker::testing
