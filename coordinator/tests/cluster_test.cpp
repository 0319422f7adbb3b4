// The runtime end to end: a coordinator and worker processes on loopback (LocalCluster), driven
// by real clients. Uses the tiny XComposer2-VL fixture checkpoint.
#include <gtest/gtest.h>

#include <filesystem>
#include <future>
#include <map>
#include <thread>

#include "xcpipe/base/files.h"
#include "xcpipe/base/npy.h"
#include "xcpipe/control/socket.h"
#include "xcpipe/coordinator/client.h"
#include "xcpipe/coordinator/local_cluster.h"
#include "xcpipe/image/synthetic.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::coordinator {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

fs::path ModelDir() { return testing::FixturesDir() / "ixc2_vl" / "checkpoint"; }

std::unique_ptr<LocalCluster> StartCluster(int workers, bool prefix_cache = true, int64_t prefill_chunk_rows = 0,
                                           const std::string& vision_stage = "auto") {
  LocalClusterOptions o;
  o.coordinator.vision_stage = vision_stage;
  o.model_dir = ModelDir();
  o.workers = workers;
  o.quiet_workers = true;
  o.worker_binary = testing::BinDir() / "xcpipe-worker";
  o.coordinator.prefix_cache = prefix_cache;
  o.coordinator.prefill_chunk_rows = prefill_chunk_rows;
  auto c = LocalCluster::Start(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(c).value() : nullptr;
}

std::string Image() { return ReadFileToString(testing::FixturesDir() / "ixc2_vl/cases/image_chat/image.png").value(); }

// 32 requests of mixed lengths, with and without images.
std::vector<GenerateRequest> MixedRequests() {
  const std::vector<std::string> questions = {
      "Hello!", "What is in the picture?", "Describe the colours, the shapes and the layout in great detail, please.",
      "Write one short sentence about the sky."};
  std::vector<GenerateRequest> out;
  const std::string image = Image();
  for (int i = 0; i < 32; ++i) {
    GenerateRequest r;
    const bool with_image = i % 3 == 0;
    const std::string q = questions[i % questions.size()] + (i % 2 ? " Answer briefly." : "");
    r.prompt_json = nlohmann::json(with_image ? "<ImageHere>" + q : q).dump();
    if (with_image) r.images = {image};
    r.max_new_tokens = 4 + (i * 7) % 13;
    r.sampling.repetition_penalty = i % 4 == 1 ? 1.005 : 1.0;
    out.push_back(r);
  }
  return out;
}

// Submits every request at once, each from its own client; the futures in request order.
std::vector<std::future<StatusOr<GenerateResult>>> SubmitAllAtOnce(const LocalCluster& cluster,
                                                                   const std::vector<GenerateRequest>& requests) {
  std::vector<std::future<StatusOr<GenerateResult>>> futures;
  for (const auto& r : requests) {
    futures.push_back(std::async(std::launch::async, [&cluster, r]() -> StatusOr<GenerateResult> {
      auto client = Client::Connect(cluster.address(), 10s);
      if (!client.ok()) return client.status();
      return (*client)->Generate(r, 300s);
    }));
  }
  return futures;
}

// The first prompt's tokens of each request, all submitted at once (empty where one failed).
std::vector<std::vector<int64_t>> TokensOfAllAtOnce(const LocalCluster& cluster,
                                                    const std::vector<GenerateRequest>& requests) {
  std::vector<std::vector<int64_t>> tokens;
  for (auto& f : SubmitAllAtOnce(cluster, requests)) {
    auto result = f.get();
    EXPECT_TRUE(result.ok() && result->error.empty()) << (result.ok() ? result->error : result.status().ToString());
    tokens.push_back(result.ok() && !result->token_ids.empty() ? result->token_ids[0] : std::vector<int64_t>{});
  }
  return tokens;
}

TEST(ClusterTest, ConcurrentRequestsEqualOneAtATime) {
  if (!fs::exists(ModelDir())) GTEST_SKIP() << "fixtures not found at " << ModelDir();
  auto cluster = StartCluster(3);
  ASSERT_NE(cluster, nullptr);
  const auto requests = MixedRequests();

  // One at a time.
  std::vector<std::vector<int64_t>> sequential;
  {
    auto client = Client::Connect(cluster->address(), 10s);
    ASSERT_TRUE(client.ok()) << client.status().ToString();
    for (const auto& r : requests) {
      auto result = (*client)->Generate(r, 120s);
      ASSERT_TRUE(result.ok()) << result.status().ToString();
      ASSERT_TRUE(result->error.empty()) << result->error;
      ASSERT_EQ(result->token_ids.size(), 1u);
      EXPECT_EQ(result->token_ids[0].size(), r.max_new_tokens);
      sequential.push_back(result->token_ids[0]);
    }
  }
  // All at once, each from its own client.
  auto futures = SubmitAllAtOnce(*cluster, requests);
  int identical = 0;
  for (size_t i = 0; i < futures.size(); ++i) {
    auto result = futures[i].get();
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    ASSERT_TRUE(result->error.empty()) << result->error;
    EXPECT_EQ(result->token_ids[0], sequential[i]) << "request " << i;
    identical += result->token_ids[0] == sequential[i];
  }
  std::cout << "requests: 32, completed: 32, lost: 0, tokens identical: " << identical << "/32\n";
  auto client = Client::Connect(cluster->address(), 10s);
  ASSERT_TRUE(client.ok());
  auto status = (*client)->GetStatus(5s);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ((*status)["completed"].get<uint64_t>(), 64u);
  EXPECT_EQ((*status)["failed"].get<uint64_t>(), 0u);
  EXPECT_EQ((*status)["stages"].get<int>(), 3);
}

// The shared prompt head (the chat template's system text computed once per plan and its KV
// copied into each prompt) gives the tokens of prefilling every prompt whole.
TEST(ClusterTest, SharedPromptHeadGivesTheTokensOfWholePrefills) {
  if (!fs::exists(ModelDir())) GTEST_SKIP() << "fixtures not found at " << ModelDir();
  auto requests = MixedRequests();
  requests.resize(9);  // with and without images, penalties, lengths
  auto run = [&](bool prefix_cache) {
    auto cluster = StartCluster(2, prefix_cache);
    return cluster == nullptr ? std::vector<std::vector<int64_t>>{} : TokensOfAllAtOnce(*cluster, requests);
  };
  const auto whole = run(false);
  const auto copied = run(true);
  ASSERT_EQ(whole.size(), requests.size());
  ASSERT_EQ(copied.size(), requests.size());
  int identical = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(copied[i], whole[i]) << "request " << i;
    EXPECT_EQ(whole[i].size(), requests[i].max_new_tokens);
    identical += copied[i] == whole[i];
  }
  std::cout << "requests: " << requests.size() << ", tokens identical with the shared head: " << identical << "/"
            << requests.size() << "\n";
}

// Prompts prefilled in pieces (a few rows per step, one long prompt at a time, images split
// across pieces and encoded once) give the tokens of prefilling every prompt whole, with the
// shared prompt head copied or not.
TEST(ClusterTest, PromptsInPiecesGiveTheTokensOfWholePrefills) {
  if (!fs::exists(ModelDir())) GTEST_SKIP() << "fixtures not found at " << ModelDir();
  auto requests = MixedRequests();
  requests.resize(7);  // with and without images, penalties, lengths
  // Seeded sampling and a strong penalty: a piece that sampled a token would move the draws
  // and the penalty context, and change these tokens.
  requests[2].sampling.greedy = false;
  requests[2].sampling.seed = 11;
  requests[3].sampling.repetition_penalty = 1.3;
  auto run = [&](bool prefix_cache, int64_t piece, uint64_t& steps) {
    auto cluster = StartCluster(2, prefix_cache, piece);
    if (cluster == nullptr) return std::vector<std::vector<int64_t>>{};
    auto tokens = TokensOfAllAtOnce(*cluster, requests);
    auto client = Client::Connect(cluster->address(), 10s);
    auto status = client.ok() ? (*client)->GetStatus(5s) : client.status();
    EXPECT_TRUE(status.ok()) << status.status().ToString();
    steps = status.ok() ? (*status)["steps_completed"].get<uint64_t>() : 0;
    return tokens;
  };
  uint64_t steps_whole = 0, steps_pieces = 0, steps_after_head = 0;
  const auto whole = run(false, 0, steps_whole);
  const auto pieces = run(false, 13, steps_pieces);                // the whole prompt in pieces of 13 rows
  const auto pieces_after_head = run(true, 13, steps_after_head);  // what follows the copied head, in pieces
  // Every piece is a step of its own: each prompt holds the template's system text (329 tokens)
  // at least, so 25 pieces or more where the whole prompt took one step.
  EXPECT_GE(steps_pieces, steps_whole + requests.size() * 24);
  EXPECT_GT(steps_after_head, steps_whole);
  ASSERT_EQ(whole.size(), requests.size());
  ASSERT_EQ(pieces.size(), requests.size());
  ASSERT_EQ(pieces_after_head.size(), requests.size());
  int identical = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(whole[i].size(), requests[i].max_new_tokens);
    EXPECT_EQ(pieces[i], whole[i]) << "request " << i;
    EXPECT_EQ(pieces_after_head[i], whole[i]) << "request " << i;
    identical += pieces[i] == whole[i] && pieces_after_head[i] == whole[i];
  }
  std::cout << "requests: " << requests.size() << ", tokens identical when prefilled in pieces: " << identical << "/"
            << requests.size() << "\n";
}

// The vision block on a worker of its own (vision_stage separate): mixed text and image
// requests, all at once, give the tokens of the same three workers with the vision block on
// stage 0, whole and with prompts in 13-row pieces (an image's rows then span several pieces,
// which stage 0 takes from the rows the vision worker sent). No language stage holds the vision
// block, and every image went through a vision worker.
TEST(ClusterTest, VisionWorkersGiveTheTokensOfVisionOnStageZero) {
  if (!fs::exists(ModelDir())) GTEST_SKIP() << "fixtures not found at " << ModelDir();
  auto requests = MixedRequests();
  requests.resize(12);
  size_t images = 0;
  for (const auto& r : requests) images += r.images.size();
  ASSERT_GT(images, 0u);
  auto run = [&](const std::string& vision, int64_t piece, nlohmann::json& status) {
    auto cluster = StartCluster(3, true, piece, vision);
    if (cluster == nullptr) return std::vector<std::vector<int64_t>>{};
    auto tokens = TokensOfAllAtOnce(*cluster, requests);
    auto client = Client::Connect(cluster->address(), 10s);
    auto got = client.ok() ? (*client)->GetStatus(5s) : client.status();
    EXPECT_TRUE(got.ok()) << got.status().ToString();
    if (got.ok()) status = *got;
    return tokens;
  };
  nlohmann::json on_stage0, apart, apart_pieces;
  const auto first = run("first", 0, on_stage0);
  const auto separate = run("separate", 0, apart);
  const auto separate_pieces = run("separate", 13, apart_pieces);
  ASSERT_EQ(first.size(), requests.size());
  ASSERT_EQ(separate.size(), requests.size());
  ASSERT_EQ(separate_pieces.size(), requests.size());
  int identical = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(first[i].size(), requests[i].max_new_tokens) << "request " << i;
    EXPECT_EQ(separate[i], first[i]) << "request " << i;
    EXPECT_EQ(separate_pieces[i], first[i]) << "request " << i;
    identical += separate[i] == first[i] && separate_pieces[i] == first[i];
  }
  EXPECT_EQ(on_stage0["vision_stage"], "first");
  EXPECT_EQ(on_stage0["images_encoded_total"].get<uint64_t>(), 0u);
  for (const auto* status : {&apart, &apart_pieces}) {
    EXPECT_EQ((*status)["vision_stage"], "separate");
    EXPECT_EQ((*status)["images_encoded_total"].get<uint64_t>(), images);
    int vision_workers = 0;
    for (const auto& w : (*status)["workers"]) {
      if (w["role"] == "vision") {
        ++vision_workers;
        EXPECT_EQ(w["blocks"], "0..0") << "a vision worker holds the vision block alone";
      } else if (w["role"] == "stage") {
        // Block 0 is the vision block: no language stage holds it.
        EXPECT_NE(w["blocks"].get<std::string>().rfind("0..", 0), 0u) << w.dump();
      }
    }
    EXPECT_GE(vision_workers, 1);
  }
  std::cout << "requests: " << requests.size() << " (" << images << " images); tokens identical with vision apart, "
            << "whole and in pieces: " << identical << "/" << requests.size() << "\n";
}

// min_tokens and ignore_eos travel to the last stage and the stop rule: with both, every
// request runs to its length, and where a free run ended on its length the tokens agree (the
// masking itself is LastStageTest's, on a worker that is told which ids stop).
TEST(ClusterTest, MinTokensAndIgnoreEosRunToTheLength) {
  if (!fs::exists(ModelDir())) GTEST_SKIP() << "fixtures not found at " << ModelDir();
  auto cluster = StartCluster(2);
  ASSERT_NE(cluster, nullptr);
  auto requests = MixedRequests();
  requests.resize(6);
  auto held = requests;
  for (auto& r : held) {
    r.sampling.min_new_tokens = r.max_new_tokens;
    r.sampling.ignore_eos = true;
  }
  auto client = Client::Connect(cluster->address(), 10s);
  ASSERT_TRUE(client.ok());
  int compared = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    auto free = (*client)->Generate(requests[i], 120s);
    auto forced = (*client)->Generate(held[i], 120s);
    ASSERT_TRUE(free.ok() && forced.ok());
    ASSERT_TRUE(free->error.empty()) << free->error;
    ASSERT_TRUE(forced->error.empty()) << forced->error;
    EXPECT_EQ(forced->token_ids[0].size(), held[i].max_new_tokens) << "request " << i;
    EXPECT_EQ(forced->finish_reasons[0], "length") << "request " << i;
    if (free->finish_reasons[0] == "length") {
      EXPECT_EQ(forced->token_ids[0], free->token_ids[0]) << "request " << i;
      ++compared;
    }
  }
  std::cout << "requests: " << requests.size()
            << ", all ran to their length; tokens compared with free runs: " << compared << "\n";
}

// Every worker's reserved KV bytes, as the status shows them (from the workers' heartbeats).
std::map<std::string, uint64_t> ReservedKv(Client& client) {
  std::map<std::string, uint64_t> out;
  auto status = client.GetStatus(5s);
  EXPECT_TRUE(status.ok()) << status.status().ToString();
  if (!status.ok()) return out;
  for (const auto& w : (*status)["workers"]) out[w["id"].get<std::string>()] = w["kv_reserved_bytes"].get<uint64_t>();
  return out;
}

// Beam requests (each a group of beams sharing its prompt's KV) among greedy ones: every request
// gives, all at once, the tokens it gives alone; afterwards every stage's reserved KV is back to
// its idle figure (only the shared prompt head's holder keeps room).
TEST(ClusterTest, BeamAndGreedyTogetherGiveWhatEachGivesAlone) {
  if (!fs::exists(ModelDir())) GTEST_SKIP() << "fixtures not found at " << ModelDir();
  auto cluster = StartCluster(2);
  ASSERT_NE(cluster, nullptr);
  auto requests = MixedRequests();
  requests.resize(8);
  for (size_t i = 0; i < requests.size(); i += 2) {
    requests[i].sampling.num_beams = 2 + static_cast<int64_t>(i / 2);  // 2..5 beams
    requests[i].sampling.repetition_penalty = i % 4 == 0 ? 1.5 : 1.0;
    requests[i].sampling.min_length = i == 4 ? 3 : 0;
    requests[i].sampling.early_stopping = static_cast<int>(i / 2) % 3;
    requests[i].max_new_tokens = 6;
  }
  auto client = Client::Connect(cluster->address(), 10s);
  ASSERT_TRUE(client.ok());
  std::vector<std::vector<int64_t>> alone;
  for (const auto& r : requests) {
    auto result = (*client)->Generate(r, 120s);
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    ASSERT_TRUE(result->error.empty()) << result->error;
    ASSERT_FALSE(result->token_ids[0].empty());
    alone.push_back(result->token_ids[0]);
  }
  std::this_thread::sleep_for(1500ms);  // heartbeats carry the figures
  const auto idle = ReservedKv(**client);
  ASSERT_EQ(idle.size(), 2u);

  const auto together = TokensOfAllAtOnce(*cluster, requests);
  int identical = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(together[i], alone[i]) << "request " << i << (requests[i].sampling.num_beams > 1 ? " (beams)" : "");
    identical += together[i] == alone[i];
  }
  // A finished group releases every beam's room at once: back to idle, as the status shows it.
  std::map<std::string, uint64_t> after;
  for (auto until = std::chrono::steady_clock::now() + 10s; std::chrono::steady_clock::now() < until;) {
    after = ReservedKv(**client);
    if (after == idle) break;
    std::this_thread::sleep_for(200ms);
  }
  EXPECT_EQ(after, idle) << "reserved KV did not return to its idle figure";
  auto status = (*client)->GetStatus(5s);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ((*status)["failed"].get<uint64_t>(), 0u);
  EXPECT_EQ((*status)["in_flight"].get<uint64_t>(), 0u);
  std::cout << "requests: " << requests.size()
            << " (4 beam, 4 greedy), tokens identical alone and together: " << identical << "/" << requests.size()
            << "; reserved KV after the batch:";
  for (const auto& [id, bytes] : after) std::cout << " " << id << " " << bytes << " B (idle " << idle.at(id) << ")";
  std::cout << "\n";

  // Beam settings out of range are refused at the edge, naming the field.
  GenerateRequest bad = requests[1];
  bad.sampling.num_beams = 65;
  auto refused = (*client)->Generate(bad, 30s);
  ASSERT_TRUE(refused.ok());
  EXPECT_NE(refused->error.find("num_beams 65 is out of range; expected 1..64"), std::string::npos) << refused->error;
  bad.sampling.num_beams = 3;
  bad.sampling.greedy = false;
  refused = (*client)->Generate(bad, 30s);
  ASSERT_TRUE(refused.ok());
  EXPECT_NE(refused->error.find("InvalidArgument"), std::string::npos) << refused->error;
  EXPECT_NE(refused->error.find("needs greedy decoding"), std::string::npos) << refused->error;
  bad.sampling.greedy = true;
  bad.want_logits = true;  // a pre-tokenized submit (only those carry want_logits)
  bad.images.clear();
  bad.token_ids = {1, 333, 4444, 5555};
  bad.im_mask.assign(bad.token_ids.size(), 0);
  refused = (*client)->Generate(bad, 30s);
  ASSERT_TRUE(refused.ok());
  EXPECT_NE(refused->error.find("want_logits"), std::string::npos) << refused->error;
}

// Limits enforced before scheduling: requests per client connection and request deadlines.
TEST(ClusterTest, PerClientLimitAndDeadlinesAreEnforced) {
  if (!fs::exists(ModelDir())) GTEST_SKIP() << "fixtures not found at " << ModelDir();
  LocalClusterOptions o;
  o.model_dir = ModelDir();
  o.workers = 2;
  o.quiet_workers = true;
  o.worker_binary = testing::BinDir() / "xcpipe-worker";
  o.worker_extra_args.assign(2, {"--inject-step-delay-ms", "20"});
  o.coordinator.max_requests_per_client = 1;
  auto cluster = LocalCluster::Start(o);
  ASSERT_TRUE(cluster.ok()) << cluster.status().ToString();

  // One connection, two submits: the second is refused while the first runs.
  zmq::context_t context;
  auto dealer = control::ControlSocket::ConnectDealer(context, (*cluster)->address(), "limit-test-client");
  ASSERT_TRUE(dealer.ok());
  {
    capnp::MallocMessageBuilder m;
    m.initRoot<proto::Envelope>().initHello().setRole(proto::Role::CLIENT);
    m.getRoot<proto::Envelope>().getHello().setProtocolVersion(proto::K_PROTOCOL_VERSION);
    ASSERT_TRUE((*dealer)->Send(m).ok());
  }
  for (uint64_t id : {1, 2}) {
    capnp::MallocMessageBuilder m;
    auto sub = m.initRoot<proto::Envelope>().initSubmit();
    sub.setRequestId(id);
    sub.setPromptJson("\"Count to one hundred.\"");
    sub.setMaxNewTokens(60);
    ASSERT_TRUE((*dealer)->Send(m).ok());
  }
  std::string refusal;
  bool first_done = false;
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (std::chrono::steady_clock::now() < until && !(first_done && !refusal.empty())) {
    auto in = (*dealer)->Receive(200ms);
    ASSERT_TRUE(in.ok());
    if (!in->has_value() || (*in)->message->envelope().which() != proto::Envelope::TOKEN_EVENT) continue;
    auto e = (*in)->message->envelope().getTokenEvent();
    if (e.getRequestId() == 2 && e.getDone()) refusal = e.getError().cStr();
    if (e.getRequestId() == 1 && e.getDone()) {
      first_done = true;
      EXPECT_EQ(std::string(e.getError().cStr()), "");
    }
  }
  EXPECT_TRUE(first_done);
  EXPECT_NE(refusal.find("per client"), std::string::npos) << refusal;

  // A request whose deadline passes is failed by the coordinator (not only by the client).
  auto client = Client::Connect((*cluster)->address(), 10s);
  ASSERT_TRUE(client.ok());
  GenerateRequest slow;
  slow.prompt_json = "\"Tell me a long story.\"";
  slow.max_new_tokens = 2000;
  auto result = (*client)->Generate(slow, 500ms);
  EXPECT_FALSE(result.ok() && result->error.empty());
  bool failed_by_deadline = false;
  for (int i = 0; i < 40 && !failed_by_deadline; ++i) {
    auto status = (*client)->GetStatus(5s);
    ASSERT_TRUE(status.ok());
    failed_by_deadline =
        (*status)["failed_by_reason"].value("DeadlineExceeded", 0) > 0 && (*status)["in_flight"].get<int64_t>() == 0;
    if (!failed_by_deadline) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(failed_by_deadline) << "the coordinator kept working on a request past its deadline";
}

TEST(ClusterTest, BadInputIsRefusedAtTheEdgeAndServingGoesOn) {
  if (!fs::exists(ModelDir())) GTEST_SKIP() << "fixtures not found at " << ModelDir();
  auto cluster = StartCluster(2);
  ASSERT_NE(cluster, nullptr);
  auto client = Client::Connect(cluster->address(), 10s);
  ASSERT_TRUE(client.ok());
  struct Case {
    std::string prompt_json;
    std::vector<std::string> images;
    uint32_t max_new;
    std::string expect;  // part of the error message
  };
  const std::string png = Image();
  const std::vector<Case> cases = {
      {"42", {}, 4, "string or a list of strings"},
      {R"({"text": "hi"})", {}, 4, "string or a list of strings"},
      {"\"<ImageHere>Two? <ImageHere>\"", {png}, 4, "placeholder"},
      {"\"Describe it.\"", {png}, 4, "placeholder"},
      {"\"<ImageHere>What is it?\"", {"not an image at all"}, 4, "image 1"},
      {"\"<ImageHere>What is it?\"", {png.substr(0, png.size() / 2)}, 4, "image 1"},
      {"\"Hello\"", {}, 0, "max_new_tokens"},
      {"[\"a\", 3]", {}, 4, "string"},
      {"\"\\ud800 broken\"", {}, 4, ""},
  };
  for (const auto& c : cases) {
    GenerateRequest r;
    r.prompt_json = c.prompt_json;
    r.images = c.images;
    r.max_new_tokens = c.max_new;
    auto result = (*client)->Generate(r, 30s);
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    EXPECT_FALSE(result->error.empty()) << c.prompt_json << " was accepted";
    EXPECT_NE(result->error.find("InvalidArgument"), std::string::npos) << result->error;
    EXPECT_NE(result->error.find(c.expect), std::string::npos) << result->error;
  }
  // Sampling settings out of range.
  GenerateRequest hot;
  hot.prompt_json = "\"Hello\"";
  hot.sampling.greedy = false;
  hot.sampling.temperature = -1;
  auto refused = (*client)->Generate(hot, 30s);
  ASSERT_TRUE(refused.ok());
  EXPECT_NE(refused->error.find("temperature"), std::string::npos) << refused->error;
  GenerateRequest too_long = hot;
  too_long.sampling = {};
  too_long.max_new_tokens = 4;
  too_long.sampling.min_new_tokens = 5;
  auto refused_min = (*client)->Generate(too_long, 30s);
  ASSERT_TRUE(refused_min.ok());
  EXPECT_NE(refused_min->error.find("InvalidArgument: min_tokens 5 is out of range; expected 0..4"), std::string::npos)
      << refused_min->error;
  // The cluster still serves a good request afterwards.
  GenerateRequest good;
  good.prompt_json = "\"<ImageHere>Please describe this image in detail.\"";
  good.images = {png};
  good.max_new_tokens = 8;
  auto ok = (*client)->Generate(good, 60s);
  ASSERT_TRUE(ok.ok());
  ASSERT_TRUE(ok->error.empty()) << ok->error;
  // The official greedy answer for this prompt and image (fixtures, image_chat).
  auto official = ReadNpy(testing::FixturesDir() / "ixc2_vl/cases/image_chat/generated_ids.npy");
  ASSERT_TRUE(official.ok());
  EXPECT_EQ(ok->token_ids[0], official->ToInt64());
}

// A large image (a 3840x2160 PNG: tens of ms to decode and resize) is prepared off the
// coordinator's thread: a text request submitted just after it is accepted first, the image
// request repeated by its client while it is prepared runs once, and every answer is the one
// of the same request alone.
TEST(ClusterTest, ALargeImageIsPreparedWhileOtherRequestsGoOnAndRunsOnceWhenRepeated) {
  if (!fs::exists(ModelDir())) GTEST_SKIP() << "fixtures not found at " << ModelDir();
  auto cluster = StartCluster(2);
  ASSERT_NE(cluster, nullptr);
  const std::string large = image::SyntheticPng(3840, 2160);
  GenerateRequest image_request, text_request;
  image_request.prompt_json = nlohmann::json("<ImageHere>What is in the picture?").dump();
  image_request.images = {large};
  image_request.max_new_tokens = 6;
  text_request.prompt_json = nlohmann::json("Write one short sentence about the sky.").dump();
  text_request.max_new_tokens = 6;
  std::vector<std::vector<int64_t>> alone;
  for (const auto* r : {&image_request, &text_request}) {
    auto client = Client::Connect(cluster->address(), 10s);
    ASSERT_TRUE(client.ok());
    auto result = (*client)->Generate(*r, 120s);
    ASSERT_TRUE(result.ok() && result->error.empty()) << (result.ok() ? result->error : result.status().ToString());
    alone.push_back(result->token_ids[0]);
  }

  zmq::context_t context;
  auto dealer = control::ControlSocket::ConnectDealer(context, cluster->address(), "prepare-test-client");
  ASSERT_TRUE(dealer.ok());
  {
    capnp::MallocMessageBuilder m;
    m.initRoot<proto::Envelope>().initHello().setRole(proto::Role::CLIENT);
    m.getRoot<proto::Envelope>().getHello().setProtocolVersion(proto::K_PROTOCOL_VERSION);
    ASSERT_TRUE((*dealer)->Send(m).ok());
  }
  auto submit = [&](uint64_t id, const GenerateRequest& r) {
    capnp::MallocMessageBuilder m;
    auto sub = m.initRoot<proto::Envelope>().initSubmit();
    sub.setRequestId(id);
    sub.setPromptJson(r.prompt_json);
    sub.setMaxNewTokens(static_cast<uint32_t>(r.max_new_tokens));
    auto images = sub.initImages(static_cast<unsigned>(r.images.size()));
    for (size_t i = 0; i < r.images.size(); ++i) {
      images.set(static_cast<unsigned>(i),
                 kj::arrayPtr(reinterpret_cast<const kj::byte*>(r.images[i].data()), r.images[i].size()));
    }
    return (*dealer)->Send(m);
  };
  ASSERT_TRUE(submit(1, image_request).ok());
  ASSERT_TRUE(submit(1, image_request).ok());  // the client repeats it
  ASSERT_TRUE(submit(2, text_request).ok());
  std::vector<uint64_t> accepted;  // request ids in the order of their first acceptance
  std::map<uint64_t, int> finals;
  std::map<uint64_t, std::vector<int64_t>> tokens;
  const auto until = std::chrono::steady_clock::now() + 120s;
  while (std::chrono::steady_clock::now() < until && (finals[1] == 0 || finals[2] == 0)) {
    auto in = (*dealer)->Receive(200ms);
    ASSERT_TRUE(in.ok());
    if (!in->has_value() || (*in)->message->envelope().which() != proto::Envelope::TOKEN_EVENT) continue;
    auto e = (*in)->message->envelope().getTokenEvent();
    const uint64_t id = e.getRequestId();
    if (e.getAccepted() && std::find(accepted.begin(), accepted.end(), id) == accepted.end()) accepted.push_back(id);
    if (e.getDone()) {
      ++finals[id];
      EXPECT_EQ(std::string(e.getError().cStr()), "") << "request " << id;
      tokens[id].clear();
      for (int64_t t : e.getAllTokens()) tokens[id].push_back(t);
    }
  }
  std::this_thread::sleep_for(500ms);  // a second run of request 1 would have sent more by now
  for (int i = 0; i < 5; ++i) {
    auto in = (*dealer)->Receive(100ms);
    ASSERT_TRUE(in.ok());
    if (in->has_value() && (*in)->message->envelope().which() == proto::Envelope::TOKEN_EVENT &&
        (*in)->message->envelope().getTokenEvent().getDone()) {
      ++finals[(*in)->message->envelope().getTokenEvent().getRequestId()];
    }
  }
  EXPECT_EQ(finals[1], 1);
  EXPECT_EQ(finals[2], 1);
  EXPECT_EQ(accepted, (std::vector<uint64_t>{2, 1})) << "the text request waited for the image's preparation";
  EXPECT_EQ(tokens[1], alone[0]);
  EXPECT_EQ(tokens[2], alone[1]);
  auto client = Client::Connect(cluster->address(), 10s);
  ASSERT_TRUE(client.ok());
  auto status = (*client)->GetStatus(10s);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ((*status)["completed"].get<uint64_t>(), 4u) << "2 requests alone, then 2 at once";
}

}  // namespace
}  // namespace xcpipe::coordinator
