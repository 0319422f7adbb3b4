// NCCL helpers: version and unique-id handling. The point-to-point communicator used by the
// data plane builds on these (worker/transport). Thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "xcpipe/base/status.h"

namespace xcpipe::cuda {

// ncclUniqueId is 128 opaque bytes; the coordinator creates one per stage link and hands it
// to both ends over the control plane.
inline constexpr size_t kNcclUniqueIdBytes = 128;
using NcclUniqueIdBytes = std::array<uint8_t, kNcclUniqueIdBytes>;

// The NCCL library version at run time, e.g. "2.28.3".
StatusOr<std::string> NcclVersionString();

// Creates a fresh unique id (the rendezvous token for one communicator).
StatusOr<NcclUniqueIdBytes> CreateNcclUniqueId();

}  // namespace xcpipe::cuda
