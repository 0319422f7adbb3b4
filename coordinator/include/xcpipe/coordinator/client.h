// Client of a coordinator: what `xcpipe submit` and `xcpipe status` use, and what tests use
// to drive a cluster. Connects a DEALER, says hello (role client), then submits prompts and
// collects the streamed tokens, or asks for the cluster status.
//
// Not thread-safe: one Client per thread. Nothing throws; every wait has a deadline.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "xcpipe/base/status.h"
#include "xcpipe/control/curve.h"
#include "xcpipe/coordinator/edge.h"

namespace xcpipe::coordinator {

// Delivery over a control plane that may lose messages: a submit is repeated (same request id,
// which the coordinator deduplicates) when nothing has been heard for these long.
struct ClientTimings {
  static constexpr std::chrono::milliseconds kResubmitUnacknowledged{1000};  // before any answer
  static constexpr std::chrono::milliseconds kResubmitAfterSilence{4000};    // once accepted
  // Refusals marked retryable (not serving yet) are repeated at most this often (the retry
  // budget), waiting what the coordinator asked, capped.
  static constexpr int kMaxUnavailableRetries = 60;
  static constexpr std::chrono::milliseconds kMaxRetryBackoff{2000};
};

struct GenerateRequest {
  std::string prompt_json;            // a JSON string or list of strings
  std::vector<std::string> images;    // encoded PNG/JPEG bytes
  uint32_t max_new_tokens = 64;
  Sampling sampling;
  // Pre-tokenized form (used when token_ids is not empty; see proto Submit).
  std::vector<int64_t> token_ids;
  std::vector<uint8_t> im_mask;
  std::vector<PreparedImage> pixel_images;
  std::vector<int64_t> penalty_context;
  bool want_logits = false;
  // Polled between events (at least every 100 ms): true abandons the request. Generate then
  // returns what arrived so far with error "Cancelled: ..."; the caller must drop this Client,
  // whose closed connection makes the coordinator cancel the request and free its KV room when
  // it next sends to it (as for any client that went away).
  std::function<bool()> cancelled;
};

struct GenerateResult {
  std::vector<std::vector<int64_t>> token_ids;  // per prompt
  std::vector<std::string> texts;               // per prompt
  std::vector<std::string> finish_reasons;      // per prompt: "stop", "length" or an error code name
  std::string error;                            // set when the request failed
  std::vector<std::vector<float>> logits;       // want_logits: per generated token (first prompt)
  double ttft_ms = 0;        // submit to first token (first prompt)
  double total_ms = 0;       // submit to last event
  double tokens_per_s = 0;   // generated tokens / time after the first token (beam search, whose
                             // answer arrives whole at the end: / time since submit)
};

class Client {
 public:
  // With `curve` enabled the link is CURVE (this client's keys, the coordinator's public key).
  // A coordinator that refuses this client (unknown key, no keys, wrong server key) never
  // answers: Connect returns Unavailable after `timeout`, saying so.
  static StatusOr<std::unique_ptr<Client>> Connect(const std::string& endpoint, std::chrono::milliseconds timeout,
                                                   const control::CurveConfig& curve = {});
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Streams: on_text(prompt_index, new_text) is called as tokens arrive. The request's own
  // failures (refused input, faults) come back in GenerateResult::error with ok() status;
  // a non-OK status means the coordinator could not be reached in time.
  StatusOr<GenerateResult> Generate(const GenerateRequest& request, std::chrono::milliseconds timeout,
                                    const std::function<void(uint32_t, const std::string&)>& on_text = {});

  // The coordinator's status as JSON (same fields as proto StatusReply).
  StatusOr<nlohmann::json> GetStatus(std::chrono::milliseconds timeout);

 private:
  Client();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace xcpipe::coordinator
