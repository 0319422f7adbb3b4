// Small numeric building blocks shared by the vision towers and the decoder layers. Internal
// to the model module. Each follows the official PyTorch code's order of operations and
// precision (noted where it matters for matching the fixtures).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <string>

#if defined(__x86_64__)
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own placeholders (as in the
// data plane's CRC); nothing of ours is uninitialised.
#if !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#define XCPIPE_MODEL_SMALL_ROWS 1
#endif

namespace xcpipe::model::ops {

#ifdef XCPIPE_MODEL_SMALL_ROWS
namespace detail {

// y[m, n] = dot(x[m, :], w[n, :]) for MB rows of x and output columns [n0, n1), NB columns at
// a time: each 16-float piece of W is loaded once for all MB rows and each piece of x once for
// NB columns (MB * NB accumulators in registers), so W streams from memory once per call.
// Float32 partial sums in 16 lanes (a masked tail), then a tree reduction per output.
template <int NB, int MB>
__attribute__((target("avx512f,fma"))) void RowsTimesWt(const float* x, int64_t ldx, const float* w, int64_t K,
                                                         int64_t n0, int64_t n1, float* y, int64_t ldy) {
  const int64_t full = K - K % 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (K % 16)) - 1u);
  int64_t n = n0;
  for (; n + NB <= n1; n += NB) {
    __m512 acc[NB][MB];
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j)
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) acc[j][m] = _mm512_setzero_ps();
    for (int64_t k = 0; k < full; k += 16) {
      __m512 wv[NB];
#pragma GCC unroll 4
      for (int j = 0; j < NB; ++j) wv[j] = _mm512_loadu_ps(w + (n + j) * K + k);
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) {
        const __m512 xv = _mm512_loadu_ps(x + m * ldx + k);
#pragma GCC unroll 4
        for (int j = 0; j < NB; ++j) acc[j][m] = _mm512_fmadd_ps(wv[j], xv, acc[j][m]);
      }
    }
    if (tail != 0) {
      __m512 wv[NB];
#pragma GCC unroll 4
      for (int j = 0; j < NB; ++j) wv[j] = _mm512_maskz_loadu_ps(tail, w + (n + j) * K + full);
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) {
        const __m512 xv = _mm512_maskz_loadu_ps(tail, x + m * ldx + full);
#pragma GCC unroll 4
        for (int j = 0; j < NB; ++j) acc[j][m] = _mm512_fmadd_ps(wv[j], xv, acc[j][m]);
      }
    }
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j)
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) y[m * ldy + n + j] = _mm512_reduce_add_ps(acc[j][m]);
  }
  if (n < n1) RowsTimesWt<1, MB>(x, ldx, w, K, n, n1, y, ldy);  // the last NB - 1 columns at most
}

inline bool HasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  return has;
}

// x [M, K] · w[N, K]^T for a few rows, in blocks of output columns (a block of W rows stays in
// L2 while each group of up to 4 rows of x passes over it). Runs on the calling thread; 4 x 4
// register blocks measured best here (vs 2 x 8 and 1 x 8: x re-read from L2 limits those).
inline at::Tensor SmallRowsLinear(const at::Tensor& x, const at::Tensor& w) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  constexpr int64_t kBlock = 64;  // W rows per block: 64 x K floats (256 KiB at K = 1024)
  constexpr int kCols = 4;        // output columns per register block
  for (int64_t n0 = 0; n0 < N; n0 += kBlock) {
    const int64_t n1 = std::min(N, n0 + kBlock);
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const float* xm = xp + m0 * K;
      float* ym = yp + m0 * N;
      switch (std::min<int64_t>(4, M - m0)) {
        case 1: RowsTimesWt<kCols, 1>(xm, K, wp, K, n0, n1, ym, N); break;
        case 2: RowsTimesWt<kCols, 2>(xm, K, wp, K, n0, n1, ym, N); break;
        case 3: RowsTimesWt<kCols, 3>(xm, K, wp, K, n0, n1, ym, N); break;
        default: RowsTimesWt<kCols, 4>(xm, K, wp, K, n0, n1, ym, N); break;
      }
    }
  }
  return y;
}

}  // namespace detail
#endif

// Rows at most this many take the few-rows paths below.
constexpr int64_t kSmallRows = 16;

// y = x W^T (+ b). Decode steps carry one row per sequence, and for a few float32 rows
// at::linear's GEMM is slow on these machines: it packs W on every call (bench/decode_bench,
// "sweep" and "batched" figures). One row goes through GEMV (at::mv streams W once, about twice
// as fast as at::linear under OpenBLAS); 2..kSmallRows rows through an AVX-512 kernel that
// reads each row of W once for all of them. bf16 stays on at::linear (its oneDNN GEMM beats the
// bf16 GEMV), as do more rows (prefill: a real GEMM).
// `cpu_fast` false (a CUDA device, or the generic mode on the CPU) keeps every call on
// at::linear, the op a GPU runs.
inline at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, bool cpu_fast) {
  if (cpu_fast && x.dim() == 2 && x.size(0) <= kSmallRows && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat &&
      w.dim() == 2 && w.is_contiguous() && x.size(1) == w.size(1)) {
    if (x.size(0) == 1) {
      at::Tensor row = x.select(0, 0);
      return (b.defined() ? at::addmv(b, w, row) : at::mv(w, row)).unsqueeze(0);
    }
#ifdef XCPIPE_MODEL_SMALL_ROWS
    if (detail::HasAvx512() && x.size(0) > 1) {
      at::Tensor y = detail::SmallRowsLinear(x.contiguous(), w);
      return b.defined() ? y.add_(b) : y;
    }
#endif
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
// `rows_period` > 0: the query rows are `tq / rows_period` groups of the same positions (the
// query heads that share a KV head, stacked), so query i sits at position i % rows_period.
// Scores in the input dtype scaled by `scale`, softmax in fp32 (as the official code).
inline at::Tensor Attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                            int64_t causal_offset, int64_t rows_period = 0) {
  at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) * scale;
  const int64_t tq = q.size(-2), tk = k.size(-2);
  if (causal_offset >= 0 && tq > 1) {
    const auto on = at::TensorOptions().dtype(at::kLong).device(q.device());
    at::Tensor positions = at::arange(tq, on);
    if (rows_period > 0) positions = positions.remainder(rows_period);
    at::Tensor rows = positions.unsqueeze(1) + causal_offset;
    at::Tensor cols = at::arange(tk, on).unsqueeze(0);
    scores = scores.masked_fill(cols > rows, -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  return at::matmul(probs, v);
}

}  // namespace xcpipe::model::ops
