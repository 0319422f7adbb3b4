// xcpipe_transport_peer: one end of a data-plane link in its own OS process, for the
// two-process tests (and by hand: `xcpipe_transport_peer receive --listen 127.0.0.1:0`).
//
//   receive --listen HOST:PORT --count N         prints "listening PORT", then one line per
//                                                message ("got STEP"), then "done N"
//   send --to HOST:PORT --count N [--first-step S] [--rows R] [--hidden H]
//                                                prints "sent STEP" per message, then "done N"
//
// Messages carry transport::testing::PatternBytes so the other side can check every byte. Exit 0 on
// success; 1 with "error ..." on stdout otherwise.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "test_messages.h"
#include "xcpipe/transport/tcp_data_plane.h"

using namespace xcpipe;
using namespace xcpipe::transport;
using namespace std::chrono_literals;

namespace {

const char* Flag(int argc, char** argv, const char* name, const char* fallback) {
  for (int i = 2; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  }
  return fallback;
}

int Fail(const Status& s) {
  std::printf("error %s\n", s.ToString().c_str());
  std::fflush(stdout);
  return 1;
}

bool SameBytes(const StageMessage& got, int64_t rows, int64_t hidden) {
  StageMessage want = transport::testing::MakeStageMessage(got.step, rows, hidden);
  if (want.tensors.size() != got.tensors.size() || want.segments != got.segments) return false;
  for (size_t i = 0; i < want.tensors.size(); ++i) {
    const auto& a = want.tensors[i];
    const auto& b = got.tensors[i];
    if (a.byte_length() != b.byte_length() || a.shape() != b.shape() ||
        std::memcmp(a.bytes().data(), b.bytes().data(), a.byte_length()) != 0) {
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s receive|send ...\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1];
  const int count = std::atoi(Flag(argc, argv, "--count", "1"));
  const int64_t rows = std::atoll(Flag(argc, argv, "--rows", "64"));
  const int64_t hidden = std::atoll(Flag(argc, argv, "--hidden", "1024"));
  if (mode == "receive") {
    auto at = TcpEndpoint::Parse(Flag(argc, argv, "--listen", "127.0.0.1:0"));
    if (!at.ok()) return Fail(at.status());
    auto plane = TcpDataPlane::Create(transport::testing::ListenOn(*at));
    if (!plane.ok()) return Fail(plane.status());
    std::printf("listening %u\n", (*plane)->listen_endpoint()->port);
    std::fflush(stdout);
    for (int i = 0; i < count; ++i) {
      auto got = (*plane)->Receive(DeadlineAfter(30s));
      if (!got.ok()) return Fail(got.status());
      if (!SameBytes(*got, rows, hidden))
        return Fail(InvalidArgumentError("bytes of step " + std::to_string(got->step) + " differ"));
      std::printf("got %llu\n", static_cast<unsigned long long>(got->step));
      std::fflush(stdout);
    }
    std::printf("done %d\n", count);
    return 0;
  }
  if (mode == "send") {
    auto to = TcpEndpoint::Parse(Flag(argc, argv, "--to", ""));
    if (!to.ok()) return Fail(to.status());
    const uint64_t first = std::strtoull(Flag(argc, argv, "--first-step", "0"), nullptr, 10);
    auto plane = TcpDataPlane::Create(transport::testing::SendTo(*to));
    if (!plane.ok()) return Fail(plane.status());
    for (int i = 0; i < count; ++i) {
      Status s = (*plane)->Send(transport::testing::MakeStageMessage(first + i, rows, hidden), DeadlineAfter(30s));
      if (!s.ok()) return Fail(s);
      std::printf("sent %llu\n", static_cast<unsigned long long>(first + i));
      std::fflush(stdout);
    }
    std::printf("done %d\n", count);
    return 0;
  }
  std::fprintf(stderr, "unknown mode '%s'\n", mode.c_str());
  return 2;
}
