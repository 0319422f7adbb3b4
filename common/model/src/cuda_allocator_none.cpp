// ReadCudaAllocator in a build whose libtorch has no CUDA: there is no caching allocator to
// ask (see compute.h; the CUDA version is cuda_allocator.cpp).
#include "xcpipe/model/compute.h"

namespace xcpipe::model {

std::optional<AllocatorReading> ReadCudaAllocator(const std::string&) { return std::nullopt; }

}  // namespace xcpipe::model
