// libFuzzer entry for the cluster-file parser: any bytes must give a cluster or an error,
// never a crash, a hang or an exception.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "xcpipe/planner/cluster.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto cluster =
      xcpipe::planner::ParseClusterToml(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.toml");
  if (cluster.ok()) (void)xcpipe::planner::ValidateCluster(*cluster);
  return 0;
}
