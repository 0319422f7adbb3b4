// The three ways `xcpipe plan` prints a plan: a table for people, the JSON document tools read,
// and a device map for accelerate.dispatch_model (for users still on the Python path).
//
// JSON (field names are a contract; scripts and the README rely on them):
//   {"strategy", "feasible", "bottleneck_ms",
//    "stages": [{"index", "host", "device", "blocks": [...],
//                "predicted_bytes": {"weights", "kv", "activations", "total"},
//                "capacity_bytes", "predicted_step_ms"}],
//    "vision": {"placement": "first" | "separate", "reason" (why auto chose it; "" otherwise),
//               "tower_passes" (per image at the worst tile grid),
//               "encode_ms_per_image" (stage 0's, for one image at the worst tile grid),
//               "workers": [{"role": "stage" | "extra", "host", "device",
//                            "predicted_bytes": {"weights", "activations", "workspace", "total"},
//                            "capacity_bytes", "encode_ms_per_image"}]},
//    "device_map": {"<every tensor name>": <stage index>}}
// A stage's "activations" counts transient activations plus workspace (runtime reserve,
// transport buffers), so weights + kv + activations == total; the table shows the two apart,
// and so do vision workers (weights + activations + workspace == total). "workers" lists the
// vision workers of a plan with vision apart (stage 0, then Plan::extra_vision); it is empty
// when vision runs on stage 0 with the embeddings.
//
// Pure functions of their inputs; thread-safe. AccelerateDeviceMap fails with
// FailedPrecondition for a plan spanning several hosts (dispatch_model runs in one process).
#pragma once

#include <string>

#include <nlohmann/json_fwd.hpp>

#include "xcpipe/base/status.h"
#include "xcpipe/planner/planner.h"

namespace xcpipe::planner {

std::string FormatPlanTable(const Plan& plan, const PlanningModel& model, const ClusterSpec& cluster);

// Keys in the order above; device_map in the checkpoint's tensor order.
nlohmann::ordered_json PlanToJson(const Plan& plan, const PlanningModel& model);

// {"<module or parameter prefix>": <cuda ordinal> | "cpu"}: for each tensor, the shortest
// dotted prefix under which every tensor sits on the same stage, so the map names whole
// modules ("vit", "model.layers.7", "output") and covers every tensor by construction.
StatusOr<nlohmann::ordered_json> AccelerateDeviceMap(const Plan& plan, const PlanningModel& model);

// One-paragraph message for an infeasible plan: reason, then what would make it fit.
std::string InfeasibleMessage(const Plan& plan);

}  // namespace xcpipe::planner
