// A beam request's state in the coordinator (coordinator-private; one actor thread owns it):
// its search and its beams' sequences. Architecture: docs/architecture.md, "Beam groups".
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "xcpipe/beam/beam_search.h"

namespace xcpipe::coordinator::detail {

// A beam request's search (Sampling::num_beams > 1), kept here so that a replay after a fault is
// exact: the stages recompute the KV of the steps already taken (same parents, same tokens) and
// the search itself is never run twice. Its beams are sequences of their own on the stages
// (ids[0] is the Sequence's own id; the others appear only in admissions, steps and releases).
//
//   admitted ──prefill ids[0] (in pieces maybe)──► step 1: every beam forks from ids[0] ──► ...
//     each step: parents + tokens of the last selection go out, every stage reorders, the last
//     stage answers each beam row with its best candidates, the search selects again
//   done ──► the best hypothesis is delivered whole, every beam released at once
//   fault ──► re-admitted, fed = 0: the prompt and history[0..] are stepped again, their
//             candidates ignored, until fed reaches history.size(); then the search goes on
struct BeamGroup {
  beam::BeamSearch search;
  std::vector<uint64_t> ids;  // every beam's sequence id, ids[0] the Sequence's
  struct Selection {
    std::vector<int64_t> parents, tokens;
  };
  std::vector<Selection> history;  // the search's selections, one per step taken
  size_t fed = 0;                  // model steps completed since the (re)admission (0: prompt pending)
};

}  // namespace xcpipe::coordinator::detail
