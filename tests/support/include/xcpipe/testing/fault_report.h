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

// Counts the outcomes of a fault scenario's requests into `row` (requests, completed, failed
// by reason, lost, duplicated, tokens_identical). `results[i]` is what request i's client got
// (a StatusOr<GenerateResult>: not ok = no answer at all, i.e. lost); `reference[i]` the
// fault-free tokens and `max_new[i]` how many tokens request i asked for.
template <typename Results>
void TallyResults(Results& results, const std::vector<std::vector<int64_t>>& reference,
                  const std::vector<uint32_t>& max_new, FaultRow& row) {
  row.requests = static_cast<int>(results.size());
  bool identical = true;
  for (size_t i = 0; i < results.size(); ++i) {
    auto& result = results[i];
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
    if (i < max_new.size() && got.size() > max_new[i]) ++row.duplicated;
    if (i >= reference.size() || got != reference[i]) identical = false;
  }
  row.tokens_identical = identical && row.completed == row.requests;
}

}  // namespace xcpipe::testing
