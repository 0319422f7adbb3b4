// Serving-limit flags shared by `xcpipe-coordinator` and `xcpipe serve-local`: the limits the
// planner sizes every stage's KV cache and activations for, the strategy it plans with, and the
// data plane between stages.
// Binds CLI11 options to a CoordinatorOptions owned by the caller (which must outlive parsing).
#pragma once

#include "xcpipe/base/cli.h"
#include "xcpipe/coordinator/coordinator.h"

namespace xcpipe::coordinator {

inline void AddServingFlags(CLI::App& app, CoordinatorOptions& options) {
  app.add_option("--max-sequences", options.max_sequences,
                 "sequences served at once; every stage's KV cache is planned for this many")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  app.add_option("--max-context", options.max_context,
                 "prompt + new tokens of one sequence (capped at the model's limit); longer requests are refused")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{16}, int64_t{1} << 24));
  app.add_option("--strategy", options.strategy, "placement strategy: balanced, even or greedy-memory")
      ->capture_default_str()
      ->check(CLI::IsMember({"balanced", "even", "greedy-memory"}));
  app.add_flag("--no-rebalance{false}", options.rebalance,
               "keep the first plan even when measured stage times stay unbalanced (default: move blocks)");
  app.add_flag("--no-prefix-cache{false}", options.prefix_cache,
               "prefill the chat template's system text with every prompt (default: compute it once per plan and "
               "copy its KV)");
  app.add_option("--prefill-chunk", options.prefill_chunk_rows,
                 "prefill a longer prompt in pieces of this many rows, one such prompt at a time, so other "
                 "sequences keep decoding between the pieces; a step then carries at most this many rows "
                 "(0: whole prompts in one step)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 24));
  app.add_option("--data-plane", options.data_plane,
                 "how activations travel between stages: auto (NCCL when every stage is a CUDA worker offering it, "
                 "else TCP), tcp, or nccl (planning fails when a worker cannot use it)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "tcp", "nccl"}));
  app.add_option("--vision-stage", options.vision_stage,
                 "where the vision block runs: auto (apart when the planner predicts it is faster or stage 0 does not "
                 "fit otherwise), first (on stage 0 with the embeddings), or separate (on vision workers of their own, "
                 "encoding images as requests arrive)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "first", "separate"}));
  app.add_option("--max-requests-per-client", options.max_requests_per_client,
                 "requests one client connection may have in progress; more are refused")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  app.add_option("--max-queue", options.max_queue, "requests waiting for admission before new ones are refused as busy")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
}

}  // namespace xcpipe::coordinator
