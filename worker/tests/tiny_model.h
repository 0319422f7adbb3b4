// The model the worker tests run as one stage: the tiny XComposer2-VL fixture checkpoint, and a
// short text prompt of ids inside its vocabulary.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "xcpipe/testing/paths.h"

namespace xcpipe::worker::testing {

inline std::filesystem::path TinyModelDir() { return xcpipe::testing::FixturesDir() / "ixc2_vl" / "checkpoint"; }

inline const std::vector<int64_t> kTinyPrompt = {1, 333, 4444, 5555, 777, 92543, 1008, 2024};

}  // namespace xcpipe::worker::testing
