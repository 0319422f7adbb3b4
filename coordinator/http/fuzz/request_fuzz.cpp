// libFuzzer target for the HTTP API's request side (-DXCPIPE_FUZZ=ON with clang); the checks
// are in request_fuzz_body.h, which the corpus regression test runs too.
// Run: build/bin/xcpipe_http_request_fuzz coordinator/http/fuzz/corpus (add -max_total_time=60)
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "request_fuzz_body.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bool accepted = false;
  const std::string broken =
      xcpipe::http::fuzz::CheckRequestOnce(std::string_view(reinterpret_cast<const char*>(data), size), &accepted);
  if (!broken.empty()) {
    std::fprintf(stderr, "invariant broken: %s\n", broken.c_str());
    std::abort();
  }
  return 0;
}
