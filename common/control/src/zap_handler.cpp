#include "xcpipe/control/zap_handler.h"

#include <spdlog/spdlog.h>
#include <zmq.h>

#include <array>
#include <future>
#include <map>
#include <vector>

#include "xcpipe/control/curve.h"

namespace xcpipe::control {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kRefusalLogEvery = std::chrono::seconds(10);

}  // namespace

ZapHandler::ZapHandler(zmq::context_t& context, std::set<std::string> allowed_keys)
    : context_(context), allowed_(std::move(allowed_keys)) {}

StatusOr<std::unique_ptr<ZapHandler>> ZapHandler::Start(zmq::context_t& context, std::set<std::string> allowed_keys) {
  std::unique_ptr<ZapHandler> h(new ZapHandler(context, std::move(allowed_keys)));
  auto bound = std::make_shared<std::promise<Status>>();
  auto ready = bound->get_future();
  h->thread_ = std::thread([raw = h.get(), bound] { raw->Loop(bound); });
  Status st = ready.get();
  if (!st.ok()) {
    h->thread_.join();  // Loop returned after reporting the failure
    return st;
  }
  return h;
}

ZapHandler::~ZapHandler() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

void ZapHandler::Loop(std::shared_ptr<std::promise<Status>> bound) {
  std::unique_ptr<zmq::socket_t> socket;
  try {
    socket = std::make_unique<zmq::socket_t>(context_, zmq::socket_type::rep);
    socket->set(zmq::sockopt::linger, 0);
    socket->bind(kEndpoint);
  } catch (const zmq::error_t& e) {
    bound->set_value(UnavailableError(std::string("ZAP handler: cannot bind ") + kEndpoint + ": " + e.what()));
    return;
  }
  bound->set_value(OkStatus());
  std::map<std::string, Clock::time_point> last_logged;  // address + fingerprint
  while (!stop_.load()) {
    try {
      zmq::pollitem_t item{socket->handle(), 0, ZMQ_POLLIN, 0};
      if (zmq::poll(&item, 1, kPollInterval) == 0) continue;
      // Request (RFC 27): version, request id, domain, address, identity, mechanism, credentials...
      std::vector<zmq::message_t> frames;
      while (true) {
        zmq::message_t f;
        if (!socket->recv(f, zmq::recv_flags::dontwait)) break;
        const bool more = f.more();
        frames.push_back(std::move(f));
        if (!more || frames.size() > 16) break;
      }
      if (frames.empty()) continue;
      std::string request_id = frames.size() > 1 ? frames[1].to_string() : "";
      std::string address = frames.size() > 3 ? frames[3].to_string() : "?";
      std::string mechanism = frames.size() > 5 ? frames[5].to_string() : "";
      std::string key;
      std::string why;
      if (frames.size() < 6 || frames[0].to_string() != "1.0") {
        why = "malformed ZAP request";
      } else if (frames[2].to_string() != kDomain) {
        why = "unexpected ZAP domain";
      } else if (mechanism != "CURVE") {
        why = "mechanism " + mechanism + " (CURVE required)";
      } else if (frames.size() < 7 || frames[6].size() != 32) {
        why = "malformed CURVE credentials";
      } else {
        std::array<char, kZ85KeyChars + 1> z85{};
        if (zmq_z85_encode(z85.data(), static_cast<const uint8_t*>(frames[6].data()), 32) == nullptr) {
          why = "malformed CURVE credentials";
        } else {
          key.assign(z85.data(), kZ85KeyChars);
          if (allowed_.count(key) == 0) why = "public key " + KeyFingerprint(key) + "... is not on the allow-list";
        }
      }
      const bool ok = why.empty();
      (ok ? accepted_ : refused_).fetch_add(1);
      if (!ok) {
        const std::string log_key = address + "|" + KeyFingerprint(key) + "|" + mechanism;
        const auto now = Clock::now();
        auto it = last_logged.find(log_key);
        if (it == last_logged.end() || now - it->second > kRefusalLogEvery) {
          spdlog::warn("control: refused a connection from {}: {}", address, why);
          last_logged[log_key] = now;
        }
      }
      // Reply: version, request id, status code, status text, user id, metadata.
      socket->send(zmq::str_buffer("1.0"), zmq::send_flags::sndmore);
      socket->send(zmq::buffer(request_id), zmq::send_flags::sndmore);
      socket->send(ok ? zmq::str_buffer("200") : zmq::str_buffer("400"), zmq::send_flags::sndmore);
      socket->send(ok ? zmq::str_buffer("OK") : zmq::str_buffer("not allowed"), zmq::send_flags::sndmore);
      socket->send(ok ? zmq::buffer(KeyFingerprint(key)) : zmq::str_buffer(""), zmq::send_flags::sndmore);
      socket->send(zmq::str_buffer(""), zmq::send_flags::none);
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) break;
      // A REP socket left mid-reply would stall every later handshake: start a fresh one.
      // Until it is bound, handshakes find no handler and fail (ZAP_ENFORCE_DOMAIN).
      spdlog::warn("control: ZAP handler: {}; restarting its socket", e.what());
      try {
        socket.reset();
        socket = std::make_unique<zmq::socket_t>(context_, zmq::socket_type::rep);
        socket->set(zmq::sockopt::linger, 0);
        socket->bind(kEndpoint);
      } catch (const zmq::error_t& again) {
        spdlog::error("control: ZAP handler cannot rebind: {}; every new connection will be refused", again.what());
        std::this_thread::sleep_for(kPollInterval);
      }
    }
  }
}

}  // namespace xcpipe::control
