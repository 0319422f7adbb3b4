// Placement: plans from the registered workers, dtype and data plane, assignments, epochs, recovery.
// Members of Coordinator::Impl (coordinator_impl.h), run on the coordinator's thread.
#include "coordinator_impl.h"

namespace xcpipe::coordinator {

std::string detail::ResolveDtype(const std::string& asked, const std::vector<WorkerInfo*>& pool,
                                 const checkpoint::TensorTable& tensors) {
  if (!asked.empty() && asked != "auto") return asked;
  const bool all_cuda = !pool.empty() && std::all_of(pool.begin(), pool.end(), [](const WorkerInfo* w) {
    return w->device.rfind("cuda", 0) == 0;
  });
  if (!all_cuda) return "f32";
  for (const auto& t : tensors.tensors) {
    if (t.dtype == checkpoint::DType::kF16) return "f16";
    if (t.dtype == checkpoint::DType::kBF16 || t.dtype == checkpoint::DType::kF32) break;
  }
  return "bf16";
}

StatusOr<Placement> Coordinator::Impl::PlanPlacement(const std::vector<WorkerInfo*>& pool,
                                                     const planner::PlanningModel& model,
                                                     const std::map<std::string, double>& speeds) const {
  // The cluster as registered: one host per host name, one device per worker.
  planner::ClusterSpec cluster;
  cluster.source = "registered workers";
  cluster.serving.max_sequences = opt.max_sequences;
  cluster.serving.max_context = MaxContext(model.spec);
  // The rows one step carries, as the scheduler packs them (see StepRowLimit): what each
  // stage's activations are planned for.
  cluster.serving.prefill_chunk = StepRowLimit(model.spec);
  Placement out;
  out.dtype = ResolveDtype(opt.dtype, pool, model.tensors);
  cluster.serving.dtype = out.dtype == "bf16"  ? checkpoint::DType::kBF16
                          : out.dtype == "f16" ? checkpoint::DType::kF16
                                               : checkpoint::DType::kF32;
  cluster.network.inter_host_gbps = 10;
  std::vector<std::pair<size_t, size_t>> where(pool.size());
  for (size_t i = 0; i < pool.size(); ++i) {
    auto h = std::find_if(cluster.hosts.begin(), cluster.hosts.end(),
                          [&](const planner::HostSpec& x) { return x.name == pool[i]->host; });
    if (h == cluster.hosts.end()) {
      planner::HostSpec host;
      host.name = pool[i]->host;
      host.address = pool[i]->host;
      host.intra_host_gbps = 100;
      cluster.hosts.push_back(host);
      h = cluster.hosts.end() - 1;
    }
    planner::GpuSpec gpu;
    const bool cuda = pool[i]->device.rfind("cuda", 0) == 0;
    gpu.device = cuda ? pool[i]->device : "cpu:" + std::to_string(i);
    // Workers sharing one GPU of a host (allowed: they hand off over TCP) split its memory and
    // speed; the planner, which sees one entry per device, gets the later ones under ordinals
    // no device has (status shows the real device of each worker).
    size_t gpu_sharers = 1, gpu_rank = 0;
    if (cuda) {
      for (size_t j = 0; j < pool.size(); ++j) {
        if (j == i || pool[j]->host != pool[i]->host || pool[j]->device != pool[i]->device) continue;
        ++gpu_sharers;
        if (j < i) ++gpu_rank;
      }
      if (gpu_rank > 0) gpu.device = "cuda:" + std::to_string(kSharedGpuOrdinal + i);
    }
    gpu.memory_gib = static_cast<double>(pool[i]->memory) / double(1ull << 30);
    if (!cuda) {
      // CPU workers on one host share its RAM, and each announces all of it: each is planned
      // for its share, so their plans together fit the host.
      const auto sharing = std::count_if(pool.begin(), pool.end(), [&](const WorkerInfo* w) {
        return w->host == pool[i]->host && w->device.rfind("cuda", 0) != 0;
      });
      gpu.memory_gib /= static_cast<double>(std::max<std::ptrdiff_t>(1, sharing));
    }
    // A CUDA worker's speed as it measured its device at start; the constants stand in for a
    // worker that could not measure (an older one, or no toolkit at build time).
    gpu.tflops = cuda ? (pool[i]->matmul_tflops > 0 ? pool[i]->matmul_tflops : 100.0)
                      : 0.05 * std::max<uint32_t>(1, pool[i]->threads);
    gpu.mem_bw_gbps =
        cuda ? (pool[i]->bandwidth_bytes_per_s > 0 ? static_cast<double>(pool[i]->bandwidth_bytes_per_s) / 1e9 : 1000.0)
             : 20.0;
    gpu.reserved_gib = cuda ? planner::kDefaultCudaReservedGib : planner::kDefaultCpuReservedGib;
    if (gpu_sharers > 1) {
      gpu.memory_gib /= static_cast<double>(gpu_sharers);
      gpu.tflops /= static_cast<double>(gpu_sharers);
      gpu.mem_bw_gbps /= static_cast<double>(gpu_sharers);
    }
    if (auto sd = speeds.find(pool[i]->peer); sd != speeds.end() && sd->second > 0) {
      gpu.tflops /= sd->second;  // measured: this worker runs slower (or faster) than predicted
      gpu.mem_bw_gbps /= sd->second;
    }
    where[i] = {static_cast<size_t>(h - cluster.hosts.begin()), h->gpus.size()};
    h->gpus.push_back(gpu);
  }
  planner::PlanOptions plan_options;
  if (auto strategy = planner::ParseStrategy(opt.strategy)) plan_options.strategy = *strategy;
  // Where the vision block goes (CoordinatorOptions::vision_stage): the planner resolves auto; a
  // separate plan asked for is kept only when it fits, else vision stays on stage 0, saying why.
  const bool has_vision =
      !model.spec.blocks.empty() && model.spec.blocks.front().kind == checkpoint::BlockKind::kVision;
  plan_options.vision = !has_vision || opt.vision_stage == "first" ? planner::VisionPlacement::kFirstStage
                        : opt.vision_stage == "separate"           ? planner::VisionPlacement::kSeparateStage
                                                                   : planner::VisionPlacement::kAuto;
  std::string vision_why = !has_vision ? "the model has no vision block" : "--vision-stage " + opt.vision_stage;
  if (plan_options.vision == planner::VisionPlacement::kSeparateStage && pool.size() < 2) {
    vision_why =
        "vision on stage 0: vision workers need at least 2 workers, and " + std::to_string(pool.size()) + " is live";
    plan_options.vision = planner::VisionPlacement::kFirstStage;
  }
  StatusOr<planner::Plan> plan = planner::MakePlan(model, cluster, plan_options);
  if (plan_options.vision == planner::VisionPlacement::kSeparateStage && (!plan.ok() || !plan->feasible)) {
    vision_why = "vision on stage 0: no plan with the vision block apart fits the workers (" +
                 (plan.ok() ? plan->infeasible_reason : plan.status().message()) + ")";
    plan_options.vision = planner::VisionPlacement::kFirstStage;
    plan = planner::MakePlan(model, cluster, plan_options);
  }
  if (plan.ok() && !plan->vision_reason.empty()) vision_why = "auto: " + plan->vision_reason;
  const bool separate = plan.ok() && plan->vision == planner::VisionPlacement::kSeparateStage;
  if (!plan.ok() || !plan->feasible) {
    return FailedPreconditionError(plan.ok() ? plan->infeasible_reason : plan.status().ToString());
  }
  std::vector<const WorkerInfo*> stage_workers;  // in stage order (the vision stage first when apart)
  std::vector<bool> used(pool.size(), false);
  for (const auto& sp : plan->stages) {
    const WorkerInfo* w = nullptr;
    for (size_t i = 0; i < pool.size(); ++i) {
      if (where[i].first == sp.device_ref.host && where[i].second == sp.device_ref.gpu) {
        w = pool[i];
        used[i] = true;
      }
    }
    if (w == nullptr) return InternalError("plan names a device no worker holds");
    stage_workers.push_back(w);
  }
  // Vision apart: the plan's vision stage, and the extra vision workers the plan found room for
  // on devices the pipeline leaves unused, encode images; the language pipeline is the plan's
  // other stages.
  if (separate) {
    out.vision_workers.emplace_back(stage_workers.front(), plan->stages.front());
    stage_workers.erase(stage_workers.begin());
    for (const auto& extra : plan->extra_vision) {
      for (size_t i = 0; i < pool.size(); ++i) {
        if (!used[i] && where[i].first == extra.device_ref.host && where[i].second == extra.device_ref.gpu) {
          out.vision_workers.emplace_back(pool[i], extra);
        }
      }
    }
  }
  out.plan = std::move(plan).value();
  out.separate = separate;
  out.vision_why = std::move(vision_why);
  out.stage_workers = std::move(stage_workers);
  return out;
}

std::vector<WorkerInfo*> Coordinator::Impl::LiveWorkers() {
  std::vector<WorkerInfo*> pool;
  for (auto& [peer, w] : workers)
    if (w.state != WorkerState::kLost) pool.push_back(&w);
  std::sort(pool.begin(), pool.end(), [](auto* a, auto* b) { return a->id < b->id; });
  return pool;
}

void Coordinator::Impl::MaybePlan() {
  if (state != ClusterState::kWaiting) return;
  if (planned_once && !workers_changed) return;
  std::vector<WorkerInfo*> pool = LiveWorkers();
  // After a fault: whatever is alive.
  const int needed = planned_once ? 1 : std::max(opt.expect_workers, static_cast<int>(opt.expect_worker_ids.size()));
  if (static_cast<int>(pool.size()) < needed) {
    if (!planned_once && Now() - started > opt.worker_wait) {
      // Name who came and who did not, so an operator knows which host or GPU to look at.
      std::string registered, missing;
      for (const auto* w : pool) registered += (registered.empty() ? "" : ", ") + w->id + " (" + w->host + ")";
      for (const auto& id : opt.expect_worker_ids)
        if (std::none_of(pool.begin(), pool.end(), [&](const WorkerInfo* w) { return w->id == id; }))
          missing += (missing.empty() ? "" : ", ") + id;
      if (missing.empty()) missing = std::to_string(needed - static_cast<int>(pool.size())) + " unnamed worker(s)";
      spdlog::error("gave up after {} s waiting for {} workers: {} registered [{}]; missing: {}",
                    opt.worker_wait.count() / 1000, needed, pool.size(), registered, missing);
      exit_code = kExitUnavailable;
      stop.store(true);
    }
    return;
  }
  workers_changed = false;
  auto model = planner::LoadCheckpointForPlanning(opt.model_dir);
  if (!model.ok()) {
    spdlog::error("cannot plan: {}", model.status().ToString());
    exit_code = ExitCodeFor(model.status());
    stop.store(true);
    return;
  }
  StatusOr<Placement> placement = PlanPlacement(pool, *model, PlannedSlowdowns(speeds));
  if (!placement.ok() && placement.status().code() != StatusCode::kFailedPrecondition) {
    spdlog::error("{}", placement.status().message());
    stop.store(true);
    return;
  }
  if (!placement.ok()) {
    const std::string why = placement.status().message();
    if (!planned_once) {
      spdlog::error("no plan fits the registered workers: {}", why);
      exit_code = kExitInfeasible;
      stop.store(true);
      return;
    }
    // After a fault: the survivors cannot hold the model. Fail what is waiting, with the reason,
    // and keep refusing new requests until capacity returns (a worker registers again).
    spdlog::error("cannot recover on {} worker(s): {}", pool.size(), why);
    std::vector<uint64_t> ids;
    for (const auto& [id, r] : requests) ids.push_back(id);
    for (uint64_t id : ids) {
      FailRequest(id, ResourceExhaustedError("a stage was lost and the remaining workers cannot hold the model (" +
                                             why + "); waiting for capacity to return"));
    }
    capacity_lost = true;
    return;
  }
  plan_dtype = placement->dtype;
  const planner::Plan* plan = &placement->plan;
  const bool separate = placement->separate;
  const std::string& vision_why = placement->vision_why;
  const std::vector<const WorkerInfo*>& stage_workers = placement->stage_workers;
  const auto& vision_workers = placement->vision_workers;
  // The data plane goes with the plan: NCCL ids are fresh every epoch.
  StatusOr<DataPlaneChoice> chosen = ChooseDataPlane(stage_workers);
  if (!chosen.ok()) {
    spdlog::error("cannot plan on the registered workers: {}", chosen.status().message());
    if (!planned_once) {
      exit_code = kExitInfeasible;
      stop.store(true);
      return;
    }
    // After a fault: what is waiting fails with the reason; a worker that registers again
    // (workers_changed) brings another attempt.
    std::vector<uint64_t> ids;
    for (const auto& [id, r] : requests) ids.push_back(id);
    for (uint64_t id : ids) FailRequest(id, chosen.status().WithContext("no plan can be served"));
    capacity_lost = true;
    return;
  }
  planned_once = true;
  capacity_lost = false;
  ++epoch;
  stages.clear();
  vision.clear();
  ForgetImageJobs();
  vision_mode = separate ? "separate" : "first";
  vision_reason = vision_why;
  data_plane = std::move(chosen).value();
  const size_t language_first = separate ? 1 : 0;  // the plan's first language stage
  for (size_t k = language_first; k < plan->stages.size(); ++k) {
    const auto& sp = plan->stages[k];
    const WorkerInfo* w = stage_workers[k - language_first];
    StageInfo st;
    st.peer = w->peer;
    st.first = sp.first_block;
    st.end = sp.end_block;
    st.kv_budget = opt.kv_budget_bytes ? opt.kv_budget_bytes : sp.bytes.kv;
    st.planned_bytes = sp.bytes.total();
    st.predicted = sp.bytes;
    st.predicted_step_ms = sp.step_ms();
    stages.push_back(st);
  }
  spdlog::info("plan (epoch {}): {} stages in {}, predicted bottleneck {:.2f} ms", epoch, stages.size(), plan_dtype,
               plan->bottleneck_ms);
  spdlog::info("vision: {} ({})",
               separate ? "on " + std::to_string(vision_workers.size()) + " vision worker(s)" : "on stage 0",
               vision_why);
  spdlog::info("data plane: {} ({})", data_plane.kind, data_plane.reason);
  if (rebalance_pending) {
    rebalance_pending = false;
    std::string after;
    for (const auto& st : stages) {
      after += (after.empty() ? "" : ", ") + workers[st.peer].id + " [" + std::to_string(st.first) + ", " +
               std::to_string(st.end) + ")";
    }
    last_rebalance += "; after: " + after;
    spdlog::info("rebalanced: {}", last_rebalance);
  }
  for (size_t i = 0; i < stages.size(); ++i) {
    WorkerInfo& w = workers[stages[i].peer];
    w.stage = static_cast<int>(i);
    w.state = WorkerState::kLoading;
    w.planned = stages[i].planned_bytes;
    const auto& pb = stages[i].predicted;
    spdlog::info(
        "stage {}: worker {} holds blocks [{}, {}) ({} .. {}); predicted MiB: weights {:.1f}, kv {:.1f}, "
        "activations {:.1f}, workspace {:.1f}, total {:.1f}; step {:.2f} ms",
        i, w.id, stages[i].first, stages[i].end, model->spec.blocks[stages[i].first].name,
        model->spec.blocks[stages[i].end - 1].name, pb.weights / 1048576.0, pb.kv / 1048576.0,
        pb.activations / 1048576.0, pb.workspace / 1048576.0, pb.total() / 1048576.0, stages[i].predicted_step_ms);
    SendAssignment(i);
  }
  for (const auto& [w, vp] : vision_workers) {
    VisionWorker v;
    v.peer = w->peer;
    v.first = vp.first_block;
    v.end = vp.end_block;
    v.planned_bytes = vp.bytes.total();
    v.predicted = vp.bytes;
    v.predicted_encode_ms = vp.encode_ms_per_image;
    vision.push_back(v);
    WorkerInfo& info = workers[w->peer];
    info.vision = true;
    info.state = WorkerState::kLoading;
    info.planned = v.planned_bytes;
    spdlog::info(
        "vision worker {}: blocks [{}, {}) ({}); predicted MiB: weights {:.1f}, activations {:.1f}, "
        "workspace {:.1f}, total {:.1f}; encode {:.1f} ms per image",
        info.id, v.first, v.end, model->spec.blocks[v.first].name, vp.bytes.weights / 1048576.0,
        vp.bytes.activations / 1048576.0, vp.bytes.workspace / 1048576.0, vp.bytes.total() / 1048576.0,
        vp.encode_ms_per_image);
    SendVisionAssignment(vision.size() - 1);
  }
  state = ClusterState::kLoading;
}

StatusOr<DataPlaneChoice> Coordinator::Impl::ChooseDataPlane(
    const std::vector<const WorkerInfo*>& stage_workers) const {
  DataPlaneChoice choice;
  if (opt.data_plane == "tcp") {
    choice.reason = "--data-plane tcp";
    return choice;
  }
  // Whatever rules NCCL out, in words naming the worker; empty: NCCL it is. NCCL refuses two
  // ranks of one communicator on one GPU, so neighbours sharing a GPU go over TCP.
  std::string obstacle;
  for (size_t k = 0; k + 1 < stage_workers.size() && obstacle.empty(); ++k) {
    const WorkerInfo& a = *stage_workers[k];
    const WorkerInfo& b = *stage_workers[k + 1];
    if (a.host == b.host && a.device == b.device && a.device.rfind("cuda", 0) == 0) {
      obstacle = "workers " + a.id + " and " + b.id + " (stages " + std::to_string(k) + " and " +
                 std::to_string(k + 1) + ") share " + a.device + " on " + a.host +
                 ", and NCCL cannot join two ranks on one GPU";
    }
  }
#ifndef XCPIPE_HAVE_CUDA
  (void)stage_workers;
  obstacle = "this coordinator was built without CUDA and NCCL, so it cannot create NCCL unique ids";
#else
  for (size_t k = 0; k < stage_workers.size() && obstacle.empty(); ++k) {
    const WorkerInfo& w = *stage_workers[k];
    const auto& planes = w.data_planes;
    if (w.device.rfind("cuda", 0) != 0) {
      obstacle =
          "worker " + w.id + " (stage " + std::to_string(k) + ") computes on " + w.device + ", not a CUDA device";
    } else if (std::find(planes.begin(), planes.end(), "nccl") == planes.end()) {
      std::string offered;
      for (const auto& p : planes) offered += (offered.empty() ? "" : ", ") + p;
      obstacle = "worker " + w.id + " (stage " + std::to_string(k) + ") does not offer the nccl data plane (offered: " +
                 (offered.empty() ? std::string("nothing") : offered) + ")";
    }
  }
  for (size_t link = 0; link + 1 < stage_workers.size() && obstacle.empty(); ++link) {
    auto id = cuda::CreateNcclUniqueId();
    if (!id.ok()) {
      obstacle = "creating an NCCL unique id failed: " + id.status().ToString();
      break;
    }
    choice.nccl_ids.emplace_back(reinterpret_cast<const char*>(id->data()), id->size());
  }
#endif
  if (obstacle.empty()) {
    choice.kind = "nccl";
    choice.reason = "every stage is a CUDA worker offering NCCL; " + std::to_string(choice.nccl_ids.size()) +
                    " link(s) with fresh unique ids";
    return choice;
  }
  if (opt.data_plane == "nccl") return FailedPreconditionError("--data-plane nccl cannot be used: " + obstacle);
  choice.nccl_ids.clear();
  choice.reason = "TCP because " + obstacle;
  return choice;
}

void Coordinator::Impl::SendAssignment(size_t i) {
  capnp::MallocMessageBuilder m;
  auto a = m.initRoot<proto::Envelope>().initAssignStage();
  a.setEpoch(epoch);
  a.setStageIndex(static_cast<uint32_t>(i));
  a.setStageCount(static_cast<uint32_t>(stages.size()));
  a.setBlockBegin(static_cast<uint32_t>(stages[i].first));
  a.setBlockEnd(static_cast<uint32_t>(stages[i].end));
  a.setModelPath(std::filesystem::absolute(opt.model_dir).string());
  a.setDtype(plan_dtype);
  a.setKvBudgetBytes(stages[i].kv_budget);
  a.setNextDataAddress(i + 1 < stages.size() ? workers[stages[i + 1].peer].data_address : "");
  a.setSpecOverrides(opt.spec_overrides);
  a.setMaxBatchRows(static_cast<uint32_t>(opt.max_batch_rows));
  a.setDataPlane(data_plane.kind);
  if (data_plane.kind == "nccl") {
    // Link k joins stage k (rank 0, "next") and stage k+1 (rank 1, "previous"). A re-sent
    // assignment carries the same ids: the worker keeps links it has started.
    auto bytes = [](const std::string& id) {
      return kj::arrayPtr(reinterpret_cast<const kj::byte*>(id.data()), id.size());
    };
    if (i > 0 && i - 1 < data_plane.nccl_ids.size()) a.setPreviousNcclId(bytes(data_plane.nccl_ids[i - 1]));
    if (i < data_plane.nccl_ids.size()) a.setNextNcclId(bytes(data_plane.nccl_ids[i]));
  }
  stages[i].last_load_news = Now();
  Send(m, stages[i].peer);
}

void Coordinator::Impl::ResendLostAssignments() {
  if (state != ClusterState::kLoading) return;
  const auto now = Now();
  for (size_t i = 0; i < stages.size(); ++i) {
    // No progress report and no ready for a while: the assignment or the answer was lost. The
    // worker treats a repeat of the same epoch as the same assignment (the model is kept).
    if (stages[i].ready || now - stages[i].last_load_news < kAssignmentResend) continue;
    spdlog::warn("stage {}: no word from worker {} since its assignment; sending it again", i,
                 workers[stages[i].peer].id);
    SendAssignment(i);
  }
  for (size_t k = 0; k < vision.size(); ++k) {
    if (vision[k].ready || now - vision[k].last_load_news < kAssignmentResend) continue;
    spdlog::warn("vision worker {}: no word since its assignment; sending it again", workers[vision[k].peer].id);
    SendVisionAssignment(k);
  }
}

void Coordinator::Impl::Recover(const std::string& why) { Replan(why, /*fault=*/true); }

void Coordinator::Impl::Replan(const std::string& why, bool fault) {
  if (fault && !recovering) fault_detected_at = Now();
  if (fault) spdlog::warn("recovering: {}", why);
  window_base.clear();
  ++epoch;  // anything still in flight under the old epoch is ignored from now on
  workers_changed = true;
  // Every admitted sequence goes back to the front of the queue, keeping its generated tokens:
  // it will be re-admitted under the new plan and prefill its prompt plus those tokens.
  std::vector<uint64_t> replay;
  std::set<uint64_t> over_budget;  // requests whose sequences faults have replayed too often
  // The new plan starts with empty caches (no release messages needed): the shared head's
  // holder goes; the first admission that needs it makes a new one.
  const SeqState holder_was = RemoveHolder(/*release_on_stages=*/false);
  // The fault hit the head's prefill, which queued sequences wait for.
  const bool holder_knocked_back = holder_was == SeqState::kReady || holder_was == SeqState::kInFlight;
  for (auto& [id, seq] : sequences) {
    if (seq.state == SeqState::kReady || seq.state == SeqState::kInFlight) {
      seq.state = SeqState::kQueued;
      seq.cached = 0;
      seq.in_pieces = false;
      if (seq.beam && !seq.beam->history.empty()) {
        spdlog::info("beam group of sequence {} ({} beams) replays its {} recorded steps", id, seq.beam->ids.size(),
                     seq.beam->history.size());
      }
      replay.push_back(id);
      if (fault && ++seq.fault_replays > kMaxFaultReplays) over_budget.insert(seq.request);
    } else if (seq.state == SeqState::kQueued && seq.use_prefix && holder_knocked_back) {
      // Its progress was the head's prefill: that counts against its budget too, or a fault
      // that repeats on the head would keep it waiting forever.
      if (fault && ++seq.fault_replays > kMaxFaultReplays) over_budget.insert(seq.request);
    }
  }
  replays += replay.size();
  for (auto it = replay.rbegin(); it != replay.rend(); ++it) queue.push_front(*it);
  in_flight.clear();
  step_deadlines.clear();
  releases_to_repeat.clear();
  stages.clear();
  vision.clear();
  ForgetImageJobs();
  vision_requeued.clear();
  for (auto& [peer, w] : workers) {
    w.vision = false;
    if (w.state != WorkerState::kLost) {
      w.state = WorkerState::kIdle;
      w.stage = -1;
    }
  }
  state = ClusterState::kWaiting;
  if (fault) recovering = true;
  // The retry budget: a request that faults keep knocking back (a poison input, a flapping
  // worker) ends with the reason instead of cycling forever.
  for (uint64_t request : over_budget) {
    FailRequest(request, AbortedError("replayed after " + std::to_string(kMaxFaultReplays) +
                                      " faults; giving up on this request (last fault: " + why + ")"));
  }
}

}  // namespace xcpipe::coordinator
