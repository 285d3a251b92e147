// Each CUDA kernel against a CPU reference over a sweep of shapes. Outputs are NaN-poisoned before
// every launch, so an element the kernel forgot to write fails the comparison. Skipped without a GPU.
#include <algorithm>
#include <cstring>
#include <map>
#include <numeric>
#include <set>

#include "cuda_test_util.h"
#include "model/config.h"
#include "model/rope.h"
#include "model/router.h"

namespace dsv2::test {
namespace {

using namespace dsv2::cuda;

ModelConfig mla_config(int heads, int kv_lora, int rope, int nope, bool yarn) {
  ModelConfig c;
  c.model_type = "deepseek_v2";
  c.hidden_size = 64;
  c.num_attention_heads = heads;
  c.kv_lora_rank = kv_lora;
  c.qk_rope_head_dim = rope;
  c.qk_nope_head_dim = nope;
  c.v_head_dim = nope;
  c.rope_theta = 10000;
  c.max_position_embeddings = 163840;
  if (yarn) {
    c.rope_scaling.yarn = true;
    c.rope_scaling.factor = 40;
    c.rope_scaling.original_max_position = 4096;
    c.rope_scaling.mscale = 1.0;  // attention factor != 1 exercised
    c.rope_scaling.mscale_all_dim = 0.707;
  }
  return c;
}

TEST(CudaKernels, AddRmsNorm) {
  DSV2_REQUIRE_GPU();
  std::mt19937_64 g(1);
  for (int H : {64, 2048, 5120})
    for (int T : {1, 7, 33})
      for (int mode = 0; mode < 3; ++mode) {  // 0: no add, 1: add, 2: add + row selection
        auto x = randn(size_t(T) * H, g, 2.0f), add = randn(size_t(T) * H, g), w = randn(size_t(H), g);
        std::vector<int32_t> rows;
        for (int t = T - 1; t >= 0; t -= 2) rows.push_back(t);
        const int R = mode == 2 ? int(rows.size()) : T;
        Dev<float> dx(x), dadd(add), dw(w), dyf(size_t(R) * H);
        Dev<int32_t> drows(rows);
        Dev<bf16> dy(size_t(R) * H);
        dy.poison();
        dyf.poison();
        add_rmsnorm(dx.p, mode ? dadd.p : nullptr, mode == 2 ? drows.p : nullptr, R, H, dw.p, 1e-6f, dy.p, dyf.p, 0);
        std::vector<float> ref(size_t(R) * H), xref = x;
        for (int r = 0; r < R; ++r) {
          const int i = mode == 2 ? rows[size_t(r)] : r;
          double ss = 0;
          for (int k = 0; k < H; ++k) {
            if (mode) xref[size_t(i) * H + k] += add[size_t(i) * H + k];
            ss += double(xref[size_t(i) * H + k]) * xref[size_t(i) * H + k];
          }
          const double inv = 1.0 / std::sqrt(ss / H + 1e-6);
          for (int k = 0; k < H; ++k) ref[size_t(r) * H + k] = float(w[size_t(k)] * xref[size_t(i) * H + k] * inv);
        }
        EXPECT_LT(rel_err(dyf.get(), ref), 1e-5) << "H=" << H << " T=" << T << " mode=" << mode;
        EXPECT_LT(rel_err(from_bf16(dy.get()), ref), 4e-3) << "H=" << H << " T=" << T << " mode=" << mode;
        EXPECT_LT(rel_err(dx.get(), xref), 1e-6);
      }
}

// The embedding rows of the tokens as fp32, exactly, for widths with and without 16-byte pieces and
// with more pieces than one round of loads per thread.
TEST(CudaKernels, EmbedRows) {
  DSV2_REQUIRE_GPU();
  std::mt19937_64 g(9);
  for (int H : {100, 2048, 5120, 9000, 16384 + 8})
    for (int T : {1, 3}) {
      const int V = 7;
      const auto e = round_bf16(randn(size_t(V) * H, g));
      const std::vector<int32_t> toks = {5, 0, 6};
      Dev<bf16> de(to_bf16(e));
      Dev<int32_t> dt(toks);
      Dev<float> dx(size_t(T) * H);
      dx.poison();
      embed_rows(de.p, dt.p, T, H, dx.p, 0);
      const auto x = dx.get();
      std::vector<float> ref(size_t(T) * H);
      for (int t = 0; t < T; ++t)
        for (int k = 0; k < H; ++k) ref[size_t(t) * H + k] = e[size_t(toks[size_t(t)]) * H + k];
      EXPECT_EQ(std::memcmp(x.data(), ref.data(), ref.size() * sizeof(float)), 0) << "H=" << H << " T=" << T;
    }
}

TEST(CudaKernels, SiluMul) {
  DSV2_REQUIRE_GPU();
  std::mt19937_64 g(2);
  for (int R : {1, 5, 300})
    for (int I : {16, 1408, 1536}) {
      auto gu = round_bf16(randn(size_t(R) * 2 * I, g, 2.0f));
      Dev<bf16> dgu(to_bf16(gu)), da(size_t(R) * I);
      da.poison();
      silu_mul(dgu.p, R, I, da.p, 0);
      std::vector<float> ref(size_t(R) * I);
      for (int r = 0; r < R; ++r)
        for (int i = 0; i < I; ++i) {
          const double gg = gu[size_t(r) * 2 * I + i], u = gu[size_t(r) * 2 * I + I + i];
          ref[size_t(r) * I + i] = float(gg / (1.0 + std::exp(-gg)) * u);
        }
      EXPECT_LT(rel_err(from_bf16(da.get()), ref), 4e-3) << "R=" << R << " I=" << I;
    }
}

TEST(CudaKernels, RopeAndCacheYarn) {
  DSV2_REQUIRE_GPU();
  std::mt19937_64 g(3);
  struct Shape {
    int heads, kv_lora, rope, nope;
    bool yarn;
  };
  for (Shape s : {Shape{16, 512, 64, 128, true}, Shape{4, 32, 8, 16, true}, Shape{128, 512, 64, 128, true},
                  Shape{4, 32, 8, 16, false}}) {
    const ModelConfig c = mla_config(s.heads, s.kv_lora, s.rope, s.nope, s.yarn);
    const std::vector<int32_t> pos = {0, 1, 17, 4095, 4096, 5000, 32767, 131071};
    const int T = int(pos.size()), qd = s.nope + s.rope, D = s.kv_lora + s.rope;
    const int q_stride = s.heads * qd + 3, kv_stride = D + 5;  // padded strides on purpose
    auto q = round_bf16(randn(size_t(T) * q_stride, g));
    auto kv = round_bf16(randn(size_t(T) * kv_stride, g));
    auto norm = randn(size_t(s.kv_lora), g);
    std::vector<int32_t> slot(static_cast<size_t>(T));
    for (int t = 0; t < T; ++t) slot[size_t(t)] = 3 * t + 1;  // scattered cache rows
    const int rows = 3 * T + 2;
    RopeTable table(c);
    std::vector<float> cossin(size_t(T) * s.rope);
    for (int t = 0; t < T; ++t) {
      float* cs = &cossin[size_t(t) * s.rope];
      table.at(pos[size_t(t)], cs, cs + s.rope / 2);
    }
    Dev<bf16> dq(to_bf16(q)), dkv(to_bf16(kv)), dqfull(size_t(T) * s.heads * D), dcache(size_t(rows) * D);
    Dev<float> dnorm(norm), dcossin(cossin);
    Dev<int32_t> dslot(slot);
    dqfull.poison();
    dcache.poison();
    RopeCacheParams p{};
    p.q = dq.p;
    p.q_stride = q_stride;
    p.kv = dkv.p;
    p.kv_stride = kv_stride;
    p.kv_norm = dnorm.p;
    p.slot = dslot.p;
    p.cossin = dcossin.p;
    p.T = T;
    p.heads = s.heads;
    p.nope = s.nope;
    p.rope = s.rope;
    p.kv_lora = s.kv_lora;
    p.qfull = dqfull.p;
    p.cache = dcache.p;
    rope_and_cache(p, 0);
    const auto qfull = from_bf16(dqfull.get()), cache = from_bf16(dcache.get());
    std::vector<float> got_c, ref_c, got_pe, ref_pe;
    for (int t = 0; t < T; ++t) {
      const float* kvr = &kv[size_t(t) * kv_stride];
      double ss = 0;
      for (int k = 0; k < s.kv_lora; ++k) ss += double(kvr[k]) * kvr[k];
      const double invn = 1.0 / std::sqrt(ss / s.kv_lora + 1e-6);
      const float* crow = &cache[size_t(slot[size_t(t)]) * D];
      for (int k = 0; k < s.kv_lora; ++k) {
        ref_c.push_back(float(norm[size_t(k)] * kvr[k] * invn));
        got_c.push_back(crow[k]);
      }
      std::vector<float> kpe(kvr + s.kv_lora, kvr + D);
      table.apply(kpe.data(), pos[size_t(t)]);
      for (int i = 0; i < s.rope; ++i) {
        ref_pe.push_back(kpe[size_t(i)]);
        got_pe.push_back(crow[s.kv_lora + i]);
      }
      for (int h = 0; h < s.heads; ++h) {
        std::vector<float> qpe(&q[size_t(t) * q_stride + size_t(h) * qd + s.nope],
                               &q[size_t(t) * q_stride + size_t(h) * qd + qd]);
        table.apply(qpe.data(), pos[size_t(t)]);
        for (int i = 0; i < s.rope; ++i) {
          ref_pe.push_back(qpe[size_t(i)]);
          got_pe.push_back(qfull[(size_t(t) * s.heads + h) * D + s.kv_lora + i]);
        }
      }
    }
    EXPECT_LT(rel_err(got_c, ref_c), 4e-3) << "heads=" << s.heads;
    EXPECT_LT(rel_err(got_pe, ref_pe), 4e-3) << "heads=" << s.heads << " yarn=" << s.yarn;
  }
}

TEST(CudaKernels, MoeRouter) {
  DSV2_REQUIRE_GPU();
  std::mt19937_64 g(4);
  for (RouterCase cs : {RouterCase{64, 6, 1, 1, false, false, 1.0}, RouterCase{160, 6, 8, 3, true, false, 16.0},
                        RouterCase{8, 3, 1, 1, false, true, 1.0}, RouterCase{16, 3, 4, 2, true, false, 2.5}}) {
    const int T = 97;
    std::vector<float> all_logits(size_t(T) * cs.E);
    for (auto& v : all_logits) v = std::normal_distribution<float>(0.0f, 2.0f)(g);
    Dev<float> dlog(all_logits), dwts(size_t(T) * cs.K);
    Dev<int32_t> dids(size_t(T) * cs.K);
    dwts.poison();
    dids.poison();
    RouterParams p{dlog.p, T, cs.E, cs.K, cs.n_group, cs.topk_group, cs.group, cs.norm, float(cs.scaling), dids.p,
                   dwts.p};
    moe_route(p, 0);
    // the softmax's exp and sum may round differently from the CPU's and flip a near-tie, rarely
    EXPECT_LE(routing_mismatches(cs, all_logits, T, dids.get(), dwts.get(), cs.K), 2)
        << "E=" << cs.E << " K=" << cs.K;
  }
}

TEST(CudaKernels, MoeDispatchGroupedGemmCombine) {
  DSV2_REQUIRE_GPU();
  std::mt19937_64 g(5);
  struct Case {
    int T, E, K, H, N, tile_m;
  };
  // N x H = expert matrix; the second product maps N back to H for the combine.
  for (Case cs : {Case{1, 64, 6, 2048, 2816, 32}, Case{7, 8, 3, 64, 32, 128}, Case{300, 64, 6, 256, 384, 128},
                  Case{300, 64, 6, 256, 384, 32}, Case{33, 16, 2, 36, 24, 32}, Case{130, 4, 2, 128, 200, 32},
                  Case{130, 4, 2, 128, 200, 128}, Case{8, 64, 6, 2048, 2816, 32}, Case{5, 16, 3, 512, 1408, 128},
                  Case{700, 8, 2, 256, 1408, 128}, Case{64, 64, 6, 2048, 1408, 32}, Case{90, 4, 3, 72, 136, 128},
                  // more rows than the one-block dispatch takes
                  Case{1100, 8, 2, 64, 32, 128}, Case{1030, 8, 2, 64, 48, 32}}) {
    std::vector<int32_t> ids(size_t(cs.T) * cs.K);
    std::vector<float> wts(size_t(cs.T) * cs.K);
    for (int t = 0; t < cs.T; ++t) {
      std::vector<int32_t> perm(size_t(cs.E));
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), g);
      // skew towards low experts so that some get more than one 64-row tile
      if (t % 3 == 0) std::sort(perm.begin(), perm.begin() + cs.K);
      for (int k = 0; k < cs.K; ++k) {
        ids[size_t(t) * cs.K + k] = perm[size_t(k)];
        wts[size_t(t) * cs.K + k] = std::uniform_real_distribution<float>(0.1f, 1.0f)(g);
      }
    }
    auto x = round_bf16(randn(size_t(cs.T) * cs.H, g));
    auto w1 = round_bf16(randw(size_t(cs.E) * cs.N * cs.H, g, 0.05f));  // [E, N, H]
    auto w2 = round_bf16(randw(size_t(cs.E) * cs.H * cs.N, g, 0.05f));  // [E, H, N]
    auto y0 = randn(size_t(cs.T) * cs.H, g);
    const int R = cs.T * cs.K, max_tiles = moe_max_tiles(R, cs.E, cs.tile_m);
    Dev<int32_t> dids(ids), counts(size_t(cs.E)), offsets(size_t(cs.E) + 1), tiles(size_t(max_tiles) * 3 + 1),
        slot(static_cast<size_t>(R)), rowtok(static_cast<size_t>(R));
    Dev<float> dwts(wts), dy(y0), dyp(size_t(R) * cs.H);
    Dev<bf16> dx(to_bf16(x)), dxp(size_t(R) * cs.H), dw1(to_bf16(w1)), dw2(to_bf16(w2)), dh(size_t(R) * cs.N);
    dxp.poison();
    dh.poison();
    dyp.poison();
    MoeDispatch d{counts.p, offsets.p, tiles.p, slot.p, rowtok.p, max_tiles, cs.tile_m};
    moe_dispatch(dids.p, cs.T, cs.K, cs.E, dx.p, cs.H, d, dxp.p, 0);
    moe_gemm(dxp.p, dw1.p, tiles.p, max_tiles, cs.tile_m, cs.N, cs.H, dh.p, false, 0);
    moe_gemm(dh.p, dw2.p, tiles.p, max_tiles, cs.tile_m, cs.H, cs.N, dyp.p, true, 0);
    {
      // the combine summed by add_rmsnorm gives the bits of moe_combine into a zeroed delta + add_rmsnorm
      auto xr = randn(size_t(cs.T) * cs.H, g);
      auto nw = randn(size_t(cs.H), g);
      std::vector<float> zeros(size_t(cs.T) * cs.H, 0.0f);
      Dev<float> dx1(xr), dx2(xr), ddelta(zeros), dnw(nw);
      Dev<bf16> dn1(size_t(cs.T) * cs.H), dn2(size_t(cs.T) * cs.H);
      moe_combine(dyp.p, slot.p, dwts.p, cs.T, cs.K, cs.H, ddelta.p, 0);
      add_rmsnorm(dx1.p, ddelta.p, nullptr, cs.T, cs.H, dnw.p, 1e-6f, dn1.p, nullptr, 0);
      add_rmsnorm(dx2.p, nullptr, nullptr, cs.T, cs.H, dnw.p, 1e-6f, dn2.p, nullptr, 0,
                  MoeCombine{dyp.p, slot.p, dwts.p, cs.K});
      EXPECT_EQ(dx2.get(), dx1.get()) << "combine in add_rmsnorm, T=" << cs.T << " H=" << cs.H;
      EXPECT_EQ(from_bf16(dn2.get()), from_bf16(dn1.get())) << "combine in add_rmsnorm, T=" << cs.T;
    }
    moe_combine(dyp.p, slot.p, dwts.p, cs.T, cs.K, cs.H, dy.p, 0);
    const auto slots = slot.get();
    const auto h = from_bf16(dh.get());
    // slots form a permutation grouped by expert
    std::set<int32_t> seen(slots.begin(), slots.end());
    ASSERT_EQ(int(seen.size()), R);
    ASSERT_EQ(*seen.begin(), 0);
    ASSERT_EQ(*seen.rbegin(), R - 1);
    std::vector<float> href, hgot, yref = y0;
    for (int t = 0; t < cs.T; ++t)
      for (int k = 0; k < cs.K; ++k) {
        const int e = ids[size_t(t) * cs.K + k], s = slots[size_t(t) * cs.K + k];
        std::vector<float> hh(size_t(cs.N));
        for (int n = 0; n < cs.N; ++n) {
          double acc = 0;
          for (int j = 0; j < cs.H; ++j)
            acc += double(x[size_t(t) * cs.H + j]) * w1[(size_t(e) * cs.N + n) * cs.H + j];
          href.push_back(float(acc));
          hgot.push_back(h[size_t(s) * cs.N + n]);
          hh[size_t(n)] = bf16_to_f32(f32_to_bf16(float(acc)));
        }
        for (int j = 0; j < cs.H; ++j) {
          double acc = 0;
          for (int n = 0; n < cs.N; ++n) acc += double(hh[size_t(n)]) * w2[(size_t(e) * cs.H + j) * cs.N + n];
          yref[size_t(t) * cs.H + j] += float(wts[size_t(t) * cs.K + k] * acc);
        }
      }
    EXPECT_LT(rel_err(hgot, href), 4e-3) << "tile " << cs.tile_m << " T=" << cs.T << " E=" << cs.E << " H=" << cs.H << " N=" << cs.N;
    EXPECT_LT(rel_err(dy.get(), yref), 1e-2) << "T=" << cs.T << " E=" << cs.E << " H=" << cs.H << " N=" << cs.N;
    // row_token names each permuted row's token
    const auto toks = rowtok.get();
    for (int t = 0; t < cs.T; ++t)
      for (int k = 0; k < cs.K; ++k) EXPECT_EQ(toks[size_t(slots[size_t(t) * cs.K + k])], t);
    // without the copy: the first product gathers x rows through row_token, with the same result
    Dev<bf16> dh2(size_t(R) * cs.N);
    dh2.poison();
    moe_dispatch(dids.p, cs.T, cs.K, cs.E, dx.p, cs.H, d, nullptr, 0);
    moe_gemm(dx.p, dw1.p, tiles.p, max_tiles, cs.tile_m, cs.N, cs.H, dh2.p, false, 0, rowtok.p);
    const auto slots2 = slot.get();
    const auto h2 = from_bf16(dh2.get());
    std::vector<float> hgot2;
    for (int t = 0; t < cs.T; ++t)
      for (int k = 0; k < cs.K; ++k)
        for (int n = 0; n < cs.N; ++n) hgot2.push_back(h2[size_t(slots2[size_t(t) * cs.K + k]) * cs.N + n]);
    EXPECT_EQ(hgot2, hgot) << "gathered rows, tile " << cs.tile_m << " T=" << cs.T << " H=" << cs.H;
    // tiles along the grid's x: the same tiles, the same bits
    Dev<bf16> dh3(size_t(R) * cs.N);
    dh3.poison();
    moe_gemm(dx.p, dw1.p, tiles.p, max_tiles, cs.tile_m, cs.N, cs.H, dh3.p, false, 0, rowtok.p, true);
    const auto h3 = from_bf16(dh3.get());
    EXPECT_EQ(h3, h2) << "tile-major grid, tile " << cs.tile_m << " T=" << cs.T << " H=" << cs.H;
    if (cs.N % 2 == 0 && moe_swiglu_supported(cs.N / 2, cs.H)) {
      // SiLU-and-multiply in the product's epilogue: the bits of the product followed by silu_mul
      const int I = cs.N / 2;
      Dev<bf16> dact(size_t(R) * I), dact2(size_t(R) * I), dact3(size_t(R) * I);
      dact.poison();
      dact2.poison();
      dact3.poison();
      silu_mul(dh2.p, R, I, dact.p, 0);
      moe_gemm_swiglu(dx.p, dw1.p, tiles.p, max_tiles, cs.tile_m, I, cs.H, dact2.p, 0, rowtok.p);
      moe_gemm_swiglu(dx.p, dw1.p, tiles.p, max_tiles, cs.tile_m, I, cs.H, dact3.p, 0, rowtok.p, true);
      const auto a1 = from_bf16(dact.get());
      EXPECT_EQ(from_bf16(dact2.get()), a1) << "SiLU epilogue, tile " << cs.tile_m << " T=" << cs.T << " N=" << cs.N;
      EXPECT_EQ(from_bf16(dact3.get()), a1) << "SiLU epilogue, tile-major grid, T=" << cs.T << " N=" << cs.N;
    }
  }
}

TEST(CudaKernels, DenseGemvRows) {
  DSV2_REQUIRE_GPU();
  std::mt19937_64 g(8);
  for (int M = 1; M <= kGemvRows; ++M)
    for (auto [N, K] : std::vector<std::pair<int, int>>{{3648, 2048}, {2048, 2048}, {64, 1408}, {37, 40}, {102400, 64}}) {
      const int ldx = K + 8, ldy = N + 3;
      auto x = round_bf16(randn(size_t(M) * ldx, g));
      auto w = round_bf16(randw(size_t(N) * K, g, 0.05f));
      Dev<bf16> dx(to_bf16(x)), dw(to_bf16(w)), dyb(size_t(M) * ldy);
      Dev<float> dyf(size_t(M) * ldy);
      dyb.poison();
      dyf.poison();
      gemv_rows(dx.p, ldx, M, dw.p, N, K, dyf.p, true, ldy, 0);
      gemv_rows(dx.p, ldx, M, dw.p, N, K, dyb.p, false, ldy, 0);
      const auto yf = dyf.get();
      const auto yb = from_bf16(dyb.get());
      std::vector<float> ref, gf, gb;
      for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) {
          double acc = 0;
          for (int k = 0; k < K; ++k) acc += double(x[size_t(m) * ldx + k]) * w[size_t(n) * K + k];
          ref.push_back(float(acc));
          gf.push_back(yf[size_t(m) * ldy + n]);
          gb.push_back(yb[size_t(m) * ldy + n]);
        }
      EXPECT_LT(rel_err(gf, ref), 1e-5) << "M=" << M << " N=" << N << " K=" << K;
      EXPECT_LT(rel_err(gb, ref), 4e-3) << "M=" << M << " N=" << N << " K=" << K;
    }
}

// The one-token products of batch-1 decode: W_UK absorbed into the queries (absorb_q1) and W_UV
// applied per head (gemv1 with heads), both on kv_b_proj's [heads * (nope + v), C] layout.
TEST(CudaKernels, OneTokenAbsorbAndHeadProducts) {
  DSV2_REQUIRE_GPU();
  std::mt19937_64 g(12);
  struct Case {
    int heads, nope, vdim, C;
  };
  for (Case cs : {Case{16, 128, 128, 512}, Case{3, 40, 24, 64}, Case{2, 160, 6, 128}}) {
    const int qd = cs.nope + 64, D = cs.C + 64, rows = cs.nope + cs.vdim;
    auto q = round_bf16(randn(size_t(cs.heads) * qd, g));
    auto w = round_bf16(randn(size_t(cs.heads) * rows * cs.C, g, 0.05f));
    auto lat = round_bf16(randn(size_t(cs.heads) * cs.C, g));
    Dev<bf16> dq(to_bf16(q)), dw(to_bf16(w)), dlat(to_bf16(lat)), dout(size_t(cs.heads) * D),
        dov(size_t(cs.heads) * cs.vdim);
    Dev<float> dovf(size_t(cs.heads) * cs.vdim);
    dout.poison();
    dov.poison();
    absorb_q1(dq.p, qd, dw.p, cs.heads, cs.nope, rows, cs.C, dout.p, D, 0);
    {
      // with the rope/cache row in the same launch: the same bits as rope_and_cache
      std::vector<float> cossin(64);  // position 12345, attention factor 1.25
      for (int i = 0; i < 32; ++i) {
        const double a = 12345.0 * std::pow(10000.0, -2.0 * i / 64);
        cossin[size_t(i)] = float(std::cos(a) * 1.25);
        cossin[size_t(32 + i)] = float(std::sin(a) * 1.25);
      }
      auto kv = round_bf16(randn(size_t(cs.C) + 64, g));
      std::vector<float> kvn(static_cast<size_t>(cs.C));
      for (float& v : kvn) v = std::uniform_real_distribution<float>(0.5f, 1.5f)(g);
      Dev<float> dkvn(kvn), dcossin(cossin);
      Dev<bf16> dkv(to_bf16(kv)), c1(size_t(8) * D), c2(size_t(8) * D), q1(size_t(cs.heads) * D), q2(size_t(cs.heads) * D);
      Dev<int32_t> dslot(std::vector<int32_t>{3});
      for (auto* b : {&c1, &c2, &q1, &q2}) b->poison();
      RopeCacheParams rp{.q = dq.p, .q_stride = cs.heads * qd, .kv = dkv.p, .kv_stride = cs.C + 64,
                         .kv_norm = dkvn.p, .slot = dslot.p, .cossin = dcossin.p, .T = 1, .heads = cs.heads,
                         .nope = cs.nope, .rope = 64, .kv_lora = cs.C, .qfull = q1.p, .cache = c1.p};
      rope_and_cache(rp, 0);
      rp.qfull = q2.p;
      rp.cache = c2.p;
      absorb_q1(dq.p, qd, dw.p, cs.heads, cs.nope, rows, cs.C, q2.p, D, 0, &rp);
      const auto r1 = from_bf16(c1.get()), r2 = from_bf16(c2.get()), a1 = from_bf16(q1.get()),
                 a2 = from_bf16(q2.get()), a0 = from_bf16(dout.get());
      for (int i = 0; i < D; ++i) ASSERT_EQ(r1[size_t(3) * D + i], r2[size_t(3) * D + i]) << "cache column " << i;
      for (int h = 0; h < cs.heads; ++h)
        for (int i = cs.C; i < D; ++i) ASSERT_EQ(a1[size_t(h) * D + i], a2[size_t(h) * D + i]) << "q_pe head " << h;
      for (int h = 0; h < cs.heads; ++h)
        for (int c = 0; c < cs.C; ++c)
          ASSERT_EQ(a2[size_t(h) * D + c], a0[size_t(h) * D + c]) << "absorbed head " << h;
    }
    gemv1(dlat.p, dw.p + size_t(cs.nope) * cs.C, cs.heads * cs.vdim, cs.C, dov.p, false, 0, cs.vdim, rows, cs.C);
    gemv1(dlat.p, dw.p + size_t(cs.nope) * cs.C, cs.heads * cs.vdim, cs.C, dovf.p, true, 0, cs.vdim, rows, cs.C);
    const auto out = from_bf16(dout.get()), ov = from_bf16(dov.get());
    const auto ovf = dovf.get();
    std::vector<float> ref_a, got_a, ref_v, got_v, got_vf;
    for (int h = 0; h < cs.heads; ++h) {
      for (int c = 0; c < cs.C; ++c) {
        double acc = 0;
        for (int d = 0; d < cs.nope; ++d)
          acc += double(q[size_t(h) * qd + d]) * w[(size_t(h) * rows + d) * cs.C + c];
        ref_a.push_back(float(acc));
        got_a.push_back(out[size_t(h) * D + c]);
      }
      for (int v = 0; v < cs.vdim; ++v) {
        double acc = 0;
        for (int c = 0; c < cs.C; ++c)
          acc += double(w[(size_t(h) * rows + cs.nope + v) * cs.C + c]) * lat[size_t(h) * cs.C + c];
        ref_v.push_back(float(acc));
        got_v.push_back(ov[size_t(h) * cs.vdim + v]);
        got_vf.push_back(ovf[size_t(h) * cs.vdim + v]);
      }
    }
    EXPECT_LT(rel_err(got_a, ref_a), 4e-3) << "absorb heads=" << cs.heads << " nope=" << cs.nope;
    EXPECT_LT(rel_err(got_v, ref_v), 4e-3) << "W_UV heads=" << cs.heads << " v=" << cs.vdim;
    EXPECT_LT(rel_err(got_vf, ref_v), 1e-5) << "W_UV f32 heads=" << cs.heads << " v=" << cs.vdim;
  }
}

// The one-token q/kv product with the W_UK absorb and the q_pe rope inside (gemv1_norm_absorb) and the
// attention that normalizes and ropes the new kv row itself (AttnParams::new_kv), against the launches
// they replace: gemv1_norm, absorb_q1 with the rope/cache row, the attention over the written cache.
TEST(CudaKernels, OneTokenQkvAbsorbAndNewKvRow) {
  DSV2_REQUIRE_GPU();
  std::mt19937_64 g(15);
  struct Case {
    int heads, nope, rope, vdim, K;
  };
  for (Case cs : {Case{16, 128, 64, 128, 2048}, Case{3, 32, 16, 24, 256}, Case{128, 128, 64, 128, 512}}) {
    const int kvl = 512, qd = cs.nope + cs.rope, D = kvl + cs.rope, rows = cs.nope + cs.vdim;
    const int N = cs.heads * qd + D, half = cs.rope / 2;
    const auto xf = randn(size_t(cs.K), g, 3.0f);
    std::vector<float> nw(static_cast<size_t>(cs.K)), kvn(static_cast<size_t>(kvl)), cossin(size_t(cs.rope));
    for (float& v : nw) v = std::uniform_real_distribution<float>(0.5f, 1.5f)(g);
    for (float& v : kvn) v = std::uniform_real_distribution<float>(0.5f, 1.5f)(g);
    for (int i = 0; i < half; ++i) {  // position 100, attention factor 1.25
      const double a = 100.0 * std::pow(10000.0, -2.0 * i / cs.rope);
      cossin[size_t(i)] = float(std::cos(a) * 1.25);
      cossin[size_t(half + i)] = float(std::sin(a) * 1.25);
    }
    const auto w = round_bf16(randn(size_t(N) * cs.K, g, 0.05f));
    const auto uk = round_bf16(randn(size_t(cs.heads) * rows * kvl, g, 0.05f));
    Dev<float> dxf(xf), dnw(nw), dkvn(kvn), dcossin(cossin);
    Dev<bf16> dw(to_bf16(w)), duk(to_bf16(uk)), y1(static_cast<size_t>(N)), y2(static_cast<size_t>(N)),
        q1(size_t(cs.heads) * D), q2(size_t(cs.heads) * D);
    // a context of 100 cached positions in scattered blocks; the new row's slot holds stale values
    const int len = 100;
    std::vector<int32_t> blocks{2, 0};
    const int32_t slot = blocks[len / 64] * 64 + len % 64;
    const auto cache = round_bf16(randn(size_t(3) * 64 * D, g));
    Dev<bf16> c1(to_bf16(cache)), c2(to_bf16(cache));
    Dev<int32_t> dslot(std::vector<int32_t>{slot}), dblocks(blocks);
    for (auto* b : {&y1, &y2, &q1, &q2}) b->poison();
    gemv1_norm(dxf.p, dnw.p, 1e-6f, dw.p, N, cs.K, y1.p, 0);
    RopeCacheParams rp{.q = y1.p, .q_stride = N, .kv = y1.p + cs.heads * qd, .kv_stride = N, .kv_norm = dkvn.p,
                       .slot = dslot.p, .cossin = dcossin.p, .T = 1, .heads = cs.heads, .nope = cs.nope,
                       .rope = cs.rope, .kv_lora = kvl, .qfull = q1.p, .cache = c1.p};
    absorb_q1(y1.p, qd, duk.p, cs.heads, cs.nope, rows, kvl, q1.p, D, 0, &rp);
    QkvAbsorbParams qa{duk.p, rows, cs.heads, cs.nope, cs.rope, kvl, q2.p, dcossin.p};
    ASSERT_TRUE(gemv1_norm_absorb_supported(cs.K, qa));
    gemv1_norm_absorb(dxf.p, dnw.p, 1e-6f, dw.p, cs.K, y2.p, qa, 0);
    const auto a1 = from_bf16(y1.get()), a2 = from_bf16(y2.get()), b1 = from_bf16(q1.get()), b2 = from_bf16(q2.get());
    for (int n = cs.heads * qd; n < N; ++n) ASSERT_EQ(a2[size_t(n)], a1[size_t(n)]) << "kv row output " << n;
    std::vector<float> got, ref, was;
    for (int h = 0; h < cs.heads; ++h) {
      for (int i = kvl; i < D; ++i) ASSERT_EQ(b2[size_t(h) * D + i], b1[size_t(h) * D + i]) << "q_pe head " << h;
      for (int c = 0; c < kvl; ++c) {
        double acc = 0;
        for (int d = 0; d < cs.nope; ++d)
          acc += double(a1[size_t(h) * qd + d]) * uk[(size_t(h) * rows + d) * kvl + c];
        ref.push_back(float(acc));
        got.push_back(b2[size_t(h) * D + c]);
        was.push_back(b1[size_t(h) * D + c]);
      }
    }
    EXPECT_LT(rel_err(got, ref), 4e-3) << "absorb heads=" << cs.heads << " nope=" << cs.nope;
    EXPECT_LT(rel_err(got, was), 4e-3) << "absorb against absorb_q1, heads=" << cs.heads;

    // The attention with the raw row: the same outputs and cache row as over the row rope_and_cache
    // writes, for a new position in every stage of the ring and in a tile loaded later (contexts 0 and
    // 100 over 1, 3 and 4 splits).
    std::vector<int32_t> items;
    for (int r = 0; r < cs.heads; r += kAttnRows) items.insert(items.end(), {0, r, 0, 0});
    const int n_items = int(items.size() / 4);
    Dev<int32_t> ditems(items);
    Dev<bf16> o1(size_t(cs.heads) * kvl), o2(size_t(cs.heads) * kvl), qpe(size_t(cs.heads) * D);
    for (int ctx : {0, len}) {
      const int32_t s0 = blocks[size_t(ctx / 64)] * 64 + ctx % 64;
      Dev<int32_t> dslot0(std::vector<int32_t>{s0}), dchunks0(std::vector<int32_t>{0, 1, ctx + 1, 0});
      c1.put(to_bf16(cache));
      rp.slot = dslot0.p;
      rp.cache = c1.p;
      rp.qfull = qpe.p;
      rope_and_cache(rp, 0);
      for (int S : {1, 3, 4}) {
        Dev<float> part_o(size_t(n_items) * S * kAttnRows * kvl), part_ml(size_t(n_items) * S * kAttnRows * 2);
        AttnParams p{q1.p, c1.p, ditems.p, dchunks0.p, dblocks.p, n_items, S, cs.heads, 0.1147f, o1.p, part_o.p,
                     part_ml.p};
        o1.poison();
        mla_attention(p, kvl, cs.rope, 0);
        c2.put(to_bf16(cache));
        p.cache = c2.p;
        p.out = o2.p;
        p.new_kv = y2.p + cs.heads * qd;
        p.new_kv_norm = dkvn.p;
        p.new_cossin = dcossin.p;
        p.new_slot = dslot0.p;
        p.new_cache = c2.p;
        o2.poison();
        mla_attention(p, kvl, cs.rope, 0);
        const auto r1 = from_bf16(c1.get()), r2 = from_bf16(c2.get());
        const std::string what = "heads=" + std::to_string(cs.heads) + " context=" + std::to_string(ctx) +
                                 " splits=" + std::to_string(S);
        std::vector<float> row1(r1.begin() + long(s0) * D, r1.begin() + long(s0 + 1) * D),
            row2(r2.begin() + long(s0) * D, r2.begin() + long(s0 + 1) * D);
        EXPECT_LT(rel_err(row2, row1), 2e-3) << "cache row, " << what;
        for (int i = kvl; i < D; ++i)
          ASSERT_EQ(row2[size_t(i)], row1[size_t(i)]) << "k_pe column " << i << ", " << what;
        EXPECT_LT(rel_err(from_bf16(o2.get()), from_bf16(o1.get())), 2e-3) << what;
        std::vector<float> rest1(r1), rest2(r2);  // every other row untouched
        for (int i = 0; i < D; ++i) rest1[size_t(s0) * D + size_t(i)] = rest2[size_t(s0) * D + size_t(i)] = 0.f;
        EXPECT_EQ(rest2, rest1) << what;
      }
    }
  }
}

// The fused one-token forms: a product of the RMS-normalized residual row (gemv1_norm) and a product
// added into an fp32 row (gemv1_accumulate, the residual add of o_proj and the FFN).
TEST(CudaKernels, OneTokenNormAndAccumulate) {
  DSV2_REQUIRE_GPU();
  std::mt19937_64 g(13);
  for (auto [N, K] : std::vector<std::pair<int, int>>{{3648, 2048}, {37, 512}, {64, 40}}) {
    ASSERT_TRUE(gemv1_norm_supported(K));
    const auto xf = randn(size_t(K), g, 3.0f);
    std::vector<float> nw(static_cast<size_t>(K)), y0(static_cast<size_t>(N));
    for (float& v : nw) v = std::uniform_real_distribution<float>(0.5f, 1.5f)(g);
    for (float& v : y0) v = std::uniform_real_distribution<float>(-1.0f, 1.0f)(g);
    auto w = round_bf16(randn(size_t(N) * K, g, 0.05f));
    double ss = 0;
    for (float v : xf) ss += double(v) * v;
    const float inv = float(1.0 / std::sqrt(ss / K + 1e-6));
    std::vector<float> xn(static_cast<size_t>(K));
    for (int k = 0; k < K; ++k) xn[size_t(k)] = bf16_to_f32(f32_to_bf16(nw[size_t(k)] * (xf[size_t(k)] * inv)));
    Dev<float> dxf(xf), dnw(nw), dy(y0);
    Dev<bf16> dw(to_bf16(w)), dxn(to_bf16(xn)), dyn(static_cast<size_t>(N));
    dyn.poison();
    gemv1_norm(dxf.p, dnw.p, 1e-6f, dw.p, N, K, dyn.p, 0);
    gemv1_accumulate(dxn.p, dw.p, N, K, dy.p, 0);
    const auto yn = from_bf16(dyn.get()), ya = dy.get();
    std::vector<float> ref(static_cast<size_t>(N)), refa(static_cast<size_t>(N));
    for (int n = 0; n < N; ++n) {
      double acc = 0;
      for (int k = 0; k < K; ++k) acc += double(xn[size_t(k)]) * w[size_t(n) * K + k];
      ref[size_t(n)] = float(acc);
      refa[size_t(n)] = float(y0[size_t(n)] + acc);
    }
    EXPECT_LT(rel_err(yn, ref), 4e-3) << "normalized N=" << N << " K=" << K;
    EXPECT_LT(rel_err(ya, refa), 1e-5) << "accumulated N=" << N << " K=" << K;
  }
}

// Attention over a paged cache: sequences with scattered block tables, mixing a long prefill
// chunk (through the absorbed path), decode steps and chunks appended to existing contexts, all in
// one launch. The CPU reference is computed once per case; the kernel runs once per split count.
struct AttnCase {
  int heads, kv_lora, rope;
  std::vector<std::pair<int, int>> chunks;  // (tokens already cached, new tokens)
};

void run_attention_case(const AttnCase& ac, const std::vector<int>& split_counts, std::mt19937_64& g) {
  const int D = ac.kv_lora + ac.rope, heads = ac.heads;
  int n_blocks = 0, T = 0;
  for (auto [len, n] : ac.chunks) {
    n_blocks += (len + n + 63) / 64;
    T += n;
  }
  n_blocks += 3;
  std::vector<int32_t> perm(static_cast<size_t>(n_blocks));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), g);
  auto cache = round_bf16(randn(size_t(n_blocks) * 64 * D, g));
  auto q = round_bf16(randn(size_t(T) * heads * D, g, 0.2f));
  std::vector<int32_t> chunks, items, blocks;
  int tok = 0, used = 0;
  for (size_t ci = 0; ci < ac.chunks.size(); ++ci) {
    auto [len, n] = ac.chunks[ci];
    const int nb = (len + n + 63) / 64;
    chunks.insert(chunks.end(), {tok, n, len + n, int32_t(blocks.size())});
    for (int b = 0; b < nb; ++b) blocks.push_back(perm[size_t(used++)]);
    for (int row = 0; row < n * heads; row += kAttnRows) items.insert(items.end(), {int32_t(ci), row, 0, 0});
    tok += n;
  }
  const int n_items = int(items.size() / 4);

  std::vector<float> ref(size_t(T) * heads * ac.kv_lora);
  tok = 0;
  for (size_t ci = 0; ci < ac.chunks.size(); ++ci) {
    auto [len, n] = ac.chunks[ci];
    const int32_t* bt = &blocks[size_t(chunks[ci * 4 + 3])];
    for (int i = 0; i < n; ++i) {
      const int pos = len + i;
      for (int h = 0; h < heads; ++h) {
        const float* qr = &q[(size_t(tok + i) * heads + h) * D];
        std::vector<double> s(size_t(pos + 1)), acc(size_t(ac.kv_lora), 0.0);
        double mx = -1e300;
        for (int j = 0; j <= pos; ++j) {
          const float* kr = &cache[(size_t(bt[j / 64]) * 64 + j % 64) * D];
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += double(qr[d]) * kr[d];
          s[size_t(j)] = dot * 0.1147;
          mx = std::max(mx, s[size_t(j)]);
        }
        double sum = 0;
        for (int j = 0; j <= pos; ++j) {
          const double w = std::exp(s[size_t(j)] - mx);
          sum += w;
          const float* vr = &cache[(size_t(bt[j / 64]) * 64 + j % 64) * D];
          for (int d = 0; d < ac.kv_lora; ++d) acc[size_t(d)] += w * vr[d];
        }
        float* o = &ref[(size_t(tok + i) * heads + h) * ac.kv_lora];
        for (int d = 0; d < ac.kv_lora; ++d) o[d] = float(acc[size_t(d)] / sum);
      }
    }
    tok += n;
  }

  Dev<bf16> dq(to_bf16(q)), dcache(to_bf16(cache)), dout(size_t(T) * heads * ac.kv_lora);
  Dev<int32_t> dchunks(chunks), ditems(items), dblocks(blocks);
  for (int n_splits : split_counts) {
    Dev<float> part_o(size_t(n_items) * n_splits * kAttnRows * ac.kv_lora),
        part_ml(size_t(n_items) * n_splits * kAttnRows * 2);
    dout.poison();
    part_o.poison();
    part_ml.poison();
    AttnParams p{dq.p, dcache.p, ditems.p, dchunks.p, dblocks.p, n_items, n_splits, heads, 0.1147f, dout.p,
                 part_o.p, part_ml.p};
    mla_attention(p, ac.kv_lora, ac.rope, 0);
    const auto out = from_bf16(dout.get());
    EXPECT_LT(rel_err(out, ref), 1e-2) << "heads=" << heads << " D=" << D << " splits=" << n_splits;
    if (mla_attention_cluster_merge_supported(p, ac.kv_lora)) {  // the splits merged in a cluster: same bits
      p.cluster_merge = true;
      dout.poison();
      part_o.poison();
      part_ml.poison();
      mla_attention(p, ac.kv_lora, ac.rope, 0);
      EXPECT_EQ(from_bf16(dout.get()), out) << "cluster merge, heads=" << heads << " D=" << D << " splits=" << n_splits;
    }
    // Every chunk on its own too, so that a short chunk cannot hide behind the long ones.
    tok = 0;
    for (size_t ci = 0; ci < ac.chunks.size(); ++ci) {
      const size_t b = size_t(tok) * heads * ac.kv_lora, e = b + size_t(ac.chunks[ci].second) * heads * ac.kv_lora;
      const std::vector<float> o(out.begin() + long(b), out.begin() + long(e)), r(ref.begin() + long(b), ref.begin() + long(e));
      EXPECT_LT(rel_err(o, r), 1e-2) << "heads=" << heads << " D=" << D << " splits=" << n_splits << " chunk (cached "
                                     << ac.chunks[ci].first << ", new " << ac.chunks[ci].second << ")";
      tok += ac.chunks[ci].second;
    }
  }
}

TEST(CudaKernels, MlaAttentionPagedCausal) {
  DSV2_REQUIRE_GPU();
  std::mt19937_64 g(6);
  // Contexts (cached + new) cover 1, 63, 64, 65, 300 and ~5000; new tokens 1..3 per chunk and a
  // 70-token prefill chunk; heads 16 (V2-Lite), 128 (V2) and odd counts whose items straddle tokens.
  const std::vector<AttnCase> cases = {
      {16, 512, 64, {{0, 70}, {0, 1}, {62, 1}, {63, 1}, {64, 1}, {298, 2}, {61, 3}, {4997, 3}, {5000, 1}}},
      {128, 512, 64, {{0, 1}, {62, 1}, {63, 2}, {299, 1}, {4999, 1}, {0, 3}}},
      {5, 512, 64, {{0, 70}, {10, 3}, {63, 2}, {4999, 1}, {0, 1}, {297, 3}}},
      {4, 32, 8, {{0, 37}, {5, 1}, {129, 9}}},
      {3, 128, 64, {{0, 20}, {100, 2}}},  // narrower latent: value columns padded to the kernel's 512
      {5, 20, 6, {{0, 10}, {70, 3}}},     // D = 26: rows only 4-byte aligned
      {2, 30, 5, {{0, 9}, {64, 1}}},      // D = 35: odd row width, plain loads
  };
  for (const auto& ac : cases) run_attention_case(ac, {1, 4, 8, 16, 64}, g);
}

// One token over few splits: gemv1_combine (the W_UV product merging the attention splits itself)
// gives the same bits as mla_attention's own combine followed by gemv1, with or without a range for
// its blocks to move into the L2.
TEST(CudaKernels, OneTokenUvProductMergesSplits) {
  DSV2_REQUIRE_GPU();
  std::mt19937_64 g(14);
  const int kvl = 512, rope = 64, D = kvl + rope, nope = 128, vdim = 128, rows = nope + vdim;
  for (int heads : {16, 128}) {
    auto w = round_bf16(randn(size_t(heads) * rows * kvl, g, 0.05f));
    auto q = round_bf16(randn(size_t(heads) * D, g, 0.2f));
    Dev<bf16> dw(to_bf16(w)), dq(to_bf16(q)), dlat(size_t(heads) * kvl), y1(size_t(heads) * vdim),
        y2(size_t(heads) * vdim);
    std::vector<int32_t> items;
    for (int r = 0; r < heads; r += kAttnRows) items.insert(items.end(), {0, r, 0, 0});
    const int n_items = int(items.size() / 4);
    Dev<int32_t> ditems(items);
    for (int len : {40, 300, 4999}) {
      const int nb = (len + 1 + 63) / 64;
      std::vector<int32_t> blocks(static_cast<size_t>(nb));
      std::iota(blocks.begin(), blocks.end(), 0);
      std::shuffle(blocks.begin(), blocks.end(), g);
      Dev<bf16> dcache(to_bf16(round_bf16(randn(size_t(nb) * 64 * D, g))));
      Dev<int32_t> dchunks(std::vector<int32_t>{0, 1, len + 1, 0}), dblocks(blocks);
      for (int S : {2, 3, 8, 16}) {
        Dev<float> part_o(size_t(n_items) * S * kAttnRows * kvl), part_ml(size_t(n_items) * S * kAttnRows * 2);
        part_o.poison();
        part_ml.poison();
        AttnParams p{dq.p, dcache.p, ditems.p, dchunks.p, dblocks.p, n_items, S, heads, 0.1147f, dlat.p,
                     part_o.p, part_ml.p};
        ASSERT_TRUE(gemv1_combine_supported(p, kvl, vdim));
        dlat.poison();
        y1.poison();
        y2.poison();
        mla_attention(p, kvl, rope, 0);
        gemv1(dlat.p, dw.p + size_t(nope) * kvl, heads * vdim, kvl, y1.p, false, 0, vdim, rows, kvl);
        mla_attention(p, kvl, rope, 0, false);
        // odd split counts: the cache into the L2 (the shared experts' rows in a decode step)
        gemv1_combine(p, dw.p + size_t(nope) * kvl, heads * vdim, kvl, y2.p, 0, vdim, rows, S % 2 ? dcache.p : nullptr,
                      size_t(nb) * 64 * D * sizeof(bf16));
        const auto a = from_bf16(y1.get()), b = from_bf16(y2.get());
        for (size_t i = 0; i < a.size(); ++i)
          ASSERT_EQ(a[i], b[i]) << "heads " << heads << " context " << len + 1 << " splits " << S << " output " << i;
        if (mla_attention_cluster_merge_supported(p, kvl)) {  // merged in the attention launch, then gemv1
          p.cluster_merge = true;
          dlat.poison();
          y2.poison();
          mla_attention(p, kvl, rope, 0);
          gemv1(dlat.p, dw.p + size_t(nope) * kvl, heads * vdim, kvl, y2.p, false, 0, vdim, rows, kvl);
          EXPECT_EQ(from_bf16(y2.get()), a)
              << "cluster merge, heads " << heads << " context " << len + 1 << " splits " << S;
        }
      }
    }
  }
}

// The reference draw: among the kept ids (e >= theta) in id order, the first at which the running sum
// of e passes u times their total.
int inverse_cdf_pick(const std::vector<double>& e, double theta, double u) {
  double kept = 0;
  for (double v : e) kept += v >= theta ? v : 0;
  double c = 0;
  int pick = -1;
  for (size_t i = 0; i < e.size(); ++i) {
    if (e[i] < theta) continue;
    c += e[i];
    pick = int(i);
    if (u * kept < c) break;
  }
  return pick;
}

void sampling_greedy_and_top_p(SampleForm form) {
  std::mt19937_64 g(7);
  const int R = 64, V = 5003, limit = 4999;
  auto logits = randn(size_t(R) * V, g, 3.0f);
  // greedy
  {
    Dev<float> dl(logits);
    Dev<int32_t> out(static_cast<size_t>(R));
    out.poison();
    sample_rows(dl.p, R, V, limit, 0.0f, 1.0f, 1, 0, out.p, 0, form);
    const auto got = out.get();
    for (int r = 0; r < R; ++r) {
      const float* l = &logits[size_t(r) * V];
      EXPECT_EQ(got[size_t(r)], int(std::max_element(l, l + limit) - l)) << "row " << r;
    }
  }
  // the argmax split over blocks, with ties (the lowest index wins) in and across blocks
  for (int lim : {limit, 0}) {
    auto tied = logits;
    for (int r = 0; r < R; r += 3) {
      float* l = &tied[size_t(r) * V];
      const float top = *std::max_element(l, l + V) + 1.0f;
      l[size_t(r * 37 % 3400) + 1500] = top;  // a later block
      l[size_t(r * 37 % 3400) + 1500 - 1024 * (r % 2)] = top;  // the same block or the one before
      if (r % 6 == 0) l[4998] = top;
    }
    Dev<float> dl(tied);
    Dev<int32_t> out(static_cast<size_t>(R));
    Dev<unsigned char> scratch(argmax_scratch_bytes(R, V));
    out.poison();
    argmax_rows(dl.p, R, V, lim, out.p, scratch.p, 0);
    const auto got = out.get();
    const int n = lim > 0 ? lim : V;
    for (int r = 0; r < R; ++r) {
      const float* l = &tied[size_t(r) * V];
      EXPECT_EQ(got[size_t(r)], int(std::max_element(l, l + n) - l)) << "row " << r << " limit " << lim;
    }
  }
  // temperature + top-p: the draw must be the reference inverse-CDF pick over the nucleus
  for (float top_p : {0.9f, 1.0f}) {
    const float temp = 0.7f;
    Dev<float> dl(logits);
    Dev<int32_t> out(static_cast<size_t>(R));
    out.poison();
    sample_rows(dl.p, R, V, limit, temp, top_p, 42, 9, out.p, 0, form);
    const auto got = out.get();
    int exact = 0;
    for (int r = 0; r < R; ++r) {
      const float* l = &logits[size_t(r) * V];
      const float mx = *std::max_element(l, l + limit);
      std::vector<double> e(static_cast<size_t>(limit));
      double z = 0;
      for (int i = 0; i < limit; ++i) z += (e[size_t(i)] = std::exp((l[i] - mx) / temp));
      std::vector<int> order(static_cast<size_t>(limit));
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int a, int b) { return e[size_t(a)] > e[size_t(b)]; });
      double acc = 0, theta = 0;
      for (int i : order) {
        acc += e[size_t(i)];
        theta = e[size_t(i)];
        if (acc >= top_p * z) break;
      }
      if (top_p >= 1.0f) theta = 0;
      const int tok = got[size_t(r)];
      ASSERT_GE(tok, 0);
      ASSERT_LT(tok, limit);
      EXPECT_GE(e[size_t(tok)], theta * (1 - 1e-5)) << "row " << r << " drew outside the nucleus";
      exact += inverse_cdf_pick(e, theta, sample_uniform(42, 9, uint64_t(r))) == tok;
    }
    EXPECT_GE(exact, R - 2) << "top_p=" << top_p;  // float sums may move a boundary draw by one token
  }
  // frequencies: one 5-token distribution, many rows (each row is an independent draw)
  {
    const int rows = 8000, v = 5;
    const std::vector<float> base = {2.0f, 1.0f, 0.5f, 0.0f, -3.0f};
    std::vector<float> l;
    for (int r = 0; r < rows; ++r) l.insert(l.end(), base.begin(), base.end());
    Dev<float> dl(l);
    Dev<int32_t> out(static_cast<size_t>(rows));
    sample_rows(dl.p, rows, v, 0, 1.0f, 0.75f, 3, 0, out.p, 0, form);
    const auto got = out.get();
    std::vector<double> p(static_cast<size_t>(v));
    double z = 0;
    for (int i = 0; i < v; ++i) z += (p[size_t(i)] = std::exp(base[size_t(i)]));
    // nucleus at 0.75: tokens 0 and 1 (0.577 + 0.212 = 0.789; token 0 alone is 0.577)
    const double kept = p[0] + p[1];
    std::vector<int> count(size_t(v), 0);
    for (int t : got) ++count[size_t(t)];
    EXPECT_EQ(count[2] + count[3] + count[4], 0);
    EXPECT_NEAR(double(count[0]) / rows, p[0] / kept, 0.02);
    EXPECT_NEAR(double(count[1]) / rows, p[1] / kept, 0.02);
  }
}

// Both forms of the draw (one block streaming a row, a cluster holding it in shared memory).
TEST(CudaKernels, SamplingGreedyAndTopP) {
  DSV2_REQUIRE_GPU();
  for (SampleForm form : {SampleForm::one_block, SampleForm::cluster}) {
    SCOPED_TRACE(form == SampleForm::cluster ? "cluster form" : "one-block form");
    sampling_greedy_and_top_p(form);
  }
}

// Each row with its own parameters (the engine's sampled requests): the kept set of the host
// pipeline (temperature, top-k, top-p over what top-k kept, min-p) and the inverse-CDF pick of the
// row's own uniform over it, in id order.
void sampling_per_row_parameters(SampleForm form) {
  std::mt19937_64 g(11);
  const int R = 70, V = 5003, limit = 4999;
  const auto logits = randn(size_t(R) * V, g, 3.0f);
  const SampleRowParams kinds[7] = {{0.0f, 1.0f, 0.0f, 0, 0.3f},  {0.8f, 1.0f, 0.0f, 1, 0.9f},
                                    {1.3f, 1.0f, 1.0f, 0, 0.7f},  {0.7f, 0.9f, 0.0f, 0, 0.0f},
                                    {1.0f, 1.0f, 0.0f, 50, 0.0f}, {1.0f, 0.5f, 0.0f, 50, 0.0f},
                                    {0.9f, 1.0f, 0.1f, 0, 0.0f}};
  std::vector<SampleRowParams> ps(static_cast<size_t>(R));
  std::uniform_real_distribution<float> unif(0.0f, 1.0f);
  for (int r = 0; r < R; ++r) {
    ps[size_t(r)] = kinds[r % 7];
    if (ps[size_t(r)].u == 0.0f) ps[size_t(r)].u = unif(g);
  }
  Dev<float> dl(logits);
  Dev<SampleRowParams> dp(ps);
  Dev<int32_t> out(static_cast<size_t>(R));
  out.poison();
  sample_rows_each(dl.p, R, V, limit, dp.p, out.p, 0, form);
  const auto got = out.get();
  int exact = 0;
  for (int r = 0; r < R; ++r) {
    const SampleRowParams& q = ps[size_t(r)];
    const float* l = &logits[size_t(r) * V];
    const int amax = int(std::max_element(l, l + limit) - l);
    const int tok = got[size_t(r)];
    ASSERT_GE(tok, 0);
    ASSERT_LT(tok, limit);
    if (q.temperature <= 0.0f || q.top_k == 1 || q.min_p >= 1.0f) {
      EXPECT_EQ(tok, amax) << "row " << r << " has one candidate";
      ++exact;
      continue;
    }
    std::vector<double> e(static_cast<size_t>(limit));
    for (int i = 0; i < limit; ++i) e[size_t(i)] = std::exp((double(l[i]) - l[amax]) / q.temperature);
    std::vector<double> desc = e;
    std::sort(desc.rbegin(), desc.rend());
    double theta = 0;
    size_t kept_n = desc.size();
    if (q.top_k > 0) {
      theta = desc[size_t(q.top_k) - 1];
      kept_n = size_t(q.top_k);
    }
    if (q.top_p < 1.0f) {
      double z = 0, acc = 0;
      for (size_t k = 0; k < kept_n; ++k) z += desc[k];
      for (size_t k = 0; k < kept_n; ++k) {
        acc += desc[k];
        theta = desc[k];
        if (acc >= q.top_p * z) break;
      }
    }
    theta = std::max(theta, double(q.min_p));
    EXPECT_GE(e[size_t(tok)], theta * (1 - 1e-5)) << "row " << r << " drew outside the kept set";
    exact += inverse_cdf_pick(e, theta, q.u) == tok;
  }
  EXPECT_GE(exact, R - 2);  // float sums may move a boundary draw by one token
  // frequencies over evenly spread uniforms: top-k 3, then min-p 0.3, of one 5-token distribution
  for (int mode = 0; mode < 2; ++mode) {
    const int rows = 4000, v = 5;
    const std::vector<float> base = {2.0f, 1.0f, 0.5f, 0.0f, -3.0f};
    std::vector<float> l;
    std::vector<SampleRowParams> q;
    for (int r = 0; r < rows; ++r) {
      l.insert(l.end(), base.begin(), base.end());
      q.push_back({1.0f, 1.0f, mode ? 0.3f : 0.0f, mode ? 0 : 3, (float(r) + 0.5f) / rows});
    }
    Dev<float> d(l);
    Dev<SampleRowParams> dq(q);
    Dev<int32_t> o(static_cast<size_t>(rows));
    sample_rows_each(d.p, rows, v, 0, dq.p, o.p, 0, form);
    std::vector<double> p(static_cast<size_t>(v));
    for (int i = 0; i < v; ++i) p[size_t(i)] = std::exp(base[size_t(i)] - base[0]);
    const int n_kept = mode ? 2 : 3;  // min-p 0.3: e = 1, 0.37 kept, 0.22 not
    double z = 0;
    for (int i = 0; i < n_kept; ++i) z += p[size_t(i)];
    std::vector<int> count(size_t(v), 0);
    for (int t : o.get()) ++count[size_t(t)];
    for (int i = 0; i < v; ++i)
      EXPECT_NEAR(double(count[size_t(i)]) / rows, i < n_kept ? p[size_t(i)] / z : 0.0, 2.0 / rows)
          << "mode " << mode << " token " << i;
  }
}

TEST(CudaKernels, SamplingPerRowParameters) {
  DSV2_REQUIRE_GPU();
  for (SampleForm form : {SampleForm::one_block, SampleForm::cluster}) {
    SCOPED_TRACE(form == SampleForm::cluster ? "cluster form" : "one-block form");
    sampling_per_row_parameters(form);
  }
}

}  // namespace
}  // namespace dsv2::test
