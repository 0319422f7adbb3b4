// Round trip of every Envelope arm through Encode/Decode, plus the framing checks that guard
// untrusted bytes (misalignment, truncation, garbage, oversize).
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "xcpipe/schemas/wire.h"

namespace xcpipe::wire {
namespace {

std::span<const std::byte> AsBytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

std::unique_ptr<DecodedEnvelope> RoundTrip(capnp::MallocMessageBuilder& builder) {
  std::string bytes = Encode(builder);
  auto decoded = Decode(AsBytes(bytes));
  EXPECT_TRUE(decoded.ok()) << decoded.status().ToString();
  return decoded.ok() ? std::move(decoded).value() : nullptr;
}

TEST(WireRoundTrip, Hello) {
  capnp::MallocMessageBuilder builder;
  auto hello = builder.initRoot<proto::Envelope>().initHello();
  hello.setProtocolVersion(proto::K_PROTOCOL_VERSION);
  hello.setRole(proto::Role::WORKER);
  hello.setWorkerId("node-a/cuda:1");
  hello.setEpoch(9);
  auto caps = hello.initCapabilities();
  caps.setHost("node-a");
  caps.setPid(4242);
  caps.setDevice("cuda:1");
  caps.setDeviceName("test device");
  caps.setMemoryBytes(uint64_t{80} << 30);
  caps.setFreeMemoryBytes(uint64_t{79} << 30);
  auto planes = caps.initDataPlanes(2);
  planes.set(0, "tcp");
  planes.set(1, "nccl");
  caps.setDataAddress("10.0.0.1:7001");
  caps.setThreads(16);
  caps.setBuildVersion("0.1.0");

  auto decoded = RoundTrip(builder);
  ASSERT_NE(decoded, nullptr);
  auto env = decoded->envelope();
  ASSERT_EQ(env.which(), proto::Envelope::HELLO);
  auto h = env.getHello();
  EXPECT_EQ(h.getProtocolVersion(), proto::K_PROTOCOL_VERSION);
  EXPECT_EQ(h.getRole(), proto::Role::WORKER);
  EXPECT_EQ(std::string(h.getWorkerId().cStr()), "node-a/cuda:1");
  EXPECT_EQ(h.getEpoch(), 9u);
  auto c = h.getCapabilities();
  EXPECT_EQ(std::string(c.getHost().cStr()), "node-a");
  EXPECT_EQ(c.getPid(), 4242u);
  EXPECT_EQ(std::string(c.getDevice().cStr()), "cuda:1");
  EXPECT_EQ(std::string(c.getDeviceName().cStr()), "test device");
  EXPECT_EQ(c.getMemoryBytes(), uint64_t{80} << 30);
  EXPECT_EQ(c.getFreeMemoryBytes(), uint64_t{79} << 30);
  ASSERT_EQ(c.getDataPlanes().size(), 2u);
  EXPECT_EQ(std::string(c.getDataPlanes()[1].cStr()), "nccl");
  EXPECT_EQ(std::string(c.getDataAddress().cStr()), "10.0.0.1:7001");
  EXPECT_EQ(c.getThreads(), 16u);
  EXPECT_EQ(std::string(c.getBuildVersion().cStr()), "0.1.0");
}

TEST(WireRoundTrip, Welcome) {
  capnp::MallocMessageBuilder builder;
  auto w = builder.initRoot<proto::Envelope>().initWelcome();
  w.setProtocolVersion(proto::K_PROTOCOL_VERSION);
  w.setEpoch(3);
  w.setHeartbeatIntervalMs(250);
  w.setHeartbeatTimeoutMs(2000);
  auto decoded = RoundTrip(builder);
  ASSERT_NE(decoded, nullptr);
  ASSERT_EQ(decoded->envelope().which(), proto::Envelope::WELCOME);
  auto r = decoded->envelope().getWelcome();
  EXPECT_EQ(r.getEpoch(), 3u);
  EXPECT_EQ(r.getHeartbeatIntervalMs(), 250u);
  EXPECT_EQ(r.getHeartbeatTimeoutMs(), 2000u);
}

TEST(WireRoundTrip, Heartbeat) {
  capnp::MallocMessageBuilder builder;
  auto hb = builder.initRoot<proto::Envelope>().initHeartbeat();
  hb.setSequence(77);
  hb.setSentAtUnixMs(1700000000123ull);
  hb.setEpoch(5);
  hb.setStepsCompleted(1234);
  hb.setResidentBytes(uint64_t{3} << 30);
  auto decoded = RoundTrip(builder);
  ASSERT_NE(decoded, nullptr);
  ASSERT_EQ(decoded->envelope().which(), proto::Envelope::HEARTBEAT);
  auto r = decoded->envelope().getHeartbeat();
  EXPECT_EQ(r.getSequence(), 77u);
  EXPECT_EQ(r.getSentAtUnixMs(), 1700000000123ull);
  EXPECT_EQ(r.getEpoch(), 5u);
  EXPECT_EQ(r.getStepsCompleted(), 1234u);
  EXPECT_EQ(r.getResidentBytes(), uint64_t{3} << 30);
}

TEST(WireRoundTrip, ErrorFromStatus) {
  capnp::MallocMessageBuilder builder;
  SetError(builder.initRoot<proto::Envelope>(), ResourceExhaustedError("no KV room on stage 2")).setSequenceId(99);
  auto decoded = RoundTrip(builder);
  ASSERT_NE(decoded, nullptr);
  ASSERT_EQ(decoded->envelope().which(), proto::Envelope::ERROR);
  auto e = decoded->envelope().getError();
  EXPECT_EQ(FromWire(e.getCode()), StatusCode::kResourceExhausted);
  EXPECT_EQ(std::string(e.getMessage().cStr()), "no KV room on stage 2");
  // Each kind of id has its own field: a sequence's error is about no micro-batch or request.
  EXPECT_EQ(e.getSequenceId(), 99u);
  EXPECT_EQ(e.getMicroBatchId(), 0u);
  EXPECT_EQ(e.getRequestId(), 0u);
  EXPECT_EQ(e.getStalledMs(), 0u);
}

TEST(WireRoundTrip, WatchdogErrorCarriesTheStall) {
  capnp::MallocMessageBuilder builder;
  auto env = builder.initRoot<proto::Envelope>();
  SetError(env, DeadlineExceededError("compute stuck")).setMicroBatchId(30);
  env.getError().setStalledMs(1048);
  auto decoded = RoundTrip(builder);
  ASSERT_NE(decoded, nullptr);
  EXPECT_EQ(FromWire(decoded->envelope().getError().getCode()), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(decoded->envelope().getError().getStalledMs(), 1048u);
}

TEST(WireCodes, EveryStatusCodeMapsBothWays) {
  for (int i = 0; i <= static_cast<int>(StatusCode::kAlreadyExists); ++i) {
    auto code = static_cast<StatusCode>(i);
    EXPECT_EQ(FromWire(ToWire(code)), code) << i;
  }
}

TEST(WireDecode, MisalignedBufferIsCopiedAndReadable) {
  capnp::MallocMessageBuilder builder;
  builder.initRoot<proto::Envelope>().initHeartbeat().setSequence(5);
  std::string bytes = Encode(builder);
  // Place the message at an address that is 4 but not 8 byte aligned, as ZeroMQ may.
  std::vector<std::byte> storage(bytes.size() + 16);
  auto base = reinterpret_cast<uintptr_t>(storage.data());
  size_t offset = ((base + 7) / 8 * 8 + 4) - base;
  std::memcpy(storage.data() + offset, bytes.data(), bytes.size());
  auto decoded = Decode(std::span<const std::byte>(storage.data() + offset, bytes.size()));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ((*decoded)->envelope().getHeartbeat().getSequence(), 5u);
}

TEST(WireDecode, RejectsEmptyAndPartialWords) {
  auto empty = Decode({});
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
  std::string odd(13, '\0');
  auto partial = Decode(AsBytes(odd));
  ASSERT_FALSE(partial.ok());
  EXPECT_NE(partial.status().message().find("whole number"), std::string::npos);
}

TEST(WireDecode, RejectsTruncatedMessage) {
  capnp::MallocMessageBuilder builder;
  auto hello = builder.initRoot<proto::Envelope>().initHello();
  hello.setWorkerId(std::string(200, 'w'));
  std::string bytes = Encode(builder);
  std::string cut = bytes.substr(0, bytes.size() - 64);
  auto decoded = Decode(AsBytes(cut));
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(decoded.status().message().find("malformed"), std::string::npos);
}

TEST(WireDecode, RejectsGarbageSegmentTable) {
  // A segment table that claims 2^31 segments.
  std::string garbage(16, '\0');
  uint32_t huge = 0x7fffffff;
  std::memcpy(garbage.data(), &huge, 4);
  auto decoded = Decode(AsBytes(garbage));
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), StatusCode::kInvalidArgument);
}

TEST(WireDecode, RejectsOversizeBeforeParsing) {
  std::string big(kMaxControlMessageBytes + 8, '\0');
  auto decoded = Decode(AsBytes(big));
  ASSERT_FALSE(decoded.ok());
  EXPECT_NE(decoded.status().message().find("exceeds the limit"), std::string::npos);
}

TEST(WireLimits, EachMessageTypeHasItsOwnSizeLimit) {
  // A hello padded past its type's limit is refused before any handler sees it...
  capnp::MallocMessageBuilder hello;
  hello.initRoot<proto::Envelope>().initHello().setWorkerId(std::string(MaxBytesFor(proto::Envelope::HELLO), 'x'));
  const std::string bytes = Encode(hello);
  auto refused = Decode({reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()});
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("accepted for that type"), std::string::npos) << refused.status().ToString();
  // ...while a submit of the same size is read.
  capnp::MallocMessageBuilder submit;
  submit.initRoot<proto::Envelope>().initSubmit().setPromptJson(std::string(MaxBytesFor(proto::Envelope::HELLO), 'x'));
  const std::string ok_bytes = Encode(submit);
  EXPECT_TRUE(Decode({reinterpret_cast<const std::byte*>(ok_bytes.data()), ok_bytes.size()}).ok());
  EXPECT_LT(MaxBytesFor(proto::Envelope::HEARTBEAT), MaxBytesFor(proto::Envelope::TOKEN_EVENT));
  EXPECT_LT(MaxBytesFor(proto::Envelope::TOKEN_EVENT), MaxBytesFor(proto::Envelope::FORWARD));
}

}  // namespace
}  // namespace xcpipe::wire
