// CURVE keys for the control plane (ZeroMQ's CurveZMQ: Curve25519 key exchange, encrypted and
// authenticated links). The coordinator's ROUTER is the CURVE server and admits only peers whose
// public key is on its allow-list (see zap_handler.h); workers and clients are CURVE clients and
// must know the coordinator's public key.
//
// Keys are 40-character Z85 text (32 bytes). Files, as `xcpipe keys generate` writes them:
//
//   NAME.key   this process's secret key: mode 0600, one Z85 line (+ '#' comment lines)
//   NAME.pub   its public key: one Z85 line (+ '#' comment lines); safe to copy anywhere
//
// An allow-list is either a folder (every *.pub file in it) or a file with one Z85 public key
// per line ('#' starts a comment line; blank lines are ignored).
//
// A secret key file readable or writable by group or others is refused (as ssh does). Secret
// keys never appear in logs or error messages; public keys may (their short fingerprint).
//
// Plain functions and value types; thread-safe. Nothing throws.
#pragma once

#include <filesystem>
#include <set>
#include <string>

#include "xcpipe/base/status.h"

namespace xcpipe::control {

inline constexpr size_t kZ85KeyChars = 40;

// True when this libzmq was built with CURVE (libsodium). Every function below that needs it
// returns Unimplemented ("... not available in this build") when it is false.
bool CurveAvailable();

struct CurveKeyPair {
  std::string public_key;  // Z85
  std::string secret_key;  // Z85; never log it
};

// What a control socket needs to speak CURVE. Empty (enabled() false): plain TCP, as before.
struct CurveConfig {
  std::string public_key;              // own, Z85
  std::string secret_key;              // own, Z85; never log it
  std::string server_public_key;       // clients (DEALER): the coordinator's public key
  std::set<std::string> allowed_keys;  // server (ROUTER): public keys of allowed peers, Z85
  bool enabled() const { return !secret_key.empty(); }
};

// A fresh key pair (zmq_curve_keypair).
StatusOr<CurveKeyPair> GenerateKeyPair();
// The public key of a secret key (zmq_curve_public).
StatusOr<std::string> DerivePublicKey(const std::string& secret_key_z85);

// OK when `key` is 40 Z85 characters that decode to 32 bytes; InvalidArgument naming `what`.
Status ValidateZ85Key(const std::string& key, const std::string& what);

// Short, stable name of a public key for logs: its first 8 Z85 characters.
std::string KeyFingerprint(const std::string& public_key_z85);

// Reads NAME.key: checks the mode (no group/other bits: PermissionDenied otherwise) and the
// content (exactly one Z85 key line).
StatusOr<std::string> ReadSecretKeyFile(const std::filesystem::path& path);
// Reads NAME.pub (exactly one Z85 key line).
StatusOr<std::string> ReadPublicKeyFile(const std::filesystem::path& path);
// Reads an allow-list: a folder of *.pub files or a file of key lines. An empty list is an
// error (a server that admits nobody is a configuration mistake, not a policy).
StatusOr<std::set<std::string>> ReadAllowList(const std::filesystem::path& path);

// Writes `dir`/`name`.key (created 0600 with O_EXCL, never widened) and `name`.pub (0644).
// Creates `dir` (0700) when missing. FailedPrecondition when either file
// exists and !overwrite; with overwrite the old files are removed first (so an old 0644 file
// cannot keep its mode).
Status WriteKeyPair(const CurveKeyPair& keys, const std::filesystem::path& dir, const std::string& name,
                    bool overwrite);

// The configurations the binaries build from their flags (--secret-key, --server-key, --allow).
StatusOr<CurveConfig> LoadServerCurve(const std::filesystem::path& secret_key_file,
                                      const std::filesystem::path& allow_list);
StatusOr<CurveConfig> LoadClientCurve(const std::filesystem::path& secret_key_file,
                                      const std::filesystem::path& server_public_key_file);
// From the flags as given: all empty gives a disabled config; a partial set is InvalidArgument
// naming the missing flag. `server` selects which of server_key / allow is required.
StatusOr<CurveConfig> CurveFromFlags(const std::string& secret_key_file, const std::string& server_key_file,
                                     const std::string& allow_list, bool server);

// A throwaway key set for one cluster in `dir`: coordinator.{key,pub}, worker.{key,pub},
// client.{key,pub}. With this layout the coordinator runs with --secret-key dir/coordinator.key
// --allow dir, workers with --secret-key dir/worker.key --server-key dir/coordinator.pub, and
// clients with --secret-key dir/client.key --server-key dir/coordinator.pub.
Status WriteClusterKeys(const std::filesystem::path& dir);

}  // namespace xcpipe::control
