// Worker registry: membership, one live process per worker id, heartbeats and liveness.
// Members of Coordinator::Impl (coordinator_impl.h), run on the coordinator's thread.
#include "coordinator_impl.h"

namespace xcpipe::coordinator {

void Coordinator::Impl::OnHello(const std::string& peer, proto::Hello::Reader h) {
  if (h.getProtocolVersion() != proto::K_PROTOCOL_VERSION) {
    SendError(peer,
              FailedPreconditionError("protocol version " + std::to_string(h.getProtocolVersion()) +
                                      " is not supported; this coordinator speaks version " +
                                      std::to_string(proto::K_PROTOCOL_VERSION)),
              0);
    return;
  }
  // A restarted coordinator starts at epoch 1 while its workers remember the epoch they served
  // under: before the first plan it adopts the highest one it hears, so its first assignment is
  // newer than anything a worker has seen (a worker refuses an older one).
  if (h.getRole() == proto::Role::WORKER && !planned_once && h.getEpoch() > epoch) {
    spdlog::info("adopting epoch {} from worker {} (it served under it before this coordinator started)", h.getEpoch(),
                 h.getWorkerId().cStr());
    epoch = h.getEpoch();
  }
  capnp::MallocMessageBuilder m;
  auto w = m.initRoot<proto::Envelope>().initWelcome();
  w.setProtocolVersion(proto::K_PROTOCOL_VERSION);
  w.setEpoch(epoch);
  w.setHeartbeatIntervalMs(static_cast<uint32_t>(control::ControlTimings::kHeartbeatInterval.count()));
  w.setHeartbeatTimeoutMs(static_cast<uint32_t>(control::ControlTimings::kHeartbeatTimeout.count()));
  if (h.getRole() == proto::Role::CLIENT) {
    clients.insert(peer);
    Send(m, peer);
    return;
  }
  if (h.getRole() == proto::Role::WATCHDOG) {
    // No answer: the watchdog reads nothing. It repeats its hello before the first message of
    // each step it speaks about, so a restarted coordinator learns it again.
    const std::string watched = h.getWatches().cStr();
    if (watched.empty() || watched == peer || workers.count(peer)) {
      spdlog::warn("ignored a watchdog hello from {}: it must name another peer, a worker", peer);
      return;
    }
    watchdogs[peer] = watched;
    return;
  }
  if (h.getRole() != proto::Role::WORKER) {
    SendError(peer, InvalidArgumentError("only workers, their watchdogs and clients may say hello to a coordinator"),
              0);
    return;
  }
  auto caps = h.getCapabilities();
  if (!ClaimWorkerId(peer, h.getWorkerId().cStr(), caps.getHost().cStr(), caps.getPid())) return;
  auto it = workers.find(peer);
  const bool known = it != workers.end() && it->second.state != WorkerState::kLost;
  WorkerInfo& info = workers[peer];
  info.peer = peer;
  info.id = h.getWorkerId().cStr();
  info.host = caps.getHost().cStr();
  info.pid = caps.getPid();
  info.device = caps.getDevice().cStr();
  info.device_name = caps.getDeviceName().cStr();
  info.memory = caps.getMemoryBytes();
  info.threads = caps.getThreads();
  info.kernels = caps.getKernels().cStr();
  info.bandwidth_bytes_per_s = caps.getMemoryBandwidthBytesPerS();
  info.matmul_tflops = caps.getMatmulTflops();
  info.data_address = caps.getDataAddress().cStr();
  info.image_address = caps.getImageAddress().cStr();
  info.data_planes.clear();
  for (auto plane : caps.getDataPlanes()) info.data_planes.emplace_back(plane.cStr());
  info.last_seen = Now();
  if (!known) {
    info.state = WorkerState::kIdle;
    info.stage = -1;
    info.vision = false;
    workers_changed = true;
    spdlog::info("worker {} registered: {} on {} (pid {}), data plane {} [{} of {} expected]", info.id, info.device,
                 info.host, info.pid, info.data_address, ReadyWorkers(), opt.expect_workers);
  }
  Send(m, peer);
}

// One live registration per worker id; peers are per-process routing identities. Another live
// registration of the same id is either this worker's previous process, killed and restarted
// (its connection is gone: ROUTER_MANDATORY refuses a send to it), which is declared lost now
// instead of after the heartbeat timeout; or a second process given a serving worker's id,
// which is refused with AlreadyExists while the first keeps serving. A holder whose host
// vanished keeps its half-open connection until the heartbeat timeout; the newcomer repeats
// its hello and is taken once the holder is declared lost.
bool Coordinator::Impl::ClaimWorkerId(const std::string& peer, const std::string& id, const std::string& host,
                                      uint32_t pid) {
  for (auto& [other_peer, other] : workers) {
    if (other_peer == peer || other.id != id || other.state == WorkerState::kLost) continue;
    capnp::MallocMessageBuilder probe;
    probe.initRoot<proto::Envelope>().initHeartbeat().setEpoch(epoch);
    const Status reach = transport->Send(probe, other_peer, 100ms);
    if (reach.ok()) {
      const auto heard = std::chrono::duration_cast<std::chrono::milliseconds>(Now() - other.last_seen);
      spdlog::warn("refused a second worker '{}' (pid {} on {}): pid {} on {} holds that id", id, pid, host, other.pid,
                   other.host);
      SendError(peer,
                AlreadyExistsError("worker id '" + id + "' is held by a live worker: pid " + std::to_string(other.pid) +
                                   " on host " + other.host + ", heard " + std::to_string(heard.count()) +
                                   " ms ago. Give each worker its own --worker-id; "
                                   "if that process has exited, this one is taken once it misses its heartbeats (" +
                                   std::to_string(control::ControlTimings::kHeartbeatTimeout.count()) + " ms)"),
                0);
      return false;
    }
    spdlog::warn("worker {} restarted (pid {} on {} replaces pid {} on {}, whose connection is gone)", id, pid, host,
                 other.pid, other.host);
    other.state = WorkerState::kLost;
    workers_changed = true;
    if (other.stage >= 0 || other.vision) OnStageLost(other, "restarted as pid " + std::to_string(pid));
  }
  // Earlier processes of this id that no stage refers to any more: forgotten, so status and
  // metrics list each worker id once.
  for (auto it = workers.begin(); it != workers.end();) {
    const bool stale = it->first != peer && it->second.id == id && it->second.state == WorkerState::kLost &&
                       std::none_of(stages.begin(), stages.end(), [&](const auto& s) { return s.peer == it->first; });
    it = stale ? workers.erase(it) : std::next(it);
  }
  std::erase_if(watchdogs, [&](const auto& dog) { return !workers.count(dog.second); });
  return true;
}

// A worker's compute watchdog: its heartbeats keep the worker alive through a long step, its
// error says the step is stuck (the worker's own thread is inside it and cannot say so).
void Coordinator::Impl::OnWatchdog(const std::string& worker_peer, const proto::Envelope::Reader& env) {
  auto owner = workers.find(worker_peer);
  if (owner == workers.end() || owner->second.state == WorkerState::kLost) return;
  if (env.which() == proto::Envelope::HEARTBEAT) {
    owner->second.last_seen = Now();
    ExtendStepDeadline(env.getHeartbeat().getMicroBatch());
  } else if (env.which() == proto::Envelope::ERROR) {
    WorkerInfo& stuck = owner->second;
    spdlog::error("worker {} (stage {}): {}", stuck.id, stuck.stage, env.getError().getMessage().cStr());
    stuck.state = WorkerState::kLost;
    workers_changed = true;
    // detect_ms: from the step's last progress to this report.
    stuck.last_seen = Now() - std::chrono::milliseconds(env.getError().getStalledMs());
    if (stuck.stage >= 0 || stuck.vision) OnStageLost(stuck, env.getError().getMessage().cStr());
  }
}

void Coordinator::Impl::OnWorkerError(const std::string& peer, proto::Error::Reader e) {
  const Status st(wire::FromWire(e.getCode()), e.getMessage().cStr());
  auto w = workers.find(peer);
  const std::string who = w != workers.end() ? w->second.id : peer;
  spdlog::error("worker {}: {}", who, st.ToString());
  if (const uint64_t image_id = e.getImageId(); image_id != 0) {
    if (w != workers.end()) OnVisionError(w->second, image_id, st);
    return;
  }
  // A load failure names no request (id 0). An error naming a micro-batch or a sequence while
  // loading is about the previous plan's work (a forward of the old epoch refused, a step cut
  // short by the new assignment): not a reason to re-plan again, which would only repeat while
  // such stragglers arrive, each time counting a fault and a replay against every sequence.
  if (state == ClusterState::kLoading && w != workers.end() && w->second.state == WorkerState::kLoading &&
      e.getSequenceId() == 0 && e.getMicroBatchId() == 0) {
    if (!planned_once_served) {
      spdlog::error("stage {} could not load; stopping", w->second.stage);
      exit_code = ExitCodeFor(st);  // a corrupt checkpoint exits 4: no restart loop under systemd
      stop.store(true);
      return;
    }
    // During recovery a neighbour may be dead but not yet detected: plan again (the dead one
    // drops out when its heartbeats stop).
    Recover("stage " + std::to_string(w->second.stage) + " could not start: " + st.message());
    return;
  }
  // A sequence a stage could not admit. One it holds already (a repeated admission) is no
  // news. A refusal of the sequence's own settings (InvalidArgument) fails its request with
  // the reason. Anything else means the stage is not in the state this coordinator's plan and
  // KV accounting say (not assigned, aborted, its KV fuller than counted): a fault, re-planned
  // and replayed (a new plan starts every stage with empty caches).
  if (const uint64_t sequence_id = e.getSequenceId(); sequence_id != 0) {
    auto sit = sequences.find(sequence_id);
    if (sit == sequences.end() || state != ClusterState::kServing) return;  // finished, or re-planning already
    if (st.code() == StatusCode::kAlreadyExists) return;
    if (st.code() == StatusCode::kInvalidArgument) {
      if (sit->second.is_prefix) {
        DropSharedPrefix("its admission failed on worker " + who + ": " + st.message());
        return;
      }
      FailRequest(sit->second.request, st.WithContext("worker " + who));
      return;
    }
    Recover("a stage could not admit sequence " + std::to_string(sequence_id) + " on worker " + who + ": " +
            st.message());
    return;
  }
  // A step that broke in the pipeline (a neighbour unreachable, a hand-off cut short) is a
  // fault, not the requests' fault: re-plan and replay them. Other errors fail the requests of
  // the micro-batch with the stated reason.
  auto mb = in_flight.find(e.getMicroBatchId());
  if (mb != in_flight.end() && state == ClusterState::kServing &&
      (st.code() == StatusCode::kAborted || st.code() == StatusCode::kUnavailable ||
       st.code() == StatusCode::kDeadlineExceeded)) {
    Recover("a step failed on worker " + who + ": " + st.message());
    return;
  }
  if (mb != in_flight.end()) {
    std::set<uint64_t> reqs;
    for (const auto& [id, rows] : mb->second) {
      if (id == prefix.holder && prefix.holder != 0)
        DropSharedPrefix("its step failed on worker " + who + ": " + st.message());
      if (sequences.count(id)) reqs.insert(sequences.at(id).request);
    }
    step_deadlines.erase(mb->first);
    in_flight.erase(mb);
    for (uint64_t r : reqs) FailRequest(r, st.WithContext("worker " + who));
  }
}

void Coordinator::Impl::Heartbeats() {
  const auto now = Now();
  if (now < next_heartbeat) return;
  next_heartbeat = now + control::ControlTimings::kHeartbeatInterval;
  for (auto& [peer, w] : workers) {
    if (w.state == WorkerState::kLost) continue;
    if (now - w.last_seen > control::ControlTimings::kHeartbeatTimeout) {
      spdlog::error("worker {} (stage {}) lost: silent for {} ms", w.id, w.stage,
                    std::chrono::duration_cast<std::chrono::milliseconds>(now - w.last_seen).count());
      w.state = WorkerState::kLost;
      workers_changed = true;
      if (w.stage >= 0 || w.vision)
        OnStageLost(
            w, "silent for " +
                   std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(now - w.last_seen).count()) +
                   " ms");
      continue;
    }
    capnp::MallocMessageBuilder m;
    auto hb = m.initRoot<proto::Envelope>().initHeartbeat();
    hb.setEpoch(epoch);
    Send(m, peer);
  }
  RepeatReleases();
}

void Coordinator::Impl::DeclareUnreachableLost() {
  // Repeated until no send of the recovery it starts finds another worker gone.
  while (!unreachable.empty()) {
    const std::string peer = *unreachable.begin();
    unreachable.erase(unreachable.begin());
    auto it = workers.find(peer);
    if (it == workers.end() || it->second.state == WorkerState::kLost) continue;
    WorkerInfo& w = it->second;
    const auto silent = std::chrono::duration_cast<std::chrono::milliseconds>(Now() - w.last_seen).count();
    spdlog::error("worker {} (stage {}) lost: its connection is gone (heard {} ms ago)", w.id, w.stage, silent);
    w.state = WorkerState::kLost;
    workers_changed = true;
    if (w.stage >= 0 || w.vision) OnStageLost(w, "connection gone, heard " + std::to_string(silent) + " ms ago");
  }
}

void Coordinator::Impl::OnStageLost(WorkerInfo& lost, const std::string& why) {
  if (lost.vision && lost.stage < 0) return OnVisionWorkerLost(lost, why);
  ++faults;
  fault_detected_at = Now();
  last_detect_ms = std::chrono::duration<double, std::milli>(fault_detected_at - lost.last_seen).count();
  spdlog::error("stage {} (worker {}) lost ({}): re-planning on the remaining workers and replaying", lost.stage,
                lost.id, why);
  lost.stage = -1;
  Recover(why);
}

}  // namespace xcpipe::coordinator
