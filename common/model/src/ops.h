// Small numeric building blocks shared by the vision towers and the decoder layers. Internal
// to the model module. Each follows the official PyTorch code's order of operations and
// precision (noted where it matters for matching the fixtures).
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace xcpipe::model::ops {

// y = x W^T (+ b). One float32 row (a decode step) goes through GEMV: under OpenBLAS,
// at::mv(W, x) streams W once, about twice as fast as at::linear's GEMM for one token on these
// machines (bench/decode_bench, "sweep" columns). bf16 stays on at::linear (its oneDNN GEMM
// beats the bf16 GEMV), as do more rows (one GEMM reads W once for all of them).
inline at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {}) {
  if (x.dim() == 2 && x.size(0) == 1 && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat &&
      w.dim() == 2 && w.is_contiguous()) {
    at::Tensor row = x.select(0, 0);
    return (b.defined() ? at::addmv(b, w, row) : at::mv(w, row)).unsqueeze(0);
  }
  return b.defined() ? at::linear(x, w, b) : at::linear(x, w);
}

// InternLM RMSNorm: the mean of squares in fp32, the weight applied in the input dtype.
inline at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  return w * (xf * at::rsqrt(var + eps)).to(x.scalar_type());
}

inline at::Tensor LayerNorm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
  return at::layer_norm(x, {x.size(-1)}, w, b, eps);
}

inline at::Tensor QuickGelu(const at::Tensor& x) { return x * at::sigmoid(x * 1.702); }
inline at::Tensor GeluErf(const at::Tensor& x) { return at::gelu(x); }

// rotate_half(x) = cat(-x[d/2:], x[:d/2]).
inline at::Tensor RotateHalf(const at::Tensor& x) {
  int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// Multi-head attention of one sequence. q: [heads, tq, d]; k, v: [heads, tk, d].
// `causal_offset` >= 0 applies a causal mask where query i sees keys j <= i + offset.
// Scores in the input dtype scaled by `scale`, softmax in fp32 (as the official code).
inline at::Tensor Attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                            int64_t causal_offset) {
  at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) * scale;
  const int64_t tq = q.size(-2), tk = k.size(-2);
  if (causal_offset >= 0 && tq > 1) {
    at::Tensor rows = at::arange(tq, at::kLong).unsqueeze(1) + causal_offset;
    at::Tensor cols = at::arange(tk, at::kLong).unsqueeze(0);
    scores = scores.masked_fill(cols > rows, -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  return at::matmul(probs, v);
}

}  // namespace xcpipe::model::ops
