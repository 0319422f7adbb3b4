// Coordinator: the control process of an xcpipe cluster. One actor on one thread owns the
// ROUTER socket, the worker registry, the plan and every request.
//
// Cluster lifecycle:
//
//   [waiting] --expected workers registered--> plan --> [loading] --every stage ready--> [serving]
//       ^                                                   |  a stage fails to load:       |
//       |                                                   v  reported, cluster waits      |
//       +--------------------- a worker is lost (heartbeat timeout) <------------------------+
//                              (requests in flight fail with a stated reason; see faults)
//
// Request lifecycle (one sequence per prompt of a request):
//
//   [queued] --KV room on every stage--> [admitted] --prefill step--> [decoding] --stop id or
//   max tokens--> [done]; any state --client gone / fault / deadline--> [failed, reason sent]
//
// Scheduling: continuous batching. Admitted sequences are grouped into micro-batches; up to
// one micro-batch per stage is in flight, so every stage has work when there are enough
// sequences. A sequence is admitted only when every stage has KV room for its prompt plus its
// maximum new tokens, so no stage runs out of memory at run time.
//
// Not copyable or movable. Run() returns the process exit code; RequestStop() (any thread,
// or a signal) makes it drain and return.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "xcpipe/coordinator/edge.h"

namespace xcpipe::coordinator {

struct CoordinatorOptions {
  std::filesystem::path model_dir;
  std::filesystem::path tokenizer;      // empty: FindTokenizer(model_dir)
  std::string listen;                   // "tcp://127.0.0.1:7000"; "tcp://127.0.0.1:*" picks a port
  int expect_workers = 1;
  std::string dtype = "f32";            // compute dtype on workers: f32 or bf16
  std::string spec_overrides;           // JSON handed to workers (tiny towers' head counts)
  uint64_t kv_budget_bytes = 0;         // per stage; 0 = from the plan
  int64_t max_sequences = 64;           // sequences in the pipeline at once
  int64_t max_queue = 256;              // requests waiting for admission before "busy"
  int64_t max_batch_rows = 4096;        // rows one micro-batch may carry (bounds a step's time)
  std::chrono::milliseconds worker_wait{120000};  // give up waiting for workers after this
  EdgeLimits edge;
  // Called once with the bound address when the cluster starts serving.
  std::function<void(const std::string&)> on_ready;
};

class Coordinator {
 public:
  explicit Coordinator(CoordinatorOptions options);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Loads the model description and binds the control socket; returns the bound address
  // (with the real port when the endpoint asked for "*"). Run() calls it when not done yet.
  StatusOr<std::string> Bind();
  int Run();
  // Thread-safe: makes Run() tell the workers to shut down and return.
  void RequestStop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace xcpipe::coordinator
