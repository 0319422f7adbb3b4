#include "xcpipe/planner/cluster.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <set>
#include <sstream>

#include <toml++/toml.h>

#include "xcpipe/base/files.h"

namespace xcpipe::planner {
namespace {

using checkpoint::DType;

// Bounds that keep every later product (bytes, FLOPs) far from overflow; no real cluster or
// serving limit comes near them.
constexpr int64_t kMaxSequences = int64_t{1} << 20;
constexpr int64_t kMaxContext = int64_t{1} << 24;
constexpr int64_t kMaxImages = 4096;
constexpr int64_t kMaxHdTiles = 4096;
constexpr double kMaxMemoryGib = 1 << 20;
constexpr double kMaxRate = 1e7;  // tflops, GB/s, Gbit/s, microseconds
constexpr size_t kMaxDevicesPerHost = 4096;
constexpr size_t kMaxHosts = 4096;

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string Shorten(std::string_view text) {
  constexpr size_t kMax = 40;
  std::string out;
  for (char c : text.substr(0, kMax)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (text.size() > kMax) out += "...";
  return out;
}

std::string Describe(const toml::node& node) {
  if (const auto* s = node.as_string()) return "\"" + Shorten(s->get()) + "\"";
  if (const auto* i = node.as_integer()) return std::to_string(i->get());
  if (const auto* f = node.as_floating_point()) {
    std::ostringstream out;
    out << f->get();
    return out.str();
  }
  if (const auto* b = node.as_boolean()) return b->get() ? "true" : "false";
  if (node.is_table()) return "a table";
  if (node.is_array()) return "an array";
  return "a date or time";
}

// Names the field in every message: "<source>: <path> (line N): <what>".
class Context {
 public:
  explicit Context(std::string_view source) : source_(source) {}

  Status Error(const std::string& path, const toml::node* node, const std::string& what) const {
    std::string where = source_ + ": " + path;
    if (node != nullptr && node->source().begin.line > 0) {
      where += " (line " + std::to_string(node->source().begin.line) + ")";
    }
    return InvalidArgumentError(where + ": " + what);
  }

  Status CheckKnownKeys(const toml::table& table, const std::string& path,
                        std::initializer_list<std::string_view> known) const {
    for (auto&& [key, node] : table) {
      std::string_view name = key.str();
      if (std::find(known.begin(), known.end(), name) != known.end()) continue;
      std::string_view nearest;
      size_t best = SIZE_MAX;
      for (std::string_view candidate : known) {
        size_t d = EditDistance(name, candidate);
        if (d < best) best = d, nearest = candidate;
      }
      std::string message = "unknown field";
      if (best <= std::max<size_t>(2, nearest.size() / 2)) message += "; did you mean '" + std::string(nearest) + "'?";
      message += " (known here:";
      for (std::string_view candidate : known) message += " " + std::string(candidate);
      message += ")";
      return Error(Join(path, "'" + Shorten(name) + "'"), &node, message);
    }
    return OkStatus();
  }

  static std::string Join(const std::string& path, const std::string& key) {
    return path.empty() ? key : path + "." + key;
  }

  // Optional table; nullptr when absent.
  StatusOr<const toml::table*> Table(const toml::table& parent, const std::string& path, std::string_view key) const {
    const toml::node* node = parent.get(key);
    if (node == nullptr) return static_cast<const toml::table*>(nullptr);
    if (!node->is_table()) return Error(Join(path, std::string(key)), node, "must be a table, got " + Describe(*node));
    return node->as_table();
  }

  // Reads a finite number within (min, max] or [min, max] into `out` when present.
  Status Number(const toml::table& table, const std::string& path, std::string_view key, bool required, double min,
                bool min_inclusive, double max, double& out) const {
    const std::string field = Join(path, std::string(key));
    const toml::node* node = table.get(key);
    if (node == nullptr) {
      return required ? Error(field, nullptr, "required field is missing (a number)") : OkStatus();
    }
    std::optional<double> value;
    if (const auto* f = node->as_floating_point()) value = f->get();
    if (const auto* i = node->as_integer()) value = static_cast<double>(i->get());
    std::string bound = (min_inclusive ? ">= " : "> ") + Format(min);
    if (!value || !std::isfinite(*value) || *value < min || (!min_inclusive && *value == min) || *value > max) {
      return Error(field, node, "must be a number " + bound + " and <= " + Format(max) + ", got " + Describe(*node));
    }
    out = *value;
    return OkStatus();
  }

  Status Integer(const toml::table& table, const std::string& path, std::string_view key, int64_t min, int64_t max,
                 int64_t& out) const {
    const std::string field = Join(path, std::string(key));
    const toml::node* node = table.get(key);
    if (node == nullptr) return OkStatus();
    const auto* i = node->as_integer();
    if (i == nullptr || i->get() < min || i->get() > max) {
      return Error(field, node,
                   "must be a whole number from " + std::to_string(min) + " to " + std::to_string(max) + ", got " +
                       Describe(*node));
    }
    out = i->get();
    return OkStatus();
  }

  Status String(const toml::table& table, const std::string& path, std::string_view key, bool required,
                std::string& out) const {
    const std::string field = Join(path, std::string(key));
    const toml::node* node = table.get(key);
    if (node == nullptr) {
      return required ? Error(field, nullptr, "required field is missing (a string)") : OkStatus();
    }
    const auto* s = node->as_string();
    if (s == nullptr) return Error(field, node, "must be a string, got " + Describe(*node));
    out = s->get();
    return OkStatus();
  }

  static std::string Format(double value) {
    std::ostringstream out;
    out << value;
    return out.str();
  }

 private:
  std::string source_;
};

bool ValidDevice(std::string_view device) {
  auto ordinal_ok = [](std::string_view digits) {
    if (digits.empty() || digits.size() > 4) return false;
    return std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  if (device == "cpu") return true;
  if (device.rfind("cpu:", 0) == 0) return ordinal_ok(device.substr(4));
  if (device.rfind("cuda:", 0) == 0) return ordinal_ok(device.substr(5));
  return false;
}

Status ParseServing(const Context& ctx, const toml::table& table, ServingLimits& serving) {
  const std::string path = "serving";
  XCPIPE_RETURN_IF_ERROR(ctx.CheckKnownKeys(
      table, path, {"max_sequences", "max_context", "max_images", "hd_tiles", "dtype", "prefill_chunk"}));
  XCPIPE_RETURN_IF_ERROR(ctx.Integer(table, path, "max_sequences", 1, kMaxSequences, serving.max_sequences));
  XCPIPE_RETURN_IF_ERROR(ctx.Integer(table, path, "max_context", 1, kMaxContext, serving.max_context));
  XCPIPE_RETURN_IF_ERROR(ctx.Integer(table, path, "max_images", 0, kMaxImages, serving.max_images));
  XCPIPE_RETURN_IF_ERROR(ctx.Integer(table, path, "prefill_chunk", 1, kMaxContext, serving.prefill_chunk));
  if (table.contains("hd_tiles")) {
    int64_t tiles = 0;
    XCPIPE_RETURN_IF_ERROR(ctx.Integer(table, path, "hd_tiles", 1, kMaxHdTiles, tiles));
    serving.hd_tiles = tiles;
  }
  std::string dtype;
  XCPIPE_RETURN_IF_ERROR(ctx.String(table, path, "dtype", false, dtype));
  if (!dtype.empty() || table.contains("dtype")) {
    auto parsed = checkpoint::ParseDType(dtype);
    if (!parsed || (*parsed != DType::kBF16 && *parsed != DType::kF16 && *parsed != DType::kF32)) {
      return ctx.Error("serving.dtype", table.get("dtype"),
                       "must be \"bf16\", \"fp16\" or \"fp32\", got \"" + Shorten(dtype) + "\"");
    }
    serving.dtype = *parsed;
  }
  return OkStatus();
}

Status ParsePlanner(const Context& ctx, const toml::table& table, PlannerSettings& planner) {
  const std::string path = "planner";
  XCPIPE_RETURN_IF_ERROR(ctx.CheckKnownKeys(table, path, {"headroom_fraction", "vision_stage"}));
  if (table.contains("headroom_fraction")) {
    double headroom = 0;
    XCPIPE_RETURN_IF_ERROR(ctx.Number(table, path, "headroom_fraction", false, 0, true, 0.9, headroom));
    planner.headroom_fraction = headroom;
  }
  if (table.contains("vision_stage")) {
    std::string name;
    XCPIPE_RETURN_IF_ERROR(ctx.String(table, path, "vision_stage", true, name));
    auto parsed = ParseVisionPlacement(name);
    if (!parsed) {
      return ctx.Error("planner.vision_stage", table.get("vision_stage"),
                       "must be \"auto\", \"first\" or \"separate\", got \"" + Shorten(name) + "\"");
    }
    planner.vision = *parsed;
    planner.vision_set = true;
  }
  return OkStatus();
}

Status ParseNetwork(const Context& ctx, const toml::table& table, NetworkSpec& network) {
  const std::string path = "network";
  XCPIPE_RETURN_IF_ERROR(ctx.CheckKnownKeys(table, path, {"inter_host_gbps", "inter_host_latency_us"}));
  XCPIPE_RETURN_IF_ERROR(
      ctx.Number(table, path, "inter_host_gbps", false, 0, false, kMaxRate, network.inter_host_gbps));
  XCPIPE_RETURN_IF_ERROR(
      ctx.Number(table, path, "inter_host_latency_us", false, 0, true, kMaxRate, network.inter_host_latency_us));
  return OkStatus();
}

Status ParseGpu(const Context& ctx, const toml::table& table, const std::string& path, GpuSpec& gpu) {
  XCPIPE_RETURN_IF_ERROR(
      ctx.CheckKnownKeys(table, path, {"device", "model", "memory_gib", "tflops", "mem_bw_gbps", "reserved_gib"}));
  XCPIPE_RETURN_IF_ERROR(ctx.String(table, path, "device", true, gpu.device));
  if (!ValidDevice(gpu.device)) {
    return ctx.Error(path + ".device", table.get("device"),
                     "must be \"cuda:N\", \"cpu\" or \"cpu:N\", got \"" + Shorten(gpu.device) + "\"");
  }
  XCPIPE_RETURN_IF_ERROR(ctx.String(table, path, "model", false, gpu.model));
  XCPIPE_RETURN_IF_ERROR(ctx.Number(table, path, "memory_gib", true, 0, false, kMaxMemoryGib, gpu.memory_gib));
  XCPIPE_RETURN_IF_ERROR(ctx.Number(table, path, "tflops", true, 0, false, kMaxRate, gpu.tflops));
  XCPIPE_RETURN_IF_ERROR(ctx.Number(table, path, "mem_bw_gbps", true, 0, false, kMaxRate, gpu.mem_bw_gbps));
  gpu.reserved_gib = gpu.is_cuda() ? kDefaultCudaReservedGib : kDefaultCpuReservedGib;
  XCPIPE_RETURN_IF_ERROR(ctx.Number(table, path, "reserved_gib", false, 0, true, kMaxMemoryGib, gpu.reserved_gib));
  if (gpu.reserved_gib >= gpu.memory_gib) {
    return ctx.Error(path + ".reserved_gib",
                     table.get("reserved_gib") ? table.get("reserved_gib") : table.get("memory_gib"),
                     "the runtime's reserve (" + Context::Format(gpu.reserved_gib) +
                         " GiB) leaves nothing of memory_gib = " + Context::Format(gpu.memory_gib));
  }
  return OkStatus();
}

Status ParseHost(const Context& ctx, const toml::table& table, const std::string& path, HostSpec& host) {
  XCPIPE_RETURN_IF_ERROR(
      ctx.CheckKnownKeys(table, path, {"name", "address", "intra_host_gbps", "intra_host_latency_us", "gpus"}));
  XCPIPE_RETURN_IF_ERROR(ctx.String(table, path, "name", true, host.name));
  if (host.name.empty()) return ctx.Error(path + ".name", table.get("name"), "must not be empty");
  XCPIPE_RETURN_IF_ERROR(ctx.String(table, path, "address", false, host.address));
  XCPIPE_RETURN_IF_ERROR(ctx.Number(table, path, "intra_host_gbps", false, 0, false, kMaxRate, host.intra_host_gbps));
  XCPIPE_RETURN_IF_ERROR(
      ctx.Number(table, path, "intra_host_latency_us", false, 0, true, kMaxRate, host.intra_host_latency_us));
  const toml::node* gpus = table.get("gpus");
  if (gpus == nullptr) {
    return ctx.Error(path + ".gpus", &table, "required: at least one [[hosts.gpus]] entry for this host");
  }
  const toml::array* array = gpus->as_array();
  if (array == nullptr || array->empty()) {
    return ctx.Error(path + ".gpus", gpus,
                     "must be a non-empty array of tables ([[hosts.gpus]]), got " + Describe(*gpus));
  }
  if (array->size() > kMaxDevicesPerHost) return ctx.Error(path + ".gpus", gpus, "too many devices");
  std::set<std::string> devices;
  for (size_t i = 0; i < array->size(); ++i) {
    const std::string gpu_path = path + ".gpus[" + std::to_string(i) + "]";
    const toml::node& node = *array->get(i);
    if (!node.is_table()) return ctx.Error(gpu_path, &node, "must be a table, got " + Describe(node));
    GpuSpec gpu;
    XCPIPE_RETURN_IF_ERROR(ParseGpu(ctx, *node.as_table(), gpu_path, gpu));
    if (!devices.insert(gpu.device).second) {
      return ctx.Error(gpu_path + ".device", node.as_table()->get("device"),
                       "device \"" + gpu.device + "\" appears twice on host \"" + Shorten(host.name) + "\"");
    }
    host.gpus.push_back(std::move(gpu));
  }
  if (host.gpus.size() > 1 && !table.contains("intra_host_gbps")) {
    return ctx.Error(path + ".intra_host_gbps", &table,
                     "required when a host has more than one device (the link between them, Gbit/s)");
  }
  return OkStatus();
}

StatusOr<ClusterSpec> ParseTable(const Context& ctx, const toml::table& root, std::string_view source) {
  ClusterSpec cluster;
  cluster.source = std::string(source);
  XCPIPE_RETURN_IF_ERROR(ctx.CheckKnownKeys(root, "", {"serving", "planner", "network", "hosts"}));

  XCPIPE_ASSIGN_OR_RETURN(const toml::table* serving, ctx.Table(root, "", "serving"));
  if (serving != nullptr) XCPIPE_RETURN_IF_ERROR(ParseServing(ctx, *serving, cluster.serving));
  XCPIPE_ASSIGN_OR_RETURN(const toml::table* planner, ctx.Table(root, "", "planner"));
  if (planner != nullptr) XCPIPE_RETURN_IF_ERROR(ParsePlanner(ctx, *planner, cluster.planner));
  XCPIPE_ASSIGN_OR_RETURN(const toml::table* network, ctx.Table(root, "", "network"));
  if (network != nullptr) XCPIPE_RETURN_IF_ERROR(ParseNetwork(ctx, *network, cluster.network));

  const toml::node* hosts = root.get("hosts");
  if (hosts == nullptr) return ctx.Error("hosts", nullptr, "required: at least one [[hosts]] entry");
  const toml::array* array = hosts->as_array();
  if (array == nullptr || array->empty()) {
    return ctx.Error("hosts", hosts, "must be a non-empty array of tables ([[hosts]]), got " + Describe(*hosts));
  }
  if (array->size() > kMaxHosts) return ctx.Error("hosts", hosts, "too many hosts");
  std::set<std::string> names;
  for (size_t i = 0; i < array->size(); ++i) {
    const std::string path = "hosts[" + std::to_string(i) + "]";
    const toml::node& node = *array->get(i);
    if (!node.is_table()) return ctx.Error(path, &node, "must be a table, got " + Describe(node));
    HostSpec host;
    XCPIPE_RETURN_IF_ERROR(ParseHost(ctx, *node.as_table(), path, host));
    if (!names.insert(host.name).second) {
      return ctx.Error(path + ".name", node.as_table()->get("name"),
                       "host name \"" + Shorten(host.name) + "\" appears twice");
    }
    cluster.hosts.push_back(std::move(host));
  }
  if (cluster.hosts.size() > 1 && !(network != nullptr && network->contains("inter_host_gbps"))) {
    return ctx.Error("network.inter_host_gbps", network,
                     "required when the cluster has more than one host (the link between hosts, Gbit/s)");
  }
  // Cross-field rules, shared with clusters built in code.
  Status valid = ValidateCluster(cluster);
  if (!valid.ok()) return InvalidArgumentError(std::string(source) + ": " + valid.message());
  return cluster;
}

}  // namespace

std::string_view VisionPlacementName(VisionPlacement placement) {
  switch (placement) {
    case VisionPlacement::kFirstStage:
      return "first";
    case VisionPlacement::kSeparateStage:
      return "separate";
    case VisionPlacement::kAuto:
      return "auto";
  }
  return "first";
}

std::optional<VisionPlacement> ParseVisionPlacement(std::string_view name) {
  if (name == "first") return VisionPlacement::kFirstStage;
  if (name == "separate") return VisionPlacement::kSeparateStage;
  if (name == "auto") return VisionPlacement::kAuto;
  return std::nullopt;
}

std::optional<int> GpuSpec::cuda_index() const {
  if (!is_cuda() || device.size() <= 5) return std::nullopt;
  int index = 0;
  auto [ptr, ec] = std::from_chars(device.data() + 5, device.data() + device.size(), index);
  if (ec != std::errc() || ptr != device.data() + device.size()) return std::nullopt;
  return index;
}

size_t ClusterSpec::device_count() const {
  size_t count = 0;
  for (const auto& host : hosts) count += host.gpus.size();
  return count;
}

Status ValidateServingLimits(const ServingLimits& s) {
  auto check = [](bool ok, const char* field, const std::string& what) {
    return ok ? OkStatus() : InvalidArgumentError(std::string("serving.") + field + ": " + what);
  };
  XCPIPE_RETURN_IF_ERROR(
      check(s.max_sequences >= 1 && s.max_sequences <= kMaxSequences, "max_sequences",
            "must be from 1 to " + std::to_string(kMaxSequences) + ", got " + std::to_string(s.max_sequences)));
  XCPIPE_RETURN_IF_ERROR(
      check(s.max_context >= 1 && s.max_context <= kMaxContext, "max_context",
            "must be from 1 to " + std::to_string(kMaxContext) + ", got " + std::to_string(s.max_context)));
  XCPIPE_RETURN_IF_ERROR(
      check(s.max_images >= 0 && s.max_images <= kMaxImages, "max_images",
            "must be from 0 to " + std::to_string(kMaxImages) + ", got " + std::to_string(s.max_images)));
  XCPIPE_RETURN_IF_ERROR(
      check(!s.hd_tiles || (*s.hd_tiles >= 1 && *s.hd_tiles <= kMaxHdTiles), "hd_tiles",
            "must be from 1 to " + std::to_string(kMaxHdTiles) + ", got " + std::to_string(s.hd_tiles.value_or(0))));
  XCPIPE_RETURN_IF_ERROR(
      check(s.prefill_chunk >= 1 && s.prefill_chunk <= kMaxContext, "prefill_chunk",
            "must be from 1 to " + std::to_string(kMaxContext) + ", got " + std::to_string(s.prefill_chunk)));
  XCPIPE_RETURN_IF_ERROR(check(s.dtype == DType::kBF16 || s.dtype == DType::kF16 || s.dtype == DType::kF32, "dtype",
                               "must be bf16, fp16 or fp32, got " + std::string(checkpoint::DTypeName(s.dtype))));
  return OkStatus();
}

Status ValidateCluster(const ClusterSpec& cluster) {
  XCPIPE_RETURN_IF_ERROR(ValidateServingLimits(cluster.serving));
  if (!(cluster.planner.headroom_fraction >= 0 && cluster.planner.headroom_fraction <= 0.9)) {
    return InvalidArgumentError("planner.headroom_fraction: must be from 0 to 0.9, got " +
                                Context::Format(cluster.planner.headroom_fraction));
  }
  if (cluster.hosts.empty()) return InvalidArgumentError("hosts: the cluster has no hosts");
  if (cluster.hosts.size() > 1 &&
      !(cluster.network.inter_host_gbps > 0 && cluster.network.inter_host_gbps <= kMaxRate)) {
    return InvalidArgumentError("network.inter_host_gbps: must be > 0 when the cluster has more than one host");
  }
  if (!(cluster.network.inter_host_latency_us >= 0 && cluster.network.inter_host_latency_us <= kMaxRate)) {
    return InvalidArgumentError("network.inter_host_latency_us: must be >= 0");
  }
  std::set<std::string> names;
  for (size_t h = 0; h < cluster.hosts.size(); ++h) {
    const HostSpec& host = cluster.hosts[h];
    const std::string path = "hosts[" + std::to_string(h) + "]";
    if (host.name.empty()) return InvalidArgumentError(path + ".name: must not be empty");
    if (!names.insert(host.name).second) {
      return InvalidArgumentError(path + ".name: host name \"" + host.name + "\" appears twice");
    }
    if (host.gpus.empty()) return InvalidArgumentError(path + ".gpus: the host has no devices");
    if (host.gpus.size() > 1 && !(host.intra_host_gbps > 0 && host.intra_host_gbps <= kMaxRate)) {
      return InvalidArgumentError(path + ".intra_host_gbps: must be > 0 when a host has more than one device");
    }
    if (!(host.intra_host_latency_us >= 0 && host.intra_host_latency_us <= kMaxRate)) {
      return InvalidArgumentError(path + ".intra_host_latency_us: must be >= 0");
    }
    std::set<std::string> devices;
    for (size_t g = 0; g < host.gpus.size(); ++g) {
      const GpuSpec& gpu = host.gpus[g];
      const std::string gpu_path = path + ".gpus[" + std::to_string(g) + "]";
      if (!ValidDevice(gpu.device)) {
        return InvalidArgumentError(gpu_path + ".device: must be \"cuda:N\", \"cpu\" or \"cpu:N\", got \"" +
                                    Shorten(gpu.device) + "\"");
      }
      if (!devices.insert(gpu.device).second) {
        return InvalidArgumentError(gpu_path + ".device: device \"" + gpu.device + "\" appears twice on host \"" +
                                    host.name + "\"");
      }
      auto positive = [&](double v, double max) { return std::isfinite(v) && v > 0 && v <= max; };
      if (!positive(gpu.memory_gib, kMaxMemoryGib)) return InvalidArgumentError(gpu_path + ".memory_gib: must be > 0");
      if (!positive(gpu.tflops, kMaxRate)) return InvalidArgumentError(gpu_path + ".tflops: must be > 0");
      if (!positive(gpu.mem_bw_gbps, kMaxRate)) return InvalidArgumentError(gpu_path + ".mem_bw_gbps: must be > 0");
      if (!(gpu.reserved_gib >= 0 && gpu.reserved_gib < gpu.memory_gib)) {
        return InvalidArgumentError(gpu_path + ".reserved_gib: must be >= 0 and below memory_gib");
      }
    }
  }
  return OkStatus();
}

StatusOr<ClusterSpec> ParseClusterToml(std::string_view text, std::string_view source_name) {
  const Context ctx(source_name);
  toml::table root;
#if TOML_EXCEPTIONS
  try {
    root = toml::parse(text, source_name);
  } catch (const toml::parse_error& error) {
    return InvalidArgumentError(std::string(source_name) + " (line " + std::to_string(error.source().begin.line) +
                                ", column " + std::to_string(error.source().begin.column) +
                                "): not valid TOML: " + std::string(error.description()));
  } catch (const std::exception& error) {
    return InvalidArgumentError(std::string(source_name) + ": not valid TOML: " + error.what());
  }
#else
  toml::parse_result result = toml::parse(text, source_name);
  if (!result) {
    const auto& error = result.error();
    return InvalidArgumentError(std::string(source_name) + " (line " + std::to_string(error.source().begin.line) +
                                ", column " + std::to_string(error.source().begin.column) +
                                "): not valid TOML: " + std::string(error.description()));
  }
  root = std::move(result).table();
#endif
  return ParseTable(ctx, root, source_name);
}

StatusOr<ClusterSpec> ReadClusterFile(const std::filesystem::path& path) {
  XCPIPE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, uint64_t{16} << 20));
  return ParseClusterToml(text, path.string());
}

}  // namespace xcpipe::planner
