// The fault suite's report: every fault scenario, whichever test binary or script runs it,
// merges one row into <build>/reports/faults.json (the README's faults table is read from it).
// Rows are keyed by scenario name; re-running a scenario replaces its row. Safe across
// processes: the read-modify-write holds an exclusive flock on a lock file beside the report.
#pragma once

#include <map>
#include <string>

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

}  // namespace xcpipe::testing
