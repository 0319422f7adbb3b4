// libFuzzer target for the torch.save pickle interpreter behind `xcpipe convert`: arbitrary
// data.pkl bytes must give tensors or an error, never a crash, a hang or unbounded memory, and
// an accepted tensor must lie inside its storage.
//
// Run: build/bin/xcpipe_torch_pickle_fuzz -max_len=4096 common/checkpoint/fuzz/pickle_corpus
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "xcpipe/checkpoint/torch_pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto tensors = xcpipe::checkpoint::ParseTorchStateDictPickle(
      std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
  if (!tensors.ok()) return 0;
  for (const auto& t : *tensors) {
    if (t.shape.size() != t.stride.size() || t.storage_offset < 0) std::abort();
    int64_t last = t.storage_offset;
    bool empty = false;
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (t.shape[d] == 0) empty = true;
      last += (t.shape[d] - 1) * t.stride[d];
    }
    if (!empty && last >= t.storage_numel) std::abort();
  }
  return 0;
}
