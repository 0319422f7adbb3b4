#include "xcpipe/image/fixture_checks.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <regex>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "xcpipe/base/files.h"
#include "xcpipe/base/npy.h"
#include "xcpipe/image/decode.h"
#include "xcpipe/image/preprocess.h"

namespace xcpipe::image {
namespace {

namespace fs = std::filesystem;

// Checksums in the manifests are float64 statistics of float32 tensors; ours differ only by
// float32 rounding (the bicubic global view) or not at all (pixel values).
constexpr double kChecksumRtol = 1e-6;
constexpr double kChecksumAtol = 1e-6;
// Used when a manifest gives no tolerance for pixel_values.npy.
constexpr double kDefaultPixelAtol = 1e-6;

std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// image.png, image0.png, image1.jpg, ... in batch order; hd_image.png is an output, not an input.
std::vector<fs::path> FindInputImages(const fs::path& case_dir) {
  static const std::regex kPattern(R"(image(\d*)\.(png|jpg|jpeg))", std::regex::icase);
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(case_dir, ec)) {
    std::smatch m;
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && std::regex_match(name, m, kPattern)) {
      const int64_t index = m[1].length() == 0 ? -1 : std::stoll(m[1].str());
      found.emplace_back(index, entry.path());
    }
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> out;
  for (auto& [index, path] : found) out.push_back(std::move(path));
  return out;
}

const nlohmann::json* Find(const nlohmann::json& j, std::initializer_list<const char*> keys) {
  const nlohmann::json* cur = &j;
  for (const char* key : keys) {
    if (!cur->is_object() || !cur->contains(key)) return nullptr;
    cur = &(*cur)[key];
  }
  return cur;
}

double PixelTolerance(const nlohmann::json& manifest) {
  const nlohmann::json* atol = Find(manifest, {"files", "pixel_values.npy", "tolerance", "atol"});
  return atol != nullptr && atol->is_number() ? atol->get<double>() : kDefaultPixelAtol;
}

// Compares a batch of CHW tensors with pixel_values.npy [B, C, H, W].
Status ComparePixelValuesNpy(const fs::path& npy_path, const std::vector<FloatImage>& batch, double atol,
                             double* max_abs_error, std::string* summary) {
  XCPIPE_ASSIGN_OR_RETURN(NpyArray npy, ReadNpy(npy_path));
  std::vector<int64_t> expected_shape{static_cast<int64_t>(batch.size()), batch[0].channels, batch[0].height,
                                      batch[0].width};
  if (npy.shape != expected_shape) {
    return InvalidArgumentError("pixel_values.npy has shape " + ShapeText(npy.shape) + "; ours is " +
                                ShapeText(expected_shape));
  }
  const std::vector<float> ref = npy.ToFloat();
  double worst = 0.0;
  int64_t differing = 0;
  size_t offset = 0;
  for (const FloatImage& image : batch) {
    for (float v : image.data) {
      const double d = std::fabs(static_cast<double>(v) - static_cast<double>(ref[offset++]));
      if (d > 0) ++differing;
      worst = std::max(worst, d);
    }
  }
  *max_abs_error = std::max(*max_abs_error, worst);
  *summary = "pixel_values " + ShapeText(expected_shape) +
             (differing == 0 ? " bit-exact with pixel_values.npy"
                             : " vs pixel_values.npy: max abs error " + Num(worst) + " (" +
                                   std::to_string(differing) + " values differ, tolerance " + Num(atol) + ")");
  if (worst > atol) return InvalidArgumentError(*summary);
  return OkStatus();
}

// Pixel-for-pixel comparison in 8-bit levels (kept apart from the float errors of the case).
Status CompareHdImage(const fs::path& expected_path, const RgbImage& ours, std::string* summary) {
  XCPIPE_ASSIGN_OR_RETURN(RgbImage expected, ReadImageFile(expected_path));
  if (expected.width != ours.width || expected.height != ours.height) {
    return InvalidArgumentError("HD transform gives " + std::to_string(ours.width) + "x" +
                                std::to_string(ours.height) + "; hd_image.png is " + std::to_string(expected.width) +
                                "x" + std::to_string(expected.height));
  }
  int64_t differing = 0;
  int worst = 0;
  for (size_t i = 0; i < ours.pixels.size(); ++i) {
    const int d = std::abs(int{ours.pixels[i]} - int{expected.pixels[i]});
    if (d != 0) ++differing;
    worst = std::max(worst, d);
  }
  *summary = "HD transform " + std::to_string(ours.width) + "x" + std::to_string(ours.height) +
             (differing == 0 ? " equals hd_image.png pixel for pixel"
                             : " differs from hd_image.png in " + std::to_string(differing) +
                                   " samples (max " + std::to_string(worst) + " levels)");
  if (differing != 0) return InvalidArgumentError(*summary);
  return OkStatus();
}

ImageFixtureCheck Fail(ImageFixtureCheck check, const Status& status) {
  check.passed = false;
  check.message = status.message();
  return check;
}

ImageFixtureCheck CheckFixedSizeCase(ImageFixtureCheck check, const fs::path& case_dir, const ModelImageSpec& spec,
                                     const nlohmann::json& manifest, const std::vector<RgbImage>& images) {
  std::vector<FloatImage> batch;
  for (const RgbImage& image : images) {
    StatusOr<FloatImage> tensor = PreprocessFixedSize(image, spec.input_size);
    if (!tensor.ok()) return Fail(std::move(check), tensor.status());
    batch.push_back(std::move(tensor).value());
  }
  const std::string prefix = spec.version + " fixed-size " + std::to_string(spec.input_size) + " px, " +
                             std::to_string(images.size()) + " image(s): ";
  const fs::path npy = case_dir / "pixel_values.npy";
  if (!fs::exists(npy)) {
    check.passed = true;
    check.message = prefix + "decoded and preprocessed; the case holds no pixel_values.npy to compare with";
    return check;
  }
  std::string summary;
  Status status = ComparePixelValuesNpy(npy, batch, PixelTolerance(manifest), &check.max_abs_error, &summary);
  if (!status.ok()) return Fail(std::move(check), status.WithContext(prefix.substr(0, prefix.size() - 2)));
  check.passed = true;
  check.message = prefix + summary;
  return check;
}

ImageFixtureCheck CheckHdCase(ImageFixtureCheck check, const fs::path& case_dir, const ModelImageSpec& spec,
                              const nlohmann::json& manifest, const std::vector<RgbImage>& images) {
  if (images.size() != 1) {
    return Fail(std::move(check), InvalidArgumentError("HD case with " + std::to_string(images.size()) +
                                                       " input images; the official HD path takes exactly one"));
  }
  HdOptions options;
  options.variant = spec.hd_variant;
  options.tile_size = spec.input_size;
  options.hd_num = spec.default_hd_num;
  if (const nlohmann::json* hd_num = Find(manifest, {"values", "hd_num"}); hd_num != nullptr) {
    if (!hd_num->is_number_integer()) {
      return Fail(std::move(check), InvalidArgumentError("manifest values.hd_num is not an integer"));
    }
    options.hd_num = hd_num->get<int64_t>();
  }
  std::vector<std::string> parts{spec.version + " HD tile " + std::to_string(options.tile_size) + " px, hd_num " +
                                 std::to_string(options.hd_num)};

  StatusOr<RgbImage> hd_image = HdTransform(images[0], options);
  if (!hd_image.ok()) return Fail(std::move(check), hd_image.status());
  const int64_t grid_h = hd_image->height / options.tile_size;
  const int64_t grid_w = hd_image->width / options.tile_size;
  parts.push_back("grid " + std::to_string(grid_h) + "x" + std::to_string(grid_w));
  if (const nlohmann::json* grid = Find(manifest, {"values", "tile_grid_hw"}); grid != nullptr) {
    if (*grid != nlohmann::json::array({grid_h, grid_w})) {
      return Fail(std::move(check), InvalidArgumentError("tile grid " + std::to_string(grid_h) + "x" +
                                                         std::to_string(grid_w) + " but manifest tile_grid_hw is " +
                                                         grid->dump()));
    }
    parts.back() += " (= tile_grid_hw)";
  }
  if (fs::exists(case_dir / "hd_image.png")) {
    std::string summary;
    Status status = CompareHdImage(case_dir / "hd_image.png", *hd_image, &summary);
    if (!status.ok()) return Fail(std::move(check), status);
    parts.push_back(summary);
  }

  HdPixelValues hd;
  hd.tile_size = options.tile_size;
  hd.grid_h = grid_h;
  hd.grid_w = grid_w;
  hd.pixel_values = ToNormalizedTensor(*hd_image, ClipNormalize());
  const std::vector<int64_t> pv_shape{1, 3, hd.pixel_values.height, hd.pixel_values.width};

  if (fs::exists(case_dir / "pixel_values.npy")) {
    std::string summary;
    Status status = ComparePixelValuesNpy(case_dir / "pixel_values.npy", {hd.pixel_values},
                                          PixelTolerance(manifest), &check.max_abs_error, &summary);
    if (!status.ok()) return Fail(std::move(check), status);
    parts.push_back(summary);
  }
  if (const nlohmann::json* expected = Find(manifest, {"values", "pixel_values_checksum"}); expected != nullptr) {
    Status status = CompareTensorChecksum(ComputeTensorChecksum(hd.pixel_values.data, pv_shape), *expected,
                                          kChecksumRtol, kChecksumAtol, &check.max_abs_error);
    if (!status.ok()) return Fail(std::move(check), status.WithContext("pixel_values_checksum"));
    parts.push_back("pixel_values_checksum " + ShapeText(pv_shape) + " matches");
  }
  if (const nlohmann::json* per_image = Find(manifest, {"values", "clip_input_images_checksums", "per_image"});
      per_image != nullptr) {
    StatusOr<std::vector<FloatImage>> inputs = MakeHdClipInputs(hd);
    if (!inputs.ok()) return Fail(std::move(check), inputs.status());
    if (!per_image->is_array() || per_image->size() != inputs->size()) {
      return Fail(std::move(check),
                  InvalidArgumentError("we make " + std::to_string(inputs->size()) +
                                       " CLIP inputs (global view + tiles); the manifest has " +
                                       std::to_string(per_image->is_array() ? per_image->size() : 0) + " checksums"));
    }
    for (size_t i = 0; i < inputs->size(); ++i) {
      const FloatImage& in = (*inputs)[i];
      Status status = CompareTensorChecksum(ComputeTensorChecksum(in.data, {in.channels, in.height, in.width}),
                                            (*per_image)[i], kChecksumRtol, kChecksumAtol, &check.max_abs_error);
      if (!status.ok()) {
        return Fail(std::move(check), status.WithContext("CLIP input " + std::to_string(i) +
                                                         (i == 0 ? " (global view)" : " (tile)")));
      }
    }
    parts.push_back(std::to_string(inputs->size()) + " CLIP input checksums match (global view + " +
                    std::to_string(inputs->size() - 1) + " tiles)");
  }
  if (parts.size() <= 2) parts.push_back("no reference (hd_image.png, checksums) to compare with");
  check.passed = true;
  for (size_t i = 0; i < parts.size(); ++i) check.message += (i ? "; " : "") + parts[i];
  check.message += "; max abs error " + Num(check.max_abs_error) + " (normalized units)";
  return check;
}

bool IsModelFolder(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir / "checkpoint", ec) || !fs::is_directory(dir / "cases", ec)) return false;
  for (const auto& entry : fs::directory_iterator(dir / "cases", ec)) {
    if (fs::exists(entry.path() / "manifest.json", ec)) return true;
  }
  return false;
}

std::vector<fs::path> SortedSubdirectories(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.is_directory(ec)) out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TensorChecksum ComputeTensorChecksum(std::span<const float> values, std::vector<int64_t> shape) {
  TensorChecksum c;
  c.shape = std::move(shape);
  const size_t n = values.size();
  if (n == 0) return c;
  double sum = 0.0;
  double abs_sum = 0.0;
  for (float v : values) {
    sum += v;
    abs_sum += std::fabs(static_cast<double>(v));
  }
  c.mean = sum / static_cast<double>(n);
  c.abs_mean = abs_sum / static_cast<double>(n);
  double squares = 0.0;
  for (float v : values) squares += (v - c.mean) * (v - c.mean);
  c.std = std::sqrt(squares / static_cast<double>(n));
  const size_t k = std::min<size_t>(8, n);
  for (size_t i = 0; i < k; ++i) c.first8.push_back(values[i]);
  for (size_t i = n - k; i < n; ++i) c.last8.push_back(values[i]);
  return c;
}

Status CompareTensorChecksum(const TensorChecksum& ours, const nlohmann::json& expected, double rtol, double atol,
                             double* max_abs_error) {
  if (!expected.is_object()) return InvalidArgumentError("expected checksum is not a JSON object");
  const nlohmann::json* shape = Find(expected, {"shape"});
  if (shape == nullptr || *shape != nlohmann::json(ours.shape)) {
    return InvalidArgumentError("shape " + ShapeText(ours.shape) + " but the checksum says " +
                                (shape == nullptr ? std::string("nothing") : shape->dump()));
  }
  double worst = 0.0;
  auto compare = [&](const std::string& field, double ours_value, const nlohmann::json& ref) -> Status {
    if (!ref.is_number()) return InvalidArgumentError(field + " in the checksum is not a number");
    const double e = ref.get<double>();
    const double d = std::fabs(ours_value - e);
    worst = std::max(worst, d);
    if (!(d <= rtol * std::fabs(e) + atol)) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "%s = %.9g but expected %.9g (difference %.3g, tolerance rtol %.1g + atol %.1g)",
                    field.c_str(), ours_value, e, d, rtol, atol);
      return InvalidArgumentError(buf);
    }
    return OkStatus();
  };
  const std::pair<const char*, double> scalars[] = {
      {"mean", ours.mean}, {"abs_mean", ours.abs_mean}, {"std", ours.std}};
  for (const auto& [field, value] : scalars) {
    if (const nlohmann::json* ref = Find(expected, {field}); ref != nullptr) {
      XCPIPE_RETURN_IF_ERROR(compare(field, value, *ref));
    }
  }
  const std::pair<const char*, const std::vector<double>*> lists[] = {{"first8", &ours.first8},
                                                                      {"last8", &ours.last8}};
  for (const auto& [field, values] : lists) {
    const nlohmann::json* ref = Find(expected, {field});
    if (ref == nullptr) continue;
    if (!ref->is_array() || ref->size() != values->size()) {
      return InvalidArgumentError(std::string(field) + " has " + std::to_string(values->size()) +
                                  " values; the checksum has " + (ref->is_array() ? std::to_string(ref->size()) : "none"));
    }
    for (size_t i = 0; i < values->size(); ++i) {
      XCPIPE_RETURN_IF_ERROR(compare(std::string(field) + "[" + std::to_string(i) + "]", (*values)[i], (*ref)[i]));
    }
  }
  if (max_abs_error != nullptr) *max_abs_error = std::max(*max_abs_error, worst);
  return OkStatus();
}

ImageFixtureCheck CheckImageFixtureCase(const fs::path& case_dir, const ModelImageSpec& spec,
                                        const std::string& case_name) {
  ImageFixtureCheck check;
  check.case_name = case_name;
  // nlohmann::json throws on misuse; a malformed manifest must fail this case, not the caller.
  try {
    StatusOr<nlohmann::json> manifest = ReadJsonFile(case_dir / "manifest.json");
    if (!manifest.ok()) return Fail(std::move(check), manifest.status());
    const std::vector<fs::path> paths = FindInputImages(case_dir);
    if (paths.empty()) return Fail(std::move(check), NotFoundError(case_dir.string() + ": no input image"));
    std::vector<RgbImage> images;
    for (const fs::path& path : paths) {
      StatusOr<RgbImage> image = ReadImageFile(path);
      if (!image.ok()) return Fail(std::move(check), image.status());
      images.push_back(std::move(image).value());
    }
    return spec.hd ? CheckHdCase(std::move(check), case_dir, spec, *manifest, images)
                   : CheckFixedSizeCase(std::move(check), case_dir, spec, *manifest, images);
  } catch (const std::exception& e) {
    return Fail(std::move(check), InternalError(case_dir.string() + ": " + e.what()));
  }
}

std::vector<ImageFixtureCheck> RunImageFixtureChecks(const fs::path& fixtures_root) {
  std::vector<ImageFixtureCheck> checks;
  for (const fs::path& model_dir : SortedSubdirectories(fixtures_root)) {
    if (!IsModelFolder(model_dir)) continue;
    const std::string model = model_dir.filename().string();
    std::vector<fs::path> cases;
    for (const fs::path& case_dir : SortedSubdirectories(model_dir / "cases")) {
      if (fs::exists(case_dir / "manifest.json") && !FindInputImages(case_dir).empty()) cases.push_back(case_dir);
    }
    if (cases.empty()) continue;
    StatusOr<ModelImageSpec> spec = DetectModelImageSpec(model_dir / "checkpoint");
    if (!spec.ok()) {
      checks.push_back({model, false, "cannot tell how this model preprocesses images: " + spec.status().message(), 0.0});
      continue;
    }
    for (const fs::path& case_dir : cases) {
      checks.push_back(CheckImageFixtureCase(case_dir, *spec, model + "/" + case_dir.filename().string()));
    }
  }
  return checks;
}

}  // namespace xcpipe::image
