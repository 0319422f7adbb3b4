#include "xcpipe/testing/fault_report.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "xcpipe/base/files.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::testing {

bool ReportFault(const FaultRow& row) {
  namespace fs = std::filesystem;
  const fs::path dir = BinaryDir() / "reports";
  std::error_code ec;
  fs::create_directories(dir, ec);
  const fs::path file = dir / "faults.json";
  // Tests run in parallel (ctest -j): serialise the read-modify-write.
  const int lock = ::open((dir / "faults.json.lock").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  if (lock >= 0) ::flock(lock, LOCK_EX);
  nlohmann::json rows = nlohmann::json::array();
  if (auto text = ReadFileToString(file); text.ok()) {
    auto parsed = nlohmann::json::parse(*text, nullptr, false);
    if (parsed.is_array()) rows = parsed;
  }
  const nlohmann::json j = {{"scenario", row.scenario},     {"requests", row.requests},
                            {"completed", row.completed},   {"failed", row.failed},
                            {"duplicated", row.duplicated}, {"lost", row.lost},
                            {"detect_ms", row.detect_ms},   {"recover_ms", row.recover_ms},
                            {"tokens_identical", row.tokens_identical}};
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : rows)
    if (r.value("scenario", "") != row.scenario) out.push_back(r);
  out.push_back(j);
  const bool written = WriteFileAtomically(file, out.dump(2)).ok();
  if (lock >= 0) ::close(lock);
  std::cout << "fault row: " << j.dump() << std::endl;
  return written;
}

}  // namespace xcpipe::testing
