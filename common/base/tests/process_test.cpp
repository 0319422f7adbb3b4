// Process facts read from /proc.
#include <gtest/gtest.h>
#include <unistd.h>

#include <vector>

#include "xcpipe/base/subprocess.h"

namespace xcpipe {
namespace {

TEST(PeakResidentBytes, GrowsWhenThisProcessTouchesMemoryAndIsZeroForNoProcess) {
  const uint64_t before = PeakResidentBytes(getpid());
  ASSERT_GT(before, 0u);
  std::vector<char> block(64 << 20, 1);  // 64 MiB, every page written
  const uint64_t after = PeakResidentBytes(getpid());
  EXPECT_GE(after, before + (48u << 20)) << "peak " << before << " -> " << after;
  EXPECT_EQ(block[12345], 1);
  EXPECT_EQ(PeakResidentBytes(-1), 0u);
}

}  // namespace
}  // namespace xcpipe
