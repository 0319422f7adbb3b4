// The fault suite's report: every fault scenario, whichever test binary or script runs it,
// merges one row into <build>/reports/faults.json (the README's faults table is read from it).
// Rows are keyed by scenario name; re-running a scenario replaces its row. Safe across
// processes: the read-modify-write holds an exclusive flock on a lock file beside the report.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace xcpipe::testing {

struct FaultRow {
  std::string scenario;
  int requests = 0, completed = 0, duplicated = 0, lost = 0;
  std::map<std::string, int> failed;  // reason -> requests that ended with it
  double detect_ms = 0, recover_ms = 0;
  bool tokens_identical = false;
};

// Merges `row` into the report and prints it; returns false when the report cannot be written.
bool ReportFault(const FaultRow& row);

// Waits for every request of a fault scenario and counts the outcomes into `row` (requests,
// completed, failed by reason, lost, duplicated, tokens_identical). `futures[i].get()` is what
// request i's client got (a StatusOr<GenerateResult>: not ok = no answer at all, i.e. lost);
// `requests[i].max_new_tokens` what it asked for; `reference[i]` the fault-free tokens.
template <typename Futures, typename Requests>
void TallyResults(Futures& futures, const Requests& requests, const std::vector<std::vector<int64_t>>& reference,
                  FaultRow& row) {
  row.requests = static_cast<int>(futures.size());
  bool identical = true;
  for (size_t i = 0; i < futures.size(); ++i) {
    auto result = futures[i].get();
    if (!result.ok()) {
      ++row.lost;
      continue;
    }
    if (!result->error.empty()) {
      ++row.failed[result->error.substr(0, result->error.find(':'))];
      identical = false;
      continue;
    }
    ++row.completed;
    const auto& got = result->token_ids[0];
    if (i < requests.size() && got.size() > requests[i].max_new_tokens) ++row.duplicated;
    if (i >= reference.size() || got != reference[i]) identical = false;
  }
  row.tokens_identical = identical && row.completed == row.requests;
}

}  // namespace xcpipe::testing
