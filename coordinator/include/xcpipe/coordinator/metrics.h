// Monitoring figures of a coordinator: what its actor publishes for the HTTP endpoint and
// `xcpipe status`, and their Prometheus text rendering (exposition format 0.0.4).
//
// The coordinator actor owns the live counters and histograms (single-threaded). Every few
// hundred milliseconds, and whenever readiness changes, it copies them into an immutable
// MetricsSnapshot and publishes it on a MetricsBoard; the HTTP thread only ever reads the
// latest snapshot (a shared_ptr copied under a mutex), so it never touches the actor's state.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace xcpipe::coordinator {

// A fixed-bucket histogram (Prometheus semantics: cumulative buckets, +Inf = count).
// Not thread-safe; copied into snapshots.
class Histogram {
 public:
  // `bounds`: upper bounds, strictly increasing.
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);
  const std::vector<double>& bounds() const { return bounds_; }
  // Cumulative count of observations <= bounds()[i]; one entry per bound.
  std::vector<uint64_t> CumulativeCounts() const;
  uint64_t count() const { return count_; }
  double sum() const { return sum_; }
  // Quantile q in [0, 1] estimated by linear interpolation within the bucket that holds it
  // (as PromQL's histogram_quantile does); 0 when empty. Above the last bound: that bound.
  double Quantile(double q) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; last = above every bound
  uint64_t count_ = 0;
  double sum_ = 0;
};

// Buckets for time to first token (seconds), decode speed (tokens per second) and a
// micro-batch's round trip through the pipeline (seconds).
std::vector<double> TtftBucketsSeconds();
std::vector<double> TokensPerSecondBuckets();
std::vector<double> StepBucketsSeconds();

// Memory by category.
struct MemoryByCategory {
  uint64_t weights = 0, kv = 0, activations = 0;
};

// One worker's latest figures (from its heartbeats) and what the plan gave it.
struct WorkerFigures {
  std::string id, host, device, state;
  int stage = -1;                  // -1: holds no stage
  bool up = true;                  // false once declared lost
  uint64_t capacity_bytes = 0;     // memory it may use
  uint64_t used_bytes = 0;         // memory in use
  uint64_t device_free_bytes = 0;  // CUDA only
  MemoryByCategory planned, used;
  uint64_t kv_budget_bytes = 0, kv_reserved_bytes = 0, kv_used_bytes = 0;
  uint64_t step_p50_micros = 0, step_p99_micros = 0;
  uint32_t steps_in_window = 0;
  double idle_fraction = 1.0;
  uint64_t busy_micros_total = 0, steps_total = 0, bytes_sent = 0;
  uint64_t decoder_layer_micros_total = 0, decoder_layers_timed = 0;  // worker speed (rebalancing)
  uint32_t queued_steps = 0;
  double heartbeat_age_s = 0;
  std::string role = "spare";   // "stage", "vision" (a vision worker) or "spare"
  uint64_t images_encoded = 0;  // vision workers: images encoded under the current plan
  uint32_t images_queued = 0;   // vision workers: encodes sent and not answered
  double encode_p50_ms = 0;     // vision workers: median encode time of its recent images
};

struct MetricsSnapshot {
  std::string state;  // the cluster state's name
  bool serving = false;
  uint64_t epoch = 0;
  uint32_t queue_depth = 0, in_flight = 0;
  uint64_t faults = 0, replays = 0;
  uint64_t submitted = 0, completed = 0;
  // The shared prompt head: admissions that copied its KV, prompt rows they did not prefill,
  // and its length while its KV is on the stages (0: not computed under this plan, or off).
  uint64_t prefix_hits = 0, prefix_rows_saved = 0;
  uint32_t prefix_head_tokens = 0;
  std::map<std::string, uint64_t> failed_by_reason, refused_by_reason;
  Histogram ttft_seconds{TtftBucketsSeconds()};
  Histogram tokens_per_second{TokensPerSecondBuckets()};
  // Micro-batches that came back: from the coordinator's send to the last stage's result
  // (round trip), and the part of it the stages spent computing (the sum of their step times,
  // which the result carries). The rest went to hand-offs between processes and to waiting
  // behind other micro-batches: what the pipeline costs beyond its compute.
  Histogram step_round_trip_seconds{StepBucketsSeconds()};
  double step_compute_seconds = 0;
  // Vision workers (vision_stage separate): images accepted and waiting for a vision worker,
  // being encoded, and each encode's time as the vision worker measured it.
  bool vision_separate = false;
  uint32_t images_waiting = 0, images_encoding = 0;
  Histogram encode_seconds{StepBucketsSeconds()};
  std::vector<WorkerFigures> workers;
};

// Renders the snapshot as Prometheus text exposition format (version 0.0.4).
std::string RenderPrometheus(const MetricsSnapshot& snapshot);

// Used memory above this share of capacity is reported as a warning (`xcpipe status`).
inline constexpr double kMemoryWarningFraction = 0.90;

// The latest published snapshot. Thread-safe.
class MetricsBoard {
 public:
  void Publish(std::shared_ptr<const MetricsSnapshot> snapshot) {
    std::lock_guard<std::mutex> lock(mutex_);
    latest_ = std::move(snapshot);
  }
  // Null until the first Publish.
  std::shared_ptr<const MetricsSnapshot> Latest() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return latest_;
  }

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<const MetricsSnapshot> latest_;
};

}  // namespace xcpipe::coordinator
