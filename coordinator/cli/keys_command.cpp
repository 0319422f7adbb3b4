// xcpipe keys: CURVE key pairs for authenticated, encrypted control sockets (see
// common/control/include/xcpipe/control/curve.h for the file formats).
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <memory>
#include <string>

#include "commands.h"
#include "xcpipe/base/exit_codes.h"
#include "xcpipe/control/curve.h"

namespace xcpipe::cli {
namespace {

std::string HostName() {
  char buf[HOST_NAME_MAX + 1] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "xcpipe";
  std::string name = buf;
  const auto dot = name.find('.');
  return dot == std::string::npos ? name : name.substr(0, dot);
}

int Fail(const Status& st) {
  std::fprintf(stderr, "xcpipe keys: %s\n", st.ToString().c_str());
  return ExitCodeFor(st);
}

// Exit 7 (not available in this build) when libzmq lacks CURVE.
bool CurveMissing() {
  if (control::CurveAvailable()) return false;
  std::fprintf(stderr,
               "xcpipe keys: CURVE security is not available in this build: the installed libzmq was built "
               "without CURVE (zmq_has(\"curve\") is false); install a libzmq built with libsodium\n");
  return true;
}

}  // namespace

void AddKeysCommand(CLI::App& app, Action& action) {
  auto* sub = app.add_subcommand("keys", "generate CURVE key pairs for authenticated control sockets");
  sub->require_subcommand(1);
  sub->footer(
      "Every process gets a key pair; the coordinator admits only the public keys on its allow-list.\n\n"
      "Example:\n"
      "  xcpipe keys generate --out /etc/xcpipe/keys --name coordinator     # on the coordinator host\n"
      "  xcpipe keys generate --out /etc/xcpipe/keys --name node-a          # on each worker/client host\n"
      "  # copy node-a.pub into the coordinator's allow-list folder, coordinator.pub to every node:\n"
      "  xcpipe-coordinator ... --secret-key /etc/xcpipe/keys/coordinator.key --allow /etc/xcpipe/allowed\n"
      "  xcpipe-worker ... --secret-key /etc/xcpipe/keys/node-a.key --server-key /etc/xcpipe/keys/coordinator.pub\n"
      "Exit codes: 0 done, 1 cannot write or the key exists (--force replaces it), 4 bad or unsafe key file,\n"
      "7 CURVE not available in this build.");

  auto* gen = sub->add_subcommand("generate", "write NAME.key (secret, mode 0600) and NAME.pub (public) into a folder");
  auto out = std::make_shared<std::string>();
  auto name = std::make_shared<std::string>(HostName());
  auto force = std::make_shared<bool>(false);
  gen->add_option("--out", *out, "folder for the key files (created with mode 0700 when missing)")->required();
  gen->add_option("--name", *name, "file name stem: NAME.key and NAME.pub")->capture_default_str();
  gen->add_flag("--force", *force, "replace existing NAME.key/NAME.pub (otherwise refused)");
  gen->callback([&action, out, name, force] {
    action = [=]() -> int {
      if (CurveMissing()) return kExitNotImplemented;
      auto keys = control::GenerateKeyPair();
      if (!keys.ok()) return Fail(keys.status());
      if (Status st = control::WriteKeyPair(*keys, *out, *name, *force); !st.ok()) return Fail(st);
      const std::string dir = *out;
      std::fprintf(stderr, "wrote %s/%s.key (secret, mode 0600: keep it on this host) and %s/%s.pub (public)\n",
                   dir.c_str(), name->c_str(), dir.c_str(), name->c_str());
      std::printf("%s\n", keys->public_key.c_str());  // public: safe to print
      return kExitOk;
    };
  });

  auto* pub = sub->add_subcommand("public", "print the public key of a secret key file");
  auto secret_file = std::make_shared<std::string>();
  pub->add_option("secret_key_file", *secret_file, "a NAME.key file")->required();
  pub->callback([&action, secret_file] {
    action = [=]() -> int {
      if (CurveMissing()) return kExitNotImplemented;
      auto secret = control::ReadSecretKeyFile(*secret_file);
      if (!secret.ok()) return Fail(secret.status());
      auto key = control::DerivePublicKey(*secret);
      if (!key.ok()) return Fail(key.status());
      std::printf("%s\n", key->c_str());
      return kExitOk;
    };
  });

  auto* check = sub->add_subcommand("check", "validate a secret key file, a public key file or an allow-list");
  auto paths = std::make_shared<std::vector<std::string>>();
  check->add_option("files", *paths, "*.key, *.pub, or an allow-list (folder or file)")->required();
  check->callback([&action, paths] {
    action = [=]() -> int {
      if (CurveMissing()) return kExitNotImplemented;
      for (const auto& p : *paths) {
        const std::filesystem::path path = p;
        if (path.extension() == ".key") {
          auto secret = control::ReadSecretKeyFile(path);
          if (!secret.ok()) return Fail(secret.status());
          std::printf("%s: secret key of public key %s\n", p.c_str(), control::DerivePublicKey(*secret)->c_str());
        } else if (path.extension() == ".pub") {
          auto key = control::ReadPublicKeyFile(path);
          if (!key.ok()) return Fail(key.status());
          std::printf("%s: public key %s\n", p.c_str(), key->c_str());
        } else {
          auto keys = control::ReadAllowList(path);
          if (!keys.ok()) return Fail(keys.status());
          std::printf("%s: allow-list of %zu public key(s)\n", p.c_str(), keys->size());
        }
      }
      return kExitOk;
    };
  });
}

}  // namespace xcpipe::cli
