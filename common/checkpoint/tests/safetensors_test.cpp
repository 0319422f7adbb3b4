#include "xcpipe/checkpoint/safetensors.h"

#include <gtest/gtest.h>

#include <set>

#include "test_util.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::checkpoint {
namespace {

using testing::EditHeader;
using testing::PatternBytes;
using testing::ReadAll;
using testing::TempDir;
using testing::WriteAll;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Three tensors of different dtypes, written with WriteSafetensors.
struct SmallFile {
  std::string a = PatternBytes("a", 2 * 3 * 4);
  std::string b = PatternBytes("b", 5 * 2);
  std::string c = PatternBytes("c", 4 * 8);
  std::vector<TensorToWrite> tensors() const {
    return {{"layer.a", DType::kF32, {2, 3}, a}, {"layer.b", DType::kBF16, {5}, b}, {"layer.c", DType::kI64, {4}, c}};
  }
};

TEST(DTypeTest, ParsesEverySpellingAndNamesSizes) {
  EXPECT_EQ(ParseDType("F32"), DType::kF32);
  EXPECT_EQ(ParseDType("float32"), DType::kF32);
  EXPECT_EQ(ParseDType("torch.bfloat16"), DType::kBF16);
  EXPECT_EQ(ParseDType("bf16"), DType::kBF16);
  EXPECT_EQ(ParseDType("fp16"), DType::kF16);
  EXPECT_EQ(ParseDType("float16"), DType::kF16);
  EXPECT_EQ(ParseDType("int64"), DType::kI64);
  EXPECT_EQ(ParseDType("BOOL"), DType::kBool);
  EXPECT_EQ(ParseDType("complex64"), std::nullopt);
  EXPECT_EQ(ParseDType(""), std::nullopt);
  EXPECT_EQ(DTypeBytes(DType::kBF16), 2u);
  EXPECT_EQ(DTypeBytes(DType::kF64), 8u);
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI64, DType::kI32, DType::kI16,
                  DType::kI8, DType::kU8, DType::kBool}) {
    EXPECT_EQ(ParseDType(DTypeName(d)), d) << DTypeName(d);
  }
}

TEST(SafetensorsTest, WriteThenReadRoundTrips) {
  TempDir tmp;
  SmallFile f;
  auto file = tmp / "x.safetensors";
  ASSERT_TRUE(WriteSafetensors(file, f.tensors(), {{"format", "pt"}}).ok());
  auto header = ReadSafetensorsHeader(file);
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  EXPECT_EQ(header->data_section_offset % 8, 0u);
  EXPECT_EQ(header->metadata.at("format"), "pt");
  ASSERT_EQ(header->entries.size(), 3u);
  // Contiguous, in the given order, covering the whole data section (what the reference
  // reader demands).
  const std::string bytes = ReadAll(file);
  uint64_t expected_begin = 0;
  const std::vector<std::string> data = {f.a, f.b, f.c};
  for (size_t i = 0; i < 3; ++i) {
    const auto& e = header->entries[i];
    EXPECT_EQ(e.begin, expected_begin);
    expected_begin = e.end;
    EXPECT_EQ(bytes.substr(header->data_section_offset + e.begin, e.end - e.begin), data[i]) << e.info.name;
  }
  EXPECT_EQ(header->data_section_offset + expected_begin, bytes.size());
  EXPECT_EQ(header->entries[1].info.name, "layer.b");
  EXPECT_EQ(header->entries[1].info.dtype, DType::kBF16);
  EXPECT_EQ(header->entries[0].info.shape, (std::vector<int64_t>{2, 3}));
}

TEST(SafetensorsTest, ReadsEveryFixtureShard) {
  const auto root = xcpipe::testing::FixturesDir();
  if (!std::filesystem::exists(root)) GTEST_SKIP() << "no fixtures at " << root;
  for (const char* model : {"ixc1", "ixc2_vl", "ixc2_4khd", "ixc2d5"}) {
    const auto dir = root / model / "checkpoint";
    auto index = testing::ReadJson(dir / "model.safetensors.index.json");
    std::set<std::string> shards;
    for (auto& [name, shard] : index["weight_map"].items()) shards.insert(shard.get<std::string>());
    size_t tensors = 0;
    for (const auto& shard : shards) {
      auto header = ReadSafetensorsHeader(dir / shard);
      ASSERT_TRUE(header.ok()) << header.status().ToString();
      tensors += header->entries.size();
    }
    EXPECT_EQ(tensors, index["weight_map"].size()) << model;
  }
}

TEST(SafetensorsTest, TruncatedFileNamesFileAndTensor) {
  TempDir tmp;
  SmallFile f;
  auto file = tmp / "trunc.safetensors";
  ASSERT_TRUE(WriteSafetensors(file, f.tensors()).ok());
  std::string bytes = ReadAll(file);
  WriteAll(file, bytes.substr(0, bytes.size() - 3));  // cut into the last tensor (layer.c)
  auto header = ReadSafetensorsHeader(file);
  ASSERT_FALSE(header.ok());
  const auto& m = header.status().message();
  EXPECT_EQ(header.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(m, "trunc.safetensors")) << m;
  EXPECT_TRUE(Contains(m, "'layer.c'")) << m;
  EXPECT_TRUE(Contains(m, "truncated")) << m;

  // Cut inside the header itself, and inside the length prefix.
  WriteAll(file, bytes.substr(0, 20));
  header = ReadSafetensorsHeader(file);
  ASSERT_FALSE(header.ok());
  EXPECT_TRUE(Contains(header.status().message(), "runs past the end of the file")) << header.status().message();
  WriteAll(file, bytes.substr(0, 5));
  header = ReadSafetensorsHeader(file);
  ASSERT_FALSE(header.ok());
  EXPECT_TRUE(Contains(header.status().message(), "shorter than the 8-byte")) << header.status().message();
}

TEST(SafetensorsTest, HeaderLengthOverTheCapIsRefused) {
  std::string file(8, '\0');
  file[5] = 1;  // N = 2^40
  file += "{}";
  auto header = ParseSafetensorsFile(file, "big.safetensors");
  ASSERT_FALSE(header.ok());
  EXPECT_TRUE(Contains(header.status().message(), "over the limit")) << header.status().message();
  // And the header-only entry point refuses an N that does not fit the file.
  auto direct = ParseSafetensorsHeader("{}", 9, "tiny");
  ASSERT_FALSE(direct.ok());
}

TEST(SafetensorsTest, OverlappingOffsetsAreRefused) {
  TempDir tmp;
  SmallFile f;
  auto file = tmp / "overlap.safetensors";
  ASSERT_TRUE(WriteSafetensors(file, f.tensors()).ok());
  // layer.b is 10 bytes at [24,34): move it onto layer.a's bytes.
  ASSERT_TRUE(EditHeader(file, "\"data_offsets\":[24,34]", "\"data_offsets\":[20,30]"));
  auto header = ReadSafetensorsHeader(file);
  ASSERT_FALSE(header.ok());
  const auto& m = header.status().message();
  EXPECT_TRUE(Contains(m, "overlap")) << m;
  EXPECT_TRUE(Contains(m, "'layer.b'")) << m;
  EXPECT_TRUE(Contains(m, "'layer.a'")) << m;
  EXPECT_TRUE(Contains(m, "overlap.safetensors")) << m;
}

TEST(SafetensorsTest, WrongDtypeSizeIsRefused) {
  TempDir tmp;
  SmallFile f;
  auto file = tmp / "dtype.safetensors";
  ASSERT_TRUE(WriteSafetensors(file, f.tensors()).ok());
  // layer.a holds 24 bytes of F32 [2,3]; as F64 it would need 48.
  ASSERT_TRUE(EditHeader(file, "\"dtype\":\"F32\"", "\"dtype\":\"F64\""));
  auto header = ReadSafetensorsHeader(file);
  ASSERT_FALSE(header.ok());
  const auto& m = header.status().message();
  EXPECT_TRUE(Contains(m, "'layer.a'")) << m;
  EXPECT_TRUE(Contains(m, "wrong dtype size")) << m;
  EXPECT_TRUE(Contains(m, "needs 48")) << m;
}

TEST(SafetensorsTest, BadFieldsAreRefusedWithTheirNames) {
  TempDir tmp;
  SmallFile f;
  struct Case {
    std::string from, to, expect;
  };
  const std::vector<Case> cases = {
      {"\"dtype\":\"BF16\"", "\"dtype\":\"Q4_0\"", "unknown dtype \"Q4_0\""},
      {"\"dtype\":\"BF16\"", "\"dtype\":\"bfloat16\"", "unknown dtype"},  // not a safetensors spelling
      {"\"shape\":[2,3]", "\"shape\":[-2,3]", "negative"},
      {"\"shape\":[2,3]", "\"shape\":[2.5,3]", "non-integer"},
      {"\"data_offsets\":[24,34]", "\"data_offsets\":[34,24]", "end before they begin"},
      {"\"data_offsets\":[24,34]", "\"data_offsets\":[24]", "data_offsets"},
      {"\"data_offsets\":[34,66]", "\"data_offsets\":[1034,1066]", "truncated"},
      {"\"format\":\"pt\"", "\"format\":7", "not a string"},
      {"\"shape\":[2,3]", "\"shape\":[4294967296,4294967296,4294967296]", "too many elements"},
  };
  for (const auto& c : cases) {
    auto file = tmp / "bad.safetensors";
    ASSERT_TRUE(WriteSafetensors(file, f.tensors(), {{"format", "pt"}}).ok());
    ASSERT_TRUE(EditHeader(file, c.from, c.to)) << c.from;
    auto header = ReadSafetensorsHeader(file);
    ASSERT_FALSE(header.ok()) << c.to;
    EXPECT_TRUE(Contains(header.status().message(), c.expect)) << c.to << " -> " << header.status().message();
    EXPECT_TRUE(Contains(header.status().message(), "bad.safetensors")) << header.status().message();
  }
}

TEST(SafetensorsTest, DuplicatedNameInOneHeaderIsRefused) {
  // JSON parsers keep the last of two equal keys; the header reader must not.
  const std::string json =
      R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"w":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})";
  auto header = ParseSafetensorsHeader(json, 8 + json.size() + 8, "dup.safetensors");
  ASSERT_FALSE(header.ok());
  EXPECT_TRUE(Contains(header.status().message(), "'w' appears twice")) << header.status().message();
  EXPECT_TRUE(Contains(header.status().message(), "dup.safetensors")) << header.status().message();
}

TEST(SafetensorsTest, NonObjectsAndDeepNestingAreRefused) {
  for (const std::string& json : std::vector<std::string>{"[]", "7", "{\"a\": 1}", "{", std::string(100000, '[')}) {
    auto header = ParseSafetensorsHeader(json, 8 + json.size(), "odd");
    EXPECT_FALSE(header.ok()) << json.substr(0, 20);
  }
  auto deep = ParseSafetensorsHeader(std::string(100, '[') + std::string(100, ']'), 1000, "deep");
  ASSERT_FALSE(deep.ok());
  EXPECT_TRUE(Contains(deep.status().message(), "nested")) << deep.status().message();
}

TEST(SafetensorsTest, EmptyHeaderAndEmptyTensorsAreValid) {
  auto empty = ParseSafetensorsHeader("{}", 10, "empty");
  ASSERT_TRUE(empty.ok()) << empty.status().ToString();
  EXPECT_TRUE(empty->entries.empty());
  TempDir tmp;
  auto file = tmp / "zero.safetensors";
  ASSERT_TRUE(WriteSafetensors(file, {{"z", DType::kF32, {0, 4}, ""}, {"s", DType::kF32, {}, "abcd"}}).ok());
  auto header = ReadSafetensorsHeader(file);
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  ASSERT_EQ(header->entries.size(), 2u);
}

TEST(SafetensorsWriterTest, RefusesWrongSizesAndDuplicates) {
  TempDir tmp;
  auto file = tmp / "w.safetensors";
  Status st = WriteSafetensors(file, {{"a", DType::kF32, {2}, "1234567"}});
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(Contains(st.message(), "needs 8")) << st.message();
  EXPECT_FALSE(std::filesystem::exists(file));
  EXPECT_FALSE(std::filesystem::exists(tmp / "w.safetensors.partial"));
  st = WriteSafetensors(file, {{"a", DType::kU8, {1}, "x"}, {"a", DType::kU8, {1}, "y"}});
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(Contains(st.message(), "given twice")) << st.message();
}

TEST(SafetensorsWriterTest, StreamsAndCleansUpWhenAbandoned) {
  TempDir tmp;
  auto file = tmp / "s.safetensors";
  {
    auto writer = SafetensorsFileWriter::Create(file, {{"a", DType::kU8, {3}}, {"b", DType::kI32, {2}}});
    ASSERT_TRUE(writer.ok()) << writer.status().ToString();
    ASSERT_TRUE((*writer)->Append("abc").ok());
    EXPECT_FALSE((*writer)->Finish().ok());  // b not written yet
  }
  EXPECT_FALSE(std::filesystem::exists(file));
  EXPECT_FALSE(std::filesystem::exists(tmp / "s.safetensors.partial"));

  auto writer = SafetensorsFileWriter::Create(file, {{"a", DType::kU8, {3}}, {"b", DType::kI32, {2}}});
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->Append("abc").ok());
  ASSERT_TRUE((*writer)->Append("01234567").ok());
  EXPECT_FALSE((*writer)->Append("x").ok());
  ASSERT_TRUE((*writer)->Finish().ok());
  EXPECT_EQ((*writer)->data_bytes(), 11u);
  auto header = ReadSafetensorsHeader(file);
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  EXPECT_EQ(header->entries[1].info.name, "b");
}

TEST(SafetensorsIndexTest, RefusesDuplicatesAndPathsOutsideTheFolder) {
  TempDir tmp;
  auto index = tmp / "model.safetensors.index.json";
  WriteAll(index, R"({"weight_map": {"a": "s1.safetensors", "a": "s2.safetensors"}})");
  auto parsed = ReadSafetensorsIndex(index);
  ASSERT_FALSE(parsed.ok());
  EXPECT_TRUE(Contains(parsed.status().message(), "'a' appears twice")) << parsed.status().message();
  WriteAll(index, R"({"weight_map": {"a": "../../etc/passwd"}})");
  parsed = ReadSafetensorsIndex(index);
  ASSERT_FALSE(parsed.ok());
  EXPECT_TRUE(Contains(parsed.status().message(), "not a plain file name")) << parsed.status().message();
  WriteAll(index, R"({"metadata": {"total_size": 12}, "weight_map": {"a": "s1", "b": "s2", "c": "s1"}})");
  parsed = ReadSafetensorsIndex(index);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->total_size, 12u);
  EXPECT_EQ(parsed->Shards(), (std::vector<std::string>{"s1", "s2"}));
}

// The fuzzer's seed corpus doubles as regression tests: every file must parse without
// crashing; ok_* seeds must be accepted and bad_* seeds refused.
TEST(SafetensorsFuzzCorpusTest, ReplaysSeedCorpus) {
  const auto dir = xcpipe::testing::SourceDir() / "common" / "checkpoint" / "fuzz" / "corpus";
  ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir;
  size_t files = 0, ok_seeds = 0, bad_seeds = 0;
  for (const auto& item : std::filesystem::directory_iterator(dir)) {
    const std::string name = item.path().filename().string();
    const std::string bytes = ReadAll(item.path());
    ++files;
    auto whole = ParseSafetensorsFile(bytes, name);
    // The header-only entry point sees the same bytes after the length prefix.
    if (bytes.size() >= 8) {
      uint64_t n = 0;
      for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
      if (n <= bytes.size() - 8) {
        auto direct = ParseSafetensorsHeader(std::string_view(bytes).substr(8, n), bytes.size(), name);
        EXPECT_EQ(direct.ok(), whole.ok()) << name;
      }
    }
    if (name.rfind("ok_", 0) == 0) {
      ++ok_seeds;
      EXPECT_TRUE(whole.ok()) << name << ": " << whole.status().ToString();
    } else if (name.rfind("bad_", 0) == 0) {
      ++bad_seeds;
      EXPECT_FALSE(whole.ok()) << name;
      if (!whole.ok()) {
        EXPECT_TRUE(Contains(whole.status().message(), name)) << whole.status().message();
      }
    }
  }
  EXPECT_GE(files, 10u);
  EXPECT_GE(ok_seeds, 2u);
  EXPECT_GE(bad_seeds, 6u);
}

}  // namespace
}  // namespace xcpipe::checkpoint
