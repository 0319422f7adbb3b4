#include "xcpipe/coordinator/client.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>
#include <thread>

#include <unistd.h>

#include <cstring>
#include <random>

#include "sampling_wire.h"
#include "xcpipe/control/socket.h"
#include "xcpipe/control/transport.h"

namespace xcpipe::coordinator {

using Clock = std::chrono::steady_clock;

struct Client::Impl {
  zmq::context_t context;
  std::unique_ptr<control::ControlTransport> transport;
  uint64_t next_request = 1;
  // Says hello and waits for the welcome (or the refusal).
  Status Hello(std::chrono::milliseconds timeout);
};

Client::Client() : impl_(std::make_unique<Impl>()) {}
Client::~Client() = default;

StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& endpoint, std::chrono::milliseconds timeout,
                                                  const control::CurveConfig& curve) {
  std::unique_ptr<Client> c(new Client());
  std::random_device rd;
  const std::string identity = "client-" + std::to_string(getpid()) + "-" + std::to_string(rd());
  auto socket = control::ControlSocket::ConnectDealer(c->impl_->context, endpoint, identity, curve);
  if (!socket.ok()) return socket.status();
  c->impl_->transport = std::make_unique<control::ZmqDealerTransport>(std::move(socket).value(), endpoint);
  Status hello = c->impl_->Hello(timeout);
  if (hello.ok()) return c;
  if (hello.code() != StatusCode::kDeadlineExceeded) return hello;
  // A CURVE handshake that fails looks exactly like silence from here: say what to check.
  return UnavailableError(
      "no answer from the coordinator at " + endpoint + " within " + std::to_string(timeout.count()) + " ms" +
      (curve.enabled() ? " (with CURVE keys: is this client's public key " + control::KeyFingerprint(curve.public_key) +
                             "... on the coordinator's allow-list, and is --server-key its key?)"
                       : " (if the coordinator requires CURVE keys, pass --secret-key and "
                         "--server-key)"));
}

Status Client::Impl::Hello(std::chrono::milliseconds timeout) {
  capnp::MallocMessageBuilder m;
  auto h = m.initRoot<proto::Envelope>().initHello();
  h.setProtocolVersion(proto::K_PROTOCOL_VERSION);
  h.setRole(proto::Role::CLIENT);
  h.initCapabilities().setPid(static_cast<uint32_t>(getpid()));
  if (Status st = transport->Send(m, {}, timeout); !st.ok()) return st;
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    auto in = transport->Receive(left);
    if (!in.ok()) return in.status();
    if (!in->has_value()) break;
    auto env = (*in)->message->envelope();
    if (env.which() == proto::Envelope::WELCOME) return OkStatus();
    if (env.which() == proto::Envelope::ERROR) {
      return Status(wire::FromWire(env.getError().getCode()), env.getError().getMessage().cStr());
    }
  }
  return DeadlineExceededError("no welcome within " + std::to_string(timeout.count()) + " ms");
}

StatusOr<GenerateResult> Client::Generate(const GenerateRequest& request, std::chrono::milliseconds timeout,
                                          const std::function<void(uint32_t, const std::string&)>& on_text) {
  const uint64_t id = impl_->next_request++;
  capnp::MallocMessageBuilder m;
  auto s = m.initRoot<proto::Envelope>().initSubmit();
  s.setRequestId(id);
  s.setPromptJson(request.prompt_json);
  auto images = s.initImages(request.images.size());
  for (size_t i = 0; i < request.images.size(); ++i) {
    images.set(i, kj::arrayPtr(reinterpret_cast<const kj::byte*>(request.images[i].data()), request.images[i].size()));
  }
  s.setMaxNewTokens(request.max_new_tokens);
  // The coordinator gives up when this client does: no work for an answer nobody waits for.
  s.setDeadlineMs(static_cast<uint32_t>(std::min<int64_t>(timeout.count(), UINT32_MAX)));
  SamplingToWire(request.sampling, s.initSampling());
  if (!request.token_ids.empty()) {
    auto ids = s.initTokenIds(request.token_ids.size());
    for (size_t i = 0; i < request.token_ids.size(); ++i) ids.set(i, request.token_ids[i]);
    s.setImMask(kj::arrayPtr(request.im_mask.data(), request.im_mask.size()));
    auto px = s.initPixelImages(request.pixel_images.size());
    for (size_t i = 0; i < request.pixel_images.size(); ++i) {
      const auto& img = request.pixel_images[i];
      px[i].setChannels(static_cast<uint32_t>(img.channels));
      px[i].setHeight(static_cast<uint32_t>(img.height));
      px[i].setWidth(static_cast<uint32_t>(img.width));
      px[i].setGridH(static_cast<uint32_t>(img.grid_h));
      px[i].setGridW(static_cast<uint32_t>(img.grid_w));
      px[i].setPixels(
          kj::arrayPtr(reinterpret_cast<const kj::byte*>(img.pixels.data()), img.pixels.size() * sizeof(float)));
    }
    auto ctx = s.initPenaltyContext(request.penalty_context.size());
    for (size_t i = 0; i < request.penalty_context.size(); ++i) ctx.set(i, request.penalty_context[i]);
    s.setWantLogits(request.want_logits);
  }
  const auto start = Clock::now();
  if (Status st = impl_->transport->Send(m, {}, timeout); !st.ok()) return st;
  GenerateResult result;
  size_t prompts_total = 1;
  std::set<uint32_t> prompts_done;
  std::vector<bool> gap;  // per prompt: an event was lost; the done event's allTokens fills it
  Clock::time_point first_token;
  bool have_first = false, accepted = false;
  size_t tokens = 0;
  int unavailable_retries = 0;
  const auto deadline = start + timeout;
  auto last_heard = start;
  auto grow = [&](size_t n) {
    if (n <= result.token_ids.size()) return;
    result.token_ids.resize(n);
    result.texts.resize(n);
    result.finish_reasons.resize(n);
    gap.resize(n, false);
    prompts_total = std::max(prompts_total, n);
  };
  while (prompts_done.size() < prompts_total) {
    const auto now = Clock::now();
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
    if (left.count() <= 0)
      return DeadlineExceededError("request not finished within " + std::to_string(timeout.count()) + " ms");
    if (request.cancelled && request.cancelled()) {
      result.error = "Cancelled: the caller abandoned the request";
      return result;
    }
    // Silence: the submit, its acknowledgement or the last event may have been lost. Submitting
    // again is safe: the coordinator knows the request by (this client, id) and answers with
    // where it stands, or with the final events of a request that already finished.
    if (now - last_heard > (accepted ? ClientTimings::kResubmitAfterSilence : ClientTimings::kResubmitUnacknowledged)) {
      if (Status st = impl_->transport->Send(m, {}, std::chrono::milliseconds(1000)); !st.ok()) return st;
      last_heard = now;
    }
    auto in = impl_->transport->Receive(std::min(left, std::chrono::milliseconds(100)));
    if (!in.ok()) return in.status();
    if (!in->has_value()) continue;
    auto env = (*in)->message->envelope();
    if (env.which() == proto::Envelope::ERROR) {
      if (env.getError().getRequestId() == id || env.getError().getRequestId() == 0) {
        result.error = std::string(StatusCodeName(wire::FromWire(env.getError().getCode()))) + ": " +
                       env.getError().getMessage().cStr();
        return result;
      }
      continue;
    }
    if (env.which() != proto::Envelope::TOKEN_EVENT) continue;
    auto e = env.getTokenEvent();
    if (e.getRequestId() != id) continue;
    last_heard = Clock::now();
    accepted = true;
    const uint32_t index = e.getPromptIndex();
    grow(std::max<size_t>(index + 1, e.getPromptCount()));
    if (e.getAccepted() || prompts_done.count(index)) continue;  // acknowledgement, or a repeat
    // Place this event's tokens at their offset: skip what was already received (a repeat),
    // and note a gap (an event lost) for the done event to fill.
    auto& have = result.token_ids[index];
    const size_t offset = e.getOffset();
    size_t skip = 0;
    if (offset > have.size()) {
      gap[index] = true;
    } else {
      skip = have.size() - offset;
    }
    if (!gap[index]) {
      // One reader for the list: every get counts its size against the traversal limit, and a
      // beam request's answer arrives as one event of every token.
      const auto event_tokens = e.getTokens();
      for (size_t i = skip; i < event_tokens.size(); ++i) have.push_back(event_tokens[i]);
    }
    if (e.getTokens().size() > skip && !have_first) {
      have_first = true;
      first_token = Clock::now();
      result.ttft_ms = std::chrono::duration<double, std::milli>(first_token - start).count();
    }
    if (index == 0 && e.hasLogits() && e.getLogits().size() > 0 && skip == 0) {
      std::vector<float> row(e.getLogits().size() / sizeof(float));
      std::memcpy(row.data(), e.getLogits().begin(), row.size() * sizeof(float));
      result.logits.push_back(std::move(row));
    }
    tokens += e.getTokens().size() > skip ? e.getTokens().size() - skip : 0;
    std::string text = e.getText().cStr();
    if (!gap[index] && skip == 0) {
      result.texts[index] += text;
      if (on_text && !text.empty()) on_text(index, text);
    }
    if (e.getDone() && e.getRetryAfterMs() > 0 && unavailable_retries < ClientTimings::kMaxUnavailableRetries) {
      // Not serving yet (starting, or restarted and re-planning): retry, within the budget and
      // the deadline. Tokens already received stay; a replay resumes after them.
      ++unavailable_retries;
      std::this_thread::sleep_for(std::min<std::chrono::milliseconds>(std::chrono::milliseconds(e.getRetryAfterMs()),
                                                                      ClientTimings::kMaxRetryBackoff));
      if (Status st = impl_->transport->Send(m, {}, std::chrono::milliseconds(1000)); !st.ok()) return st;
      last_heard = Clock::now();
      continue;
    }
    if (e.getDone()) {
      result.finish_reasons[index] = e.getFinishReason().cStr();
      if (e.hasError() && e.getError().size() > 0) {
        result.error = std::string(e.getFinishReason().cStr()) + ": " + e.getError().cStr();
        return result;
      }
      if (e.hasAllTokens() && e.getAllTokens().size() >= have.size()) {
        // Tokens already streamed never change: the full list extends what was received.
        std::vector<int64_t> all;
        for (int64_t t : e.getAllTokens()) all.push_back(t);
        if (gap[index] || !std::equal(have.begin(), have.end(), all.begin())) {
          spdlog::debug("request {} prompt {}: filled from the final event", id, index);
          const std::string full = e.getAllText().cStr();
          if (on_text && full.size() > result.texts[index].size() &&
              full.compare(0, result.texts[index].size(), result.texts[index]) == 0) {
            on_text(index, full.substr(result.texts[index].size()));
          }
          tokens += all.size() - have.size();
          have = std::move(all);
          result.texts[index] = full;
        }
      }
      prompts_done.insert(index);
    }
  }
  const auto end = Clock::now();
  result.total_ms = std::chrono::duration<double, std::milli>(end - start).count();
  const double decode_s = have_first ? std::chrono::duration<double>(end - first_token).count() : 0;
  result.tokens_per_s = decode_s > 0 && tokens > 1 ? static_cast<double>(tokens - 1) / decode_s : 0;
  if (request.sampling.beams() && result.total_ms > 0) {
    result.tokens_per_s = static_cast<double>(tokens) / (result.total_ms / 1000.0);
  }
  return result;
}

StatusOr<nlohmann::json> Client::GetStatus(std::chrono::milliseconds timeout) {
  capnp::MallocMessageBuilder m;
  m.initRoot<proto::Envelope>().initStatusRequest().setDetail(true);
  const auto deadline = Clock::now() + timeout;
  auto next_ask = Clock::now();
  while (Clock::now() < deadline) {
    // A request or reply may be lost: ask again until the deadline (status is idempotent).
    if (Clock::now() >= next_ask) {
      if (Status st = impl_->transport->Send(m, {}, timeout); !st.ok()) return st;
      next_ask = Clock::now() + ClientTimings::kResubmitUnacknowledged;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(std::min(deadline, next_ask) - Clock::now());
    auto in = impl_->transport->Receive(std::max(left, std::chrono::milliseconds(1)));
    if (!in.ok()) return in.status();
    if (!in->has_value()) continue;
    auto env = (*in)->message->envelope();
    if (env.which() != proto::Envelope::STATUS_REPLY) continue;
    auto r = env.getStatusReply();
    nlohmann::json j;
    j["epoch"] = r.getEpoch();
    j["state"] = r.getState().cStr();
    j["model"] = r.getModel().cStr();
    j["model_version"] = r.getModelVersion().cStr();
    j["stages"] = r.getStages();
    j["queue_depth"] = r.getQueueDepth();
    j["in_flight"] = r.getInFlight();
    j["completed"] = r.getCompleted();
    j["failed"] = r.getFailed();
    j["faults"] = r.getFaults();
    j["replays"] = r.getReplays();
    j["rebalances"] = r.getRebalances();
    j["last_rebalance"] = r.getLastRebalance().cStr();
    j["last_detect_ms"] = r.getLastDetectMs();
    j["last_recover_ms"] = r.getLastRecoverMs();
    j["submitted"] = r.getSubmitted();
    j["failed_by_reason"] = nlohmann::json::object();
    for (auto x : r.getFailedByReason()) j["failed_by_reason"][x.getReason().cStr()] = x.getCount();
    j["refused_by_reason"] = nlohmann::json::object();
    for (auto x : r.getRefusedByReason()) j["refused_by_reason"][x.getReason().cStr()] = x.getCount();
    j["ttft_p50_ms"] = r.getTtftP50Ms();
    j["ttft_p99_ms"] = r.getTtftP99Ms();
    j["tokens_per_s_p50"] = r.getTokensPerSecondP50();
    j["metrics_address"] = r.getMetricsAddress().cStr();
    j["data_plane"] = r.getDataPlane().cStr();
    j["dtype"] = r.getDtype().cStr();
    j["data_plane_reason"] = r.getDataPlaneReason().cStr();
    j["steps_completed"] = r.getStepsCompleted();
    j["step_round_trip_ms_total"] = r.getStepRoundTripMsTotal();
    j["step_compute_ms_total"] = r.getStepComputeMsTotal();
    j["step_round_trip_p50_ms"] = r.getStepRoundTripP50Ms();
    j["vision_stage"] = r.getVisionStage().cStr();
    j["vision_reason"] = r.getVisionReason().cStr();
    j["images_waiting"] = r.getImagesWaiting();
    j["images_encoding"] = r.getImagesEncoding();
    j["images_encoded_total"] = r.getImagesEncodedTotal();
    j["encode_p50_ms"] = r.getEncodeP50Ms();
    j["workers"] = nlohmann::json::array();
    for (auto w : r.getWorkers()) {
      j["workers"].push_back({{"id", w.getWorkerId().cStr()},
                              {"host", w.getHost().cStr()},
                              {"pid", w.getPid()},
                              {"device", w.getDevice().cStr()},
                              {"state", w.getState().cStr()},
                              {"stage", w.getStageIndex()},
                              {"blocks", w.getBlocks().cStr()},
                              {"planned_bytes", w.getPlannedBytes()},
                              {"used_bytes", w.getUsedBytes()},
                              {"steps", w.getStepsCompleted()},
                              {"last_heartbeat_ms_ago", w.getLastHeartbeatMsAgo()}});
      auto& x = j["workers"].back();
      auto memory = [](proto::MemoryBreakdown::Reader m) {
        return nlohmann::json{
            {"weights", m.getWeightBytes()}, {"kv", m.getKvBytes()}, {"activations", m.getActivationBytes()}};
      };
      auto res = w.getResources();
      x["memory_bytes"] = w.getMemoryBytes();
      x["capacity_bytes"] = res.getCapacityBytes();
      x["planned_by_category"] = memory(w.getPlanned());
      x["used_by_category"] = memory(res.getUsed());
      x["device_free_bytes"] = res.getDeviceFreeBytes();
      x["kv_budget_bytes"] = res.getKvBudgetBytes();
      x["kv_reserved_bytes"] = res.getKvReservedBytes();
      x["kv_used_bytes"] = res.getKvUsedBytes();
      x["kv_utilisation"] = res.getKvBudgetBytes() > 0 ? static_cast<double>(res.getKvReservedBytes()) /
                                                             static_cast<double>(res.getKvBudgetBytes())
                                                       : 0.0;
      x["predicted_step_ms"] = w.getPredictedStepMs();
      x["weights_kept"] = w.getWeightsKept();
      x["dtype"] = w.getDtype().cStr();
      x["kernels"] = w.getKernels().cStr();
      x["allocator_reserved_bytes"] = res.getAllocatorBytes();
      x["step_p50_ms"] = static_cast<double>(res.getStepP50Micros()) / 1e3;
      x["step_p99_ms"] = static_cast<double>(res.getStepP99Micros()) / 1e3;
      x["steps_in_window"] = res.getStepsInWindow();
      x["idle_fraction"] = res.getIdleFraction();
      x["busy_ms_total"] = static_cast<double>(res.getBusyMicrosTotal()) / 1e3;
      x["bytes_sent"] = res.getBytesSent();
      x["queued_steps"] = res.getQueuedSteps();
      x["role"] = w.getRole().cStr();
      x["images_encoded"] = w.getImagesEncoded();
      x["images_queued"] = w.getImagesQueued();
      x["encode_p50_ms"] = w.getEncodeP50Ms();
    }
    return j;
  }
  return UnavailableError("no status from the coordinator within " + std::to_string(timeout.count()) + " ms");
}

}  // namespace xcpipe::coordinator
