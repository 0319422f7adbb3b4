#include "xcpipe/worker/device_probe.h"

#include <gtest/gtest.h>

#include "xcpipe/base/exit_codes.h"

namespace xcpipe::worker {
namespace {

TEST(DeviceProbeTest, CpuRequestedIsCpu) {
  auto c = ChooseDevice("cpu", false, -1);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->device, "cpu");
  EXPECT_GT(c->total_bytes, 0u);
  EXPECT_FALSE(c->reason.empty());
}

TEST(DeviceProbeTest, MalformedDeviceIsRefusedWithExpectation) {
  for (const char* bad : {"gpu0", "cuda:", "cuda:x", "cuda:-1", "cuda:1x"}) {
    auto c = ChooseDevice(bad, false, 1);
    ASSERT_FALSE(c.ok()) << bad;
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(c.status().message().find("expected auto, cpu or cuda:N"), std::string::npos);
  }
}

TEST(DeviceProbeTest, AutoFallsBackToCpuWithAReason) {
  auto c = ChooseDevice("auto", false, 1);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  if (c->device == "cpu") {
    EXPECT_NE(c->reason.find("CPU path"), std::string::npos) << c->reason;
  } else {
    EXPECT_EQ(c->device.rfind("cuda:", 0), 0u);
  }
}

TEST(DeviceProbeTest, RequiredGpuIsUnavailableWithoutOne) {
  auto c = ChooseDevice("cuda:0", true, 1);
  if (c.ok()) GTEST_SKIP() << "a CUDA device is present: " << c->device_name;
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable);
}

// A libtorch without CUDA: an explicit GPU is "not in this build" (exit 7) with the way to
// build one; auto computes on the CPU and says why; the host's GPUs do not matter.
TEST(DeviceProbeTest, CpuOnlyLibtorchRefusesAGpuAndAutoSaysWhy) {
  auto c = ChooseDevice("cuda:0", false, -1);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(ExitCodeFor(c.status()), kExitNotImplemented);
  EXPECT_NE(c.status().message().find("libtorch built without CUDA"), std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find("CMAKE_PREFIX_PATH"), std::string::npos) << c.status().message();
  auto a = ChooseDevice("auto", false, -1);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->device, "cpu");
  EXPECT_NE(a->reason.find("libtorch built without CUDA"), std::string::npos) << a->reason;
  EXPECT_EQ(ChooseDevice("auto", true, -1).status().code(), StatusCode::kUnavailable);
}

// An explicit device the host does not have is an error, never a quiet CPU fallback.
TEST(DeviceProbeTest, MissingExplicitGpuIsUnavailable) {
  auto c = ChooseDevice("cuda:7", false, 1);
  if (c.ok()) GTEST_SKIP() << "this host has cuda:7";
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable) << c.status().ToString();
}

}  // namespace
}  // namespace xcpipe::worker
