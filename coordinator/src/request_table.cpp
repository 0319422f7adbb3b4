// Request table: intake, repeated submits, deadlines, exactly-once delivery to clients.
// Members of Coordinator::Impl (coordinator_impl.h), run on the coordinator's thread.
#include "coordinator_impl.h"
#include "sampling_wire.h"

namespace xcpipe::coordinator {

void Coordinator::Impl::RefuseSubmit(const std::string& peer, uint64_t client_id, const Status& st) {
  // The only refusal for lack of resources before queueing is a full queue: "busy".
  ++live.refused_by_reason[st.code() == StatusCode::kResourceExhausted ? "busy" : std::string(StatusCodeName(st.code()))];
  capnp::MallocMessageBuilder m;
  auto e = m.initRoot<proto::Envelope>().initTokenEvent();
  e.setRequestId(client_id);
  e.setDone(true);
  e.setFinishReason(std::string(StatusCodeName(st.code())));
  e.setError(st.message());
  (void)transport->Send(m, peer, 0ms);  // a client that does not read loses only its answer
  spdlog::info("request {} from {} refused: {}", client_id, peer, StatusCodeName(st.code()));
}

void Coordinator::Impl::OnSubmit(const std::string& peer, proto::Submit::Reader s) {
  const uint64_t client_id = s.getRequestId();
  ++live.submitted;
  auto refuse = [&](const Status& st) { RefuseSubmit(peer, client_id, st); };
  if (AnswerRepeatedSubmit(peer, client_id)) return;
  if (preparing.count({peer, client_id})) {
    // Its images are being prepared: the answer comes when they are.
    spdlog::info("client {} #{}: submit repeated while its images are prepared", peer, client_id);
    return;
  }
  int64_t of_this_client = 0;
  for (const auto& [id, r] : requests) of_this_client += r.peer == peer;
  for (const auto& key : preparing) of_this_client += key.first == peer;
  if (of_this_client >= opt.max_requests_per_client) {
    return refuse(ResourceExhaustedError("this client already has " + std::to_string(of_this_client) +
                                         " requests in progress; at most " +
                                         std::to_string(opt.max_requests_per_client) + " per client"));
  }
  const size_t waiting = queue.size() + preparing.size();
  if (static_cast<int64_t>(waiting) >= opt.max_queue) {
    return refuse(ResourceExhaustedError("the coordinator is busy: " + std::to_string(waiting) +
                                         " requests are waiting; retry later"));
  }
  SubmitIntake in;
  in.peer = peer;
  in.client_id = client_id;
  in.sampling = SamplingFromWire(s.getSampling());
  in.max_new = s.getMaxNewTokens();
  in.want_logits = s.getWantLogits();
  in.deadline = std::chrono::milliseconds(s.getDeadlineMs());
  in.received = Now();
  if (Status st = edge->ValidateGeneration(in.max_new, in.sampling); !st.ok()) return refuse(st);
  if (s.getTokenIds().size() > 0) {
    in.prepared = PreparePretokenized(s);
    in.image_count = s.getImages().size();
    return FinishSubmit(std::move(in));
  }
  for (auto img : s.getImages()) in.images.emplace_back(reinterpret_cast<const char*>(img.begin()), img.size());
  in.image_count = in.images.size();
  in.prompt_json = s.getPromptJson().cStr();
  if (in.images.empty() || !prepare_thread) {
    in.prepared = edge->Prepare(in.prompt_json, in.images);
    return FinishSubmit(std::move(in));
  }
  // Decoding and preprocessing images takes tens to hundreds of ms: off this thread, so that
  // the steps of requests already decoding go on being scheduled meanwhile.
  preparing.insert({peer, client_id});
  prepare_thread->Post(std::move(in));
}

void Coordinator::Impl::TakePreparedSubmits() {
  if (!prepare_thread || preparing.empty()) return;
  for (SubmitIntake& in : prepare_thread->TakeDone()) {
    preparing.erase({in.peer, in.client_id});
    if (capacity_lost) {
      // A stage was lost meanwhile and no plan fits the workers left: what was queued failed,
      // and so does this, with the refusal a new submit would get now.
      RefuseSubmit(in.peer, in.client_id, UnavailableError(kCapacityLostRefusal));
      continue;
    }
    FinishSubmit(std::move(in));
  }
}

void Coordinator::Impl::FinishSubmit(SubmitIntake in) {
  const std::string& peer = in.peer;
  const uint64_t client_id = in.client_id;
  auto refuse = [&](const Status& st) { RefuseSubmit(peer, client_id, st); };
  const Sampling& sampling = in.sampling;
  const int64_t max_new = in.max_new;
  StatusOr<std::vector<PreparedPrompt>>& prepared = in.prepared;
  if (!prepared.ok()) return refuse(prepared.status());
  if (sampling.beams() && in.want_logits) {
    return refuse(InvalidArgumentError("want_logits is not available with num_beams > 1 (the logits of a beam "
                                       "search's tokens are not one row per token)"));
  }
  // Each prompt's beam search, checked before anything is queued.
  std::vector<std::optional<beam::BeamSearch>> searches(prepared->size());
  if (sampling.beams()) {
    for (size_t i = 0; i < prepared->size(); ++i) {
      beam::BeamSearchParams p;
      p.num_beams = sampling.num_beams;
      p.max_new_tokens = max_new;
      p.length_penalty = sampling.length_penalty;
      p.early_stopping = static_cast<beam::EarlyStopping>(sampling.early_stopping);
      p.min_length = sampling.min_length;
      p.min_new_tokens = sampling.min_new_tokens;
      p.repetition_penalty = sampling.repetition_penalty;
      beam::SetOfficialBeamEnds(edge->spec(), p);
      if (sampling.ignore_eos) {
        p.eos_ids.clear();
        p.stop_when_all_beams_end_with.clear();
      }
      p.initial_ids = (*prepared)[i].penalty_context;
      if (p.initial_ids.empty()) p.initial_ids = {edge->spec().llm.bos_id};
      auto search = beam::BeamSearch::Create(std::move(p));
      if (!search.ok()) return refuse(search.status());
      searches[i] = std::move(search).value();
    }
  }
  const int64_t max_context = MaxContext(edge->spec());
  for (const auto& p : *prepared) {
    if (static_cast<int64_t>(p.ids.size()) + max_new > max_context) {
      return refuse(InvalidArgumentError("the prompt (" + std::to_string(p.ids.size()) + " tokens) plus max_new_tokens (" +
                                         std::to_string(max_new) + ") exceeds the serving context of " +
                                         std::to_string(max_context) + " tokens"));
    }
  }
  const uint64_t rid = next_request++;
  Request& req = requests[rid];
  req.peer = peer;
  req.client_id = client_id;
  req.received = in.received;
  const auto asked = in.deadline;
  req.deadline = req.received + (asked.count() > 0 ? std::min(asked, opt.max_deadline) : opt.default_deadline);
  for (size_t i = 0; i < prepared->size(); ++i) {
    Sequence seq;
    seq.id = next_id++;
    seq.request = rid;
    seq.prompt_index = static_cast<uint32_t>(i);
    seq.prompt = std::move((*prepared)[i]);
    seq.max_new = max_new;
    seq.sampling = sampling;
    seq.max_tokens = seq.prompt.ids.size() + static_cast<uint64_t>(max_new);
    seq.want_logits = in.want_logits;
    const auto& head = prefix.head;
    seq.use_prefix = !head.empty() && seq.prompt.ids.size() > head.size() &&
                     std::equal(head.begin(), head.end(), seq.prompt.ids.begin());
    if (searches[i]) {
      seq.beam = BeamGroup{std::move(*searches[i]), {seq.id}, {}, 0};
      for (int64_t k = 1; k < sampling.num_beams; ++k) seq.beam->ids.push_back(next_id++);
    }
    req.sequences.push_back(seq.id);
    queue.push_back(seq.id);
    sequences.emplace(seq.id, std::move(seq));
  }
  spdlog::info("request {} (client {} #{}): {} prompt(s), {} image(s), queued", rid, peer, client_id, prepared->size(),
               in.image_count);
  SendAccepted(peer, client_id, 0, 0, prepared->size());
}

StatusOr<std::vector<PreparedPrompt>> Coordinator::Impl::PreparePretokenized(proto::Submit::Reader s) const {
  PreparedPrompt p;
  const int64_t vocab = edge->spec().llm.vocab;
  for (int64_t id : s.getTokenIds()) {
    if (id < -1 || id >= vocab) {
      return InvalidArgumentError("token id " + std::to_string(id) + " is outside the vocabulary; expected 0.." +
                                  std::to_string(vocab - 1) + " or -1 for an image row");
    }
    p.ids.push_back(id);
  }
  if (static_cast<int64_t>(p.ids.size()) > edge->limits().max_prompt_tokens) {
    return InvalidArgumentError("prompt of " + std::to_string(p.ids.size()) + " tokens; at most " +
                                std::to_string(edge->limits().max_prompt_tokens) + " are allowed");
  }
  auto mask = s.getImMask();
  if (mask.size() != p.ids.size()) {
    return InvalidArgumentError("imMask has " + std::to_string(mask.size()) + " bytes for " +
                                std::to_string(p.ids.size()) + " tokens; expected one byte per token");
  }
  p.im_mask.assign(mask.begin(), mask.end());
  int64_t slots = 0;
  for (int64_t id : p.ids) slots += id < 0;
  int64_t rows = 0;
  for (auto img : s.getPixelImages()) {
    PreparedImage out;
    out.channels = img.getChannels();
    out.height = img.getHeight();
    out.width = img.getWidth();
    out.grid_h = std::max<uint32_t>(1, img.getGridH());
    out.grid_w = std::max<uint32_t>(1, img.getGridW());
    const uint64_t n = uint64_t(out.channels) * out.height * out.width;
    if (out.channels != 3 || n == 0 || img.getPixels().size() != n * sizeof(float)) {
      return InvalidArgumentError("pixel image of " + std::to_string(img.getPixels().size()) +
                                  " bytes does not match a 3 x height x width float32 image");
    }
    out.pixels.resize(n);
    std::memcpy(out.pixels.data(), img.getPixels().begin(), n * sizeof(float));
    out.rows = edge->spec().ImageTokens(out.grid_h, out.grid_w);
    rows += out.rows;
    p.images.push_back(std::move(out));
  }
  if (rows != slots) {
    return InvalidArgumentError("the prompt has " + std::to_string(slots) + " image rows but its images fill " +
                                std::to_string(rows));
  }
  for (int64_t t : s.getPenaltyContext()) p.penalty_context.push_back(t);
  if (p.penalty_context.empty()) p.penalty_context = {edge->spec().llm.bos_id};
  return std::vector<PreparedPrompt>{std::move(p)};
}

void Coordinator::Impl::SendAccepted(const std::string& peer, uint64_t client_id, uint32_t prompt_index,
                                     uint32_t offset, size_t prompt_count) {
  capnp::MallocMessageBuilder m;
  auto e = m.initRoot<proto::Envelope>().initTokenEvent();
  e.setRequestId(client_id);
  e.setPromptIndex(prompt_index);
  e.setOffset(offset);
  e.setPromptCount(static_cast<uint32_t>(prompt_count));
  e.setAccepted(true);
  (void)transport->Send(m, peer, 0ms);
}

void Coordinator::Impl::SendFinal(const std::string& peer, uint64_t client_id, const FinalEvent& f,
                                  size_t prompt_count) {
  capnp::MallocMessageBuilder m;
  auto e = m.initRoot<proto::Envelope>().initTokenEvent();
  e.setRequestId(client_id);
  e.setPromptIndex(f.prompt_index);
  e.setPromptCount(static_cast<uint32_t>(prompt_count));
  e.setOffset(static_cast<uint32_t>(f.tokens.size()));
  e.setDone(true);
  e.setFinishReason(f.finish_reason);
  if (!f.error.empty()) e.setError(f.error);
  auto all = e.initAllTokens(f.tokens.size());
  for (size_t i = 0; i < f.tokens.size(); ++i) all.set(i, f.tokens[i]);
  e.setAllText(f.text);
  e.setPromptTokens(f.prompt_tokens);
  (void)transport->Send(m, peer, 0ms);
}

bool Coordinator::Impl::AnswerRepeatedSubmit(const std::string& peer, uint64_t client_id) {
  for (const auto& [rid, r] : requests) {
    if (r.peer != peer || r.client_id != client_id) continue;
    for (const FinalEvent& f : r.finals) SendFinal(peer, client_id, f, r.sequences.size());
    for (uint64_t id : r.sequences) {
      auto sit = sequences.find(id);
      if (sit == sequences.end() || sit->second.state == SeqState::kDone) continue;
      SendAccepted(peer, client_id, sit->second.prompt_index, static_cast<uint32_t>(sit->second.generated.size()),
                   r.sequences.size());
    }
    spdlog::info("request {}: submit repeated by its client; answered with its progress", rid);
    return true;
  }
  auto f = finished.find({peer, client_id});
  if (f == finished.end()) return false;
  for (const FinalEvent& e : f->second) SendFinal(peer, client_id, e, f->second.size());
  spdlog::info("client {} #{}: submit repeated after the request finished; final events sent again", peer, client_id);
  return true;
}

void Coordinator::Impl::StreamTokens(Sequence& seq, const std::vector<int64_t>& tokens, bool done,
                                     const std::string& finish, kj::ArrayPtr<const kj::byte> logits) {
  auto rit = requests.find(seq.request);
  if (rit == requests.end()) return;
  capnp::MallocMessageBuilder m;
  auto e = m.initRoot<proto::Envelope>().initTokenEvent();
  e.setRequestId(rit->second.client_id);
  e.setPromptIndex(seq.prompt_index);
  auto t = e.initTokens(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) t.set(i, tokens[i]);
  e.setOffset(static_cast<uint32_t>(seq.generated.size() - std::min(seq.generated.size(), tokens.size())));
  e.setPromptCount(static_cast<uint32_t>(rit->second.sequences.size()));
  auto text = edge->DecodeResponse(seq.generated);
  if (done) {
    FinalEvent f;
    f.prompt_index = seq.prompt_index;
    f.tokens = seq.generated;
    f.text = text.ok() ? *text : std::string();
    f.finish_reason = finish;
    f.prompt_tokens = static_cast<uint32_t>(seq.prompt.ids.size());
    auto all = e.initAllTokens(f.tokens.size());
    for (size_t i = 0; i < f.tokens.size(); ++i) all.set(i, f.tokens[i]);
    e.setAllText(f.text);
    rit->second.finals.push_back(std::move(f));
  }
  if (text.ok()) {
    // Stream only whole UTF-8 characters: hold back a trailing partial sequence.
    size_t end = text->size();
    if (!done) {
      size_t k = end;
      while (k > 0 && (static_cast<unsigned char>((*text)[k - 1]) & 0xC0) == 0x80) --k;
      if (k > 0 && static_cast<unsigned char>((*text)[k - 1]) >= 0xC0) end = k - 1;
    }
    if (end > seq.text_sent && text->compare(0, seq.text_sent, *text, 0, seq.text_sent) == 0) {
      e.setText(text->substr(seq.text_sent, end - seq.text_sent));
      seq.text_sent = end;
    }
  }
  if (seq.want_logits && logits.size() > 0) e.setLogits(logits);
  e.setDone(done);
  e.setFinishReason(finish);
  e.setPromptTokens(static_cast<uint32_t>(seq.prompt.ids.size()));
  e.setTtftMicros(static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(Now() - seq.admitted_at).count()));
  if (!seq.first_token_at && !tokens.empty()) {
    seq.first_token_at = Now();
    live.ttft_seconds.Observe(std::chrono::duration<double>(*seq.first_token_at - rit->second.received).count());
  }
  // Never block the actor on a client: one that is gone, or that stopped reading until its
  // queue reached the high-water mark, loses its own request and nobody else's time.
  if (Status st = transport->Send(m, rit->second.peer, 0ms); !st.ok()) {
    spdlog::info("client {} unreachable ({}): cancelling request {}", rit->second.peer, st.message(), seq.request);
    FailRequest(seq.request, CancelledError("client disconnected or not reading"));
  }
}

void Coordinator::Impl::FinishSequence(Sequence& seq, const std::string& reason) {
  seq.state = SeqState::kDone;
  if (seq.first_token_at && seq.generated.size() > 1) {
    const double s = std::chrono::duration<double>(Now() - *seq.first_token_at).count();
    if (s > 0) live.tokens_per_second.Observe(static_cast<double>(seq.generated.size() - 1) / s);
  }
  ReleaseOnStages(seq);
  auto rit = requests.find(seq.request);
  if (rit != requests.end() && ++rit->second.done == rit->second.sequences.size()) {
    ++completed;
    spdlog::info("request {} completed ({})", seq.request, reason);
    RememberFinished(rit->second);
    for (uint64_t id : rit->second.sequences) sequences.erase(id);
    requests.erase(rit);
  }
}

void Coordinator::Impl::FailRequest(uint64_t request_id, const Status& reason) {
  auto rit = requests.find(request_id);
  if (rit == requests.end()) return;
  ++failed;
  ++live.failed_by_reason[std::string(StatusCodeName(reason.code()))];
  spdlog::warn("request {} failed: {}", request_id, reason.ToString());
  for (uint64_t id : rit->second.sequences) {
    auto sit = sequences.find(id);
    if (sit == sequences.end()) continue;
    Sequence& seq = sit->second;
    if (seq.state != SeqState::kQueued && seq.state != SeqState::kDone) ReleaseOnStages(seq);
    queue.erase(std::remove(queue.begin(), queue.end(), id), queue.end());
    for (auto& [mb, members] : in_flight) {
      members.erase(std::remove_if(members.begin(), members.end(), [id](const auto& m) { return m.first == id; }),
                    members.end());
    }
    if (reason.code() != StatusCode::kCancelled && seq.state != SeqState::kDone) {
      capnp::MallocMessageBuilder m;
      auto e = m.initRoot<proto::Envelope>().initTokenEvent();
      e.setRequestId(rit->second.client_id);
      e.setPromptIndex(seq.prompt_index);
      e.setDone(true);
      e.setFinishReason(std::string(StatusCodeName(reason.code())));
      e.setError(reason.message());
      e.setPromptCount(static_cast<uint32_t>(rit->second.sequences.size()));
      (void)transport->Send(m, rit->second.peer, 0ms);
      FinalEvent f;
      f.prompt_index = seq.prompt_index;
      f.tokens = seq.generated;
      f.finish_reason = std::string(StatusCodeName(reason.code()));
      f.error = reason.message();
      rit->second.finals.push_back(std::move(f));
    }
    sequences.erase(sit);
  }
  if (reason.code() != StatusCode::kCancelled) RememberFinished(rit->second);
  requests.erase(rit);
}

void Coordinator::Impl::CheckRequestDeadlines() {
  const auto now = Now();
  if (now < next_request_deadline_check) return;
  next_request_deadline_check = now + 100ms;
  std::vector<uint64_t> late;
  for (const auto& [id, r] : requests)
    if (now > r.deadline) late.push_back(id);
  for (uint64_t id : late) {
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(now - requests.at(id).received).count();
    FailRequest(id, DeadlineExceededError("the request did not finish within its deadline (" + std::to_string(took) +
                                          " ms since it was received)"));
  }
}

}  // namespace xcpipe::coordinator
