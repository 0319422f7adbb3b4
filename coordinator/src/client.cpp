#include "xcpipe/coordinator/client.h"

#include <unistd.h>

#include <cstring>
#include <random>

#include "xcpipe/control/socket.h"

namespace xcpipe::coordinator {

using Clock = std::chrono::steady_clock;

struct Client::Impl {
  zmq::context_t context;
  std::unique_ptr<control::ControlSocket> socket;
  uint64_t next_request = 1;
};

Client::Client() : impl_(std::make_unique<Impl>()) {}
Client::~Client() = default;

StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& endpoint, std::chrono::milliseconds timeout) {
  std::unique_ptr<Client> c(new Client());
  std::random_device rd;
  const std::string identity = "client-" + std::to_string(getpid()) + "-" + std::to_string(rd());
  auto socket = control::ControlSocket::ConnectDealer(c->impl_->context, endpoint, identity);
  if (!socket.ok()) return socket.status();
  c->impl_->socket = std::move(socket).value();
  capnp::MallocMessageBuilder m;
  auto h = m.initRoot<proto::Envelope>().initHello();
  h.setProtocolVersion(proto::K_PROTOCOL_VERSION);
  h.setRole(proto::Role::CLIENT);
  h.initCapabilities().setPid(static_cast<uint32_t>(getpid()));
  if (Status st = c->impl_->socket->Send(m, {}, timeout); !st.ok()) return st;
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    auto in = c->impl_->socket->Receive(left);
    if (!in.ok()) return in.status();
    if (!in->has_value()) break;
    auto env = (*in)->message->envelope();
    if (env.which() == proto::Envelope::WELCOME) return c;
    if (env.which() == proto::Envelope::ERROR) {
      return Status(wire::FromWire(env.getError().getCode()), env.getError().getMessage().cStr());
    }
  }
  return UnavailableError("no answer from the coordinator at " + endpoint + " within " +
                          std::to_string(timeout.count()) + " ms");
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
  auto sp = s.initSampling();
  sp.setGreedy(request.sampling.greedy);
  sp.setTemperature(request.sampling.temperature);
  sp.setTopK(request.sampling.top_k);
  sp.setTopP(request.sampling.top_p);
  sp.setRepetitionPenalty(request.sampling.repetition_penalty);
  sp.setSeed(request.sampling.seed);
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
      px[i].setPixels(kj::arrayPtr(reinterpret_cast<const kj::byte*>(img.pixels.data()), img.pixels.size() * sizeof(float)));
    }
    auto ctx = s.initPenaltyContext(request.penalty_context.size());
    for (size_t i = 0; i < request.penalty_context.size(); ++i) ctx.set(i, request.penalty_context[i]);
    s.setWantLogits(request.want_logits);
  }
  const auto start = Clock::now();
  if (Status st = impl_->socket->Send(m, {}, timeout); !st.ok()) return st;
  GenerateResult result;
  size_t prompts_done = 0, prompts_total = 1;
  Clock::time_point first_token;
  bool have_first = false;
  size_t tokens = 0;
  const auto deadline = start + timeout;
  while (prompts_done < prompts_total) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return DeadlineExceededError("request not finished within " + std::to_string(timeout.count()) + " ms");
    auto in = impl_->socket->Receive(left);
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
    const uint32_t index = e.getPromptIndex();
    if (index >= result.token_ids.size()) {
      result.token_ids.resize(index + 1);
      result.texts.resize(index + 1);
      result.finish_reasons.resize(index + 1);
      prompts_total = std::max(prompts_total, static_cast<size_t>(index + 1));
    }
    if (e.getTokens().size() > 0 && !have_first) {
      have_first = true;
      first_token = Clock::now();
      result.ttft_ms = std::chrono::duration<double, std::milli>(first_token - start).count();
    }
    for (int64_t t : e.getTokens()) result.token_ids[index].push_back(t);
    if (index == 0 && e.hasLogits() && e.getLogits().size() > 0) {
      std::vector<float> row(e.getLogits().size() / sizeof(float));
      std::memcpy(row.data(), e.getLogits().begin(), row.size() * sizeof(float));
      result.logits.push_back(std::move(row));
    }
    tokens += e.getTokens().size();
    std::string text = e.getText().cStr();
    result.texts[index] += text;
    if (on_text && !text.empty()) on_text(index, text);
    if (e.getDone()) {
      result.finish_reasons[index] = e.getFinishReason().cStr();
      if (e.hasError() && e.getError().size() > 0) {
        result.error = std::string(e.getFinishReason().cStr()) + ": " + e.getError().cStr();
        return result;
      }
      ++prompts_done;
      // A list prompt: the count of prompts is not announced; wait briefly for later indices.
      if (prompts_done == prompts_total) {
        auto more = impl_->socket->Receive(std::chrono::milliseconds(0));
        (void)more;
      }
    }
  }
  const auto end = Clock::now();
  result.total_ms = std::chrono::duration<double, std::milli>(end - start).count();
  const double decode_s = have_first ? std::chrono::duration<double>(end - first_token).count() : 0;
  result.tokens_per_s = decode_s > 0 && tokens > 1 ? static_cast<double>(tokens - 1) / decode_s : 0;
  return result;
}

StatusOr<nlohmann::json> Client::GetStatus(std::chrono::milliseconds timeout) {
  capnp::MallocMessageBuilder m;
  m.initRoot<proto::Envelope>().initStatusRequest().setDetail(true);
  if (Status st = impl_->socket->Send(m, {}, timeout); !st.ok()) return st;
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    auto in = impl_->socket->Receive(left);
    if (!in.ok()) return in.status();
    if (!in->has_value()) break;
    auto env = (*in)->message->envelope();
    if (env.which() != proto::Envelope::STATUS_REPLY) continue;
    auto r = env.getStatusReply();
    nlohmann::json j;
    j["epoch"] = r.getEpoch();
    j["state"] = r.getState().cStr();
    j["model"] = r.getModel().cStr();
    j["stages"] = r.getStages();
    j["queue_depth"] = r.getQueueDepth();
    j["in_flight"] = r.getInFlight();
    j["completed"] = r.getCompleted();
    j["failed"] = r.getFailed();
    j["faults"] = r.getFaults();
    j["replays"] = r.getReplays();
    j["last_detect_ms"] = r.getLastDetectMs();
    j["last_recover_ms"] = r.getLastRecoverMs();
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
    }
    return j;
  }
  return UnavailableError("no status from the coordinator within " + std::to_string(timeout.count()) + " ms");
}

}  // namespace xcpipe::coordinator
