#include "xcpipe/model/sampling.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace xcpipe::model {
namespace {

TEST(SamplingTest, GreedyTakesArgmax) {
  Sampler s({});
  EXPECT_EQ(s.Next(at::tensor({0.1f, 3.0f, -1.0f, 2.9f}), {}), 1);
}

TEST(SamplingTest, RepetitionPenaltyFollowsHuggingFace) {
  // Positive logits are divided, negative multiplied; each distinct token once.
  SamplingParams p;
  p.repetition_penalty = 2.0;
  Sampler s(p);
  // Token 1 (3.0 -> 1.5) loses to token 3 (2.9); repeated context entries count once.
  EXPECT_EQ(s.Next(at::tensor({0.1f, 3.0f, -1.0f, 2.9f}), {1, 1, 1}), 3);
  // Negative logits get more negative: token 0 (-0.5 -> -1.0) now loses to token 2 (-0.9).
  EXPECT_EQ(s.Next(at::tensor({-0.5f, -5.0f, -0.9f}), {0}), 2);
}

TEST(SamplingTest, SeededSamplingIsReproducible) {
  SamplingParams p;
  p.greedy = false;
  p.temperature = 1.0;
  p.seed = 1234;
  at::Tensor logits = at::zeros({50});
  Sampler a(p), b(p);
  std::vector<int64_t> x, y;
  for (int i = 0; i < 20; ++i) {
    x.push_back(a.Next(logits, {}));
    y.push_back(b.Next(logits, {}));
  }
  EXPECT_EQ(x, y);
  // Uniform logits over 50 tokens: 20 draws are not all the same token.
  EXPECT_GT(std::set<int64_t>(x.begin(), x.end()).size(), 1u);
}

TEST(SamplingTest, TopKRestrictsToTheBestK) {
  SamplingParams p;
  p.greedy = false;
  p.top_k = 2;
  p.seed = 7;
  Sampler s(p);
  at::Tensor logits = at::tensor({5.0f, 4.9f, 4.8f, 4.7f});
  for (int i = 0; i < 50; ++i) {
    int64_t t = s.Next(logits, {});
    EXPECT_TRUE(t == 0 || t == 1) << t;
  }
}

TEST(SamplingTest, TopPKeepsTheSmallestNucleus) {
  SamplingParams p;
  p.greedy = false;
  p.top_p = 0.5;
  p.seed = 3;
  Sampler s(p);
  // Token 0 alone carries ~0.84 of the mass, so the nucleus for p = 0.5 is {0}.
  at::Tensor logits = at::tensor({3.0f, 0.0f, 0.0f, 0.0f});
  for (int i = 0; i < 30; ++i) EXPECT_EQ(s.Next(logits, {}), 0);
}

TEST(SamplingTest, InvalidParametersAreRefusedWithTheirRange) {
  SamplingParams p;
  p.temperature = 0.0;
  auto st = ValidateSamplingParams(p);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("temperature"), std::string::npos);
  p = {};
  p.top_p = 1.5;
  EXPECT_NE(ValidateSamplingParams(p).message().find("top_p"), std::string::npos);
  p = {};
  p.top_k = -1;
  EXPECT_NE(ValidateSamplingParams(p).message().find("top_k"), std::string::npos);
  p = {};
  p.repetition_penalty = -2;
  EXPECT_NE(ValidateSamplingParams(p).message().find("repetition_penalty"), std::string::npos);
  p = {};
  p.min_new_tokens = -1;
  EXPECT_NE(ValidateSamplingParams(p).message().find("min_new_tokens"), std::string::npos);
  EXPECT_TRUE(ValidateSamplingParams({}).ok());
}

TEST(SamplingTest, AReplayedSamplerContinuesTheDrawsOfTheLostRun) {
  SamplingParams p;
  p.greedy = false;
  p.seed = 99;
  const at::Tensor logits = at::zeros({64});
  Sampler whole(p);
  std::vector<int64_t> tokens;
  for (int i = 0; i < 12; ++i) tokens.push_back(whole.Next(logits, {}));
  Sampler replayed(p, /*already_generated=*/5);
  std::vector<int64_t> tail;
  for (int i = 5; i < 12; ++i) tail.push_back(replayed.Next(logits, {}));
  EXPECT_EQ(tail, std::vector<int64_t>(tokens.begin() + 5, tokens.end()));
}

TEST(SamplingTest, MinNewTokensMasksTheStopIdsUntilEnoughTokensExist) {
  // Token 2 is a stop id and the argmax; with min_new_tokens = 3 the first three tokens are
  // the best of the others (token 1), then the stop id comes back.
  SamplingParams p;
  p.min_new_tokens = 3;
  p.stop_ids = {2, 3};
  Sampler s(p);
  const at::Tensor logits = at::tensor({0.1f, 1.0f, 5.0f, 4.0f});
  EXPECT_EQ(s.Next(logits, {}), 1);
  EXPECT_EQ(s.Next(logits, {}), 1);
  EXPECT_EQ(s.Next(logits, {}), 1);
  EXPECT_EQ(s.Next(logits, {}), 2);
  EXPECT_EQ(s.generated(), 4);
  // A replayed sequence that already has 2 tokens masks only one more.
  Sampler replayed(p, /*already_generated=*/2);
  EXPECT_EQ(replayed.Next(logits, {}), 1);
  EXPECT_EQ(replayed.Next(logits, {}), 2);
  // Sampling never draws a masked id either: all mass is on the stop ids but one token.
  p.greedy = false;
  p.seed = 7;
  Sampler sampled(p);
  const at::Tensor peaked = at::tensor({-30.0f, -30.0f, 20.0f, 20.0f});
  for (int i = 0; i < 3; ++i) {
    const int64_t t = sampled.Next(peaked, {});
    EXPECT_TRUE(t == 0 || t == 1) << t;
  }
}

}  // namespace
}  // namespace xcpipe::model
