// Fused causal prefill attention over decompressed keys (reference section 3, "Decompressed MLA"):
// per head, key j is [k_nope | k_pe] (k_pe shared by all heads) and value v, both bf16. One block
// owns 64 queries of one head (4 warps of 16 query rows), walks the keys 64 at a time up to the
// causal limit of its last query with K/V tiles double-buffered in shared memory (cp.async), and
// keeps scores, the online softmax state and the output accumulator in registers
// (mma.sync m16n8k16 bf16 products, fp32 accumulation). No score matrix ever reaches global memory.
#include <cmath>

#include "backend/cuda/mma.cuh"
#include "backend/cuda/ops.h"
#include "common/error.h"

namespace dsv2::cuda {

namespace {

constexpr int kRows = 64;     // queries per block
constexpr int kKeys = 64;     // keys per tile
constexpr int kWarps = kRows / 16;
constexpr int kThreads = kWarps * 32;
constexpr int kPad = 8;       // bf16 padding per shared row (16 bytes: ldmatrix rows hit distinct banks)

template <int NOPE, int ROPE, int DV>
struct Shape {
  static constexpr int QK = NOPE + ROPE;       // one dot product over [nope | rope]
  static constexpr int LDK = QK + kPad;        // shared row stride of Q and K tiles
  static constexpr int LDV = DV + kPad;        // shared row stride of V tiles
  static constexpr int kQElems = kRows * LDK;
  static constexpr int kKElems = kKeys * LDK;  // one stage
  static constexpr int kVElems = kKeys * LDV;  // one stage
  static constexpr size_t kSmemBytes = size_t(kQElems + 2 * kKElems + 2 * kVElems) * sizeof(bf16);
  static_assert(NOPE % 16 == 0 && ROPE % 8 == 0 && QK % 16 == 0 && DV % 16 == 0, "unsupported head widths");
};

template <int NOPE, int ROPE, int DV>
__global__ void __launch_bounds__(kThreads) flash_prefill_kernel(const FlashPrefillParams p) {
  using S = Shape<NOPE, ROPE, DV>;
  constexpr int QK = S::QK, LDK = S::LDK, LDV = S::LDV;
  constexpr int KSTEPS = QK / 16;  // k-steps of the score product
  constexpr int NT_O = DV / 8;     // 8-wide output column tiles per warp
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* sK = sQ + S::kQElems;      // [2][kKeys][LDK]
  bf16* sV = sK + 2 * S::kKElems;  // [2][kKeys][LDV]

  // Heaviest query tiles (most keys) first.
  const int qt = int(gridDim.x) - 1 - int(blockIdx.x);
  const int h = blockIdx.y;
  const int q0 = qt * kRows;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t4 = lane & 3;

  const int rows = min(kRows, p.n_q - q0);       // valid queries of this block
  const int kv_end = p.len0 + p.n_q;             // keys that exist
  const int last_key = p.len0 + q0 + rows - 1;   // highest key any valid query of the block sees
  const int n_tiles = last_key / kKeys + 1;

  // Q tile: [nope | rope] per row, zeros past n_q.
  {
    constexpr int CH = QK / 8;  // 16-byte chunks per row
    for (int c = tid; c < kRows * CH; c += kThreads) {
      const int r = c / CH, col = (c % CH) * 8;
      const bool ok = r < rows;
      const int i = q0 + (ok ? r : 0);
      const bf16* src = col < NOPE ? p.q + size_t(i) * p.q_tok + size_t(h) * p.q_head + col
                                   : p.q_pe + size_t(i) * p.qpe_tok + size_t(h) * p.qpe_head + (col - NOPE);
      cp_async16(sQ + r * LDK + col, src, ok);
    }
  }
  auto load_tile = [&](int tile, int stage) {
    const int k0 = tile * kKeys;
    bf16* dK = sK + stage * S::kKElems;
    bf16* dV = sV + stage * S::kVElems;
    constexpr int CHK = QK / 8, CHV = DV / 8;
    for (int c = tid; c < kKeys * CHK; c += kThreads) {
      const int r = c / CHK, col = (c % CHK) * 8;
      const bool ok = k0 + r < kv_end;
      const int j = ok ? k0 + r : 0;
      const bf16* src = col < NOPE ? p.kv + size_t(j) * p.kv_tok + size_t(h) * p.kv_head + col
                                   : p.k_pe + size_t(j) * p.kpe_tok + (col - NOPE);
      cp_async16(dK + r * LDK + col, src, ok);
    }
    for (int c = tid; c < kKeys * CHV; c += kThreads) {
      const int r = c / CHV, col = (c % CHV) * 8;
      const bool ok = k0 + r < kv_end;
      const int j = ok ? k0 + r : 0;
      cp_async16(dV + r * LDV + col, p.kv + size_t(j) * p.kv_tok + size_t(h) * p.kv_head + NOPE + col, ok);
    }
  };
  load_tile(0, 0);
  cp_async_commit();

  const float scale_log2 = p.scale * 1.4426950408889634f;  // exp(x) = exp2(x * log2(e))
  // This thread's two query rows (g and g + 8 of the warp's 16) as sequence positions.
  const int pos0 = p.len0 + q0 + warp * 16 + g, pos1 = pos0 + 8;
  float m0 = -INFINITY, m1 = -INFINITY;  // running max of the scaled scores (log2 units)
  float l0 = 0.0f, l1 = 0.0f;            // running sums (per thread: its columns only until the end)
  float o[NT_O][4];
#pragma unroll
  for (int n = 0; n < NT_O; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  uint32_t qa[KSTEPS][4];

  for (int t = 0; t < n_tiles; ++t) {
    if (t + 1 < n_tiles) {
      load_tile(t + 1, (t + 1) & 1);  // the stage tile t - 1 used: released by the barrier below
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (t == 0) {
      // Q A-fragments: lanes 0-15 address rows 0-15 at column k, lanes 16-31 the same rows at k + 8.
      const bf16* base = sQ + (warp * 16 + (lane & 15)) * LDK + (lane >> 4) * 8;
#pragma unroll
      for (int kk = 0; kk < KSTEPS; ++kk) ldmatrix_x4(qa[kk], base + kk * 16);
    }
    const bf16* cK = sK + (t & 1) * S::kKElems;
    const bf16* cV = sV + (t & 1) * S::kVElems;
    const int k0 = t * kKeys;

    // S = Q K^T: 16 rows x 64 keys per warp, 8 column tiles of 8 keys.
    float s[kKeys / 8][4];
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
    {
      // x4 of keys n0..n0+15: matrices (keys +0..7, dims k..k+7), (+0..7, k+8..), (+8..15, k..), (+8..15, k+8..)
      const bf16* base = cK + ((lane >> 4) * 8 + (lane & 7)) * LDK + ((lane >> 3) & 1) * 8;
#pragma unroll
      for (int kk = 0; kk < KSTEPS; ++kk) {
#pragma unroll
        for (int np = 0; np < kKeys / 16; ++np) {
          uint32_t b[4];
          ldmatrix_x4(b, base + np * 16 * LDK + kk * 16);
          mma_bf16(s[2 * np], qa[kk], b[0], b[1]);
          mma_bf16(s[2 * np + 1], qa[kk], b[2], b[3]);
        }
      }
    }

    // Scale into log2 units; causal mask only where the tile reaches past the block's first query.
    const bool needs_mask = k0 + kKeys - 1 > p.len0 + q0;
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float v = s[n][e] * scale_log2;
        if (needs_mask) {
          const int key = k0 + n * 8 + 2 * t4 + (e & 1);
          if (key > (e < 2 ? pos0 : pos1)) v = -INFINITY;
        }
        s[n][e] = v;
      }
    }

    // Online softmax. Key 0 is visible to every row and tile 0 comes first, so the running max is
    // finite from the first tile on and fully masked rows of later tiles contribute exp2(-inf) = 0.
    float tm0 = -INFINITY, tm1 = -INFINITY;
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) {
      tm0 = fmaxf(tm0, fmaxf(s[n][0], s[n][1]));
      tm1 = fmaxf(tm1, fmaxf(s[n][2], s[n][3]));
    }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {  // the 4 lanes of a quad share rows g and g + 8
      tm0 = fmaxf(tm0, __shfl_xor_sync(0xffffffffu, tm0, off));
      tm1 = fmaxf(tm1, __shfl_xor_sync(0xffffffffu, tm1, off));
    }
    const float nm0 = fmaxf(m0, tm0), nm1 = fmaxf(m1, tm1);
    const float c0 = exp2f(m0 - nm0), c1 = exp2f(m1 - nm1);  // 0 on the first tile (m = -inf)
    m0 = nm0;
    m1 = nm1;
    float rs0 = 0.0f, rs1 = 0.0f;
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) {
      s[n][0] = exp2f(s[n][0] - nm0);
      s[n][1] = exp2f(s[n][1] - nm0);
      s[n][2] = exp2f(s[n][2] - nm1);
      s[n][3] = exp2f(s[n][3] - nm1);
      rs0 += s[n][0] + s[n][1];
      rs1 += s[n][2] + s[n][3];
    }
    l0 = l0 * c0 + rs0;
    l1 = l1 * c1 + rs1;
#pragma unroll
    for (int n = 0; n < NT_O; ++n) {
      o[n][0] *= c0;
      o[n][1] *= c0;
      o[n][2] *= c1;
      o[n][3] *= c1;
    }

    // O += P V: the C fragments of score tiles 2kk and 2kk+1 are the A fragment of key step kk.
    {
      // x4.trans of keys kk*16.., dims d0..d0+15: (keys +0..7, d0..), (+8..15, d0..), (+0..7, d0+8..), (+8..15, d0+8..)
      const bf16* base = cV + (((lane >> 3) & 1) * 8 + (lane & 7)) * LDV + (lane >> 4) * 8;
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        uint32_t pa[4];
        pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
        pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
        pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
        for (int dp = 0; dp < DV / 16; ++dp) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, base + kk * 16 * LDV + dp * 16);
          mma_bf16(o[2 * dp], pa, b[0], b[1]);
          mma_bf16(o[2 * dp + 1], pa, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

  // Row sums across the quad, then O / l into the valid rows.
#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, off);
    l1 += __shfl_xor_sync(0xffffffffu, l1, off);
  }
  const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
  const int r0 = warp * 16 + g, r1 = r0 + 8;
  bf16* out0 = p.out + size_t(q0 + r0) * p.out_tok + size_t(h) * p.out_head + 2 * t4;
  bf16* out1 = p.out + size_t(q0 + r1) * p.out_tok + size_t(h) * p.out_head + 2 * t4;
#pragma unroll
  for (int n = 0; n < NT_O; ++n) {
    if (r0 < rows) *reinterpret_cast<uint32_t*>(out0 + n * 8) = pack_bf16(o[n][0] * inv0, o[n][1] * inv0);
    if (r1 < rows) *reinterpret_cast<uint32_t*>(out1 + n * 8) = pack_bf16(o[n][2] * inv1, o[n][3] * inv1);
  }
}

template <int NOPE, int ROPE, int DV>
void launch(const FlashPrefillParams& p, cudaStream_t s) {
  constexpr size_t smem = Shape<NOPE, ROPE, DV>::kSmemBytes;
  auto* kernel = flash_prefill_kernel<NOPE, ROPE, DV>;
  // The shared-memory limit is a per-device attribute of the kernel: raise it once per device.
  static bool configured[64] = {};
  int dev = 0;
  DSV2_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev >= 64 || !configured[dev]) {
    DSV2_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    if (dev < 64) configured[dev] = true;
  }
  const dim3 grid((p.n_q + kRows - 1) / kRows, p.heads);
  kernel<<<grid, kThreads, smem, s>>>(p);
  DSV2_CUDA_LAUNCHED();
}

}  // namespace

bool flash_prefill_supported(int nope, int rope, int v) { return nope == 128 && rope == 64 && v == 128; }

void flash_prefill(const FlashPrefillParams& p, int nope, int rope, int v, cudaStream_t s) {
  if (p.n_q <= 0 || p.heads <= 0) return;
  if (nope == 128 && rope == 64 && v == 128) return launch<128, 64, 128>(p, s);
  fail("flash_prefill: unsupported head widths nope={} rope={} v={} (the fused kernel has nope=128 rope=64 v=128)",
       nope, rope, v);
}

}  // namespace dsv2::cuda
