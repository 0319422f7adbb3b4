// libFuzzer target for the prompt parser and everything an accepted prompt goes through
// (-DXCPIPE_FUZZ=ON with clang). The tokenizer is the file named by XCPIPE_FUZZ_TOKENIZER
// (for instance the fixtures' tokenizer.model), or one trained on the first call.
// Run: build/bin/xcpipe_tokenizer_prompt_fuzz common/tokenizer/fuzz/corpus (add -max_total_time=60)
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "prompt_fuzz_body.h"
#include "xcpipe/tokenizer/train.h"

namespace {

const xcpipe::tokenizer::Tokenizer* FuzzTokenizer() {
  static std::unique_ptr<xcpipe::tokenizer::Tokenizer> tokenizer = [] {
    std::unique_ptr<xcpipe::tokenizer::Tokenizer> tok;
    if (const char* path = std::getenv("XCPIPE_FUZZ_TOKENIZER")) {
      auto loaded = xcpipe::tokenizer::Tokenizer::LoadFromFile(path);
      if (loaded.ok()) tok = std::move(loaded).value();
    }
    if (!tok) {
      auto model = xcpipe::tokenizer::TrainTokenizer({});
      if (model.ok()) {
        auto loaded = xcpipe::tokenizer::Tokenizer::LoadFromBytes(*model);
        if (loaded.ok()) tok = std::move(loaded).value();
      }
    }
    return tok;
  }();
  return tokenizer.get();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  xcpipe::Status parse;
  const xcpipe::Status s = xcpipe::tokenizer::fuzz::FuzzPromptOnce(
      std::string_view(reinterpret_cast<const char*>(data), size), FuzzTokenizer(), &parse);
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    std::abort();
  }
  return 0;
}
