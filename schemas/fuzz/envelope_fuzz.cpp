// libFuzzer target for control-plane messages: arbitrary bytes through wire::Decode, and every
// field of whatever decodes read generically (see envelope_fuzz_body.h for the invariants).
// Any crash, sanitizer report, hang, or broken invariant is a bug. The seed corpus in corpus/
// is replayed by the unit test tests/envelope_fuzz_corpus_test.cpp, which also writes it.
//
// Build: -DXCPIPE_FUZZ=ON with clang (the normal build does it in build/fuzz when clang and
// libFuzzer are installed); run: build/fuzz/bin/xcpipe_schemas_envelope_fuzz schemas/fuzz/corpus
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "envelope_fuzz_body.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace xcpipe::wire::fuzz;
  const EnvelopeRound round = FuzzEnvelopeOnce(AsByteSpan(data, size));
  if (!round.violation.empty()) {
    std::fprintf(stderr, "envelope fuzz: %s\n", round.violation.c_str());
    std::abort();
  }
  return 0;
}
