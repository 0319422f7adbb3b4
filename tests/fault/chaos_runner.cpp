// xcpipe-chaos: a seeded chaos run over real processes and real sockets, checked afterwards.
//
// It starts a coordinator process and 4 worker processes on 3 "hosts" (network namespaces on a
// bridge when run as root; loopback pseudo-hosts otherwise): host 1 runs two workers (two
// pipeline stages), host 2 one, host 3 a spare that registers after the first plan. Every
// worker's data plane is reached through a userspace fault proxy of this process (delay,
// jitter, resets). Clients (threads of this process, each speaking the control protocol on its
// own connection) submit a steady mix of text and image prompts with greedy decoding and record
// every message they see. A schedule drawn from the seed applies and heals faults every few
// seconds, at most two at a time:
//
//   kill9_worker, kill9_coordinator, stop_worker (SIGSTOP, then SIGCONT), host_loss (every
//   process of a host killed, its link down), partition_sym, partition_asym (one direction
//   dropped), partition_control (only the control port), packet_loss (5-20%, nft numgen),
//   bandwidth (tc tbf), delay (proxy: delay and jitter), conn_reset (proxy: every data
//   connection of a worker reset), clock_jump (the coordinator's wall clock moved by an hour,
//   through libxcpipe_clock_shift.so), duplicate_identity (a second worker with a serving
//   worker's id), version_skew (a hello of another protocol version).
//
// Kinds that need namespaces are left out of the schedule without root, and the run says so.
// A process that exits by itself is started again, as systemd or the Slurm task loop would; one
// killed by a signal is a violation unless the log shows a known open bug (the README lists them).
// After the schedule it heals everything, lets the clients finish, submits a liveness batch
// (every prompt once) and runs the history checker (chaos_history.h) against a fault-free
// reference taken from the same cluster before the first fault. Everything it creates
// (namespaces, bridge, processes, rules) is removed at the end; the run directory too, unless
// the run failed: then it keeps the seed, the schedule, the history and every process log, and
// prints the one command that replays the seed.
//
// `--scenario KIND` runs one fault of that kind at a fixed moment instead of a random schedule
// and merges a row into <build>/reports/faults.json (the README's fault table). `--sample-s N`
// samples the RSS, open descriptors and threads of every process every N seconds and reports
// the trend (the soak mode of bench/chaos_soak.sh).
//
// Exit codes: 0 the history passed, 6 the checker found violations, 77 the scenario needs root
// (skipped, with the reason), 1 the run itself failed (could not start the cluster, ...).
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "chaos_history.h"
#include "xcpipe/base/subprocess.h"
#include "xcpipe/control/socket.h"
#include "xcpipe/coordinator/client.h"
#include "xcpipe/testing/fault_proxy.h"
#include "xcpipe/testing/fault_report.h"

namespace xcpipe::chaos {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

// Tunables of a run, read in one place.
constexpr uint16_t kControlPort = 7100;         // the coordinator's port on its own address
constexpr uint16_t kFirstDataPort = 7200;        // worker i binds kFirstDataPort + i in its namespace
constexpr int kStepDelayMs = 8;                  // per step: faults land mid-decode on the tiny model
constexpr auto kRequestTimeout = 120s;           // a client's deadline for one request
constexpr auto kGiveUpGrace = 20s;               // beyond it, waiting for the coordinator's own answer
constexpr auto kServingWait = 150s;              // the cluster serving again after the final heal
constexpr int kMaxRetries = coordinator::ClientTimings::kMaxUnavailableRetries;

// SIGINT/SIGTERM: stop applying faults, stop submitting, and clean up (namespaces included).
std::atomic<bool> g_interrupted{false};
extern "C" void OnInterrupt(int) { g_interrupted = true; }

// ---------------------------------------------------------------------------------------------
// Shell and small helpers
// ---------------------------------------------------------------------------------------------

int Sh(const std::string& command) {
  const int rc = std::system((command + " >/dev/null 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

std::string Slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string IpBinary() {
  for (const char* ip : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"})
    if (fs::exists(ip)) return ip;
  return "ip";
}

// A tiny PNG (RGB, stored deflate blocks): the prompts' images, made here so the run needs no
// files beside the model.
std::string MakePng(int width, int height, uint32_t seed) {
  static uint32_t crc_table[256];
  static bool crc_ready = false;
  if (!crc_ready) {
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      crc_table[n] = c;
    }
    crc_ready = true;
  }
  auto crc = [](const std::string& s) {
    uint32_t c = 0xFFFFFFFFu;
    for (unsigned char ch : s) c = crc_table[(c ^ ch) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
  };
  auto be32 = [](uint32_t v) {
    std::string s(4, '\0');
    for (int i = 0; i < 4; ++i) s[i] = static_cast<char>((v >> (24 - 8 * i)) & 0xFF);
    return s;
  };
  auto chunk = [&](const std::string& type, const std::string& data) {
    return be32(static_cast<uint32_t>(data.size())) + type + data + be32(crc(type + data));
  };
  std::string raw;
  std::mt19937 rng(seed);
  for (int y = 0; y < height; ++y) {
    raw.push_back('\0');  // filter: none
    for (int x = 0; x < width; ++x) {
      raw.push_back(static_cast<char>((x * 255 / width + rng() % 16) & 0xFF));
      raw.push_back(static_cast<char>((y * 255 / height) & 0xFF));
      raw.push_back(static_cast<char>((seed * 40 + (x ^ y)) & 0xFF));
    }
  }
  std::string z = "\x78\x01";
  uint32_t a = 1, b = 0;
  for (unsigned char ch : raw) {
    a = (a + ch) % 65521;
    b = (b + a) % 65521;
  }
  for (size_t at = 0; at < raw.size(); at += 65535) {
    const size_t n = std::min<size_t>(65535, raw.size() - at);
    z.push_back(at + n == raw.size() ? '\x01' : '\x00');
    z.push_back(static_cast<char>(n & 0xFF));
    z.push_back(static_cast<char>(n >> 8));
    z.push_back(static_cast<char>(~n & 0xFF));
    z.push_back(static_cast<char>((~n >> 8) & 0xFF));
    z += raw.substr(at, n);
  }
  z += be32((b << 16) | a);
  std::string ihdr = be32(width) + be32(height) + std::string("\x08\x02\x00\x00\x00", 5);
  return std::string("\x89PNG\r\n\x1a\n", 8) + chunk("IHDR", ihdr) + chunk("IDAT", z) + chunk("IEND", "");
}

// ---------------------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------------------

struct Prompt {
  std::string key;
  std::string text;  // with <ImageHere> where the image goes
  std::string image;  // PNG bytes, or empty
};

std::vector<Prompt> Workload() {
  const std::string a = MakePng(64, 48, 1), b = MakePng(40, 40, 2);
  return {{"text-intro", "Hello! Please introduce yourself.", ""},
          {"image-what", "<ImageHere>What is in the picture?", a},
          {"text-poem", "Write a short poem about the sea.", ""},
          {"image-describe", "<ImageHere>Describe the picture in great detail.", b},
          {"text-colours", "List three colours and say why you like them.", ""},
          {"image-colour", "<ImageHere>Which colour dominates this picture?", a}};
}

// Everything every client saw, in one file and in memory. Thread-safe.
class Recorder {
 public:
  Recorder(const fs::path& file, Clock::time_point t0) : out_(file), t0_(t0) {}
  void Add(HistoryEvent e) {
    e.t_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0_).count();
    std::lock_guard<std::mutex> lock(mutex_);
    out_ << ToJson(e).dump() << "\n";
    out_.flush();
    events_.push_back(std::move(e));
  }
  std::vector<HistoryEvent> events() {
    std::lock_guard<std::mutex> lock(mutex_);
    return events_;
  }

 private:
  std::mutex mutex_;
  std::ofstream out_;
  std::vector<HistoryEvent> events_;
  Clock::time_point t0_;
};

// One client connection speaking the control protocol directly (not coordinator::Client, which
// hides repeats and gaps): it delivers the way Client does (repeats a submit on silence, retries
// "not serving yet" within the same budget) and records every message about its requests,
// including messages about requests it has already finished. One thread.
class ChaosClient {
 public:
  ChaosClient(std::string name, std::string endpoint, Recorder& recorder)
      : name_(std::move(name)), endpoint_(std::move(endpoint)), recorder_(recorder) {}

  Status Connect(Ms timeout) {
    auto socket = control::ControlSocket::ConnectDealer(context_, endpoint_, name_ + "-" + std::to_string(getpid()));
    if (!socket.ok()) return socket.status();
    socket_ = std::move(socket).value();
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {  // the coordinator may be down for a moment: say hello again
      capnp::MallocMessageBuilder m;
      auto h = m.initRoot<proto::Envelope>().initHello();
      h.setProtocolVersion(proto::K_PROTOCOL_VERSION);
      h.setRole(proto::Role::CLIENT);
      h.initCapabilities().setPid(static_cast<uint32_t>(getpid()));
      if (Status st = socket_->Send(m, {}, 1000ms); !st.ok()) return st;
      const auto until = std::min(deadline, Clock::now() + 1000ms);
      while (Clock::now() < until) {
        auto in = socket_->Receive(100ms);
        if (!in.ok()) return in.status();
        if (in->has_value() && (*in)->message->envelope().which() == proto::Envelope::WELCOME) return OkStatus();
      }
    }
    return UnavailableError(name_ + ": no welcome from " + endpoint_);
  }

  // Submits `prompt` and waits for its ending (or gives up); records everything. Returns the
  // final tokens of a completed request.
  std::optional<std::vector<int64_t>> Generate(const Prompt& prompt, uint32_t max_new_tokens, const std::string& phase,
                                               std::chrono::seconds timeout = kRequestTimeout) {
    const uint64_t id = next_request_++;
    capnp::MallocMessageBuilder m;
    auto s = m.initRoot<proto::Envelope>().initSubmit();
    s.setRequestId(id);
    s.setPromptJson(nlohmann::json(prompt.text).dump());
    auto images = s.initImages(prompt.image.empty() ? 0 : 1);
    if (!prompt.image.empty())
      images.set(0, kj::arrayPtr(reinterpret_cast<const kj::byte*>(prompt.image.data()), prompt.image.size()));
    s.setMaxNewTokens(max_new_tokens);
    s.setDeadlineMs(static_cast<uint32_t>(std::chrono::duration_cast<Ms>(timeout).count()));
    auto sp = s.initSampling();
    const coordinator::Sampling greedy;
    sp.setGreedy(true);
    sp.setTemperature(greedy.temperature);
    sp.setTopK(greedy.top_k);
    sp.setTopP(greedy.top_p);
    sp.setRepetitionPenalty(greedy.repetition_penalty);
    sp.setSeed(0);
    HistoryEvent submit = Base(id, "submit");
    submit.prompt_key = prompt.key;
    submit.max_new_tokens = max_new_tokens;
    submit.greedy = true;
    submit.phase = phase;
    recorder_.Add(submit);
    const auto start = Clock::now();
    const auto give_up = start + timeout + kGiveUpGrace;
    auto last_heard = start;
    bool accepted = false;
    int retries = 0;
    (void)socket_->Send(m, {}, 1000ms);
    while (true) {
      const auto now = Clock::now();
      if (now > give_up) {
        recorder_.Add(Base(id, "gave_up"));
        return std::nullopt;
      }
      if (now - last_heard > (accepted ? coordinator::ClientTimings::kResubmitAfterSilence
                                       : coordinator::ClientTimings::kResubmitUnacknowledged)) {
        (void)socket_->Send(m, {}, 1000ms);
        last_heard = now;
      }
      auto in = socket_->Receive(100ms);
      if (!in.ok()) {  // a malformed message: the socket itself is fine
        std::this_thread::sleep_for(10ms);
        continue;
      }
      if (!in->has_value()) continue;
      auto env = (*in)->message->envelope();
      if (env.which() == proto::Envelope::ERROR) {
        auto err = env.getError();
        const uint64_t about = err.getRequestId() == 0 ? id : err.getRequestId();
        HistoryEvent e = Base(about, "error");
        e.finish_reason = std::string(StatusCodeName(wire::FromWire(err.getCode())));
        e.error = err.getMessage().cStr();
        recorder_.Add(e);
        if (about == id) return std::nullopt;
        continue;
      }
      if (env.which() != proto::Envelope::TOKEN_EVENT) continue;
      auto t = env.getTokenEvent();
      const uint64_t about = t.getRequestId();
      HistoryEvent e = Base(about, "tokens");
      e.offset = t.getOffset();
      for (int64_t x : t.getTokens()) e.tokens.push_back(x);
      const bool retry = t.getDone() && t.getRetryAfterMs() > 0 && (about != id || retries < kMaxRetries);
      if (t.getAccepted()) e.kind = "accepted";
      else if (retry) e.kind = "retry";
      else if (t.getDone()) e.kind = "done";
      if (t.getDone()) {
        e.finish_reason = t.getFinishReason().cStr();
        e.error = t.hasError() ? t.getError().cStr() : "";
        for (int64_t x : t.getAllTokens()) e.all_tokens.push_back(x);
        e.retry_after_ms = t.getRetryAfterMs();
      }
      recorder_.Add(e);
      if (about != id) continue;
      last_heard = Clock::now();
      accepted = true;
      if (e.kind == "retry") {
        ++retries;
        std::this_thread::sleep_for(std::min<Ms>(Ms(t.getRetryAfterMs()), coordinator::ClientTimings::kMaxRetryBackoff));
        (void)socket_->Send(m, {}, 1000ms);
        last_heard = Clock::now();
        continue;
      }
      if (e.kind == "done") {
        if (!e.error.empty()) return std::nullopt;
        return e.all_tokens;
      }
    }
  }

  // Reads (and records) whatever still arrives for `duration`: endings repeated late.
  void Drain(Ms duration) {
    const auto until = Clock::now() + duration;
    while (Clock::now() < until) {
      auto in = socket_->Receive(50ms);
      if (!in.ok() || !in->has_value()) continue;
      auto env = (*in)->message->envelope();
      if (env.which() != proto::Envelope::TOKEN_EVENT) continue;
      auto t = env.getTokenEvent();
      HistoryEvent e = Base(t.getRequestId(), t.getAccepted() ? "accepted" : t.getDone() ? "done" : "tokens");
      e.offset = t.getOffset();
      for (int64_t x : t.getTokens()) e.tokens.push_back(x);
      if (t.getDone()) {
        e.finish_reason = t.getFinishReason().cStr();
        e.error = t.hasError() ? t.getError().cStr() : "";
        for (int64_t x : t.getAllTokens()) e.all_tokens.push_back(x);
        e.retry_after_ms = t.getRetryAfterMs();
        if (e.retry_after_ms > 0) e.kind = "retry";
      }
      recorder_.Add(e);
    }
  }

 private:
  HistoryEvent Base(uint64_t request, const std::string& kind) const {
    HistoryEvent e;
    e.client = name_;
    e.request = request;
    e.kind = kind;
    return e;
  }
  std::string name_, endpoint_;
  Recorder& recorder_;
  zmq::context_t context_;
  std::unique_ptr<control::ControlSocket> socket_;
  uint64_t next_request_ = 1;
};

// ---------------------------------------------------------------------------------------------
// Hosts: network namespaces on a bridge (root), or loopback pseudo-hosts
// ---------------------------------------------------------------------------------------------

// Host 0 is this process's namespace (the coordinator, the clients and the proxies, at .254 on
// the bridge); hosts 1..N are namespaces with one veth each. The destructor deletes them and the
// bridge (and with them every rule and qdisc inside). Without namespaces every host is
// 127.0.0.1 and the network faults are unavailable.
class Lab {
 public:
  Lab(bool netns, int hosts) : netns_(netns), hosts_(hosts) {
    if (!netns_) {
      ok_ = true;
      return;
    }
    RemoveStale();
    const int id = getpid() % 100000;
    tag_ = "xch" + std::to_string(id);
    subnet_ = "10.79." + std::to_string(20 + id % 200);
    ok_ = Sh("ip link add " + Bridge() + " type bridge") == 0 && Sh("ip link set " + Bridge() + " up") == 0 &&
          Sh("ip addr add " + subnet_ + ".254/24 dev " + Bridge()) == 0;
    for (int i = 1; ok_ && i <= hosts; ++i) {
      const std::string ns = Ns(i);
      ok_ = Sh("ip netns add " + ns) == 0 && Sh("ip link add " + Veth(i) + " type veth peer name eth0 netns " + ns) == 0 &&
            Sh("ip link set " + Veth(i) + " master " + Bridge() + " up") == 0 &&
            Sh("ip -n " + ns + " addr add " + HostAddress(i) + "/24 dev eth0") == 0 &&
            Sh("ip -n " + ns + " link set eth0 up") == 0 && Sh("ip -n " + ns + " link set lo up") == 0 &&
            Sh("ip netns exec " + ns + " nft add table inet chaos") == 0 &&
            Sh("ip netns exec " + ns + " nft add chain inet chaos in '{ type filter hook input priority 0; }'") == 0 &&
            Sh("ip netns exec " + ns + " nft add chain inet chaos out '{ type filter hook output priority 0; }'") == 0;
      created_ = i;
    }
  }
  ~Lab() {
    if (!netns_) return;
    for (int i = 1; i <= std::max(created_, hosts_); ++i) Sh("ip netns del " + Ns(i));
    Sh("ip link del " + Bridge());
  }
  Lab(const Lab&) = delete;
  Lab& operator=(const Lab&) = delete;

  // Namespaces and bridges of earlier runs whose runner is gone (killed before it could clean
  // up): their processes are killed and they are deleted. Only names this runner makes
  // ("xch<pid>h<host>", "br-xch<pid>") are touched.
  static void RemoveStale() {
    std::error_code ec;
    std::set<std::string> tags;
    for (auto it = fs::directory_iterator("/run/netns", ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
      const std::string name = it->path().filename().string();
      const auto h = name.rfind('h');
      if (name.rfind("xch", 0) != 0 || h == std::string::npos || h <= 3) continue;
      const std::string pid = name.substr(3, h - 3);
      if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
      // The tag is the pid modulo 100000: a live runner of the same tag keeps its namespaces.
      bool alive = false;
      for (auto p = fs::directory_iterator("/proc", ec); !ec && p != fs::directory_iterator(); p.increment(ec)) {
        const std::string n = p->path().filename().string();
        if (n.find_first_not_of("0123456789") == std::string::npos && std::stoll(n) % 100000 == std::stoll(pid) &&
            Slurp(p->path() / "comm").rfind("xcpipe-chaos", 0) == 0)
          alive = true;
      }
      if (alive) continue;
      Sh("ip netns pids " + name + " | xargs -r kill -9");
      Sh("ip netns del " + name);
      tags.insert("xch" + pid);
    }
    for (const auto& tag : tags) Sh("ip link del br-" + tag);
  }

  bool ok() const { return ok_; }
  bool netns() const { return netns_; }
  std::string HostAddress(int host) const {
    return netns_ ? subnet_ + "." + std::to_string(host) : std::string("127.0.0.1");
  }
  std::string CoordinatorAddress() const { return netns_ ? subnet_ + ".254" : std::string("127.0.0.1"); }
  std::vector<std::string> Prefix(int host) const {
    if (!netns_ || host == 0) return {};  // host 0: this namespace
    return {IpBinary(), "netns", "exec", Ns(host)};
  }
  std::string Ns(int host) const { return tag_ + "h" + std::to_string(host); }

  // Replaces the host's filter rules (nft rule bodies for its input and output hooks).
  bool SetRules(int host, const std::vector<std::string>& in, const std::vector<std::string>& out) {
    bool ok = ClearRules(host);
    // One quoted argument: rules hold '<' and '!='.
    for (const auto& r : in) ok = ok && Sh("ip netns exec " + Ns(host) + " nft add rule inet chaos in '" + r + "'") == 0;
    for (const auto& r : out) ok = ok && Sh("ip netns exec " + Ns(host) + " nft add rule inet chaos out '" + r + "'") == 0;
    return ok;
  }
  bool ClearRules(int host) {
    return Sh("ip netns exec " + Ns(host) + " nft flush chain inet chaos in") == 0 &&
           Sh("ip netns exec " + Ns(host) + " nft flush chain inet chaos out") == 0;
  }
  bool SetLink(int host, bool up) { return Sh("ip link set " + Veth(host) + (up ? " up" : " down")) == 0; }
  // A token bucket on the host's outgoing traffic.
  bool SetRate(int host, int kbit) {
    return Sh("ip netns exec " + Ns(host) + " tc qdisc replace dev eth0 root tbf rate " + std::to_string(kbit) +
              "kbit burst 16kb latency 500ms") == 0;
  }
  bool ClearRate(int host) { return Sh("ip netns exec " + Ns(host) + " tc qdisc del dev eth0 root") == 0; }

 private:
  std::string Bridge() const { return "br-" + tag_; }
  std::string Veth(int host) const { return "v" + tag_ + "h" + std::to_string(host); }
  bool netns_ = false, ok_ = false;
  int hosts_ = 0, created_ = 0;
  std::string tag_, subnet_;
};

// ---------------------------------------------------------------------------------------------
// The faults and the schedule
// ---------------------------------------------------------------------------------------------

const std::vector<std::string>& AllKinds() {
  static const std::vector<std::string> kinds = {
      "kill9_worker",   "kill9_coordinator", "stop_worker",  "host_loss", "partition_sym", "partition_asym",
      "partition_control", "packet_loss",    "bandwidth",    "delay",     "conn_reset",    "clock_jump",
      "duplicate_identity", "version_skew"};
  return kinds;
}
bool NeedsNamespaces(const std::string& kind) {
  return kind == "host_loss" || kind.rfind("partition", 0) == 0 || kind == "packet_loss" || kind == "bandwidth";
}

struct Fault {
  int id = 0;
  int64_t at_ms = 0;    // after the chaos phase starts
  int64_t hold_ms = 0;  // until the heal
  std::string kind;
  int target = 0;       // worker index, host number, or 0 (coordinator / everything)
  nlohmann::json params;
  std::set<std::string> locks;  // what it holds while active (no other fault touches it)
  nlohmann::json ToJson() const {
    return {{"id", id}, {"at_ms", at_ms}, {"hold_ms", hold_ms}, {"kind", kind}, {"target", target}, {"params", params}};
  }
};

struct WorkerSpec {
  std::string id;
  int host = 0;
  bool spare = false;  // started once the first plan serves
};

std::vector<WorkerSpec> Topology() {
  return {{"h1-a", 1, false}, {"h1-b", 1, false}, {"h2-a", 2, false}, {"h3-a", 3, true}};
}

// The whole schedule follows from the seed (kinds, targets, moments, holds, parameters), so a
// seed replays the same schedule; what the cluster does in between is up to it.
std::vector<Fault> DrawSchedule(uint64_t seed, int64_t duration_ms, const std::vector<std::string>& kinds,
                                int max_active, int64_t min_restart_ms) {
  std::mt19937_64 rng(seed);
  auto uniform = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  const auto topology = Topology();
  std::vector<Fault> out;
  struct Busy {
    int64_t until;
    std::set<std::string> locks;
  };
  std::vector<Busy> active;
  int64_t t = 2000;
  while (t < duration_ms - 1000 && !kinds.empty()) {
    std::erase_if(active, [&](const Busy& b) { return b.until <= t; });
    if (static_cast<int>(active.size()) < max_active) {
      for (int attempt = 0; attempt < 12; ++attempt) {
        Fault f;
        f.kind = kinds[static_cast<size_t>(uniform(0, static_cast<int64_t>(kinds.size()) - 1))];
        f.at_ms = t;
        f.hold_ms = uniform(1000, 5000);
        const int worker = static_cast<int>(uniform(0, static_cast<int64_t>(topology.size()) - 1));
        const int host = static_cast<int>(uniform(1, 3));
        if (f.kind == "kill9_worker" || f.kind == "stop_worker" || f.kind == "conn_reset" || f.kind == "delay" ||
            f.kind == "duplicate_identity") {
          f.target = worker;
          f.locks = {"w" + std::to_string(worker), "p" + std::to_string(worker)};
          if (f.kind == "kill9_worker" || f.kind == "stop_worker") f.locks.insert("h" + std::to_string(topology[worker].host));
          if (f.kind == "duplicate_identity") f.locks.insert("duplicate");  // one impostor at a time
        } else if (f.kind == "kill9_coordinator" || f.kind == "clock_jump" || f.kind == "version_skew") {
          f.locks = {"coordinator"};
        } else {
          f.target = host;
          f.locks = {"h" + std::to_string(host), "net" + std::to_string(host)};
          if (f.kind == "host_loss")
            for (size_t w = 0; w < topology.size(); ++w)
              if (topology[w].host == host) f.locks.insert("w" + std::to_string(w));
        }
        if (f.kind == "kill9_coordinator") f.hold_ms = uniform(300, 3000);
        if ((f.kind == "kill9_worker" || f.kind == "host_loss") && f.hold_ms < min_restart_ms)
          f.hold_ms = uniform(min_restart_ms, std::max<int64_t>(min_restart_ms, 5000));
        if (f.kind == "conn_reset" || f.kind == "version_skew") f.hold_ms = 0;
        if (f.kind == "partition_asym") f.params["drop"] = uniform(0, 1) ? "out" : "in";
        if (f.kind == "packet_loss") f.params["percent"] = uniform(5, 20);
        if (f.kind == "bandwidth") f.params["kbit"] = uniform(256, 4096);
        if (f.kind == "delay") {
          f.params["delay_ms"] = uniform(5, 40);
          f.params["jitter_ms"] = uniform(0, 20);
        }
        if (f.kind == "clock_jump") f.params["seconds"] = uniform(0, 1) ? 3600 : -3600;
        bool free = true;
        for (const auto& b : active)
          for (const auto& l : f.locks) free = free && !b.locks.count(l);
        if (!free) continue;
        f.id = static_cast<int>(out.size()) + 1;
        active.push_back({f.at_ms + f.hold_ms + 500, f.locks});
        out.push_back(f);
        break;
      }
    }
    t += uniform(1500, 4000);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The cluster: processes, proxies and the faults applied to them
// ---------------------------------------------------------------------------------------------

struct Options {
  uint64_t seed = 0;
  int duration_s = 60;
  int clients = 3;
  uint32_t max_new_tokens = 24;
  int max_active = 2;
  std::vector<std::string> kinds;  // empty: all available
  std::vector<std::string> exclude;  // drawn from `kinds` minus these
  std::string scenario;            // one fault at a fixed moment, a fault-table row
  double sample_s = 0;             // soak: resource samples every this many seconds
  int64_t min_restart_ms = 0;      // a killed worker or host comes back no sooner than this
  bool keep = false;
  bool force_loopback = false;
  fs::path bin_dir, model_dir, out_dir, report_dir;
  std::string command_line;        // to print the replay command
};

struct Proc {
  std::string name;
  int host = 0;
  std::vector<std::string> argv;  // without the namespace prefix
  std::vector<std::string> env;
  std::unique_ptr<Subprocess> process;
  bool stopped = false;
  int starts = 0;
};

class Cluster {
 public:
  Cluster(const Options& options, Lab& lab, std::ostream& log) : o_(options), lab_(lab), log_(log) {}
  ~Cluster() { StopAll(); }

  std::string address() const { return "tcp://" + lab_.CoordinatorAddress() + ":" + std::to_string(port_); }

  Status Start() {
    fs::create_directories(o_.out_dir / "logs");
    port_ = kControlPort;
    if (!lab_.netns()) {
      auto p = testing::PickFreePort();
      if (!p.ok()) return p.status();
      port_ = *p;
    }
    // The coordinator's wall clock can be moved through this file (clock_jump).
    clock_file_ = o_.out_dir / "coordinator-clock-shift";
    {
      std::ofstream f(clock_file_, std::ios::binary);
      const int64_t zero = 0;
      f.write(reinterpret_cast<const char*>(&zero), sizeof zero);
    }
    Proc c;
    c.name = "coordinator";
    c.argv = {(o_.bin_dir / "xcpipe-coordinator").string(), "--model", o_.model_dir.string(), "--listen", address(),
              "--expect-workers", "3", "--worker-wait-s", "600", "--max-sequences", "8"};
    const fs::path shim = o_.bin_dir / "libxcpipe_clock_shift.so";
    if (fs::exists(shim)) c.env = {"LD_PRELOAD=" + shim.string(), "XCPIPE_CLOCK_SHIFT_FILE=" + clock_file_.string()};
    procs_.push_back(std::move(c));
    const auto topology = Topology();
    for (size_t i = 0; i < topology.size(); ++i) {
      uint16_t data_port = static_cast<uint16_t>(kFirstDataPort + i);
      if (!lab_.netns()) {
        auto p = testing::PickFreePort();
        if (!p.ok()) return p.status();
        data_port = *p;
      }
      auto proxy = testing::FaultProxy::Start({.listen_host = lab_.CoordinatorAddress(),
                                               .target_host = lab_.HostAddress(topology[i].host),
                                               .target_port = data_port,
                                               .seed = o_.seed + i,
                                               .name = "data-" + topology[i].id});
      if (!proxy.ok()) return proxy.status();
      Proc w;
      w.name = topology[i].id;
      w.host = topology[i].host;
      w.argv = {(o_.bin_dir / "xcpipe-worker").string(), "--coordinator", address(), "--worker-id", topology[i].id,
                "--device", "cpu", "--threads", "1", "--data-host", lab_.HostAddress(topology[i].host), "--data-port",
                std::to_string(data_port), "--data-advertise", (*proxy)->address(), "--inject-step-delay-ms",
                std::to_string(kStepDelayMs)};
      proxies_.push_back(std::move(proxy).value());
      procs_.push_back(std::move(w));
    }
    if (Status st = Launch(0); !st.ok()) return st;
    for (size_t i = 0; i < topology.size(); ++i)
      if (!topology[i].spare)
        if (Status st = Launch(i + 1); !st.ok()) return st;
    if (!WaitServing(180s)) return UnavailableError("the cluster did not start serving within 180 s");
    for (size_t i = 0; i < topology.size(); ++i)
      if (topology[i].spare)
        if (Status st = Launch(i + 1); !st.ok()) return st;
    for (int i = 0; i < 100; ++i) {  // the spare registered
      auto s = GetStatus();
      if (s && s->contains("workers") && (*s)["workers"].size() == topology.size()) return OkStatus();
      std::this_thread::sleep_for(100ms);
    }
    return UnavailableError("the spare worker did not register");
  }

  std::optional<nlohmann::json> GetStatus(Ms timeout = 3000ms) {
    auto client = coordinator::Client::Connect(address(), timeout);
    if (!client.ok()) return std::nullopt;
    auto s = (*client)->GetStatus(timeout);
    if (!s.ok()) return std::nullopt;
    return *s;
  }

  bool WaitServing(std::chrono::seconds timeout) {
    const auto until = Clock::now() + timeout;
    while (Clock::now() < until) {
      auto s = GetStatus(2000ms);
      if (s && (*s)["state"] == "serving") return true;
      std::this_thread::sleep_for(200ms);
    }
    return false;
  }

  // ---- faults ----------------------------------------------------------------------------
  // Each returns what it did ("" when it could not: the reason is logged).
  std::string Apply(const Fault& f) {
    const auto w = static_cast<size_t>(f.target) + 1;  // proc index of worker f.target
    if (f.kind == "kill9_worker") return Kill(w) ? "killed " + procs_[w].name : "";
    if (f.kind == "kill9_coordinator") return Kill(0) ? "killed the coordinator" : "";
    if (f.kind == "stop_worker") {
      if (!Running(w)) return "";
      procs_[w].process->Signal(SIGSTOP);
      procs_[w].stopped = true;
      return "stopped " + procs_[w].name;
    }
    if (f.kind == "host_loss") {
      std::string what = "host " + std::to_string(f.target) + " lost:";
      for (size_t i = 1; i < procs_.size(); ++i)
        if (procs_[i].host == f.target && Kill(i)) what += " " + procs_[i].name;
      lab_.SetLink(f.target, false);
      return what;
    }
    if (f.kind == "partition_sym")
      return lab_.SetRules(f.target, {"iifname eth0 drop"}, {"oifname eth0 drop"}) ? "host partitioned" : "";
    if (f.kind == "partition_asym") {
      const bool out = f.params["drop"] == "out";
      return lab_.SetRules(f.target, out ? std::vector<std::string>{} : std::vector<std::string>{"iifname eth0 drop"},
                           out ? std::vector<std::string>{"oifname eth0 drop"} : std::vector<std::string>{})
                 ? std::string("host's ") + (out ? "outgoing" : "incoming") + " packets dropped"
                 : "";
    }
    if (f.kind == "partition_control") {
      const std::string c = lab_.CoordinatorAddress(), p = std::to_string(port_);
      return lab_.SetRules(f.target, {"iifname eth0 ip saddr " + c + " tcp sport " + p + " drop"},
                           {"oifname eth0 ip daddr " + c + " tcp dport " + p + " drop"})
                 ? "control plane cut"
                 : "";
    }
    if (f.kind == "packet_loss") {
      const std::string pct = std::to_string(f.params["percent"].get<int>());
      std::vector<std::string> in = {"iifname eth0 numgen random mod 100 < " + pct + " drop"};
      std::vector<std::string> out = {"oifname eth0 numgen random mod 100 < " + pct + " drop"};
      if (f.params.value("data_only", false)) {  // the control port keeps every packet
        in = {"iifname eth0 tcp sport != " + std::to_string(port_) + " numgen random mod 100 < " + pct + " drop"};
        out = {"oifname eth0 tcp dport != " + std::to_string(port_) + " numgen random mod 100 < " + pct + " drop"};
      }
      return lab_.SetRules(f.target, in, out) ? pct + "% of packets dropped" : "";
    }
    if (f.kind == "bandwidth")
      return lab_.SetRate(f.target, f.params["kbit"].get<int>()) ? "capped" : "";
    if (f.kind == "delay") {
      testing::FaultPlan plan;
      plan.delay = Ms(f.params["delay_ms"].get<int>());
      plan.jitter = Ms(f.params["jitter_ms"].get<int>());
      proxies_.at(static_cast<size_t>(f.target))->SetPlan(plan);
      return "data link to " + procs_[w].name + " delayed";
    }
    if (f.kind == "conn_reset") {
      proxies_.at(static_cast<size_t>(f.target))->ResetAll();
      return "data connections to " + procs_[w].name + " reset";
    }
    if (f.kind == "clock_jump") return ShiftClock(f.params["seconds"].get<int64_t>()) ? "coordinator clock moved" : "";
    if (f.kind == "duplicate_identity") return StartDuplicate(w);
    if (f.kind == "version_skew") return VersionSkew();
    return "";
  }

  std::string Heal(const Fault& f) {
    const auto w = static_cast<size_t>(f.target) + 1;
    if (f.kind == "kill9_worker") return Launch(w).ok() ? "restarted " + procs_[w].name : "";
    if (f.kind == "kill9_coordinator") return Launch(0).ok() ? "restarted the coordinator" : "";
    if (f.kind == "stop_worker") {
      if (procs_[w].process) procs_[w].process->Signal(SIGCONT);
      procs_[w].stopped = false;
      return "continued " + procs_[w].name;
    }
    if (f.kind == "host_loss") {
      lab_.SetLink(f.target, true);
      std::string what = "host " + std::to_string(f.target) + " back:";
      for (size_t i = 1; i < procs_.size(); ++i)
        if (procs_[i].host == f.target && !Running(i) && Launch(i).ok()) what += " " + procs_[i].name;
      return what;
    }
    if (f.kind.rfind("partition", 0) == 0 || f.kind == "packet_loss")
      return lab_.ClearRules(f.target) ? "rules removed" : "";
    if (f.kind == "bandwidth") return lab_.ClearRate(f.target) ? "cap removed" : "";
    if (f.kind == "delay") {
      proxies_.at(static_cast<size_t>(f.target))->SetPlan({});
      return "delay removed";
    }
    if (f.kind == "clock_jump") return ShiftClock(0) ? "coordinator clock back" : "";
    if (f.kind == "duplicate_identity") return StopDuplicate();
    return "nothing to heal";
  }

  // Everything back: rules, links, caps, proxies, clocks, stopped and dead processes.
  void HealAll() {
    for (int h = 1; lab_.netns() && h <= 3; ++h) {
      lab_.ClearRules(h);
      lab_.ClearRate(h);
      lab_.SetLink(h, true);
    }
    for (auto& p : proxies_) p->SetPlan({});
    ShiftClock(0);
    StopDuplicate();
    for (size_t i = 0; i < procs_.size(); ++i) {
      if (procs_[i].stopped && procs_[i].process) procs_[i].process->Signal(SIGCONT);
      procs_[i].stopped = false;
      if (!Running(i)) (void)Launch(i);
    }
  }

  // Processes that ended without being killed here (name, exit code), started again. Checked
  // every 50 ms during the schedule.
  std::vector<std::string> ReapUnexpected() {
    std::vector<std::string> out;
    for (size_t i = 0; i < procs_.size(); ++i) {
      auto& p = procs_[i];
      if (!p.process || killed_.count(i)) continue;
      auto code = p.process->Wait(0ms);
      if (code.ok()) {
        std::string known;
        if (*code > 128) {
          // Open bugs the README lists: reported as known, not as a new crash.
          const std::string log = Slurp(o_.out_dir / "logs" / (p.name + ".log"));
          const std::string tail = log.substr(log.size() > 4096 ? log.size() - 4096 : 0);
          if (tail.find("Assertion failed: !_io_error (src/stream_engine_base.cpp:331)") != std::string::npos)
            known = " [known: libzmq assertion !_io_error, see the README]";
        }
        out.push_back(p.name + " exited by itself with code " + std::to_string(*code) +
                      (*code > 128 ? " (signal " + std::to_string(*code - 128) + ")" : "") + known + "; restarted");
        // As a supervisor (systemd, the Slurm task loop) would: start it again.
        (void)Launch(i);
      }
    }
    return out;
  }

  // pid per process name, for the resource sampler.
  std::vector<std::pair<std::string, pid_t>> Pids() {
    std::vector<std::pair<std::string, pid_t>> out;
    for (size_t i = 0; i < procs_.size(); ++i)
      if (Running(i)) out.push_back({procs_[i].name, procs_[i].process->pid()});
    return out;
  }
  int restarts() const {
    int n = 0;
    for (const auto& p : procs_) n += std::max(0, p.starts - 1);
    return n;
  }
  // The name of worker `target` (a fault's target: 0 is the first worker).
  std::string worker_name(int target) const { return procs_.at(static_cast<size_t>(target) + 1).name; }
  std::string duplicate_log() const { return Slurp(o_.out_dir / "logs" / "duplicate.log"); }
  bool duplicate_exited(int& code) {
    if (!duplicate_) return false;
    auto c = duplicate_->Wait(0ms);
    if (!c.ok()) return false;
    code = *c;
    return true;
  }
  std::string skew_answer() const { return skew_answer_; }

  void StopAll() {
    StopDuplicate();
    for (size_t i = procs_.size(); i-- > 0;) {
      auto& p = procs_[i];
      if (!p.process) continue;
      p.process->Signal(SIGCONT);
      p.process->Signal(SIGTERM);
    }
    for (size_t i = procs_.size(); i-- > 0;) {
      auto& p = procs_[i];
      if (!p.process) continue;
      if (!p.process->Wait(5s).ok()) {
        p.process->Signal(SIGKILL);
        (void)p.process->Wait(5s);
      }
      p.process.reset();
    }
    proxies_.clear();
  }

 private:
  bool Running(size_t i) const { return procs_[i].process && !killed_.count(i); }

  Status Launch(size_t i) {
    auto& p = procs_[i];
    if (p.process) {  // reap the previous incarnation
      p.process->Signal(SIGKILL);
      (void)p.process->Wait(5s);
      p.process.reset();
    }
    const fs::path log = o_.out_dir / "logs" / (p.name + ".log");
    std::vector<std::string> argv = lab_.Prefix(p.host);
    // The shell only redirects to the log and execs: the pid stays the process's own.
    for (const char* a : {"/bin/sh", "-c", "exec \"$@\" >>\"$0\" 2>&1", log.c_str()}) argv.push_back(a);
    for (const auto& a : p.argv) argv.push_back(a);
    SubprocessOptions so;
    so.extra_env = p.env;
    auto sp = Subprocess::Start(argv, so);
    if (!sp.ok()) return sp.status();
    p.process = std::move(sp).value();
    p.stopped = false;
    ++p.starts;
    killed_.erase(i);
    return OkStatus();
  }

  bool Kill(size_t i) {
    if (!Running(i)) return false;
    procs_[i].process->Signal(SIGKILL);
    (void)procs_[i].process->Wait(5s);
    killed_.insert(i);
    return true;
  }

  bool ShiftClock(int64_t seconds) {
    std::fstream f(clock_file_, std::ios::in | std::ios::out | std::ios::binary);
    const int64_t ns = seconds * 1000000000LL;
    f.write(reinterpret_cast<const char*>(&ns), sizeof ns);
    return static_cast<bool>(f);
  }

  // A second worker process claiming worker `w`'s id (its own data port, same host).
  std::string StartDuplicate(size_t w) {
    StopDuplicate();
    auto argv = lab_.Prefix(procs_[w].host);
    const fs::path log = o_.out_dir / "logs" / "duplicate.log";
    for (const char* a : {"/bin/sh", "-c", "exec \"$@\" >>\"$0\" 2>&1", log.c_str()}) argv.push_back(a);
    for (const auto& a : std::vector<std::string>{(o_.bin_dir / "xcpipe-worker").string(), "--coordinator", address(),
                                                  "--worker-id", procs_[w].name, "--device", "cpu", "--threads", "1",
                                                  "--data-host", lab_.HostAddress(procs_[w].host)})
      argv.push_back(a);
    auto sp = Subprocess::Start(argv);
    if (!sp.ok()) return "";
    duplicate_ = std::move(sp).value();
    return "second worker claiming " + procs_[w].name;
  }
  std::string StopDuplicate() {
    if (!duplicate_) return "";
    duplicate_->Signal(SIGKILL);
    (void)duplicate_->Wait(5s);
    duplicate_.reset();
    return "duplicate stopped";
  }

  // A worker hello of the next protocol version: the coordinator must refuse it.
  std::string VersionSkew() {
    zmq::context_t context;
    auto socket = control::ControlSocket::ConnectDealer(context, address(), "skewed-worker-" + std::to_string(getpid()));
    if (!socket.ok()) return "";
    capnp::MallocMessageBuilder m;
    auto h = m.initRoot<proto::Envelope>().initHello();
    h.setProtocolVersion(proto::K_PROTOCOL_VERSION + 1);
    h.setRole(proto::Role::WORKER);
    h.setWorkerId("skewed-worker");
    auto caps = h.initCapabilities();
    caps.setDevice("cpu");
    caps.setMemoryBytes(uint64_t{8} << 30);
    caps.setThreads(1);
    caps.setDataAddress(lab_.HostAddress(1) + ":1");
    (void)(*socket)->Send(m, {}, 1000ms);
    skew_answer_ = "no answer within 3 s";
    const auto until = Clock::now() + 3s;
    while (Clock::now() < until) {
      auto in = (*socket)->Receive(100ms);
      if (!in.ok() || !in->has_value()) continue;
      auto env = (*in)->message->envelope();
      if (env.which() == proto::Envelope::ERROR) {
        skew_answer_ = std::string(StatusCodeName(wire::FromWire(env.getError().getCode()))) + ": " +
                       env.getError().getMessage().cStr();
        break;
      }
      if (env.which() == proto::Envelope::WELCOME) {
        skew_answer_ = "welcomed";
        break;
      }
    }
    return "hello of protocol version " + std::to_string(proto::K_PROTOCOL_VERSION + 1) + ": " + skew_answer_;
  }

  const Options& o_;
  Lab& lab_;
  std::ostream& log_;
  uint16_t port_ = 0;
  fs::path clock_file_;
  std::vector<Proc> procs_;  // 0: coordinator, 1..: workers in Topology() order
  std::set<size_t> killed_;
  std::vector<std::unique_ptr<testing::FaultProxy>> proxies_;
  std::unique_ptr<Subprocess> duplicate_;
  std::string skew_answer_;
};

// ---------------------------------------------------------------------------------------------
// Resource sampling (soak)
// ---------------------------------------------------------------------------------------------

struct Sample {
  double t_s;
  std::string name;
  pid_t pid;
  int64_t rss_kib, fds, threads;
};

std::optional<Sample> SampleProcess(const std::string& name, pid_t pid, double t_s) {
  Sample s{t_s, name, pid, -1, 0, -1};
  std::istringstream status(Slurp("/proc/" + std::to_string(pid) + "/status"));
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) s.rss_kib = std::stoll(line.substr(6));
    if (line.rfind("Threads:", 0) == 0) s.threads = std::stoll(line.substr(8));
  }
  std::error_code ec;
  for (auto it = fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec); !ec && it != fs::directory_iterator();
       it.increment(ec))
    ++s.fds;
  if (s.rss_kib < 0) return std::nullopt;
  return s;
}

// Per process incarnation that lived through most of the run: the median of its first and last
// fifth of samples. Returns the report lines and whether any grew beyond the bounds.
bool ResourceTrend(const std::vector<Sample>& samples, double run_s, std::ostream& out, nlohmann::json& report) {
  // Bounds (stated in the README): what a process may gain between the start and the end of a
  // soak once warm, beyond which it is a leak.
  constexpr double kRssGrowthBound = 0.25;  // +25% resident memory (and at least 32 MiB)
  constexpr int64_t kRssSlackKib = 32 * 1024;
  constexpr int64_t kFdGrowthBound = 16, kThreadGrowthBound = 4;
  std::map<std::pair<std::string, pid_t>, std::vector<Sample>> by;
  for (const auto& s : samples) by[{s.name, s.pid}].push_back(s);
  bool grew = false;
  auto median = [](std::vector<int64_t> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
  };
  out << "resource trend (processes alive for at least half the run; median of the first vs last fifth of samples):\n";
  for (const auto& [key, list] : by) {
    if (list.size() < 10 || list.back().t_s - list.front().t_s < run_s / 2) continue;
    const size_t fifth = std::max<size_t>(1, list.size() / 5);
    auto window = [&](bool first, auto field) {
      std::vector<int64_t> v;
      for (size_t i = 0; i < fifth; ++i) v.push_back(field(list[first ? i : list.size() - 1 - i]));
      return median(v);
    };
    auto rss = [](const Sample& s) { return s.rss_kib; };
    auto fds = [](const Sample& s) { return s.fds; };
    auto thr = [](const Sample& s) { return s.threads; };
    const int64_t r0 = window(true, rss), r1 = window(false, rss), f0 = window(true, fds), f1 = window(false, fds),
                  t0 = window(true, thr), t1 = window(false, thr);
    const bool bad = (r1 - r0 > std::max<int64_t>(kRssSlackKib, static_cast<int64_t>(r0 * kRssGrowthBound))) ||
                     f1 - f0 > kFdGrowthBound || t1 - t0 > kThreadGrowthBound;
    grew = grew || bad;
    char line[256];
    std::snprintf(line, sizeof line, "  %-12s pid %-7d %6.0f s  RSS %7.1f -> %7.1f MiB  fds %3lld -> %3lld  threads %3lld -> %3lld%s\n",
                  key.first.c_str(), key.second, list.back().t_s - list.front().t_s, r0 / 1024.0, r1 / 1024.0,
                  static_cast<long long>(f0), static_cast<long long>(f1), static_cast<long long>(t0),
                  static_cast<long long>(t1), bad ? "  GREW BEYOND THE BOUND" : "");
    out << line;
    report.push_back({{"process", key.first}, {"pid", key.second}, {"seconds", list.back().t_s - list.front().t_s},
                      {"rss_mib", {r0 / 1024.0, r1 / 1024.0}}, {"fds", {f0, f1}}, {"threads", {t0, t1}},
                      {"beyond_bound", bad}});
  }
  out << "  bounds: RSS +" << static_cast<int>(kRssGrowthBound * 100) << "% (at least " << kRssSlackKib / 1024
      << " MiB), fds +" << kFdGrowthBound << ", threads +" << kThreadGrowthBound << "\n";
  return !grew;
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

// Scenario rows: the fault, when it lands and how long it holds, and the row's name.
struct Scenario {
  Fault fault;
  std::string row;
  bool expect_no_fault = false;  // a slow or lossy link below the thresholds is not a death
};

std::optional<Scenario> ScenarioFor(const std::string& name) {
  Scenario s;
  s.fault.id = 1;
  s.fault.at_ms = 3000;
  s.fault.hold_ms = 6000;
  s.fault.kind = name;
  s.fault.target = 2;  // host 2 (one stage) for network faults
  if (name == "partition_asym") {
    s.fault.params["drop"] = "out";
    s.row = "asymmetric partition: a stage's host sends nothing (nft), receives all; 6 s, then healed";
  } else if (name == "partition_control") {
    s.row = "control-plane-only partition of a stage's host (nft on the control port); data plane up; 6 s";
  } else if (name == "packet_loss") {
    s.fault.target = 1;
    s.fault.hold_ms = 15000;
    s.fault.params = {{"percent", 5}, {"data_only", true}};
    s.row = "5% packet loss on the data plane of a host with two stages (nft numgen), 15 s";
    s.expect_no_fault = true;
  } else if (name == "packet_loss_high") {
    // Past the threshold at times: a segment lost four times running waits 3 s in TCP's
    // retransmission backoff, longer than the 2 s step deadline, which then declares the step lost.
    s.fault.kind = "packet_loss";
    s.fault.target = 1;
    s.fault.hold_ms = 15000;
    s.fault.params = {{"percent", 10}, {"data_only", true}};
    s.row = "10% packet loss on the data plane of a host with two stages, 15 s (a hand-off can outlast the step deadline)";
  } else if (name == "bandwidth") {
    // An image prompt's hand-off is ~0.3 MB on the tiny model: at 8 Mbit/s it takes ~0.3 s,
    // well inside the 2 s step deadline.
    s.fault.target = 1;
    s.fault.hold_ms = 15000;
    s.fault.params["kbit"] = 8192;
    s.row = "bandwidth cap 8 Mbit/s (tc tbf) on a host with two stages, 15 s";
    s.expect_no_fault = true;
  } else if (name == "bandwidth_low") {
    // Past the threshold: an image prompt's hand-offs take longer than the 2 s step deadline.
    s.fault.kind = "bandwidth";
    s.fault.target = 1;
    s.fault.hold_ms = 15000;
    s.fault.params["kbit"] = 2048;
    s.row = "bandwidth cap 2 Mbit/s on a host with two stages, 15 s (image hand-offs exceed the 2 s step deadline)";
  } else if (name == "host_loss") {
    s.fault.target = 1;
    s.row = "whole-host loss: both stages' host (kill -9 both, link down), spare on another host";
  } else if (name == "duplicate_identity") {
    s.fault.target = 2;  // worker h2-a
    s.row = "duplicate worker identity: a second process claims a serving worker's id for 6 s";
  } else if (name == "version_skew") {
    s.fault.hold_ms = 0;
    s.row = "version skew: a worker hello of protocol version " + std::to_string(proto::K_PROTOCOL_VERSION + 1);
    s.expect_no_fault = true;
  } else if (name == "clock_jump") {
    s.fault.params["seconds"] = 3600;
    s.row = "coordinator wall clock jumps +1 h for 6 s, then back (LD_PRELOAD clock shift)";
    s.expect_no_fault = true;
  } else {
    return std::nullopt;
  }
  return s;
}

int Run(Options o) {
  const bool root = geteuid() == 0;
  const bool netns = root && !o.force_loopback && Sh("command -v ip") == 0 && Sh("command -v nft") == 0 &&
                     Sh("command -v tc") == 0;
  std::optional<Scenario> scenario;
  if (!o.scenario.empty()) {
    scenario = ScenarioFor(o.scenario);
    if (!scenario) {
      std::cerr << "unknown scenario '" << o.scenario << "'\n";
      return 2;
    }
    if (NeedsNamespaces(scenario->fault.kind) && !netns) {
      std::cout << "SKIP: scenario " << o.scenario << " needs root with ip, nft and tc (network namespaces)\n";
      return 77;
    }
    if (o.scenario == "clock_jump" && !fs::exists(o.bin_dir / "libxcpipe_clock_shift.so")) {
      std::cout << "SKIP: scenario clock_jump needs libxcpipe_clock_shift.so in " << o.bin_dir.string() << "\n";
      return 77;
    }
  }
  std::vector<std::string> kinds, left_out;
  for (const auto& k : o.kinds.empty() ? AllKinds() : o.kinds) {
    if (std::find(o.exclude.begin(), o.exclude.end(), k) != o.exclude.end()) continue;
    const bool no_shim = k == "clock_jump" && !fs::exists(o.bin_dir / "libxcpipe_clock_shift.so");
    if ((NeedsNamespaces(k) && !netns) || no_shim) left_out.push_back(k);
    else kinds.push_back(k);
  }
  if (o.out_dir.empty())
    o.out_dir = fs::temp_directory_path() / ("xcpipe-chaos-" + std::to_string(o.seed) + "-" + std::to_string(getpid()));
  fs::create_directories(o.out_dir);
  std::ofstream(o.out_dir / "seed.txt") << o.seed << "\n" << o.command_line << "\n";
  std::cout << "chaos: seed " << o.seed << (scenario ? ", scenario " + o.scenario : "") << ", "
            << (netns ? "network namespaces" : "loopback") << ", run directory " << o.out_dir.string() << "\n";
  if (!o.exclude.empty()) {
    std::cout << "chaos: excluded by --exclude:";
    for (const auto& k : o.exclude) std::cout << " " << k;
    std::cout << "\n";
  }
  if (!left_out.empty()) {
    std::cout << "chaos: left out (network faults need root with ip, nft and tc; clock_jump needs "
                 "libxcpipe_clock_shift.so beside the binaries):";
    for (const auto& k : left_out) std::cout << " " << k;
    std::cout << "\n";
  }
  const int64_t chaos_ms = scenario ? scenario->fault.at_ms + scenario->fault.hold_ms + 6000 : o.duration_s * 1000LL;
  std::vector<Fault> schedule = scenario ? std::vector<Fault>{scenario->fault}
                                         : DrawSchedule(o.seed, chaos_ms, kinds, o.max_active, o.min_restart_ms);
  {
    std::ofstream out(o.out_dir / "schedule.jsonl");
    for (const auto& f : schedule) out << f.ToJson().dump() << "\n";
  }
  std::ofstream applied_log(o.out_dir / "applied.jsonl");
  std::vector<std::string> run_violations;

  // The model (made once per folder).
  if (!fs::exists(o.model_dir / "config.json")) {
    const std::string cmd = (o.bin_dir / "xcpipe").string() + " mkmodel --arch ixc2-vl --preset tiny --out " +
                            o.model_dir.string() + " --force";
    if (Sh(cmd) != 0) {
      std::cerr << "chaos: cannot make the model: " << cmd << "\n";
      return 1;
    }
  }
  Lab lab(netns, 3);
  if (!lab.ok()) {
    std::cerr << "chaos: cannot create the network namespaces\n";
    return 1;
  }
  const auto t0 = Clock::now();
  Recorder recorder(o.out_dir / "history.jsonl", t0);
  Cluster cluster(o, lab, std::cout);
  if (Status st = cluster.Start(); !st.ok()) {
    std::cerr << "chaos: the cluster did not start: " << st.ToString() << "\nlogs in " << (o.out_dir / "logs").string()
              << "\n";
    return 1;
  }
  const auto workload = Workload();
  auto elapsed_s = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };

  // Resource samples (soak) of every process and of this one, on their own thread.
  std::vector<Sample> samples;
  std::mutex samples_mutex;
  std::atomic<bool> sampling{o.sample_s > 0};
  std::mutex cluster_mutex;  // the cluster's processes change on the scheduler thread
  std::thread sampler;
  if (sampling) {
    sampler = std::thread([&] {
      std::ofstream out(o.out_dir / "resources.jsonl");
      while (sampling) {
        std::vector<std::pair<std::string, pid_t>> pids;
        {
          std::lock_guard<std::mutex> lock(cluster_mutex);
          pids = cluster.Pids();
        }
        pids.push_back({"chaos-runner", getpid()});
        for (const auto& [name, pid] : pids) {
          if (auto s = SampleProcess(name, pid, elapsed_s())) {
            out << nlohmann::json{{"t_s", s->t_s}, {"name", s->name}, {"pid", s->pid}, {"rss_kib", s->rss_kib},
                                  {"fds", s->fds}, {"threads", s->threads}}.dump()
                << "\n";
            std::lock_guard<std::mutex> lock(samples_mutex);
            samples.push_back(*s);
          }
        }
        out.flush();
        for (int i = 0; i < static_cast<int>(o.sample_s * 10) && sampling; ++i) std::this_thread::sleep_for(100ms);
      }
    });
  }

  // 1. The fault-free reference: every prompt once, one at a time.
  CheckOptions check;
  {
    ChaosClient ref("reference", cluster.address(), recorder);
    if (Status st = ref.Connect(10s); !st.ok()) {
      std::cerr << "chaos: " << st.ToString() << "\n";
      return 1;
    }
    for (const auto& p : workload) {
      auto tokens = ref.Generate(p, o.max_new_tokens, "reference");
      if (!tokens || tokens->empty()) {
        std::cerr << "chaos: the fault-free reference run of '" << p.key << "' failed; logs in "
                  << (o.out_dir / "logs").string() << "\n";
        return 1;
      }
      check.reference[p.key] = *tokens;
    }
  }
  std::cout << "chaos: reference taken (" << workload.size() << " prompts, " << elapsed_s() << " s); " << schedule.size()
            << " faults over " << chaos_ms / 1000 << " s\n";

  // 2. Clients submit a steady mix until the schedule is over.
  std::atomic<bool> submitting{true};
  std::vector<std::thread> clients;
  for (int c = 0; c < o.clients; ++c) {
    clients.emplace_back([&, c] {
      ChaosClient client("c" + std::to_string(c), cluster.address(), recorder);
      if (Status st = client.Connect(30s); !st.ok()) {
        std::cerr << "chaos: client " << c << ": " << st.ToString() << "\n";
        return;
      }
      std::mt19937_64 rng(o.seed * 31 + static_cast<uint64_t>(c));
      while (submitting && !g_interrupted) {
        const auto& p = workload[rng() % workload.size()];
        (void)client.Generate(p, o.max_new_tokens, "chaos");
        std::this_thread::sleep_for(Ms(50 + rng() % 200));
      }
      client.Drain(1000ms);
    });
  }

  // 3. The schedule: apply and heal, in time order, on this thread.
  struct Action {
    int64_t at_ms;
    bool heal;
    size_t fault;
  };
  std::vector<Action> actions;
  for (size_t i = 0; i < schedule.size(); ++i) {
    actions.push_back({schedule[i].at_ms, false, i});
    actions.push_back({schedule[i].at_ms + schedule[i].hold_ms, true, i});
  }
  std::stable_sort(actions.begin(), actions.end(), [](const Action& a, const Action& b) { return a.at_ms < b.at_ms; });
  const auto chaos_start = Clock::now();
  std::map<std::string, int> applied_by_kind;
  std::set<size_t> applied;
  int faults_applied = 0;
  auto since_chaos_ms = [&] { return std::chrono::duration_cast<Ms>(Clock::now() - chaos_start).count(); };
  auto note = [&](const nlohmann::json& j) {
    applied_log << j.dump() << "\n";
    applied_log.flush();
  };
  // The supervisor: a process that exits by itself is started again (as systemd or the Slurm
  // task loop would), from now until the cluster is stopped; a crash (a signal) is a violation.
  std::atomic<bool> supervising{true};
  std::mutex notes_mutex;
  std::thread supervisor([&] {
    while (supervising) {
      std::this_thread::sleep_for(50ms);
      std::vector<std::string> exits;
      {
        std::lock_guard<std::mutex> lock(cluster_mutex);
        exits = cluster.ReapUnexpected();
      }
      std::lock_guard<std::mutex> lock(notes_mutex);
      for (const auto& what : exits) {
        note({{"t_ms", since_chaos_ms()}, {"unexpected", what}});
        std::cout << "chaos: " << what << "\n";
        if (what.find("(signal") != std::string::npos && what.find("[known:") == std::string::npos)
          run_violations.push_back("a process crashed: " + what);
      }
    }
  });
  for (const auto& a : actions) {
    while (since_chaos_ms() < a.at_ms && !g_interrupted) std::this_thread::sleep_for(50ms);
    if (g_interrupted) break;
    const Fault& f = schedule[a.fault];
    std::string what;
    {
      std::lock_guard<std::mutex> lock(cluster_mutex);
      if (a.heal) {
        if (!applied.count(a.fault)) continue;
        what = cluster.Heal(f);
      } else {
        what = cluster.Apply(f);
        if (!what.empty()) {
          applied.insert(a.fault);
          ++faults_applied;
          ++applied_by_kind[f.kind];
        }
      }
    }
    std::lock_guard<std::mutex> notes_lock(notes_mutex);
    note({{"t_ms", since_chaos_ms()}, {"fault", f.id}, {"kind", f.kind}, {"action", a.heal ? "heal" : "apply"},
          {"did", what.empty() ? "nothing (target not running)" : what}});
    std::cout << "chaos: " << std::fixed << std::setprecision(1) << since_chaos_ms() / 1000.0 << " s  #" << f.id << " "
              << (a.heal ? "heal  " : "apply ") << f.kind << ": " << (what.empty() ? "skipped (target not running)" : what)
              << "\n";
  }
  while (since_chaos_ms() < chaos_ms && !g_interrupted) std::this_thread::sleep_for(100ms);

  // 4. Full heal; clients finish what they have; the liveness batch.
  {
    std::lock_guard<std::mutex> lock(cluster_mutex);
    cluster.HealAll();
  }
  {
    std::lock_guard<std::mutex> lock(notes_mutex);
    note({{"t_ms", since_chaos_ms()}, {"action", "heal all"}});
  }
  std::cout << "chaos: healed everything at " << since_chaos_ms() / 1000.0 << " s; waiting for the clients\n";
  submitting = false;
  for (auto& t : clients) t.join();
  const bool serving = !g_interrupted && cluster.WaitServing(kServingWait);
  if (!serving && !g_interrupted) std::cout << "chaos: the cluster is not serving " << kServingWait.count() << " s after the heal\n";
  std::vector<std::thread> liveness;
  for (size_t i = 0; i < workload.size(); ++i) {
    liveness.emplace_back([&, i] {
      ChaosClient client("live" + std::to_string(i), cluster.address(), recorder);
      if (Status st = client.Connect(30s); !st.ok()) {
        HistoryEvent e;
        e.client = "live" + std::to_string(i);
        e.request = 1;
        e.kind = "submit";
        e.prompt_key = workload[i].key;
        e.phase = "liveness";
        e.max_new_tokens = o.max_new_tokens;
        recorder.Add(e);
        e.kind = "gave_up";
        recorder.Add(e);
        return;
      }
      (void)client.Generate(workload[i], o.max_new_tokens, "liveness", 60s);
    });
  }
  for (auto& t : liveness) t.join();
  auto final_status = cluster.GetStatus();
  sampling = false;
  if (sampler.joinable()) sampler.join();
  supervising = false;
  supervisor.join();
  cluster.StopAll();
  if (g_interrupted) {
    std::cout << "chaos: interrupted; everything it started is stopped and removed\n";
    return 1;
  }

  // 5. The checker.
  auto history = recorder.events();
  CheckResult result = CheckHistory(history, check);
  for (const auto& v : run_violations) result.violations.push_back(v);
  nlohmann::json report = {{"seed", o.seed},
                           {"scenario", o.scenario},
                           {"hosts", netns ? "network namespaces" : "loopback"},
                           {"chaos_s", chaos_ms / 1000.0},
                           {"faults_scheduled", schedule.size()},
                           {"faults_applied", faults_applied},
                           {"faults_by_kind", applied_by_kind},
                           {"process_restarts", cluster.restarts()},
                           {"left_out", left_out},
                           {"check", result.ToJson()}};
  if (final_status) {
    report["coordinator"] = {{"faults", (*final_status)["faults"]},
                             {"replays", (*final_status)["replays"]},
                             {"last_detect_ms", (*final_status)["last_detect_ms"]},
                             {"last_recover_ms", (*final_status)["last_recover_ms"]},
                             {"epoch", (*final_status)["epoch"]}};
  }
  if (o.sample_s > 0) {
    nlohmann::json trend = nlohmann::json::array();
    std::ostringstream text;
    const bool bounded = ResourceTrend(samples, elapsed_s(), text, trend);
    std::cout << text.str();
    report["resources"] = trend;
    if (!bounded) result.violations.push_back("a process's resources grew beyond the bound (see the trend above)");
  }
  // Scenario rows: what the scenario itself promises, on top of the history.
  if (scenario) {
    const int faults = final_status ? (*final_status)["faults"].get<int>() : -1;
    if (scenario->expect_no_fault && faults != 0)
      result.violations.push_back("the coordinator declared " + std::to_string(faults) + " fault(s) for " + o.scenario +
                                  ", which stays below the thresholds");
    if (o.scenario == "version_skew") {
      const std::string answer = cluster.skew_answer();
      report["skew_answer"] = answer;
      std::cout << "chaos: the coordinator answered the skewed hello: " << answer << "\n";
      if (answer.rfind("FailedPrecondition", 0) != 0 || answer.find(std::to_string(proto::K_PROTOCOL_VERSION + 1)) ==
                                                            std::string::npos)
        result.violations.push_back("the skewed hello was not refused with FailedPrecondition naming its version: " +
                                    answer);
    }
    if (o.scenario == "duplicate_identity") {
      const std::string log = Slurp(o.out_dir / "logs" / "duplicate.log");
      report["duplicate_log_tail"] = log.substr(log.size() > 2000 ? log.size() - 2000 : 0);
      std::cout << "chaos: the duplicate worker said:\n" << report["duplicate_log_tail"].get<std::string>() << "\n";
      if (faults != 0)
        result.violations.push_back("the duplicate identity cost the serving worker its stage: " +
                                    std::to_string(faults) + " fault(s) declared");
      // The second process must be told why it cannot serve, naming the id it claimed.
      const std::string refusal = "AlreadyExists: worker id '" + cluster.worker_name(scenario->fault.target) + "'";
      if (log.find(refusal) == std::string::npos)
        result.violations.push_back("the duplicate worker was not refused with '" + refusal + " ...'");
    }
    // The row counts the requests made under the fault and after it, not the reference run's.
    std::vector<HistoryEvent> served;
    for (const auto& e : history)
      if (e.client != "reference") served.push_back(e);
    const CheckResult counted = CheckHistory(served, check);
    testing::FaultRow row;
    row.scenario = scenario->row;
    row.requests = counted.requests;
    row.completed = counted.completed;
    row.duplicated = counted.duplicated;
    row.lost = counted.lost;
    row.failed = counted.failed;
    if (final_status && faults > 0) {
      row.detect_ms = (*final_status)["last_detect_ms"].get<double>();
      row.recover_ms = (*final_status)["last_recover_ms"].get<double>();
    }
    row.tokens_identical = result.tokens_identical() && result.lost == 0;
    if (!testing::ReportFault(row)) result.violations.push_back("cannot write the faults report");
  }
  // Split-brain evidence: work of an old epoch that arrived after a re-plan and was refused.
  int stale_refused = 0;
  for (const auto& entry : fs::directory_iterator(o.out_dir / "logs")) {
    std::istringstream lines(Slurp(entry.path()));
    for (std::string line; std::getline(lines, line);)
      stale_refused += line.find("dropping activations of epoch") != std::string::npos ||
                       line.find("is older than this worker's epoch") != std::string::npos;
  }
  report["stale_epoch_refusals"] = stale_refused;
  std::ofstream(o.out_dir / "result.json") << report.dump(2) << "\n";
  int failed_total = 0;
  for (const auto& [reason, n] : result.failed) failed_total += n;
  std::cout << "chaos: seed " << o.seed << ": " << faults_applied << " faults applied (";
  bool first = true;
  for (const auto& [k, n] : applied_by_kind) {
    std::cout << (first ? "" : ", ") << k << " " << n;
    first = false;
  }
  std::cout << "), " << cluster.restarts() << " process restarts; requests " << result.requests << ", completed "
            << result.completed << ", failed " << failed_total << ", duplicated " << result.duplicated << ", lost "
            << result.lost << ", tokens checked " << result.tokens_checked << ", identical "
            << (result.tokens_identical() ? "yes" : "no") << "; liveness " << result.liveness_completed << "/"
            << result.liveness_requests << "; old-epoch work refused " << stale_refused << " times";
  if (final_status)
    std::cout << "; coordinator faults " << (*final_status)["faults"] << ", replays " << (*final_status)["replays"];
  std::cout << "\n";
  if (!result.ok()) {
    std::cout << "chaos: FAILED, " << result.violations.size() << " violation(s):\n";
    for (size_t i = 0; i < result.violations.size() && i < 40; ++i) std::cout << "  " << result.violations[i] << "\n";
    std::cout << "chaos: seed, schedule, history and logs kept in " << o.out_dir.string() << "\n"
              << "chaos: replay with:\n  XCPIPE_CHAOS_SEED=" << o.seed << " " << o.command_line << "\n";
    return 6;
  }
  std::cout << "chaos: PASSED\n";
  if (!o.keep) {
    std::error_code ec;
    fs::remove_all(o.out_dir, ec);
  }
  return 0;
}

}  // namespace
}  // namespace xcpipe::chaos

int main(int argc, char** argv) {
  using namespace xcpipe::chaos;
  std::cout << std::unitbuf;  // progress lines reach a log file as they happen
  std::signal(SIGINT, OnInterrupt);
  std::signal(SIGTERM, OnInterrupt);
  CLI::App app{"xcpipe-chaos: a seeded chaos run over a real cluster, checked by the history checker.\n"
               "The seed comes from XCPIPE_CHAOS_SEED when set (replay), else from --seed, else from the time."};
  Options o;
  std::string bin_dir, model_dir, out_dir, kinds;
  uint64_t seed = 0;
  app.add_option("--seed", seed, "schedule seed (XCPIPE_CHAOS_SEED overrides it)");
  app.add_option("--duration-s", o.duration_s, "length of the fault schedule")->capture_default_str();
  app.add_option("--clients", o.clients, "client connections submitting at once")->capture_default_str();
  app.add_option("--max-new-tokens", o.max_new_tokens, "tokens per request")->capture_default_str();
  app.add_option("--max-active", o.max_active, "faults active at once")->capture_default_str();
  app.add_option("--faults", kinds, "comma-separated fault kinds (default: all available)");
  std::string exclude;
  app.add_option("--exclude", exclude, "comma-separated fault kinds never drawn");
  app.add_option("--scenario", o.scenario, "one fault of this kind at a fixed moment; merges a fault-table row");
  app.add_option("--min-restart-ms", o.min_restart_ms,
                 "killed workers and lost hosts come back no sooner than this (default: drawn from 1 s, as "
                 "every fault's hold)");
  app.add_option("--sample-s", o.sample_s, "sample RSS, fds and threads of every process this often (soak)");
  app.add_option("--bin", bin_dir, "folder of xcpipe, xcpipe-coordinator, xcpipe-worker (default: this binary's)");
  app.add_option("--model", model_dir, "model folder (made with xcpipe mkmodel --preset tiny when missing)");
  app.add_option("--out", out_dir, "run directory (default: a fresh one under the temp folder)");
  app.add_flag("--keep", o.keep, "keep the run directory when the run passes");
  app.add_flag("--loopback", o.force_loopback, "no network namespaces even as root");
  CLI11_PARSE(app, argc, argv);
  if (const char* env = std::getenv("XCPIPE_CHAOS_SEED"); env && *env) seed = std::strtoull(env, nullptr, 10);
  if (seed == 0) seed = static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()) % 1000000007ULL;
  o.seed = seed;
  o.bin_dir = bin_dir.empty() ? xcpipe::ExecutableDir() : std::filesystem::path(bin_dir);
  o.model_dir = model_dir.empty() ? std::filesystem::temp_directory_path() / "xcpipe-chaos-model" : std::filesystem::path(model_dir);
  o.out_dir = out_dir;
  auto split = [](const std::string& list) {
    std::vector<std::string> out;
    for (size_t at = 0; !list.empty() && at != std::string::npos;) {
      const size_t comma = list.find(',', at);
      out.push_back(list.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
      at = comma == std::string::npos ? comma : comma + 1;
    }
    return out;
  };
  o.kinds = split(kinds);
  o.exclude = split(exclude);
  for (const auto& k : o.kinds)
    if (std::find(AllKinds().begin(), AllKinds().end(), k) == AllKinds().end()) {
      std::cerr << "unknown fault kind '" << k << "'\n";
      return 2;
    }
  // The replay command: this command line, the seed given by the environment.
  std::string cmd;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--seed") {
      ++i;
      continue;
    }
    if (a.rfind("--seed=", 0) == 0) continue;
    cmd += (i ? " " : "") + (a.find_first_of(" '\"") == std::string::npos ? a : "'" + a + "'");
  }
  o.command_line = cmd + " --keep";
  return Run(o);
}
