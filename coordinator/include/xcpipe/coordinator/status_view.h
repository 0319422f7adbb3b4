// How `xcpipe status` shows a cluster: the status JSON (Client::GetStatus) as a text table
// (cluster line, request line, one row per worker, one row per stage with planned vs used
// memory by category, KV utilisation, step-time p50/p99, idle fraction, bytes sent, queued
// steps) and warning lines for workers whose used memory nears capacity. Pure functions.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace xcpipe::coordinator {

// One line per live worker whose used memory exceeds kMemoryWarningFraction (metrics.h) of
// its capacity, e.g. "warning: worker local-1 (stage 1) uses 93% of its memory (...)".
std::vector<std::string> MemoryWarnings(const nlohmann::json& status);

// The whole table, warnings last; every line ends with '\n'. Missing fields read as 0.
std::string FormatStatusTable(const nlohmann::json& status);

}  // namespace xcpipe::coordinator
