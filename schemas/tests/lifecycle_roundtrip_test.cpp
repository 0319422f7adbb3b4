// Round trip of the stage, sequence, step and client messages through Encode/Decode: every
// field set to a distinct value and read back.
#include <gtest/gtest.h>

#include <vector>

#include "xcpipe/schemas/wire.h"

namespace xcpipe::wire {
namespace {

std::unique_ptr<DecodedEnvelope> RoundTrip(capnp::MallocMessageBuilder& builder) {
  std::string bytes = Encode(builder);
  auto decoded = Decode({reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()});
  EXPECT_TRUE(decoded.ok()) << decoded.status().ToString();
  return decoded.ok() ? std::move(decoded).value() : nullptr;
}

std::string Str(capnp::Text::Reader t) { return t.cStr(); }

TEST(LifecycleRoundTrip, AssignStage) {
  capnp::MallocMessageBuilder b;
  auto a = b.initRoot<proto::Envelope>().initAssignStage();
  a.setEpoch(4); a.setStageIndex(1); a.setStageCount(3); a.setBlockBegin(5); a.setBlockEnd(9);
  a.setModelPath("/models/x"); a.setDtype("bf16"); a.setKvBudgetBytes(123456789); a.setNextDataAddress("10.0.0.3:7001");
  a.setSpecOverrides("{\"vision_heads\":2}"); a.setMaxBatchRows(4096);
  a.setDataPlane("nccl");
  std::vector<kj::byte> previous(128), next(128);
  for (size_t i = 0; i < 128; ++i) {
    previous[i] = static_cast<kj::byte>(i);
    next[i] = static_cast<kj::byte>(255 - i);
  }
  a.setPreviousNcclId(kj::arrayPtr(previous.data(), previous.size()));
  a.setNextNcclId(kj::arrayPtr(next.data(), next.size()));
  auto d = RoundTrip(b);
  ASSERT_NE(d, nullptr);
  ASSERT_EQ(d->envelope().which(), proto::Envelope::ASSIGN_STAGE);
  auto r = d->envelope().getAssignStage();
  EXPECT_EQ(r.getEpoch(), 4u); EXPECT_EQ(r.getStageIndex(), 1u); EXPECT_EQ(r.getStageCount(), 3u);
  EXPECT_EQ(r.getBlockBegin(), 5u); EXPECT_EQ(r.getBlockEnd(), 9u); EXPECT_EQ(Str(r.getModelPath()), "/models/x");
  EXPECT_EQ(Str(r.getDtype()), "bf16"); EXPECT_EQ(r.getKvBudgetBytes(), 123456789u);
  EXPECT_EQ(Str(r.getNextDataAddress()), "10.0.0.3:7001"); EXPECT_EQ(Str(r.getSpecOverrides()), "{\"vision_heads\":2}");
  EXPECT_EQ(r.getMaxBatchRows(), 4096u);
  EXPECT_EQ(Str(r.getDataPlane()), "nccl");
  EXPECT_EQ(std::vector<kj::byte>(r.getPreviousNcclId().begin(), r.getPreviousNcclId().end()), previous);
  EXPECT_EQ(std::vector<kj::byte>(r.getNextNcclId().begin(), r.getNextNcclId().end()), next);
}

// An assignment from a coordinator that predates the data-plane fields reads as TCP, no ids.
TEST(LifecycleRoundTrip, AssignStageWithoutDataPlaneFieldsMeansTcp) {
  capnp::MallocMessageBuilder b;
  b.initRoot<proto::Envelope>().initAssignStage().setEpoch(1);
  auto d = RoundTrip(b);
  ASSERT_NE(d, nullptr);
  auto r = d->envelope().getAssignStage();
  EXPECT_EQ(Str(r.getDataPlane()), "");
  EXPECT_EQ(r.getPreviousNcclId().size(), 0u);
  EXPECT_EQ(r.getNextNcclId().size(), 0u);
}

TEST(LifecycleRoundTrip, LoadProgressAndReady) {
  capnp::MallocMessageBuilder b1;
  auto p = b1.initRoot<proto::Envelope>().initLoadProgress();
  p.setEpoch(2); p.setStageIndex(3); p.setBytesDone(10); p.setBytesTotal(20);
  auto d1 = RoundTrip(b1);
  ASSERT_NE(d1, nullptr);
  auto rp = d1->envelope().getLoadProgress();
  EXPECT_EQ(rp.getEpoch(), 2u); EXPECT_EQ(rp.getStageIndex(), 3u); EXPECT_EQ(rp.getBytesDone(), 10u);
  EXPECT_EQ(rp.getBytesTotal(), 20u);

  capnp::MallocMessageBuilder b2;
  auto s = b2.initRoot<proto::Envelope>().initStageReady();
  s.setEpoch(2); s.setStageIndex(1); s.setWeightBytes(111); s.setKvBytesPerToken(222); s.setResidentBytes(333); s.setLoadMs(44);
  auto d2 = RoundTrip(b2);
  ASSERT_NE(d2, nullptr);
  auto rs = d2->envelope().getStageReady();
  EXPECT_EQ(rs.getWeightBytes(), 111u); EXPECT_EQ(rs.getKvBytesPerToken(), 222u); EXPECT_EQ(rs.getResidentBytes(), 333u);
  EXPECT_EQ(rs.getLoadMs(), 44u); EXPECT_EQ(rs.getStageIndex(), 1u); EXPECT_EQ(rs.getEpoch(), 2u);
}

TEST(LifecycleRoundTrip, AdmitAndRelease) {
  capnp::MallocMessageBuilder b1;
  auto a = b1.initRoot<proto::Envelope>().initAdmitSequence();
  a.setEpoch(3); a.setSequenceId(77); a.setMaxTokens(900);
  auto sp = a.initSampling();
  sp.setGreedy(false); sp.setTemperature(0.7); sp.setTopK(40); sp.setTopP(0.8); sp.setRepetitionPenalty(1.005); sp.setSeed(99);
  auto ctx = a.initPenaltyContext(2); ctx.set(0, 1); ctx.set(1, 92543);
  auto d1 = RoundTrip(b1);
  ASSERT_NE(d1, nullptr);
  auto r = d1->envelope().getAdmitSequence();
  EXPECT_EQ(r.getSequenceId(), 77u); EXPECT_EQ(r.getMaxTokens(), 900u); EXPECT_EQ(r.getEpoch(), 3u);
  EXPECT_FALSE(r.getSampling().getGreedy()); EXPECT_DOUBLE_EQ(r.getSampling().getTemperature(), 0.7);
  EXPECT_EQ(r.getSampling().getTopK(), 40u); EXPECT_DOUBLE_EQ(r.getSampling().getTopP(), 0.8);
  EXPECT_DOUBLE_EQ(r.getSampling().getRepetitionPenalty(), 1.005); EXPECT_EQ(r.getSampling().getSeed(), 99u);
  ASSERT_EQ(r.getPenaltyContext().size(), 2u); EXPECT_EQ(r.getPenaltyContext()[1], 92543);

  capnp::MallocMessageBuilder b2;
  auto rel = b2.initRoot<proto::Envelope>().initReleaseSequences();
  rel.setEpoch(3);
  auto ids = rel.initSequenceIds(3); ids.set(0, 5); ids.set(1, 6); ids.set(2, 7);
  auto d2 = RoundTrip(b2);
  ASSERT_NE(d2, nullptr);
  EXPECT_EQ(d2->envelope().getReleaseSequences().getSequenceIds()[2], 7u);
}

TEST(LifecycleRoundTrip, SamplingDefaultsAreGreedyAndNeutral) {
  capnp::MallocMessageBuilder b;
  b.initRoot<proto::Envelope>().initAdmitSequence().initSampling();
  auto d = RoundTrip(b);
  ASSERT_NE(d, nullptr);
  auto s = d->envelope().getAdmitSequence().getSampling();
  EXPECT_TRUE(s.getGreedy()); EXPECT_DOUBLE_EQ(s.getTemperature(), 1.0); EXPECT_DOUBLE_EQ(s.getTopP(), 1.0);
  EXPECT_DOUBLE_EQ(s.getRepetitionPenalty(), 1.0);
}

TEST(LifecycleRoundTrip, ForwardAndStepResult) {
  capnp::MallocMessageBuilder b1;
  auto f = b1.initRoot<proto::Envelope>().initForward();
  f.setEpoch(6); f.setMicroBatchId(8); f.setStep(12); f.setWantLogits(true);
  auto segs = f.initSegments(2);
  segs[0].setSequenceId(1); segs[0].setRows(3); segs[0].setStartPos(0);
  segs[1].setSequenceId(2); segs[1].setRows(1); segs[1].setStartPos(40);
  auto ids = f.initTokenIds(4); ids.set(0, 1); ids.set(1, -1); ids.set(2, 5); ids.set(3, 9);
  uint8_t mask[4] = {0, 1, 0, 0};
  f.setImMask(kj::arrayPtr(mask, 4));
  auto img = f.initImages(1)[0];
  float px[3] = {0.5f, -1.0f, 2.0f};
  img.setChannels(3); img.setHeight(1); img.setWidth(1); img.setGridH(1); img.setGridW(2);
  img.setPixels(kj::arrayPtr(reinterpret_cast<const kj::byte*>(px), sizeof(px)));
  auto d1 = RoundTrip(b1);
  ASSERT_NE(d1, nullptr);
  auto r = d1->envelope().getForward();
  EXPECT_EQ(r.getEpoch(), 6u); EXPECT_EQ(r.getMicroBatchId(), 8u); EXPECT_EQ(r.getStep(), 12u); EXPECT_TRUE(r.getWantLogits());
  ASSERT_EQ(r.getSegments().size(), 2u);
  EXPECT_EQ(r.getSegments()[1].getStartPos(), 40u); EXPECT_EQ(r.getSegments()[0].getRows(), 3u);
  EXPECT_EQ(r.getTokenIds()[1], -1); EXPECT_EQ(r.getImMask()[1], 1);
  EXPECT_EQ(r.getImages()[0].getGridW(), 2u); EXPECT_EQ(r.getImages()[0].getPixels().size(), sizeof(px));

  capnp::MallocMessageBuilder b2;
  auto s = b2.initRoot<proto::Envelope>().initStepResult();
  s.setEpoch(6); s.setMicroBatchId(8); s.setStep(12);
  auto sids = s.initSequenceIds(2); sids.set(0, 1); sids.set(1, 2);
  auto toks = s.initTokens(2); toks.set(0, 100); toks.set(1, 200);
  float logits[2] = {1.5f, -2.5f};
  s.setLogits(kj::arrayPtr(reinterpret_cast<const kj::byte*>(logits), sizeof(logits)));
  auto micros = s.initStageMicros(3); micros.set(0, 10); micros.set(1, 20); micros.set(2, 30);
  auto d2 = RoundTrip(b2);
  ASSERT_NE(d2, nullptr);
  auto rs = d2->envelope().getStepResult();
  EXPECT_EQ(rs.getTokens()[1], 200); EXPECT_EQ(rs.getSequenceIds()[0], 1u); EXPECT_EQ(rs.getStageMicros()[2], 30u);
  EXPECT_EQ(rs.getLogits().size(), sizeof(logits));
}

// A beam group's fields: the admission of its beams and their candidates, the parents and scores
// a step carries, the candidates the last stage answers, and the beam settings.
TEST(LifecycleRoundTrip, BeamGroupFields) {
  capnp::MallocMessageBuilder b1;
  auto a = b1.initRoot<proto::Envelope>().initAdmitSequence();
  a.setSequenceId(10);
  auto others = a.initBeamSequenceIds(2); others.set(0, 11); others.set(1, 12);
  a.setBeamCandidates(9);
  auto sp = a.initSampling();
  sp.setNumBeams(3); sp.setLengthPenalty(0.5); sp.setEarlyStopping(2); sp.setMinLength(4);
  auto d1 = RoundTrip(b1);
  ASSERT_NE(d1, nullptr);
  auto r = d1->envelope().getAdmitSequence();
  ASSERT_EQ(r.getBeamSequenceIds().size(), 2u); EXPECT_EQ(r.getBeamSequenceIds()[1], 12u);
  EXPECT_EQ(r.getBeamCandidates(), 9u);
  EXPECT_EQ(r.getSampling().getNumBeams(), 3u); EXPECT_DOUBLE_EQ(r.getSampling().getLengthPenalty(), 0.5);
  EXPECT_EQ(r.getSampling().getEarlyStopping(), 2u); EXPECT_EQ(r.getSampling().getMinLength(), 4u);

  capnp::MallocMessageBuilder b2;
  auto f = b2.initRoot<proto::Envelope>().initForward();
  auto parents = f.initBeamParents(3); parents.set(0, 0); parents.set(1, 0); parents.set(2, -1);
  auto scores = f.initBeamScores(3); scores.set(0, -1.25f); scores.set(1, -2.5f); scores.set(2, 0.0f);
  auto d2 = RoundTrip(b2);
  ASSERT_NE(d2, nullptr);
  auto rf = d2->envelope().getForward();
  EXPECT_EQ(rf.getBeamParents()[2], -1); EXPECT_EQ(rf.getBeamScores()[1], -2.5f);

  capnp::MallocMessageBuilder b3;
  auto s = b3.initRoot<proto::Envelope>().initStepResult();
  auto counts = s.initCandidateCounts(2); counts.set(0, 2); counts.set(1, 0);
  auto tokens = s.initCandidateTokens(2); tokens.set(0, 7); tokens.set(1, 3);
  auto totals = s.initCandidateTotals(2); totals.set(0, -0.5f); totals.set(1, -0.75f);
  auto d3 = RoundTrip(b3);
  ASSERT_NE(d3, nullptr);
  auto rs = d3->envelope().getStepResult();
  EXPECT_EQ(rs.getCandidateCounts()[0], 2u); EXPECT_EQ(rs.getCandidateTokens()[1], 3);
  EXPECT_EQ(rs.getCandidateTotals()[1], -0.75f);

  // A sender that predates beams: no beam search, HF's length penalty.
  capnp::MallocMessageBuilder b4;
  b4.initRoot<proto::Envelope>().initSubmit().initSampling();
  auto d4 = RoundTrip(b4);
  ASSERT_NE(d4, nullptr);
  EXPECT_EQ(d4->envelope().getSubmit().getSampling().getNumBeams(), 0u);
  EXPECT_DOUBLE_EQ(d4->envelope().getSubmit().getSampling().getLengthPenalty(), 1.0);
}

TEST(LifecycleRoundTrip, DrainShutdownAndClientMessages) {
  capnp::MallocMessageBuilder b1;
  b1.initRoot<proto::Envelope>().initDrain().setReason("maintenance");
  auto d1 = RoundTrip(b1);
  ASSERT_NE(d1, nullptr);
  EXPECT_EQ(Str(d1->envelope().getDrain().getReason()), "maintenance");

  capnp::MallocMessageBuilder b2;
  b2.initRoot<proto::Envelope>().initShutdown().setReason("bye");
  auto d2 = RoundTrip(b2);
  ASSERT_NE(d2, nullptr);
  EXPECT_EQ(Str(d2->envelope().getShutdown().getReason()), "bye");

  capnp::MallocMessageBuilder b3;
  auto sub = b3.initRoot<proto::Envelope>().initSubmit();
  sub.setRequestId(42); sub.setPromptJson("\"<ImageHere>Hi\""); sub.setMaxNewTokens(16); sub.setDeadlineMs(5000);
  sub.initImages(1).set(0, kj::StringPtr("PNGDATA").asBytes());
  sub.initTokenIds(2).set(1, 7); sub.setWantLogits(true);
  auto d3 = RoundTrip(b3);
  ASSERT_NE(d3, nullptr);
  auto rsub = d3->envelope().getSubmit();
  EXPECT_EQ(rsub.getRequestId(), 42u); EXPECT_EQ(Str(rsub.getPromptJson()), "\"<ImageHere>Hi\"");
  EXPECT_EQ(rsub.getImages()[0].size(), 7u); EXPECT_EQ(rsub.getMaxNewTokens(), 16u); EXPECT_EQ(rsub.getDeadlineMs(), 5000u);
  EXPECT_EQ(rsub.getTokenIds()[1], 7); EXPECT_TRUE(rsub.getWantLogits());

  capnp::MallocMessageBuilder b4;
  auto ev = b4.initRoot<proto::Envelope>().initTokenEvent();
  ev.setRequestId(42); ev.initTokens(1).set(0, 9); ev.setText("hé"); ev.setDone(true); ev.setFinishReason("stop");
  ev.setPromptTokens(30); ev.setTtftMicros(1234); ev.setPromptIndex(2); ev.setError("");
  auto d4 = RoundTrip(b4);
  ASSERT_NE(d4, nullptr);
  auto rev = d4->envelope().getTokenEvent();
  EXPECT_EQ(rev.getTokens()[0], 9); EXPECT_EQ(Str(rev.getText()), "hé"); EXPECT_TRUE(rev.getDone());
  EXPECT_EQ(Str(rev.getFinishReason()), "stop"); EXPECT_EQ(rev.getPromptTokens(), 30u); EXPECT_EQ(rev.getTtftMicros(), 1234u);
  EXPECT_EQ(rev.getPromptIndex(), 2u);

  capnp::MallocMessageBuilder b5;
  auto st = b5.initRoot<proto::Envelope>().initStatusReply();
  st.setEpoch(9); st.setState("serving"); st.setQueueDepth(3); st.setInFlight(4); st.setCompleted(5); st.setFailed(6);
  st.setModel("m"); st.setStages(2); st.setFaults(1); st.setReplays(8); st.setLastDetectMs(2500.5); st.setLastRecoverMs(400.25);
  st.setDataPlane("nccl"); st.setDataPlaneReason("every stage is a CUDA worker with NCCL");
  st.setStepsCompleted(70); st.setStepRoundTripMsTotal(1050.5); st.setStepComputeMsTotal(980.25); st.setStepRoundTripP50Ms(14.5);
  auto w = st.initWorkers(1)[0];
  w.setWorkerId("a/0"); w.setHost("a"); w.setPid(11); w.setDevice("cpu"); w.setState("serving"); w.setStageIndex(-1);
  w.setPlannedBytes(10); w.setUsedBytes(9); w.setBlocks("0..3"); w.setStepsCompleted(100); w.setLastHeartbeatMsAgo(12);
  auto d5 = RoundTrip(b5);
  ASSERT_NE(d5, nullptr);
  auto rst = d5->envelope().getStatusReply();
  EXPECT_EQ(rst.getEpoch(), 9u); EXPECT_EQ(Str(rst.getState()), "serving"); EXPECT_EQ(rst.getReplays(), 8u);
  EXPECT_DOUBLE_EQ(rst.getLastRecoverMs(), 400.25); EXPECT_EQ(rst.getWorkers()[0].getStageIndex(), -1);
  EXPECT_EQ(Str(rst.getDataPlane()), "nccl"); EXPECT_EQ(Str(rst.getDataPlaneReason()), "every stage is a CUDA worker with NCCL");
  EXPECT_EQ(rst.getStepsCompleted(), 70u); EXPECT_DOUBLE_EQ(rst.getStepRoundTripMsTotal(), 1050.5);
  EXPECT_DOUBLE_EQ(rst.getStepComputeMsTotal(), 980.25); EXPECT_DOUBLE_EQ(rst.getStepRoundTripP50Ms(), 14.5);
  EXPECT_EQ(Str(rst.getWorkers()[0].getBlocks()), "0..3"); EXPECT_EQ(rst.getWorkers()[0].getLastHeartbeatMsAgo(), 12u);

  capnp::MallocMessageBuilder b6;
  b6.initRoot<proto::Envelope>().initStatusRequest().setDetail(true);
  auto d6 = RoundTrip(b6);
  ASSERT_NE(d6, nullptr);
  EXPECT_TRUE(d6->envelope().getStatusRequest().getDetail());
}

// Every ResourceSample field set to a distinct value (monitoring figures in heartbeats).
void FillSample(proto::ResourceSample::Builder r) {
  r.setCapacityBytes(1001); r.setUsedBytes(1002); r.setDeviceFreeBytes(1003); r.setAllocatorBytes(1004);
  auto u = r.initUsed();
  u.setWeightBytes(1005); u.setKvBytes(1006); u.setActivationBytes(1007);
  r.setKvBudgetBytes(1008); r.setKvReservedBytes(1009); r.setKvUsedBytes(1010); r.setStepP50Micros(1011);
  r.setStepP99Micros(1012); r.setStepsInWindow(1013); r.setWindowMs(1014); r.setIdleFraction(0.25);
  r.setBusyMicrosTotal(1015); r.setBytesSent(1016); r.setQueuedSteps(1017);
}

void ExpectSample(proto::ResourceSample::Reader r) {
  EXPECT_EQ(r.getCapacityBytes(), 1001u); EXPECT_EQ(r.getUsedBytes(), 1002u); EXPECT_EQ(r.getDeviceFreeBytes(), 1003u);
  EXPECT_EQ(r.getAllocatorBytes(), 1004u); EXPECT_EQ(r.getUsed().getWeightBytes(), 1005u);
  EXPECT_EQ(r.getUsed().getKvBytes(), 1006u); EXPECT_EQ(r.getUsed().getActivationBytes(), 1007u);
  EXPECT_EQ(r.getKvBudgetBytes(), 1008u); EXPECT_EQ(r.getKvReservedBytes(), 1009u); EXPECT_EQ(r.getKvUsedBytes(), 1010u);
  EXPECT_EQ(r.getStepP50Micros(), 1011u); EXPECT_EQ(r.getStepP99Micros(), 1012u); EXPECT_EQ(r.getStepsInWindow(), 1013u);
  EXPECT_EQ(r.getWindowMs(), 1014u); EXPECT_DOUBLE_EQ(r.getIdleFraction(), 0.25); EXPECT_EQ(r.getBusyMicrosTotal(), 1015u);
  EXPECT_EQ(r.getBytesSent(), 1016u); EXPECT_EQ(r.getQueuedSteps(), 1017u);
}

TEST(LifecycleRoundTrip, HeartbeatResources) {
  capnp::MallocMessageBuilder b;
  auto hb = b.initRoot<proto::Envelope>().initHeartbeat();
  hb.setSequence(3); hb.setResidentBytes(1002);
  FillSample(hb.initResources());
  auto d = RoundTrip(b);
  ASSERT_NE(d, nullptr);
  ASSERT_EQ(d->envelope().which(), proto::Envelope::HEARTBEAT);
  ASSERT_TRUE(d->envelope().getHeartbeat().hasResources());
  ExpectSample(d->envelope().getHeartbeat().getResources());
}

TEST(LifecycleRoundTrip, StatusReplyMonitoring) {
  capnp::MallocMessageBuilder b;
  auto st = b.initRoot<proto::Envelope>().initStatusReply();
  st.setSubmitted(40); st.setTtftP50Ms(12.5); st.setTtftP99Ms(80.25); st.setTokensPerSecondP50(33.5);
  st.setMetricsAddress("127.0.0.1:9100");
  auto failed = st.initFailedByReason(2);
  failed[0].setReason("ResourceExhausted"); failed[0].setCount(2);
  failed[1].setReason("Cancelled"); failed[1].setCount(1);
  auto refused = st.initRefusedByReason(1);
  refused[0].setReason("busy"); refused[0].setCount(7);
  auto w = st.initWorkers(1)[0];
  w.setWorkerId("a/0"); w.setMemoryBytes(2000);
  auto planned = w.initPlanned();
  planned.setWeightBytes(21); planned.setKvBytes(22); planned.setActivationBytes(23);
  FillSample(w.initResources());
  auto d = RoundTrip(b);
  ASSERT_NE(d, nullptr);
  auto r = d->envelope().getStatusReply();
  EXPECT_EQ(r.getSubmitted(), 40u); EXPECT_DOUBLE_EQ(r.getTtftP50Ms(), 12.5); EXPECT_DOUBLE_EQ(r.getTtftP99Ms(), 80.25);
  EXPECT_DOUBLE_EQ(r.getTokensPerSecondP50(), 33.5); EXPECT_EQ(Str(r.getMetricsAddress()), "127.0.0.1:9100");
  ASSERT_EQ(r.getFailedByReason().size(), 2u);
  EXPECT_EQ(Str(r.getFailedByReason()[1].getReason()), "Cancelled"); EXPECT_EQ(r.getFailedByReason()[0].getCount(), 2u);
  ASSERT_EQ(r.getRefusedByReason().size(), 1u);
  EXPECT_EQ(Str(r.getRefusedByReason()[0].getReason()), "busy"); EXPECT_EQ(r.getRefusedByReason()[0].getCount(), 7u);
  auto rw = r.getWorkers()[0];
  EXPECT_EQ(rw.getMemoryBytes(), 2000u); EXPECT_EQ(rw.getPlanned().getWeightBytes(), 21u);
  EXPECT_EQ(rw.getPlanned().getKvBytes(), 22u); EXPECT_EQ(rw.getPlanned().getActivationBytes(), 23u);
  ExpectSample(rw.getResources());
}

}  // namespace
}  // namespace xcpipe::wire
