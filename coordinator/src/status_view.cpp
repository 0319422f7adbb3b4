#include "xcpipe/coordinator/status_view.h"

#include <cstdio>

#include "xcpipe/coordinator/metrics.h"

namespace xcpipe::coordinator {
namespace {

using json = nlohmann::json;

uint64_t U(const json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<uint64_t>() : 0;
}
int64_t I(const json& j, const char* key) { return j.contains(key) && j[key].is_number() ? j[key].get<int64_t>() : 0; }
double D(const json& j, const char* key) { return j.contains(key) && j[key].is_number() ? j[key].get<double>() : 0.0; }
std::string S(const json& j, const char* key) {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
}
uint64_t Category(const json& w, const char* which, const char* category) {
  return w.contains(which) && w[which].is_object() ? U(w[which], category) : 0;
}

std::string Format(const char* fmt, auto... args) {
  char buf[512];
  std::snprintf(buf, sizeof(buf), fmt, args...);
  return buf;
}

double Mib(uint64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

// "used/planned" in MiB.
std::string Pair(uint64_t used, uint64_t planned) { return Format("%.0f/%.0f", Mib(used), Mib(planned)); }

std::string Bytes(uint64_t b) {
  if (b >= (uint64_t{1} << 30)) return Format("%.1f GiB", static_cast<double>(b) / double(uint64_t{1} << 30));
  if (b >= (uint64_t{1} << 20)) return Format("%.1f MiB", Mib(b));
  if (b >= 1024) return Format("%.1f KiB", static_cast<double>(b) / 1024.0);
  return Format("%llu B", static_cast<unsigned long long>(b));
}

uint64_t Sum(const json& reasons) {
  uint64_t n = 0;
  if (reasons.is_object())
    for (const auto& [k, v] : reasons.items()) n += v.is_number() ? v.get<uint64_t>() : 0;
  return n;
}

}  // namespace

std::vector<std::string> MemoryWarnings(const json& status) {
  std::vector<std::string> out;
  if (!status.contains("workers")) return out;
  for (const auto& w : status["workers"]) {
    const uint64_t used = U(w, "used_bytes"), capacity = U(w, "capacity_bytes");
    if (S(w, "state") == "lost" || capacity == 0) continue;
    const double share = static_cast<double>(used) / static_cast<double>(capacity);
    if (share <= kMemoryWarningFraction) continue;
    out.push_back(
        Format("warning: worker %s (stage %lld) uses %.0f%% of its memory (%.0f of %.0f MiB; warning above %.0f%%)",
               S(w, "id").c_str(), static_cast<long long>(I(w, "stage")), share * 100, Mib(used), Mib(capacity),
               kMemoryWarningFraction * 100));
  }
  return out;
}

std::string FormatStatusTable(const json& s) {
  std::string out;
  out += Format("cluster: %s  epoch %llu  stages %lld  queue %lld  in flight %lld  faults %llu  replays %llu\n",
                S(s, "state").c_str(), static_cast<unsigned long long>(U(s, "epoch")),
                static_cast<long long>(I(s, "stages")), static_cast<long long>(I(s, "queue_depth")),
                static_cast<long long>(I(s, "in_flight")), static_cast<unsigned long long>(U(s, "faults")),
                static_cast<unsigned long long>(U(s, "replays")));
  out += Format(
      "requests: submitted %llu  completed %llu  failed %llu  refused %llu (busy %llu)  "
      "TTFT p50 %.1f ms p99 %.1f ms  decode p50 %.1f tok/s\n",
      static_cast<unsigned long long>(U(s, "submitted")), static_cast<unsigned long long>(U(s, "completed")),
      static_cast<unsigned long long>(U(s, "failed")),
      static_cast<unsigned long long>(s.contains("refused_by_reason") ? Sum(s["refused_by_reason"]) : 0),
      static_cast<unsigned long long>(s.contains("refused_by_reason") && s["refused_by_reason"].is_object()
                                          ? U(s["refused_by_reason"], "busy")
                                          : 0),
      D(s, "ttft_p50_ms"), D(s, "ttft_p99_ms"), D(s, "tokens_per_s_p50"));
  if (const uint64_t steps = U(s, "steps_completed"); steps > 0) {
    const double trip = D(s, "step_round_trip_ms_total") / static_cast<double>(steps);
    const double compute = D(s, "step_compute_ms_total") / static_cast<double>(steps);
    out += Format(
        "steps: %llu through the pipeline; mean round trip %.2f ms = stages computing %.2f ms + hand-offs "
        "and waits %.2f ms (median round trip %.2f ms)\n",
        static_cast<unsigned long long>(steps), trip, compute, trip - compute, D(s, "step_round_trip_p50_ms"));
  }
  if (!S(s, "dtype").empty()) out += "dtype: " + S(s, "dtype") + " (every stage of the plan)\n";
  if (!S(s, "data_plane").empty())
    out += "data plane: " + S(s, "data_plane") + " (" + S(s, "data_plane_reason") + ")\n";
  if (!S(s, "vision_stage").empty()) {
    out += "vision: " + std::string(S(s, "vision_stage") == "separate" ? "on vision workers" : "on stage 0") + " (" +
           S(s, "vision_reason") + ")";
    if (S(s, "vision_stage") == "separate") {
      out += Format("; images waiting %llu, encoding %llu, encoded %llu, encode p50 %.1f ms",
                    static_cast<unsigned long long>(U(s, "images_waiting")),
                    static_cast<unsigned long long>(U(s, "images_encoding")),
                    static_cast<unsigned long long>(U(s, "images_encoded_total")), D(s, "encode_p50_ms"));
    }
    out += "\n";
  }
  if (!S(s, "metrics_address").empty()) out += "metrics: http://" + S(s, "metrics_address") + "/metrics\n";
  const json workers = s.contains("workers") && s["workers"].is_array() ? s["workers"] : json::array();
  out += Format("%-12s %-14s %-8s %-7s %-5s %-8s %-9s %-6s %-8s %-9s %s\n", "worker", "host", "pid", "device", "dtype",
                "kernels", "state", "stage", "blocks", "steps", "heartbeat");
  for (const auto& w : workers) {
    const std::string stage =
        S(w, "role") == "vision" ? std::string("vision") : std::to_string(static_cast<long long>(I(w, "stage")));
    out += Format("%-12s %-14s %-8llu %-7s %-5s %-8s %-9s %-6s %-8s %-9llu %llu ms ago\n", S(w, "id").c_str(),
                  S(w, "host").c_str(), static_cast<unsigned long long>(U(w, "pid")), S(w, "device").c_str(),
                  S(w, "dtype").empty() ? "-" : S(w, "dtype").c_str(),
                  S(w, "kernels").empty() ? "-" : S(w, "kernels").c_str(), S(w, "state").c_str(), stage.c_str(),
                  S(w, "blocks").c_str(), static_cast<unsigned long long>(U(w, "steps")),
                  static_cast<unsigned long long>(U(w, "last_heartbeat_ms_ago")));
  }
  out += "\nper stage: memory used/planned in MiB by category; used/capacity; KV reserved/budget\n";
  out += Format("%-6s %-12s %-13s %-11s %-13s %-16s %-8s %-17s %-6s %-11s %s\n", "stage", "worker", "weights", "kv",
                "activations", "used/capacity", "KV util", "step p50/p99 ms", "idle", "sent", "queued");
  for (const auto& w : workers) {
    if (I(w, "stage") < 0) continue;
    const uint64_t budget = U(w, "kv_budget_bytes");
    out += Format(
        "%-6lld %-12s %-13s %-11s %-13s %-16s %-8s %-17s %-6s %-11s %llu\n", static_cast<long long>(I(w, "stage")),
        S(w, "id").c_str(),
        Pair(Category(w, "used_by_category", "weights"), Category(w, "planned_by_category", "weights")).c_str(),
        Pair(Category(w, "used_by_category", "kv"), Category(w, "planned_by_category", "kv")).c_str(),
        Pair(Category(w, "used_by_category", "activations"), Category(w, "planned_by_category", "activations")).c_str(),
        Pair(U(w, "used_bytes"), U(w, "capacity_bytes")).c_str(),
        budget ? Format("%.1f%%", 100.0 * static_cast<double>(U(w, "kv_reserved_bytes")) / double(budget)).c_str()
               : "-",
        Format("%.2f/%.2f", D(w, "step_p50_ms"), D(w, "step_p99_ms")).c_str(),
        Format("%.0f%%", 100.0 * D(w, "idle_fraction")).c_str(), Bytes(U(w, "bytes_sent")).c_str(),
        static_cast<unsigned long long>(U(w, "queued_steps")));
  }
  bool vision_header = false;
  for (const auto& w : workers) {
    if (S(w, "role") != "vision") continue;
    if (!vision_header) {
      out +=
          "\nvision workers: memory used/planned in MiB by category; used/capacity; images encoded, queued; "
          "encode p50 ms\n";
      out += Format("%-12s %-13s %-13s %-16s %-8s %-7s %s\n", "worker", "weights", "activations", "used/capacity",
                    "encoded", "queued", "encode p50 ms");
      vision_header = true;
    }
    out += Format(
        "%-12s %-13s %-13s %-16s %-8llu %-7llu %.1f\n", S(w, "id").c_str(),
        Pair(Category(w, "used_by_category", "weights"), Category(w, "planned_by_category", "weights")).c_str(),
        Pair(Category(w, "used_by_category", "activations"), Category(w, "planned_by_category", "activations")).c_str(),
        Pair(U(w, "used_bytes"), U(w, "capacity_bytes")).c_str(),
        static_cast<unsigned long long>(U(w, "images_encoded")), static_cast<unsigned long long>(U(w, "images_queued")),
        D(w, "encode_p50_ms"));
  }
  for (const auto& line : MemoryWarnings(s)) out += line + "\n";
  return out;
}

}  // namespace xcpipe::coordinator
