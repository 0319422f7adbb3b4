#include "xcpipe/transport/stage_message.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <gtest/gtest.h>

#include <functional>
#include <random>

#include "test_messages.h"
#include "xcpipe/schemas/dataplane.capnp.h"
#include "xcpipe/transport/frame.h"

namespace xcpipe::transport {
namespace {

using testing::MakeStageMessage;
namespace wire = ::xcpipe::proto::dataplane;

// A header written field by field with the generated builder, so tests can put in values our
// own encoder would never produce.
std::vector<std::byte> BuildHeader(const std::function<void(wire::StageHeader::Builder)>& fill) {
  capnp::MallocMessageBuilder builder;
  auto root = builder.initRoot<wire::StageHeader>();
  fill(root);
  auto words = capnp::messageToFlatArray(builder);
  auto bytes = words.asBytes();
  return {reinterpret_cast<const std::byte*>(bytes.begin()), reinterpret_cast<const std::byte*>(bytes.end())};
}

void SetTensor(wire::TensorDescriptor::Builder d, const char* name, wire::DType dtype, std::vector<int64_t> shape,
               uint64_t byte_length) {
  d.setName(name);
  d.setDtype(dtype);
  auto s = d.initShape(static_cast<unsigned>(shape.size()));
  for (size_t i = 0; i < shape.size(); ++i) s.set(i, shape[i]);
  d.setByteLength(byte_length);
}

void ExpectRefused(const StatusOr<StageHeader>& result, const std::string& needle) {
  ASSERT_FALSE(result.ok()) << "expected a refusal mentioning '" << needle << "'";
  EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument) << result.status().ToString();
  EXPECT_NE(result.status().message().find(needle), std::string::npos)
      << "message '" << result.status().message() << "' does not mention '" << needle << "'";
}

TEST(TensorFrameTest, ByteLengthMustMatchShape) {
  std::vector<std::byte> bytes(10);
  auto bad = TensorFrame::Borrow("x", DType::kF32, {2, 2}, bytes);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("expected 16"), std::string::npos) << bad.status().ToString();
  auto good = TensorFrame::Borrow("x", DType::kU8, {2, 5}, bytes);
  ASSERT_TRUE(good.ok());
  EXPECT_FALSE(good->owns_bytes());
  EXPECT_EQ(good->bytes().data(), bytes.data());
}

TEST(TensorFrameTest, OwnedCopiesShareBytes) {
  auto frame = TensorFrame::Own("p", DType::kI64, {3}, std::vector<std::byte>(24, std::byte{1}));
  ASSERT_TRUE(frame.ok());
  TensorFrame copy = *frame;
  EXPECT_TRUE(copy.owns_bytes());
  EXPECT_EQ(copy.bytes().data(), frame->bytes().data());
  EXPECT_EQ(copy.as<int64_t>().size(), 3u);
  EXPECT_TRUE(copy.as<float>().empty());
}

TEST(TensorFrameTest, ShapeArithmeticIsOverflowChecked) {
  EXPECT_FALSE(TensorByteLength(DType::kI64, std::vector<int64_t>{int64_t{1} << 62, 8}).ok());
  EXPECT_FALSE(TensorByteLength(DType::kF32, std::vector<int64_t>{-1, 4}).ok());
  EXPECT_EQ(*TensorByteLength(DType::kF32, std::vector<int64_t>{}), 4u);  // a scalar
  EXPECT_EQ(*TensorByteLength(DType::kBF16, std::vector<int64_t>{0, 4096}), 0u);
  EXPECT_EQ(*DTypeFromName("bf16"), DType::kBF16);
  EXPECT_FALSE(DTypeFromName("f64").has_value());
}

TEST(StageHeaderTest, RoundTripKeepsEveryField) {
  StageMessage m = MakeStageMessage(/*step=*/5, /*rows=*/8);
  std::vector<uint32_t> crcs = {1, 2, 3};
  auto bytes = EncodeStageHeader(m, ChecksumKind::kCrc32c, crcs);
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  EXPECT_EQ(bytes->size() % 8, 0u);
  auto header = DecodeStageHeader(*bytes, MessageLimits{});
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  EXPECT_EQ(header->epoch, 3u);
  EXPECT_EQ(header->micro_batch_id, 11u);
  EXPECT_EQ(header->step, 5u);
  EXPECT_EQ(header->segments, m.segments);
  EXPECT_EQ(header->checksum_kind, ChecksumKind::kCrc32c);
  ASSERT_EQ(header->tensors.size(), 3u);
  EXPECT_EQ(header->tensors[0].name, "hidden");
  EXPECT_EQ(header->tensors[0].dtype, DType::kBF16);
  EXPECT_EQ(header->tensors[0].shape, (std::vector<int64_t>{8, 64}));
  EXPECT_EQ(header->tensors[0].byte_length, 8u * 64 * 2);
  EXPECT_EQ(header->tensors[2].checksum, 3u);
  EXPECT_EQ(header->payload_bytes, m.payload_bytes());
}

TEST(StageHeaderTest, EmptyMessageRoundTrips) {
  StageMessage m;
  m.step = 9;
  auto bytes = EncodeStageHeader(m, ChecksumKind::kNone, {});
  ASSERT_TRUE(bytes.ok());
  auto header = DecodeStageHeader(*bytes, MessageLimits{});
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  EXPECT_EQ(header->step, 9u);
  EXPECT_TRUE(header->tensors.empty());
  EXPECT_TRUE(header->segments.empty());
  EXPECT_EQ(header->payload_bytes, 0u);
}

TEST(StageHeaderTest, UnalignedInputIsCopiedNotRefused) {
  auto bytes = EncodeStageHeader(MakeStageMessage(1, 4), ChecksumKind::kNone, {});
  ASSERT_TRUE(bytes.ok());
  std::vector<std::byte> shifted(bytes->size() + 4);
  std::memcpy(shifted.data() + 4, bytes->data(), bytes->size());
  auto header = DecodeStageHeader(std::span<const std::byte>(shifted).subspan(4), MessageLimits{});
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  EXPECT_EQ(header->tensors.size(), 3u);
}

TEST(StageHeaderTest, RefusesFramingProblems) {
  ExpectRefused(DecodeStageHeader({}, MessageLimits{}), "empty");
  std::vector<std::byte> odd(12);
  ExpectRefused(DecodeStageHeader(odd, MessageLimits{}), "whole number of 8-byte words");
  MessageLimits small;
  small.max_header_bytes = 64;
  auto bytes = EncodeStageHeader(MakeStageMessage(1, 4), ChecksumKind::kNone, {});
  ExpectRefused(DecodeStageHeader(*bytes, small), "exceeds the limit of 64");
}

TEST(StageHeaderTest, RandomBytesNeverCrash) {
  std::mt19937_64 rng(2024);
  for (int i = 0; i < 2000; ++i) {
    std::vector<std::byte> junk(8 * (1 + rng() % 64));
    for (auto& b : junk) b = std::byte(rng());
    auto result = DecodeStageHeader(junk, MessageLimits{});
    if (!result.ok()) {
      EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument);
    }
  }
}

TEST(StageHeaderTest, RefusesByteLengthThatDoesNotMatchShape) {
  auto bytes = BuildHeader([](auto h) {
    SetTensor(h.initTensors(1)[0], "hidden", wire::DType::BF16, {8, 4096}, 8 * 4096 * 2 + 1);
  });
  ExpectRefused(DecodeStageHeader(bytes, MessageLimits{}), "expected 65536");
}

TEST(StageHeaderTest, RefusesNegativeAndOverflowingShapes) {
  auto negative = BuildHeader([](auto h) { SetTensor(h.initTensors(1)[0], "x", wire::DType::F32, {-2, 4}, 0); });
  ExpectRefused(DecodeStageHeader(negative, MessageLimits{}), "negative");
  auto overflow = BuildHeader([](auto h) {
    SetTensor(h.initTensors(1)[0], "x", wire::DType::I64, {int64_t{1} << 40, int64_t{1} << 30}, 0);
  });
  ExpectRefused(DecodeStageHeader(overflow, MessageLimits{}), "overflows");
}

TEST(StageHeaderTest, RefusesTotalOverTheLimit) {
  MessageLimits limits;
  limits.max_payload_bytes = 1 << 20;
  auto bytes = BuildHeader([](auto h) {
    auto t = h.initTensors(2);
    SetTensor(t[0], "a", wire::DType::U8, {600000}, 600000);
    SetTensor(t[1], "b", wire::DType::U8, {600000}, 600000);
  });
  ExpectRefused(DecodeStageHeader(bytes, limits), "more than the limit of 1048576");
}

TEST(StageHeaderTest, RefusesTooManyDescriptorsSegmentsAndDimensions) {
  MessageLimits limits;
  limits.max_tensors = 2;
  limits.max_segments = 3;
  limits.max_rank = 2;
  auto tensors = BuildHeader([](auto h) {
    auto t = h.initTensors(3);
    SetTensor(t[0], "a", wire::DType::U8, {1}, 1);
    SetTensor(t[1], "b", wire::DType::U8, {1}, 1);
    SetTensor(t[2], "c", wire::DType::U8, {1}, 1);
  });
  ExpectRefused(DecodeStageHeader(tensors, limits), "3 tensors; expected at most 2");
  auto segments = BuildHeader([](auto h) { h.initSegments(4); });
  ExpectRefused(DecodeStageHeader(segments, limits), "4 segments; expected at most 3");
  auto rank = BuildHeader([](auto h) { SetTensor(h.initTensors(1)[0], "a", wire::DType::U8, {1, 1, 1}, 1); });
  ExpectRefused(DecodeStageHeader(rank, limits), "rank 3");
}

TEST(StageHeaderTest, RefusesUnknownEnumsNamesAndRows) {
  auto dtype = BuildHeader([](auto h) { SetTensor(h.initTensors(1)[0], "a", static_cast<wire::DType>(9), {1}, 1); });
  ExpectRefused(DecodeStageHeader(dtype, MessageLimits{}), "dtype 9");
  auto kind = BuildHeader([](auto h) { h.setChecksumKind(static_cast<wire::ChecksumKind>(7)); });
  ExpectRefused(DecodeStageHeader(kind, MessageLimits{}), "checksumKind 7");
  auto empty_name = BuildHeader([](auto h) { SetTensor(h.initTensors(1)[0], "", wire::DType::U8, {1}, 1); });
  ExpectRefused(DecodeStageHeader(empty_name, MessageLimits{}), "empty name");
  auto twice = BuildHeader([](auto h) {
    auto t = h.initTensors(2);
    SetTensor(t[0], "a", wire::DType::U8, {1}, 1);
    SetTensor(t[1], "a", wire::DType::U8, {1}, 1);
  });
  ExpectRefused(DecodeStageHeader(twice, MessageLimits{}), "appears twice");
  auto rows = BuildHeader([](auto h) { h.initSegments(1)[0].setRows(-1); });
  ExpectRefused(DecodeStageHeader(rows, MessageLimits{}), "expected both >= 0");
  MessageLimits limits;
  limits.max_name_bytes = 4;
  auto long_name = BuildHeader([](auto h) { SetTensor(h.initTensors(1)[0], "hidden", wire::DType::U8, {1}, 1); });
  ExpectRefused(DecodeStageHeader(long_name, limits), "name of 6 bytes");
}

TEST(StageHeaderTest, SenderSideValidationUsesTheSameLimits) {
  MessageLimits limits;
  limits.max_tensors = 2;
  Status s = ValidateOutgoing(MakeStageMessage(1, 4), limits);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("3 tensors; expected at most 2"), std::string::npos) << s.ToString();
  EXPECT_TRUE(ValidateOutgoing(MakeStageMessage(1, 4), MessageLimits{}).ok());
  StageMessage unnamed;
  unnamed.tensors.emplace_back();
  EXPECT_FALSE(ValidateOutgoing(unnamed, MessageLimits{}).ok());
}

TEST(FramePreambleTest, RoundTrip) {
  FramePreamble p;
  p.flags = kFlagPayloadOutOfBand;
  p.header_bytes = 128;
  p.header_crc32c = 0xDEADBEEF;
  auto bytes = EncodePreamble(p);
  EXPECT_EQ(bytes[0], std::byte{'X'});
  auto back = DecodePreamble(bytes, MessageLimits{});
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back->payload_out_of_band());
  EXPECT_EQ(back->header_bytes, 128u);
  EXPECT_EQ(back->header_crc32c, 0xDEADBEEFu);
}

TEST(FramePreambleTest, RefusesEachBadField) {
  auto check = [](const std::function<void(FramePreamble&, std::array<std::byte, kPreambleBytes>&)>& corrupt,
                  const std::string& needle) {
    FramePreamble p;
    p.header_bytes = 64;
    p.payload_bytes = 100;
    auto bytes = EncodePreamble(p);
    corrupt(p, bytes);
    auto result = DecodePreamble(bytes, MessageLimits{});
    ASSERT_FALSE(result.ok()) << needle;
    EXPECT_NE(result.status().message().find(needle), std::string::npos) << result.status().ToString();
  };
  check([](auto&, auto& b) { b[0] = std::byte{'Y'}; }, "expected the data-plane magic");
  check(
      [](auto& p, auto& b) {
        p.version = 2;
        b = EncodePreamble(p);
      },
      "this build speaks version 1");
  check(
      [](auto& p, auto& b) {
        p.flags = 0x8000;
        b = EncodePreamble(p);
      },
      "unknown bits");
  check(
      [](auto& p, auto& b) {
        p.header_bytes = 0;
        b = EncodePreamble(p);
      },
      "positive multiple of 8");
  check(
      [](auto& p, auto& b) {
        p.header_bytes = 12;
        b = EncodePreamble(p);
      },
      "positive multiple of 8");
  check(
      [](auto& p, auto& b) {
        p.header_bytes = 8u << 20;
        b = EncodePreamble(p);
      },
      "exceeds the limit");
  check(
      [](auto& p, auto& b) {
        p.payload_bytes = uint64_t{1} << 40;
        b = EncodePreamble(p);
      },
      "exceeds the limit");
  check(
      [](auto& p, auto& b) {
        p.flags = kFlagPayloadOutOfBand;
        b = EncodePreamble(p);
      },
      "out of band but");
}

}  // namespace
}  // namespace xcpipe::transport
