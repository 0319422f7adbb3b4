#include "compute_flags.h"

namespace xcpipe::cli {

void AddComputeFlags(CLI::App& sub, coordinator::LocalClusterOptions& o) {
  sub.add_option("--dtype", o.dtype,
                 "compute dtype: auto (f32 on CPU workers, the checkpoint's 16-bit dtype on CUDA devices), f32, bf16 "
                 "or f16 (CUDA devices only)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "f32", "bf16", "f16"}));
  sub.add_option("--device", o.device,
                 "device of every worker: cpu or cuda:K (a build whose libtorch has no CUDA refuses cuda:K, exit 7)")
      ->capture_default_str();
  sub.add_flag("--generic", o.generic,
               "workers compute with the generic op sequence a CUDA device runs, without the CPU-only fast paths");
}

}  // namespace xcpipe::cli
