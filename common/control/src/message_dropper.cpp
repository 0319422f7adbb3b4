#include "xcpipe/control/message_dropper.h"

#include <spdlog/spdlog.h>

#include <cstdlib>
#include <mutex>

namespace xcpipe::control {
namespace {

std::vector<std::string_view> Split(std::string_view text, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = text.find(sep, start);
    out.push_back(text.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return out;
}

}  // namespace

std::unique_ptr<MessageDropper> MessageDropper::FromEnvironment(bool router, std::string_view identity) {
  const char* spec = std::getenv("XCPIPE_DROP_CONTROL");
  if (spec == nullptr || *spec == '\0') return nullptr;
#ifdef XCPIPE_FAULT_INJECTION
  return Parse(spec, router, identity);
#else
  (void)router;
  (void)identity;
  static std::once_flag warned;
  std::call_once(warned, [] {
    spdlog::warn(
        "XCPIPE_DROP_CONTROL is set but ignored: this build has no fault injection "
        "(configure with -DXCPIPE_FAULT_INJECTION=ON, as test builds are)");
  });
  return nullptr;
#endif
}

std::unique_ptr<MessageDropper> MessageDropper::Parse(std::string_view spec, bool router, std::string_view identity) {
  auto dropper = std::make_unique<MessageDropper>();
  for (std::string_view text : Split(spec, ',')) {
    if (text.empty()) continue;
    auto f = Split(text, ':');
    // "router:dir:type:nth" or "dealer:prefix:dir:type:nth"
    size_t i = 0;
    bool applies = false;
    if (f.size() == 4 && f[0] == "router") {
      applies = router;
      i = 1;
    } else if (f.size() == 5 && f[0] == "dealer") {
      applies = !router && identity.substr(0, f[1].size()) == f[1];
      i = 2;
    } else {
      spdlog::warn("XCPIPE_DROP_CONTROL: ignoring malformed rule '{}'", text);
      continue;
    }
    Rule rule;
    if (f[i] == "send") {
      rule.direction = Direction::kSend;
    } else if (f[i] == "recv") {
      rule.direction = Direction::kReceive;
    } else {
      spdlog::warn("XCPIPE_DROP_CONTROL: '{}': direction must be send or recv", text);
      continue;
    }
    rule.type = std::string(f[i + 1]);
    std::string_view nth = f[i + 2];
    if (!nth.empty() && nth.back() == '+') {
      rule.and_after = true;
      nth.remove_suffix(1);
    }
    rule.nth = std::strtoull(std::string(nth).c_str(), nullptr, 10);
    if (rule.nth == 0 || rule.type.empty()) {
      spdlog::warn("XCPIPE_DROP_CONTROL: '{}': expected a message name and nth >= 1", text);
      continue;
    }
    if (applies) dropper->rules_.push_back(std::move(rule));
  }
  if (dropper->rules_.empty()) return nullptr;
  return dropper;
}

bool MessageDropper::ShouldDrop(Direction direction, std::string_view type) {
  bool drop = false;
  for (Rule& rule : rules_) {
    if (rule.direction != direction || rule.type != type) continue;
    ++rule.seen;
    if (rule.seen == rule.nth || (rule.and_after && rule.seen > rule.nth)) drop = true;
  }
  if (drop) {
    ++dropped_;
    spdlog::warn("fault injection: dropped a '{}' message on {}", type,
                 direction == Direction::kSend ? "send" : "receive");
  }
  return drop;
}

}  // namespace xcpipe::control
