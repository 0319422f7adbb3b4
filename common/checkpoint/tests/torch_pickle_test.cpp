// The state_dict pickle reader on hand-built pickles: what torch.save emits, and what it must
// refuse.
#include "xcpipe/checkpoint/torch_pickle.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>

#include "xcpipe/testing/paths.h"

namespace xcpipe::checkpoint {
namespace {

using namespace std::string_literals;  // "..."s keeps embedded NUL bytes

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// A tiny pickle assembler for protocol-2 opcodes.
class Pickle {
 public:
  Pickle() { bytes_ += "\x80\x02"; }
  Pickle& Op(char op) {
    bytes_ += op;
    return *this;
  }
  Pickle& Global(const std::string& module, const std::string& name) {
    bytes_ += 'c' + module + '\n' + name + '\n';
    return *this;
  }
  Pickle& Str(const std::string& s) {
    bytes_ += 'X';
    for (int i = 0; i < 4; ++i) bytes_ += static_cast<char>((s.size() >> (8 * i)) & 0xff);
    bytes_ += s;
    return *this;
  }
  Pickle& Int(int v) {
    if (v >= 0 && v < 256) {
      bytes_ += 'K';
      bytes_ += static_cast<char>(v);
    } else {
      bytes_ += 'J';
      for (int i = 0; i < 4; ++i) bytes_ += static_cast<char>((static_cast<uint32_t>(v) >> (8 * i)) & 0xff);
    }
    return *this;
  }
  Pickle& Mark() { return Op('('); }
  Pickle& Tuple() { return Op('t'); }
  // _rebuild_tensor_v2(('storage', torch.<type>, key, 'cpu', numel), offset, size, stride, False, OrderedDict())
  Pickle& Tensor(const std::string& storage_type, const std::string& key, int numel, int offset, std::vector<int> size,
                 std::vector<int> stride) {
    Global("torch._utils", "_rebuild_tensor_v2").Mark();
    Mark().Str("storage").Global("torch", storage_type).Str(key).Str("cpu").Int(numel).Tuple().Op('Q');
    Int(offset);
    Mark();
    for (int s : size) Int(s);
    Tuple();
    Mark();
    for (int s : stride) Int(s);
    Tuple();
    Op('\x89');  // NEWFALSE
    Global("collections", "OrderedDict").Op(')').Op('R');
    return Tuple().Op('R');
  }
  std::string Stop() { return bytes_ + '.'; }
  std::string bytes_;
};

TEST(TorchPickleTest, ReadsAnOrderedDictOfTensors) {
  Pickle p;
  p.Global("collections", "OrderedDict").Op(')').Op('R').Op('q').Op('\x00').Mark();
  p.Str("a.weight").Tensor("FloatStorage", "0", 6, 0, {2, 3}, {3, 1});
  p.Str("b.bias").Tensor("BFloat16Storage", "1", 8, 2, {3}, {2});
  p.Str("c.t").Tensor("LongStorage", "2", 6, 0, {3, 2}, {1, 3});
  p.Op('u');
  auto tensors = ParseTorchStateDictPickle(p.Stop(), "x.bin");
  ASSERT_TRUE(tensors.ok()) << tensors.status().ToString();
  ASSERT_EQ(tensors->size(), 3u);
  const auto& a = (*tensors)[0];
  EXPECT_EQ(a.name, "a.weight");
  EXPECT_EQ(a.dtype, DType::kF32);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_TRUE(a.contiguous());
  EXPECT_EQ(a.storage_key, "0");
  EXPECT_EQ(a.bytes(), 24u);
  const auto& b = (*tensors)[1];
  EXPECT_EQ(b.dtype, DType::kBF16);
  EXPECT_EQ(b.storage_offset, 2);
  EXPECT_FALSE(b.contiguous());
  EXPECT_FALSE((*tensors)[2].contiguous());
  EXPECT_EQ((*tensors)[2].dtype, DType::kI64);
}

TEST(TorchPickleTest, ReadsAPlainDict) {
  Pickle p;
  p.Op('}').Str("w").Tensor("HalfStorage", "0", 1, 0, {}, {}).Op('s');
  auto tensors = ParseTorchStateDictPickle(p.Stop(), "x.bin");
  ASSERT_TRUE(tensors.ok()) << tensors.status().ToString();
  ASSERT_EQ(tensors->size(), 1u);
  EXPECT_TRUE((*tensors)[0].shape.empty());
  EXPECT_EQ((*tensors)[0].numel(), 1);
}

TEST(TorchPickleTest, RefusesUnexpectedGlobalsWithoutCallingThem) {
  for (const auto& [module, name] : std::vector<std::pair<std::string, std::string>>{{"os", "system"},
                                                                                     {"posix", "system"},
                                                                                     {"builtins", "eval"},
                                                                                     {"subprocess", "Popen"},
                                                                                     {"torch", "load"},
                                                                                     {"collections", "defaultdict"}}) {
    Pickle p;
    p.Op('}').Str("payload").Global(module, name).Mark().Str("touch /tmp/pwned").Tuple().Op('R').Op('s');
    auto tensors = ParseTorchStateDictPickle(p.Stop(), "evil.bin");
    ASSERT_FALSE(tensors.ok()) << module << "." << name;
    const auto& m = tensors.status().message();
    EXPECT_EQ(tensors.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(Contains(m, "refusing pickle GLOBAL '" + module + "." + name + "'")) << m;
    EXPECT_TRUE(Contains(m, "evil.bin")) << m;
  }
  // STACK_GLOBAL (protocol 4) is checked the same way.
  Pickle p;
  p.Op('}').Str("payload").Str("os").Str("system").Op('\x93');
  auto tensors = ParseTorchStateDictPickle(p.Stop(), "evil.bin");
  ASSERT_FALSE(tensors.ok());
  EXPECT_TRUE(Contains(tensors.status().message(), "'os.system'")) << tensors.status().message();
}

TEST(TorchPickleTest, RefusesMalformedPickles) {
  struct Case {
    std::string bytes, expect;
  };
  auto dict_with = [](const std::function<void(Pickle&)>& value) {
    Pickle p;
    p.Op('}').Str("w");
    value(p);
    p.Op('s');
    return p.Stop();
  };
  const std::vector<Case> cases = {
      {"\x80\x02}"s, "ends without STOP"},
      {"\x80\x02}X\xff\xff\xff\x00"s, "past the end"},
      {"\x80\x02}(X\x01\x00\x00\x00w\x8a\x09\x01\x02\x03\x04\x05\x06\x07\x08\x09u."s, "too large"},
      {"\x80\x02i"s, "opcode 0x69"},
      {"\x80\x02s."s, "stack underflow"},
      {"\x80\x02h\x05."s, "never stored"},
      {"\x80\x02K\x01."s, "not a dict of tensors"},
      {dict_with([](Pickle& p) { p.Int(3); }), "'w' is an int, not a tensor"},
      {dict_with([](Pickle& p) {
         p.Tensor("FloatStorage", "0", 4, 2, {2, 2}, {2, 1});
       }),
       "reaches past its storage"},
      {dict_with([](Pickle& p) { p.Tensor("FloatStorage", "../x", 4, 0, {4}, {1}); }), "bad storage key"},
      {dict_with([](Pickle& p) {
         p.Tensor("FloatStorage", "0", 4, 0, {4}, {1, 1});
       }),
       "differ in length"},
  };
  for (const auto& c : cases) {
    auto tensors = ParseTorchStateDictPickle(c.bytes, "bad.bin");
    ASSERT_FALSE(tensors.ok()) << c.expect;
    EXPECT_TRUE(Contains(tensors.status().message(), c.expect)) << c.expect << " -> " << tensors.status().message();
  }
  // The same name twice.
  Pickle twice;
  twice.Op('}').Mark().Str("w").Tensor("FloatStorage", "0", 1, 0, {1}, {1});
  twice.Str("w").Tensor("FloatStorage", "1", 1, 0, {1}, {1}).Op('u');
  auto tensors = ParseTorchStateDictPickle(twice.Stop(), "dup.bin");
  ASSERT_FALSE(tensors.ok());
  EXPECT_TRUE(Contains(tensors.status().message(), "'w' appears twice")) << tensors.status().message();
}

TEST(TorchPickleTest, ObjectCountIsBounded) {
  // A million empty tuples and no STOP: refused by the object cap, not by running out of memory.
  std::string bytes = "\x80\x02";
  bytes += std::string(kMaxTorchPickleObjects + 10, ')');
  auto tensors = ParseTorchStateDictPickle(bytes + ".", "many.bin");
  ASSERT_FALSE(tensors.ok());
  EXPECT_TRUE(Contains(tensors.status().message(), "objects")) << tensors.status().message();
}

// The pickle fuzzer's seed corpus (data.pkl files torch.save-format shards hold) as
// regression tests.
TEST(TorchPickleTest, ReplaysSeedCorpus) {
  const auto dir = xcpipe::testing::SourceDir() / "common" / "checkpoint" / "fuzz" / "pickle_corpus";
  ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir;
  auto read = [&](const std::string& name) {
    std::ifstream in(dir / name, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  auto a = ParseTorchStateDictPickle(read("ordered_dict_with_metadata.pkl"), "a");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->size(), 4u);
  auto b = ParseTorchStateDictPickle(read("parameter_strided_and_empty.pkl"), "b");
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  ASSERT_EQ(b->size(), 4u);
  EXPECT_EQ((*b)[2].name, "model.norm.weight");  // a Parameter is read as its tensor
  auto evil = ParseTorchStateDictPickle(read("os_system_payload.pkl"), "c");
  ASSERT_FALSE(evil.ok());
  EXPECT_TRUE(Contains(evil.status().message(), "'posix.system'")) << evil.status().message();
  size_t files = 0;
  for (const auto& item : std::filesystem::directory_iterator(dir)) {
    ++files;
    (void)ParseTorchStateDictPickle(read(item.path().filename().string()), "corpus");  // must not crash
  }
  EXPECT_GE(files, 3u);
}

}  // namespace
}  // namespace xcpipe::checkpoint
