#include "xcpipe/transport/buffer_pool.h"

#include <gtest/gtest.h>

namespace xcpipe::transport {
namespace {

TEST(HostBufferPoolTest, BlocksAreAlignedAndLargeEnough) {
  HostBufferPool pool(size_t{64} << 20);
  auto block = pool.Acquire(1000);
  ASSERT_TRUE(block.ok()) << block.status().ToString();
  EXPECT_GE((*block)->capacity(), 1000u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>((*block)->data()) % HostBufferPool::kAlignment, 0u);
}

TEST(HostBufferPoolTest, ReturnedBlocksAreReused) {
  HostBufferPool pool(size_t{64} << 20);
  const std::byte* first = nullptr;
  for (int i = 0; i < 10; ++i) {
    auto block = pool.Acquire(size_t{1} << 20);
    ASSERT_TRUE(block.ok());
    if (i == 0) first = (*block)->data();
    EXPECT_EQ((*block)->data(), first) << "iteration " << i;
  }
  EXPECT_EQ(pool.allocations(), 1u);
  EXPECT_EQ(pool.cached_blocks(), 1u);
}

TEST(HostBufferPoolTest, SmallestFittingBlockIsChosen) {
  HostBufferPool pool(size_t{64} << 20);
  {
    auto big = pool.Acquire(size_t{4} << 20);
    auto little = pool.Acquire(size_t{1} << 20);
    ASSERT_TRUE(big.ok() && little.ok());
  }
  EXPECT_EQ(pool.allocations(), 2u);
  EXPECT_EQ(pool.cached_blocks(), 2u);
  auto small = pool.Acquire(1000);
  ASSERT_TRUE(small.ok());
  EXPECT_EQ((*small)->capacity(), size_t{1} << 20);
  auto large = pool.Acquire(size_t{3} << 20);
  ASSERT_TRUE(large.ok());
  EXPECT_EQ((*large)->capacity(), size_t{4} << 20);
  EXPECT_EQ(pool.allocations(), 2u);
}

TEST(HostBufferPoolTest, ReserveLeavesResidentBlocksInTheCache) {
  HostBufferPool pool(size_t{64} << 20);
  ASSERT_TRUE(pool.Reserve(size_t{2} << 20, 2).ok());
  EXPECT_EQ(pool.allocations(), 2u);
  EXPECT_EQ(pool.cached_blocks(), 2u);
  auto a = pool.Acquire(size_t{2} << 20);
  auto b = pool.Acquire(size_t{1} << 20);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(pool.allocations(), 2u);  // both served from the reserve
}

TEST(HostBufferPoolTest, CacheIsBounded) {
  HostBufferPool pool(size_t{1} << 20);
  {
    auto a = pool.Acquire(size_t{1} << 20);
    auto b = pool.Acquire(size_t{1} << 20);
    ASSERT_TRUE(a.ok() && b.ok());
  }
  EXPECT_EQ(pool.cached_blocks(), 1u);
  EXPECT_LE(pool.cached_bytes(), size_t{1} << 20);
}

TEST(HostBufferPoolTest, BlockMayOutliveItsPool) {
  std::shared_ptr<HostBuffer> kept;
  {
    HostBufferPool pool(size_t{1} << 20);
    auto block = pool.Acquire(4096);
    ASSERT_TRUE(block.ok());
    kept = *block;
  }
  kept->data()[0] = std::byte{1};
  kept.reset();  // freed, not returned to a dead pool (ASan builds check this)
}

}  // namespace
}  // namespace xcpipe::transport
