// Where a stage's tensors live and which kernels it runs. Built twice: into the model test
// binary (label unit) for the CPU, and into model_gpu (label gpu, XCPIPE_TEST_CUDA) for
// cuda:0, where every case skips with the reason when this libtorch or this host has no GPU.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "xcpipe/model/fixture_check.h"
#include "xcpipe/model/stage_model.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::model {
namespace {

namespace fs = std::filesystem;

#ifdef XCPIPE_TEST_CUDA
constexpr const char* kDevice = "cuda:0";
#else
constexpr const char* kDevice = "cpu";
#endif

// Skips the test unless this build can compute on kDevice.
#define XCPIPE_NEED_DEVICE()                                                                       \
  do {                                                                                             \
    Status usable = CheckComputeDevice(kDevice, ComputeDType::kF32);                               \
    if (!usable.ok()) GTEST_SKIP() << "cannot compute on " << kDevice << ": " << usable.message(); \
  } while (false)

struct Case {
  std::string folder;
  ComputeDType dtype;
  KernelPath kernels;
};

std::string Name(const ::testing::TestParamInfo<Case>& info) {
  return info.param.folder + "_" + ComputeDTypeName(info.param.dtype) +
         (info.param.kernels == KernelPath::kGeneric ? "_generic" : "_cpufast");
}

class DevicePlacementTest : public ::testing::TestWithParam<Case> {};

// Every tensor the stage holds (weights, tensors built at load, KV cache, RoPE table) is on
// the configured device, floating ones in the compute dtype (the RoPE frequencies are float32
// by design); a step's outputs stay on the device; the kernel path is the one asked for.
TEST_P(DevicePlacementTest, EveryTensorOnTheStageDeviceInItsDtype) {
  XCPIPE_NEED_DEVICE();
  const Case& c = GetParam();
  const fs::path dir = testing::FixturesDir() / c.folder / "checkpoint";
  if (!fs::exists(dir)) GTEST_SKIP() << "fixtures not found at " << dir;
  auto described = checkpoint::DescribeCheckpoint(dir);
  ASSERT_TRUE(described.ok()) << described.status().ToString();
  auto spec = described->spec;
  spec.vision.heads = std::max<int64_t>(spec.vision.heads, 1);
  StageOptions options;
  options.device = kDevice;
  options.dtype = c.dtype;
  options.kernels = c.kernels;
  // Two stages: the first holds vision, the embedding and a layer; the second the rest.
  const size_t cut = 3;
  auto first = StageModel::Load(dir, spec, {0, cut}, options);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  auto second = StageModel::Load(dir, spec, {cut, spec.blocks.size()}, options);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ((*first)->cpu_fast_paths(), std::string(kDevice) == "cpu" && c.kernels == KernelPath::kCpuFast);
  const at::Device device(kDevice);
  const at::ScalarType dtype = c.dtype == ComputeDType::kF32    ? at::kFloat
                               : c.dtype == ComputeDType::kBF16 ? at::kBFloat16
                                                                : at::kHalf;
  const int64_t T = 6;
  for (auto* m : {first->get(), second->get()}) ASSERT_TRUE(m->ReserveSequence(7, T + 1).ok());
  size_t seen = 0;
  for (auto* m : {first->get(), second->get()}) {
    m->ForEachHeldTensor([&](const std::string& name, const at::Tensor& t) {
      ++seen;
      EXPECT_EQ(t.device(), device) << name;
      if (!at::isFloatingType(t.scalar_type())) return;
      if (name == "rope/inv_freq") {
        EXPECT_EQ(t.scalar_type(), at::kFloat) << name;
      } else {
        EXPECT_EQ(t.scalar_type(), dtype) << name;
      }
    });
  }
  EXPECT_GT(seen, 20u);
  // A step: token ids given on the host are moved to the device; outputs stay there.
  StepInput in;
  in.segments = {{7, T, 0}};
  in.token_ids = at::arange(1, T + 1, at::kLong);
  in.im_mask = at::zeros({T}, at::kBool);
  auto a = (*first)->Forward(in);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->hidden.device(), device);
  EXPECT_EQ(a->hidden.scalar_type(), dtype);
  StepInput next;
  next.segments = in.segments;
  next.hidden = a->hidden;
  next.im_mask = in.im_mask;
  auto b = (*second)->Forward(next);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->logits.device(), device);
  EXPECT_EQ(b->logits.scalar_type(), at::kFloat);
  EXPECT_EQ(b->logits.size(0), 1);
  // The KV cache of the sequence stepped is on the device too.
  size_t kv = 0;
  (*second)->ForEachHeldTensor([&](const std::string& name, const at::Tensor& t) {
    if (name.rfind("kv/7/", 0) == 0) {
      ++kv;
      EXPECT_EQ(t.device(), device) << name;
    }
  });
  EXPECT_EQ(kv, 2u);
}

std::vector<Case> Cases() {
  std::vector<Case> out;
  for (const char* folder : {"ixc2_vl", "ixc1"}) {
    for (ComputeDType dtype : {ComputeDType::kF32, ComputeDType::kBF16}) {
      out.push_back({folder, dtype, KernelPath::kGeneric});
#ifndef XCPIPE_TEST_CUDA
      out.push_back({folder, dtype, KernelPath::kCpuFast});
#endif
    }
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Stages, DevicePlacementTest, ::testing::ValuesIn(Cases()), Name);

// The generic op sequence computes what the CPU fast paths compute: one decode row (the GEMV
// path) and a few (the AVX-512 kernel) after a prefill, logits within float32 rounding.
TEST(GenericKernelsTest, DecodeRowsAgreeWithTheCpuFastPaths) {
  XCPIPE_NEED_DEVICE();
  const fs::path dir = testing::FixturesDir() / "ixc2_vl" / "checkpoint";
  if (!fs::exists(dir)) GTEST_SKIP() << "fixtures not found at " << dir;
  auto described = checkpoint::DescribeCheckpoint(dir);
  ASSERT_TRUE(described.ok());
  const auto& spec = described->spec;
  auto logits_of = [&](KernelPath kernels, const std::string& device) {
    StageOptions o;
    o.kernels = kernels;
    o.device = device;
    auto m = std::move(StageModel::Load(dir, spec, {1, spec.blocks.size()}, o)).value();
    std::vector<at::Tensor> out;
    for (uint64_t s = 1; s <= 3; ++s) EXPECT_TRUE(m->ReserveSequence(s, 16).ok());
    StepInput prefill;
    prefill.segments = {{1, 5, 0}, {2, 4, 0}, {3, 3, 0}};
    prefill.token_ids = at::arange(10, 22, at::kLong);
    prefill.im_mask = at::zeros({12}, at::kBool);
    auto p = m->Forward(prefill);
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    out.push_back(p->logits.to(at::kCPU));
    StepInput one;  // one decode row
    one.segments = {{1, 1, 5}};
    one.token_ids = at::tensor(std::vector<int64_t>{40}, at::kLong);
    one.im_mask = at::zeros({1}, at::kBool);
    out.push_back(m->Forward(one)->logits.to(at::kCPU));
    StepInput few;  // three decode rows
    few.segments = {{1, 1, 6}, {2, 1, 4}, {3, 1, 3}};
    few.token_ids = at::tensor(std::vector<int64_t>{41, 42, 43}, at::kLong);
    few.im_mask = at::zeros({3}, at::kBool);
    out.push_back(m->Forward(few)->logits.to(at::kCPU));
    return out;
  };
  const auto fast = logits_of(KernelPath::kCpuFast, "cpu");
  const auto generic = logits_of(KernelPath::kGeneric, kDevice);
  ASSERT_EQ(fast.size(), generic.size());
  for (size_t i = 0; i < fast.size(); ++i) {
    EXPECT_TRUE(at::allclose(fast[i], generic[i], 1e-4, 1e-4))
        << "step " << i << ": max abs diff " << (fast[i] - generic[i]).abs().max().item<double>();
  }
}

// The fixture checks (every case of every version, float32 and the bf16 agreement) pass with
// the generic op sequence: what a GPU runs matches the official outputs.
class GenericFixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GenericFixtureTest, GenericOpSequenceMatchesOfficialOutputs) {
  XCPIPE_NEED_DEVICE();
  if (!fs::exists(testing::FixturesDir() / GetParam())) GTEST_SKIP() << "fixtures not found";
  FixtureCheckOptions options;
  options.only_folder = GetParam();
  options.check_bf16 = true;
  options.kernels = KernelPath::kGeneric;
  options.device = kDevice;
  auto results = RunModelFixtureChecks(testing::FixturesDir(), options);
  ASSERT_FALSE(results.empty());
  for (const auto& r : results) EXPECT_TRUE(r.passed) << r.name << ": " << r.message;
}

INSTANTIATE_TEST_SUITE_P(Versions, GenericFixtureTest, ::testing::Values("ixc2_vl", "ixc2_4khd", "ixc2d5", "ixc1"));

// What a build can compute on, and the words it refuses with.
TEST(ComputeDeviceTest, RefusalsNameWhatWasWrongAndWhatToDo) {
  EXPECT_TRUE(CheckComputeDevice("cpu", ComputeDType::kF32).ok());
  EXPECT_TRUE(CheckComputeDevice("cpu", ComputeDType::kBF16).ok());
  Status f16 = CheckComputeDevice("cpu", ComputeDType::kF16);
  EXPECT_EQ(f16.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(f16.message().find("use bf16"), std::string::npos) << f16.message();
  Status bad = CheckComputeDevice("gpu0", ComputeDType::kF32);
  EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("expected cpu or cuda:K"), std::string::npos) << bad.message();
  Status cuda = CheckComputeDevice("cuda:0", ComputeDType::kBF16);
  if (!LibtorchHasCuda()) {
    EXPECT_EQ(cuda.code(), StatusCode::kUnimplemented);
    EXPECT_NE(cuda.message().find("CMAKE_PREFIX_PATH"), std::string::npos) << cuda.message();
    EXPECT_EQ(LibtorchCudaDevices(), 0);
  }
  EXPECT_EQ(DefaultComputeDType("cpu", checkpoint::DType::kBF16), ComputeDType::kF32);
  EXPECT_EQ(DefaultComputeDType("cuda:0", checkpoint::DType::kBF16), ComputeDType::kBF16);
  EXPECT_EQ(DefaultComputeDType("cuda:1", checkpoint::DType::kF16), ComputeDType::kF16);
  EXPECT_EQ(DefaultComputeDType("cuda:0", checkpoint::DType::kF32), ComputeDType::kBF16);
  EXPECT_EQ(ParseComputeDType("fp64").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseComputeDType("f16"), ComputeDType::kF16);
}

// A stage refuses to load where it cannot compute, before reading any weight.
TEST(ComputeDeviceTest, LoadRefusesADeviceThisBuildCannotUse) {
  const fs::path dir = testing::FixturesDir() / "ixc2_vl" / "checkpoint";
  if (!fs::exists(dir)) GTEST_SKIP() << "fixtures not found at " << dir;
  auto described = checkpoint::DescribeCheckpoint(dir);
  ASSERT_TRUE(described.ok());
  StageOptions o;
  o.dtype = ComputeDType::kF16;
  auto half = StageModel::Load(dir, described->spec, {2, 3}, o);
  ASSERT_FALSE(half.ok());
  EXPECT_EQ(half.status().code(), StatusCode::kInvalidArgument);
  if (!LibtorchHasCuda()) {
    o.dtype = ComputeDType::kBF16;
    o.device = "cuda:0";
    auto gpu = StageModel::Load(dir, described->spec, {2, 3}, o);
    ASSERT_FALSE(gpu.ok());
    EXPECT_EQ(gpu.status().code(), StatusCode::kUnimplemented);
  }
}

}  // namespace
}  // namespace xcpipe::model
