// Reader for NumPy .npy files (format versions 1-3), used for golden fixtures and for tensors
// a user hands the CLI. Little-endian C-order arrays of float32, float64, int64, int32, uint8
// and bool. Every header field is validated and the payload size is checked against the
// shape before anything is read; errors name the file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "xcpipe/base/status.h"

namespace xcpipe {

struct NpyArray {
  std::string dtype;            // numpy descr without byte order: "f4", "f8", "i8", "i4", "u1", "b1"
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;   // raw little-endian payload, C order

  int64_t numel() const;
  size_t item_bytes() const;
  // Element conversions (any numeric dtype).
  std::vector<float> ToFloat() const;
  std::vector<double> ToDouble() const;
  std::vector<int64_t> ToInt64() const;
};

StatusOr<NpyArray> ParseNpy(std::string_view data, std::string_view what);
StatusOr<NpyArray> ReadNpy(const std::filesystem::path& path);

}  // namespace xcpipe
