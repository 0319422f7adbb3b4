// dataplane_bench: bytes/s of the TCP data plane between two endpoints on loopback, against
// raw loopback TCP (a plain blocking Asio socket pushing the same bytes), measured in one run.
//
// Messages look like a real stage hand-off: hidden [N, H] bf16 + im_mask [N] u8 + positions
// [N] i64, for N in --rows (default 8, 64, 512, 4096) and H = --hidden (4096). Each
// configuration keeps one connection; a warm-up run precedes the timed ones, and the runs of
// "ours" and "raw" alternate so background load hits both alike. Throughput counts tensor
// bytes only (our framing is overhead, not credit). Reports the median of --runs runs and the
// ratio ours/raw (goal >= 0.8), prints a table and writes JSON (default
// <build>/reports/dataplane_bench.json).
//
// A second table times what a decode step's hand-off waits for: a one-row message (the same
// tensors, 1 row) sent back and forth between two threads, --pings round trips each for ours
// and for raw TCP, in alternating blocks of 100; it reports the median one-way time (half a
// round trip) and ours - raw, the time our framing, checks and pool add to a hop.
//
//   build/bin/dataplane_bench [--runs 5] [--mib-per-run 512] [--rows 8,64,512,4096]
//                             [--hidden 4096] [--pings 2000] [--out FILE]
#include <utility>  // before Asio: Boost 1.74's Asio needs it first under C++20

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <nlohmann/json.hpp>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.h"
#include "xcpipe/base/cli.h"
#include "xcpipe/base/subprocess.h"
#include "xcpipe/transport/checksum.h"
#include "xcpipe/transport/tcp_data_plane.h"

namespace asio = boost::asio;
using namespace xcpipe;
using namespace xcpipe::transport;
using namespace std::chrono_literals;

namespace {

using bench::Median;

struct Options {
  int runs = 5;
  double mib_per_run = 512;
  std::vector<int64_t> rows = {8, 64, 512, 4096};
  int64_t hidden = 4096;
  int pings = 2000;
  std::string out;
};

// The tensors of one hand-off; frames borrow these buffers (written once, so resident).
struct Payload {
  std::vector<std::byte> hidden, mask, positions;
  StageMessage message;
  uint64_t bytes = 0;
};

Payload MakePayload(int64_t rows, int64_t hidden) {
  Payload p;
  p.hidden.resize(static_cast<size_t>(rows * hidden * 2));
  p.mask.resize(static_cast<size_t>(rows));
  p.positions.resize(static_cast<size_t>(rows * 8));
  for (size_t i = 0; i < p.hidden.size(); ++i) p.hidden[i] = std::byte(i * 2654435761u >> 24);
  for (size_t i = 0; i < p.mask.size(); ++i) p.mask[i] = std::byte(i % 7 == 0);
  for (int64_t i = 0; i < rows; ++i) std::memcpy(p.positions.data() + 8 * i, &i, 8);
  p.message.segments = {{1, rows, 0}};
  p.message.tensors.push_back(*TensorFrame::Borrow("hidden", DType::kBF16, {rows, hidden}, p.hidden));
  p.message.tensors.push_back(*TensorFrame::Borrow("im_mask", DType::kU8, {rows}, p.mask));
  p.message.tensors.push_back(*TensorFrame::Borrow("positions", DType::kI64, {rows}, p.positions));
  p.bytes = p.message.payload_bytes();
  return p;
}

// CPU time this thread has used (user + system), in seconds.
double ThreadCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_THREAD, &u);
  return u.ru_utime.tv_sec + u.ru_utime.tv_usec * 1e-6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec * 1e-6;
}

// One timed run: wall seconds and the CPU seconds of the sending and receiving threads.
struct Timing {
  double seconds = 0;
  double sender_cpu = 0;
  double receiver_cpu = 0;
};

// Our data plane: a listening plane and a sending plane, one persistent connection.
class OursPair {
 public:
  explicit OursPair(bool checksum) {
    TcpLinkOptions link;
    link.checksum = checksum;
    link.require_checksum = checksum;
    TcpDataPlaneOptions listen, send;
    listen.listen = TcpEndpoint{"127.0.0.1", 0};
    listen.link = link;
    rx_ = TcpDataPlane::Create(listen).value();
    send.next = *rx_->listen_endpoint();
    send.link = link;
    tx_ = TcpDataPlane::Create(send).value();
  }
  Timing Run(const StageMessage& message, int count) {
    Timing t;
    auto receiving = std::async(std::launch::async, [&] {
      double cpu = ThreadCpuSeconds();
      for (int i = 0; i < count; ++i) {
        auto got = rx_->Receive(DeadlineAfter(60s));
        if (!got.ok()) return got.status();
      }
      t.receiver_cpu = ThreadCpuSeconds() - cpu;
      return OkStatus();
    });
    auto start = std::chrono::steady_clock::now();
    double cpu = ThreadCpuSeconds();
    for (int i = 0; i < count; ++i) {
      Status s = tx_->Send(message, DeadlineAfter(60s));
      if (!s.ok()) {
        std::fprintf(stderr, "send failed: %s\n", s.ToString().c_str());
        std::exit(1);
      }
    }
    t.sender_cpu = ThreadCpuSeconds() - cpu;
    Status r = receiving.get();
    if (!r.ok()) {
      std::fprintf(stderr, "receive failed: %s\n", r.ToString().c_str());
      std::exit(1);
    }
    t.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return t;
  }

 private:
  std::unique_ptr<TcpDataPlane> rx_, tx_;
};

// Ping-pong through our data plane: one plane each way; an echo thread sends back what it gets.
class OursEcho {
 public:
  OursEcho() {
    TcpDataPlaneOptions listen;
    listen.listen = TcpEndpoint{"127.0.0.1", 0};
    rx_a_ = TcpDataPlane::Create(listen).value();
    rx_b_ = TcpDataPlane::Create(listen).value();
    TcpDataPlaneOptions to_b, to_a;
    to_b.next = *rx_b_->listen_endpoint();
    to_a.next = *rx_a_->listen_endpoint();
    tx_a_ = TcpDataPlane::Create(to_b).value();
    tx_b_ = TcpDataPlane::Create(to_a).value();
  }
  // One-way microseconds (half of each round trip) of `count` pings.
  std::vector<double> Run(const StageMessage& message, int count) {
    auto echo = std::async(std::launch::async, [&] {
      for (int i = 0; i < count; ++i) {
        auto got = rx_b_->Receive(DeadlineAfter(60s));
        if (!got.ok()) return got.status();
        if (Status s = tx_b_->Send(*got, DeadlineAfter(60s)); !s.ok()) return s;
      }
      return OkStatus();
    });
    std::vector<double> one_way;
    for (int i = 0; i < count; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      Status s = tx_a_->Send(message, DeadlineAfter(60s));
      auto back = s.ok() ? rx_a_->Receive(DeadlineAfter(60s)) : StatusOr<StageMessage>(s);
      if (!back.ok()) {
        std::fprintf(stderr, "ping failed: %s\n", back.status().ToString().c_str());
        std::exit(1);
      }
      one_way.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / 2);
    }
    if (Status e = echo.get(); !e.ok()) {
      std::fprintf(stderr, "echo failed: %s\n", e.ToString().c_str());
      std::exit(1);
    }
    return one_way;
  }

 private:
  std::unique_ptr<TcpDataPlane> rx_a_, rx_b_, tx_a_, tx_b_;
};

// Raw loopback TCP: blocking Asio sockets, the same socket options as ours, the same bytes
// (a gather write per message; the reader reads exactly one message's bytes into a reused buffer).
class RawPair {
 public:
  explicit RawPair(int buffer_bytes) : acceptor_(io_), tx_(io_), rx_(io_) {
    asio::ip::tcp::endpoint at(asio::ip::make_address("127.0.0.1"), 0);
    acceptor_.open(at.protocol());
    acceptor_.set_option(asio::socket_base::reuse_address(true));
    acceptor_.set_option(asio::socket_base::receive_buffer_size(buffer_bytes));
    acceptor_.bind(at);
    acceptor_.listen();
    tx_.open(at.protocol());
    tx_.set_option(asio::socket_base::send_buffer_size(buffer_bytes));
    tx_.set_option(asio::socket_base::receive_buffer_size(buffer_bytes));
    tx_.set_option(asio::ip::tcp::no_delay(true));
    tx_.connect(acceptor_.local_endpoint());
    acceptor_.accept(rx_);
    rx_.set_option(asio::ip::tcp::no_delay(true));
  }
  Timing Run(const Payload& p, int count) {
    Timing t;
    std::vector<std::byte> sink(p.bytes);
    std::memset(sink.data(), 0, sink.size());
    auto receiving = std::async(std::launch::async, [&] {
      double cpu = ThreadCpuSeconds();
      for (int i = 0; i < count; ++i) asio::read(rx_, asio::buffer(sink));
      t.receiver_cpu = ThreadCpuSeconds() - cpu;
    });
    std::vector<asio::const_buffer> gather = {asio::buffer(p.hidden), asio::buffer(p.mask), asio::buffer(p.positions)};
    auto start = std::chrono::steady_clock::now();
    double cpu = ThreadCpuSeconds();
    for (int i = 0; i < count; ++i) asio::write(tx_, gather);
    t.sender_cpu = ThreadCpuSeconds() - cpu;
    receiving.get();
    t.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return t;
  }

 private:
  asio::io_context io_;
  asio::ip::tcp::acceptor acceptor_;
  asio::ip::tcp::socket tx_, rx_;
};

}  // namespace

// Ping-pong over raw loopback TCP: one connection, the echo thread reads exactly one message's
// bytes and writes them back (the same socket options as RawPair).
class RawEcho {
 public:
  RawEcho() : acceptor_(io_), a_(io_), b_(io_) {
    asio::ip::tcp::endpoint at(asio::ip::make_address("127.0.0.1"), 0);
    acceptor_.open(at.protocol());
    acceptor_.set_option(asio::socket_base::reuse_address(true));
    acceptor_.bind(at);
    acceptor_.listen();
    a_.open(at.protocol());
    a_.set_option(asio::ip::tcp::no_delay(true));
    a_.connect(acceptor_.local_endpoint());
    acceptor_.accept(b_);
    b_.set_option(asio::ip::tcp::no_delay(true));
  }
  std::vector<double> Run(const Payload& p, int count) {
    std::vector<std::byte> at_b(p.bytes), at_a(p.bytes);
    auto echo = std::async(std::launch::async, [&] {
      for (int i = 0; i < count; ++i) {
        asio::read(b_, asio::buffer(at_b));
        asio::write(b_, asio::buffer(at_b));
      }
    });
    std::vector<asio::const_buffer> gather = {asio::buffer(p.hidden), asio::buffer(p.mask), asio::buffer(p.positions)};
    std::vector<double> one_way;
    for (int i = 0; i < count; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      asio::write(a_, gather);
      asio::read(a_, asio::buffer(at_a));
      one_way.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / 2);
    }
    echo.get();
    return one_way;
  }

 private:
  asio::io_context io_;
  asio::ip::tcp::acceptor acceptor_;
  asio::ip::tcp::socket a_, b_;
};

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"dataplane_bench: our TCP data plane (framed, CRC-32C) vs raw loopback TCP, tensor bytes/s"};
  app.add_option("--runs", o.runs, "runs per size (the median is reported)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--mib-per-run", o.mib_per_run, "tensor MiB pushed per run")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--rows", o.rows, "rows per hand-off, comma-separated")->delimiter(',')->capture_default_str();
  app.add_option("--hidden", o.hidden, "hidden size (bf16)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--pings", o.pings, "round trips of a one-row hand-off, each for ours and raw (0 skips)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--out", o.out, "report file (default: <build>/reports/dataplane_bench.json)");
  if (auto code = ParseOrExit(app, argc, argv)) return *code;
  if (o.out.empty()) o.out = (ExecutableDir().parent_path() / "reports" / "dataplane_bench.json").string();

  const TcpLinkOptions defaults;
  nlohmann::json report;
  report["benchmark"] = "dataplane_bench";
  report["what"] = "TCP data plane vs raw loopback TCP, tensor bytes/s between two threads";
  report["config"] = {{"runs", o.runs},
                      {"mib_per_run", o.mib_per_run},
                      {"hidden", o.hidden},
                      {"socket_buffer_bytes", defaults.socket_buffer_bytes},
                      {"cores", std::thread::hardware_concurrency()},
                      {"crc32c_implementation", std::string(Crc32cImplName(Crc32cBestImpl()))},
                      {"goal_ratio", 0.8}};
  report["results"] = nlohmann::json::array();

  std::printf(
      "dataplane_bench: %d runs, %.0f MiB per run, hidden %lld bf16, median GB/s (1e9 bytes/s of tensor data)\n",
      o.runs, o.mib_per_run, static_cast<long long>(o.hidden));
  std::printf("%6s %12s %9s %10s %10s %10s %9s %9s\n", "rows", "msg bytes", "msgs/run", "raw", "ours", "ours-nocrc",
              "ours/raw", "nocrc/raw");
  bool all_met = true;
  for (int64_t rows : o.rows) {
    Payload p = MakePayload(rows, o.hidden);
    const int count = std::max(8, static_cast<int>(o.mib_per_run * (1 << 20) / static_cast<double>(p.bytes)));
    const double gb = static_cast<double>(p.bytes) * count / 1e9;
    OursPair ours(/*checksum=*/true);
    OursPair ours_nocrc(/*checksum=*/false);
    RawPair raw(defaults.socket_buffer_bytes);
    // Warm-up: connections, receive pools, page faults, CPU frequency.
    ours.Run(p.message, std::max(2, count / 4));
    ours_nocrc.Run(p.message, std::max(2, count / 4));
    raw.Run(p, std::max(2, count / 4));
    std::vector<double> r_raw, r_ours, r_nocrc;
    // CPU nanoseconds per tensor byte, sender + receiver: robust to other load on the host.
    std::vector<double> c_raw, c_ours, c_nocrc;
    auto record = [&](const Timing& t, std::vector<double>& rate, std::vector<double>& cpu) {
      rate.push_back(gb / t.seconds);
      cpu.push_back((t.sender_cpu + t.receiver_cpu) / gb);
    };
    for (int run = 0; run < o.runs; ++run) {
      record(raw.Run(p, count), r_raw, c_raw);
      record(ours.Run(p.message, count), r_ours, c_ours);
      record(ours_nocrc.Run(p.message, count), r_nocrc, c_nocrc);
    }
    const double m_raw = Median(r_raw), m_ours = Median(r_ours), m_nocrc = Median(r_nocrc);
    const double ratio = m_ours / m_raw, ratio_nocrc = m_nocrc / m_raw;
    all_met = all_met && ratio >= 0.8;
    std::printf("%6lld %12llu %9d %10.2f %10.2f %10.2f %9.2f %9.2f   cpu ns/B raw %.3f ours %.3f nocrc %.3f\n",
                static_cast<long long>(rows), static_cast<unsigned long long>(p.bytes), count, m_raw, m_ours, m_nocrc,
                ratio, ratio_nocrc, Median(c_raw), Median(c_ours), Median(c_nocrc));
    std::fflush(stdout);
    report["results"].push_back({{"rows", rows},
                                 {"message_bytes", p.bytes},
                                 {"messages_per_run", count},
                                 {"raw_gbps", r_raw},
                                 {"ours_gbps", r_ours},
                                 {"ours_nocrc_gbps", r_nocrc},
                                 {"raw_median_gbps", m_raw},
                                 {"ours_median_gbps", m_ours},
                                 {"ours_nocrc_median_gbps", m_nocrc},
                                 {"ratio_ours_over_raw", ratio},
                                 {"cpu_ns_per_byte_raw", Median(c_raw)},
                                 {"cpu_ns_per_byte_ours", Median(c_ours)},
                                 {"cpu_ns_per_byte_ours_nocrc", Median(c_nocrc)},
                                 {"ratio_nocrc_over_raw", ratio_nocrc}});
  }
  report["goal_met"] = all_met;

  if (o.pings > 0) {
    Payload p = MakePayload(1, o.hidden);
    OursEcho ours;
    RawEcho raw;
    ours.Run(p.message, 100);  // warm-up: connections, pools
    raw.Run(p, 100);
    std::vector<double> t_ours, t_raw;
    for (int done = 0; done < o.pings; done += 100) {
      const int n = std::min(100, o.pings - done);
      for (double v : raw.Run(p, n)) t_raw.push_back(v);
      for (double v : ours.Run(p.message, n)) t_ours.push_back(v);
    }
    const double m_ours = Median(t_ours), m_raw = Median(t_raw);
    std::printf("\none-row hand-off (%llu bytes), %d round trips each, median one-way us: raw %.1f  ours %.1f  "
                "(+%.1f)\n",
                static_cast<unsigned long long>(p.bytes), o.pings, m_raw, m_ours, m_ours - m_raw);
    report["one_row_latency"] = {{"message_bytes", p.bytes},     {"round_trips", o.pings},
                                 {"raw_one_way_us", m_raw},      {"ours_one_way_us", m_ours},
                                 {"ours_minus_raw_us", m_ours - m_raw}};
  }
  std::filesystem::create_directories(std::filesystem::path(o.out).parent_path());
  std::ofstream(o.out) << report.dump(2) << "\n";
  std::printf("ours = CRC-32C on (the default); goal ours/raw >= 0.8: %s\nwrote %s\n", all_met ? "met" : "NOT met",
              o.out.c_str());
  return 0;
}
