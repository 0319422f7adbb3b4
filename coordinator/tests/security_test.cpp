// CURVE on a live local cluster: the coordinator (its thread) admits only the public keys in
// its key folder; workers are real processes. An allowed worker registers and serves; a worker
// without keys and a worker with a key not on the allow-list never appear in the status; a
// client without keys, or with an unknown key, gets a clear Unavailable instead of an answer,
// while the allowed client's request completes with the tokens a plain cluster gives.
// Writes the fault row "unauthenticated and wrong-key peers".
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <filesystem>
#include <thread>

#include "xcpipe/base/files.h"
#include "xcpipe/base/subprocess.h"
#include "xcpipe/control/curve.h"
#include "xcpipe/coordinator/client.h"
#include "xcpipe/coordinator/local_cluster.h"
#include "xcpipe/testing/fault_report.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::coordinator {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

fs::path ModelDir() { return testing::FixturesDir() / "ixc2_vl" / "checkpoint"; }

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "xcpipe-sec-XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { fs::remove_all(path); }
};

GenerateRequest Request() {
  GenerateRequest r;
  r.prompt_json = nlohmann::json("Hello! Please introduce yourself.").dump();
  r.max_new_tokens = 24;
  return r;
}

std::unique_ptr<LocalCluster> StartCluster(int workers, const fs::path& keys_dir) {
  LocalClusterOptions o;
  o.model_dir = ModelDir();
  o.workers = workers;
  o.quiet_workers = true;
  o.worker_binary = testing::BinDir() / "xcpipe-worker";
  o.keys_dir = keys_dir;
  auto c = LocalCluster::Start(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(c).value() : nullptr;
}

std::unique_ptr<Subprocess> StartRogueWorker(const std::string& address, const std::string& id,
                                             const std::vector<std::string>& key_args) {
  std::vector<std::string> argv = {(testing::BinDir() / "xcpipe-worker").string(), "--coordinator", address,
                                   "--worker-id", id, "--device", "cpu", "--threads", "1"};
  argv.insert(argv.end(), key_args.begin(), key_args.end());
  auto p = Subprocess::Start(argv, {.capture_stdout = false, .silence_stderr = true, .extra_env = {}});
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  return p.ok() ? std::move(p).value() : nullptr;
}

TEST(SecurityTest, UnauthenticatedAndWrongKeyPeersAreRefused) {
  if (!fs::exists(ModelDir())) GTEST_SKIP() << "fixtures not found at " << ModelDir();
  ASSERT_TRUE(control::CurveAvailable()) << "this libzmq has no CURVE";

  // The reference: the same request on a plain (no-key) cluster.
  std::vector<int64_t> reference;
  {
    auto plain = StartCluster(1, {});
    ASSERT_NE(plain, nullptr);
    auto client = Client::Connect(plain->address(), 10s);
    ASSERT_TRUE(client.ok()) << client.status().ToString();
    auto r = (*client)->Generate(Request(), 120s);
    ASSERT_TRUE(r.ok() && r->error.empty()) << (r.ok() ? r->error : r.status().ToString());
    reference = r->token_ids.at(0);
    ASSERT_FALSE(reference.empty());
  }

  TempDir keys, rogue;
  ASSERT_TRUE(control::WriteClusterKeys(keys.path).ok());
  auto rogue_keys = control::GenerateKeyPair();
  ASSERT_TRUE(rogue_keys.ok());
  ASSERT_TRUE(control::WriteKeyPair(*rogue_keys, rogue.path, "rogue", false).ok());
  // A stranger that knows the coordinator's public key (public keys are not secrets).
  const std::vector<std::string> wrong_key_args = {"--secret-key", (rogue.path / "rogue.key").string(),
                                                   "--server-key", (keys.path / "coordinator.pub").string()};

  auto cluster = StartCluster(2, keys.path);  // returns once both allowed workers serve
  ASSERT_NE(cluster, nullptr);
  auto plain_worker = StartRogueWorker(cluster->address(), "rogue-plain", {});
  auto wrong_worker = StartRogueWorker(cluster->address(), "rogue-wrong-key", wrong_key_args);
  ASSERT_NE(plain_worker, nullptr);
  ASSERT_NE(wrong_worker, nullptr);

  testing::FaultRow row;
  row.scenario = "unauthenticated and wrong-key peers";

  // Clients that must be refused: no keys; an unknown key. Connect must give up on time.
  const auto refusal_timeout = 2000ms;
  auto expect_refused = [&](const char* who, const control::CurveConfig& curve) {
    ++row.requests;
    const auto start = std::chrono::steady_clock::now();
    auto c = Client::Connect(cluster->address(), refusal_timeout, curve);
    const double waited_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    ASSERT_FALSE(c.ok()) << who << " client was admitted";
    EXPECT_EQ(c.status().code(), StatusCode::kUnavailable) << who << ": " << c.status().ToString();
    EXPECT_NE(c.status().message().find("CURVE"), std::string::npos) << who << ": " << c.status().ToString();
    EXPECT_LT(waited_ms, 2 * refusal_timeout.count()) << who << " client hung past its deadline";
    ++row.failed["Unavailable (refused: " + std::string(who) + ")"];
  };
  expect_refused("unauthenticated", {});
  control::CurveConfig stranger{rogue_keys->public_key, rogue_keys->secret_key,
                                control::ReadPublicKeyFile(keys.path / "coordinator.pub").value(), {}};
  expect_refused("wrong-key", stranger);

  // The allowed client is served, with the tokens of the plain cluster.
  ++row.requests;
  auto client = Client::Connect(cluster->address(), 10s, cluster->client_curve());
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  auto result = (*client)->Generate(Request(), 120s);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  ASSERT_TRUE(result->error.empty()) << result->error;
  ++row.completed;
  row.tokens_identical = result->token_ids.at(0) == reference;
  EXPECT_TRUE(row.tokens_identical);

  // The rogue workers have been retrying their hello for seconds: none of them registered.
  auto status = (*client)->GetStatus(5s);
  ASSERT_TRUE(status.ok()) << status.status().ToString();
  std::vector<std::string> ids;
  for (const auto& w : (*status)["workers"]) ids.push_back(w["id"].get<std::string>());
  EXPECT_EQ(ids.size(), 2u) << nlohmann::json(ids).dump();
  for (const auto& id : ids) EXPECT_EQ(id.rfind("rogue", 0), std::string::npos) << id << " was admitted";
  // And they are still trying (refused, not crashed on a bad flag).
  EXPECT_FALSE(plain_worker->Wait(0ms).ok());
  EXPECT_FALSE(wrong_worker->Wait(0ms).ok());

  EXPECT_TRUE(testing::ReportFault(row));
  EXPECT_EQ(row.lost, 0);
  EXPECT_EQ(row.duplicated, 0);
}

}  // namespace
}  // namespace xcpipe::coordinator
