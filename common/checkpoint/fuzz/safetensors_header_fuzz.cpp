// libFuzzer target for the safetensors header parser: the first bytes any worker reads from a
// checkpoint it was handed. The input is a whole file (8-byte length, header JSON, data), fed
// both through ParseSafetensorsFile and, where the length fits, straight to
// ParseSafetensorsHeader with the file's size as the bound. Each call must return OK or an
// error: never crash, hang, read out of bounds or allocate without bound. An accepted header
// must also satisfy what the mapper relies on (offsets in bounds, sorted, no overlap, sizes
// matching shapes).
//
// Build: cmake -DXCPIPE_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang ...
// Run:   build/bin/xcpipe_safetensors_header_fuzz common/checkpoint/fuzz/corpus
// The seed corpus also runs as a regression test (SafetensorsFuzzCorpusTest).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "xcpipe/checkpoint/safetensors.h"

namespace {

void CheckInvariants(const xcpipe::checkpoint::SafetensorsHeader& header, uint64_t file_bytes) {
  uint64_t furthest_end = 0;
  uint64_t previous_begin = 0;
  for (const auto& e : header.entries) {
    if (e.begin < previous_begin) std::abort();  // entries in offset order
    previous_begin = e.begin;
    if (e.end < e.begin || header.data_section_offset + e.end > file_bytes) std::abort();
    if (e.end - e.begin != e.info.bytes()) std::abort();
    if (e.end > e.begin) {
      if (e.begin < furthest_end) std::abort();  // overlap slipped through
      furthest_end = e.end;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view file(reinterpret_cast<const char*>(data), size);
  auto whole = xcpipe::checkpoint::ParseSafetensorsFile(file, "fuzz");
  if (whole.ok()) CheckInvariants(*whole, size);
  if (size >= 8) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
    if (n <= size - 8) {
      auto direct = xcpipe::checkpoint::ParseSafetensorsHeader(file.substr(8, n), size, "fuzz");
      if (direct.ok() != whole.ok()) std::abort();
      if (direct.ok()) CheckInvariants(*direct, size);
    }
  }
  return 0;
}
