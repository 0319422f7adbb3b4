// Where tests find the source tree, the build tree and the golden fixtures. Each can be
// overridden by an environment variable of the same name (XCPIPE_SOURCE_DIR,
// XCPIPE_BINARY_DIR, XCPIPE_FIXTURES_DIR).
#pragma once

#include <filesystem>

namespace xcpipe::testing {

std::filesystem::path SourceDir();
std::filesystem::path BinaryDir();
std::filesystem::path BinDir();  // BinaryDir()/bin: the xcpipe executables
// ../shared/fixtures beside the checkout unless overridden; tests that need it skip with a
// message naming the path when it is absent.
std::filesystem::path FixturesDir();

}  // namespace xcpipe::testing
