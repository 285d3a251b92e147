// Absorbed MLA attention over the paged latent cache (reference section 3, "Absorbed MLA"):
// multi-query attention with one shared KV row of width D = kv_lora + rope per position, where the
// value is the first kv_lora columns of the same row. One block owns kAttnRows (token, head) rows
// of one sequence chunk (rows are token-major, so a block holds several tokens when heads < 32),
// walks the cache 64 positions (one cache block) at a time with bf16 tensor-core products and an
// online softmax in fp32, and either writes the normalized output or, when the cache range is split
// across blocks (long contexts, small batches), its partial sums for a combine pass.
#include <cfloat>
#include <mma.h>

#include "backend/cuda/ops.h"
#include "common/error.h"

namespace dsv2::cuda {

namespace {

using namespace nvcuda;

constexpr int kThreads = 256;
constexpr int LDS = kAttnTile + 4;  // f32 scores
constexpr int LDP = kAttnTile + 8;  // bf16 probabilities

struct Layout {
  int Dp, DVp, LDQ, LDO;
  size_t q, k, s, p, o, ml, bytes;
};

__host__ __device__ inline size_t align128(size_t x) { return (x + 127) & ~size_t(127); }

__host__ __device__ inline Layout make_layout(int D, int DV) {
  Layout L;
  L.Dp = (D + 15) / 16 * 16;
  L.DVp = (DV + 15) / 16 * 16;
  L.LDQ = L.Dp + 8;
  L.LDO = L.DVp + 4;
  size_t off = 0;
  L.q = off;
  off = align128(off + size_t(kAttnRows) * L.LDQ * 2);
  L.k = off;
  off = align128(off + size_t(kAttnTile) * L.LDQ * 2);
  L.s = off;
  off = align128(off + size_t(kAttnRows) * LDS * 4);
  L.p = off;
  off = align128(off + size_t(kAttnRows) * LDP * 2);
  L.o = off;
  off = align128(off + size_t(kAttnRows) * L.LDO * 4);
  L.ml = off;
  off = align128(off + size_t(kAttnRows) * 4 * 4);
  L.bytes = off;
  return L;
}

__global__ void __launch_bounds__(kThreads) mla_attn_kernel(AttnParams p, int D, int DV) {
  extern __shared__ __align__(128) unsigned char smem[];
  const Layout L = make_layout(D, DV);
  bf16* sQ = reinterpret_cast<bf16*>(smem + L.q);
  bf16* sK = reinterpret_cast<bf16*>(smem + L.k);
  float* sS = reinterpret_cast<float*>(smem + L.s);
  bf16* sP = reinterpret_cast<bf16*>(smem + L.p);
  float* sO = reinterpret_cast<float*>(smem + L.o);
  float* sM = reinterpret_cast<float*>(smem + L.ml);
  float* sL = sM + kAttnRows;
  int* sPos = reinterpret_cast<int*>(sL + kAttnRows);

  const int tid = threadIdx.x, warp = tid >> 5;
  const int item = blockIdx.x, split = blockIdx.y;
  const int chunk = p.items[item * 4 + 0], row0 = p.items[item * 4 + 1];
  const int tok0 = p.chunks[chunk * 4 + 0], nq = p.chunks[chunk * 4 + 1], kvlen = p.chunks[chunk * 4 + 2];
  const int* btab = p.blocks + p.chunks[chunk * 4 + 3];
  const int heads = p.heads;
  const int qpos0 = kvlen - nq;
  const int nrows = min(kAttnRows, nq * heads - row0);
  const int kv_end = qpos0 + (row0 + nrows - 1) / heads + 1;  // positions [0, kv_end) matter to this tile
  const int ntiles = (kv_end + kAttnTile - 1) / kAttnTile;
  const int per = (ntiles + p.n_splits - 1) / p.n_splits;
  const int t_begin = split * per, t_end = min(ntiles, t_begin + per);
  const size_t qrow0 = size_t(tok0) * heads + row0;  // global (token, head) row of local row 0

  // Q rows (zero past nrows and past D), padding columns of K, O = 0, running max/sum.
  const bool vec = (D & 7) == 0;
  for (int i = tid; i < kAttnRows * L.Dp; i += kThreads) {
    const int r = i / L.Dp, c = i % L.Dp;
    sQ[r * L.LDQ + c] = (r < nrows && c < D) ? p.q[(qrow0 + r) * D + c] : __float2bfloat16(0.0f);
  }
  for (int i = tid; i < kAttnTile * (L.Dp - D); i += kThreads) {
    const int r = i / (L.Dp - D), c = D + i % (L.Dp - D);
    sK[r * L.LDQ + c] = __float2bfloat16(0.0f);
  }
  for (int i = tid; i < kAttnRows * L.LDO; i += kThreads) sO[i] = 0.0f;
  if (tid < kAttnRows) {
    sM[tid] = -INFINITY;
    sL[tid] = 0.0f;
    sPos[tid] = tid < nrows ? qpos0 + (row0 + tid) / heads : -1;
  }
  const float sl2 = p.scale * 1.4426950408889634f;

  for (int tile = t_begin; tile < t_end; ++tile) {
    const int j0 = tile * kAttnTile;
    const bf16* crow = p.cache + size_t(btab[tile]) * kAttnTile * D;
    __syncthreads();  // previous tile's readers of sK / sP are done
    if (vec) {
      // All of the tile's 16-byte pieces in flight at once (cp.async, zero-filled past kv_end).
      const int cpr = D / 8;
      for (int i = tid; i < kAttnTile * cpr; i += kThreads) {
        const int r = i / cpr, c = i % cpr;
        const bool ok = j0 + r < kv_end;
        const unsigned sa = unsigned(__cvta_generic_to_shared(sK + r * L.LDQ + c * 8));
        const bf16* src = ok ? crow + size_t(r) * D + c * 8 : crow;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(src), "r"(ok ? 16 : 0));
      }
      asm volatile("cp.async.commit_group;\n" ::);
      asm volatile("cp.async.wait_group 0;\n" ::);
    } else {
      for (int i = tid; i < kAttnTile * D; i += kThreads) {
        const int r = i / D, c = i % D;
        sK[r * L.LDQ + c] = j0 + r < kv_end ? crow[size_t(r) * D + c] : __float2bfloat16(0.0f);
      }
    }
    __syncthreads();
    // S[32 x 64] = Q K^T: warp w owns fragment (w / 4, w % 4).
    {
      const int fm = warp >> 2, fn = warp & 3;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int k = 0; k < L.Dp; k += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b;
        wmma::load_matrix_sync(a, sQ + fm * 16 * L.LDQ + k, L.LDQ);
        wmma::load_matrix_sync(b, sK + fn * 16 * L.LDQ + k, L.LDQ);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(sS + fm * 16 * LDS + fn * 16, acc, LDS, wmma::mem_row_major);
    }
    __syncthreads();
    // Online softmax: 8 threads per row, 8 columns each.
    {
      const int r = tid >> 3, sub = tid & 7;
      const int rp = sPos[r];
      float v[8];
      float tmax = -INFINITY;
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        const int col = sub * 8 + c;
        v[c] = (j0 + col <= rp) ? sS[r * LDS + col] : -INFINITY;
        tmax = fmaxf(tmax, v[c]);
      }
      for (int o = 4; o > 0; o >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
      const float mold = sM[r];
      const float mnew = fmaxf(mold, tmax);
      float factor = 1.0f, sum = 0.0f;
      if (mnew == -INFINITY) {
#pragma unroll
        for (int c = 0; c < 8; ++c) sP[r * LDP + sub * 8 + c] = __float2bfloat16(0.0f);
      } else {
        factor = mold == -INFINITY ? 0.0f : exp2f((mold - mnew) * sl2);
#pragma unroll
        for (int c = 0; c < 8; ++c) {
          const float e = v[c] == -INFINITY ? 0.0f : exp2f((v[c] - mnew) * sl2);
          sum += e;
          sP[r * LDP + sub * 8 + c] = __float2bfloat16(e);
        }
      }
      for (int o = 4; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      if (factor != 1.0f)
        for (int c = sub; c < L.DVp; c += 8) sO[r * L.LDO + c] *= factor;
      __syncwarp();
      if (sub == 0) {
        sM[r] = mnew;
        sL[r] = sL[r] * factor + sum;
      }
    }
    __syncthreads();
    // O[32 x DVp] += P[32 x 64] V[64 x DVp], V = the first DVp columns of the K tile.
    {
      const int nf = 2 * (L.DVp / 16);
      for (int f = warp; f < nf; f += kThreads / 32) {
        const int fm = f & 1, fn = f >> 1;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::load_matrix_sync(acc, sO + fm * 16 * L.LDO + fn * 16, L.LDO, wmma::mem_row_major);
#pragma unroll
        for (int k = 0; k < kAttnTile; k += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b;
          wmma::load_matrix_sync(a, sP + fm * 16 * LDP + k, LDP);
          wmma::load_matrix_sync(b, sK + k * L.LDQ + fn * 16, L.LDQ);
          wmma::mma_sync(acc, a, b, acc);
        }
        wmma::store_matrix_sync(sO + fm * 16 * L.LDO + fn * 16, acc, L.LDO, wmma::mem_row_major);
      }
    }
  }
  __syncthreads();
  if (p.n_splits == 1) {
    for (int i = tid; i < nrows * DV; i += kThreads) {
      const int r = i / DV, c = i % DV;
      const float l = sL[r];
      p.out[(qrow0 + r) * DV + c] = __float2bfloat16(l > 0.0f ? sO[r * L.LDO + c] / l : 0.0f);
    }
  } else {
    const size_t base = (size_t(item) * p.n_splits + split) * kAttnRows;
    for (int i = tid; i < nrows * DV; i += kThreads) {
      const int r = i / DV, c = i % DV;
      p.part_o[(base + r) * DV + c] = sO[r * L.LDO + c];
    }
    if (tid < kAttnRows) {
      p.part_ml[(base + tid) * 2 + 0] = sM[tid];
      p.part_ml[(base + tid) * 2 + 1] = sL[tid];
    }
  }
}

// One block per (item, row): merges the split partials of that row. The split weights are computed
// once into shared memory; each thread then sums its columns over the non-empty splits.
__global__ void mla_combine_kernel(AttnParams p, int DV) {
  extern __shared__ float sw[];  // [n_splits] weights, then [1] 1 / sum
  const int item = blockIdx.x, r = blockIdx.y, tid = threadIdx.x;
  const int chunk = p.items[item * 4 + 0], row0 = p.items[item * 4 + 1];
  const int tok0 = p.chunks[chunk * 4 + 0], nq = p.chunks[chunk * 4 + 1];
  const int nrows = min(kAttnRows, nq * p.heads - row0);
  if (r >= nrows) return;
  const float sl2 = p.scale * 1.4426950408889634f;
  const size_t base = size_t(item) * p.n_splits * kAttnRows;
  const float* ml = p.part_ml + (base + r) * 2;  // split s at ml[s * kAttnRows * 2]
  if (tid < 32) {
    float M = -INFINITY;
    for (int s = tid; s < p.n_splits; s += 32)
      if (ml[size_t(s) * kAttnRows * 2 + 1] > 0.0f) M = fmaxf(M, ml[size_t(s) * kAttnRows * 2]);
    for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
    float L = 0.0f;
    for (int s = tid; s < p.n_splits; s += 32) {
      const float l = ml[size_t(s) * kAttnRows * 2 + 1];
      const float w = l > 0.0f ? exp2f((ml[size_t(s) * kAttnRows * 2] - M) * sl2) : 0.0f;
      sw[s] = w;
      L += l * w;
    }
    for (int o = 16; o > 0; o >>= 1) L += __shfl_xor_sync(0xffffffffu, L, o);
    if (tid == 0) sw[p.n_splits] = L > 0.0f ? 1.0f / L : 0.0f;
  }
  __syncthreads();
  const float inv = sw[p.n_splits];
  const size_t orow = size_t(tok0) * p.heads + row0 + r;
  const float* po = p.part_o + (base + r) * DV;
  for (int c = tid; c < DV; c += blockDim.x) {
    float acc = 0.0f;
#pragma unroll 4
    for (int s = 0; s < p.n_splits; ++s) {
      const float w = sw[s];
      if (w != 0.0f) acc += w * po[size_t(s) * kAttnRows * DV + c];
    }
    p.out[orow * DV + c] = __float2bfloat16(acc * inv);
  }
}

}  // namespace

void mla_attention(const AttnParams& p, int kv_lora, int rope, cudaStream_t s) {
  if (p.n_items == 0) return;
  const int D = kv_lora + rope, DV = kv_lora;
  const Layout L = make_layout(D, DV);
  // The shared-memory limit is a per-device attribute of the kernel: raise it once per device.
  static size_t configured[64] = {};
  int dev = 0;
  DSV2_CUDA_CHECK(cudaGetDevice(&dev));
  if (L.bytes > 48 * 1024 && dev < 64 && L.bytes > configured[dev]) {
    DSV2_CUDA_CHECK(cudaFuncSetAttribute(mla_attn_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(L.bytes)));
    configured[dev] = L.bytes;
  }
  mla_attn_kernel<<<dim3(p.n_items, p.n_splits), kThreads, L.bytes, s>>>(p, D, DV);
  DSV2_CUDA_LAUNCHED();
  if (p.n_splits > 1) {
    mla_combine_kernel<<<dim3(p.n_items, kAttnRows), 256, size_t(p.n_splits + 1) * sizeof(float), s>>>(p, DV);
    DSV2_CUDA_LAUNCHED();
  }
}

}  // namespace dsv2::cuda
