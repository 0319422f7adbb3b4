// Checks of this module against the golden fixtures of the official code, for tests and for
// `xcpipe check-fixtures`.
//
// A model folder is any directory under the fixtures root holding checkpoint/ and at least one
// cases/<case>/manifest.json. For every case with an input image (image.png, image0.png, ...;
// hd_image.png is an expected output, not an input) the image is decoded and preprocessed the
// way DetectModelImageSpec says the checkpoint needs, and compared with what the case holds:
//   - pixel_values.npy (fixed-size versions), within the manifest's tolerance (atol);
//   - hd_image.png (HD versions): the HD transform must equal it pixel for pixel;
//   - manifest values.pixel_values_checksum and values.clip_input_images_checksums (HD):
//     shape exact, mean / abs_mean / std and the first/last 8 values within 1e-6 relative.
// The HD tile budget is read from manifest values.hd_num (else the version's chat() default).
// A case with an image but nothing to compare against passes with a message saying so.
//
// Thread-safe (reads files only). Never fails as a whole: a folder whose checkpoint cannot be
// understood gives one failed entry naming the folder and the reason.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "xcpipe/base/status.h"
#include "xcpipe/image/model_image_spec.h"

namespace xcpipe::image {

struct ImageFixtureCheck {
  std::string case_name;        // "<model folder>/<case>", e.g. "ixc2_vl/image_chat"
  bool passed = false;
  std::string message;          // what was compared and the largest error, or what failed
  double max_abs_error = 0.0;   // largest |ours - reference| over every compared value
};

std::vector<ImageFixtureCheck> RunImageFixtureChecks(const std::filesystem::path& fixtures_root);

// One case of one model folder (exposed for tests).
ImageFixtureCheck CheckImageFixtureCase(const std::filesystem::path& case_dir, const ModelImageSpec& spec,
                                        const std::string& case_name);

// The summary statistics the fixture manifests store for large tensors.
struct TensorChecksum {
  std::vector<int64_t> shape;
  double mean = 0.0;      // over all elements, accumulated in double
  double abs_mean = 0.0;
  double std = 0.0;       // population standard deviation (ddof = 0)
  std::vector<double> first8;
  std::vector<double> last8;
};
TensorChecksum ComputeTensorChecksum(std::span<const float> values, std::vector<int64_t> shape);

// Compares `ours` with a manifest checksum object {shape, mean, abs_mean, std, first8, last8}:
// shape exactly, every number within rtol * |expected| + atol. InvalidArgument names the
// first field that differs; `max_abs_error` (if given) receives the largest difference seen.
Status CompareTensorChecksum(const TensorChecksum& ours, const nlohmann::json& expected, double rtol, double atol,
                             double* max_abs_error = nullptr);

}  // namespace xcpipe::image
