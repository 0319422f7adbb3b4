#include "xcpipe/coordinator/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>

namespace xcpipe::coordinator {

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  if (!std::isfinite(value)) return;
  const size_t i = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  ++counts_[i];
  ++count_;
  sum_ += value;
}

std::vector<uint64_t> Histogram::CumulativeCounts() const {
  std::vector<uint64_t> out(bounds_.size());
  uint64_t running = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) out[i] = running += counts_[i];
  return out;
}

double Histogram::Quantile(double q) const {
  if (count_ == 0 || bounds_.empty()) return 0;
  const double rank = std::clamp(q, 0.0, 1.0) * static_cast<double>(count_);
  uint64_t below = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    if (static_cast<double>(below + counts_[i]) >= rank && counts_[i] > 0) {
      const double lo = i == 0 ? 0.0 : bounds_[i - 1];
      const double within = (rank - static_cast<double>(below)) / static_cast<double>(counts_[i]);
      return lo + (bounds_[i] - lo) * std::clamp(within, 0.0, 1.0);
    }
    below += counts_[i];
  }
  return bounds_.back();
}

std::vector<double> TtftBucketsSeconds() { return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}; }

std::vector<double> TokensPerSecondBuckets() { return {0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000}; }

std::vector<double> StepBucketsSeconds() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

namespace {

std::string Number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.10g", v);
  return buf;
}

std::string Number(uint64_t v) { return std::to_string(v); }

// Label values escape backslash, double quote and newline (exposition format).
std::string Escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

using Labels = std::vector<std::pair<std::string, std::string>>;

std::string LabelText(const Labels& labels) {
  if (labels.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < labels.size(); ++i) {
    if (i) out += ",";
    out += labels[i].first + "=\"" + Escape(labels[i].second) + "\"";
  }
  return out + "}";
}

class Writer {
 public:
  void Family(const std::string& name, const std::string& type, const std::string& help) {
    out_ += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  }
  template <typename T>
  void Sample(const std::string& name, const Labels& labels, T value) {
    out_ += name + LabelText(labels) + " " + Number(value) + "\n";
  }
  void HistogramSamples(const std::string& name, const Histogram& h) {
    const auto cumulative = h.CumulativeCounts();
    for (size_t i = 0; i < h.bounds().size(); ++i)
      Sample(name + "_bucket", {{"le", Number(h.bounds()[i])}}, cumulative[i]);
    Sample(name + "_bucket", {{"le", "+Inf"}}, h.count());
    Sample(name + "_sum", {}, h.sum());
    Sample(name + "_count", {}, h.count());
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

Labels WorkerLabels(const WorkerFigures& w) {
  // A vision worker's figures carry stage="vision", like a stage's carry its index.
  return {{"worker", w.id},
          {"stage", w.stage >= 0         ? std::to_string(w.stage)
                    : w.role == "vision" ? "vision"
                                         : "none"},
          {"device", w.device}};
}

Labels With(Labels labels, std::string key, std::string value) {
  labels.emplace_back(std::move(key), std::move(value));
  return labels;
}

}  // namespace

std::string RenderPrometheus(const MetricsSnapshot& s) {
  Writer w;
  w.Family("xcpipe_up", "gauge", "1 while the coordinator process runs.");
  w.Sample("xcpipe_up", {}, uint64_t{1});
  w.Family("xcpipe_ready", "gauge", "1 while the cluster serves requests, 0 otherwise.");
  w.Sample("xcpipe_ready", {}, uint64_t{s.serving ? 1u : 0u});
  w.Family("xcpipe_cluster_state", "gauge", "1 for the cluster's current state.");
  w.Sample("xcpipe_cluster_state", {{"state", s.state}}, uint64_t{1});
  w.Family("xcpipe_epoch", "gauge", "Cluster epoch (grows with every plan).");
  w.Sample("xcpipe_epoch", {}, s.epoch);
  w.Family("xcpipe_queue_depth", "gauge", "Sequences waiting for admission.");
  w.Sample("xcpipe_queue_depth", {}, uint64_t{s.queue_depth});
  w.Family("xcpipe_in_flight_sequences", "gauge", "Sequences admitted to the pipeline.");
  w.Sample("xcpipe_in_flight_sequences", {}, uint64_t{s.in_flight});
  w.Family("xcpipe_faults_total", "counter", "Stages lost since start.");
  w.Sample("xcpipe_faults_total", {}, s.faults);
  w.Family("xcpipe_replays_total", "counter", "Sequences replayed after faults.");
  w.Sample("xcpipe_replays_total", {}, s.replays);
  w.Family("xcpipe_prefix_cache_hits_total", "counter",
           "Sequences admitted with a copy of the shared prompt head's KV instead of prefilling it.");
  w.Sample("xcpipe_prefix_cache_hits_total", {}, s.prefix_hits);
  w.Family("xcpipe_prefix_cache_rows_saved_total", "counter", "Prompt rows those sequences did not prefill.");
  w.Sample("xcpipe_prefix_cache_rows_saved_total", {}, s.prefix_rows_saved);
  w.Family("xcpipe_prefix_cache_head_tokens", "gauge",
           "Tokens of the shared prompt head whose KV every stage holds (0: not computed under this plan).");
  w.Sample("xcpipe_prefix_cache_head_tokens", {}, uint64_t{s.prefix_head_tokens});
  w.Family("xcpipe_requests_submitted_total", "counter", "Submits received (refused ones included).");
  w.Sample("xcpipe_requests_submitted_total", {}, s.submitted);
  w.Family("xcpipe_requests_completed_total", "counter", "Requests whose every prompt finished.");
  w.Sample("xcpipe_requests_completed_total", {}, s.completed);
  w.Family("xcpipe_requests_failed_total", "counter", "Requests failed after queueing, by error code.");
  for (const auto& [reason, n] : s.failed_by_reason) w.Sample("xcpipe_requests_failed_total", {{"reason", reason}}, n);
  w.Family("xcpipe_requests_refused_total", "counter",
           "Submits refused before queueing (busy = queue full), by reason.");
  for (const auto& [reason, n] : s.refused_by_reason)
    w.Sample("xcpipe_requests_refused_total", {{"reason", reason}}, n);
  w.Family("xcpipe_time_to_first_token_seconds", "histogram", "Submit received to first token streamed, per prompt.");
  w.HistogramSamples("xcpipe_time_to_first_token_seconds", s.ttft_seconds);
  w.Family("xcpipe_tokens_per_second", "histogram", "Decode speed of finished prompts after their first token.");
  w.HistogramSamples("xcpipe_tokens_per_second", s.tokens_per_second);
  w.Family("xcpipe_step_round_trip_seconds", "histogram",
           "A micro-batch step from the coordinator's send to the last stage's result (every stage, every hand-off).");
  w.HistogramSamples("xcpipe_step_round_trip_seconds", s.step_round_trip_seconds);
  w.Family("xcpipe_step_compute_seconds_total", "counter",
           "Of those round trips, the stages' compute time (the sum over stages). The round trips' sum minus this is "
           "what hand-offs between processes and waiting behind other micro-batches took.");
  w.Sample("xcpipe_step_compute_seconds_total", {}, s.step_compute_seconds);

  w.Family("xcpipe_worker_up", "gauge", "1 while the worker is registered and alive, 0 once lost.");
  for (const auto& x : s.workers) w.Sample("xcpipe_worker_up", WorkerLabels(x), uint64_t{x.up ? 1u : 0u});
  w.Family("xcpipe_worker_memory_capacity_bytes", "gauge", "Memory the worker may use.");
  for (const auto& x : s.workers) w.Sample("xcpipe_worker_memory_capacity_bytes", WorkerLabels(x), x.capacity_bytes);
  w.Family("xcpipe_worker_memory_used_bytes", "gauge", "Memory in use (CPU: resident set; CUDA: total - free).");
  for (const auto& x : s.workers) w.Sample("xcpipe_worker_memory_used_bytes", WorkerLabels(x), x.used_bytes);
  w.Family("xcpipe_worker_memory_bytes", "gauge", "Memory in use by category (weights, kv, activations).");
  for (const auto& x : s.workers) {
    w.Sample("xcpipe_worker_memory_bytes", With(WorkerLabels(x), "category", "weights"), x.used.weights);
    w.Sample("xcpipe_worker_memory_bytes", With(WorkerLabels(x), "category", "kv"), x.used.kv);
    w.Sample("xcpipe_worker_memory_bytes", With(WorkerLabels(x), "category", "activations"), x.used.activations);
  }
  w.Family("xcpipe_worker_memory_planned_bytes", "gauge", "Memory the plan gave the worker's stage, by category.");
  for (const auto& x : s.workers) {
    w.Sample("xcpipe_worker_memory_planned_bytes", With(WorkerLabels(x), "category", "weights"), x.planned.weights);
    w.Sample("xcpipe_worker_memory_planned_bytes", With(WorkerLabels(x), "category", "kv"), x.planned.kv);
    w.Sample("xcpipe_worker_memory_planned_bytes", With(WorkerLabels(x), "category", "activations"),
             x.planned.activations);
  }
  w.Family("xcpipe_worker_kv_budget_bytes", "gauge", "KV cache budget of the stage.");
  for (const auto& x : s.workers) w.Sample("xcpipe_worker_kv_budget_bytes", WorkerLabels(x), x.kv_budget_bytes);
  w.Family("xcpipe_worker_kv_reserved_bytes", "gauge", "KV room reserved by admitted sequences.");
  for (const auto& x : s.workers) w.Sample("xcpipe_worker_kv_reserved_bytes", WorkerLabels(x), x.kv_reserved_bytes);
  w.Family("xcpipe_worker_kv_used_bytes", "gauge", "KV bytes holding cached tokens.");
  for (const auto& x : s.workers) w.Sample("xcpipe_worker_kv_used_bytes", WorkerLabels(x), x.kv_used_bytes);
  w.Family("xcpipe_worker_step_seconds", "summary",
           "Compute time of one step on the stage (quantiles over the last 30 s; sum and count since start).");
  for (const auto& x : s.workers) {
    w.Sample("xcpipe_worker_step_seconds", With(WorkerLabels(x), "quantile", "0.5"), double(x.step_p50_micros) * 1e-6);
    w.Sample("xcpipe_worker_step_seconds", With(WorkerLabels(x), "quantile", "0.99"), double(x.step_p99_micros) * 1e-6);
    w.Sample("xcpipe_worker_step_seconds_sum", WorkerLabels(x), double(x.busy_micros_total) * 1e-6);
    w.Sample("xcpipe_worker_step_seconds_count", WorkerLabels(x), x.steps_total);
  }
  w.Family("xcpipe_worker_idle_ratio", "gauge", "Share of the last 30 s the stage spent not computing (bubble).");
  for (const auto& x : s.workers) w.Sample("xcpipe_worker_idle_ratio", WorkerLabels(x), x.idle_fraction);
  w.Family("xcpipe_worker_sent_bytes_total", "counter", "Activation bytes sent to the next stage.");
  for (const auto& x : s.workers) w.Sample("xcpipe_worker_sent_bytes_total", WorkerLabels(x), x.bytes_sent);
  w.Family("xcpipe_worker_queued_steps", "gauge", "Steps received by the worker and waiting to run.");
  for (const auto& x : s.workers) w.Sample("xcpipe_worker_queued_steps", WorkerLabels(x), uint64_t{x.queued_steps});
  w.Family("xcpipe_worker_heartbeat_age_seconds", "gauge", "Time since the worker was last heard from.");
  for (const auto& x : s.workers) w.Sample("xcpipe_worker_heartbeat_age_seconds", WorkerLabels(x), x.heartbeat_age_s);
  // Vision workers (the vision block apart from the pipeline).
  w.Family("xcpipe_vision_separate", "gauge", "1 while vision workers encode the images, 0 while stage 0 does.");
  w.Sample("xcpipe_vision_separate", {}, uint64_t{s.vision_separate ? 1u : 0u});
  w.Family("xcpipe_vision_images_waiting", "gauge", "Images accepted and waiting for a vision worker.");
  w.Sample("xcpipe_vision_images_waiting", {}, uint64_t{s.images_waiting});
  w.Family("xcpipe_vision_images_encoding", "gauge", "Images sent to vision workers and not answered yet.");
  w.Sample("xcpipe_vision_images_encoding", {}, uint64_t{s.images_encoding});
  w.Family("xcpipe_vision_encode_seconds", "histogram", "Vision block compute per image on vision workers.");
  w.HistogramSamples("xcpipe_vision_encode_seconds", s.encode_seconds);
  w.Family("xcpipe_worker_images_encoded_total", "counter", "Images a vision worker encoded under the current plan.");
  for (const auto& x : s.workers) {
    if (x.role == "vision") w.Sample("xcpipe_worker_images_encoded_total", WorkerLabels(x), x.images_encoded);
  }
  w.Family("xcpipe_worker_images_queued", "gauge", "Images sent to a vision worker and not answered yet.");
  for (const auto& x : s.workers) {
    if (x.role == "vision") w.Sample("xcpipe_worker_images_queued", WorkerLabels(x), uint64_t{x.images_queued});
  }
  return w.Take();
}

}  // namespace xcpipe::coordinator
