#include "xcpipe/cuda/nccl.h"

#include <nccl.h>

#include <cstring>

namespace xcpipe::cuda {

StatusOr<std::string> NcclVersionString() {
  int version = 0;
  ncclResult_t r = ncclGetVersion(&version);
  if (r != ncclSuccess) return UnavailableError(std::string("ncclGetVersion: ") + ncclGetErrorString(r));
  // NCCL >= 2.9 encodes major*10000 + minor*100 + patch.
  return std::to_string(version / 10000) + "." + std::to_string(version / 100 % 100) + "." +
         std::to_string(version % 100);
}

StatusOr<NcclUniqueIdBytes> CreateNcclUniqueId() {
  static_assert(sizeof(ncclUniqueId) == kNcclUniqueIdBytes);
  ncclUniqueId id;
  ncclResult_t r = ncclGetUniqueId(&id);
  if (r != ncclSuccess) return UnavailableError(std::string("ncclGetUniqueId: ") + ncclGetErrorString(r));
  NcclUniqueIdBytes out;
  std::memcpy(out.data(), &id, out.size());
  return out;
}

}  // namespace xcpipe::cuda
