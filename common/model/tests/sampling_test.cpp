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
  EXPECT_TRUE(ValidateSamplingParams({}).ok());
}

}  // namespace
}  // namespace xcpipe::model
