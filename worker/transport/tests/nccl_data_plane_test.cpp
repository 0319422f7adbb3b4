// NCCL data plane tests (label gpu). They skip, never fail, where no CUDA device is visible;
// the two-rank test needs two devices (two ranks of one communicator cannot share a GPU).
#include "xcpipe/transport/nccl_data_plane.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <future>

#include "test_messages.h"
#include "xcpipe/cuda/device.h"

namespace xcpipe::transport {
namespace {

using namespace std::chrono_literals;

int DeviceCount() {
  auto devices = cuda::ProbeCudaDevices();
  return devices.ok() ? static_cast<int>(devices->size()) : 0;
}

TEST(NcclDataPlaneTest, WithoutADeviceStartIsUnavailable) {
  if (DeviceCount() > 0) GTEST_SKIP() << "a device is present; this checks the GPU-less path";
  auto id = cuda::CreateNcclUniqueId();
  NcclLinkOptions options;
  if (id.ok()) options.unique_id = *id;
  auto link = NcclLink::Start(options);
  ASSERT_FALSE(link.ok());
  EXPECT_EQ(link.status().code(), StatusCode::kUnavailable) << link.status().ToString();
}

TEST(NcclDataPlaneTest, SelfLinkMovesBytesOnTheDevice) {
  if (DeviceCount() < 1) GTEST_SKIP() << "no CUDA device";
  auto id = cuda::CreateNcclUniqueId();
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  auto link = NcclLink::Start({.unique_id = *id, .nranks = 1, .rank = 0, .device = 0});
  ASSERT_TRUE(link.ok()) << link.status().ToString();
  ASSERT_TRUE((*link)->WaitReady(DeadlineAfter(60s)).ok());
  const size_t bytes = size_t{32} << 20;
  auto host = testing::PatternBytes(1, 0, bytes);
  void* src = nullptr;
  void* dst = nullptr;
  ASSERT_EQ(cudaMalloc(&src, bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dst, bytes), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(src, host.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
  DeviceBytes send{src, bytes};
  MutableDeviceBytes recv{dst, bytes};
  Status s = (*link)->Exchange(0, {&send, 1}, {&recv, 1}, DeadlineAfter(30s));
  ASSERT_TRUE(s.ok()) << s.ToString();
  std::vector<std::byte> back(bytes);
  ASSERT_EQ(cudaMemcpy(back.data(), dst, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, host);
  cudaFree(src);
  cudaFree(dst);
}

TEST(NcclDataPlaneTest, WatchdogAbortsWhenThePeerNeverJoins) {
  if (DeviceCount() < 1) GTEST_SKIP() << "no CUDA device";
  auto id = cuda::CreateNcclUniqueId();
  ASSERT_TRUE(id.ok());
  auto link = NcclLink::Start({.unique_id = *id, .nranks = 2, .rank = 0, .device = 0});
  ASSERT_TRUE(link.ok()) << link.status().ToString();
  auto start = Clock::now();
  Status s = (*link)->WaitReady(DeadlineAfter(2s));
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - start).count(), 20.0);
  EXPECT_EQ((*link)->state(), NcclLink::State::kAborted);
  Status again = (*link)->Exchange(1, {}, {}, DeadlineAfter(1s));
  EXPECT_EQ(again.code(), StatusCode::kAborted) << again.ToString();
}

TEST(NcclDataPlaneTest, TwoStagesOnTwoDevices) {
  if (DeviceCount() < 2) GTEST_SKIP() << "needs two CUDA devices (found " << DeviceCount() << ")";
  auto id = cuda::CreateNcclUniqueId();
  ASSERT_TRUE(id.ok());
  // Stage 1 (device 1) listens for headers; stage 0 (device 0) sends.
  auto receiving = std::async(std::launch::async, [&]() -> StatusOr<std::unique_ptr<NcclDataPlane>> {
    NcclDataPlaneOptions o;
    o.device = 1;
    o.previous = NcclPeerLink{*id, TcpEndpoint{"127.0.0.1", 47391}};
    return NcclDataPlane::Create(o, DeadlineAfter(60s));
  });
  NcclDataPlaneOptions o;
  o.device = 0;
  o.next = NcclPeerLink{*id, TcpEndpoint{"127.0.0.1", 47391}};
  auto sender = NcclDataPlane::Create(o, DeadlineAfter(60s));
  auto receiver = receiving.get();
  ASSERT_TRUE(sender.ok()) << sender.status().ToString();
  ASSERT_TRUE(receiver.ok()) << receiver.status().ToString();
  StageMessage m = testing::MakeStageMessage(3, 512, 4096);  // host tensors: staged to device 0
  auto got = std::async(std::launch::async, [&] { return (*receiver)->Receive(DeadlineAfter(30s)); });
  ASSERT_TRUE((*sender)->Send(m, DeadlineAfter(30s)).ok());
  auto message = got.get();
  ASSERT_TRUE(message.ok()) << message.status().ToString();
  ASSERT_EQ(message->tensors.size(), 3u);
  EXPECT_EQ(message->tensors[0].location(), MemoryLocation::kCudaDevice);
  std::vector<std::byte> back(m.tensors[0].byte_length());
  ASSERT_EQ(cudaMemcpy(back.data(), message->tensors[0].bytes().data(), back.size(), cudaMemcpyDeviceToHost),
            cudaSuccess);
  EXPECT_EQ(0, std::memcmp(back.data(), m.tensors[0].bytes().data(), back.size()));
}

}  // namespace
}  // namespace xcpipe::transport
