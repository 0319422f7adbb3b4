// Cluster status: the status reply and the metrics snapshot.
// Members of Coordinator::Impl (coordinator_impl.h), run on the coordinator's thread.
#include "coordinator_impl.h"

namespace xcpipe::coordinator {

MetricsSnapshot Coordinator::Impl::Snapshot() const {
  MetricsSnapshot snap = live;
  snap.state = ClusterStateName(state);
  snap.serving = state == ClusterState::kServing && !draining;
  snap.epoch = epoch;
  snap.queue_depth = static_cast<uint32_t>(queue.size());
  for (const auto& [id, seq] : sequences)
    snap.in_flight += seq.state == SeqState::kReady || seq.state == SeqState::kInFlight;
  snap.faults = faults;
  snap.replays = replays;
  snap.prefix_hits = prefix.hits;
  snap.prefix_rows_saved = prefix.rows_saved;
  snap.prefix_head_tokens = prefix.ready ? static_cast<uint32_t>(prefix.head.size()) : 0;
  snap.completed = completed;
  snap.vision_separate = vision_separate();
  for (const auto& [image_id, job] : image_jobs) {
    snap.images_waiting += job.state == ImageJob::State::kWaiting;
    snap.images_encoding += job.state == ImageJob::State::kEncoding;
  }
  const auto now = Now();
  for (const auto& [peer_id, w] : workers) {  // in the order OnStatus lists them
    WorkerFigures f = w.figures;
    f.id = w.id;
    f.host = w.host;
    f.device = w.device;
    f.state = WorkerStateName(w.state);
    f.stage = w.stage;
    f.up = w.state != WorkerState::kLost;
    if (f.capacity_bytes == 0) f.capacity_bytes = w.memory;
    f.role = "spare";
    if (w.stage >= 0 && w.stage < static_cast<int>(stages.size())) {
      f.planned = PlannedCategories(stages[w.stage].predicted);
      f.role = "stage";
    } else {
      f.planned = {};
    }
    for (const auto& v : vision) {
      if (v.peer != w.peer) continue;
      f.role = "vision";
      f.planned = PlannedCategories(v.predicted);
      f.images_encoded = v.encoded;
      f.images_queued = static_cast<uint32_t>(v.encoding);
      if (!v.recent_ms.empty()) {
        std::vector<double> sorted = v.recent_ms;
        std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(sorted.size() / 2), sorted.end());
        f.encode_p50_ms = sorted[sorted.size() / 2];
      }
    }
    f.heartbeat_age_s = std::chrono::duration<double>(now - w.last_seen).count();
    snap.workers.push_back(std::move(f));
  }
  return snap;
}

void Coordinator::Impl::PublishMetrics() {
  const auto now = Now();
  const bool serving = state == ClusterState::kServing && !draining;
  // Often enough for a scrape to see fresh figures; at once when readiness changes.
  if (now < next_publish && serving == published_serving) return;
  next_publish = now + 200ms;
  published_serving = serving;
  board->Publish(std::make_shared<const MetricsSnapshot>(Snapshot()));
}

void Coordinator::Impl::OnStatus(const std::string& peer) {
  const MetricsSnapshot snap = Snapshot();
  capnp::MallocMessageBuilder m;
  auto r = m.initRoot<proto::Envelope>().initStatusReply();
  FillRequestMonitoring(snap, r);
  if (metrics_http) r.setMetricsAddress(metrics_http->address());
  r.setEpoch(epoch);
  r.setState(ClusterStateName(state));
  r.setModel(opt.model_dir.string());
  r.setModelVersion(std::string(checkpoint::ArchName(edge->spec().arch)));
  r.setStages(static_cast<uint32_t>(stages.size()));
  r.setQueueDepth(static_cast<uint32_t>(queue.size()));
  uint32_t inflight = 0;
  for (const auto& [id, s] : sequences) inflight += s.state == SeqState::kReady || s.state == SeqState::kInFlight;
  r.setInFlight(inflight);
  r.setCompleted(completed);
  r.setFailed(failed);
  r.setFaults(static_cast<uint32_t>(faults));
  r.setReplays(replays);
  r.setRebalances(rebalances);
  r.setLastRebalance(last_rebalance);
  r.setDataPlane(planned_once ? data_plane.kind : "");
  r.setDtype(planned_once ? plan_dtype : "");
  r.setDataPlaneReason(planned_once ? data_plane.reason : "");
  r.setLastDetectMs(last_detect_ms);
  r.setLastRecoverMs(last_recover_ms);
  r.setVisionStage(vision_mode);
  r.setVisionReason(vision_reason);
  r.setImagesWaiting(snap.images_waiting);
  r.setImagesEncoding(snap.images_encoding);
  r.setImagesEncodedTotal(images_encoded_total);
  // The exact median of the vision workers' recent encodes (the histogram's buckets are coarse).
  std::vector<double> recent;
  for (const auto& v : vision) recent.insert(recent.end(), v.recent_ms.begin(), v.recent_ms.end());
  if (!recent.empty()) {
    std::nth_element(recent.begin(), recent.begin() + static_cast<std::ptrdiff_t>(recent.size() / 2), recent.end());
    r.setEncodeP50Ms(recent[recent.size() / 2]);
  }
  auto list = r.initWorkers(workers.size());
  size_t i = 0;
  const auto now = Now();
  for (const auto& [peer_id, w] : workers) {
    auto x = list[i++];
    x.setWorkerId(w.id);
    x.setHost(w.host);
    x.setPid(w.pid);
    x.setDevice(w.device);
    x.setDtype(w.dtype);
    x.setKernels(w.kernels);
    x.setState(WorkerStateName(w.state));
    x.setStageIndex(w.stage);
    x.setPlannedBytes(w.planned);
    x.setUsedBytes(w.resident);
    if (w.stage >= 0 && w.stage < static_cast<int>(stages.size())) {
      const auto& st = stages[w.stage];
      x.setBlocks(std::to_string(st.first) + ".." + std::to_string(st.end - 1));
      x.setPredictedStepMs(st.predicted_step_ms);
      x.setWeightsKept(w.weights_kept);
    }
    for (const auto& v : vision) {
      if (v.peer != w.peer) continue;
      x.setBlocks(std::to_string(v.first) + ".." + std::to_string(v.end - 1));
      x.setWeightsKept(w.weights_kept);
    }
    x.setStepsCompleted(w.steps);
    x.setLastHeartbeatMsAgo(
        static_cast<uint32_t>(std::chrono::duration_cast<std::chrono::milliseconds>(now - w.last_seen).count()));
    x.setMemoryBytes(w.memory);
    FillWorkerMonitoring(snap.workers.at(i - 1), x);
  }
  Send(m, peer);
}

}  // namespace xcpipe::coordinator
