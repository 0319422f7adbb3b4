// GPU tests: skip (not fail) where no CUDA device is visible.
#include <gtest/gtest.h>

#include "xcpipe/cuda/device.h"
#include "xcpipe/cuda/nccl.h"

namespace xcpipe::cuda {
namespace {

TEST(CudaTest, NcclLibraryLoadsAndReportsVersion) {
  auto version = NcclVersionString();
  ASSERT_TRUE(version.ok()) << version.status().ToString();
  EXPECT_EQ(version->front(), '2') << *version;
}

TEST(CudaTest, ProbeNeverCrashesAndExplainsAbsence) {
  auto devices = ProbeCudaDevices();
  if (!devices.ok()) {
    EXPECT_EQ(devices.status().code(), StatusCode::kUnavailable);
    EXPECT_NE(devices.status().message().find("CUDA"), std::string::npos);
    GTEST_SKIP() << "no CUDA device: " << devices.status().ToString();
  }
  ASSERT_FALSE(devices->empty());
  EXPECT_GT(devices->front().total_bytes, 0u);
}

TEST(CudaTest, KernelRunsOnDevice) {
  auto devices = ProbeCudaDevices();
  if (!devices.ok()) GTEST_SKIP() << "no CUDA device: " << devices.status().ToString();
  auto out = RunFillKernel(0, 1000, 0.5f);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ASSERT_EQ(out->size(), 1000u);
  EXPECT_FLOAT_EQ((*out)[999], 499.5f);
}

TEST(CudaTest, DeviceMemoryQueryMatchesProbeOrExplainsAbsence) {
  auto memory = QueryDeviceMemory(0);
  auto devices = ProbeCudaDevices();
  if (!devices.ok()) {
    ASSERT_FALSE(memory.ok());
    EXPECT_EQ(memory.status().code(), StatusCode::kUnavailable);
    GTEST_SKIP() << "no CUDA device: " << devices.status().ToString();
  }
  ASSERT_TRUE(memory.ok()) << memory.status().ToString();
  EXPECT_EQ(memory->total_bytes, devices->front().total_bytes);
  EXPECT_GT(memory->free_bytes, 0u);
  EXPECT_LE(memory->free_bytes, memory->total_bytes);
}

}  // namespace
}  // namespace xcpipe::cuda
