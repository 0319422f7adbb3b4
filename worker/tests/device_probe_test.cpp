#include "xcpipe/worker/device_probe.h"

#include <gtest/gtest.h>

namespace xcpipe::worker {
namespace {

TEST(DeviceProbeTest, CpuRequestedIsCpu) {
  auto c = ChooseDevice("cpu", false);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->device, "cpu");
  EXPECT_GT(c->total_bytes, 0u);
  EXPECT_FALSE(c->reason.empty());
}

TEST(DeviceProbeTest, MalformedDeviceIsRefusedWithExpectation) {
  for (const char* bad : {"gpu0", "cuda:", "cuda:x", "cuda:-1", "cuda:1x"}) {
    auto c = ChooseDevice(bad, false);
    ASSERT_FALSE(c.ok()) << bad;
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(c.status().message().find("expected auto, cpu or cuda:N"), std::string::npos);
  }
}

TEST(DeviceProbeTest, AutoFallsBackToCpuWithAReason) {
  auto c = ChooseDevice("auto", false);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  if (c->device == "cpu") {
    EXPECT_NE(c->reason.find("CPU path"), std::string::npos) << c->reason;
  } else {
    EXPECT_EQ(c->device.rfind("cuda:", 0), 0u);
  }
}

TEST(DeviceProbeTest, RequiredGpuIsUnavailableWithoutOne) {
  auto c = ChooseDevice("cuda:0", true);
  if (c.ok()) GTEST_SKIP() << "a CUDA device is present: " << c->device_name;
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace xcpipe::worker
