// The history of a chaos run, and the checker that reads it afterwards.
//
// A history is what every client saw, in the order each client saw it: one `HistoryEvent` per
// submit and per message received about a request (acknowledgements, token events, retry
// hints, endings, and anything that arrived after the ending), written one JSON object per line
// (`history.jsonl`). The checker replays it request by request, with no knowledge of the
// cluster, and verifies the properties the README's fault section promises:
//
//   1. every submitted request ended exactly once: one ending (a `done` token event or an
//      `error`), or several that say the same thing (the coordinator answers a repeated submit
//      of a finished request with its final events again); two endings that differ, or none, fail;
//   2. no token was delivered twice or changed after delivery: events place tokens at their
//      offset; a token at an offset already delivered must equal what was delivered there (an
//      exact repeat at the same offset is the protocol's redelivery, deduplicated by offset, and
//      only counted), the final event's full list must extend what was streamed, and a request
//      never delivers more tokens than it asked for;
//   3. every completed greedy request equals the fault-free run of the same prompt; where it does
//      not, the checker says whether a token was repeated (a duplicate), dropped, or changed;
//   4. every failure carries a stated reason from the documented set (`DocumentedFailureReasons`)
//      and a non-empty message;
//   5. every request of the liveness batch (submitted after the final heal) completed.
//
// Values only; nothing here does I/O except the JSONL reader and writer. Thread-safety: none
// needed (plain values); the runner appends events under its own lock.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace xcpipe::chaos {

// One thing a client saw (or did). `kind` is one of:
//   "submit"   the client submitted request `request` (prompt_key, max_new_tokens, greedy, phase);
//   "accepted" an acknowledgement (queued or running), no tokens;
//   "tokens"   a token event that is not the last: `tokens` at `offset`;
//   "retry"    a refusal worth repeating (not serving yet: `retry_after_ms`); not an ending;
//   "done"     the last token event: `finish_reason`, `all_tokens`, and `error` when it failed;
//   "error"    an error message about this request (`finish_reason` holds the code name);
//   "gave_up"  the client stopped waiting (its deadline passed) without an ending.
struct HistoryEvent {
  double t_ms = 0;              // since the run started
  std::string client;           // which client (one connection each)
  uint64_t request = 0;         // the client's request id
  std::string kind;
  // submit only:
  std::string prompt_key;       // which prompt of the workload (the reference is per prompt)
  uint32_t max_new_tokens = 0;
  bool greedy = true;
  std::string phase;            // "reference", "chaos" or "liveness"
  // token events:
  uint32_t offset = 0;
  std::vector<int64_t> tokens;
  std::vector<int64_t> all_tokens;  // done events
  std::string finish_reason;        // done / error: "stop", "length" or a code name
  std::string error;                // done / error: the message
  uint32_t retry_after_ms = 0;
};

nlohmann::json ToJson(const HistoryEvent& e);
HistoryEvent EventFromJson(const nlohmann::json& j);
// One event per line; false (with `error` set) on a line that does not parse.
bool ReadHistory(const std::string& path, std::vector<HistoryEvent>& out, std::string& error);

// The failure reasons the README documents for a request that cannot be served (code names of
// xcpipe::StatusCode): ResourceExhausted (busy, or the live workers cannot hold the model),
// Unavailable (not serving within the client's retry budget), DeadlineExceeded (the request's
// deadline passed), Aborted (the replay budget ran out), Cancelled (the client went away).
const std::set<std::string>& DocumentedFailureReasons();

struct CheckOptions {
  // Fault-free tokens per prompt_key; a completed greedy request whose prompt has none fails.
  std::map<std::string, std::vector<int64_t>> reference;
  std::set<std::string> allowed_reasons = DocumentedFailureReasons();
  // Requests of phase "liveness" must complete (the cluster serves after the final heal).
  bool require_liveness = true;
};

// The figures of one checked history (the fault table's columns) and what was wrong.
struct CheckResult {
  int requests = 0, completed = 0, duplicated = 0, lost = 0;
  std::map<std::string, int> failed;      // reason -> requests that ended with it
  int changed = 0;                        // requests with a token changed after delivery
  int differing = 0;                      // completed requests whose tokens differ from the reference
  int redelivered_events = 0;             // exact repeats at an offset already delivered (benign)
  int repeated_endings = 0;               // identical endings after the first (benign)
  int liveness_requests = 0, liveness_completed = 0;
  uint64_t tokens_checked = 0;
  std::vector<std::string> violations;    // empty: the history passes
  bool ok() const { return violations.empty(); }
  bool tokens_identical() const { return differing == 0 && changed == 0 && duplicated == 0; }
  nlohmann::json ToJson() const;
};

CheckResult CheckHistory(const std::vector<HistoryEvent>& history, const CheckOptions& options);

}  // namespace xcpipe::chaos
