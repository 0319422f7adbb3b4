// Monitoring end to end: a real local cluster serves a few requests, /metrics is scraped over
// a real TCP socket and every line is parsed strictly as Prometheus text exposition format
// (0.0.4); the values must agree with what was done, and the status reply must carry the
// same figures. Plus /healthz, /readyz (503 while not serving), 404, 405, and the pure parts
// (histogram, rendering with awkward label values, memory warnings).
#include <utility>  // before Asio under C++20

#include <gtest/gtest.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cmath>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "xcpipe/coordinator/client.h"
#include "xcpipe/coordinator/local_cluster.h"
#include "xcpipe/coordinator/metrics.h"
#include "xcpipe/coordinator/status_view.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::coordinator {
namespace {

namespace fs = std::filesystem;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using namespace std::chrono_literals;

fs::path ModelDir() { return testing::FixturesDir() / "ixc2_vl" / "checkpoint"; }

struct HttpResult {
  int status = 0;
  std::string body;
  std::string content_type;
};

// One request over a fresh TCP connection, with a deadline.
HttpResult HttpRequest(const std::string& address, const std::string& target, http::verb verb = http::verb::get) {
  const auto colon = address.rfind(':');
  asio::io_context io;
  beast::tcp_stream stream(io);
  stream.expires_after(10s);
  stream.connect(asio::ip::tcp::endpoint(asio::ip::make_address(address.substr(0, colon)),
                                         static_cast<unsigned short>(std::stoi(address.substr(colon + 1)))));
  http::request<http::empty_body> req{verb, target, 11};
  req.set(http::field::host, address);
  http::write(stream, req);
  beast::flat_buffer buffer;
  http::response<http::string_body> res;
  http::read(stream, buffer, res);
  return {static_cast<int>(res.result_int()), res.body(), std::string(res[http::field::content_type])};
}

// ---------------------------------------------------------------------------------------
// A strict parser of the Prometheus text exposition format (0.0.4).
// ---------------------------------------------------------------------------------------

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct Exposition {
  std::map<std::string, std::string> types;  // family -> type
  std::vector<Sample> samples;

  // The one sample of `name` whose labels include every pair of `match`; fails the test otherwise.
  double Value(const std::string& name, const std::map<std::string, std::string>& match = {}) const {
    const Sample* found = nullptr;
    for (const auto& s : samples) {
      if (s.name != name) continue;
      bool ok = true;
      for (const auto& [k, v] : match) ok &= s.labels.count(k) && s.labels.at(k) == v;
      if (!ok) continue;
      EXPECT_EQ(found, nullptr) << "more than one sample of " << name << " matches";
      found = &s;
    }
    EXPECT_NE(found, nullptr) << "no sample of " << name;
    return found ? found->value : std::nan("");
  }
  std::vector<const Sample*> All(const std::string& name) const {
    std::vector<const Sample*> out;
    for (const auto& s : samples)
      if (s.name == name) out.push_back(&s);
    return out;
  }
};

bool ParseValue(const std::string& text, double& out) {
  if (text == "+Inf") return out = INFINITY, true;
  if (text == "-Inf") return out = -INFINITY, true;
  if (text == "NaN") return out = NAN, true;
  static const std::regex number(R"([-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)");
  if (!std::regex_match(text, number)) return false;
  out = std::stod(text);
  return true;
}

// Parses `text` into `e`; every violation is a test failure naming the line.
void ParseInto(const std::string& text, Exposition& e) {
  EXPECT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n') << "the exposition must end with a newline";
  static const std::regex help(R"(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*))");
  static const std::regex type(R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped))");
  static const std::regex sample(R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( -?\d+)?)");
  static const std::regex label_name("[a-zA-Z_][a-zA-Z0-9_]*");
  std::set<std::string> helped, families_with_samples;
  std::set<std::string> series;
  std::string current;  // family of the samples being read (one group per family)
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    const std::string where = "line " + std::to_string(n) + ": '" + line + "'";
    std::smatch m;
    if (line.empty()) continue;
    if (line.rfind("# HELP ", 0) == 0) {
      EXPECT_TRUE(std::regex_match(line, m, help)) << where;
      if (!m.empty()) {
        EXPECT_TRUE(helped.insert(m[1]).second) << "HELP twice, " << where;
      }
      continue;
    }
    if (line.rfind("# TYPE ", 0) == 0) {
      EXPECT_TRUE(std::regex_match(line, m, type)) << where;
      if (m.empty()) continue;
      EXPECT_FALSE(e.types.count(m[1])) << "TYPE twice, " << where;
      EXPECT_FALSE(families_with_samples.count(m[1])) << "TYPE after samples, " << where;
      e.types[m[1]] = m[2];
      current = m[1];
      continue;
    }
    if (line[0] == '#') continue;  // a comment
    ASSERT_TRUE(std::regex_match(line, m, sample)) << where;
    Sample s;
    s.name = m[1];
    const std::string labels = m[3];
    // Labels: name="value" pairs, values with only \\, \" and \n escapes, comma separated.
    size_t i = 0;
    while (i < labels.size()) {
      const size_t eq = labels.find('=', i);
      ASSERT_NE(eq, std::string::npos) << where;
      const std::string key = labels.substr(i, eq - i);
      EXPECT_TRUE(std::regex_match(key, label_name)) << "label name '" << key << "', " << where;
      ASSERT_LT(eq + 1, labels.size()) << where;
      ASSERT_EQ(labels[eq + 1], '"') << where;
      std::string value;
      size_t j = eq + 2;
      for (; j < labels.size() && labels[j] != '"'; ++j) {
        if (labels[j] == '\\') {
          ASSERT_LT(j + 1, labels.size()) << where;
          const char c = labels[++j];
          ASSERT_TRUE(c == '\\' || c == '"' || c == 'n') << "bad escape, " << where;
          value += c == 'n' ? '\n' : c;
        } else {
          value += labels[j];
        }
      }
      ASSERT_LT(j, labels.size()) << "unterminated label value, " << where;
      EXPECT_TRUE(s.labels.emplace(key, value).second) << "label twice, " << where;
      i = j + 1;
      if (i < labels.size()) {
        ASSERT_EQ(labels[i], ',') << where;
        ++i;
      }
    }
    EXPECT_TRUE(ParseValue(m[4], s.value)) << "value '" << m[4] << "', " << where;
    // The sample belongs to the family declared last: its name, or name_bucket/_sum/_count.
    const std::string& t = e.types.count(current) ? e.types.at(current) : "";
    bool belongs = s.name == current;
    if (t == "histogram") belongs |= s.name == current + "_bucket" || s.name == current + "_sum" || s.name == current + "_count";
    if (t == "summary") belongs |= s.name == current + "_sum" || s.name == current + "_count";
    EXPECT_TRUE(belongs) << "sample outside its family's group (family '" << current << "'), " << where;
    if (t == "histogram" && s.name == current + "_bucket") {
      EXPECT_TRUE(s.labels.count("le")) << where;
    }
    if (t == "summary" && s.name == current) {
      EXPECT_TRUE(s.labels.count("quantile")) << where;
    }
    if (t == "counter") {
      EXPECT_GE(s.value, 0) << "negative counter, " << where;
    }
    families_with_samples.insert(current);
    std::string key = s.name;
    for (const auto& [k, v] : s.labels) key += "|" + k + "=" + v;
    EXPECT_TRUE(series.insert(key).second) << "series twice, " << where;
    e.samples.push_back(std::move(s));
  }
  // Histograms: per label set, buckets rise with le, counts never fall, +Inf equals _count.
  for (const auto& [family, t] : e.types) {
    if (t != "histogram") continue;
    std::map<std::string, std::vector<std::pair<double, double>>> buckets;
    for (const auto* b : e.All(family + "_bucket")) {
      auto labels = b->labels;
      double le = 0;
      EXPECT_TRUE(ParseValue(labels.at("le"), le)) << family;
      labels.erase("le");
      std::string key;
      for (const auto& [k, v] : labels) key += k + "=" + v + ",";
      buckets[key].emplace_back(le, b->value);
    }
    EXPECT_FALSE(buckets.empty()) << "histogram " << family << " without buckets";
    for (const auto& [key, list] : buckets) {
      for (size_t k = 1; k < list.size(); ++k) {
        EXPECT_GT(list[k].first, list[k - 1].first) << family << ": le not increasing";
        EXPECT_GE(list[k].second, list[k - 1].second) << family << ": bucket counts fall";
      }
      ASSERT_TRUE(std::isinf(list.back().first)) << family << ": no +Inf bucket";
      double count = 0;
      for (const auto* c : e.All(family + "_count")) count = c->value;
      EXPECT_EQ(list.back().second, count) << family << ": +Inf bucket differs from _count";
      EXPECT_EQ(e.All(family + "_sum").size(), 1u) << family;
    }
  }
}

Exposition ParsePrometheus(const std::string& text) {
  Exposition e;
  ParseInto(text, e);
  return e;
}

// ---------------------------------------------------------------------------------------

TEST(MetricsTest, HistogramBucketsAndQuantiles) {
  Histogram h({1, 2, 4});
  for (double v : {0.5, 1.5, 1.5, 3.0, 10.0}) h.Observe(v);
  EXPECT_EQ(h.count(), 5u);
  EXPECT_DOUBLE_EQ(h.sum(), 16.5);
  EXPECT_EQ(h.CumulativeCounts(), (std::vector<uint64_t>{1, 3, 4}));
  // Rank 2.5 of 5 falls in (1, 2] holding ranks 2..3: 1 + (2.5 - 1) / 2.
  EXPECT_DOUBLE_EQ(h.Quantile(0.5), 1.75);
  EXPECT_DOUBLE_EQ(h.Quantile(1.0), 4.0);  // above the last bound: that bound
  EXPECT_DOUBLE_EQ(Histogram({1}).Quantile(0.5), 0.0);
}

TEST(MetricsTest, RenderingParsesWithAwkwardLabels) {
  MetricsSnapshot s;
  s.state = "serving";
  s.serving = true;
  s.submitted = 4;
  s.completed = 2;
  s.failed_by_reason["Cancelled"] = 1;
  s.refused_by_reason["busy"] = 1;
  s.ttft_seconds.Observe(0.02);
  s.ttft_seconds.Observe(100);
  WorkerFigures w;
  w.id = "host \"a\"\\gpu\n0";
  w.device = "cpu";
  w.stage = 0;
  w.step_p50_micros = 1500;
  w.steps_total = 7;
  s.workers.push_back(w);
  WorkerFigures spare;
  spare.id = "spare";
  s.workers.push_back(spare);
  const Exposition e = ParsePrometheus(RenderPrometheus(s));
  EXPECT_EQ(e.Value("xcpipe_requests_submitted_total"), 4);
  EXPECT_EQ(e.Value("xcpipe_requests_failed_total", {{"reason", "Cancelled"}}), 1);
  EXPECT_EQ(e.Value("xcpipe_time_to_first_token_seconds_count"), 2);
  EXPECT_EQ(e.Value("xcpipe_time_to_first_token_seconds_bucket", {{"le", "0.025"}}), 1);
  EXPECT_EQ(e.Value("xcpipe_worker_step_seconds", {{"worker", w.id}, {"quantile", "0.5"}}), 0.0015);
  EXPECT_EQ(e.Value("xcpipe_worker_step_seconds_count", {{"worker", w.id}}), 7);
  EXPECT_EQ(e.Value("xcpipe_worker_up", {{"worker", "spare"}, {"stage", "none"}}), 1);
}

TEST(MetricsTest, MemoryWarningAboveTheThreshold) {
  nlohmann::json status = {{"state", "serving"}, {"workers", nlohmann::json::array()}};
  status["workers"].push_back({{"id", "full"}, {"state", "serving"}, {"stage", 0}, {"used_bytes", 95}, {"capacity_bytes", 100}});
  status["workers"].push_back({{"id", "fine"}, {"state", "serving"}, {"stage", 1}, {"used_bytes", 50}, {"capacity_bytes", 100}});
  status["workers"].push_back({{"id", "gone"}, {"state", "lost"}, {"stage", -1}, {"used_bytes", 99}, {"capacity_bytes", 100}});
  const auto warnings = MemoryWarnings(status);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("worker full"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find("95%"), std::string::npos) << warnings[0];
  EXPECT_NE(FormatStatusTable(status).find(warnings[0]), std::string::npos);
}

// Without workers the coordinator never serves: alive, not ready, metrics say so.
TEST(MetricsTest, NotReadyUntilServing) {
  if (!fs::exists(ModelDir())) GTEST_SKIP() << "fixtures not found at " << ModelDir();
  CoordinatorOptions o;
  o.model_dir = ModelDir();
  o.listen = "tcp://127.0.0.1:*";
  o.metrics_listen = "127.0.0.1:0";
  o.expect_workers = 1;
  Coordinator coordinator(o);
  auto bound = coordinator.Bind();
  ASSERT_TRUE(bound.ok()) << bound.status().ToString();
  const std::string metrics = coordinator.metrics_address();
  ASSERT_FALSE(metrics.empty());
  EXPECT_EQ(metrics.rfind("127.0.0.1:", 0), 0u) << metrics;
  std::thread run([&] { coordinator.Run(); });
  std::this_thread::sleep_for(300ms);  // a few loop ticks
  EXPECT_EQ(HttpRequest(metrics, "/healthz").status, 200);
  const auto ready = HttpRequest(metrics, "/readyz");
  EXPECT_EQ(ready.status, 503);
  EXPECT_NE(ready.body.find("waiting-for-workers"), std::string::npos) << ready.body;
  const auto scrape = HttpRequest(metrics, "/metrics");
  EXPECT_EQ(scrape.status, 200);
  EXPECT_EQ(scrape.content_type.rfind("text/plain; version=0.0.4", 0), 0u) << scrape.content_type;
  const Exposition e = ParsePrometheus(scrape.body);
  EXPECT_EQ(e.Value("xcpipe_ready"), 0);
  EXPECT_EQ(e.Value("xcpipe_cluster_state", {{"state", "waiting-for-workers"}}), 1);
  EXPECT_EQ(HttpRequest(metrics, "/nowhere").status, 404);
  EXPECT_EQ(HttpRequest(metrics, "/metrics", http::verb::post).status, 405);
  coordinator.RequestStop();
  run.join();
}

TEST(MetricsTest, ScrapedFiguresAgreeWithTheWorkDone) {
  if (!fs::exists(ModelDir())) GTEST_SKIP() << "fixtures not found at " << ModelDir();
  LocalClusterOptions o;
  o.model_dir = ModelDir();
  o.workers = 2;
  o.quiet_workers = true;
  o.worker_binary = testing::BinDir() / "xcpipe-worker";
  o.coordinator.metrics_listen = "127.0.0.1:0";
  auto cluster = LocalCluster::Start(o);
  ASSERT_TRUE(cluster.ok()) << cluster.status().ToString();
  const std::string metrics = (*cluster)->metrics_address();
  ASSERT_FALSE(metrics.empty());
  EXPECT_EQ(HttpRequest(metrics, "/readyz").status, 200);

  constexpr int kRequests = 3;
  auto client = Client::Connect((*cluster)->address(), 10s);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  uint64_t tokens = 0;
  for (int i = 0; i < kRequests; ++i) {
    GenerateRequest r;
    r.prompt_json = nlohmann::json("Say something short, number " + std::to_string(i) + ".").dump();
    r.max_new_tokens = 4 + i;
    auto result = (*client)->Generate(r, 120s);
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    ASSERT_TRUE(result->error.empty()) << result->error;
    tokens += result->token_ids.at(0).size();
  }
  ASSERT_GT(tokens, 0u);

  // Heartbeats (every 250 ms) carry the workers' figures; snapshots are published every 200 ms.
  Exposition e;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (true) {
    const auto scrape = HttpRequest(metrics, "/metrics");
    ASSERT_EQ(scrape.status, 200);
    e = ParsePrometheus(scrape.body);
    if (HasFailure()) return;
    bool fresh = e.Value("xcpipe_requests_completed_total") == kRequests;
    for (const auto* s : e.All("xcpipe_worker_step_seconds_count")) fresh &= s->value > 0;
    if (fresh || std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(200ms);
  }
  EXPECT_EQ(e.Value("xcpipe_ready"), 1);
  EXPECT_EQ(e.Value("xcpipe_requests_submitted_total"), kRequests);
  EXPECT_EQ(e.Value("xcpipe_requests_completed_total"), kRequests);
  EXPECT_TRUE(e.All("xcpipe_requests_failed_total").empty());
  EXPECT_EQ(e.Value("xcpipe_time_to_first_token_seconds_count"), kRequests);
  EXPECT_GT(e.Value("xcpipe_time_to_first_token_seconds_sum"), 0);
  EXPECT_EQ(e.Value("xcpipe_tokens_per_second_count"), kRequests);
  EXPECT_EQ(e.Value("xcpipe_queue_depth"), 0);
  // Each prompt starts with the chat template's system text: computed once, copied into each.
  EXPECT_EQ(e.Value("xcpipe_prefix_cache_hits_total"), kRequests);
  EXPECT_GT(e.Value("xcpipe_prefix_cache_head_tokens"), 0);
  EXPECT_EQ(e.Value("xcpipe_prefix_cache_rows_saved_total"), kRequests * e.Value("xcpipe_prefix_cache_head_tokens"));
  // One step per generated token at least (the shared head's prefill is one more); every round
  // trip holds the compute of both stages and some hand-off time.
  const double steps = e.Value("xcpipe_step_round_trip_seconds_count");
  EXPECT_GE(steps, static_cast<double>(tokens));
  const double compute = e.Value("xcpipe_step_compute_seconds_total");
  EXPECT_GT(compute, 0);
  EXPECT_GT(e.Value("xcpipe_step_round_trip_seconds_sum"), compute);

  // Per stage: both stages stepped once per generated token at least (prefill + decode steps).
  std::map<int, std::string> worker_of_stage;
  for (const auto* s : e.All("xcpipe_worker_up")) {
    if (s->labels.at("stage") != "none") worker_of_stage[std::stoi(s->labels.at("stage"))] = s->labels.at("worker");
  }
  ASSERT_EQ(worker_of_stage.size(), 2u);
  for (const auto& [stage, worker] : worker_of_stage) {
    SCOPED_TRACE("stage " + std::to_string(stage));
    const std::map<std::string, std::string> who = {{"worker", worker}};
    EXPECT_EQ(e.Value("xcpipe_worker_up", who), 1);
    EXPECT_GE(e.Value("xcpipe_worker_step_seconds_count", who), static_cast<double>(tokens));
    EXPECT_GT(e.Value("xcpipe_worker_step_seconds_sum", who), 0);
    const double p50 = e.Value("xcpipe_worker_step_seconds", {{"worker", worker}, {"quantile", "0.5"}});
    const double p99 = e.Value("xcpipe_worker_step_seconds", {{"worker", worker}, {"quantile", "0.99"}});
    EXPECT_GT(p50, 0);
    EXPECT_GE(p99, p50);
    const double idle = e.Value("xcpipe_worker_idle_ratio", who);
    EXPECT_GE(idle, 0);
    EXPECT_LT(idle, 1);  // it computed something within the window
    EXPECT_GT(e.Value("xcpipe_worker_memory_used_bytes", who), 0);
    EXPECT_GE(e.Value("xcpipe_worker_memory_capacity_bytes", who), e.Value("xcpipe_worker_memory_used_bytes", who));
    EXPECT_GT(e.Value("xcpipe_worker_memory_bytes", {{"worker", worker}, {"category", "weights"}}), 0);
    EXPECT_GT(e.Value("xcpipe_worker_memory_planned_bytes", {{"worker", worker}, {"category", "weights"}}), 0);
    EXPECT_GT(e.Value("xcpipe_worker_memory_planned_bytes", {{"worker", worker}, {"category", "kv"}}), 0);
    EXPECT_GT(e.Value("xcpipe_worker_kv_budget_bytes", who), 0);
    // Every sequence finished: what stays reserved is the shared prompt head, all of it stepped.
    EXPECT_EQ(e.Value("xcpipe_worker_kv_reserved_bytes", who), e.Value("xcpipe_worker_kv_used_bytes", who));
    EXPECT_EQ(e.Value("xcpipe_worker_queued_steps", who), 0);
    const double sent = e.Value("xcpipe_worker_sent_bytes_total", who);
    if (stage == 0) EXPECT_GT(sent, 0);  // hidden states to stage 1
    else EXPECT_EQ(sent, 0);             // the last stage sends tokens over the control plane only
  }

  // The status reply (what `xcpipe status --json` prints) carries the same figures.
  auto status = (*client)->GetStatus(10s);
  ASSERT_TRUE(status.ok()) << status.status().ToString();
  const auto& s = *status;
  EXPECT_EQ(s["submitted"].get<uint64_t>(), static_cast<uint64_t>(kRequests));
  EXPECT_EQ(s["completed"].get<uint64_t>(), static_cast<uint64_t>(kRequests));
  EXPECT_GT(s["ttft_p50_ms"].get<double>(), 0);
  EXPECT_GE(s["ttft_p99_ms"].get<double>(), s["ttft_p50_ms"].get<double>());
  EXPECT_GT(s["tokens_per_s_p50"].get<double>(), 0);
  EXPECT_EQ(s["metrics_address"].get<std::string>(), metrics);
  EXPECT_TRUE(s["failed_by_reason"].empty());
  EXPECT_EQ(s["steps_completed"].get<uint64_t>(), static_cast<uint64_t>(steps));
  EXPECT_NEAR(s["step_compute_ms_total"].get<double>(), compute * 1e3, 1e-6 * compute * 1e3 + 1e-3);
  EXPECT_GT(s["step_round_trip_ms_total"].get<double>(), s["step_compute_ms_total"].get<double>());
  EXPECT_GT(s["step_round_trip_p50_ms"].get<double>(), 0);
  int stages_seen = 0;
  for (const auto& w : s["workers"]) {
    if (w["stage"].get<int>() < 0) continue;
    ++stages_seen;
    SCOPED_TRACE(w.dump());
    EXPECT_GT(w["step_p50_ms"].get<double>(), 0);
    EXPECT_GE(w["step_p99_ms"].get<double>(), w["step_p50_ms"].get<double>());
    EXPECT_GT(w["steps_in_window"].get<uint64_t>(), 0u);
    EXPECT_GE(w["idle_fraction"].get<double>(), 0);
    EXPECT_LE(w["idle_fraction"].get<double>(), 1);
    EXPECT_GT(w["used_by_category"]["weights"].get<uint64_t>(), 0u);
    EXPECT_GT(w["planned_by_category"]["weights"].get<uint64_t>(), 0u);
    EXPECT_GT(w["planned_by_category"]["kv"].get<uint64_t>(), 0u);
    EXPECT_GT(w["capacity_bytes"].get<uint64_t>(), w["used_bytes"].get<uint64_t>());
    EXPECT_GT(w["kv_budget_bytes"].get<uint64_t>(), 0u);
    // Only the shared prompt head's KV is left in use.
    EXPECT_DOUBLE_EQ(w["kv_utilisation"].get<double>(), static_cast<double>(w["kv_used_bytes"].get<uint64_t>()) /
                                                         static_cast<double>(w["kv_budget_bytes"].get<uint64_t>()));
    EXPECT_LT(w["kv_utilisation"].get<double>(), 0.05);
    EXPECT_TRUE(w.contains("bytes_sent"));
    EXPECT_EQ(w["queued_steps"].get<uint64_t>(), 0u);
  }
  EXPECT_EQ(stages_seen, 2);
  const std::string table = FormatStatusTable(s);
  EXPECT_NE(table.find("per stage"), std::string::npos) << table;
  EXPECT_NE(table.find("step p50/p99 ms"), std::string::npos) << table;
  EXPECT_NE(table.find("through the pipeline; mean round trip"), std::string::npos) << table;
}

}  // namespace
}  // namespace xcpipe::coordinator
