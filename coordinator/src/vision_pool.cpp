// Vision pool: vision workers apart from the language pipeline, the images they encode.
// Members of Coordinator::Impl (coordinator_impl.h), run on the coordinator's thread.
#include "coordinator_impl.h"

namespace xcpipe::coordinator {

void Coordinator::Impl::SendVisionAssignment(size_t k) {
  VisionWorker& v = vision[k];
  capnp::MallocMessageBuilder m;
  auto a = m.initRoot<proto::Envelope>().initAssignStage();
  a.setEpoch(epoch);
  a.setVision(true);
  a.setStageIndex(0);
  a.setStageCount(static_cast<uint32_t>(stages.size()));
  a.setBlockBegin(static_cast<uint32_t>(v.first));
  a.setBlockEnd(static_cast<uint32_t>(v.end));
  a.setModelPath(std::filesystem::absolute(opt.model_dir).string());
  a.setDtype(plan_dtype);
  a.setNextDataAddress(workers[stages[0].peer].image_address);
  a.setSpecOverrides(opt.spec_overrides);
  a.setDataPlane("tcp");
  v.last_load_news = Now();
  Send(m, v.peer);
}

void Coordinator::Impl::ForgetImageJobs() {
  image_jobs.clear();
  for (auto& [id, seq] : sequences) seq.image_ids.clear();
  for (auto& v : vision) v.encoding = 0;
}

bool Coordinator::Impl::ImagesReadyForStep(const Sequence& seq, int64_t from, int64_t rows,
                                           std::vector<uint64_t>& ids) const {
  if (seq.prompt.images.empty() || from >= static_cast<int64_t>(seq.prompt.ids.size())) return true;
  const std::vector<int64_t> first = ImageFirstRows(seq.prompt);
  for (size_t k = 0; k < first.size(); ++k) {
    if (first[k] < from || first[k] >= from + rows) continue;
    if (k >= seq.image_ids.size()) return false;  // no job yet
    auto job = image_jobs.find(seq.image_ids[k]);
    if (job == image_jobs.end() || job->second.state != ImageJob::State::kReady) return false;
    ids.push_back(seq.image_ids[k]);
  }
  return true;
}

void Coordinator::Impl::PumpVision() {
  if (!vision_separate() || state != ClusterState::kServing || vision.empty()) return;
  const auto now = Now();
  // Jobs whose sequence is gone (finished, failed, cancelled): rows already at stage 0 are
  // dropped there by the release of their sequence.
  for (auto it = image_jobs.begin(); it != image_jobs.end();) {
    if (sequences.count(it->second.sequence)) {
      ++it;
      continue;
    }
    if (it->second.state == ImageJob::State::kEncoding) {
      for (auto& v : vision)
        if (v.peer == it->second.worker) v.encoding = std::max(0, v.encoding - 1);
    }
    if (it->second.state == ImageJob::State::kReady) {
      capnp::MallocMessageBuilder m;
      auto r = m.initRoot<proto::Envelope>().initReleaseSequences();
      r.setEpoch(epoch);
      r.initSequenceIds(1).set(0, it->second.sequence);
      Send(m, stages[0].peer);
    }
    it = image_jobs.erase(it);
  }
  // A job for every image of a sequence that has none (in arrival order: ids grow).
  for (auto& [id, seq] : sequences) {
    if (seq.prompt.images.empty() || !seq.image_ids.empty() || seq.state == SeqState::kDone) continue;
    for (size_t k = 0; k < seq.prompt.images.size(); ++k) {
      const uint64_t image_id = next_id++;
      ImageJob job;
      job.sequence = id;
      job.index = k;
      image_jobs[image_id] = job;
      seq.image_ids.push_back(image_id);
    }
  }
  // Encodes unanswered for too long go again, to whichever vision worker is free.
  std::set<uint64_t> give_up;
  for (auto& [image_id, job] : image_jobs) {
    if (job.state != ImageJob::State::kEncoding || now - job.sent < kEncodeResend) continue;
    spdlog::warn("image {} (sequence {}): no answer from its vision worker in {} s; encoding it again", image_id,
                 job.sequence, std::chrono::duration_cast<std::chrono::seconds>(kEncodeResend).count());
    for (auto& v : vision)
      if (v.peer == job.worker) v.encoding = std::max(0, v.encoding - 1);
    job.state = ImageJob::State::kWaiting;
    job.worker.clear();
    if (job.attempts >= kEncodeAttempts) give_up.insert(sequences.at(job.sequence).request);
  }
  for (uint64_t request : give_up) {
    FailRequest(request, DeadlineExceededError("an image of the request was sent to vision workers " +
                                               std::to_string(kEncodeAttempts) + " times without an answer"));
  }
  // Waiting images go to the least busy ready vision worker, oldest first, while stage 0 has
  // room for what is encoded ahead of its steps: kImagesAhead, or one whole prompt's images when
  // a prompt has more (a prompt prefilled whole needs all of them at stage 0 at once).
  size_t room = kImagesAhead;
  for (const auto& [id, seq] : sequences) room = std::max(room, seq.prompt.images.size());
  size_t ahead = 0;
  for (const auto& [image_id, job] : image_jobs)
    ahead += job.state == ImageJob::State::kReady || job.state == ImageJob::State::kEncoding;
  for (auto& [image_id, job] : image_jobs) {
    if (job.state != ImageJob::State::kWaiting) continue;
    if (ahead >= room) break;
    VisionWorker* best = nullptr;
    for (auto& v : vision) {
      if (!v.ready || v.encoding >= kEncodesPerWorker) continue;
      if (best == nullptr || v.encoding < best->encoding) best = &v;
    }
    if (best == nullptr) break;
    auto seq = sequences.find(job.sequence);
    if (seq == sequences.end()) continue;  // its request failed above
    const PreparedImage& img = seq->second.prompt.images[job.index];
    capnp::MallocMessageBuilder m;
    auto e = m.initRoot<proto::Envelope>().initEncodeImage();
    e.setEpoch(epoch);
    e.setImageId(image_id);
    e.setSequenceId(job.sequence);
    ImageToWire(img, e.initImage());
    job.state = ImageJob::State::kEncoding;
    job.worker = best->peer;
    job.sent = now;
    ++job.attempts;
    ++best->encoding;
    ++ahead;
    Send(m, best->peer);
  }
}

void Coordinator::Impl::OnImageEncoded(const std::string& peer, proto::ImageEncoded::Reader r) {
  if (r.getEpoch() != epoch) return;  // an answer of an older plan: its rows went to an inbox since emptied
  auto job = image_jobs.find(r.getImageId());
  if (job == image_jobs.end() || job->second.state != ImageJob::State::kEncoding || job->second.worker != peer) return;
  job->second.state = ImageJob::State::kReady;
  job->second.worker.clear();
  for (auto& v : vision) {
    if (v.peer != peer) continue;
    v.encoding = std::max(0, v.encoding - 1);
    ++v.encoded;
    v.recent_ms.push_back(static_cast<double>(r.getEncodeMicros()) * 1e-3);
    if (v.recent_ms.size() > kRecentEncodes) v.recent_ms.erase(v.recent_ms.begin());
  }
  ++images_encoded_total;
  live.encode_seconds.Observe(static_cast<double>(r.getEncodeMicros()) * 1e-6);
  if (vision_requeued.erase(r.getImageId()) > 0 && vision_requeued.empty()) {
    last_recover_ms = std::chrono::duration<double, std::milli>(Now() - fault_detected_at).count();
    spdlog::info("recovered: the lost vision worker's images encoded again {:.0f} ms after the loss was detected",
                 last_recover_ms);
  }
}

void Coordinator::Impl::OnVisionError(WorkerInfo& w, uint64_t image_id, const Status& st) {
  auto job = image_jobs.find(image_id);
  if (job == image_jobs.end() || job->second.state != ImageJob::State::kEncoding || job->second.worker != w.peer) {
    return;  // of an older plan, or already handled
  }
  for (auto& v : vision)
    if (v.peer == w.peer) v.encoding = std::max(0, v.encoding - 1);
  auto seq = sequences.find(job->second.sequence);
  if (st.code() == StatusCode::kInvalidArgument && seq != sequences.end()) {
    // The image itself is wrong: its request fails with the reason, nobody else's.
    FailRequest(seq->second.request, st.WithContext("vision worker " + w.id));
    return;
  }
  // Anything else (the inbox unreachable for a moment, a plan change under way): encode again.
  job->second.state = ImageJob::State::kWaiting;
  job->second.worker.clear();
  if (job->second.attempts >= kEncodeAttempts && seq != sequences.end()) {
    FailRequest(seq->second.request, st.WithContext("an image failed on vision workers " +
                                                    std::to_string(kEncodeAttempts) + " times; last on " + w.id));
  }
}

void Coordinator::Impl::OnVisionWorkerLost(WorkerInfo& lost, const std::string& why) {
  lost.vision = false;
  const auto it =
      std::find_if(vision.begin(), vision.end(), [&](const VisionWorker& v) { return v.peer == lost.peer; });
  if (it == vision.end()) return;
  const bool was_ready = it->ready;
  vision.erase(it);
  ++faults;
  fault_detected_at = Now();
  last_detect_ms = std::chrono::duration<double, std::milli>(fault_detected_at - lost.last_seen).count();
  int requeued = 0;
  for (auto& [image_id, job] : image_jobs) {
    if (job.state != ImageJob::State::kEncoding || job.worker != lost.peer) continue;
    job.state = ImageJob::State::kWaiting;
    job.worker.clear();
    vision_requeued.insert(image_id);
    ++requeued;
  }
  const bool any_ready = std::any_of(vision.begin(), vision.end(), [](const VisionWorker& v) { return v.ready; });
  if (state == ClusterState::kServing && was_ready && any_ready) {
    spdlog::error("vision worker {} lost ({}): {} image(s) it was encoding go to the {} vision worker(s) left", lost.id,
                  why, requeued, vision.size());
    // Recovered once every one of them is encoded again (at once when it held none).
    last_recover_ms = 0;
    return;
  }
  // The last vision worker (or one the plan still waits for): plan again on the workers left,
  // which puts the vision block on stage 0 when no separate plan fits them.
  spdlog::error("vision worker {} lost ({}): re-planning on the remaining workers and replaying", lost.id, why);
  Recover("vision worker " + lost.id + " lost (" + why + ")");
}

}  // namespace xcpipe::coordinator
