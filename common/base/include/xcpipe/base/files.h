// Small file and JSON helpers that return Status instead of throwing. Every error names the
// path and, for JSON, the byte position.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "xcpipe/base/status.h"

namespace xcpipe {

// Reads a whole file. NotFound if it is missing; InvalidArgument if larger than max_bytes.
StatusOr<std::string> ReadFileToString(const std::filesystem::path& path,
                                       uint64_t max_bytes = uint64_t{1} << 30);

// Writes through a temporary file and rename, so readers never see a partial file.
Status WriteFileAtomically(const std::filesystem::path& path, std::string_view contents);

// Parses JSON text; `what` names the source in the error ("config.json").
StatusOr<nlohmann::json> ParseJson(std::string_view text, std::string_view what);
StatusOr<nlohmann::json> ReadJsonFile(const std::filesystem::path& path);

}  // namespace xcpipe
