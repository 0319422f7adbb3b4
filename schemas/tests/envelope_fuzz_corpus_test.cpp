// The control-message fuzzer's seeds and corpus (schemas/fuzz/corpus) as regression tests.
//
// The seeds are made here: valid envelopes of most arms, framing garbage, and hand-laid
// hostile messages (a pointer out of its segment, a list whose elements all point at one text
// to amplify reads, an unknown union tag). The file name says the outcome each must have:
//   bad_*      refused by wire::Decode with InvalidArgument
//   hostile_*  decoded, but reading every field hits a Cap'n Proto bound (a caught throw)
//   valid_*    decoded, every field read cleanly, and a re-encoded copy reads the same
//   any other  (reproducers kept from fuzz runs) only no invariant broken
// To rewrite the corpus after a schema change:
//   XCPIPE_WRITE_ENVELOPE_CORPUS=schemas/fuzz/corpus build/tests/xcpipe_schemas_test
//     --gtest_filter='EnvelopeFuzzCorpus.*'
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "../fuzz/envelope_fuzz_body.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::wire::fuzz {
namespace {

namespace fs = std::filesystem;
using Seed = std::pair<std::string, std::string>;

std::string EncodeBuilder(capnp::MallocMessageBuilder& builder) { return Encode(builder); }

// A hand-laid single-segment message: word 0 is the segment table, word 1 the root pointer.
class Words {
 public:
  explicit Words(size_t n) : words_(n + 2, 0) {}
  uint64_t& at(size_t i) { return words_[i + 2]; }  // index within the segment (root pointer = -1)
  // Struct pointer stored at segment word `at` (-1: the root) to a struct at `target`.
  void StructPtr(int64_t at, int64_t target, uint16_t data_words, uint16_t pointers) {
    const int64_t offset = target - at - 1;
    Slot(at) = (static_cast<uint64_t>(static_cast<uint32_t>(offset << 2))) |
               (static_cast<uint64_t>(data_words) << 32) | (static_cast<uint64_t>(pointers) << 48);
  }
  // List pointer; element_size: 2 = byte, 6 = pointer (Cap'n Proto's encoding).
  void ListPtr(int64_t at, int64_t target, uint32_t element_size, uint32_t count) {
    const int64_t offset = target - at - 1;
    Slot(at) = (static_cast<uint64_t>(static_cast<uint32_t>(offset << 2) | 1)) |
               (static_cast<uint64_t>(element_size) << 32) | (static_cast<uint64_t>(count) << 35);
  }
  std::string Bytes() {
    words_[0] = static_cast<uint64_t>(words_.size() - 1) << 32;  // one segment of size-1 words
    return std::string(reinterpret_cast<const char*>(words_.data()), words_.size() * 8);
  }

 private:
  uint64_t& Slot(int64_t at) { return words_[static_cast<size_t>(at + 2)]; }
  std::vector<uint64_t> words_;
};

struct Layout {
  uint16_t data_words;
  uint16_t pointers;
};
template <typename T>
Layout LayoutOf() {
  auto node = capnp::Schema::from<T>().getProto().getStruct();
  return {node.getDataWordCount(), node.getPointerCount()};
}
template <typename T>
uint32_t PointerSlot(const char* field) {
  return capnp::Schema::from<T>().getFieldByName(field).getProto().getSlot().getOffset();
}
uint32_t EnvelopeTag(const char* arm) {
  return capnp::Schema::from<proto::Envelope>().getFieldByName(arm).getProto().getDiscriminantValue();
}

// An envelope laid out at word 0 with `arm` selected; its struct arm pointer is word `arm_ptr`.
Words EnvelopeWords(size_t words, const char* arm, uint16_t tag_override, int64_t* arm_ptr) {
  const Layout env = LayoutOf<proto::Envelope>();
  Words w(words);
  w.StructPtr(-1, 0, env.data_words, env.pointers);
  const uint32_t discriminant_offset =
      capnp::Schema::from<proto::Envelope>().getProto().getStruct().getDiscriminantOffset();  // in 16-bit units
  const uint16_t tag = arm != nullptr ? static_cast<uint16_t>(EnvelopeTag(arm)) : tag_override;
  w.at(discriminant_offset / 4) |= static_cast<uint64_t>(tag) << (16 * (discriminant_offset % 4));
  if (arm != nullptr) *arm_ptr = env.data_words + PointerSlot<proto::Envelope>(arm);
  return w;
}

std::vector<Seed> ValidSeeds() {
  std::vector<Seed> seeds;
  {
    capnp::MallocMessageBuilder b;
    auto hello = b.initRoot<proto::Envelope>().initHello();
    hello.setProtocolVersion(proto::K_PROTOCOL_VERSION);
    hello.setRole(proto::Role::WORKER);
    hello.setWorkerId("node-a/cuda:0");
    hello.setEpoch(3);
    auto caps = hello.initCapabilities();
    caps.setHost("node-a");
    caps.setPid(4242);
    caps.setDevice("cuda:0");
    caps.setDeviceName("NVIDIA H100 80GB HBM3");
    caps.setMemoryBytes(uint64_t{80} << 30);
    auto planes = caps.initDataPlanes(2);
    planes.set(0, "tcp");
    planes.set(1, "nccl");
    caps.setDataAddress("10.0.0.1:7001");
    caps.setBuildVersion("0.1.0");
    seeds.emplace_back("valid_hello", EncodeBuilder(b));
  }
  {
    capnp::MallocMessageBuilder b;
    auto hb = b.initRoot<proto::Envelope>().initHeartbeat();
    hb.setSequence(77);
    hb.setEpoch(5);
    hb.setMicroBatch(12);
    auto r = hb.initResources();
    r.setCapacityBytes(uint64_t{24} << 30);
    r.setUsedBytes(uint64_t{3} << 30);
    r.initUsed().setKvBytes(1 << 20);
    r.setIdleFraction(0.25);
    r.setStepP99Micros(8000);
    seeds.emplace_back("valid_heartbeat", EncodeBuilder(b));
  }
  {
    capnp::MallocMessageBuilder b;
    SetError(b.initRoot<proto::Envelope>(), ResourceExhaustedError("no KV room on stage 2")).setSequenceId(99);
    seeds.emplace_back("valid_error", EncodeBuilder(b));
  }
  {
    capnp::MallocMessageBuilder b;
    auto a = b.initRoot<proto::Envelope>().initAssignStage();
    a.setEpoch(2);
    a.setStageIndex(1);
    a.setStageCount(2);
    a.setBlockBegin(12);
    a.setBlockEnd(24);
    a.setModelPath("/models/ixc2d5");
    a.setDtype("bf16");
    a.setKvBudgetBytes(uint64_t{2} << 30);
    a.setSpecOverrides(R"({"vision_heads": 2})");
    a.setMaxBatchRows(64);
    a.setDataPlane("nccl");
    a.initPreviousNcclId(128)[0] = 0x02;  // an ncclUniqueId's first bytes name its address family
    a.initNextNcclId(128)[0] = 0x02;
    seeds.emplace_back("valid_assign_stage", EncodeBuilder(b));
  }
  {
    capnp::MallocMessageBuilder b;
    auto a = b.initRoot<proto::Envelope>().initAdmitSequence();
    a.setSequenceId(7);
    a.setMaxTokens(512);
    auto s = a.initSampling();
    s.setGreedy(false);
    s.setTemperature(0.7);
    s.setTopK(40);
    auto ctx = a.initPenaltyContext(3);
    for (uint32_t i = 0; i < 3; ++i) ctx.set(i, 100 + i);
    a.setPrefixSequenceId(3);  // copies the shared prompt head's KV
    a.setPrefixRows(96);
    seeds.emplace_back("valid_admit_sequence", EncodeBuilder(b));
  }
  {
    capnp::MallocMessageBuilder b;
    auto f = b.initRoot<proto::Envelope>().initForward();
    f.setEpoch(1);
    f.setMicroBatchId(9);
    f.setStep(4);
    auto segs = f.initSegments(2);
    segs[0].setSequenceId(1);
    segs[0].setRows(3);
    segs[1].setSequenceId(2);
    segs[1].setRows(1);
    segs[1].setStartPos(17);
    auto ids = f.initTokenIds(4);
    ids.set(0, 1);
    ids.set(1, -1);
    ids.set(2, 92543);
    ids.set(3, 5);
    const uint8_t mask[4] = {0, 1, 0, 0};
    f.setImMask(capnp::Data::Reader(mask, 4));
    auto img = f.initImages(1)[0];
    img.setChannels(3);
    img.setHeight(2);
    img.setWidth(2);
    img.setGridH(1);
    img.setGridW(1);
    const float pixels[12] = {0.5f, -1.f, 2.f, 0.f, 1.f, 1.f, 1.f, 1.f, 0.25f, 0.f, 3.f, -2.f};
    img.setPixels(capnp::Data::Reader(reinterpret_cast<const uint8_t*>(pixels), sizeof pixels));
    seeds.emplace_back("valid_forward", EncodeBuilder(b));
  }
  {
    capnp::MallocMessageBuilder b;
    auto r = b.initRoot<proto::Envelope>().initStepResult();
    r.setMicroBatchId(9);
    auto seqs = r.initSequenceIds(2);
    seqs.set(0, 1);
    seqs.set(1, 2);
    auto toks = r.initTokens(2);
    toks.set(0, 42);
    toks.set(1, 2);
    auto micros = r.initStageMicros(2);
    micros.set(0, 1500);
    micros.set(1, 1700);
    seeds.emplace_back("valid_step_result", EncodeBuilder(b));
  }
  {
    capnp::MallocMessageBuilder b;
    auto s = b.initRoot<proto::Envelope>().initSubmit();
    s.setRequestId(5);
    s.setPromptJson(R"(["<ImageHere>Describe the image.", "And now?"])");
    auto images = s.initImages(1);
    const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    images.set(0, capnp::Data::Reader(png_magic, sizeof png_magic));
    s.setMaxNewTokens(32);
    s.initSampling().setSeed(1234);
    s.setDeadlineMs(30000);
    auto pen = s.initPenaltyContext(1);
    pen.set(0, 7);
    seeds.emplace_back("valid_submit", EncodeBuilder(b));
  }
  {
    capnp::MallocMessageBuilder b;
    auto s = b.initRoot<proto::Envelope>().initSubmit();
    s.setRequestId(6);
    auto ids = s.initTokenIds(3);
    ids.set(0, 1);
    ids.set(1, -1);
    ids.set(2, 2);
    const uint8_t mask[3] = {0, 1, 0};
    s.setImMask(capnp::Data::Reader(mask, 3));
    auto px = s.initPixelImages(1)[0];
    px.setChannels(3);
    px.setHeight(1);
    px.setWidth(1);
    const float pixels[3] = {0.f, 1.f, 2.f};
    px.setPixels(capnp::Data::Reader(reinterpret_cast<const uint8_t*>(pixels), sizeof pixels));
    s.setWantLogits(true);
    seeds.emplace_back("valid_submit_tokens", EncodeBuilder(b));
  }
  {
    capnp::MallocMessageBuilder b;
    auto t = b.initRoot<proto::Envelope>().initTokenEvent();
    t.setRequestId(5);
    auto toks = t.initTokens(2);
    toks.set(0, 11);
    toks.set(1, 12);
    t.setText("Hello");
    t.setDone(true);
    t.setFinishReason("stop");
    t.setOffset(3);
    auto all = t.initAllTokens(5);
    for (uint32_t i = 0; i < 5; ++i) all.set(i, 10 + i);
    t.setAllText("A cat. Hello");
    t.setPromptCount(1);
    seeds.emplace_back("valid_token_event", EncodeBuilder(b));
  }
  {
    capnp::MallocMessageBuilder b;
    auto r = b.initRoot<proto::Envelope>().initStatusReply();
    r.setEpoch(2);
    r.setState("serving");
    auto workers = r.initWorkers(2);
    workers[0].setWorkerId("node-a/cpu");
    workers[0].setStageIndex(0);
    workers[0].initPlanned().setWeightBytes(1 << 30);
    workers[0].initResources().setQueuedSteps(2);
    workers[1].setWorkerId("node-b/cpu");
    workers[1].setStageIndex(-1);
    r.setModel("ixc2d5");
    auto reasons = r.initFailedByReason(1);
    reasons[0].setReason("ResourceExhausted");
    reasons[0].setCount(3);
    r.initRefusedByReason(1)[0].setReason("busy");
    r.setTtftP99Ms(120.5);
    r.setMetricsAddress("127.0.0.1:9100");
    seeds.emplace_back("valid_status_reply", EncodeBuilder(b));
  }
  {
    capnp::MallocMessageBuilder b;
    b.initRoot<proto::Envelope>().initShutdown().setReason("coordinator stopping");
    seeds.emplace_back("valid_shutdown", EncodeBuilder(b));
  }
  {
    capnp::MallocMessageBuilder b;
    b.initRoot<proto::Envelope>().initReleaseSequences().initSequenceIds(3).set(2, 9);
    seeds.emplace_back("valid_release_sequences", EncodeBuilder(b));
  }
  {
    // A union tag this schema does not know (a newer peer): decodes, nothing to follow.
    int64_t unused = 0;
    Words w = EnvelopeWords(LayoutOf<proto::Envelope>().data_words + LayoutOf<proto::Envelope>().pointers,
                            nullptr, 999, &unused);
    seeds.emplace_back("valid_unknown_union_tag", w.Bytes());
  }
  return seeds;
}

std::vector<Seed> BadSeeds(const std::vector<Seed>& valid) {
  std::vector<Seed> seeds;
  const std::string& hello = valid.front().second;
  std::string forward;
  for (const auto& [name, bytes] : valid) {
    if (name == "valid_forward") forward = bytes;
  }
  seeds.emplace_back("bad_empty", "");
  seeds.emplace_back("bad_odd_length", hello.substr(0, hello.size() - 3));
  seeds.emplace_back("bad_truncated_forward", forward.substr(0, forward.size() / 16 * 8));
  seeds.emplace_back("bad_segment_table_only", hello.substr(0, 8));
  {
    std::string many = hello;
    const uint32_t segments_minus_one = 600;  // far more segments than bytes
    std::memcpy(many.data(), &segments_minus_one, 4);
    seeds.emplace_back("bad_segment_count", many);
  }
  {
    Words w(1);
    w.StructPtr(-1, 100, 1, 1);  // the root points past the segment's end
    seeds.emplace_back("bad_root_out_of_bounds", w.Bytes());
  }
  {
    std::string garbage(64, '\0');
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < garbage.size(); ++i) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      garbage[i] = static_cast<char>(x);
    }
    garbage[0] = 0;  // one segment
    garbage[1] = garbage[2] = garbage[3] = 0;
    garbage[4] = 7;  // of 7 words; the root pointer is random
    garbage[5] = garbage[6] = garbage[7] = 0;
    seeds.emplace_back("garbage_words", garbage);  // outcome depends on the bytes: any is fine
  }
  return seeds;
}

std::vector<Seed> HostileSeeds() {
  std::vector<Seed> seeds;
  const Layout env = LayoutOf<proto::Envelope>();
  const Layout hello = LayoutOf<proto::Hello>();
  const Layout caps = LayoutOf<proto::Capabilities>();
  {
    // The hello arm points past the segment's end: Decode only reads the tag; a handler's first
    // getHello() throws.
    int64_t arm = 0;
    Words w = EnvelopeWords(env.data_words + env.pointers, "hello", 0, &arm);
    w.StructPtr(arm, 1000, hello.data_words, hello.pointers);
    seeds.emplace_back("hostile_arm_out_of_bounds", w.Bytes());
  }
  {
    // hello.capabilities.dataPlanes: 512 text pointers all at one 800-byte text. Each read is
    // charged in full, so the traversal limit (4x the message) stops the walk long before the
    // 400 KiB the list would amplify to.
    const int64_t hello_at = env.data_words + env.pointers;
    const int64_t caps_at = hello_at + hello.data_words + hello.pointers;
    const int64_t list_at = caps_at + caps.data_words + caps.pointers;
    const uint32_t n = 512;
    const int64_t text_at = list_at + n;
    const uint32_t text_bytes = 800;
    int64_t arm = 0;
    Words w = EnvelopeWords(static_cast<size_t>(text_at + text_bytes / 8), "hello", 0, &arm);
    w.StructPtr(arm, hello_at, hello.data_words, hello.pointers);
    w.StructPtr(hello_at + hello.data_words + PointerSlot<proto::Hello>("capabilities"), caps_at, caps.data_words,
                caps.pointers);
    w.ListPtr(caps_at + caps.data_words + PointerSlot<proto::Capabilities>("dataPlanes"), list_at, 6, n);
    for (uint32_t i = 0; i < n; ++i) w.ListPtr(list_at + i, text_at, 2, text_bytes);
    for (uint32_t i = 0; i + 1 < text_bytes / 8; ++i) w.at(static_cast<size_t>(text_at + i)) = 0x6161616161616161ull;
    w.at(static_cast<size_t>(text_at + text_bytes / 8 - 1)) = 0x0061616161616161ull;  // NUL-terminated
    seeds.emplace_back("hostile_amplified_text_list", w.Bytes());
  }
  return seeds;
}

std::vector<Seed> AllSeeds() {
  std::vector<Seed> seeds = ValidSeeds();
  for (auto& s : BadSeeds(seeds)) seeds.push_back(std::move(s));
  for (auto& s : HostileSeeds()) seeds.push_back(std::move(s));
  return seeds;
}

void ExpectOutcome(const std::string& name, const std::string& bytes) {
  const EnvelopeRound round = FuzzEnvelopeOnce(AsByteSpan(bytes.data(), bytes.size()));
  EXPECT_EQ(round.violation, "") << name;
  if (name.starts_with("bad_")) {
    EXPECT_EQ(round.outcome, EnvelopeOutcome::kRefused) << name << ": " << round.detail;
  } else if (name.starts_with("hostile_")) {
    EXPECT_EQ(round.outcome, EnvelopeOutcome::kHostile) << name << ": " << round.detail;
  } else if (name.starts_with("valid_")) {
    EXPECT_EQ(round.outcome, EnvelopeOutcome::kWalked) << name << ": " << round.detail;
    EXPECT_GT(round.digest.structs, 0u) << name;
  }
}

TEST(EnvelopeFuzzCorpus, SeedsHaveTheOutcomeTheirNameSays) {
  const std::vector<Seed> seeds = AllSeeds();
  for (const auto& [name, bytes] : seeds) ExpectOutcome(name, bytes);
  if (const char* out = std::getenv("XCPIPE_WRITE_ENVELOPE_CORPUS")) {
    fs::create_directories(out);
    for (const auto& [name, bytes] : seeds) {
      std::ofstream(fs::path(out) / name, std::ios::binary) << bytes;
    }
  }
}

TEST(EnvelopeFuzzCorpus, EveryCorpusFileHasTheOutcomeItsNameSays) {
  const fs::path corpus = xcpipe::testing::SourceDir() / "schemas/fuzz/corpus";
  ASSERT_TRUE(fs::is_directory(corpus)) << corpus;
  int files = 0;
  for (const auto& entry : fs::directory_iterator(corpus)) {
    std::ifstream in(entry.path(), std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ExpectOutcome(entry.path().filename().string(), bytes);
    ++files;
  }
  EXPECT_GE(files, static_cast<int>(AllSeeds().size()));
}

}  // namespace
}  // namespace xcpipe::wire::fuzz
