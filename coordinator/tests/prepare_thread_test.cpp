// The coordinator's image preparation thread (coordinator/src/prepare_thread.h), with the real
// RequestPreparer of the tiny XComposer2-VL fixture: answers equal to preparing on the calling
// thread, in the order posted, counted until taken; a destructor with work left returns.
#include "prepare_thread.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <thread>

#include "xcpipe/image/synthetic.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::coordinator::detail {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<RequestPreparer> Preparer() {
  const auto dir = testing::FixturesDir() / "ixc2_vl" / "checkpoint";
  auto tok = FindTokenizer(dir);
  if (!tok.ok()) return nullptr;
  auto p = RequestPreparer::Create(dir, *tok);
  return p.ok() ? std::move(p).value() : nullptr;
}

SubmitIntake Job(uint64_t id, std::string prompt, std::vector<std::string> images) {
  SubmitIntake in;
  in.peer = "client-a";
  in.client_id = id;
  in.prompt_json = std::move(prompt);
  in.images = std::move(images);
  in.image_count = in.images.size();
  return in;
}

std::vector<SubmitIntake> TakeAll(PrepareThread& t, size_t n) {
  std::vector<SubmitIntake> out;
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (out.size() < n && std::chrono::steady_clock::now() < until) {
    for (auto& j : t.TakeDone()) out.push_back(std::move(j));
    std::this_thread::sleep_for(5ms);
  }
  return out;
}

TEST(PrepareThreadTest, AnswersAreThoseOfTheCallingThreadInTheOrderPosted) {
  auto edge = Preparer();
  if (!edge) GTEST_SKIP() << "the ixc2_vl fixture is not at " << testing::FixturesDir();
  const std::string large = image::SyntheticPng(1920, 1080), small = image::SyntheticPng(64, 48);
  const std::vector<SubmitIntake> jobs = {Job(1, "\"<ImageHere>What is it?\"", {large}),
                                          Job(2, "\"<ImageHere>And this one?\"", {small}),
                                          Job(3, "\"<ImageHere>Broken.\"", {"not an image"})};
  PrepareThread thread(edge.get());
  for (const auto& j : jobs) thread.Post(j);
  EXPECT_GE(thread.pending(), 1u);
  auto done = TakeAll(thread, jobs.size());
  ASSERT_EQ(done.size(), jobs.size());
  EXPECT_EQ(thread.pending(), 0u);
  for (size_t k = 0; k < jobs.size(); ++k) {
    EXPECT_EQ(done[k].client_id, jobs[k].client_id) << "out of order";
    EXPECT_TRUE(done[k].images.empty()) << "the encoded bytes are kept after preparing";
    EXPECT_EQ(done[k].image_count, 1u);
    auto here = edge->Prepare(jobs[k].prompt_json, jobs[k].images);
    ASSERT_EQ(done[k].prepared.ok(), here.ok()) << k;
    if (!here.ok()) {
      EXPECT_EQ(done[k].prepared.status().ToString(), here.status().ToString());
      EXPECT_NE(here.status().ToString().find("image 1"), std::string::npos) << here.status().ToString();
      continue;
    }
    ASSERT_EQ(done[k].prepared->size(), 1u);
    const PreparedPrompt& a = done[k].prepared->front();
    const PreparedPrompt& b = here->front();
    EXPECT_EQ(a.ids, b.ids);
    ASSERT_EQ(a.images.size(), b.images.size());
    for (size_t i = 0; i < a.images.size(); ++i) {
      EXPECT_EQ(a.images[i].pixels, b.images[i].pixels) << "image " << i << " of job " << k;
    }
  }
}

TEST(PrepareThreadTest, StoppingWithWorkLeftReturnsAfterTheJobInProgress) {
  auto edge = Preparer();
  if (!edge) GTEST_SKIP() << "the ixc2_vl fixture is not at " << testing::FixturesDir();
  const std::string image = image::SyntheticPng(640, 480);
  auto one = std::chrono::steady_clock::duration::max();  // the fastest of 3, warm
  for (int i = 0; i < 3; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(edge->Prepare("\"<ImageHere>What is it?\"", {image}).ok());
    one = std::min(one, std::chrono::steady_clock::now() - t0);
  }
  constexpr uint64_t kJobs = 100;
  auto thread = std::make_unique<PrepareThread>(edge.get());
  for (uint64_t id = 1; id <= kJobs; ++id) thread->Post(Job(id, "\"<ImageHere>What is it?\"", {image}));
  EXPECT_EQ(thread->pending(), kJobs);
  const auto started = std::chrono::steady_clock::now();
  thread.reset();
  // Preparing every job would take kJobs times one; the destructor waits for the one in progress.
  const auto took = std::chrono::steady_clock::now() - started;
  EXPECT_LT(took, 25 * one) << "one image: " << std::chrono::duration<double, std::milli>(one).count()
                            << " ms, stopping: " << std::chrono::duration<double, std::milli>(took).count() << " ms";
}

}  // namespace
}  // namespace xcpipe::coordinator::detail
