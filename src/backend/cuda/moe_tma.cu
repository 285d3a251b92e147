// One-token MoE (batch-1 decode) with bulk-copy pipelines (Hopper): the same two products as
// moe_rows (gate/up + SiLU, then down + combine into the residual), but each block is resident for
// the whole product and one warp keeps a ring of shared-memory stages filled with bulk copies
// (cp.async.bulk, completion on mbarriers), while 8 warps compute from the stages. The weight stream
// then never stops between blocks: moe_rows' short blocks each issue their loads, wait, compute and
// exit, so every SM's memory traffic drops at every block boundary.
//
// Gate/up: unit u = 8 gate rows and the 8 matching up rows of one expert (two contiguous copies),
// units of the shared pieces first (they do not depend on the router, the kernel just before, and
// are copied before the PDL wait), then the routed ones. Warp w computes row w of the unit, with the
// same operations in the same order as moe_rows_gu_kernel (the same bf16 activations).
// Down: item = 16 outputs; its stages are those rows of each of the K + S experts (one contiguous copy
// each; the shared experts' copied before the PDL wait, the routed ones once the wait has made the
// gate/up kernel's ids visible); warp w takes outputs w
// and w + 8 (with 8 or fewer outputs per item: output w % cols, piece w / cols of the columns); the
// item's sum goes into y.
#include <algorithm>
#include <cstdlib>

#include "backend/cuda/bf16_math.cuh"
#include "backend/cuda/mma.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/route.cuh"
#include "backend/cuda/row_stage.cuh"
#include "backend/cuda/trace.cuh"
#include "common/error.h"

namespace dsv2::cuda {

namespace {

constexpr int kTmaWarps = 8;  // computing warps; warp kTmaWarps issues the copies
constexpr int kTmaThreads = (kTmaWarps + 1) * 32;
constexpr int kTmaGuRows = kTmaWarps;  // gate rows (and as many up rows) per unit: one pair per warp
constexpr int kTmaDownCols = 16;       // outputs per down item (DSV2_CUDA_TMA_DOWN_COLS=4 or 8)
constexpr int kTmaMaxStages = 16;
constexpr int kTmaMaxPieces = 8;       // H / 256: x pieces of 8 per lane, held in registers
constexpr size_t kTmaSmemBudget = 220 * 1024;
constexpr int kTmaMaxRows = 32;        // K + S

struct TmaLayout {
  int stages;
  size_t stage_bytes, ring, side, bars, total;  // side: x (gate/up) or the activations (down)
};
inline size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }
inline TmaLayout tma_layout(size_t stage_bytes, size_t side_bytes) {
  TmaLayout L{};
  L.stage_bytes = stage_bytes;
  const size_t fixed = align_up(side_bytes, 128) + 2 * kTmaMaxStages * sizeof(uint64_t);
  L.stages = fixed < kTmaSmemBudget ? int(std::min<size_t>(kTmaMaxStages, (kTmaSmemBudget - fixed) / stage_bytes)) : 0;
  L.ring = 0;
  L.side = size_t(L.stages) * stage_bytes;
  L.bars = L.side + align_up(side_bytes, 128);
  L.total = L.bars + 2 * size_t(L.stages) * sizeof(uint64_t);
  return L;
}
inline TmaLayout gu_layout(int H) { return tma_layout(size_t(2) * kTmaGuRows * H * sizeof(bf16), size_t(H) * sizeof(bf16)); }
inline TmaLayout down_layout(int K, int S, int I, int cols) {
  return tma_layout(size_t(cols) * I * sizeof(bf16), size_t(K + S) * I * sizeof(bf16));
}

// Ring bookkeeping shared by the issuing and the computing warps: use n of the ring is stage n % S
// in round n / S; the full barrier of a stage completes once per round (parity = round & 1), the
// empty barrier when all computing warps have released it.
struct Ring {
  unsigned char* base;
  uint64_t* full;
  uint64_t* empty;
  int stages;
  size_t stage_bytes;
  __device__ unsigned char* stage(int n) const { return base + size_t(n % stages) * stage_bytes; }
  // issuing side: wait until use n may overwrite its stage, then announce `bytes` of copies
  __device__ void wait_free(int n) const {
    if (n >= stages) mbar_wait(&empty[n % stages], unsigned((n / stages - 1) & 1));
  }
  __device__ void announce(int n, unsigned bytes) const { mbar_arrive_expect(&full[n % stages], bytes); }
  __device__ void produce(int n, unsigned bytes) const {
    wait_free(n);
    announce(n, bytes);
  }
  __device__ void consume_wait(int n) const { mbar_wait(&full[n % stages], unsigned((n / stages) & 1)); }
  __device__ void release(int n, int lane) const {
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[n % stages]);
  }
};

__device__ Ring make_ring(unsigned char* smem, const TmaLayout& L) {
  Ring r{smem + L.ring, reinterpret_cast<uint64_t*>(smem + L.bars), nullptr, L.stages, L.stage_bytes};
  r.empty = r.full + L.stages;
  if (threadIdx.x == 0) {
    for (int s = 0; s < L.stages; ++s) {
      mbar_init(&r.full[s], 1);
      mbar_init(&r.empty[s], kTmaWarps);
    }
    mbar_init_fence();
  }
  __syncthreads();
  return r;
}

// Route in the block (p.route_part), with the RMSNorm of x into sx (stage_rmsnorm_bf16's operations in
// its order, so the same bf16 values): the loads of x, of the norm weights and of o_proj's per-block
// partial router logits are issued together. Column sums of the partials in a fixed order (each thread
// sums a range of partial rows for 4 columns, then warp 0 adds the ranges), times the norm's
// rsqrt(mean(x^2) + eps), then route_token_warp by warp 0, which writes ids / weights to global memory
// (every block writes the same values; fenced with fence_ids) and arrives on bar; the other warps go on.
// Called by the computing warps after the PDL wait; H <= 8 * 256.
constexpr int kRouteGuScratch = 1280;  // floats: ranges x padded columns
__device__ void route_and_norm_in_block(const MoeRowsParams& p, bf16* sx, float* red, float* scratch, float* logits,
                                        uint64_t* bar, bool fence_ids) {
  constexpr int nt = kTmaWarps * 32, kXPer = 2;
  const int tid = threadIdx.x, H = p.H;
  float4 xv[kXPer], gv[kXPer];
#pragma unroll
  for (int j = 0; j < kXPer; ++j) {
    const int k = (tid + j * nt) * 4;
    xv[j] = k < H ? *reinterpret_cast<const float4*>(p.xf + k) : make_float4(0.f, 0.f, 0.f, 0.f);
    gv[j] = k < H ? *reinterpret_cast<const float4*>(p.norm_w + k) : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  const int C = route_part_stride(p.E), G = C / 4;
  const int Q = min(nt / G, kRouteGuScratch / C);  // ranges of partial rows
  if (tid < G * Q) {
    const int g = tid % G, qi = tid / G;
    const int r0 = p.n_part * qi / Q, r1 = p.n_part * (qi + 1) / Q;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int r = r0; r < r1; r += 16) {
      float4 v[16];  // all loads of up to 16 rows in flight
#pragma unroll
      for (int j = 0; j < 16; ++j)
        v[j] = r + j < r1 ? __ldcg(reinterpret_cast<const float4*>(p.route_part + size_t(r + j) * C) + g)
                          : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        acc.x += v[j].x;
        acc.y += v[j].y;
        acc.z += v[j].z;
        acc.w += v[j].w;
      }
    }
    reinterpret_cast<float4*>(scratch + size_t(qi) * C)[g] = acc;
  }
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < kXPer; ++j) ss += sum_squares4(xv[j]);
  const float inv = block_inv_rms(ss, red, H, p.eps, nt, 1);
  DSV2_TRACE_MARK(1);  // every thread's loads are in
#pragma unroll
  for (int j = 0; j < kXPer; ++j) {
    const int k = (tid + j * nt) * 4;
    if (k >= H) break;
    store_norm4(sx + k, xv[j], gv[j], inv);
  }
  stage_sync(1, nt);
  DSV2_TRACE_MARK(3);
  if (tid < 32) {
    const int lane = tid;
    for (int c = lane; c < p.E; c += 32) {
      float t = 0.f;
      for (int qi = 0; qi < Q; ++qi) t += scratch[qi * C + c];
      logits[c] = t * inv;
    }
    __syncwarp();
    route_token_warp(p.route, 0, logits);
    DSV2_TRACE_MARK(2);
    if (fence_ids) __threadfence();  // the ids are visible to the down kernel before this block lets it launch
    __syncwarp();
    if (lane == 0) mbar_arrive(bar);
  }
}

// Copies a block's copy warp issues before the computing warps have their inputs (gate/up with
// route_part: the routing's loads; down: the activations). Those loads queue behind the SM's copies
// in flight: in the kernel timeline (batch 1) the routing took 5.8 us after the PDL wait and the
// activations 5.5 us, with a full ring of copies issued ahead of them, so the routed copies (and the
// down's fifth) were issued only after the copies already in flight had drained. Too few early
// copies leave the memory idle while the inputs load instead. Measured on the H200 at batch 1 (one
// call, three rounds, DSV2_CUDA_GU_EARLY / DSV2_CUDA_DOWN_EARLY): the full rings (3 and 4) 598 /
// 598 / 600 tok/s; gate/up 2, down 3: 605 / 605 / 605; gate/up 2, down 1: 605 / 604 / 604; gate/up
// 0: 577; down 0: 590-593.
constexpr int kTmaGuEarly = 2, kTmaDownEarly = 3;
struct EarlyCopies {
  int gu, down;
};

__global__ void __launch_bounds__(kTmaThreads, 1) moe_tma_gu_kernel(MoeRowsParams p, TmaLayout L, int early,
                                                                     bool fence_ids) {
  DSV2_TRACE(kTrMoeTmaGu);
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ uint64_t route_bar;  // route_part: completes when warp 0 has routed the token
  const bool route_here = p.route_part != nullptr;
  if (route_here && threadIdx.x == 0) mbar_init(&route_bar, 1);  // make_ring fences and syncs
  const Ring ring = make_ring(smem, L);
  const int H = p.H, I = p.I, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int upr = I / kTmaGuRows, n_units = (p.K + p.S) * upr;
  const unsigned row_bytes = unsigned(kTmaGuRows * H * sizeof(bf16));
  // the copy warp before its first routed unit: the ids are known (router kernel complete, or this
  // block's routing done), and the down kernel may launch
  auto ids_ready = [&] {
    if (route_here)
      mbar_wait(&route_bar, 0);
    else
      pdl_wait();
    pdl_launch();
  };
  // The copy warp takes the units in ticket order with p.gu_tickets (one 64-bit counter, advanced by
  // n_units + gridDim.x per launch: every block stops at its first ticket past the units), else unit
  // blockIdx.x + k * gridDim.x; the unit of each ring stage goes to tags (-1: no more).
  __shared__ int tags[kTmaMaxStages];
  if (warp == kTmaWarps) {
    if (lane == 0) {
      const unsigned long long pol = l2_policy(p.evict_first);
      const unsigned long long M = static_cast<unsigned long long>(n_units) + gridDim.x;
      int u_fixed = int(blockIdx.x) - int(gridDim.x);
      auto take = [&] {
        return p.gu_tickets ? int(atomicAdd(p.gu_tickets, 1ull) % M) : (u_fixed += int(gridDim.x));
      };
      bool waited = false;
      int u = take();
      for (int n = 0;; ++n) {
        const int next = u < n_units ? take() : 0;  // in flight while the stage drains
        ring.wait_free(n);
        tags[n % ring.stages] = u < n_units ? u : -1;
        if (u >= n_units) {
          ring.announce(n, 0);
          break;
        }
        const int y = u / upr, i0 = (u - y * upr) * kTmaGuRows;
        if (!waited && (y >= p.S || (route_here && n >= early))) {  // routed units need the ids
          ids_ready();
          waited = true;
        }
        const int e = y < p.S ? p.E + y : __ldcg(p.ids + (y - p.S));  // from L2: written in this pass
        const bf16* g = p.w_gu + (size_t(e) * 2 * I + i0) * H;
        ring.announce(n, 2 * row_bytes);
        unsigned char* st = ring.stage(n);
        bulk_copy_g2s(st, g, row_bytes, &ring.full[n % ring.stages], pol);
        bulk_copy_g2s(st + row_bytes, g + size_t(I) * H, row_bytes, &ring.full[n % ring.stages], pol);
        u = next;
      }
      if (!waited) ids_ready();  // the down kernel launches once every block has the ids
    }
    return;
  }
  // computing warps: x = the normalized row (add_rmsnorm's bf16 values), then one pair of rows each
  bf16* sx = reinterpret_cast<bf16*>(smem + L.side);
  __shared__ float red[kTmaWarps];
  if (p.x_wait || route_here) pdl_wait();
  if (route_here) {
    __shared__ __align__(16) float scratch[kRouteGuScratch];
    __shared__ float logits[kRouteWarpMaxPer * 32];
    route_and_norm_in_block(p, sx, red, scratch, logits, &route_bar, fence_ids);
  } else if (p.norm_w) {
    stage_rmsnorm_bf16(p.xf, p.norm_w, H, p.eps, sx, red, kTmaWarps * 32, 1);
  } else {
    for (int c = threadIdx.x; c < H / 8; c += kTmaWarps * 32)
      reinterpret_cast<uint4*>(sx)[c] = reinterpret_cast<const uint4*>(p.x)[c];
    stage_sync(1, kTmaWarps * 32);
  }
  DSV2_TRACE_MARK(0);
  uint4 xq[kTmaMaxPieces];
#pragma unroll
  for (int j = 0; j < kTmaMaxPieces; ++j) {
    const int k = (j * 32 + lane) * 8;
    xq[j] = k < H ? *reinterpret_cast<const uint4*>(sx + k) : make_uint4(0, 0, 0, 0);
  }
  for (int n = 0;; ++n) {
    ring.consume_wait(n);
    const int u = tags[n % ring.stages];
    if (u < 0) break;
    const int y = u / upr, i = (u - y * upr) * kTmaGuRows + warp;
    const bf16* gs = reinterpret_cast<const bf16*>(ring.stage(n)) + size_t(warp) * H;
    const bf16* us = gs + size_t(kTmaGuRows) * H;
    float ag = 0.f, au = 0.f;
#pragma unroll
    for (int j = 0; j < kTmaMaxPieces; ++j) {
      const int k = (j * 32 + lane) * 8;
      if (k >= H) break;
      dot8_gate_up(*reinterpret_cast<const uint4*>(gs + k), *reinterpret_cast<const uint4*>(us + k), xq[j], ag, au);
    }
    ring.release(n, lane);
    for (int o = 16; o > 0; o >>= 1) {
      ag += __shfl_xor_sync(0xffffffffu, ag, o);
      au += __shfl_xor_sync(0xffffffffu, au, o);
    }
    if (lane == 0) {
      const int row = y < p.S ? p.K + y : y - p.S;  // act rows: routed 0..K-1, shared K..
      p.act[size_t(row) * I + i] = __float2bfloat16(silu_times_bf16(ag, au));
    }
  }
}

// cols outputs per item (16, or 8 / 4 with DSV2_CUDA_TMA_DOWN_COLS: 1 or 2 warps per output row). Measured
// on the H200 at batch 1: 8 outputs (copies of 8 rows, 22.5 KB for V2-Lite) 517-524 tok/s against
// 479-483 with 4 (11 KB copies); 16 outputs (45 KB copies, 4 stages) 567-570 against 554-558 with 8
// (32K context 424 -> 430). Larger copies stream the down weights faster.
struct DownCfg {
  int cols;
};
constexpr int kTmaDownMaxItems = 8;  // items per block (H / cols over the grid)

__global__ void __launch_bounds__(kTmaThreads, 1) moe_tma_down_kernel(MoeRowsParams p, TmaLayout L, DownCfg cfg,
                                                                       int early, bool fence_ids) {
  DSV2_TRACE(kTrMoeTmaDown);
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ uint64_t act_bar;  // completes when the activations are in shared memory
  if (threadIdx.x == 0) mbar_init(&act_bar, 1);  // make_ring fences and syncs
  const Ring ring = make_ring(smem, L);
  const int H = p.H, I = p.I, nrow = p.K + p.S, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int cols = cfg.cols, n_items = H / cols;
  const int my_items = (n_items - int(blockIdx.x) + int(gridDim.x) - 1) / int(gridDim.x);
  const unsigned seg_bytes = unsigned(cols * I * sizeof(bf16));
  // use n of the ring: item n / nrow, expert n % nrow
  auto item_of = [&](int n) { return n / nrow; };
  auto expert_of = [&](int n) { return n % nrow; };
  if (warp == kTmaWarps) {
    // fence_ids: the expert ids are complete and fenced before the gate/up kernel let this one
    // launch; else they are read after this warp's PDL wait (the shared experts' copies go first)
    if (lane == 0) {
      const unsigned long long pol = l2_policy(p.evict_first);
      bool waited = fence_ids;
      auto seg = [&](int n) {
        const int j = expert_of(n), it = int(blockIdx.x) + item_of(n) * int(gridDim.x);
        if (j >= p.S && !waited) {
          pdl_wait();
          waited = true;
        }
        const int e = j < p.S ? p.E + j : __ldcg(p.ids + (j - p.S));  // from L2: written in this pass
        return p.w_down + (size_t(e) * H + size_t(it) * cols) * I;
      };
      for (int n = 0; n < my_items * nrow; ++n) {
        if (n == early) mbar_wait(&act_bar, 0);
        ring.produce(n, seg_bytes);
        bulk_copy_g2s(ring.stage(n), seg(n), seg_bytes, &ring.full[n % ring.stages], pol);
      }
    }
    return;
  }
  bf16* sa = reinterpret_cast<bf16*>(smem + L.side);  // [nrow, I]: shared pieces first, then routed
  __shared__ float wrow[kTmaMaxRows];
  __shared__ float part[kTmaWarps][kTmaDownMaxItems];
  pdl_entry();  // the activations come from the gate/up kernel
  const int nck = I / 8, tid = threadIdx.x, total = nrow * nck;
  if (tid < nrow) wrow[tid] = tid < p.S ? 1.0f : __ldcg(p.weights + (tid - p.S));
  // the activations in batches of kActPer pieces per thread, every load of a batch issued before its
  // stores (one round trip per batch: one for V2-Lite's 8 rows; the loop it replaces stored each piece
  // before loading the next)
  constexpr int kActPer = 8;
  for (int c0 = tid; c0 < total; c0 += kActPer * kTmaWarps * 32) {
    uint4 v[kActPer];
#pragma unroll
    for (int i = 0; i < kActPer; ++i) {
      const int c = c0 + i * kTmaWarps * 32, j = c / nck, cc = c - j * nck;
      const size_t src = j < p.S ? size_t(p.K) + j : size_t(j - p.S);  // act rows: routed 0..K-1, shared K..
      v[i] = c < total ? reinterpret_cast<const uint4*>(p.act + src * I)[cc] : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int i = 0; i < kActPer; ++i) {
      const int c = c0 + i * kTmaWarps * 32, j = c / nck, cc = c - j * nck;
      if (c < total) reinterpret_cast<uint4*>(sa + size_t(j) * I)[cc] = v[i];
    }
  }
  stage_sync(1, kTmaWarps * 32);
  if (threadIdx.x == 0) mbar_arrive(&act_bar);
  DSV2_TRACE_MARK(0);
  // cols <= 8: warp w takes output row w % cols of the item, piece w / cols of its columns; 16: rows w
  // and w + 8, all columns. Sums per (item, row of the warp) in tot[item * rpw + rr].
  const bool wide = cols > kTmaWarps;
  const int rpw = wide ? cols / kTmaWarps : 1, wpr = wide ? 1 : kTmaWarps / cols;
  const int r = wide ? warp : warp % cols, piece = wide ? 0 : warp / cols;
  const int pc = (nck + wpr - 1) / wpr, c0 = piece * pc, c1 = min(nck, c0 + pc);
  float tot[kTmaDownMaxItems];
#pragma unroll
  for (int k = 0; k < kTmaDownMaxItems; ++k) tot[k] = 0.f;
  for (int n = 0; n < my_items * nrow; ++n) {
    const int j = expert_of(n), kk = item_of(n);
    ring.consume_wait(n);
    if (n == 0) DSV2_TRACE_MARK(1);
    if (n == 4) DSV2_TRACE_MARK(2);
    const bf16* as = sa + size_t(j) * I;
    for (int rr = 0; rr < rpw; ++rr) {
      const bf16* ws = reinterpret_cast<const bf16*>(ring.stage(n)) + size_t(r + rr * kTmaWarps) * I;
      float d = 0.f;
      for (int c = c0 + lane; c < c1; c += 32) {
        dot8(*reinterpret_cast<const uint4*>(ws + c * 8), *reinterpret_cast<const uint4*>(as + c * 8), d);
      }
#pragma unroll
      for (int k = 0; k < kTmaDownMaxItems; ++k)
        if (k == kk * rpw + rr) tot[k] += wrow[j] * d;
    }
    ring.release(n, lane);
  }
#pragma unroll
  for (int k = 0; k < kTmaDownMaxItems; ++k) {
    if (k >= my_items * rpw) break;
    float v = tot[k];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) part[warp][k] = v;
  }
  stage_sync(1, kTmaWarps * 32);
  for (int q = tid; q < my_items * cols; q += kTmaWarps * 32) {
    const int k = q / cols, row = q - k * cols;
    float v = 0.f;
    if (wide)
      v = part[row % kTmaWarps][k * rpw + row / kTmaWarps];
    else
      for (int w = 0; w < wpr; ++w) v += part[row + w * cols][k];
    float* yo = p.y + (size_t(blockIdx.x) + size_t(k) * gridDim.x) * cols + row;
    if (p.accumulate)
      atomicAdd(yo, v);  // the only writer of this element: y + v, without a round trip
    else
      *yo = v;
  }
}

int sm_count() {
  static int n[64] = {};
  int dev = 0;
  DSV2_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 64 && n[dev] > 0) return n[dev];
  int v = 0;
  DSV2_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
  if (dev < 64) n[dev] = v;
  return v;
}

// Outputs per down item: `want` (16, or DSV2_CUDA_TMA_DOWN_COLS), halved while a ring would
// hold fewer than 4 stages (wide rows: a dense MLP's I = 10944 takes 2); 0 if even 1 does not fit 2.
int down_cols(int K, int S, int H, int I, int want) {
  int c = want;
  while (c > 1 && (down_layout(K, S, I, c).stages < 4 || H % c != 0)) c /= 2;
  return down_layout(K, S, I, c).stages >= 2 && H % c == 0 ? c : 0;
}

}  // namespace

bool moe_rows_tma_supported(int T, int K, int S, int H, int I) {
  return device_is_hopper() && T == 1 && K + S <= kTmaMaxRows && H % 256 == 0 && H <= 256 * kTmaMaxPieces &&
         I % kTmaGuRows == 0 && I % 8 == 0 && H % 8 == 0 && gu_layout(H).stages >= 2 &&
         down_cols(K, S, H, I, kTmaDownCols) > 0;
}

bool moe_route_in_gu_supported(const RouterParams& r, int n_part) {
  return r.T == 1 && route_warp_supported(r) && n_part > 0 && route_part_stride(r.E) <= kRouteGuScratch &&
         route_part_stride(r.E) / 4 <= kTmaWarps * 32;
}

void moe_rows_tma(const MoeRowsParams& params, cudaStream_t s, int stages) {
  MoeRowsParams p = params;
  p.evict_first = (l2_hint_mask() & 2) != 0;
  DSV2_CHECK(moe_rows_tma_supported(p.T, p.K, p.S, p.H, p.I), "moe_rows_tma: T {} K {} S {} H {} I {} not supported",
             p.T, p.K, p.S, p.H, p.I);
  DSV2_CHECK(!p.route_part || (moe_route_in_gu_supported(p.route, p.n_part) && p.route.E == p.E &&
                               p.route.ids == p.ids && p.route.weights == p.weights && p.norm_w),
             "moe_rows_tma: routing in the gate/up blocks unsupported (E {}, top_k {})", p.route.E, p.route.K);
  const int sms = sm_count();
  static const EarlyCopies early = [] {
    auto get = [](const char* name, int v) {
      const char* c = std::getenv(name);
      return c ? std::max(0, std::atoi(c)) : v;
    };
    return EarlyCopies{get("DSV2_CUDA_GU_EARLY", kTmaGuEarly), get("DSV2_CUDA_DOWN_EARLY", kTmaDownEarly)};
  }();
  // DSV2_CUDA_FENCE_IDS=1: every gate/up block fences the routed ids before it releases its copy warp,
  // so that the down kernel's copy warp may read them before its PDL wait (the form before). By
  // default the down's copy warp waits first (its first copies, the shared experts', need no ids) and
  // the routing releases the copy warp without a fence (in the kernel timeline the fence took ~1 us
  // of the ~4.6 us from the gate/up kernel's wait to the routed copies). Measured on the H200 at batch
  // 1 (one call, three rounds): 615 / 614 / 615 against 613 / 613 / 612 with the switch (the build
  // before: 612 / 611 / 611); 32K context 458 against 454.
  static const bool fence_ids = std::getenv("DSV2_CUDA_FENCE_IDS") != nullptr;
  if (stages & 1) {
    const TmaLayout L = gu_layout(p.H);
    raise_smem_limit<moe_tma_gu_kernel>(L.total);
    const int units = (p.K + p.S) * (p.I / kTmaGuRows);
    launch_pdl(moe_tma_gu_kernel, dim3(unsigned(std::min(units, sms))), dim3(kTmaThreads), L.total, s, p, L, early.gu,
               fence_ids);
  }
  if (stages & 2) {
    static const int want = [] {
      const char* c = std::getenv("DSV2_CUDA_TMA_DOWN_COLS");
      const int v = c ? std::atoi(c) : 0;
      return v == 4 || v == 8 ? v : kTmaDownCols;
    }();
    const DownCfg cfg{down_cols(p.K, p.S, p.H, p.I, want)};
    const TmaLayout L = down_layout(p.K, p.S, p.I, cfg.cols);
    raise_smem_limit<moe_tma_down_kernel>(L.total);
    const int items = p.H / cfg.cols;
    // every block holds at most kTmaDownMaxItems items (kTmaDownMaxItems / 2 with 16 outputs per item)
    const int max_items = cfg.cols > kTmaWarps ? kTmaDownMaxItems * kTmaWarps / cfg.cols : kTmaDownMaxItems;
    const int grid = std::max(std::min(items, sms), (items + max_items - 1) / max_items);
    launch_pdl(moe_tma_down_kernel, dim3(unsigned(grid)), dim3(kTmaThreads), L.total, s, p, L, cfg, early.down,
               fence_ids);
  }
  DSV2_CUDA_LAUNCHED();
}

DSV2_TRACE_BINDER(trace_bind_moe_tma)

}  // namespace dsv2::cuda
