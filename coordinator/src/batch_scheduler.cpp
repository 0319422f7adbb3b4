// Batch scheduler: KV admission, the shared prompt head, prefill pieces, micro-batches.
// Members of Coordinator::Impl (coordinator_impl.h), run on the coordinator's thread.
#include "xcpipe/coordinator/batch_scheduler.h"

#include "coordinator_impl.h"
#include "sampling_wire.h"

namespace xcpipe::coordinator {

KvRoom CheckKvRoom(const std::vector<StageKv>& stages, uint64_t max_tokens) {
  bool room = true, fits_ever = true;
  for (const auto& st : stages) {
    if (st.kv_per_token == 0) continue;
    if (st.kv_reserved + max_tokens * st.kv_per_token > st.kv_budget) room = false;
    if (max_tokens * st.kv_per_token > st.kv_budget) fits_ever = false;
  }
  if (room) return KvRoom::kFits;
  return fits_ever ? KvRoom::kWait : KvRoom::kNever;
}

SchedulePlan PlanMicroBatches(const std::vector<ReadySequence>& ready, const ScheduleLimits& limits) {
  SchedulePlan plan;
  plan.in_pieces = limits.in_pieces;
  const size_t stages = std::max<size_t>(1, limits.stage_count);
  const size_t target =
      std::max<size_t>(1, (static_cast<size_t>(std::max<int64_t>(0, limits.active)) + stages - 1) / stages);
  size_t in_flight = limits.in_flight;
  size_t next = 0;
  while (next < ready.size() && in_flight < stages) {
    MicroBatchPlan mb;
    while (next < ready.size() && mb.members.size() < target) {
      const ReadySequence& s = ready[next];
      int64_t r = s.pending_rows;
      if (limits.piece_rows > 0 && r > limits.piece_rows) {
        if (plan.in_pieces != 0 && plan.in_pieces != s.id) {  // another long prompt goes first
          ++next;
          continue;
        }
        r = limits.piece_rows;
        plan.in_pieces = s.id;
      }
      if (!mb.members.empty() && mb.rows + r > limits.step_row_limit) break;
      mb.members.emplace_back(s.id, r);
      mb.rows += r;
      ++next;
    }
    if (mb.members.empty()) break;
    plan.micro_batches.push_back(std::move(mb));
    ++in_flight;
  }
  return plan;
}

std::vector<int64_t> detail::ImageFirstRows(const PreparedPrompt& p) {
  std::vector<int64_t> first;
  int64_t pos = 0;
  for (const auto& image : p.images) {
    while (pos < static_cast<int64_t>(p.ids.size()) && p.ids[pos] >= 0) ++pos;
    first.push_back(pos);
    pos += image.rows;
  }
  return first;
}

void Coordinator::Impl::Admit() {
  if (state != ClusterState::kServing) return;
  int64_t active = 0;
  for (const auto& [id, s] : sequences) active += s.state == SeqState::kReady || s.state == SeqState::kInFlight;
  while (!queue.empty() && active < opt.max_sequences) {
    Sequence& seq = sequences.at(queue.front());
    if (seq.use_prefix && !prefix.ready) {
      // The shared head's KV is not on the stages yet: its holder goes first (once per plan),
      // and sequences that copy from it wait for its prefill to complete.
      if (prefix.holder != 0) break;
      Sequence holder;
      holder.id = next_id++;
      holder.is_prefix = true;
      holder.prompt.ids = prefix.head;
      holder.prompt.im_mask.assign(prefix.head.size(), 0);
      holder.prompt.penalty_context = {edge->spec().llm.bos_id};
      holder.max_new = 1;
      holder.max_tokens = prefix.head.size();
      prefix.holder = holder.id;
      queue.push_front(holder.id);
      sequences.emplace(holder.id, std::move(holder));
      continue;
    }
    std::vector<StageKv> kv;
    for (const auto& st : stages) kv.push_back({st.kv_per_token, st.kv_reserved, st.kv_budget});
    // A beam group reserves every beam's room at once: it never runs a stage out of KV later.
    const KvRoom room = CheckKvRoom(kv, seq.reserved_tokens());
    if (room == KvRoom::kNever && seq.is_prefix) {
      DropSharedPrefix("its " + std::to_string(seq.max_tokens) + " tokens do not fit a stage's KV cache");
      continue;
    }
    if (room == KvRoom::kNever) {
      queue.pop_front();
      FailRequest(seq.request,
                  ResourceExhaustedError(
                      "the prompt plus max_new_tokens (" + std::to_string(seq.max_tokens) + " tokens" +
                      (seq.beam ? " for each of " + std::to_string(seq.beam->ids.size()) + " beams" : std::string()) +
                      ") exceeds a stage's whole KV cache"));
      continue;
    }
    if (room == KvRoom::kWait) break;  // wait for room
    queue.pop_front();
    for (auto& st : stages) st.kv_reserved += seq.reserved_tokens() * st.kv_per_token;
    for (const auto& st : stages) {
      capnp::MallocMessageBuilder m;
      auto a = m.initRoot<proto::Envelope>().initAdmitSequence();
      a.setEpoch(epoch);
      a.setSequenceId(seq.id);
      a.setMaxTokens(static_cast<uint32_t>(seq.max_tokens));
      SamplingToWire(seq.sampling, a.initSampling());
      if (seq.sampling.min_new_tokens > static_cast<int64_t>(seq.generated.size())) {
        auto stops = a.initStopIds(static_cast<unsigned>(edge->stop_ids().size()));
        for (size_t j = 0; j < edge->stop_ids().size(); ++j) stops.set(static_cast<unsigned>(j), edge->stop_ids()[j]);
      }
      a.setGeneratedTokens(static_cast<uint32_t>(seq.generated.size()));
      a.setPrefillRows(static_cast<uint32_t>(seq.prompt.ids.size() + seq.generated.size()));
      auto ctx = a.initPenaltyContext(seq.prompt.penalty_context.size() + seq.generated.size());
      size_t k = 0;
      for (int64_t t : seq.prompt.penalty_context) ctx.set(k++, t);
      for (int64_t t : seq.generated) ctx.set(k++, t);
      if (seq.use_prefix) {
        a.setPrefixSequenceId(prefix.holder);
        a.setPrefixRows(static_cast<uint32_t>(prefix.head.size()));
      }
      if (seq.beam) {
        // The last stage masks the EOS ids itself, from the tokens each step feeds a beam.
        const beam::BeamSearchParams& p = seq.beam->search.params();
        a.getSampling().setMinNewTokens(static_cast<uint32_t>(std::max<int64_t>(0, beam::EosMaskedNewTokens(p))));
        auto eos = a.initStopIds(static_cast<unsigned>(p.eos_ids.size()));
        for (size_t j = 0; j < p.eos_ids.size(); ++j) eos.set(static_cast<unsigned>(j), p.eos_ids[j]);
        auto initial = a.initPenaltyContext(static_cast<unsigned>(p.initial_ids.size()));
        for (size_t j = 0; j < p.initial_ids.size(); ++j) initial.set(static_cast<unsigned>(j), p.initial_ids[j]);
        a.setGeneratedTokens(0);
        a.setPrefillRows(static_cast<uint32_t>(seq.prompt.ids.size()));
        auto others = a.initBeamSequenceIds(static_cast<unsigned>(seq.beam->ids.size() - 1));
        for (size_t j = 1; j < seq.beam->ids.size(); ++j) others.set(static_cast<unsigned>(j - 1), seq.beam->ids[j]);
        a.setBeamCandidates(static_cast<uint32_t>(beam::CandidatesPerRow(p)));
      }
      Send(m, st.peer);
    }
    if (seq.beam) seq.beam->fed = 0;
    if (seq.use_prefix) {
      seq.cached = static_cast<int64_t>(prefix.head.size());
      ++prefix.hits;
      prefix.rows_saved += prefix.head.size();
    }
    seq.state = SeqState::kReady;
    seq.admitted_at = Now();
    ++active;
  }
}

SeqState Coordinator::Impl::RemoveHolder(bool release_on_stages) {
  SeqState was = SeqState::kDone;
  if (prefix.holder == 0) return was;
  queue.erase(std::remove(queue.begin(), queue.end(), prefix.holder), queue.end());
  if (auto it = sequences.find(prefix.holder); it != sequences.end()) {
    was = it->second.state;
    if (release_on_stages && was != SeqState::kQueued) ReleaseOnStages(it->second);
    sequences.erase(it);
  }
  prefix.holder = 0;
  prefix.ready = false;
  return was;
}

void Coordinator::Impl::DropSharedPrefix(const std::string& why) {
  spdlog::error("shared prompt head turned off: {}", why);
  RemoveHolder(/*release_on_stages=*/true);
  prefix = SharedPrefix{};
  for (auto& [id, seq] : sequences)
    if (seq.state == SeqState::kQueued) seq.use_prefix = false;
}

void Coordinator::Impl::Schedule() {
  if (state != ClusterState::kServing || stages.empty()) return;
  std::vector<ReadySequence> ready;
  ScheduleLimits limits;
  for (const auto& [id, s] : sequences) {
    if (s.state == SeqState::kReady) {
      // A beam group after its prompt: one row per beam.
      const int64_t rows = s.beam && s.beam->fed > 0
                               ? static_cast<int64_t>(s.beam->ids.size())
                               : static_cast<int64_t>(s.prompt.ids.size() + s.generated.size()) - s.cached;
      // Vision workers: a step holding an image's first row waits until its rows are at stage 0
      // (the rows this step would take: a piece when the prompt goes in pieces).
      std::vector<uint64_t> unused;
      const int64_t step_rows =
          opt.prefill_chunk_rows > 0 && rows > opt.prefill_chunk_rows ? opt.prefill_chunk_rows : rows;
      const bool images_ready = !vision_separate() || ImagesReadyForStep(s, s.cached, step_rows, unused);
      if (images_ready) ready.push_back({id, rows});
    }
    limits.active += s.state == SeqState::kReady || s.state == SeqState::kInFlight;
    if (s.in_pieces) limits.in_pieces = id;
  }
  limits.stage_count = stages.size();
  limits.in_flight = in_flight.size();
  limits.piece_rows = opt.prefill_chunk_rows;
  limits.step_row_limit = StepRowLimit(edge->spec());
  const SchedulePlan plan = PlanMicroBatches(ready, limits);
  if (plan.in_pieces != 0) sequences.at(plan.in_pieces).in_pieces = true;
  for (const MicroBatchPlan& planned : plan.micro_batches) {
    const auto& member_rows = planned.members;
    // The step's segments: one per sequence, or one per beam of a beam group past its prompt.
    struct Out {
      uint64_t id;
      int64_t start;
      std::vector<int64_t> ids;
      std::vector<uint8_t> mask;
      int32_t parent = -1;  // beam groups: the segment whose sequence it continues
      float score = 0;      // beam groups: the beam's score
    };
    std::vector<Out> outs;
    bool any_beam = false;
    std::vector<const PreparedImage*> images;
    std::vector<uint64_t> image_ids;  // vision workers: the encoded images this step names
    for (size_t i = 0; i < member_rows.size(); ++i) {
      Sequence& s = sequences.at(member_rows[i].first);
      s.state = SeqState::kInFlight;
      if (s.beam && s.beam->fed > 0) {
        // Feed the last selection: beam k continues beam parents[k] of the previous step and
        // appends tokens[k]. Its scores matter only when this step's candidates are new (not a
        // replay of a step already taken).
        const BeamGroup& g = *s.beam;
        const BeamGroup::Selection& last = g.history[g.fed - 1];
        const bool live = g.fed == g.history.size();
        const auto first = static_cast<int32_t>(outs.size());
        for (size_t k = 0; k < g.ids.size(); ++k) {
          outs.push_back({g.ids[k],
                          s.cached,
                          {last.tokens[k]},
                          {0},
                          first + static_cast<int32_t>(last.parents[k]),
                          live ? g.search.beam_score(static_cast<int64_t>(k)) : 0.0f});
        }
        any_beam = true;
        continue;
      }
      // Every position not in the stages' caches yet (or the next piece of them): a prompt
      // (after the shared head when it was copied) and, for a replayed sequence, every token it
      // already generated; in decode, the last token.
      const auto prompt_len = static_cast<int64_t>(s.prompt.ids.size());
      const int64_t r = member_rows[i].second;
      Out o{s.id, s.cached, {}, {}, -1, 0.0f};
      for (int64_t p = s.cached; p < s.cached + r; ++p) {
        if (p < prompt_len) {
          o.ids.push_back(s.prompt.ids[p]);
          o.mask.push_back(s.prompt.im_mask[p]);
        } else {
          o.ids.push_back(s.generated[p - prompt_len]);
          o.mask.push_back(0);
        }
      }
      any_beam = any_beam || s.beam.has_value();
      // Each image goes with the step that holds its first row; stage 0 encodes it then and
      // keeps its rows for the pieces that follow.
      if (s.cached < prompt_len && !s.prompt.images.empty() && vision_separate()) {
        // Encoded by vision workers: the step names them and stage 0 takes their rows from its
        // inbox (Schedule let the sequence in only with every one of them there).
        const size_t before = image_ids.size();
        (void)ImagesReadyForStep(s, s.cached, r, image_ids);
        for (size_t k = before; k < image_ids.size(); ++k)
          image_jobs.at(image_ids[k]).state = ImageJob::State::kConsumed;
      } else if (s.cached < prompt_len && !s.prompt.images.empty()) {
        const std::vector<int64_t> first = ImageFirstRows(s.prompt);
        for (size_t k = 0; k < first.size(); ++k)
          if (first[k] >= s.cached && first[k] < s.cached + r) images.push_back(&s.prompt.images[k]);
      }
      outs.push_back(std::move(o));
    }
    int64_t rows = 0;
    for (const Out& o : outs) rows += static_cast<int64_t>(o.ids.size());
    capnp::MallocMessageBuilder m;
    auto f = m.initRoot<proto::Envelope>().initForward();
    const uint64_t mb = next_id++;
    f.setEpoch(epoch);
    f.setMicroBatchId(mb);
    f.setStep(++step_counter);
    auto segs = f.initSegments(static_cast<unsigned>(outs.size()));
    auto ids = f.initTokenIds(static_cast<unsigned>(rows));
    std::vector<uint8_t> mask;
    mask.reserve(static_cast<size_t>(rows));
    unsigned row = 0;
    for (size_t i = 0; i < outs.size(); ++i) {
      segs[i].setSequenceId(outs[i].id);
      segs[i].setRows(static_cast<uint32_t>(outs[i].ids.size()));
      segs[i].setStartPos(static_cast<uint32_t>(outs[i].start));
      for (int64_t t : outs[i].ids) ids.set(row++, t);
      mask.insert(mask.end(), outs[i].mask.begin(), outs[i].mask.end());
    }
    if (any_beam) {
      auto parents = f.initBeamParents(static_cast<unsigned>(outs.size()));
      auto scores = f.initBeamScores(static_cast<unsigned>(outs.size()));
      for (size_t i = 0; i < outs.size(); ++i) {
        parents.set(static_cast<unsigned>(i), outs[i].parent);
        scores.set(static_cast<unsigned>(i), outs[i].score);
      }
    }
    f.setImMask(kj::arrayPtr(mask.data(), mask.size()));
    bool want_logits = false;
    for (const auto& [id, r] : member_rows) want_logits |= sequences.at(id).want_logits;
    f.setWantLogits(want_logits);
    if (!image_ids.empty()) {
      auto refs = f.initImageIds(static_cast<unsigned>(image_ids.size()));
      for (size_t i = 0; i < image_ids.size(); ++i) refs.set(static_cast<unsigned>(i), image_ids[i]);
    }
    auto imgs = f.initImages(images.size());
    for (size_t i = 0; i < images.size(); ++i) ImageToWire(*images[i], imgs[i]);
    in_flight[mb] = member_rows;
    const auto sent = Now();
    step_deadlines[mb] = {sent, sent + kStepDeadline};
    Send(m, stages[0].peer);
  }
}

void Coordinator::Impl::ReleaseOnStages(const Sequence& seq) {
  // A beam group's beams go together: its room returns at once.
  const std::vector<uint64_t> ids = seq.beam ? seq.beam->ids : std::vector<uint64_t>{seq.id};
  for (uint64_t id : ids) releases_to_repeat[id] = kReleaseRepeats;
  for (auto& st : stages) {
    st.kv_reserved -= std::min(st.kv_reserved, seq.reserved_tokens() * st.kv_per_token);
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<proto::Envelope>().initReleaseSequences();
    r.setEpoch(epoch);
    auto list = r.initSequenceIds(static_cast<unsigned>(ids.size()));
    for (size_t i = 0; i < ids.size(); ++i) list.set(static_cast<unsigned>(i), ids[i]);
    Send(m, st.peer);
  }
}

void Coordinator::Impl::RepeatReleases() {
  if (releases_to_repeat.empty()) return;
  for (const auto& st : stages) {
    auto w = workers.find(st.peer);
    if (w == workers.end() || w->second.state == WorkerState::kLost) continue;
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<proto::Envelope>().initReleaseSequences();
    r.setEpoch(epoch);
    auto ids = r.initSequenceIds(static_cast<unsigned>(releases_to_repeat.size()));
    unsigned i = 0;
    for (const auto& [id, left] : releases_to_repeat) ids.set(i++, id);
    Send(m, st.peer);
  }
  for (auto it = releases_to_repeat.begin(); it != releases_to_repeat.end();) {
    it = --it->second <= 0 ? releases_to_repeat.erase(it) : std::next(it);
  }
}

void Coordinator::Impl::OnStepResult(proto::StepResult::Reader r) {
  auto mb = in_flight.find(r.getMicroBatchId());
  if (r.getEpoch() != epoch || mb == in_flight.end()) return;  // stale or cancelled
  std::map<uint64_t, int64_t> rows_of(mb->second.begin(), mb->second.end());
  if (auto sent = step_deadlines.find(mb->first); sent != step_deadlines.end()) {
    live.step_round_trip_seconds.Observe(std::chrono::duration<double>(Now() - sent->second.sent).count());
    uint64_t micros = 0;
    for (uint32_t m : r.getStageMicros()) micros += m;
    live.step_compute_seconds += static_cast<double>(micros) * 1e-6;
  }
  step_deadlines.erase(mb->first);
  in_flight.erase(mb);
  if (recovering) {
    recovering = false;
    last_recover_ms = std::chrono::duration<double, std::milli>(Now() - fault_detected_at).count();
    spdlog::info("recovered: first step of epoch {} completed {:.0f} ms after the fault was detected", epoch,
                 last_recover_ms);
  }
  auto ids = r.getSequenceIds();
  auto tokens = r.getTokens();
  // Beam rows: their candidates by sequence id.
  std::map<uint64_t, std::vector<beam::BeamCandidate>> candidates;
  if (r.getCandidateCounts().size() > 0) {
    auto counts = r.getCandidateCounts();
    auto cand_tokens = r.getCandidateTokens();
    auto totals = r.getCandidateTotals();
    size_t k = 0;
    for (size_t i = 0; i < ids.size() && i < counts.size(); ++i) {
      if (counts[i] == 0) continue;
      auto& row = candidates[ids[i]];
      for (uint32_t j = 0; j < counts[i] && k < cand_tokens.size() && k < totals.size(); ++j, ++k) {
        row.push_back({cand_tokens[k], totals[k]});
      }
    }
  }
  for (const auto& [id, r_rows] : rows_of) {
    auto it = sequences.find(id);
    if (it != sequences.end() && it->second.beam) OnBeamStepResult(it->second, r_rows, candidates);
  }
  for (size_t i = 0; i < ids.size() && i < tokens.size(); ++i) {
    auto it = sequences.find(ids[i]);
    if (it == sequences.end() || it->second.beam) continue;
    Sequence& seq = it->second;
    const int64_t token = tokens[i];
    auto rows = rows_of.find(seq.id);
    if (rows == rows_of.end()) continue;  // not in this micro-batch (stale)
    seq.cached += rows->second;
    if (seq.cached < static_cast<int64_t>(seq.prompt.ids.size() + seq.generated.size())) {
      seq.state = SeqState::kReady;  // a piece of a long prompt: the next piece follows; no token yet
      continue;
    }
    seq.in_pieces = false;
    if (seq.is_prefix) {  // the shared head is on every stage now; its token is not wanted
      seq.state = SeqState::kHeld;
      prefix.ready = true;
      spdlog::info("shared prompt head of {} tokens computed; prompts that start with it copy its KV", seq.cached);
      continue;
    }
    seq.generated.push_back(token);
    const std::string_view finish = FinishReasonAfter(seq.generated, seq.max_new, edge->stop_ids(), seq.sampling);
    const bool done = !finish.empty();
    const uint64_t request = seq.request;
    kj::ArrayPtr<const kj::byte> row;
    const size_t vocab_bytes = static_cast<size_t>(edge->spec().llm.vocab) * sizeof(float);
    if (r.hasLogits() && r.getLogits().size() >= (i + 1) * vocab_bytes) {
      row = r.getLogits().slice(i * vocab_bytes, (i + 1) * vocab_bytes);
    }
    StreamTokens(seq, {token}, done, std::string(finish), row);
    if (!requests.count(request)) continue;  // the client went away
    if (done)
      FinishSequence(seq, std::string(finish));
    else
      seq.state = SeqState::kReady;
  }
}

void Coordinator::Impl::OnBeamStepResult(Sequence& seq, int64_t rows,
                                         const std::map<uint64_t, std::vector<beam::BeamCandidate>>& candidates) {
  BeamGroup& g = *seq.beam;
  if (g.fed == 0) {
    seq.cached += rows;
    if (seq.cached < static_cast<int64_t>(seq.prompt.ids.size())) {
      seq.state = SeqState::kReady;  // a piece of a long prompt: the next piece follows
      return;
    }
    seq.in_pieces = false;
  } else {
    seq.cached += 1;
  }
  const bool replayed = g.fed < g.history.size();  // a step taken before a fault: its selection is known
  ++g.fed;
  if (replayed) {
    seq.state = SeqState::kReady;
    return;
  }
  std::vector<std::vector<beam::BeamCandidate>> beam_rows;
  const size_t n = g.fed == 1 ? 1 : g.ids.size();  // the prompt's one row stands for every beam
  for (size_t k = 0; k < n; ++k) {
    auto c = candidates.find(g.ids[k]);
    beam_rows.push_back(c == candidates.end() ? std::vector<beam::BeamCandidate>{} : c->second);
  }
  auto step = g.search.StepCandidates(beam_rows, edge->spec().llm.vocab);
  if (!step.ok()) {
    // The last stage answered rows the search cannot use: a bug or a stage out of step; this
    // request ends with the reason, nobody else's.
    FailRequest(
        seq.request,
        InternalError(step.status().message()).WithContext("beam search of sequence " + std::to_string(seq.id)));
    return;
  }
  g.history.push_back({step->parents, step->tokens});
  if (g.history.size() == 1 && !seq.first_token_at) {
    // Monitoring: a beam request's first selection is its first token (delivered at the end).
    seq.first_token_at = Now();
    if (auto rit = requests.find(seq.request); rit != requests.end()) {
      live.ttft_seconds.Observe(std::chrono::duration<double>(*seq.first_token_at - rit->second.received).count());
    }
  }
  if (!step->done) {
    seq.state = SeqState::kReady;
    return;
  }
  // Delivered whole, once: nothing a client received ever changes.
  auto best = g.search.Best();
  if (!best.ok()) {
    FailRequest(seq.request, best.status().WithContext("beam search of sequence " + std::to_string(seq.id)));
    return;
  }
  seq.generated = best->tokens;
  std::string finish(FinishReasonAfter(seq.generated, seq.max_new, edge->stop_ids(), seq.sampling));
  if (finish.empty()) finish = g.search.stop_reason() == beam::BeamStopReason::kMaxLength ? "length" : "stop";
  const uint64_t request = seq.request;
  StreamTokens(seq, seq.generated, true, finish);
  if (requests.count(request)) FinishSequence(seq, finish);
}

void Coordinator::Impl::CheckStepDeadlines() {
  if (state != ClusterState::kServing || step_deadlines.empty()) return;
  const auto now = Now();
  for (const auto& [mb, times] : step_deadlines) {
    if (now < times.deadline) continue;
    ++faults;
    fault_detected_at = now;
    last_detect_ms = std::chrono::duration<double, std::milli>(now - times.sent).count();
    Recover("micro-batch " + std::to_string(mb) +
            " did not come back by its deadline (a message lost or a stage stuck)");
    return;  // Recover cleared every deadline
  }
}

}  // namespace xcpipe::coordinator
