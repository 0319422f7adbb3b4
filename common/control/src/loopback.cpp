// LoopbackHub (see transport.h): queues under one mutex, a condition variable per waiting end.
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>

#include "xcpipe/control/transport.h"
#include "xcpipe/schemas/wire.h"

namespace xcpipe::control {

struct LoopbackHub::State {
  std::string address;
  std::mutex mu;
  std::condition_variable changed;
  std::deque<std::pair<std::string, std::string>> to_router;  // (sender identity, bytes)
  std::map<std::string, std::deque<std::string>> to_dealer;   // connected identities' inboxes

  // Waits up to `timeout` for `queue` to hold something (lock held).
  template <typename Queue>
  bool WaitFor(std::unique_lock<std::mutex>& lock, const Queue& queue, std::chrono::milliseconds timeout) {
    return changed.wait_for(lock, timeout, [&] { return !queue().empty(); });
  }
};

namespace {

StatusOr<std::optional<Incoming>> DecodeIncoming(std::string peer, const std::string& bytes) {
  auto decoded = wire::Decode(std::as_bytes(std::span(bytes.data(), bytes.size())));
  if (!decoded.ok()) return decoded.status().WithContext("message from " + peer);
  Incoming in;
  in.peer = std::move(peer);
  in.message = std::move(decoded).value();
  return std::optional<Incoming>(std::move(in));
}

}  // namespace

class LoopbackHub::RouterEnd final : public ControlTransport {
 public:
  explicit RouterEnd(std::shared_ptr<State> state) : state_(std::move(state)) {}
  Status Send(capnp::MessageBuilder& message, const std::string& peer, std::chrono::milliseconds) override {
    std::string bytes = wire::Encode(message);
    std::lock_guard lock(state_->mu);
    auto inbox = state_->to_dealer.find(peer);
    if (inbox == state_->to_dealer.end()) return NotFoundError("send to " + peer + ": peer is not connected");
    inbox->second.push_back(std::move(bytes));
    state_->changed.notify_all();
    return OkStatus();
  }
  StatusOr<std::optional<Incoming>> Receive(std::chrono::milliseconds timeout) override {
    std::unique_lock lock(state_->mu);
    if (!state_->WaitFor(
            lock, [&]() -> const auto& { return state_->to_router; }, timeout)) {
      return std::optional<Incoming>();
    }
    auto [peer, bytes] = std::move(state_->to_router.front());
    state_->to_router.pop_front();
    lock.unlock();
    return DecodeIncoming(std::move(peer), bytes);
  }
  std::string address() const override { return state_->address; }

 private:
  std::shared_ptr<State> state_;
};

class LoopbackHub::DealerEnd final : public ControlTransport {
 public:
  DealerEnd(std::shared_ptr<State> state, std::string identity)
      : state_(std::move(state)), identity_(std::move(identity)) {}
  ~DealerEnd() override {
    std::lock_guard lock(state_->mu);
    state_->to_dealer.erase(identity_);
  }
  Status Send(capnp::MessageBuilder& message, const std::string&, std::chrono::milliseconds) override {
    std::string bytes = wire::Encode(message);
    std::lock_guard lock(state_->mu);
    state_->to_router.emplace_back(identity_, std::move(bytes));
    state_->changed.notify_all();
    return OkStatus();
  }
  StatusOr<std::optional<Incoming>> Receive(std::chrono::milliseconds timeout) override {
    std::unique_lock lock(state_->mu);
    auto& inbox = state_->to_dealer[identity_];
    if (!state_->WaitFor(
            lock, [&]() -> const auto& { return inbox; }, timeout))
      return std::optional<Incoming>();
    std::string bytes = std::move(inbox.front());
    inbox.pop_front();
    lock.unlock();
    return DecodeIncoming({}, bytes);
  }
  std::string address() const override { return state_->address; }

 private:
  std::shared_ptr<State> state_;
  std::string identity_;
};

LoopbackHub::LoopbackHub(std::string address) : state_(std::make_shared<State>()) {
  state_->address = std::move(address);
}

LoopbackHub::~LoopbackHub() = default;

std::unique_ptr<ControlTransport> LoopbackHub::Router() { return std::make_unique<RouterEnd>(state_); }

std::unique_ptr<ControlTransport> LoopbackHub::Connect(const std::string& identity) {
  {
    std::lock_guard lock(state_->mu);
    state_->to_dealer[identity];
  }
  return std::make_unique<DealerEnd>(state_, identity);
}

}  // namespace xcpipe::control
