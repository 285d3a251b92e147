// Absorbed MLA attention over the paged latent cache (reference section 3, "Absorbed MLA"):
// multi-query attention with one shared KV row of width D = kv_lora + rope per position, where the
// value is the first kv_lora columns of the same row.
//
// One block (8 warps) owns kAttnRows = 16 (token, head) rows of one sequence chunk (rows are
// token-major: with 16 heads an item is one token, with 128 heads a token spans 8 items, with an odd
// head count an item straddles tokens; the causal limit is per row). It walks its share of the cache
// kPos = 32 positions (half a cache block) at a time through a kStages-deep ring of shared-memory
// tiles filled with cp.async, so that the next tile streams in while the current one is computed.
// Per tile:
//   1. S = Q K^T [16 x 32] with mma.sync m16n8k16 (bf16 in, fp32 out): warp w computes all 32
//      positions over one eighth of the D columns (so Q and K are read from shared memory once),
//      and the 8 partial sums meet in shared memory (one barrier).
//   2. Warp w applies the causal mask and the online softmax to rows 2w and 2w + 1 (16 lanes per
//      row) and writes the bf16 weights P and each row's rescale factor to shared memory (barrier).
//   3. Every warp rescales its O slice, loads P as A fragments (ldmatrix) and accumulates
//      O[:, 64w : 64w + 64] += P V with V = the tile's first columns (ldmatrix.trans of [pos][col]).
// O lives in registers ([16 x 64] fp32 per warp), so no accumulator traffic goes through shared
// memory. With D = 576 the block uses ~96 KB of shared memory: two blocks per SM. When the cache
// range is split across blocks (long contexts, small batches) a block writes its unnormalized O with
// its row max and sum, and a combine pass merges the splits.
#include <cooperative_groups.h>

#include <cstdint>

#include "backend/cuda/bf16_math.cuh"
#include "backend/cuda/mma.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/trace.cuh"
#include "common/error.h"

namespace dsv2::cuda {

namespace {

constexpr int kRows = kAttnRows;           // one m16 tile of (token, head) rows
static_assert(kRows == 16, "the kernel's fragments assume one m16 tile of rows");
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kPos = 32;                   // cache positions per pipeline step
constexpr int kStages = 2;                 // shared-memory ring: both filled first, then each refilled after use
constexpr int kSTiles = kPos / 8;          // n8 tiles of S per step
constexpr int kKSplit = kWarps;            // S partial sums: warp w covers one eighth of D
constexpr int kPvSteps = kPos / 16;        // k16 steps of the P V product
constexpr int LDSS = kPos + 8;             // f32 S row stride (conflict-free float2 accesses)
constexpr int LDP = kPos + 8;              // bf16 P row stride (conflict-free ldmatrix)
static_assert(kAttnTile % kPos == 0, "a step must stay inside one cache block");
static_assert(kSTiles % 2 == 0 && kPos % 16 == 0, "warp split of S");

// Shared layout for row width D, value width DV and NTW n8 output tiles per warp. Rows of Q and of
// the cache tiles are LDK bf16 wide: a multiple of 64 plus 8, so that the 8 rows of an ldmatrix
// land on distinct 16-byte bank groups. Columns [D, LDK) are zero.
struct Layout {
  int ksteps;  // k16 steps of the S product (D rounded up to 16)
  int LDK;
  size_t q, k, s, p, f, bytes;
};

__host__ __device__ inline Layout make_layout(int D, int NTW) {
  Layout L;
  L.ksteps = (D + 15) / 16;
  const int dvp = NTW * 8 * kWarps;
  const int w = L.ksteps * 16 > dvp ? L.ksteps * 16 : dvp;
  L.LDK = (w + 63) / 64 * 64 + 8;
  L.q = 0;
  L.k = L.q + size_t(kRows) * L.LDK * 2;
  L.s = L.k + size_t(kStages) * kPos * L.LDK * 2;
  L.p = L.s + size_t(kKSplit) * kRows * LDSS * 4;
  L.f = L.p + size_t(kRows) * LDP * 2;
  L.bytes = L.f + size_t(kRows) * 4;
  return L;
}


__device__ __forceinline__ void ldsm_x4(unsigned a, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned a, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(a));
}
__device__ __forceinline__ void ldsm_x2_t(unsigned a, uint32_t& r0, uint32_t& r1) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(a));
}

// d += a b for one m16n8k16 tile (bf16 inputs, fp32 accumulators).
__device__ __forceinline__ void mma16816(float* d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float fast_exp2(float x) {  // 2^x; 2^-inf = 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}


// Copies `rows` rows of D bf16 (global row stride D) into shared rows of stride LDK; rows at or past
// `valid` are zero-filled. mode 2: 16-byte cp.async, 1: 4-byte cp.async, 0: plain loads.
__device__ __forceinline__ void load_rows(bf16* dst, int LDK, const bf16* src, int rows, int valid, int D, int mode,
                                          int tid) {
  if (mode != 0) {
    // Piece i = tid + k * kThreads is (row r, piece c of the row); step (r, c) instead of dividing.
    const int e = mode == 2 ? 8 : 2, cpr = D / e;
    int r = tid / cpr, c = tid - r * cpr;
    const int dr = kThreads / cpr, dc = kThreads - dr * cpr;
    const unsigned sdst = smem_addr(dst);
    for (int i = tid; i < rows * cpr; i += kThreads) {
      const bool ok = r < valid;
      const unsigned sa = sdst + unsigned(r * LDK + c * e) * 2u;
      const bf16* ga = ok ? src + r * D + c * e : src;
      if (mode == 2)
        cp_async16(sa, ga, ok);
      else
        cp_async4(sa, ga, ok);
      r += dr;
      c += dc;
      if (c >= cpr) {
        c -= cpr;
        ++r;
      }
    }
  } else {
    for (int i = tid; i < rows * D; i += kThreads) {
      const int r = i / D, c = i - r * D;
      dst[r * LDK + c] = r < valid ? src[size_t(r) * D + c] : __float2bfloat16(0.0f);
    }
  }
}

// AttnParams::new_kv: this thread's constants for new_row (they do not depend on the kernel before, so
// they are loaded before the PDL wait): norm weights of latent pair tid, cos / sin of rope pair tid.
struct NewRowConsts {
  float2 w = make_float2(0.0f, 0.0f);
  float cs = 0.0f, sn = 0.0f;
};
__device__ __forceinline__ NewRowConsts new_row_consts(const AttnParams& p, int D, int DV) {
  NewRowConsts c;
  const int tid = threadIdx.x, half = (D - DV) / 2;
  if (2 * tid < DV) c.w = *reinterpret_cast<const float2*>(p.new_kv_norm + 2 * tid);
  if (tid < half) {
    c.cs = p.new_cossin[tid];
    c.sn = p.new_cossin[half + tid];
  }
  return c;
}

// This thread's part of p.new_kv's row normalized and roped (rope_and_cache's operations): latent pair
// tid and rope pair tid (DV <= 2 kThreads, D - DV <= 2 kThreads, DV % 8 == 0, D even: mla_attention
// checks). Every warp sums the squares of the whole latent itself (the same order in each), so no
// block barrier is needed. With `write` the pieces also go to the cache row.
struct NewRow {
  __nv_bfloat162 y;
  bf16 lo, hi;
};
__device__ NewRow new_row(const AttnParams& p, int D, int DV, const NewRowConsts& c, bool write) {
  const int tid = threadIdx.x, lane = tid & 31, half = (D - DV) / 2;
  const __nv_bfloat162* kv = reinterpret_cast<const __nv_bfloat162*>(p.new_kv);
  const float2 v = 2 * tid < DV ? __bfloat1622float2(kv[tid]) : make_float2(0.0f, 0.0f);
  const float2 r = tid < half ? __bfloat1622float2(kv[DV / 2 + tid]) : make_float2(0.0f, 0.0f);
  float ss = 0.0f;
  for (int k = lane; k < DV / 8; k += 32) {
    const uint4 u = reinterpret_cast<const uint4*>(p.new_kv)[k];
    const __nv_bfloat162* u2 = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = __bfloat1622float2(u2[j]);
      ss += f.x * f.x + f.y * f.y;
    }
  }
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  const float inv = kv_inv_rms(ss, DV);
  NewRow n;
  n.y = __floats2bfloat162_rn(c.w.x * (v.x * inv), c.w.y * (v.y * inv));
  rope_pair(r.x, r.y, c.cs, c.sn, n.lo, n.hi);
  if (write) {
    bf16* crow = p.new_cache + size_t(*p.new_slot) * D;
    if (2 * tid < DV) reinterpret_cast<__nv_bfloat162*>(crow)[tid] = n.y;
    if (tid < half) {
      crow[DV + tid] = n.lo;
      crow[DV + half + tid] = n.hi;
    }
  }
  return n;
}

// NTW: n8 output tiles per warp (8 for kv_lora 512: 8 warps x 64 columns). DC: the row width D
// when fixed at compile time (576 for DeepSeek-V2: all index arithmetic folds), 0 for any other.
template <int NTW, int DC>
__global__ void __launch_bounds__(kThreads, 2) mla_attn_kernel(AttnParams p, int Darg, int DV) {
  DSV2_TRACE(kTrAttn);
  extern __shared__ __align__(128) unsigned char smem[];
  const int D = DC > 0 ? DC : Darg;
  const Layout L = make_layout(D, NTW);
  const int LDK = L.LDK;
  bf16* sQ = reinterpret_cast<bf16*>(smem + L.q);
  bf16* sK = reinterpret_cast<bf16*>(smem + L.k);
  float* sS = reinterpret_cast<float*>(smem + L.s);
  bf16* sP = reinterpret_cast<bf16*>(smem + L.p);
  float* sF = reinterpret_cast<float*>(smem + L.f);  // per row: this tile's rescale factor, then 1 / sum

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int item = blockIdx.x, split = blockIdx.y;
  const int chunk = p.items[item * 4 + 0], row0 = p.items[item * 4 + 1];
  const int tok0 = p.chunks[chunk * 4 + 0], nq = p.chunks[chunk * 4 + 1], kvlen = p.chunks[chunk * 4 + 2];
  const int* btab = p.blocks + p.chunks[chunk * 4 + 3];
  const int heads = p.heads;
  const int qpos0 = kvlen - nq;
  const int nrows = min(kRows, nq * heads - row0);
  const int kv_end = qpos0 + (row0 + nrows - 1) / heads + 1;  // positions [0, kv_end) matter to this item
  const int ntiles = (kv_end + kPos - 1) / kPos;
  const int per = (ntiles + p.n_splits - 1) / p.n_splits;
  const int t_begin = min(ntiles, split * per), t_end = min(ntiles, t_begin + per);
  const size_t qrow0 = size_t(tok0) * heads + row0;  // global (token, head) row of local row 0
  const int mode = (D & 7) == 0 ? 2 : (D & 1) == 0 ? 1 : 0;

  // Zero the pad columns [D, LDK) of Q and of every stage (the copies never touch them).
  {
    const int padw = LDK - D, prow = kRows + kStages * kPos;
    for (int i = tid; i < prow * padw; i += kThreads) {
      const int r = i / padw, c = D + (i - r * padw);
      sQ[r * LDK + c] = __float2bfloat16(0.0f);  // sK rows follow sQ rows with the same stride
    }
  }
  // Rows [r0, r1) of tile `tile`, which lives in cache block blk (its block-table entry); rows at or
  // past kv_end are zero-filled.
  auto load_tile = [&](int stage, int tile, int blk, int r0, int r1) {
    const int j0 = tile * kPos;
    const bf16* src = p.cache + (size_t(blk) * kAttnTile + (j0 % kAttnTile)) * D;
    load_rows(sK + (stage * kPos + r0) * LDK, LDK, src + size_t(r0) * D, r1 - r0, kv_end - j0 - r0, D, mode, tid);
  };
  auto block_of = [&](int tile) { return tile < t_end ? __ldg(btab + tile * kPos / kAttnTile) : 0; };
  // The first kStages tiles fill the whole ring. Launched with PDL, the rows before this chunk's new
  // positions (written by earlier passes) are copied before the wait; q and the new rows (the kernel
  // before writes them) after it. One commit group per tile.
  int first_blk[kStages];
#pragma unroll
  for (int s = 0; s < kStages; ++s) first_blk[s] = block_of(t_begin + s);
  auto old_rows = [&](int tile) { return min(kPos, max(0, qpos0 - tile * kPos)); };
  // p.new_kv: the tile that holds the token's position takes the row new_row computes after the wait
  // (stored by store_new) instead of the cache's, which this kernel writes. fill() copies rows [r0, kPos)
  // of a tile, leaving that row out.
  const int new_tile =
      p.new_kv != nullptr && nq == 1 && qpos0 / kPos >= t_begin && qpos0 / kPos < t_end ? qpos0 / kPos : -1;
  NewRowConsts nrc;
  if (new_tile >= 0) nrc = new_row_consts(p, D, DV);
  auto fill = [&](int stage, int tile, int blk, int r0) {
    if (tile != new_tile) {
      load_tile(stage, tile, blk, r0, kPos);
      return;
    }
    const int nr = qpos0 - tile * kPos;
    load_tile(stage, tile, blk, r0, max(r0, nr));
    load_tile(stage, tile, blk, max(r0, nr + 1), kPos);  // past the new row: zero-filled
  };
  NewRow nrow{};
  auto store_new = [&](int stage) {  // visible after the barrier that opens the tile's step
    bf16* row = sK + (stage * kPos + qpos0 - new_tile * kPos) * LDK;
    const int half = (D - DV) / 2;
    if (2 * tid < DV) reinterpret_cast<__nv_bfloat162*>(row)[tid] = nrow.y;
    if (tid < half) {
      row[DV + tid] = nrow.lo;
      row[DV + half + tid] = nrow.hi;
    }
  };
  if (p.pdl) {
#pragma unroll
    for (int s = 0; s < kStages; ++s)
      if (t_begin + s < t_end) load_tile(s, t_begin + s, first_blk[s], 0, old_rows(t_begin + s));
    pdl_entry();  // q and the new cache rows come from the kernel before
  }
  if (t_begin < t_end) load_rows(sQ, LDK, p.q + qrow0 * D, kRows, nrows, D, mode, tid);
#pragma unroll
  for (int s = 0; s < kStages; ++s) {
    if (t_begin + s < t_end) fill(s, t_begin + s, first_blk[s], p.pdl ? old_rows(t_begin + s) : 0);
    cp_async_commit();
  }
  // The block-table entry of the next tile to fetch, read one step ahead so that its latency
  // never stalls the copy issue.
  int next_blk = block_of(t_begin + kStages);
  DSV2_TRACE_MARK(0);
  if (new_tile >= 0) {
    nrow = new_row(p, D, DV, nrc, item == 0);
    if (new_tile - t_begin < kStages) store_new(new_tile - t_begin);
  }
  DSV2_TRACE_MARK(1);

  // Softmax work: warp w owns rows 2w and 2w + 1, half a warp (16 lanes x 2 positions) per row.
  // Causal limit of that row; -1 for padding rows. The mask is applied only in tiles that reach
  // past the first row's limit; padding rows are never written out.
  const int srow = 2 * warp + (lane >> 4), scol = 2 * (lane & 15);
  const int spos = srow < nrows ? qpos0 + (row0 + srow) / heads : -1;
  const int pos_first = qpos0 + row0 / heads;        // the smallest limit (rows are token-major)
  const float sl2 = p.scale * 1.4426950408889634f;  // scores to log2 units

  float o[NTW][4];
#pragma unroll
  for (int n = 0; n < NTW; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_row = -INFINITY, l_row = 0.0f;  // running max (raw score units) and this lane's share of the sum

  // S split: this warp's k16 steps [kb, kb + kn) for all kPos positions (Q and K read once per tile).
  const int kbase = L.ksteps / kWarps, kextra = L.ksteps % kWarps;
  const int kn = kbase + (warp < kextra ? 1 : 0), kb = warp * kbase + min(warp, kextra);
  const int n0 = warp * NTW * 8;  // this warp's output columns
  const unsigned q_addr = smem_addr(sQ + (lane & 15) * LDK + (lane >> 4) * 8);
  const unsigned p_addr = smem_addr(sP + (lane & 15) * LDP + (lane >> 4) * 8);

  for (int tile = t_begin; tile < t_end; ++tile) {
    const int it = tile - t_begin;
    cp_async_wait<kStages - 1>();  // groups: one per tile, this one and the kStages - 1 after it issued
    __syncthreads();  // tile `it` visible; all warps are done with sS
    const bf16* sKt = sK + (it % kStages) * kPos * LDK;
    const int j0 = tile * kPos;

    // 1. Partial S over this warp's D range: one A fragment of Q per k16 step, reused for the
    //    kSTiles position tiles (independent accumulators).
    {
      float acc[kSTiles][4];
#pragma unroll
      for (int c = 0; c < kSTiles; ++c) acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = 0.0f;
      // B fragments two position tiles at a time: matrices (tile c, k 0-7), (c, k 8-15),
      // (c + 1, k 0-7), (c + 1, k 8-15).
      const unsigned k_addr =
          smem_addr(sKt + ((lane & 7) + (lane >> 4) * 8) * LDK + ((lane >> 3) & 1) * 8);
      auto step = [&](int k) {
        uint32_t a0, a1, a2, a3;
        ldsm_x4(q_addr + k * 32, a0, a1, a2, a3);
#pragma unroll
        for (int c = 0; c < kSTiles; c += 2) {
          uint32_t b0, b1, b2, b3;
          ldsm_x4(k_addr + unsigned(c * 8 * LDK * 2) + k * 32, b0, b1, b2, b3);
          mma16816(acc[c], a0, a1, a2, a3, b0, b1);
          mma16816(acc[c + 1], a0, a1, a2, a3, b2, b3);
        }
      };
      if (DC == 576 && kn == 5) {  // 36 k16 steps: warps 0-3 take 5, warps 4-7 take 4
#pragma unroll
        for (int i = 0; i < 5; ++i) step(kb + i);
      } else if (DC == 576 && kn == 4) {
#pragma unroll
        for (int i = 0; i < 4; ++i) step(kb + i);
      } else {
        for (int i = 0; i < kn; ++i) step(kb + i);
      }
      float* ss = sS + warp * kRows * LDSS + 2 * t4;
#pragma unroll
      for (int c = 0; c < kSTiles; ++c) {
        *reinterpret_cast<float2*>(ss + g * LDSS + c * 8) = make_float2(acc[c][0], acc[c][1]);
        *reinterpret_cast<float2*>(ss + (g + 8) * LDSS + c * 8) = make_float2(acc[c][2], acc[c][3]);
      }
    }
    __syncthreads();

    // 2. Online softmax of this warp's two rows: the weights go to sP as bf16, the rescale factor
    //    of each row to sF. Maxima are kept in raw score units; weights are 2^(s sl2 - m sl2).
    {
      float2 x = make_float2(0.0f, 0.0f);
#pragma unroll
      for (int s = 0; s < kKSplit; ++s) {
        const float2 a = *reinterpret_cast<const float2*>(sS + (s * kRows + srow) * LDSS + scol);
        x.x += a.x;
        x.y += a.y;
      }
      if (j0 + kPos - 1 > pos_first) {  // the tile reaches past some row's causal limit
        if (j0 + scol > spos) x.x = -INFINITY;
        if (j0 + scol + 1 > spos) x.y = -INFINITY;
      }
      float mx = fmaxf(m_row, fmaxf(x.x, x.y));
#pragma unroll
      for (int o2 = 8; o2 > 0; o2 >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o2));  // 16 lanes
      // A row with nothing visible yet keeps max -inf: subtract 0 instead (its weights are all 0).
      const float ref = mx == -INFINITY ? 0.0f : mx * sl2;
      const float f = fast_exp2(m_row * sl2 - ref);
      m_row = mx;
      const float e0 = fast_exp2(fmaf(x.x, sl2, -ref)), e1 = fast_exp2(fmaf(x.y, sl2, -ref));
      l_row = l_row * f + (e0 + e1);
      *reinterpret_cast<uint32_t*>(sP + srow * LDP + scol) = pack_bf16(e0, e1);
      if ((lane & 15) == 0) sF[srow] = f;
    }
    __syncthreads();
    {
      const float f_lo = sF[g], f_hi = sF[g + 8];
      if (__any_sync(0xffffffffu, f_lo != 1.0f || f_hi != 1.0f)) {  // rare once the maxima settle
#pragma unroll
        for (int n = 0; n < NTW; ++n) {
          o[n][0] *= f_lo;
          o[n][1] *= f_lo;
          o[n][2] *= f_hi;
          o[n][3] *= f_hi;
        }
      }
    }
    uint32_t pa[kPvSteps][4];
#pragma unroll
    for (int kk = 0; kk < kPvSteps; ++kk) ldsm_x4(p_addr + kk * 32, pa[kk][0], pa[kk][1], pa[kk][2], pa[kk][3]);

    // 3. O[:, n0 : n0 + 8 NTW] += P V.
#pragma unroll
    for (int kk = 0; kk < kPvSteps; ++kk) {
      const bf16* vrow = sKt + (kk * 16 + (lane & 15)) * LDK + n0;
      if constexpr (NTW == 1) {
        uint32_t b0, b1;
        ldsm_x2_t(smem_addr(vrow), b0, b1);
        mma16816(o[0], pa[kk][0], pa[kk][1], pa[kk][2], pa[kk][3], b0, b1);
      } else {
#pragma unroll
        for (int n = 0; n < NTW; n += 2) {
          uint32_t b0, b1, b2, b3;
          ldsm_x4_t(smem_addr(vrow + n * 8 + (lane >> 4) * 8), b0, b1, b2, b3);
          mma16816(o[n], pa[kk][0], pa[kk][1], pa[kk][2], pa[kk][3], b0, b1);
          mma16816(o[n + 1], pa[kk][0], pa[kk][1], pa[kk][2], pa[kk][3], b2, b3);
        }
      }
    }
    // Refill this tile's stage with the tile kStages ahead once every warp is done with it.
    __syncthreads();
    if (tile + kStages < t_end) {
      fill(it % kStages, tile + kStages, next_blk, 0);
      if (tile + kStages == new_tile) store_new(it % kStages);
    }
    cp_async_commit();
    next_blk = block_of(tile + kStages + 1);
  }
  cp_async_wait<0>();  // no copy may be left in flight at exit

  DSV2_TRACE_MARK(2);
  // Row sums: each lane summed its own positions; 16 lanes hold the whole row.
#pragma unroll
  for (int o2 = 8; o2 > 0; o2 >>= 1) l_row += __shfl_xor_sync(0xffffffffu, l_row, o2);
  const bool vec = (DV & 1) == 0;
  if (p.cluster_merge) {
    // The splits of this item are one thread-block cluster: each block leaves its row maxima, sums and
    // unnormalized O in its own shared memory (O where the cache tiles were), and after a cluster
    // barrier block `split` merges a slice of the columns from all of them (mla_combine_few_kernel's
    // operations in its order, so the same bits) and writes the normalized rows.
    __shared__ float cml[kRows][2];
    __shared__ float csw[kRows][16];
    float* sO = reinterpret_cast<float*>(smem + L.k);  // [kRows, DV]
    __syncthreads();  // every warp is done with the cache tiles
    if ((lane & 15) == 0) {
      cml[srow][0] = m_row * sl2;  // log2 units
      cml[srow][1] = l_row;
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = g + 8 * h;
#pragma unroll
      for (int n = 0; n < NTW; ++n) {
        const int c = n0 + n * 8 + 2 * t4;
        if (c < DV) sO[r * DV + c] = o[n][2 * h];
        if (c + 1 < DV) sO[r * DV + c + 1] = o[n][2 * h + 1];
      }
    }
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();
    const int S = p.n_splits, r = tid >> 4, sub = tid & 15;
    float m = -INFINITY, l = 0.0f;
    if (sub < S && r < nrows) {
      const float* rml = cluster.map_shared_rank(&cml[0][0], sub);
      l = rml[r * 2 + 1];
      if (l > 0.0f) m = rml[r * 2];
    }
    float Lsum;
    csw[r][sub] = split_weight16(m, l, 0xffffffffu, Lsum);
    __syncwarp();
    if (r < nrows) {
      const float inv = Lsum > 0.0f ? 1.0f / Lsum : 0.0f;
      const int span = ((DV + S - 1) / S + 3) / 4 * 4, cb = split * span, ce = min(DV, cb + span);
      bf16* out = p.out + (qrow0 + r) * DV;
      for (int c = cb + 4 * sub; c < ce; c += 64) {
        float4 v[kAttnClusterMergeMax];  // every split's piece in flight at once
#pragma unroll
        for (int s = 0; s < kAttnClusterMergeMax; ++s)
          if (s < S) v[s] = *reinterpret_cast<const float4*>(cluster.map_shared_rank(sO, s) + r * DV + c);
        float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int s = 0; s < kAttnClusterMergeMax; ++s) {
          const float ws = s < S ? csw[r][s] : 0.0f;
          if (ws == 0.0f) continue;
          acc.x += ws * v[s].x;
          acc.y += ws * v[s].y;
          acc.z += ws * v[s].z;
          acc.w += ws * v[s].w;
        }
        __nv_bfloat162 v2[2] = {__floats2bfloat162_rn(acc.x * inv, acc.y * inv),
                                __floats2bfloat162_rn(acc.z * inv, acc.w * inv)};
        *reinterpret_cast<uint2*>(out + c) = *reinterpret_cast<const uint2*>(v2);
      }
    }
    cluster.sync();  // no block leaves while another reads its shared memory
  } else if (p.n_splits == 1) {
    __syncthreads();  // the last tile's readers of sF are done
    if ((lane & 15) == 0) sF[srow] = l_row > 0.0f ? 1.0f / l_row : 0.0f;
    __syncthreads();
    const float inv_lo = sF[g], inv_hi = sF[g + 8];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = g + 8 * h;
      if (r >= nrows) continue;
      const float inv = h ? inv_hi : inv_lo;
      bf16* out = p.out + (qrow0 + r) * DV;
#pragma unroll
      for (int n = 0; n < NTW; ++n) {
        const int c = n0 + n * 8 + 2 * t4;
        const float v0 = o[n][2 * h] * inv, v1 = o[n][2 * h + 1] * inv;
        if (vec && c + 1 < DV) {
          *reinterpret_cast<__nv_bfloat162*>(out + c) = __floats2bfloat162_rn(v0, v1);
        } else {
          if (c < DV) out[c] = __float2bfloat16(v0);
          if (c + 1 < DV) out[c + 1] = __float2bfloat16(v1);
        }
      }
    }
  } else {
    const size_t base = (size_t(item) * p.n_splits + split) * kRows;
    if ((lane & 15) == 0) {
      p.part_ml[(base + srow) * 2 + 0] = m_row * sl2;  // log2 units
      p.part_ml[(base + srow) * 2 + 1] = l_row;
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = g + 8 * h;
      float* po = p.part_o + (base + r) * DV;
      if (r >= nrows) continue;
#pragma unroll
      for (int n = 0; n < NTW; ++n) {
        const int c = n0 + n * 8 + 2 * t4;
        if (vec && c + 1 < DV) {
          *reinterpret_cast<float2*>(po + c) = make_float2(o[n][2 * h], o[n][2 * h + 1]);
        } else {
          if (c < DV) po[c] = o[n][2 * h];
          if (c + 1 < DV) po[c + 1] = o[n][2 * h + 1];
        }
      }
    }
  }
}

// Merges the split partials (row max in log2 units, sum, unnormalized O) of one row and one slice
// of kCombineCols columns per block. Warp 0 computes the split weights into shared memory; then
// warp w sums splits w, w + 8, ... of its 4-column group (16-byte loads, several in flight), and the
// 8 warps' sums meet in shared memory.
constexpr int kCombineCols = 128;
__global__ void __launch_bounds__(256) mla_combine_kernel(AttnParams p, int DV) {
  DSV2_TRACE(kTrCombine);
  extern __shared__ float sw[];  // [n_splits] weights, [1] 1 / sum, then [8][kCombineCols] warp sums
  const int item = blockIdx.x, r = blockIdx.y, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int chunk = p.items[item * 4 + 0], row0 = p.items[item * 4 + 1];
  const int tok0 = p.chunks[chunk * 4 + 0], nq = p.chunks[chunk * 4 + 1];
  const int nrows = min(kRows, nq * p.heads - row0);
  if (r >= nrows) return;
  const int S = p.n_splits;
  const size_t base = size_t(item) * S * kRows;
  const float* ml = p.part_ml + (base + r) * 2;  // split s at ml[s * kRows * 2]
  if (warp == 0) {
    float M = -INFINITY;
    for (int s = lane; s < S; s += 32)
      if (ml[size_t(s) * kRows * 2 + 1] > 0.0f) M = fmaxf(M, ml[size_t(s) * kRows * 2]);
    for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
    float L = 0.0f;
    for (int s = lane; s < S; s += 32) {
      const float l = ml[size_t(s) * kRows * 2 + 1];
      const float w = l > 0.0f ? exp2f(ml[size_t(s) * kRows * 2] - M) : 0.0f;
      sw[s] = w;
      L += l * w;
    }
    for (int o = 16; o > 0; o >>= 1) L += __shfl_xor_sync(0xffffffffu, L, o);
    if (lane == 0) sw[S] = L > 0.0f ? 1.0f / L : 0.0f;
  }
  __syncthreads();
  float* red = sw + (S + 1 + 3) / 4 * 4;
  const int c0 = blockIdx.z * kCombineCols + 4 * lane;  // this thread's 4 columns
  const float* po = p.part_o + (base + r) * DV;
  const size_t sstride = size_t(kRows) * DV;  // between splits
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if ((DV & 3) == 0 && c0 < DV) {
#pragma unroll 4
    for (int s = warp; s < S; s += 8) {
      const float w = sw[s];
      if (w != 0.0f) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(po + s * sstride + c0));
        acc.x += w * v.x;
        acc.y += w * v.y;
        acc.z += w * v.z;
        acc.w += w * v.w;
      }
    }
  } else {
    float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int s = warp; s < S; s += 8) {
      const float w = sw[s];
      if (w == 0.0f) continue;
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (c0 + e < DV) a[e] += w * po[s * sstride + c0 + e];
    }
    acc = make_float4(a[0], a[1], a[2], a[3]);
  }
  *reinterpret_cast<float4*>(red + warp * kCombineCols + 4 * lane) = acc;
  __syncthreads();
  if (tid < kCombineCols) {
    const int c = blockIdx.z * kCombineCols + tid;
    if (c < DV) {
      float v = 0.0f;
#pragma unroll
      for (int w = 0; w < 8; ++w) v += red[w * kCombineCols + tid];
      p.out[(size_t(tok0) * p.heads + row0 + r) * DV + c] = __float2bfloat16(v * sw[S]);
    }
  }
}

// The same merge for few splits (n_splits <= 16, kv_lora % 4 == 0, kv_lora <= 512): one block per
// item, 16 threads per row. Each 16-lane group computes its row's weights with shuffles (no block
// barrier) and then sums 4-column pieces over the splits, 8 independent 16-byte loads per split.
constexpr int kCombineFewMax = kAttnCombineFewMax;
__global__ void __launch_bounds__(256) mla_combine_few_kernel(AttnParams p, int DV) {
  DSV2_TRACE(kTrCombine);
  __shared__ float sw[kRows][kCombineFewMax];
  const int item = blockIdx.x, tid = threadIdx.x, r = tid >> 4, sub = tid & 15;
  const int chunk = p.items[item * 4 + 0], row0 = p.items[item * 4 + 1];
  const int tok0 = p.chunks[chunk * 4 + 0], nq = p.chunks[chunk * 4 + 1];
  const int nrows = min(kRows, nq * p.heads - row0);
  const int S = p.n_splits;
  const size_t base = size_t(item) * S * kRows;
  const float* ml = p.part_ml + (base + r) * 2;  // split s at ml[s * kRows * 2]
  float m = -INFINITY, l = 0.0f;
  if (sub < S && r < nrows) {
    l = ml[size_t(sub) * kRows * 2 + 1];
    if (l > 0.0f) m = ml[size_t(sub) * kRows * 2];
  }
  float L;
  const float w = split_weight16(m, l, 0xffffffffu, L);
  sw[r][sub] = w;
  __syncwarp();
  if (r >= nrows) return;
  const float inv = L > 0.0f ? 1.0f / L : 0.0f;
  const float* po = p.part_o + (base + r) * DV;
  const size_t sstride = size_t(kRows) * DV;  // between splits
  float4 acc[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) acc[k] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (int s = 0; s < S; ++s) {
    const float ws = sw[r][s];
    if (ws == 0.0f) continue;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const int c = 4 * sub + 64 * k;
      if (c < DV) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(po + s * sstride + c));
        acc[k].x += ws * v.x;
        acc[k].y += ws * v.y;
        acc[k].z += ws * v.z;
        acc[k].w += ws * v.w;
      }
    }
  }
  bf16* out = p.out + (size_t(tok0) * p.heads + row0 + r) * DV;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const int c = 4 * sub + 64 * k;
    if (c < DV) {
      __nv_bfloat162 v[2] = {__floats2bfloat162_rn(acc[k].x * inv, acc[k].y * inv),
                             __floats2bfloat162_rn(acc[k].z * inv, acc[k].w * inv)};
      *reinterpret_cast<uint2*>(out + c) = *reinterpret_cast<const uint2*>(v);
    }
  }
}

template <int NTW, int DC>
void launch_attn(AttnParams p, int D, int DV, cudaStream_t s) {
  const Layout L = make_layout(D, NTW);
  raise_smem_limit<mla_attn_kernel<NTW, DC>>(L.bytes, true);
  // Grids of at most DSV2_CUDA_ATTN_PDL_MAX blocks (default 16) launch with PDL: their setup overlaps
  // the kernel before, and the W_UV product after them launches early. Measured on the H200 at batch 1
  // (with 32-position splits): 529 -> 547 tok/s at ~160 positions, 501 -> 529 at 512; at 32K context
  // (128 blocks) PDL had cost 385 -> 364 tok/s (the blocks of the next kernel wait on the SMs).
  static const int pdl_max = [] {
    const char* v = std::getenv("DSV2_CUDA_ATTN_PDL_MAX");
    return v ? std::atoi(v) : 16;
  }();
  p.pdl = p.n_items * p.n_splits <= pdl_max && pdl_enabled();
  // cluster_merge: the splits of an item form one cluster
  launch_ex(mla_attn_kernel<NTW, DC>, dim3(p.n_items, p.n_splits), dim3(kThreads), L.bytes, s,
            p.cluster_merge ? dim3(1, unsigned(p.n_splits), 1) : dim3(1, 1, 1), p.pdl, p, D, DV);
  DSV2_CUDA_LAUNCHED();
}

}  // namespace

bool mla_attention_cluster_merge_supported(const AttnParams& p, int kv_lora) {
  return device_is_hopper() && p.n_splits >= 2 && p.n_splits <= kAttnClusterMergeMax && kv_lora % 4 == 0 &&
         kv_lora <= 64 * kWarps;
}

void mla_attention(const AttnParams& params, int kv_lora, int rope, cudaStream_t s, bool combine) {
  if (params.n_items == 0) return;
  AttnParams p = params;
  DSV2_CHECK(!p.cluster_merge || mla_attention_cluster_merge_supported(p, kv_lora),
             "mla_attention: {} splits of a {}-wide latent cannot merge in a cluster", p.n_splits, kv_lora);
  const int D = kv_lora + rope, DV = kv_lora;
  DSV2_CHECK(!p.new_kv || (DV % 8 == 0 && rope % 2 == 0 && DV <= 2 * kThreads && rope <= 2 * kThreads &&
                           reinterpret_cast<uintptr_t>(p.new_kv) % 16 == 0),
             "mla_attention: a new kv row of widths {} + {} (or not 16-byte aligned) is unsupported", DV, rope);
  // Output columns per warp: 64 (8 n8 tiles) covers kv_lora up to 512, 8 covers up to 64.
  if (DV <= 8 * kWarps)
    launch_attn<1, 0>(p, D, DV, s);
  else if (DV == 512 && D == 576)
    launch_attn<8, 576>(p, D, DV, s);
  else if (DV <= 64 * kWarps)
    launch_attn<8, 0>(p, D, DV, s);
  else
    fail("mla_attention: kv_lora_rank {} is larger than the kernel's 512 columns", kv_lora);
  if (!combine || p.cluster_merge) return;
  if (p.n_splits > 1 && p.n_splits <= kCombineFewMax && DV % 4 == 0 && DV <= 512) {
    mla_combine_few_kernel<<<p.n_items, 256, 0, s>>>(p, DV);
    DSV2_CUDA_LAUNCHED();
  } else if (p.n_splits > 1) {
    // Shared: split weights, then 8 x kCombineCols warp sums 16-byte aligned.
    const size_t smem = (size_t(p.n_splits + 1 + 3) / 4 * 4 + 8 * kCombineCols) * sizeof(float);
    const dim3 grid(p.n_items, kRows, (DV + kCombineCols - 1) / kCombineCols);
    mla_combine_kernel<<<grid, 256, smem, s>>>(p, DV);
    DSV2_CUDA_LAUNCHED();
  }
}

DSV2_TRACE_BINDER(trace_bind_attention)

}  // namespace dsv2::cuda
