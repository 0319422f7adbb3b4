// --secret-key / --server-key: the CURVE flags of the commands that connect to a coordinator as
// a client (submit, status). See common/control/include/xcpipe/control/curve.h.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "xcpipe/control/curve.h"

namespace xcpipe::cli {

struct ClientCurveFlags {
  std::string secret_key;
  std::string server_key;
  StatusOr<control::CurveConfig> Load() const {
    return control::CurveFromFlags(secret_key, server_key, "", /*server=*/false);
  }
};

inline void AddClientCurveFlags(CLI::App& sub, ClientCurveFlags& flags) {
  sub.add_option("--secret-key", flags.secret_key,
                 "CURVE: this client's secret key file (its public key must be on the coordinator's allow-list)");
  sub.add_option("--server-key", flags.server_key, "CURVE: the coordinator's public key file (coordinator.pub)");
}

}  // namespace xcpipe::cli
