#include "xcpipe/worker/compute_watchdog.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "xcpipe/control/socket.h"
#include "xcpipe/schemas/wire.h"

namespace xcpipe::worker {

int64_t ComputeWatchdog::NowMicros() const {
  return std::chrono::duration_cast<std::chrono::microseconds>(clock_.now().time_since_epoch()).count();
}

ComputeWatchdog::ComputeWatchdog(zmq::context_t& context, std::string coordinator, std::string routing_id,
                                 control::CurveConfig curve, const std::atomic<uint64_t>& epoch,
                                 const std::atomic<uint64_t>& steps_completed, Clock& clock)
    : context_(context), clock_(clock), epoch_(epoch), steps_completed_(steps_completed) {
  thread_ = std::thread([this, c = std::move(coordinator), id = std::move(routing_id), k = std::move(curve)]() mutable {
    Loop(std::move(c), std::move(id), std::move(k));
  });
}

ComputeWatchdog::~ComputeWatchdog() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

void ComputeWatchdog::BeginStep(int64_t rows, uint64_t micro_batch, Work work) {
  const int64_t now = NowMicros();
  work_.store(static_cast<int>(work));
  step_rows_.store(std::max<int64_t>(1, rows));
  micro_batch_.store(micro_batch);
  last_progress_us_.store(now);
  step_started_us_.store(now);
}

void ComputeWatchdog::Progress() {
  const int64_t now = NowMicros();
  const int64_t interval = now - last_progress_us_.exchange(now);
  const double per_row = static_cast<double>(interval) / static_cast<double>(step_rows_.load());
  std::atomic<double>& slowest = slowest_us_per_row_[work_.load()];
  double seen = slowest.load();
  while (per_row > seen && !slowest.compare_exchange_weak(seen, per_row)) {
  }
}

void ComputeWatchdog::EndStep() {
  Progress();
  step_started_us_.store(0);
}

std::chrono::microseconds ComputeWatchdog::CurrentWindow() const {
  const double per_row = slowest_us_per_row_[work_.load()].load();
  if (per_row <= 0) return ComputeWatchdogTimings::kFirstStepWindow;
  const auto expected = std::chrono::microseconds(
      static_cast<int64_t>(ComputeWatchdogTimings::kWindowFactor * per_row * static_cast<double>(step_rows_.load())));
  return std::max<std::chrono::microseconds>(ComputeWatchdogTimings::kMinWindow, expected);
}

void ComputeWatchdog::Loop(std::string coordinator, std::string routing_id, control::CurveConfig curve) {
  auto socket = control::ControlSocket::ConnectDealer(context_, coordinator, routing_id + "/watchdog", curve);
  if (!socket.ok()) {
    spdlog::warn("compute watchdog: cannot connect to {}: {}", coordinator, socket.status().ToString());
    return;
  }
  uint64_t sequence = 0;
  uint64_t reported_step = 0;   // the step already reported stuck (report once)
  int64_t introduced_step = 0;  // the step the last hello preceded
  int since_hello = 0;          // messages since; a hello every kMessagesPerHello reaches a
                                // coordinator that restarted during a long step
  while (!stop_.load()) {
    std::this_thread::sleep_for(control::ControlTimings::kHeartbeatInterval);
    const int64_t started = step_started_us_.load();
    if (started == 0) continue;  // idle: the actor heartbeats itself
    if (started != introduced_step || ++since_hello >= kMessagesPerHello) {
      capnp::MallocMessageBuilder hello;
      auto h = hello.initRoot<proto::Envelope>().initHello();
      h.setProtocolVersion(proto::K_PROTOCOL_VERSION);
      h.setRole(proto::Role::WATCHDOG);
      h.setWatches(routing_id);
      if (Status st = (*socket)->Send(hello, {}, std::chrono::milliseconds(0)); !st.ok()) {
        spdlog::debug("compute watchdog: {}", st.ToString());
        continue;
      }
      introduced_step = started;
      since_hello = 0;
    }
    const int64_t stalled_us = NowMicros() - last_progress_us_.load();
    capnp::MallocMessageBuilder m;
    auto env = m.initRoot<proto::Envelope>();
    if (stalled_us <= CurrentWindow().count()) {
      auto hb = env.initHeartbeat();
      hb.setSequence(++sequence);
      hb.setEpoch(epoch_.load());
      hb.setStepsCompleted(steps_completed_.load());
      hb.setMicroBatch(micro_batch_.load());
    } else {
      if (reported_step == static_cast<uint64_t>(started)) continue;  // reported; stay silent
      reported_step = static_cast<uint64_t>(started);
      const std::string why = "compute stuck: no progress for " + std::to_string(stalled_us / 1000) +
                              " ms in micro-batch " + std::to_string(micro_batch_.load()) + " (window " +
                              std::to_string(CurrentWindow().count() / 1000) + " ms)";
      spdlog::error("{}", why);
      wire::SetError(env, DeadlineExceededError(why)).setMicroBatchId(micro_batch_.load());
      env.getError().setStalledMs(static_cast<uint32_t>(stalled_us / 1000));
    }
    if (Status st = (*socket)->Send(m, {}, std::chrono::milliseconds(0)); !st.ok()) {
      spdlog::debug("compute watchdog: {}", st.ToString());
    }
  }
}

}  // namespace xcpipe::worker
