// The one-token MoE block (moe_rows: routed and shared experts in two kernels, no dispatch)
// against a CPU reference: y[t] = sum over the shared pieces and the routed experts of
// weight * down(bf16(silu(gate) * up)), with gate/up rounded to bf16 as the device stores them.
#include <algorithm>
#include <numeric>

#include "cuda_test_util.h"

namespace dsv2::test {
namespace {

using namespace dsv2::cuda;

TEST(CudaMoe, RowsPathRoutedAndShared) {
  DSV2_REQUIRE_GPU();
  std::mt19937_64 g(11);
  struct Case {
    int T, E, K, S, H, I;
  };
  for (Case cs : {Case{1, 64, 6, 2, 2048, 1408}, Case{1, 16, 4, 1, 256, 136}, Case{1, 8, 2, 0, 128, 64},
                  Case{1, 160, 6, 2, 512, 96}, Case{1, 4, 4, 3, 64, 200}, Case{1, 4, 2, 2, 5120, 512},
                  Case{1, 8, 2, 0, 256, 64}}) {
    ASSERT_TRUE(moe_rows_supported(cs.T, cs.K, cs.S, cs.H, cs.I));
    const int ES = cs.E + cs.S;
    std::vector<int32_t> ids(size_t(cs.T) * cs.K);
    std::vector<float> wts(ids.size());
    for (int t = 0; t < cs.T; ++t) {
      std::vector<int32_t> perm(size_t(cs.E));
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), g);
      if (t % 2 == 1) perm[0] = ids[0];  // tokens sharing an expert
      for (int k = 0; k < cs.K; ++k) {
        ids[size_t(t) * cs.K + k] = perm[size_t(k)];
        wts[size_t(t) * cs.K + k] = std::uniform_real_distribution<float>(0.1f, 1.5f)(g);
      }
    }
    // x = bf16(RMSNorm(xf)) as add_rmsnorm would store it; the second launch normalizes xf itself
    const auto xf = randn(size_t(cs.T) * cs.H, g, 2.0f);
    std::vector<float> nw(size_t(cs.H)), x(xf.size());
    for (float& v : nw) v = std::uniform_real_distribution<float>(0.5f, 1.5f)(g);
    for (int t = 0; t < cs.T; ++t) {
      double ss = 0;
      for (int h = 0; h < cs.H; ++h) ss += double(xf[size_t(t) * cs.H + h]) * xf[size_t(t) * cs.H + h];
      const float inv = float(1.0 / std::sqrt(ss / cs.H + 1e-6));
      for (int h = 0; h < cs.H; ++h)
        x[size_t(t) * cs.H + h] = bf16_to_f32(f32_to_bf16(nw[size_t(h)] * (xf[size_t(t) * cs.H + h] * inv)));
    }
    auto wgu = round_bf16(randw(size_t(ES) * 2 * cs.I * cs.H, g, 0.05f));   // [ES, 2I, H]
    auto wdown = round_bf16(randw(size_t(ES) * cs.H * cs.I, g, 0.05f));     // [ES, H, I]
    Dev<int32_t> dids(ids);
    Dev<float> dw(wts), dy(size_t(cs.T) * cs.H);
    Dev<bf16> dx(to_bf16(x)), dgu(to_bf16(wgu)), ddown(to_bf16(wdown)),
        scratch(size_t(cs.T * cs.K + cs.S * cs.T) * cs.I);
    dy.poison();
    scratch.poison();
    MoeRowsParams p{};
    p.x = dx.p;
    p.ids = dids.p;
    p.weights = dw.p;
    p.T = cs.T;
    p.K = cs.K;
    p.S = cs.S;
    p.E = cs.E;
    p.H = cs.H;
    p.I = cs.I;
    p.w_gu = dgu.p;
    p.w_down = ddown.p;
    p.act = scratch.p;
    p.y = dy.p;
    moe_rows(p, 0);
    const auto y1 = dy.get();
    // the residual form: normalize xf in the kernel and add into y (starting at 0.25)
    Dev<float> dxf(xf), dnw(nw), dy2(std::vector<float>(size_t(cs.T) * cs.H, 0.25f));
    p.x = nullptr;
    p.xf = dxf.p;
    p.norm_w = dnw.p;
    p.eps = 1e-6f;
    p.accumulate = true;
    p.y = dy2.p;
    moe_rows(p, 0);
    auto y2 = dy2.get();
    for (float& v : y2) v -= 0.25f;
    std::vector<float> ref(size_t(cs.T) * cs.H, 0.0f);
    for (int t = 0; t < cs.T; ++t) {
      auto expert = [&](int e, float wgt) {
        std::vector<float> act(size_t(cs.I));
        for (int i = 0; i < cs.I; ++i) {
          double gsum = 0, usum = 0;
          for (int h = 0; h < cs.H; ++h) {
            const double xv = x[size_t(t) * cs.H + h];
            gsum += xv * wgu[(size_t(e) * 2 * cs.I + i) * cs.H + h];
            usum += xv * wgu[(size_t(e) * 2 * cs.I + cs.I + i) * cs.H + h];
          }
          const float gv = bf16_to_f32(f32_to_bf16(float(gsum))), uv = bf16_to_f32(f32_to_bf16(float(usum)));
          act[size_t(i)] = bf16_to_f32(f32_to_bf16(gv / (1.0f + std::exp(-gv)) * uv));
        }
        for (int h = 0; h < cs.H; ++h) {
          double acc = 0;
          for (int i = 0; i < cs.I; ++i) acc += double(act[size_t(i)]) * wdown[(size_t(e) * cs.H + h) * cs.I + i];
          ref[size_t(t) * cs.H + h] += float(wgt * acc);
        }
      };
      for (int s = 0; s < cs.S; ++s) expert(cs.E + s, 1.0f);
      for (int k = 0; k < cs.K; ++k) expert(ids[size_t(t) * cs.K + k], wts[size_t(t) * cs.K + k]);
    }
    EXPECT_LT(rel_err(y2, ref), 5e-3) << "normalized in the kernel, T=" << cs.T << " H=" << cs.H;
    EXPECT_LT(rel_err(y1, ref), 5e-3)
        << "T=" << cs.T << " E=" << cs.E << " K=" << cs.K << " S=" << cs.S << " H=" << cs.H << " I=" << cs.I;
    if (!moe_rows_tma_supported(cs.T, cs.K, cs.S, cs.H, cs.I)) continue;
    // The bulk-copy form: the same activations as moe_rows' gate/up kernel (both input forms), and y
    // within float rounding of moe_rows' (another summation order).
    for (bool normalized : {false, true}) {
      SCOPED_TRACE(testing::Message() << "moe_rows_tma, normalized " << normalized << ", H=" << cs.H << " I=" << cs.I
                                      << " K=" << cs.K << " S=" << cs.S);
      p.x = normalized ? nullptr : dx.p;
      p.xf = normalized ? dxf.p : nullptr;
      p.norm_w = normalized ? dnw.p : nullptr;
      p.accumulate = normalized;
      scratch.poison();
      moe_rows(p, 0, 1);
      const auto act1 = from_bf16(scratch.get());
      scratch.poison();
      moe_rows_tma(p, 0, 1);
      const auto act2 = from_bf16(scratch.get());
      for (size_t i = 0; i < act1.size(); ++i) ASSERT_EQ(act1[i], act2[i]) << "activation " << i;
      // units in ticket order: the same activations, also from the second launch on one counter
      Dev<unsigned long long> tickets(std::vector<unsigned long long>{0});
      p.gu_tickets = tickets.p;
      for (int launch = 0; launch < 2; ++launch) {
        scratch.poison();
        moe_rows_tma(p, 0, 1);
        EXPECT_EQ(from_bf16(scratch.get()), act1) << "tickets, launch " << launch;
      }
      p.gu_tickets = nullptr;
      Dev<float> dy3(std::vector<float>(size_t(cs.T) * cs.H, 0.25f));
      p.y = dy3.p;
      moe_rows_tma(p, 0);
      auto y3 = dy3.get();
      if (normalized)
        for (float& v : y3) v -= 0.25f;
      EXPECT_LT(rel_err(y3, ref), 5e-3);
      EXPECT_LT(rel_err(y3, normalized ? y2 : y1), 1e-5);
    }
  }
}

// A dense SwiGLU MLP through the bulk-copy kernels as one shared expert (K = 0, S = 1, E = 0; the
// one-token dense layers), x normalized in the kernel and y accumulated, against a CPU reference in
// double. I = 10944 (V2-Lite's dense layer) needs down items narrower than 8 outputs.
TEST(CudaMoe, TmaDenseMlp) {
  DSV2_REQUIRE_GPU();
  std::mt19937_64 g(23);
  for (const auto& [H, I] : {std::pair{2048, 10944}, std::pair{2048, 2816}, std::pair{512, 1024}}) {
    if (!moe_rows_tma_supported(1, 0, 1, H, I)) GTEST_SKIP() << "no bulk-copy MoE on this device";
    SCOPED_TRACE(testing::Message() << "H=" << H << " I=" << I);
    const auto xf = randn(size_t(H), g, 2.0f);
    std::vector<float> nw(static_cast<size_t>(H)), x(static_cast<size_t>(H));
    for (float& v : nw) v = std::uniform_real_distribution<float>(0.5f, 1.5f)(g);
    double ss = 0;
    for (float v : xf) ss += double(v) * v;
    const float inv = float(1.0 / std::sqrt(ss / H + 1e-6));
    for (int h = 0; h < H; ++h) x[size_t(h)] = bf16_to_f32(f32_to_bf16(nw[size_t(h)] * (xf[size_t(h)] * inv)));
    const auto wgu = round_bf16(randw(size_t(2) * I * H, g, 0.05f));  // [2I, H]
    const auto wdown = round_bf16(randw(size_t(H) * I, g, 0.05f));    // [H, I]
    Dev<float> dxf(xf), dnw(nw), dy(std::vector<float>(size_t(H), 0.25f));
    Dev<bf16> dgu(to_bf16(wgu)), ddown(to_bf16(wdown)), act(static_cast<size_t>(I));
    act.poison();
    MoeRowsParams p{};
    p.xf = dxf.p;
    p.norm_w = dnw.p;
    p.eps = 1e-6f;
    p.x_wait = true;
    p.accumulate = true;
    p.T = 1;
    p.S = 1;
    p.H = H;
    p.I = I;
    p.w_gu = dgu.p;
    p.w_down = ddown.p;
    p.act = act.p;
    p.y = dy.p;
    moe_rows_tma(p, 0);
    auto y = dy.get();
    for (float& v : y) v -= 0.25f;
    std::vector<float> a(static_cast<size_t>(I)), ref(static_cast<size_t>(H));
    for (int i = 0; i < I; ++i) {
      double gsum = 0, usum = 0;
      for (int h = 0; h < H; ++h) {
        gsum += double(x[size_t(h)]) * wgu[size_t(i) * H + h];
        usum += double(x[size_t(h)]) * wgu[(size_t(I) + i) * H + h];
      }
      const float gv = bf16_to_f32(f32_to_bf16(float(gsum))), uv = bf16_to_f32(f32_to_bf16(float(usum)));
      a[size_t(i)] = bf16_to_f32(f32_to_bf16(gv / (1.0f + std::exp(-gv)) * uv));
    }
    for (int h = 0; h < H; ++h) {
      double acc = 0;
      for (int i = 0; i < I; ++i) acc += double(a[size_t(i)]) * wdown[size_t(h) * I + i];
      ref[size_t(h)] = float(acc);
    }
    EXPECT_LT(rel_err(from_bf16(act.get()), a), 1e-2);
    EXPECT_LT(rel_err(y, ref), 5e-3);
  }
}

// The few-token router (logits and routing in one cluster launch) against the CPU
// router on logits computed in double (plain, with appended shared entries, and normalizing x).
TEST(CudaMoe, RouteSmallFusedLogits) {
  DSV2_REQUIRE_GPU();
  std::mt19937_64 g(12);
  struct Case {
    int T, H;
    RouterCase r;
  };
  // one cluster per 8 tokens: full, partial and several clusters
  for (Case cs : {Case{1, 2048, {64, 6, 1, 1, false, false, 1.0}}, Case{8, 512, {160, 6, 8, 3, true, false, 16.0}},
                  Case{3, 64, {8, 3, 1, 1, false, true, 1.0}}, Case{5, 128, {16, 3, 4, 2, true, false, 2.5}},
                  Case{37, 2048, {64, 6, 1, 1, false, false, 1.0}}, Case{20, 512, {160, 6, 8, 3, true, false, 16.0}},
                  Case{kRouteSmallMaxTokens, 2048, {64, 6, 1, 1, false, false, 1.0}}}) {
    const RouterCase& r = cs.r;
    const auto x = randn(size_t(cs.T) * cs.H, g);
    const auto w = randn(size_t(r.E) * cs.H, g, 0.05f);
    std::vector<float> logits(size_t(cs.T) * r.E);
    for (int t = 0; t < cs.T; ++t)
      for (int e = 0; e < r.E; ++e) {
        double acc = 0;
        for (int h = 0; h < cs.H; ++h) acc += double(x[size_t(t) * cs.H + h]) * w[size_t(e) * cs.H + h];
        logits[size_t(t) * r.E + e] = float(acc);
      }
    // the second launch also appends two fixed entries (shared pseudo-experts) per token
    const int KS = r.K + 2;
    Dev<float> dx(x), dw(w), dlog(size_t(cs.T) * r.E), dwts(size_t(cs.T) * KS);
    Dev<int32_t> dids(size_t(cs.T) * KS);
    // third launch: x is the raw residual stream, normalized in the kernel with weights nw
    std::vector<float> nw(size_t(cs.H)), xraw(x.size()), logits_n(logits.size());
    for (float& v : nw) v = std::uniform_real_distribution<float>(0.5f, 1.5f)(g);
    for (int t = 0; t < cs.T; ++t) {
      for (int h = 0; h < cs.H; ++h) xraw[size_t(t) * cs.H + h] = 3.0f * x[size_t(t) * cs.H + h];
      double ss = 0;
      for (int h = 0; h < cs.H; ++h) ss += double(xraw[size_t(t) * cs.H + h]) * xraw[size_t(t) * cs.H + h];
      const double inv = 1.0 / std::sqrt(ss / cs.H + 1e-6);
      for (int e = 0; e < r.E; ++e) {
        double acc = 0;
        for (int h = 0; h < cs.H; ++h)
          acc += nw[size_t(h)] * xraw[size_t(t) * cs.H + h] * inv * w[size_t(e) * cs.H + h];
        logits_n[size_t(t) * r.E + e] = float(acc);
      }
    }
    Dev<float> dxraw(xraw), dnw(nw), dwf(w.size());
    // fourth launch: the norm weights folded into the router rows
    fold_norm_rows(dw.p, dnw.p, r.E, cs.H, dwf.p, 0);
    const auto wf = dwf.get();
    for (size_t i = 0; i < w.size(); ++i) ASSERT_EQ(wf[i], w[i] * nw[i % size_t(cs.H)]) << "folded weight " << i;
    for (int rep = 0; rep < 4; ++rep) {
      dwts.poison();
      dids.poison();
      RouterParams p{dlog.p, cs.T, r.E, r.K, r.n_group, r.topk_group, r.group, r.norm, float(r.scaling), dids.p,
                     dwts.p};
      const int stride = rep == 0 ? r.K : KS;
      if (rep >= 1) {
        p.ids_stride = KS;
        p.n_extra = 2;
      }
      if (rep == 3)
        moe_route_small_folded(p, dxraw.p, dwf.p, cs.H, 1e-6f, 0);
      else if (rep == 2)
        moe_route_small(p, dxraw.p, dw.p, cs.H, 0, dnw.p, 1e-6f);
      else
        moe_route_small(p, dx.p, dw.p, cs.H, 0);
      const auto ids = dids.get();
      const auto wts = dwts.get();
      for (int t = 0; rep >= 1 && t < cs.T; ++t)
        for (int x2 = 0; x2 < 2; ++x2) {
          EXPECT_EQ(ids[size_t(t) * stride + r.K + x2], r.E + x2);
          EXPECT_EQ(wts[size_t(t) * stride + r.K + x2], 1.0f);
        }
      EXPECT_LE(routing_mismatches(r, rep >= 2 ? logits_n : logits, cs.T, ids, wts, stride),
                cs.T > 4 ? std::max(1, cs.T / 32) : 0)
          << "rep " << rep << " E=" << r.E << " K=" << r.K << " T=" << cs.T;
    }
  }
}

// The one-token MoE layer without a router kernel: o_proj (gemv1_accumulate_route) writes per-block
// partial router logits of the new residual, and the gate/up blocks route from them. Against the
// same layer with the folded router kernel: the same residual after o_proj (bit for bit), the same
// experts, weights within rounding, the same activations; and against routing by a float64 oracle.
TEST(CudaMoe, TmaRouteInGateUp) {
  DSV2_REQUIRE_GPU();
  std::mt19937_64 g(31);
  struct Case {
    int E, K, S, H, I, Ko;
    bool norm;
    double scaling;
  };
  for (Case cs : {Case{64, 6, 2, 2048, 1408, 2048, false, 1.0}, Case{32, 4, 1, 512, 256, 384, true, 1.0},
                  Case{160, 6, 2, 1024, 192, 256, false, 16.0}}) {
    if (!moe_rows_tma_supported(1, cs.K, cs.S, cs.H, cs.I)) GTEST_SKIP() << "no bulk-copy MoE on this device";
    SCOPED_TRACE(testing::Message() << "E=" << cs.E << " H=" << cs.H);
    const int ES = cs.E + cs.S, P = gemv1_route_parts(cs.H), C = route_part_stride(cs.E);
    ASSERT_GT(P, 0);
    const auto x = randn(size_t(cs.H), g, 2.0f);
    const auto o = round_bf16(randn(size_t(cs.Ko), g));
    const auto wo = round_bf16(randw(size_t(cs.H) * cs.Ko, g, 0.05f));
    const auto wr = randn(size_t(cs.E) * cs.H, g, 0.05f);
    std::vector<float> nw(size_t(cs.H));
    for (float& v : nw) v = std::uniform_real_distribution<float>(0.5f, 1.5f)(g);
    const auto wgu = round_bf16(randw(size_t(ES) * 2 * cs.I * cs.H, g, 0.05f));
    const auto wdown = round_bf16(randw(size_t(ES) * cs.H * cs.I, g, 0.05f));
    Dev<float> dr(wr), dnw(nw), dwf(wr.size()), dpart(size_t(P) * C);
    Dev<bf16> dout(to_bf16(o)), dwo(to_bf16(wo)), dgu(to_bf16(wgu)), ddown(to_bf16(wdown));
    fold_norm_rows(dr.p, dnw.p, cs.E, cs.H, dwf.p, 0);
    RouterCase rc{cs.E, cs.K, 1, 1, false, cs.norm, cs.scaling};
    // run 0: o_proj, the folded router kernel, the MoE; run 1: o_proj with partials, routing in gate/up
    std::vector<float> y_mid[2], y_end[2], act[2], wts[2];
    std::vector<int32_t> ids[2];
    for (int run = 0; run < 2; ++run) {
      Dev<float> dy(x), dw(size_t(cs.K));
      Dev<int32_t> dids(size_t(cs.K));
      Dev<bf16> dact(size_t(cs.K + cs.S) * cs.I);
      dact.poison();
      dpart.poison();
      RouterParams rp{nullptr, 1, cs.E, cs.K, 1, 1, false, cs.norm, float(cs.scaling), dids.p, dw.p};
      MoeRowsParams p{};
      p.xf = dy.p;
      p.norm_w = dnw.p;
      p.eps = 1e-6f;
      p.accumulate = true;
      p.ids = dids.p;
      p.weights = dw.p;
      p.T = 1;
      p.K = cs.K;
      p.S = cs.S;
      p.E = cs.E;
      p.H = cs.H;
      p.I = cs.I;
      p.w_gu = dgu.p;
      p.w_down = ddown.p;
      p.act = dact.p;
      p.y = dy.p;
      if (run == 0) {
        gemv1_accumulate(dout.p, dwo.p, cs.H, cs.Ko, dy.p, 0);
        y_mid[run] = dy.get();
        moe_route_small_folded(rp, dy.p, dwf.p, cs.H, 1e-6f, 0);
      } else {
        ASSERT_TRUE(moe_route_in_gu_supported(rp, P));
        gemv1_accumulate_route(dout.p, dwo.p, cs.H, cs.Ko, dy.p, dwf.p, cs.E, dpart.p, 0);
        y_mid[run] = dy.get();
        p.route_part = dpart.p;
        p.n_part = P;
        p.route = rp;
      }
      moe_rows_tma(p, 0);
      y_end[run] = dy.get();
      act[run] = from_bf16(dact.get());
      ids[run] = dids.get();
      wts[run] = dw.get();
    }
    EXPECT_EQ(y_mid[1], y_mid[0]) << "residual after o_proj";
    // the partials against float64: column sums = W' y
    const auto wf = dwf.get();
    const auto part = dpart.get();
    double ss = 0;
    for (float v : y_mid[1]) ss += double(v) * v;
    std::vector<float> logits(size_t(cs.E));
    for (int e = 0; e < cs.E; ++e) {
      double ref = 0, dev = 0, mag = 0;
      for (int h = 0; h < cs.H; ++h) {
        ref += double(wf[size_t(e) * cs.H + h]) * y_mid[1][size_t(h)];
        mag += std::fabs(double(wf[size_t(e) * cs.H + h]) * y_mid[1][size_t(h)]);
      }
      for (int b = 0; b < P; ++b) dev += part[size_t(b) * C + e];
      EXPECT_NEAR(dev, ref, 1e-5 * mag) << "expert " << e;
      logits[size_t(e)] = float(ref / std::sqrt(ss / cs.H + 1e-6));
    }
    EXPECT_EQ(routing_mismatches(rc, logits, 1, ids[1], wts[1], cs.K), 0);
    ASSERT_EQ(ids[1], ids[0]);
    for (int k = 0; k < cs.K; ++k) EXPECT_NEAR(wts[1][size_t(k)], wts[0][size_t(k)], 1e-5 * (1 + wts[0][size_t(k)]));
    EXPECT_EQ(act[1], act[0]);
    EXPECT_LT(rel_err(y_end[1], y_end[0]), 1e-5);
  }
}

}  // namespace
}  // namespace dsv2::test
