// Grouped expert GEMM for MoE: rows arrive permuted expert-major (moe_dispatch), and a device-side
// tile list names, for each tile of rows, its expert, first row and row count. The grid is sized for
// the worst case (rows/tile + experts tiles) so that the launch needs no host synchronization and can
// be captured in a CUDA graph; blocks past the real tile count return at once.
// bf16 tensor-core products (mma.sync m16n8k16, ldmatrix fragments), fp32 accumulation, 4-stage
// cp.async pipeline; 32-row tiles for decode-sized groups, 128-row tiles for prefill-sized ones.

#include <cooperative_groups.h>

#include <algorithm>
#include <type_traits>

#include "backend/cuda/bf16_math.cuh"
#include "backend/cuda/mma.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/row_stage.cuh"
#include "backend/cuda/trace.cuh"
#include "common/error.h"

namespace dsv2::cuda {

namespace {

// Tensor-core tiles: mma.sync m16n8k16 (bf16 in, fp32 accumulate) on fragments read from shared
// memory with ldmatrix; A = BM rows of permuted activations, B = BN weight rows of the tile's expert,
// both [row][k] with rows padded by 8 elements (16 bytes) so that ldmatrix hits distinct banks.
template <int BM_, int BN_, int BK_, int WM_, int WN_, int STAGES_>
struct MmaCfg {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_, STAGES = STAGES_;
  static constexpr int THREADS = WM * WN * 32;
  static constexpr int WTM = BM / WM, WTN = BN / WN;  // warp tile
  static constexpr int MI = WTM / 16, NI = WTN / 8;   // mma tiles per warp
  static constexpr int LDS = BK + 8;
  static constexpr size_t kStageElems = size_t(BM + BN) * LDS;
  static constexpr size_t kSmemBytes = STAGES * kStageElems * sizeof(bf16);
  static_assert(NI % 2 == 0 && WTM % 16 == 0 && BK % 16 == 0, "tile shape");
};
// Decode-sized groups (a few to a few dozen rows per expert): memory-bound, deep pipeline.
using CfgSmall = MmaCfg<32, 128, 64, 1, 4, 4>;
// Prefill-sized groups: 64 x 64 warp tiles (32 products per 8 fragment loads).
using CfgLarge = MmaCfg<128, 128, 32, 2, 2, 4>;
static_assert(CfgSmall::BM == kMoeTileRowsDecode && CfgLarge::BM == kMoeTileRowsPrefill, "moe_tile_rows");

// kSwiGLU: w is [E, 2N, K] with rows [gate | up]; the block's BN weight rows are BN/2 gate rows and
// the matching up rows, laid out so that each warp holds gate and up columns in the same lanes, and
// the epilogue writes y[r, n] = bf16(silu(bf16 g) * bf16 u) (as silu_mul would from a bf16 product).
template <class C, bool kF32Out, bool kGather, bool kSwiGLU>
__global__ void __launch_bounds__(C::THREADS) moe_gemm_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                                              const int32_t* __restrict__ tiles, int max_tiles, int N,
                                                              int K, void* y, const int32_t* __restrict__ x_rows,
                                                              bool tile_fast, bool evict_first) {
  DSV2_TRACE(kTrGrouped);
  pdl_entry();
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int BM = C::BM, BN = C::BN, BK = C::BK, LDS = C::LDS, MI = C::MI, NI = C::NI;
  // tile_fast: consecutive blocks take consecutive tiles of one column block, so that the row tiles
  // of one expert (the shared pseudo-experts hold every token) read its weights close in time.
  const int tile = tile_fast ? blockIdx.x : blockIdx.y;
  if (tile >= tiles[max_tiles * 3]) return;
  const int e = tiles[tile * 3], r0 = tiles[tile * 3 + 1], rows = tiles[tile * 3 + 2];
  constexpr int BNO = kSwiGLU ? BN / 2 : BN;  // output columns per block
  constexpr int HW = C::WTN / 2;                // gate (and up) columns per warp, kSwiGLU
  const int n0 = (tile_fast ? blockIdx.y : blockIdx.x) * BNO;
  const bf16* we = w + size_t(e) * (kSwiGLU ? 2 : 1) * N * K;
  bf16* st = reinterpret_cast<bf16*>(smem);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wm = warp / C::WN, wn = warp % C::WN;
  const int nk = (K + BK - 1) / BK;
  const unsigned long long pol = l2_policy(evict_first);

  constexpr int P = BK / 8;  // 16-byte pieces per row
  constexpr int kAPieces = (BM * P + C::THREADS - 1) / C::THREADS;
  // kGather: the A rows this thread loads (fixed over the k loop) are x rows x_rows[r0 + r].
  const bf16* arow[kGather ? kAPieces : 1];
  if constexpr (kGather) {
#pragma unroll
    for (int i = 0; i < kAPieces; ++i) {
      const int r = (tid + i * C::THREADS) / P;
      arow[i] = r < rows ? x + size_t(x_rows[r0 + r]) * K : x;
    }
  }
  auto load = [&](int kt, int stage) {
    bf16* sA = st + stage * C::kStageElems;
    bf16* sB = sA + BM * LDS;
    const int k0 = kt * BK;
#pragma unroll
    for (int i = 0; i < kAPieces; ++i) {
      const int idx = tid + i * C::THREADS;
      if (idx < BM * P) {
        const int r = idx / P, c = (idx % P) * 8;
        const bool ok = r < rows && k0 + c < K;
        if constexpr (kGather)
          cp_async16(sA + r * LDS + c, ok ? arow[i] + k0 + c : x, ok);
        else
          cp_async16(sA + r * LDS + c, ok ? x + size_t(r0 + r) * K + k0 + c : x, ok);
      }
    }
#pragma unroll
    for (int i = 0; i < BN * P / C::THREADS; ++i) {
      const int idx = tid + i * C::THREADS;
      const int r = idx / P, c = (idx % P) * 8;
      int wr = n0 + r, oc = n0 + r;  // weight row, output column
      if constexpr (kSwiGLU) {
        const int cw = r % C::WTN;
        oc = n0 + (r / C::WTN) * HW + (cw < HW ? cw : cw - HW);
        wr = cw < HW ? oc : N + oc;
      }
      const bool ok = oc < N && k0 + c < K;
      cp_async16(sB + r * LDS + c, ok ? we + size_t(wr) * K + k0 + c : we, ok, pol);
    }
  };

  float acc[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;

#pragma unroll
  for (int s = 0; s < C::STAGES - 1; ++s) {
    if (s < nk) load(s, s);
    cp_async_commit();
  }
  // Per-lane ldmatrix offsets (elements) within a stage: A rows (lane & 15), k half (lane >> 4);
  // B rows (lane & 7) + 8 * (lane >> 4), k half ((lane >> 3) & 1).
  const int a_off = (wm * C::WTM + (lane & 15)) * LDS + (lane >> 4) * 8;
  const int b_off = BM * LDS + (wn * C::WTN + (lane & 7) + ((lane >> 4) << 3)) * LDS + ((lane >> 3) & 1) * 8;
  const unsigned s_base = unsigned(__cvta_generic_to_shared(st));
  for (int kt = 0; kt < nk; ++kt) {
    cp_async_wait<C::STAGES - 2>();
    __syncthreads();
    {
      const int nxt = kt + C::STAGES - 1;
      if (nxt < nk) load(nxt, nxt % C::STAGES);
      cp_async_commit();
    }
    const unsigned stage = s_base + unsigned((kt % C::STAGES) * C::kStageElems * sizeof(bf16));
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      uint32_t af[MI][4], bfr[NI][2];
#pragma unroll
      for (int i = 0; i < MI; ++i) ldmatrix_x4(af[i], stage + unsigned((a_off + i * 16 * LDS + kk) * 2));
#pragma unroll
      for (int j = 0; j < NI / 2; ++j) {
        uint32_t r[4];
        ldmatrix_x4(r, stage + unsigned((b_off + j * 16 * LDS + kk) * 2));
        bfr[2 * j][0] = r[0];
        bfr[2 * j][1] = r[1];
        bfr[2 * j + 1][0] = r[2];
        bfr[2 * j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j) mma_bf16(acc[i][j], af[i], bfr[j][0], bfr[j][1]);
    }
  }
  cp_async_wait<0>();
  // Accumulator (i, j): rows g and g + 8 of the 16-row tile, columns 2 * (lane & 3) + {0, 1}.
  const int g = lane >> 2, c2 = (lane & 3) * 2;
  if constexpr (kSwiGLU) {
    // warp columns j < NI/2 are gate columns, j + NI/2 the matching up columns
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < NI / 2; ++j) {
        const int col = n0 + wn * HW + j * 8 + c2;
        if (col >= N) continue;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = wm * C::WTM + i * 16 + g + h * 8;
          if (r >= rows) continue;
          float a[2];
#pragma unroll
          for (int q = 0; q < 2; ++q) a[q] = silu_times_bf16(acc[i][j][2 * h + q], acc[i][j + NI / 2][2 * h + q]);
          *reinterpret_cast<__nv_bfloat162*>(static_cast<bf16*>(y) + size_t(r0 + r) * N + col) =
              __floats2bfloat162_rn(a[0], a[1]);
        }
      }
  } else {
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < NI; ++j) {
        const int col = n0 + wn * C::WTN + j * 8 + c2;
        if (col >= N) continue;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = wm * C::WTM + i * 16 + g + h * 8;
          if (r >= rows) continue;
          const size_t o = size_t(r0 + r) * N + col;
          if constexpr (kF32Out)
            *reinterpret_cast<float2*>(static_cast<float*>(y) + o) =
                make_float2(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
          else
            *reinterpret_cast<__nv_bfloat162*>(static_cast<bf16*>(y) + o) =
                __floats2bfloat162_rn(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
        }
      }
  }
}

// Any K: one thread per output element (small test shapes only).
__global__ void moe_gemm_naive_kernel(const bf16* x, const bf16* w, const int32_t* tiles, int max_tiles, int N, int K,
                                      void* y, bool f32, const int32_t* x_rows) {
  const int tile = blockIdx.y;
  if (tile >= tiles[max_tiles * 3]) return;
  const int e = tiles[tile * 3], r0 = tiles[tile * 3 + 1], rows = tiles[tile * 3 + 2];
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < rows * N; i += gridDim.x * blockDim.x) {
    const int r = i / N, n = i % N;
    float acc = 0;
    for (int k = 0; k < K; ++k)
      acc += __bfloat162float(x[size_t(x_rows ? x_rows[r0 + r] : r0 + r) * K + k]) *
             __bfloat162float(w[(size_t(e) * N + n) * K + k]);
    if (f32)
      static_cast<float*>(y)[size_t(r0 + r) * N + n] = acc;
    else
      static_cast<bf16*>(y)[size_t(r0 + r) * N + n] = __float2bfloat16(acc);
  }
}

// Dense products with at most kGemvRows rows (decode): one warp per output column n, 8 per block,
// so that even N = 2048 spreads over 256 blocks; the warp streams weight row n with 16-byte loads
// (4 in flight per lane) and applies it to every row of x held in shared memory.
constexpr int kGemvWarps = 8;
template <bool kF32Out>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_kernel(const bf16* __restrict__ x, int ldx, int M,
                                                               const bf16* __restrict__ w, int N, int K, void* y,
                                                               int ldy) {
  pdl_entry();
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sx = reinterpret_cast<bf16*>(smem);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  for (int i = tid; i < M * (K / 8); i += blockDim.x) {
    const int m = i / (K / 8), c = i % (K / 8);
    reinterpret_cast<uint4*>(sx + size_t(m) * K)[c] = reinterpret_cast<const uint4*>(x + size_t(m) * ldx)[c];
  }
  __syncthreads();
  const int n = blockIdx.x * kGemvWarps + warp;
  if (n >= N) return;
  float acc[kGemvRows];
#pragma unroll
  for (int m = 0; m < kGemvRows; ++m) acc[m] = 0.f;
  const bf16* wr = w + size_t(n) * K;
#pragma unroll 4
  for (int k = lane * 8; k < K; k += 256) {
    const uint4 wv = *reinterpret_cast<const uint4*>(wr + k);
    const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(&wv);
#pragma unroll
    for (int m = 0; m < kGemvRows; ++m) {
      if (m >= M) break;
      const uint4 xv = *reinterpret_cast<const uint4*>(sx + size_t(m) * K + k);
      const __nv_bfloat162* x2 = reinterpret_cast<const __nv_bfloat162*>(&xv);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 wf = __bfloat1622float2(w2[q]), xf = __bfloat1622float2(x2[q]);
        acc[m] += wf.x * xf.x + wf.y * xf.y;
      }
    }
  }
#pragma unroll
  for (int m = 0; m < kGemvRows; ++m) {
    if (m >= M) break;
    float v = acc[m];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) {
      if constexpr (kF32Out)
        static_cast<float*>(y)[size_t(m) * ldy + n] = v;
      else
        static_cast<bf16*>(y)[size_t(m) * ldy + n] = __float2bfloat16(v);
    }
  }
}

// One-row products (batch-1 decode): y[n] = sum_k x_h[k] w[row(n), k], where output n belongs to head
// h = n / n_head, row(n) = h * w_head_rows + n % n_head and x_h = x + h * x_head (one head: a plain
// GEMV). A warp owns kG1Rows outputs and streams their weight rows in pieces of 256 * kG1U columns,
// kG1Rows * kG1U 16-byte loads in flight per lane. The weights do not depend on earlier kernels, so
// the first piece is loaded before the PDL wait and streams while the previous kernel finishes.
// kNorm: x is the fp32 residual stream and the product reads bf16(norm_w * x * rsqrt(mean(x^2) + eps))
// (add_rmsnorm's bf16 output); K <= 256 * kG1U, so every warp holds the whole row and computes the
// mean itself. accumulate (fp32 out): y[n] += the product (the residual add).
constexpr int kG1Warps = 8, kG1Rows = 2, kG1U = 8;

struct Gemv1Args {
  const bf16* x;
  const float* xf;
  const float* norm_w;
  float eps;
  const bf16* w;
  int N, K, n_head;
  long long w_head_rows, x_head;
  void* y;
  bool accumulate;
  bool evict_first;  // weights streamed with L2 evict_first
  // kComb: x_h is row h of the attention output, merged here from these split partials
  const float* part_o = nullptr;
  const float* part_ml = nullptr;
  int n_splits = 0;
  // kComb: bytes a later kernel reads, moved into the L2 before the PDL wait (block b its slice b)
  const void* l2_next = nullptr;
  unsigned l2_next_bytes = 0;
  // kRoute (fp32 accumulate into the residual y): the block's partial router logits of the new y
  const float* route_w = nullptr;  // [route_E, N] router rows with the post-attention norm folded in
  float* route_part = nullptr;     // [gridDim.x, route_part_stride(route_E)]
  int route_E = 0;
  // kAbsorb (gemv1_norm_absorb): the one-token q/kv product with the W_UK absorb and the q_pe rope
  QkvAbsorbParams ab{};
};

// kAbsorb: the first of block b's 16 rows, its head and kind (0 q_nope, 1 q_pe, 2 the kv row, N past
// the end): the heads' q_nope pieces first (nope / 16 consecutive blocks per head, one thread-block
// cluster), then their q_pe pieces, then the kv row's.
__device__ __forceinline__ int absorb_row0(const Gemv1Args& a, int b, int& head, int& kind) {
  const QkvAbsorbParams& q = a.ab;
  const int nb = q.nope / 16, pb = q.rope / 16, qd = q.nope + q.rope;
  head = -1;
  kind = 2;
  if (b < q.heads * nb) {
    head = b / nb;
    kind = 0;
    return head * qd + (b % nb) * 16;
  }
  b -= q.heads * nb;
  if (b < q.heads * pb) {
    head = b / pb;
    kind = 1;
    return head * qd + q.nope + (b % pb) * 16;
  }
  b -= q.heads * pb;
  return min(q.heads * qd + b * 16, a.N);
}

// kAbsorb's epilogue, v[r] = output n0 + r of this warp (every lane). kv rows are written as they are;
// a warp's q_pe pair (2i, 2i + 1) is roped into qfull as rope_and_cache does; a head's q_nope blocks
// each multiply their 16 bf16 q values by their 16 rows of W_UK (wk: rows 4 (tid % 4) .. + 3, columns
// 8 (tid / 4) .. + 7, loaded before the PDL wait; the 4 row groups meet by shuffles), and block j of
// the cluster sums its slice of the columns over the cluster's partials in rank order.
__device__ void absorb_epilogue(const Gemv1Args& a, int kind, int head, int n0, const float (&v)[kG1Rows],
                                const uint4 (&wk)[4]) {
  const QkvAbsorbParams& q = a.ab;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int qd = q.nope + q.rope, D = q.kv_lora + q.rope;
  if (kind == 2) {
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < kG1Rows; ++r)
        if (n0 + r < a.N) static_cast<bf16*>(a.y)[n0 + r] = __float2bfloat16(v[r]);
    return;
  }
  if (kind == 1) {
    static_assert(kG1Rows == 2, "a warp holds one rope pair");
    if (lane == 0) {
      const int half = q.rope / 2, i = (n0 - head * qd - q.nope) / 2;
      const float x0 = bf16r(v[0]), x1 = bf16r(v[1]), cs = q.cossin[i], sn = q.cossin[half + i];
      bf16* dst = q.qfull + size_t(head) * D + q.kv_lora;
      rope_pair(x0, x1, cs, sn, dst[i], dst[half + i]);
    }
    return;
  }
  __shared__ float sq[kG1Warps * kG1Rows];
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < kG1Rows; ++r) sq[warp * kG1Rows + r] = bf16r(v[r]);
  __syncthreads();
  const int dg = tid & 3, c8 = (tid >> 2) * 8;
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int i = 0; i < 4; ++i) axpy8(sq[dg * 4 + i], wk[i], acc);
#pragma unroll
  for (int j = 0; j < 8; ++j) {  // (g0 + g1) + (g2 + g3) in every lane of the four
    acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], 1);
    acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], 2);
  }
  // Block j sums columns [j span, (j + 1) span): every block stores its partial of them into block j's
  // inbox (row = its rank), so that after one cluster barrier each block reads only its own memory.
  __shared__ __align__(16) float inbox[kQkvAbsorbLatent];
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  const int nb = int(cluster.num_blocks()), rank = int(cluster.block_rank());
  const int span = kQkvAbsorbLatent / nb;  // a multiple of 8 (nb a power of 2 up to 8)
  asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");  // every block has started (arrived at its start)
  DSV2_TRACE_MARK(2);
  if (dg == 0) {
    float* dst = cluster.map_shared_rank(inbox, c8 / span) + rank * span + c8 % span;
    *reinterpret_cast<float4*>(dst) = make_float4(acc[0], acc[1], acc[2], acc[3]);
    *reinterpret_cast<float4*>(dst + 4) = make_float4(acc[4], acc[5], acc[6], acc[7]);
  }
  cluster.sync();
  DSV2_TRACE_MARK(3);
  for (int i = tid; i < span; i += blockDim.x) {
    float sum = 0.f;
    for (int s = 0; s < nb; ++s) sum += inbox[s * span + i];
    q.qfull[size_t(head) * D + rank * span + i] = __float2bfloat16(sum);
  }
}

// y[0:K] = bf16 row `row` of a one-token attention output from its n_splits partials (AttnParams'
// part_o / part_ml layout, 1 < S <= kAttnCombineFewMax), computed as mla_combine_few_kernel computes
// it (the same operations in the same order, so the same bits), by the whole block into shared memory.
// Ends with a barrier.
__device__ void stage_combine_row(const float* __restrict__ part_o, const float* __restrict__ part_ml, int S, int row,
                                  int K, bf16* y) {
  __shared__ float sw[kAttnCombineFewMax + 1];  // split weights, then 1 / sum
  const int tid = threadIdx.x;
  const size_t base = size_t(row / kAttnRows) * S * kAttnRows + row % kAttnRows;
  const float* po = part_o + base * K;
  const size_t sstride = size_t(kAttnRows) * K;  // between splits
  // Two columns of this thread from every split; the first two are loaded together with the row
  // maxima and sums below (one round trip for both).
  float2 v[kAttnCombineFewMax];
  auto load = [&](int c) {
#pragma unroll
    for (int s = 0; s < kAttnCombineFewMax; ++s)
      v[s] = s < S && c < K ? __ldg(reinterpret_cast<const float2*>(po + s * sstride + c)) : make_float2(0.f, 0.f);
  };
  const int c0 = 2 * tid;
  load(c0);
  if (tid < 16) {
    const float* ml = part_ml + base * 2;  // split s at ml[s * kAttnRows * 2]
    float m = -INFINITY, l = 0.0f;
    if (tid < S) {
      l = ml[size_t(tid) * kAttnRows * 2 + 1];
      if (l > 0.0f) m = ml[size_t(tid) * kAttnRows * 2];
    }
    float L;
    sw[tid] = split_weight16(m, l, 0x0000ffffu, L);
    if (tid == 0) sw[kAttnCombineFewMax] = L > 0.0f ? 1.0f / L : 0.0f;
  }
  __syncthreads();
  const float inv = sw[kAttnCombineFewMax];
  for (int c = c0; c < K; c += 2 * blockDim.x) {
    if (c != c0) load(c);
    float2 acc = make_float2(0.0f, 0.0f);
#pragma unroll
    for (int s = 0; s < kAttnCombineFewMax; ++s) {
      const float ws = s < S ? sw[s] : 0.0f;
      if (ws == 0.0f) continue;
      acc.x += ws * v[s].x;
      acc.y += ws * v[s].y;
    }
    *reinterpret_cast<__nv_bfloat162*>(y + c) = __floats2bfloat162_rn(acc.x * inv, acc.y * inv);
  }
  __syncthreads();
}

// kRoute: y[n] = y[n] + the product (each row written by one lane, the old value loaded before the PDL
// wait), and the block's partial router logits of the new rows: part[e] = sum over its 16 rows n of
// route_w[e, n] * y[n], for route_in_gu.
//
// kAbsorb (with kNorm; gemv1_norm_absorb): blocks map to rows through absorb_row0, and the epilogue is
// absorb_epilogue's (the q_nope blocks' W_UK rows are loaded before the PDL wait too).
// The minimum of blocks per SM, which sets the register allocation and so which kernels' blocks can share
// an SM (measured on the H200 at batch 1, alternating builds in one call):
// - 2 for kAbsorb: at most 128 registers, as it compiles anyway (builds with the kernel timeline would
//   otherwise exceed that, and the q/kv product needs two blocks per SM).
// - 1 for o_proj (kRoute): 131 registers, one block per SM (and no room for a MoE gate/up block beside
//   it); at 127 registers (two per SM, or one beside a gate/up block) batch 1 fell from 597 to 583 tok/s.
// - 2 for the W_UV product (kComb): 127 registers instead of 139: 598.4-598.8 against 597.1-597.5.
// - 1 for the plain forms (121 registers; without a stated minimum 102: not measured alone).
template <bool kF32Out, bool kNorm, bool kComb = false, bool kRoute = false, bool kAbsorb = false>
__global__ void __launch_bounds__(kG1Warps * 32, kAbsorb || kComb ? 2 : 1) gemv1_kernel(const Gemv1Args a) {
  DSV2_TRACE(kAbsorb  ? kTrQkvAbsorb
             : kComb  ? kTrGemv1Comb
             : kNorm  ? kTrGemv1Norm
             : kF32Out ? kTrGemv1F32
                       : kTrGemv1Bf16);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int N = a.N, K = a.K;
  [[maybe_unused]] int ab_head = -1, ab_kind = 2;
  const int n0 = (kAbsorb ? absorb_row0(a, blockIdx.x, ab_head, ab_kind) : blockIdx.x * kG1Warps * kG1Rows) +
                 warp * kG1Rows;
  const int h = min(n0, N - 1) / a.n_head;  // every row of the warp is in this head (checked by the launcher)
  const bf16* wr[kG1Rows];
#pragma unroll
  for (int r = 0; r < kG1Rows; ++r) {
    const int n = min(n0 + r, N - 1);
    wr[r] = a.w + (size_t(h) * a.w_head_rows + (n - h * a.n_head)) * K;
  }
  uint4 wv[kG1Rows][kG1U];
  const unsigned long long pol = l2_policy(a.evict_first);
  auto load = [&](int kk) {
#pragma unroll
    for (int u = 0; u < kG1U; ++u) {
      const int k = kk + (u * 32 + lane) * 8;
#pragma unroll
      for (int r = 0; r < kG1Rows; ++r) wv[r][u] = ld_weight(wr[r] + k, k < K && n0 + r < N, pol);
    }
  };
  load(0);
  if (kNorm && warp == 0) prefetch_l2_floats(a.norm_w, K, lane);
  if (kComb && a.l2_next && threadIdx.x == 0) {
    const unsigned sl = (a.l2_next_bytes / 16 + gridDim.x - 1) / gridDim.x * 16, o = blockIdx.x * sl;
    if (o < a.l2_next_bytes)
      bulk_prefetch_l2(static_cast<const unsigned char*>(a.l2_next) + o, min(sl, a.l2_next_bytes - o));
  }
  // kAbsorb, q_nope blocks: W_UK rows 4 (tid % 4) .. + 3 of the block's 16 q rows, columns 8 (tid / 4) .. + 7
  [[maybe_unused]] uint4 wk[4];
  if constexpr (kAbsorb) {
    if (ab_kind == 0) {
      // the first phase of the cluster barrier: its wait in absorb_epilogue says every block has started
      asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
      const int d0 = n0 - warp * kG1Rows - ab_head * (a.ab.nope + a.ab.rope) + 4 * (threadIdx.x & 3);
      const bf16* p = a.ab.uk + (size_t(ab_head) * a.ab.uk_head_rows + d0) * kQkvAbsorbLatent + (threadIdx.x >> 2) * 8;
#pragma unroll
      for (int i = 0; i < 4; ++i) wk[i] = ld_weight(p + size_t(i) * kQkvAbsorbLatent, true, pol);
    }
  }
  // kRoute: the old residual of this warp's rows (nothing between its last writer and this kernel
  // writes it) and this thread's first router piece: expert tid / 4, rows 4 * (tid % 4) .. + 3
  constexpr int kBlockRows = kG1Warps * kG1Rows;
  [[maybe_unused]] float y_old[kG1Rows];
  [[maybe_unused]] float4 rw4 = make_float4(0.f, 0.f, 0.f, 0.f);
  const int rb = blockIdx.x * kBlockRows, tid = threadIdx.x;
  if constexpr (kRoute) {
#pragma unroll
    for (int r = 0; r < kG1Rows; ++r) y_old[r] = n0 + r < N ? static_cast<const float*>(a.y)[n0 + r] : 0.f;
    if (tid / 4 < a.route_E)
      rw4 = *reinterpret_cast<const float4*>(a.route_w + size_t(tid / 4) * N + rb + 4 * (tid % 4));
  }
  pdl_entry();
  // x pieces come from shared memory (kNorm: the block normalizes the row there once) or straight
  // from global memory with all loads of a piece issued together (no branch between them).
  __shared__ __align__(16) bf16 sxn[kNorm || kComb ? 256 * kG1U : 8];
  if constexpr (kNorm) {
    __shared__ float red[kG1Warps];
    stage_rmsnorm_bf16(a.xf, a.norm_w, K, a.eps, sxn, red);
  }
  if constexpr (kComb) stage_combine_row(a.part_o, a.part_ml, a.n_splits, h, K, sxn);  // the block is in head h
  [[maybe_unused]] __shared__ float ynew[kRoute ? kBlockRows : 1];
  const bf16* xh = kNorm || kComb ? sxn : a.x + size_t(h) * a.x_head;
  DSV2_TRACE_MARK(0);
  float acc[kG1Rows];
#pragma unroll
  for (int r = 0; r < kG1Rows; ++r) acc[r] = 0.f;
  for (int kk = 0; kk < K; kk += kG1U * 256) {
    if (kk > 0) load(kk);
    uint4 xq[kG1U];
#pragma unroll
    for (int u = 0; u < kG1U; ++u) {
      const int k = kk + (u * 32 + lane) * 8;
      xq[u] = k < K ? *reinterpret_cast<const uint4*>(xh + k) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kG1U; ++u)
#pragma unroll
      for (int r = 0; r < kG1Rows; ++r) dot8(wv[r][u], xq[u], acc[r]);
  }
  DSV2_TRACE_MARK(1);
  if constexpr (kAbsorb) {
    float v[kG1Rows];  // the warp's outputs, in every lane
#pragma unroll
    for (int r = 0; r < kG1Rows; ++r) {
      v[r] = acc[r];
      for (int o = 16; o > 0; o >>= 1) v[r] += __shfl_xor_sync(0xffffffffu, v[r], o);
    }
    absorb_epilogue(a, ab_kind, ab_head, n0, v, wk);
  } else {
#pragma unroll
    for (int r = 0; r < kG1Rows; ++r) {
      float v = acc[r];
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0 && n0 + r < N) {
        if constexpr (kRoute) {
          const float yn = y_old[r] + v;  // the same fp32 sum as the atomic add
          static_cast<float*>(a.y)[n0 + r] = yn;
          ynew[warp * kG1Rows + r] = yn;
        } else if constexpr (kF32Out) {
          float* yf = static_cast<float*>(a.y);
          if (a.accumulate)
            atomicAdd(yf + n0 + r, v);  // the only writer of this element: x + v, without a round trip
          else
            yf[n0 + r] = v;
        } else {
          static_cast<bf16*>(a.y)[n0 + r] = __float2bfloat16(v);
        }
      }
    }
  }
  if constexpr (kRoute) {
    __syncthreads();
    DSV2_TRACE_MARK(2);
    const int C = route_part_stride(a.route_E);
    float* out = a.route_part + size_t(blockIdx.x) * C;
    const int q = tid % 4;
    for (int e = tid / 4; e < a.route_E; e += kG1Warps * 8) {
      if (e != tid / 4) rw4 = *reinterpret_cast<const float4*>(a.route_w + size_t(e) * N + rb + 4 * q);
      float pe = rw4.x * ynew[4 * q] + rw4.y * ynew[4 * q + 1] + rw4.z * ynew[4 * q + 2] + rw4.w * ynew[4 * q + 3];
      pe += __shfl_xor_sync(0xffffffffu, pe, 1);  // the 4 threads of expert e are adjacent lanes
      pe += __shfl_xor_sync(0xffffffffu, pe, 2);
      if (q == 0) out[e] = pe;
    }
  }
}

}  // namespace

// What every gemv1 launch settles the same way: one head when none is given, the checks, the L2 hint.
static void prepare_gemv1(Gemv1Args& a) {
  if (a.n_head <= 0 || a.n_head >= a.N) {
    a.n_head = a.N;
    a.w_head_rows = 0;
    a.x_head = 0;
  }
  DSV2_CHECK(a.K % 8 == 0 && (a.n_head == a.N || a.n_head % kG1Rows == 0), "gemv1: K {} or head width {} unsupported",
             a.K, a.n_head);
  a.evict_first = (l2_hint_mask() & 1) != 0;
}

static void launch_gemv1(Gemv1Args a, bool out_f32, cudaStream_t s) {
  if (a.N == 0) return;
  prepare_gemv1(a);
  const dim3 grid(unsigned((a.N + kG1Warps * kG1Rows - 1) / (kG1Warps * kG1Rows)));
  const dim3 block(kG1Warps * 32);
  if (a.part_o) {
    launch_pdl(gemv1_kernel<false, false, true>, grid, block, 0, s, a);
  } else if (a.norm_w) {
    DSV2_CHECK(!out_f32 && a.K <= 256 * kG1U && a.n_head == a.N, "gemv1: normalized input with K {} unsupported", a.K);
    launch_pdl(gemv1_kernel<false, true>, grid, block, 0, s, a);
  } else if (a.route_w) {
    launch_pdl(gemv1_kernel<true, false, false, true>, grid, block, 0, s, a);
  } else if (out_f32) {
    launch_pdl(gemv1_kernel<true, false>, grid, block, 0, s, a);
  } else {
    launch_pdl(gemv1_kernel<false, false>, grid, block, 0, s, a);
  }
  DSV2_CUDA_LAUNCHED();
}

void gemv1(const bf16* x, const bf16* w, int N, int K, void* y, bool out_f32, cudaStream_t s, int n_head,
           long long w_head_rows, long long x_head) {
  launch_gemv1(Gemv1Args{x, nullptr, nullptr, 0.f, w, N, K, n_head, w_head_rows, x_head, y, false, false}, out_f32, s);
}

bool gemv1_combine_supported(const AttnParams& p, int K, int n_head) {
  return p.n_splits > 1 && p.n_splits <= kAttnCombineFewMax && K % 8 == 0 && K <= 256 * kG1U && n_head > 0 &&
         n_head % (kG1Warps * kG1Rows) == 0;
}

void gemv1_combine(const AttnParams& p, const bf16* w, int N, int K, bf16* y, cudaStream_t s, int n_head,
                   long long w_head_rows, const void* l2_next, size_t l2_next_bytes) {
  DSV2_CHECK(gemv1_combine_supported(p, K, n_head) && N % n_head == 0 && N / n_head <= p.heads,
             "gemv1_combine: {} splits, K {}, head width {}, N {} unsupported", p.n_splits, K, n_head, N);
  Gemv1Args a{nullptr, nullptr, nullptr, 0.f, w, N, K, n_head, w_head_rows, 0, y, false, false};
  a.part_o = p.part_o;
  a.part_ml = p.part_ml;
  a.n_splits = p.n_splits;
  if (l2_next) {
    DSV2_CHECK(l2_next_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(l2_next) % 16 == 0 &&
                   l2_next_bytes < (size_t(1) << 32),
               "gemv1_combine: L2 range of {} bytes unsupported", l2_next_bytes);
    a.l2_next = l2_next;
    a.l2_next_bytes = unsigned(l2_next_bytes);
  }
  launch_gemv1(a, false, s);
}

void gemv1_accumulate(const bf16* x, const bf16* w, int N, int K, float* y, cudaStream_t s) {
  launch_gemv1(Gemv1Args{x, nullptr, nullptr, 0.f, w, N, K, 0, 0, 0, y, true, false}, true, s);
}

int gemv1_route_parts(int N) { return N % (kG1Warps * kG1Rows) == 0 ? N / (kG1Warps * kG1Rows) : 0; }

void gemv1_accumulate_route(const bf16* x, const bf16* w, int N, int K, float* y, const float* route_w, int E,
                            float* route_part, cudaStream_t s) {
  DSV2_CHECK(gemv1_route_parts(N) > 0 && E > 0 && K % 8 == 0, "gemv1_accumulate_route: N {}, E {}, K {} unsupported",
             N, E, K);
  Gemv1Args a{x, nullptr, nullptr, 0.f, w, N, K, 0, 0, 0, y, true, false};
  a.route_w = route_w;
  a.route_part = route_part;
  a.route_E = E;
  launch_gemv1(a, true, s);  // N % 16 == 0: one block per 16 rows, as the partials assume
}

bool gemv1_norm_supported(int K) { return K % 8 == 0 && K <= 256 * kG1U; }

void gemv1_norm(const float* x, const float* norm_w, float eps, const bf16* w, int N, int K, bf16* y,
                cudaStream_t s) {
  launch_gemv1(Gemv1Args{nullptr, x, norm_w, eps, w, N, K, 0, 0, 0, y, false, false}, false, s);
}

bool gemv1_norm_absorb_supported(int K, const QkvAbsorbParams& p) {
  const int nb = p.nope / 16;  // q_nope blocks per head: the cluster size, a power of 2 up to 8
  return device_is_hopper() && gemv1_norm_supported(K) && p.kv_lora == kQkvAbsorbLatent && p.nope % 16 == 0 &&
         nb >= 1 && nb <= 8 && (nb & (nb - 1)) == 0 && p.rope % 16 == 0 && p.rope > 0 && p.heads > 0 &&
         p.uk_head_rows >= p.nope && reinterpret_cast<uintptr_t>(p.uk) % 16 == 0;
}

void gemv1_norm_absorb(const float* x, const float* norm_w, float eps, const bf16* w, int K, bf16* y,
                       const QkvAbsorbParams& p, cudaStream_t s) {
  DSV2_CHECK(gemv1_norm_absorb_supported(K, p), "gemv1_norm_absorb: K {}, heads {}, nope {}, rope {}, kv_lora {}", K,
             p.heads, p.nope, p.rope, p.kv_lora);
  const int N = p.heads * (p.nope + p.rope) + p.kv_lora + p.rope, nb = p.nope / 16;
  Gemv1Args a{nullptr, x, norm_w, eps, w, N, K, 0, 0, 0, y, false, false};
  a.ab = p;
  prepare_gemv1(a);
  // blocks: the q_nope clusters, the q_pe pieces, the kv row's pieces, padded to whole clusters
  const int blocks = p.heads * nb + p.heads * (p.rope / 16) + (p.kv_lora + p.rope + 15) / 16;
  const dim3 grid(unsigned((blocks + nb - 1) / nb * nb));
  launch_ex(gemv1_kernel<false, true, false, false, true>, grid, dim3(kG1Warps * 32), 0, s, dim3(unsigned(nb), 1, 1),
            true, a);
  DSV2_CUDA_LAUNCHED();
}

void gemv_rows(const bf16* x, int ldx, int M, const bf16* w, int N, int K, void* y, bool out_f32, int ldy,
               cudaStream_t s) {
  if (M == 0) return;
  DSV2_CHECK(M <= kGemvRows && K % 8 == 0 && ldx % 8 == 0, "gemv_rows: {} rows (at most {}), K {}, ldx {}", M,
             kGemvRows, K, ldx);
  if (M == 1) {
    gemv1(x, w, N, K, y, out_f32, s);
    return;
  }
  const dim3 grid((N + kGemvWarps - 1) / kGemvWarps);
  const size_t sm = size_t(M) * K * sizeof(bf16);
  if (out_f32)
    launch_pdl(gemv_kernel<true>, dim3(grid), dim3(kGemvWarps * 32), sm, s, x, ldx, M, w, N, K, y, ldy);
  else
    launch_pdl(gemv_kernel<false>, dim3(grid), dim3(kGemvWarps * 32), sm, s, x, ldx, M, w, N, K, y, ldy);
  DSV2_CUDA_LAUNCHED();
}

// ---------------------------------------------------------------------------------------------
// One-token MoE without dispatch: the routed rows read the router's ids directly, the shared
// experts are the pseudo-experts E..E+S-1, and the down product sums the token's rows with their
// weights straight into y. Both kernels follow gemv1: many small blocks, each warp issuing all its
// weight loads of a 2048-column piece at once (before the PDL wait where the addresses allow).

// Gate/up + SiLU: block (kGuIdx intermediate indices, grid row). Grid rows 0..S-1 are the shared
// pieces (first, so that the block scheduler starts them while the router runs), then the K routed
// experts; act row y = K + s for shared piece s, y = k for routed expert k. Warp w streams the gate
// and up rows of index blockIdx.x * kGuIdx + w and writes act = bf16(silu(bf16 g) * bf16 u), as
// silu_mul would from bf16 g/u. Shared rows do not
// depend on the router (the kernel before this one) and skip the PDL wait: x is complete before the
// router started. With norm_w, x is the fp32 residual stream, normalized into shared memory here.
constexpr int kGuIdx = 8;
__global__ void __launch_bounds__(kGuIdx * 32) moe_rows_gu_kernel(MoeRowsParams p) {
  DSV2_TRACE(kTrMoeGu);
  extern __shared__ __align__(16) unsigned char smem_rows[];
  bf16* sx = reinterpret_cast<bf16*>(smem_rows);
  __shared__ float red[kGuIdx];
  const bool routed = int(blockIdx.y) >= p.S;
  const int y = routed ? blockIdx.y - p.S : p.K + blockIdx.y, H = p.H, I = p.I;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int i = blockIdx.x * kGuIdx + warp;
  if (p.norm_w && warp == 0) prefetch_l2_floats(p.norm_w, H, lane);
  int e;
  if (routed) {
    pdl_entry();
    e = p.ids[y];
  } else {
    pdl_launch();
    e = p.E + (y - p.K);
  }
  const bf16* wg = p.w_gu + (size_t(e) * 2 * I + min(i, I - 1)) * H;
  const bf16* wu = wg + size_t(I) * H;
  uint4 wv[2][kG1U];
  const unsigned long long pol = l2_policy(p.evict_first);
  auto load = [&](int kk) {
#pragma unroll
    for (int u = 0; u < kG1U; ++u) {
      const int k = kk + (u * 32 + lane) * 8;
      const bool ok = k < H && i < I;
      wv[0][u] = ld_weight(wg + k, ok, pol);
      wv[1][u] = ld_weight(wu + k, ok, pol);
    }
  };
  load(0);
  if (p.norm_w) {
    stage_rmsnorm_bf16(p.xf, p.norm_w, H, p.eps, sx, red);  // add_rmsnorm's bf16 values
  } else {
    for (int c = tid; c < H / 8; c += blockDim.x)
      reinterpret_cast<uint4*>(sx)[c] = reinterpret_cast<const uint4*>(p.x)[c];
  }
  __syncthreads();
  float ag = 0.f, au = 0.f;
  for (int kk = 0; kk < H; kk += kG1U * 256) {
    if (kk > 0) load(kk);
#pragma unroll
    for (int u = 0; u < kG1U; ++u) {
      const int k = kk + (u * 32 + lane) * 8;
      if (k >= H) break;
      dot8_gate_up(wv[0][u], wv[1][u], *reinterpret_cast<const uint4*>(sx + k), ag, au);
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    ag += __shfl_xor_sync(0xffffffffu, ag, o);
    au += __shfl_xor_sync(0xffffffffu, au, o);
  }
  if (lane == 0 && i < I) {
    p.act[size_t(y) * I + i] = __float2bfloat16(silu_times_bf16(ag, au));
  }
}

// Down + combine: block (kDownCols outputs). Warp w takes output n = n0 + w / 2 and half w % 2 of the
// K + S rows; its lanes walk the flattened (row, 16-byte piece) list of that half, kDownU pieces per
// lane in flight, each piece's dot product scaled by its row weight. The expert rows are known once
// the router has run (two kernels back), so the first pieces are loaded before the PDL wait for the
// gate/up kernel; the activations then come to shared memory. The two halves are added in order.
constexpr int kDownCols = 4, kDownU = 24, kDownMaxRows = 32;
__global__ void __launch_bounds__(kDownCols * 64) moe_rows_down_kernel(MoeRowsParams p) {
  DSV2_TRACE(kTrMoeDown);
  extern __shared__ __align__(16) unsigned char smem_rows[];
  const int n0 = blockIdx.x * kDownCols;
  const int I = p.I, H = p.H, nrow = p.K + p.S;
  bf16* sa = reinterpret_cast<bf16*>(smem_rows);  // [nrow, I]
  __shared__ const bf16* wbase[kDownMaxRows];
  __shared__ float wrow[kDownMaxRows];
  __shared__ float part[kDownCols * 2];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int n = min(n0 + (warp >> 1), H - 1);
  const int rh = (nrow + 1) / 2, j0 = (warp & 1) * rh, nj = min(rh, nrow - j0);
  const int nck = I / 8, nf = nj * nck;
  // row j < S: shared piece j; else routed expert j - S (router order)
  if (tid < nrow) {
    const int j = tid;
    const int e = j < p.S ? p.E + j : p.ids[j - p.S];
    wbase[j] = p.w_down + size_t(e) * H * I;
  }
  __syncthreads();
  uint4 wv[kDownU];
  const unsigned long long pol = l2_policy(p.evict_first);
  auto load = [&](int f0) {
#pragma unroll
    for (int u = 0; u < kDownU; ++u) {
      const int f = f0 + u * 32 + lane;
      if (f < nf) {
        const int jj = f / nck, c = f - jj * nck;
        wv[u] = ld_weight(wbase[j0 + jj] + size_t(n) * I + size_t(c) * 8, true, pol);
      } else {
        wv[u] = make_uint4(0, 0, 0, 0);
      }
    }
  };
  load(0);
  pdl_entry();
  for (int c = tid; c < nrow * nck; c += blockDim.x) {
    const int j = c / nck, cc = c - j * nck;
    const size_t src = j < p.S ? size_t(p.K) + j : size_t(j - p.S);  // act rows: routed 0..K-1, shared K..
    reinterpret_cast<uint4*>(sa + size_t(j) * I)[cc] = reinterpret_cast<const uint4*>(p.act + src * I)[cc];
  }
  if (tid < nrow) wrow[tid] = tid < p.S ? 1.0f : p.weights[tid - p.S];
  __syncthreads();
  float tot = 0.f;
  for (int f0 = 0; f0 < nf; f0 += 32 * kDownU) {
    if (f0 > 0) load(f0);
#pragma unroll
    for (int u = 0; u < kDownU; ++u) {
      const int f = f0 + u * 32 + lane;
      if (f >= nf) break;
      const int jj = f / nck, c = f - jj * nck;
      float d = 0.f;
      dot8(wv[u], *reinterpret_cast<const uint4*>(sa + size_t(j0 + jj) * I + size_t(c) * 8), d);
      tot += wrow[j0 + jj] * d;
    }
  }
  for (int o = 16; o > 0; o >>= 1) tot += __shfl_xor_sync(0xffffffffu, tot, o);
  if (lane == 0) part[warp] = tot;
  __syncthreads();
  if (tid < kDownCols && n0 + tid < H) {
    float* yo = p.y + n0 + tid;
    const float v = part[2 * tid] + part[2 * tid + 1];
    *yo = p.accumulate ? *yo + v : v;
  }
}

bool moe_rows_supported(int T, int K, int S, int H, int I) {
  const size_t down_smem = size_t(K + S) * I * sizeof(bf16);
  return T == 1 && K + S <= kDownMaxRows && H % 8 == 0 && I % 8 == 0 && size_t(H) * sizeof(bf16) <= 48 * 1024 &&
         down_smem <= 48 * 1024;
}

void moe_rows(const MoeRowsParams& params, cudaStream_t s, int stages) {
  MoeRowsParams p = params;
  DSV2_CHECK(moe_rows_supported(p.T, p.K, p.S, p.H, p.I), "moe_rows: T {} K {} S {} H {} I {} not supported", p.T,
             p.K, p.S, p.H, p.I);
  p.evict_first = (l2_hint_mask() & 2) != 0;
  if (stages & 1)
    launch_pdl(moe_rows_gu_kernel, dim3((p.I + kGuIdx - 1) / kGuIdx, p.K + p.S), dim3(kGuIdx * 32),
               size_t(p.H) * sizeof(bf16), s, p);
  if (stages & 2)
    launch_pdl(moe_rows_down_kernel, dim3((p.H + kDownCols - 1) / kDownCols), dim3(kDownCols * 64),
               size_t(p.K + p.S) * p.I * sizeof(bf16), s, p);
  DSV2_CUDA_LAUNCHED();
}

template <class C, bool kF32Out, bool kGather, bool kSwiGLU = false>
static void launch_tiles(const bf16* x, const bf16* w, const int32_t* tile_info, int max_tiles, int N, int K, void* y,
                         cudaStream_t s, const int32_t* x_rows, bool tile_fast) {
  constexpr size_t smem = C::kSmemBytes;
  raise_smem_limit<moe_gemm_kernel<C, kF32Out, kGather, kSwiGLU>>(smem);
  constexpr int BNO = kSwiGLU ? C::BN / 2 : C::BN;
  const unsigned col_blocks = unsigned((N + BNO - 1) / BNO);
  const dim3 grid = tile_fast ? dim3(unsigned(max_tiles), col_blocks) : dim3(col_blocks, unsigned(max_tiles));
  launch_pdl(moe_gemm_kernel<C, kF32Out, kGather, kSwiGLU>, grid, dim3(C::THREADS), smem, s, x, w, tile_info, max_tiles, N, K,
             y, x_rows, tile_fast, (l2_hint_mask() & 8) != 0);
  DSV2_CUDA_LAUNCHED();
}

template <class C>
static void launch_cfg(const bf16* x, const bf16* w, const int32_t* tile_info, int max_tiles, int N, int K, void* y,
                       bool out_f32, cudaStream_t s, const int32_t* x_rows, bool tile_fast) {
  // The gathered form is only needed for the first product (bf16 out).
  DSV2_CHECK(!(x_rows && out_f32), "moe_gemm: gathered rows with f32 output");
  if (x_rows)
    launch_tiles<C, false, true>(x, w, tile_info, max_tiles, N, K, y, s, x_rows, tile_fast);
  else if (out_f32)
    launch_tiles<C, true, false>(x, w, tile_info, max_tiles, N, K, y, s, nullptr, tile_fast);
  else
    launch_tiles<C, false, false>(x, w, tile_info, max_tiles, N, K, y, s, nullptr, tile_fast);
}

void moe_gemm(const bf16* x, const bf16* w, const int32_t* tile_info, int max_tiles, int tile_m, int N, int K,
              void* y, bool out_f32, cudaStream_t s, const int32_t* x_rows, bool tile_fast) {
  if (max_tiles == 0) return;
  DSV2_CHECK(tile_m == CfgSmall::BM || tile_m == CfgLarge::BM, "moe_gemm: tile rows {} ({} or {})", tile_m,
             CfgSmall::BM, CfgLarge::BM);
  if (K % 8 != 0 || N % 2 != 0) {
    moe_gemm_naive_kernel<<<dim3(std::min(64, (tile_m * N + 255) / 256), max_tiles), 256, 0, s>>>(
        x, w, tile_info, max_tiles, N, K, y, out_f32, x_rows);
    DSV2_CUDA_LAUNCHED();
    return;
  }
  if (tile_m == CfgSmall::BM)
    launch_cfg<CfgSmall>(x, w, tile_info, max_tiles, N, K, y, out_f32, s, x_rows, tile_fast);
  else
    launch_cfg<CfgLarge>(x, w, tile_info, max_tiles, N, K, y, out_f32, s, x_rows, tile_fast);
}

void moe_gemm_swiglu(const bf16* x, const bf16* w, const int32_t* tile_info, int max_tiles, int tile_m, int I, int K,
                     bf16* act, cudaStream_t s, const int32_t* x_rows, bool tile_fast) {
  if (max_tiles == 0) return;
  DSV2_CHECK(moe_swiglu_supported(I, K) && x_rows, "moe_gemm_swiglu: I {} K {} (multiples of 8, gathered rows)", I,
             K);
  DSV2_CHECK(tile_m == CfgSmall::BM || tile_m == CfgLarge::BM, "moe_gemm_swiglu: tile rows {} ({} or {})", tile_m,
             CfgSmall::BM, CfgLarge::BM);
  if (tile_m == CfgSmall::BM)
    launch_tiles<CfgSmall, false, true, true>(x, w, tile_info, max_tiles, I, K, act, s, x_rows, tile_fast);
  else
    launch_tiles<CfgLarge, false, true, true>(x, w, tile_info, max_tiles, I, K, act, s, x_rows, tile_fast);
}

DSV2_TRACE_BINDER(trace_bind_moe_gemm)

}  // namespace dsv2::cuda
