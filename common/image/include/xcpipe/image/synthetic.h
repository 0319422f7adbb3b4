// A synthetic test image for workloads that need one without a file: an 8-bit RGB PNG of a
// colour gradient over a checkerboard, written without a compressor (stored deflate blocks,
// which every PNG decoder reads). Used by `xcpipe bench strategies` and bench/pipeline_bench.
#pragma once

#include <string>

namespace xcpipe::image {

// PNG bytes of a width x height image (both >= 1).
std::string SyntheticPng(int width, int height);

}  // namespace xcpipe::image
