// Where and how the workers of a local cluster compute: the flags `xcpipe run`, `serve-local`
// and `check-fixtures --workers N` share.
//
//   --device cpu|cuda:K   every worker's device (several workers may share one GPU: TCP
//                         between them; NCCL needs a GPU per stage)
//   --dtype auto|f32|bf16|f16
//                         auto: f32 on CPU workers, the checkpoint's 16-bit dtype when every
//                         worker is a CUDA device
//   --generic             the op sequence a CUDA device runs, on the CPU (no CPU-only fast paths)
#pragma once

#include <CLI/CLI.hpp>

#include "xcpipe/coordinator/local_cluster.h"

namespace xcpipe::cli {

void AddComputeFlags(CLI::App& sub, coordinator::LocalClusterOptions& o);

}  // namespace xcpipe::cli
