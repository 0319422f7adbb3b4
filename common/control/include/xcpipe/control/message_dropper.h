// MessageDropper: fault injection for the control plane. Drops chosen control messages on a
// socket, so tests can show that losing any one message type (a request or its reply) costs
// time, never a request.
//
// Configured from the environment variable XCPIPE_DROP_CONTROL, read when a socket is made (so
// worker processes inherit it from the test that starts them), in builds configured with
// XCPIPE_FAULT_INJECTION (test builds); other builds ignore the variable with a warning. A comma-separated list of
// rules:
//
//   <socket>:<direction>:<message>:<nth>
//     socket     "router" (the coordinator) or "dealer:<identity prefix>" ("dealer:local-1",
//                "dealer:client")
//     direction  "send" or "recv"
//     message    the Envelope union member, as in schemas/xcpipe.capnp ("forward", "stepResult")
//     nth        drop the nth matching message on that socket (1-based); "nth+" drops every
//                matching message from the nth on
//
// e.g. XCPIPE_DROP_CONTROL=router:send:forward:3,dealer:local-0:send:stepResult:2
//
// Unset (the normal case) costs one getenv per socket. A malformed rule is logged and ignored
// (this is a test hook; it must never stop a process that serves). Per socket, so not
// thread-safe beyond the socket's own thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace xcpipe::control {

class MessageDropper {
 public:
  enum class Direction { kSend, kReceive };
  // nullptr when XCPIPE_DROP_CONTROL names no rule for this socket.
  static std::unique_ptr<MessageDropper> FromEnvironment(bool router, std::string_view identity);
  // Parses `spec` (the variable's format) for a socket; nullptr when no rule applies.
  static std::unique_ptr<MessageDropper> Parse(std::string_view spec, bool router, std::string_view identity);

  // Counts a message of `type` (the union member's name) and says whether to drop it.
  bool ShouldDrop(Direction direction, std::string_view type);
  uint64_t dropped() const { return dropped_; }

 private:
  struct Rule {
    Direction direction = Direction::kSend;
    std::string type;
    uint64_t nth = 1;
    bool and_after = false;
    uint64_t seen = 0;
  };
  std::vector<Rule> rules_;
  uint64_t dropped_ = 0;
};

}  // namespace xcpipe::control
