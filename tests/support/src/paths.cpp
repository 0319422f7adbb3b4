#include "xcpipe/testing/paths.h"

#include <cstdlib>

namespace xcpipe::testing {
namespace {

std::filesystem::path FromEnv(const char* name, const char* fallback) {
  const char* value = std::getenv(name);
  return (value != nullptr && *value != '\0') ? std::filesystem::path(value) : std::filesystem::path(fallback);
}

}  // namespace

std::filesystem::path SourceDir() { return FromEnv("XCPIPE_SOURCE_DIR", XCPIPE_SOURCE_DIR_DEFAULT); }
std::filesystem::path BinaryDir() { return FromEnv("XCPIPE_BINARY_DIR", XCPIPE_BINARY_DIR_DEFAULT); }
std::filesystem::path BinDir() { return BinaryDir() / "bin"; }
std::filesystem::path FixturesDir() { return FromEnv("XCPIPE_FIXTURES_DIR", XCPIPE_FIXTURES_DIR_DEFAULT); }

}  // namespace xcpipe::testing
