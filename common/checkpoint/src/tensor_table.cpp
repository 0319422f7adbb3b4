#include "xcpipe/checkpoint/tensor_table.h"

#include <array>
#include <cctype>
#include <unordered_set>
#include <utility>

#include "strict_json.h"
#include "xcpipe/base/files.h"

namespace xcpipe::checkpoint {

namespace {

struct DTypeNames {
  DType dtype;
  size_t bytes;
  std::string_view safetensors;
  std::array<std::string_view, 4> aliases;  // lower-case; empty entries unused
};

constexpr std::array<DTypeNames, 10> kDTypes = {{
    {DType::kF32, 4, "F32", {"float32", "float", "fp32", "f32"}},
    {DType::kF16, 2, "F16", {"float16", "half", "fp16", "f16"}},
    {DType::kBF16, 2, "BF16", {"bfloat16", "bf16", "", ""}},
    {DType::kF64, 8, "F64", {"float64", "double", "fp64", "f64"}},
    {DType::kI64, 8, "I64", {"int64", "long", "i64", ""}},
    {DType::kI32, 4, "I32", {"int32", "int", "i32", ""}},
    {DType::kI16, 2, "I16", {"int16", "short", "i16", ""}},
    {DType::kI8, 1, "I8", {"int8", "i8", "", ""}},
    {DType::kU8, 1, "U8", {"uint8", "u8", "", ""}},
    {DType::kBool, 1, "BOOL", {"bool", "", "", ""}},
}};

const DTypeNames& NamesOf(DType dtype) {
  for (const auto& d : kDTypes) {
    if (d.dtype == dtype) return d;
  }
  return kDTypes[0];  // unreachable for valid enum values
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

size_t DTypeBytes(DType dtype) { return NamesOf(dtype).bytes; }

std::string_view DTypeName(DType dtype) { return NamesOf(dtype).safetensors; }

std::optional<DType> ParseDType(std::string_view name) {
  for (const auto& d : kDTypes) {
    if (name == d.safetensors) return d.dtype;
  }
  std::string lower = Lower(name);
  for (std::string_view prefix : {"torch.", "numpy.", "np."}) {
    if (lower.rfind(prefix, 0) == 0) {
      lower.erase(0, prefix.size());
      break;
    }
  }
  for (const auto& d : kDTypes) {
    if (lower == Lower(d.safetensors)) return d.dtype;
    for (std::string_view alias : d.aliases) {
      if (!alias.empty() && lower == alias) return d.dtype;
    }
  }
  return std::nullopt;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const TensorInfo* TensorTable::Find(std::string_view name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

uint64_t TensorTable::total_bytes() const {
  uint64_t total = 0;
  for (const auto& t : tensors) total += t.bytes();
  return total;
}

namespace {

using OrderedJson = nlohmann::ordered_json;

// One {"shape": [...], "dtype": "..."} entry of a layout file.
StatusOr<TensorInfo> ParseLayoutEntry(const std::string& name, const OrderedJson& entry, std::string_view what) {
  auto fail = [&](const std::string& why) {
    return InvalidArgumentError(std::string(what) + ": tensor '" + name + "': " + why);
  };
  if (!entry.is_object()) return fail("entry is not an object");
  auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) return fail("missing \"shape\" array");
  TensorInfo info;
  info.name = name;
  int64_t numel = 1;
  for (const auto& dim : *shape_it) {
    if (!dim.is_number_integer()) return fail("shape holds a non-integer");
    int64_t d = dim.get<int64_t>();
    if (d < 0) return fail("negative dimension " + std::to_string(d));
    if (d != 0 && numel > (int64_t{1} << 62) / d) return fail("shape has too many elements");
    numel *= d;
    info.shape.push_back(d);
  }
  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) return fail("missing \"dtype\" string");
  auto dtype = ParseDType(dtype_it->get_ref<const std::string&>());
  if (!dtype) return fail("unknown dtype '" + dtype_it->get<std::string>() + "'");
  info.dtype = *dtype;
  if (auto numel_it = entry.find("numel"); numel_it != entry.end()) {
    if (!numel_it->is_number_integer() || numel_it->get<int64_t>() != numel) {
      return fail("\"numel\" " + numel_it->dump() + " does not match the shape (" + std::to_string(numel) + ")");
    }
  }
  return info;
}

bool IsOptionalEntry(const OrderedJson& entry) {
  if (auto it = entry.find("optional"); it != entry.end()) {
    if (it->is_boolean() && it->get<bool>()) return true;
    if (it->is_string() && !it->get_ref<const std::string&>().empty()) return true;
  }
  if (auto it = entry.find("in_released_checkpoint"); it != entry.end()) {
    if (!(it->is_boolean() && it->get<bool>())) return true;
  }
  return false;
}

Status ReadEntries(const OrderedJson& object, std::string_view what, std::string_view field, TensorTable* table,
                   std::vector<std::string>* optional_names) {
  if (!object.is_object())
    return InvalidArgumentError(std::string(what) + ": \"" + std::string(field) + "\" is not an object");
  for (const auto& [name, entry] : object.items()) {
    XCPIPE_ASSIGN_OR_RETURN(TensorInfo info, ParseLayoutEntry(name, entry, what));
    if (optional_names && IsOptionalEntry(entry)) optional_names->push_back(name);
    table->tensors.push_back(std::move(info));
  }
  return OkStatus();
}

}  // namespace

StatusOr<LayoutFile> ReadLayoutFile(const std::filesystem::path& path) {
  const std::string what = path.string();
  XCPIPE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, uint64_t{256} << 20));
  XCPIPE_ASSIGN_OR_RETURN(OrderedJson doc, internal::ParseStrictJson<OrderedJson>(text, what));
  if (!doc.is_object()) return InvalidArgumentError(what + ": a layout file is a JSON object");
  auto params = doc.find("parameters");
  if (params == doc.end()) return InvalidArgumentError(what + ": no \"parameters\" object (not a layout file?)");

  LayoutFile layout;
  layout.table.source = what;
  XCPIPE_RETURN_IF_ERROR(ReadEntries(*params, what, "parameters", &layout.table, &layout.optional_names));
  if (auto it = doc.find("model"); it != doc.end() && it->is_string()) layout.model = it->get<std::string>();
  for (const char* key : {"config_used", "config"}) {
    if (auto it = doc.find(key); it != doc.end() && it->is_object()) {
      layout.config_json = it->dump();
      break;
    }
  }
  if (auto it = doc.find("clip_vision_config"); it != doc.end() && it->is_object()) {
    layout.clip_config_json = it->dump();
  }
  if (auto it = doc.find("lora_parameters_pattern"); it != doc.end()) {
    layout.lora_pattern.source = what + " (lora_parameters_pattern)";
    XCPIPE_RETURN_IF_ERROR(ReadEntries(*it, what, "lora_parameters_pattern", &layout.lora_pattern, nullptr));
  }
  if (auto it = doc.find("non_persistent_buffers"); it != doc.end()) {
    layout.non_persistent_buffers.source = what + " (non_persistent_buffers)";
    XCPIPE_RETURN_IF_ERROR(ReadEntries(*it, what, "non_persistent_buffers", &layout.non_persistent_buffers, nullptr));
  }
  return layout;
}

}  // namespace xcpipe::checkpoint
