// A coordinator played by a test: a ROUTER on loopback, one real xcpipe-worker process that it
// starts and welcomes, and helpers to send envelopes and wait for one kind of answer while the
// worker's heartbeats are answered (a worker says hello again after 2.5 s of silence).
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "xcpipe/base/subprocess.h"
#include "xcpipe/control/socket.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::worker::testing {

class ScriptedCoordinator {
 public:
  using Clock = std::chrono::steady_clock;

  // Starts the worker (CPU, one thread) and answers its hello with a welcome of `epoch`.
  // Failures are reported with gtest assertions; ok() says whether it is up.
  explicit ScriptedCoordinator(const std::string& worker_id, uint64_t epoch = 1) : epoch_(epoch) {
    auto router = control::ControlSocket::BindRouter(context_, "tcp://127.0.0.1:*");
    EXPECT_TRUE(router.ok()) << router.status().ToString();
    if (!router.ok()) return;
    router_ = std::move(router).value();
    auto worker =
        Subprocess::Start({(xcpipe::testing::BinDir() / "xcpipe-worker").string(), "--coordinator",
                           router_->last_endpoint(), "--worker-id", worker_id, "--device", "cpu", "--threads", "1"},
                          {.capture_stdout = false, .silence_stderr = true, .extra_env = {}});
    EXPECT_TRUE(worker.ok()) << worker.status().ToString();
    if (!worker.ok()) return;
    worker_ = std::move(worker).value();
    auto hello = Await(proto::Envelope::HELLO, std::chrono::seconds(20));
    EXPECT_TRUE(hello.has_value()) << "no hello from the worker";
    if (!hello) return;
    for (auto p : hello->message->envelope().getHello().getCapabilities().getDataPlanes()) {
      data_planes_.emplace_back(p.cStr());
    }
    capnp::MallocMessageBuilder m;
    auto w = m.initRoot<proto::Envelope>().initWelcome();
    w.setProtocolVersion(proto::K_PROTOCOL_VERSION);
    w.setEpoch(epoch_);
    EXPECT_TRUE(Send(m));
  }

  // Orders the worker to shut down and expects a clean exit.
  ~ScriptedCoordinator() {
    if (router_ && !peer_.empty()) {
      capnp::MallocMessageBuilder m;
      m.initRoot<proto::Envelope>().initShutdown().setReason("test over");
      (void)Send(m);
    }
    if (worker_) {
      auto code = worker_->Wait(std::chrono::seconds(10));
      EXPECT_TRUE(code.ok() && *code == 0) << "the worker did not exit cleanly after shutdown";
    }
  }

  bool ok() const { return router_ != nullptr && worker_ != nullptr && !peer_.empty(); }
  const std::vector<std::string>& data_planes() const { return data_planes_; }
  void set_epoch(uint64_t epoch) { epoch_ = epoch; }

  bool Send(capnp::MessageBuilder& m) {
    Status st = router_->Send(m, peer_);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return st.ok();
  }

  // The next envelope of kind `which` (or an error, which is always returned), answering
  // heartbeats and dropping everything else; nullopt after `timeout`.
  std::optional<control::Incoming> Await(proto::Envelope::Which which, std::chrono::milliseconds timeout) {
    const auto until = Clock::now() + timeout;
    while (Clock::now() < until) {
      auto in = router_->Receive(std::chrono::milliseconds(100));
      if (!in.ok() || !in->has_value()) continue;
      if (peer_.empty()) peer_ = (*in)->peer;
      const auto kind = (*in)->message->envelope().which();
      if (kind == which || kind == proto::Envelope::ERROR) return std::move(**in);
      if (kind == proto::Envelope::HEARTBEAT) {
        capnp::MallocMessageBuilder hb;
        hb.initRoot<proto::Envelope>().initHeartbeat().setEpoch(epoch_);
        (void)router_->Send(hb, peer_);
      }
    }
    return std::nullopt;
  }

 private:
  zmq::context_t context_;
  std::unique_ptr<control::ControlSocket> router_;
  std::unique_ptr<Subprocess> worker_;
  std::string peer_;
  std::vector<std::string> data_planes_;
  uint64_t epoch_;
};

}  // namespace xcpipe::worker::testing
