// The fused causal prefill attention (flash_prefill) against a float64 CPU reference: scores over
// [q_nope | q_pe] . [k_nope | k_pe], causal mask by position, softmax, P V. Inputs are random bf16 in
// strided layouts like the model's (q_pe in a wider row, k_pe shared by the heads, padded output
// rows); the output is NaN-poisoned before each launch, so unwritten elements and writes into the
// padding show. Skipped without a GPU.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "common/error.h"
#include "cuda_test_util.h"

namespace dsv2::test {
namespace {

using namespace dsv2::cuda;

constexpr int kNope = 128, kRope = 64, kV = 128;

struct Case {
  int heads, n_q, len0;
  float scale;
};

// Runs one case and records a failure for each check it misses.
void run_case(const Case& c, std::mt19937_64& g) {
  const int H = c.heads, n = c.n_q, P = c.len0 + c.n_q;
  const std::string tag =
      "heads=" + std::to_string(H) + " n_q=" + std::to_string(n) + " len0=" + std::to_string(c.len0);
  // Layouts (element strides, all multiples of 8):
  //   q:    [n, H, nope + 8] with q_nope at 0 (8 unused values per head)
  //   q_pe: [n, H, 16 + rope] with q_pe at 16
  //   kv:   [P, H, nope + v] (k_nope then v per head)
  //   k_pe: [P, 8 + rope + 8] with k_pe at 8
  //   out:  [n, H * v + 8] with (i, h) at i * out_tok + h * v; the last 8 values of a row stay unwritten
  const int q_head = kNope + 8, q_tok = H * q_head;
  const int qpe_head = 16 + kRope, qpe_tok = H * qpe_head;
  const int kv_head = kNope + kV, kv_tok = H * kv_head;
  const int kpe_tok = 8 + kRope + 8;
  const int out_head = kV, out_tok = H * kV + 8;

  const auto q = round_bf16(randn(size_t(n) * q_tok, g));
  const auto qpe = round_bf16(randn(size_t(n) * qpe_tok, g));
  const auto kv = round_bf16(randn(size_t(P) * kv_tok, g));
  const auto kpe = round_bf16(randn(size_t(P) * kpe_tok, g));
  Dev<bf16> dq(to_bf16(q)), dqpe(to_bf16(qpe)), dkv(to_bf16(kv)), dkpe(to_bf16(kpe)), dout(size_t(n) * out_tok);
  dout.poison();

  FlashPrefillParams p{};
  p.q = dq.p;
  p.q_tok = q_tok;
  p.q_head = q_head;
  p.q_pe = dqpe.p + 16;
  p.qpe_tok = qpe_tok;
  p.qpe_head = qpe_head;
  p.kv = dkv.p;
  p.kv_tok = kv_tok;
  p.kv_head = kv_head;
  p.k_pe = dkpe.p + 8;
  p.kpe_tok = kpe_tok;
  p.n_q = n;
  p.len0 = c.len0;
  p.heads = H;
  p.scale = c.scale;
  p.out = dout.p;
  p.out_tok = out_tok;
  p.out_head = out_head;
  flash_prefill(p, kNope, kRope, kV, 0);
  const auto raw = dout.get();

  // Reference in float64 on the bf16-rounded inputs.
  std::vector<float> ref(size_t(n) * H * kV), got(size_t(n) * H * kV);
  std::vector<double> sc(static_cast<size_t>(P)), acc(static_cast<size_t>(kV));
  double worst_row = 0;
  int unwritten = 0, padding_written = 0;
  for (int i = 0; i < n; ++i) {
    const int last = c.len0 + i;  // highest visible key
    for (int h = 0; h < H; ++h) {
      const float* qn = &q[size_t(i) * q_tok + size_t(h) * q_head];
      const float* qp = &qpe[size_t(i) * qpe_tok + size_t(h) * qpe_head + 16];
      double mx = -std::numeric_limits<double>::infinity();
      for (int j = 0; j <= last; ++j) {
        const float* kn = &kv[size_t(j) * kv_tok + size_t(h) * kv_head];
        const float* kp = &kpe[size_t(j) * kpe_tok + 8];
        double d = 0;
        for (int k = 0; k < kNope; ++k) d += double(qn[k]) * kn[k];
        for (int k = 0; k < kRope; ++k) d += double(qp[k]) * kp[k];
        sc[size_t(j)] = d * c.scale;
        mx = std::max(mx, sc[size_t(j)]);
      }
      double sum = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int j = 0; j <= last; ++j) {
        const double w = std::exp(sc[size_t(j)] - mx);
        sum += w;
        const float* v = &kv[size_t(j) * kv_tok + size_t(h) * kv_head + kNope];
        for (int d = 0; d < kV; ++d) acc[size_t(d)] += w * v[d];
      }
      double num = 0, den = 0;
      for (int d = 0; d < kV; ++d) {
        const size_t r = (size_t(i) * H + h) * kV + d;
        ref[r] = float(acc[size_t(d)] / sum);
        got[r] = bf(raw[size_t(i) * out_tok + size_t(h) * out_head + d]);
        if (!std::isfinite(got[r])) ++unwritten;
        num += (double(got[r]) - ref[r]) * (double(got[r]) - ref[r]);
        den += double(ref[r]) * ref[r];
      }
      worst_row = std::max(worst_row, std::sqrt(num / std::max(den, 1e-30)));
    }
    for (int e = H * kV; e < out_tok; ++e)
      if (!std::isnan(bf(raw[size_t(i) * out_tok + e]))) ++padding_written;
  }
  EXPECT_EQ(unwritten, 0) << tag;
  EXPECT_EQ(padding_written, 0) << tag;
  EXPECT_LT(rel_err(got, ref), 1e-2) << tag;
  // Per (query, head) row as well, so an error confined to a few rows (the causal edge, the last
  // partial query tile) cannot hide in the whole-output norm.
  EXPECT_LT(worst_row, 3e-2) << tag;
}

TEST(CudaFlashPrefill, Supported) {
  EXPECT_TRUE(flash_prefill_supported(128, 64, 128));
  EXPECT_FALSE(flash_prefill_supported(64, 32, 64));
  EXPECT_FALSE(flash_prefill_supported(128, 64, 64));
}

TEST(CudaFlashPrefill, MatchesReferenceSweep) {
  DSV2_REQUIRE_GPU();
  std::mt19937_64 g(11);
  for (int heads : {1, 3, 16})
    for (int n_q : {1, 17, 64, 200, 300})
      for (int len0 : {0, 5, 64, 130}) run_case({heads, n_q, len0, 0.1f}, g);
}

// Sharper softmax (a few keys dominate), where a misplaced mask or a wrong max rescale is large.
TEST(CudaFlashPrefill, MatchesReferencePeaked) {
  DSV2_REQUIRE_GPU();
  std::mt19937_64 g(12);
  for (int n_q : {33, 129})
    for (int len0 : {0, 70}) run_case({2, n_q, len0, 0.4f}, g);
}

TEST(CudaFlashPrefill, RejectsUnsupportedWidths) {
  DSV2_REQUIRE_GPU();
  FlashPrefillParams p{};
  p.n_q = 1;
  p.heads = 1;
  EXPECT_THROW(flash_prefill(p, 64, 32, 64, 0), Error);
}

}  // namespace
}  // namespace dsv2::test
