#include "xcpipe/base/files.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <system_error>

namespace xcpipe {

StatusOr<std::string> ReadFileToString(const std::filesystem::path& path, uint64_t max_bytes) {
  std::error_code ec;
  auto size = std::filesystem::file_size(path, ec);
  if (ec) {
    if (ec == std::errc::no_such_file_or_directory) return NotFoundError(path.string() + ": no such file");
    return InvalidArgumentError(path.string() + ": " + ec.message());
  }
  if (size > max_bytes) {
    return InvalidArgumentError(path.string() + ": " + std::to_string(size) + " bytes, more than the limit of " +
                                std::to_string(max_bytes));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return InvalidArgumentError(path.string() + ": cannot open for reading");
  std::string data(size, '\0');
  in.read(data.data(), static_cast<std::streamsize>(size));
  if (static_cast<uint64_t>(in.gcount()) != size) {
    return InvalidArgumentError(path.string() + ": short read (file changed while reading?)");
  }
  return data;
}

Status WriteFileAtomically(const std::filesystem::path& path, std::string_view contents) {
  auto tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return InvalidArgumentError(tmp.string() + ": cannot open for writing");
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    if (!out) return InternalError(tmp.string() + ": write failed (disk full?)");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return InternalError("rename " + tmp.string() + " -> " + path.string() + ": " + ec.message());
  return OkStatus();
}

StatusOr<nlohmann::json> ParseJson(std::string_view text, std::string_view what) {
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::parse_error& e) {
    return InvalidArgumentError(std::string(what) + ": invalid JSON at byte " + std::to_string(e.byte) + ": " +
                                e.what());
  }
}

StatusOr<nlohmann::json> ReadJsonFile(const std::filesystem::path& path) {
  XCPIPE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseJson(text, path.string());
}


}  // namespace xcpipe
