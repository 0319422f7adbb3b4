// Between the wire and the monitoring figures (coordinator-private): heartbeat resource
// samples into WorkerFigures, and figures into the status reply. Used by the actor's thread.
#pragma once

#include "xcpipe/coordinator/metrics.h"
#include "xcpipe/planner/cost_model.h"
#include "xcpipe/schemas/wire.h"

namespace xcpipe::coordinator {

// The latest sample of a worker (steps: its heartbeat's stepsCompleted).
inline void UpdateFromHeartbeat(proto::ResourceSample::Reader r, uint64_t steps, WorkerFigures& f) {
  f.capacity_bytes = r.getCapacityBytes();
  f.used_bytes = r.getUsedBytes();
  f.device_free_bytes = r.getDeviceFreeBytes();
  f.used = {r.getUsed().getWeightBytes(), r.getUsed().getKvBytes(), r.getUsed().getActivationBytes()};
  f.kv_budget_bytes = r.getKvBudgetBytes();
  f.kv_reserved_bytes = r.getKvReservedBytes();
  f.kv_used_bytes = r.getKvUsedBytes();
  f.step_p50_micros = r.getStepP50Micros();
  f.step_p99_micros = r.getStepP99Micros();
  f.steps_in_window = r.getStepsInWindow();
  f.idle_fraction = r.getIdleFraction();
  f.busy_micros_total = r.getBusyMicrosTotal();
  f.decoder_layer_micros_total = r.getDecoderLayerMicrosTotal();
  f.decoder_layers_timed = r.getDecoderLayersTimed();
  f.bytes_sent = r.getBytesSent();
  f.queued_steps = r.getQueuedSteps();
  f.steps_total = steps;
}

// The plan's bytes by category (workspace counts as activations).
inline MemoryByCategory PlannedCategories(const planner::StageBytes& b) {
  return {b.weights, b.kv, b.activations + b.workspace};
}

inline void FillMemory(const MemoryByCategory& m, proto::MemoryBreakdown::Builder out) {
  out.setWeightBytes(m.weights);
  out.setKvBytes(m.kv);
  out.setActivationBytes(m.activations);
}

// WorkerStatus.planned and .resources from the figures.
inline void FillWorkerMonitoring(const WorkerFigures& f, proto::WorkerStatus::Builder w) {
  FillMemory(f.planned, w.initPlanned());
  auto r = w.initResources();
  r.setCapacityBytes(f.capacity_bytes);
  r.setUsedBytes(f.used_bytes);
  r.setDeviceFreeBytes(f.device_free_bytes);
  FillMemory(f.used, r.initUsed());
  r.setKvBudgetBytes(f.kv_budget_bytes);
  r.setKvReservedBytes(f.kv_reserved_bytes);
  r.setKvUsedBytes(f.kv_used_bytes);
  r.setStepP50Micros(f.step_p50_micros);
  r.setStepP99Micros(f.step_p99_micros);
  r.setStepsInWindow(f.steps_in_window);
  r.setIdleFraction(f.idle_fraction);
  r.setBusyMicrosTotal(f.busy_micros_total);
  r.setDecoderLayerMicrosTotal(f.decoder_layer_micros_total);
  r.setDecoderLayersTimed(f.decoder_layers_timed);
  r.setBytesSent(f.bytes_sent);
  r.setQueuedSteps(f.queued_steps);
  w.setRole(f.role);
  w.setImagesEncoded(f.images_encoded);
  w.setImagesQueued(f.images_queued);
  w.setEncodeP50Ms(f.encode_p50_ms);
}

// StatusReply's request counters and latency figures.
inline void FillRequestMonitoring(const MetricsSnapshot& s, proto::StatusReply::Builder r) {
  r.setSubmitted(s.submitted);
  auto failed = r.initFailedByReason(static_cast<unsigned>(s.failed_by_reason.size()));
  unsigned i = 0;
  for (const auto& [reason, n] : s.failed_by_reason) {
    failed[i].setReason(reason);
    failed[i++].setCount(n);
  }
  auto refused = r.initRefusedByReason(static_cast<unsigned>(s.refused_by_reason.size()));
  i = 0;
  for (const auto& [reason, n] : s.refused_by_reason) {
    refused[i].setReason(reason);
    refused[i++].setCount(n);
  }
  r.setTtftP50Ms(s.ttft_seconds.Quantile(0.5) * 1e3);
  r.setTtftP99Ms(s.ttft_seconds.Quantile(0.99) * 1e3);
  r.setTokensPerSecondP50(s.tokens_per_second.Quantile(0.5));
  r.setStepsCompleted(s.step_round_trip_seconds.count());
  r.setStepRoundTripMsTotal(s.step_round_trip_seconds.sum() * 1e3);
  r.setStepComputeMsTotal(s.step_compute_seconds * 1e3);
  r.setStepRoundTripP50Ms(s.step_round_trip_seconds.Quantile(0.5) * 1e3);
}

}  // namespace xcpipe::coordinator
