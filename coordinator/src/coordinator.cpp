#include "coordinator_impl.h"

namespace xcpipe::coordinator {

void Coordinator::Impl::Dispatch(const std::string& peer, const proto::Envelope::Reader& env) {
  auto w = workers.find(peer);
  if (w != workers.end()) w->second.last_seen = Now();
  if (auto dog = watchdogs.find(peer); dog != watchdogs.end() && env.which() != proto::Envelope::HELLO) {
    return OnWatchdog(dog->second, env);
  }
  switch (env.which()) {
    case proto::Envelope::HELLO:
      return OnHello(peer, env.getHello());
    case proto::Envelope::HEARTBEAT:
      if (w != workers.end()) {
        w->second.steps = env.getHeartbeat().getStepsCompleted();
        ExtendStepDeadline(env.getHeartbeat().getMicroBatch());
        w->second.resident = env.getHeartbeat().getResidentBytes();
        if (env.getHeartbeat().hasResources()) {
          UpdateFromHeartbeat(env.getHeartbeat().getResources(), w->second.steps, w->second.figures);
        }
      }
      return;
    case proto::Envelope::LOAD_PROGRESS:
      if (w != workers.end()) {
        w->second.load_done = env.getLoadProgress().getBytesDone();
        w->second.load_total = env.getLoadProgress().getBytesTotal();
        if (w->second.stage >= 0 && static_cast<size_t>(w->second.stage) < stages.size()) {
          stages[w->second.stage].last_load_news = Now();
        }
        for (auto& v : vision)
          if (v.peer == peer) v.last_load_news = Now();
        spdlog::info("stage {} loading: {} / {} MiB", w->second.stage, w->second.load_done >> 20,
                     w->second.load_total >> 20);
      }
      return;
    case proto::Envelope::STAGE_READY: {
      auto r = env.getStageReady();
      if (w == workers.end() || r.getEpoch() != epoch || r.getStageIndex() >= stages.size()) return;
      if (r.getVision()) {
        auto v = std::find_if(vision.begin(), vision.end(), [&](const VisionWorker& x) { return x.peer == peer; });
        if (v == vision.end()) return;  // not a vision worker of this plan
        v->ready = true;
        w->second.state = state == ClusterState::kServing ? WorkerState::kServing : WorkerState::kReady;
        w->second.resident = r.getResidentBytes();
        w->second.weights_kept = r.getWeightsKept();
        w->second.dtype = r.getDtype().cStr();
        spdlog::info("vision worker {} ready in {} ms ({} MiB weights, {}, {} on {})", w->second.id, r.getLoadMs(),
                     r.getWeightBytes() >> 20, r.getWeightsKept() ? "kept" : "loaded", r.getDtype().cStr(),
                     r.getDevice().cStr());
      } else {
        auto& st = stages[r.getStageIndex()];
        // Only from the worker this plan gave the stage: a worker still loading an older
        // assignment whose epoch a welcome raised names the current epoch and its old stage.
        if (st.peer != peer) return;
        st.ready = true;
        st.kv_per_token = r.getKvBytesPerToken();
        st.weight_bytes = r.getWeightBytes();
        w->second.state = WorkerState::kReady;
        w->second.resident = r.getResidentBytes();
        w->second.weights_kept = r.getWeightsKept();
        w->second.dtype = r.getDtype().cStr();
        spdlog::info("stage {} ready in {} ms ({} MiB weights, {}, {} on {})", r.getStageIndex(), r.getLoadMs(),
                     st.weight_bytes >> 20, r.getWeightsKept() ? "kept" : "loaded", r.getDtype().cStr(),
                     r.getDevice().cStr());
      }
      if (state == ClusterState::kLoading &&
          std::all_of(stages.begin(), stages.end(), [](const StageInfo& s) { return s.ready; }) &&
          std::all_of(vision.begin(), vision.end(), [](const VisionWorker& v) { return v.ready; })) {
        state = ClusterState::kServing;
        planned_once_served = true;
        for (const auto& s : stages) workers[s.peer].state = WorkerState::kServing;
        for (const auto& v : vision) workers[v.peer].state = WorkerState::kServing;
        spdlog::info("serving on {}", bound);
        PublishMetrics();  // /readyz says ready before anyone is told so
        if (opt.on_ready) opt.on_ready(bound);
      }
      return;
    }
    case proto::Envelope::STEP_RESULT:
      return OnStepResult(env.getStepResult());
    case proto::Envelope::IMAGE_ENCODED:
      if (w != workers.end()) OnImageEncoded(peer, env.getImageEncoded());
      return;
    case proto::Envelope::ERROR:
      if (w != workers.end()) return OnWorkerError(peer, env.getError());
      return;
    case proto::Envelope::SUBMIT:
      // A client that said hello to a previous coordinator (this one restarted) goes on
      // submitting on the same connection: the submit itself introduces it.
      if (!clients.count(peer)) {
        if (workers.count(peer)) {
          return SendError(peer, FailedPreconditionError("workers may not submit requests"),
                           env.getSubmit().getRequestId());
        }
        clients.insert(peer);
      }
      if (draining || (state != ClusterState::kServing && (!planned_once || capacity_lost))) {
        ++live.submitted;
        ++live.refused_by_reason["Unavailable"];
        capnp::MallocMessageBuilder m;
        auto e = m.initRoot<proto::Envelope>().initTokenEvent();
        e.setRequestId(env.getSubmit().getRequestId());
        e.setDone(true);
        e.setFinishReason("Unavailable");
        e.setError(draining ? std::string("the coordinator is shutting down; submit to another cluster or retry later")
                   : capacity_lost ? std::string(kCapacityLostRefusal)
                                   : std::string("the cluster is not serving yet (") + ClusterStateName(state) +
                                         "); retry shortly");
        if (!draining) e.setRetryAfterMs(static_cast<uint32_t>(kRetryAfterWhenNotServing.count()));
        Send(m, peer);
        return;
      }
      return OnSubmit(peer, env.getSubmit());
    case proto::Envelope::STATUS_REQUEST:
      return OnStatus(peer);
    case proto::Envelope::WELCOME:
    case proto::Envelope::ASSIGN_STAGE:
    case proto::Envelope::ADMIT_SEQUENCE:
    case proto::Envelope::RELEASE_SEQUENCES:
    case proto::Envelope::FORWARD:
    case proto::Envelope::DRAIN:
    case proto::Envelope::SHUTDOWN:
    case proto::Envelope::TOKEN_EVENT:
    case proto::Envelope::STATUS_REPLY:
    case proto::Envelope::ENCODE_IMAGE:
      return SendError(peer, InvalidArgumentError("a coordinator does not accept this message"), 0);
  }
  SendError(peer, InvalidArgumentError("unknown message type"), 0);
}

void Coordinator::Impl::Poll(std::chrono::milliseconds wait) {
  auto in = transport->Receive(wait);
  while (true) {
    if (!in.ok()) {
      spdlog::warn("{}", in.status().ToString());
    } else if (in->has_value()) {
      try {
        Dispatch((*in)->peer, (*in)->message->envelope());
      } catch (const std::exception& e) {
        SendError((*in)->peer, InternalError(std::string("coordinator: ") + e.what()), 0);
      }
    } else {
      break;
    }
    in = transport->Receive(0ms);
  }
  TakePreparedSubmits();
  DeclareUnreachableLost();
  MaybePlan();
  Admit();
  PumpVision();
  Schedule();
  Heartbeats();
  CheckStepDeadlines();
  CheckRequestDeadlines();
  CheckRebalance();
  ResendLostAssignments();
  DeclareUnreachableLost();
  PublishMetrics();
}

void Coordinator::Poll(std::chrono::milliseconds wait) { impl_->Poll(wait); }

Coordinator::Coordinator(CoordinatorOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->opt = std::move(options);
  const auto now = impl_->Now();
  impl_->started = now;
  impl_->next_heartbeat = now;
  impl_->next_request_deadline_check = now;
}

Coordinator::~Coordinator() = default;

std::string Coordinator::worker_state(const std::string& peer) const {
  auto it = impl_->workers.find(peer);
  return it == impl_->workers.end() ? std::string() : WorkerStateName(it->second.state);
}

void Coordinator::RequestStop() { impl_->stop.store(true); }

void Coordinator::RequestDrain() { impl_->drain_requested.store(true); }

std::string Coordinator::metrics_address() const {
  return impl_->metrics_http ? impl_->metrics_http->address() : std::string();
}

StatusOr<std::string> Coordinator::Bind() {
  Impl& s = *impl_;
  if (s.transport) return s.bound;
  std::filesystem::path tok = s.opt.tokenizer;
  if (tok.empty()) {
    auto found = FindTokenizer(s.opt.model_dir);
    if (!found.ok()) return found.status();
    tok = *found;
  }
  if (s.opt.data_plane != "auto" && s.opt.data_plane != "tcp" && s.opt.data_plane != "nccl") {
    return InvalidArgumentError("data plane '" + s.opt.data_plane + "' is unknown; expected auto, tcp or nccl");
  }
  if (!planner::ParseStrategy(s.opt.strategy)) {
    return InvalidArgumentError("strategy '" + s.opt.strategy +
                                "' is unknown; expected balanced, even or greedy-memory");
  }
  if (s.opt.max_sequences < 1 || s.opt.max_context < 16) {
    return InvalidArgumentError("max_sequences must be >= 1 and max_context >= 16 (got " +
                                std::to_string(s.opt.max_sequences) + " and " + std::to_string(s.opt.max_context) +
                                ")");
  }
  auto edge = RequestPreparer::Create(s.opt.model_dir, tok, s.opt.edge);
  if (!edge.ok()) return edge.status().WithContext("model " + s.opt.model_dir.string());
  s.edge = std::move(edge).value();
  s.prepare_thread = std::make_unique<PrepareThread>(s.edge.get());
  if (s.opt.prefix_cache) {
    s.prefix.head = s.edge->shared_head();
    if (!s.prefix.head.empty()) {
      spdlog::info("shared prompt head: {} tokens of the chat template computed once per plan and copied",
                   s.prefix.head.size());
    }
  }
  if (!s.opt.metrics_listen.empty() && !s.metrics_http) {
    s.board->Publish(std::make_shared<const MetricsSnapshot>(s.Snapshot()));
    auto http = MetricsHttpServer::Start(s.opt.metrics_listen, s.board);
    if (!http.ok()) return http.status().WithContext("--metrics-listen");
    s.metrics_http = std::move(http).value();
  }
  if (s.opt.transport) {
    s.transport = s.opt.transport;
  } else {
    auto socket = control::ControlSocket::BindRouter(s.context, s.opt.listen, s.opt.allow_wildcard_bind, s.opt.curve);
    if (!socket.ok()) return socket.status();
    s.own_transport = std::make_unique<control::ZmqRouterTransport>(std::move(socket).value());
    s.transport = s.own_transport.get();
  }
  s.bound = s.transport->address();
  if (s.opt.curve.enabled()) {
    spdlog::info("control: CURVE on {}: coordinator key {}..., {} allowed public key(s)", s.bound,
                 control::KeyFingerprint(s.opt.curve.public_key), s.opt.curve.allowed_keys.size());
  } else if (!control::IsLoopbackEndpoint(s.bound)) {
    spdlog::warn(
        "control traffic on {} is unauthenticated and unencrypted: anyone who reaches it can submit "
        "requests or pose as a worker; configure CURVE keys (--secret-key, --allow; see `xcpipe keys`)",
        s.bound);
  }
  return s.bound;
}

int Coordinator::Run() {
  Impl& s = *impl_;
  auto bound = Bind();
  if (!bound.ok()) {
    spdlog::error("{}", bound.status().ToString());
    return ExitCodeFor(bound.status());
  }
  s.started = s.Now();
  spdlog::info("coordinator listening on {} for {} worker(s); model {} ({})", s.bound, s.opt.expect_workers,
               s.opt.model_dir.string(), checkpoint::ArchName(s.edge->spec().arch));
  while (!s.stop.load()) {
    if (s.drain_requested.load() && !s.draining) {
      s.draining = true;
      s.drain_deadline = s.Now() + s.opt.drain_timeout;
      spdlog::info("drain requested: draining ({} request(s) in progress, at most {} s)", s.requests.size(),
                   std::chrono::duration_cast<std::chrono::seconds>(s.opt.drain_timeout).count());
      if (s.opt.on_drain) s.opt.on_drain();
    }
    if (s.draining && ((s.requests.empty() && s.preparing.empty()) || s.Now() > s.drain_deadline)) {
      if (!s.requests.empty()) spdlog::warn("drain: stopping with {} request(s) unfinished", s.requests.size());
      break;
    }
    if (s.opt.on_tick) s.opt.on_tick();
    s.Poll(s.in_flight.empty() && s.preparing.empty() ? 50ms : 5ms);
  }
  spdlog::info("coordinator stopping: telling {} worker(s) to shut down", s.workers.size());
  for (auto& [peer, w] : s.workers) {
    if (w.state == WorkerState::kLost) continue;
    capnp::MallocMessageBuilder m;
    m.initRoot<proto::Envelope>().initShutdown().setReason("coordinator stopping");
    (void)s.transport->Send(m, peer, 200ms);
  }
  return s.exit_code;
}

}  // namespace xcpipe::coordinator
