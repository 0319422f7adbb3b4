// Shared helpers of the tokenizer tests: where the fixtures are, the two real tokenizers
// (loaded once), and JSON / .npy readers that fail the test instead of returning errors.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "xcpipe/testing/paths.h"
#include "xcpipe/tokenizer/tokenizer.h"

namespace xcpipe::tokenizer::test {

inline std::filesystem::path Fixtures() { return xcpipe::testing::FixturesDir(); }

// nullptr when the fixture is absent (the caller skips).
const Tokenizer* InternLm2Tokenizer();  // fixtures/tokenizer/tokenizer.model
const Tokenizer* Ixc1Tokenizer();       // fixtures/ixc1/tokenizer/tokenizer.model

nlohmann::json ReadJson(const std::filesystem::path& path);  // ADD_FAILURE and null on error
std::vector<int64_t> ReadIdsRow(const std::filesystem::path& npy, int64_t row = 0);
std::vector<int64_t> ToI64(const std::vector<TokenId>& ids);

}  // namespace xcpipe::tokenizer::test

#define XCPIPE_REQUIRE(ptr, what)                                                                               \
  do {                                                                                                          \
    if ((ptr) == nullptr) GTEST_SKIP() << what << " not found under " << ::xcpipe::tokenizer::test::Fixtures(); \
  } while (0)
