// Grouped expert GEMM for MoE: rows arrive permuted expert-major (moe_dispatch), and a device-side
// tile list names, for each 64-row tile, its expert, first row and row count. The grid is sized for
// the worst case (rows/64 + experts tiles) so that the launch needs no host synchronization and can
// be captured in a CUDA graph; blocks past the real tile count return at once.
// bf16 tensor-core products (WMMA 16x16x16), fp32 accumulation, 4-stage cp.async pipeline.
#include <mma.h>

#include "backend/cuda/ops.h"
#include "common/error.h"

namespace dsv2::cuda {

namespace {

using namespace nvcuda;

constexpr int BN = 128, BK = 64, LDT = BK + 8, STAGES = 3, THREADS = 256;
constexpr int LDC = BN + 4;
template <int BM>
struct Tile {
  static constexpr int WARPS_M = BM == 64 ? 2 : 1, WARPS_N = 8 / WARPS_M;
  static constexpr int FM = BM / 16 / WARPS_M, FN = BN / 16 / WARPS_N;  // fragments per warp
  static constexpr size_t kStageElems = size_t(BM + BN) * LDT;
  static constexpr size_t kSmemBytes =
      STAGES * kStageElems * 2 > size_t(BM) * LDC * 4 ? STAGES * kStageElems * 2 : size_t(BM) * LDC * 4;
};

__device__ inline void cp_async16(void* smem, const void* gmem, bool pred) {
  const unsigned sa = unsigned(__cvta_generic_to_shared(smem));
  const int n = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(gmem), "r"(n));
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

template <int BM, bool kF32Out>
__global__ void __launch_bounds__(THREADS) moe_gemm_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                                           const int32_t* __restrict__ tiles, int max_tiles, int N,
                                                           int K, void* y) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int tile = blockIdx.y;
  if (tile >= tiles[max_tiles * 3]) return;
  const int e = tiles[tile * 3], r0 = tiles[tile * 3 + 1], rows = tiles[tile * 3 + 2];
  const int n0 = blockIdx.x * BN;
  const bf16* we = w + size_t(e) * N * K;
  bf16* st = reinterpret_cast<bf16*>(smem);
  using TL = Tile<BM>;
  constexpr size_t kStageElems = TL::kStageElems;
  constexpr int FM = TL::FM, FN = TL::FN;
  const int tid = threadIdx.x, warp = tid >> 5;
  const int wm = warp / TL::WARPS_N, wn = warp % TL::WARPS_N;  // warp tile (16 FM) x (16 FN)
  const int nk = (K + BK - 1) / BK;

  auto load = [&](int kt, int stage) {
    bf16* sA = st + stage * kStageElems;
    bf16* sB = sA + BM * LDT;
    const int k0 = kt * BK;
    constexpr int P = BK / 8;  // 16-byte pieces per row
#pragma unroll
    for (int i = 0; i < (BM * P + THREADS - 1) / THREADS; ++i) {  // A: BM rows
      const int idx = tid + i * THREADS;
      if (idx < BM * P) {
        const int r = idx / P, c = (idx % P) * 8;
        const bool ok = r < rows && k0 + c < K;
        cp_async16(sA + r * LDT + c, ok ? x + size_t(r0 + r) * K + k0 + c : x, ok);
      }
    }
#pragma unroll
    for (int i = 0; i < BN * P / THREADS; ++i) {  // B: 128 weight rows, 128 contiguous bytes each
      const int idx = tid + i * THREADS;
      const int r = idx / P, c = (idx % P) * 8;
      const bool ok = n0 + r < N && k0 + c < K;
      cp_async16(sB + r * LDT + c, ok ? we + size_t(n0 + r) * K + k0 + c : we, ok);
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[FM][FN];
#pragma unroll
  for (int i = 0; i < FM; ++i)
#pragma unroll
    for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nk) load(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < nk; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    {
      const int nxt = kt + STAGES - 1;
      if (nxt < nk) load(nxt, nxt % STAGES);
      cp_async_commit();
    }
    const bf16* sA = st + (kt % STAGES) * kStageElems;
    const bf16* sB = sA + BM * LDT;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a[FM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b[FN];
#pragma unroll
      for (int i = 0; i < FM; ++i) wmma::load_matrix_sync(a[i], sA + (wm * FM * 16 + i * 16) * LDT + kk, LDT);
#pragma unroll
      for (int j = 0; j < FN; ++j) wmma::load_matrix_sync(b[j], sB + (wn * FN * 16 + j * 16) * LDT + kk, LDT);
#pragma unroll
      for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();
  float* sC = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int i = 0; i < FM; ++i)
#pragma unroll
    for (int j = 0; j < FN; ++j)
      wmma::store_matrix_sync(sC + (wm * FM * 16 + i * 16) * LDC + (wn * FN + j) * 16, acc[i][j], LDC,
                              wmma::mem_row_major);
  __syncthreads();
  for (int i = tid; i < rows * BN; i += THREADS) {
    const int r = i / BN, c = i % BN;
    if (n0 + c >= N) continue;
    const float v = sC[r * LDC + c];
    if constexpr (kF32Out)
      static_cast<float*>(y)[size_t(r0 + r) * N + n0 + c] = v;
    else
      static_cast<bf16*>(y)[size_t(r0 + r) * N + n0 + c] = __float2bfloat16(v);
  }
}

// Any K: one thread per output element (small test shapes only).
__global__ void moe_gemm_naive_kernel(const bf16* x, const bf16* w, const int32_t* tiles, int max_tiles, int N, int K,
                                      void* y, bool f32) {
  const int tile = blockIdx.y;
  if (tile >= tiles[max_tiles * 3]) return;
  const int e = tiles[tile * 3], r0 = tiles[tile * 3 + 1], rows = tiles[tile * 3 + 2];
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < rows * N; i += gridDim.x * blockDim.x) {
    const int r = i / N, n = i % N;
    float acc = 0;
    for (int k = 0; k < K; ++k)
      acc += __bfloat162float(x[size_t(r0 + r) * K + k]) * __bfloat162float(w[(size_t(e) * N + n) * K + k]);
    if (f32)
      static_cast<float*>(y)[size_t(r0 + r) * N + n] = acc;
    else
      static_cast<bf16*>(y)[size_t(r0 + r) * N + n] = __float2bfloat16(acc);
  }
}

// Few rows (decode): one block per (row, 32 outputs); each warp computes 4 outputs as dot products
// with 16-byte loads, so every weight byte is read once per row at full width. Only rows that
// exist are launched (R is known on the host), so no tile list is needed.
constexpr int kSkinnyOut = 32;
template <bool kF32Out>
__global__ void __launch_bounds__(256) moe_skinny_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                                         const int32_t* __restrict__ row_expert, int N, int K,
                                                         void* y) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sx = reinterpret_cast<bf16*>(smem);
  const int r = blockIdx.y, n0 = blockIdx.x * kSkinnyOut;
  const int e = row_expert[r];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const uint4* xr = reinterpret_cast<const uint4*>(x + size_t(r) * K);
  for (int i = tid; i < K / 8; i += blockDim.x) reinterpret_cast<uint4*>(sx)[i] = xr[i];
  __syncthreads();
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  const bf16* we = w + size_t(e) * N * K;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int n = n0 + warp * 4 + j;
    if (n >= N) continue;
    const bf16* wr = we + size_t(n) * K;
    float a = 0.f;
#pragma unroll 4
    for (int k = lane * 8; k < K; k += 256) {
      const uint4 wv = *reinterpret_cast<const uint4*>(wr + k);
      const uint4 xv = *reinterpret_cast<const uint4*>(sx + k);
      const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(&wv);
      const __nv_bfloat162* x2 = reinterpret_cast<const __nv_bfloat162*>(&xv);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 wf = __bfloat1622float2(w2[q]), xf = __bfloat1622float2(x2[q]);
        a += wf.x * xf.x + wf.y * xf.y;
      }
    }
    acc[j] = a;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j)
    for (int o = 16; o > 0; o >>= 1) acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], o);
  if (lane < 4) {
    const int n = n0 + warp * 4 + lane;
    const float v = lane == 0 ? acc[0] : lane == 1 ? acc[1] : lane == 2 ? acc[2] : acc[3];
    if (n < N) {
      if constexpr (kF32Out)
        static_cast<float*>(y)[size_t(r) * N + n] = v;
      else
        static_cast<bf16*>(y)[size_t(r) * N + n] = __float2bfloat16(v);
    }
  }
}

// Dense products with at most kGemvRows rows (batch-1..4 decode): one block per 32 outputs, every
// weight row read once with 16-byte loads and applied to all rows held in shared memory.
template <int MR, bool kF32Out>
__global__ void __launch_bounds__(256) gemv_kernel(const bf16* __restrict__ x, int ldx, const bf16* __restrict__ w,
                                                   int N, int K, void* y, int ldy) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sx = reinterpret_cast<bf16*>(smem);
  const int n0 = blockIdx.x * kSkinnyOut;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  for (int m = 0; m < MR; ++m)
    for (int i = tid; i < K / 8; i += blockDim.x)
      reinterpret_cast<uint4*>(sx + size_t(m) * K)[i] = reinterpret_cast<const uint4*>(x + size_t(m) * ldx)[i];
  __syncthreads();
  float acc[4][MR];
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int m = 0; m < MR; ++m) acc[j][m] = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int n = n0 + warp * 4 + j;
    if (n >= N) continue;
    const bf16* wr = w + size_t(n) * K;
#pragma unroll 4
    for (int k = lane * 8; k < K; k += 256) {
      const uint4 wv = *reinterpret_cast<const uint4*>(wr + k);
      const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(&wv);
#pragma unroll
      for (int m = 0; m < MR; ++m) {
        const uint4 xv = *reinterpret_cast<const uint4*>(sx + size_t(m) * K + k);
        const __nv_bfloat162* x2 = reinterpret_cast<const __nv_bfloat162*>(&xv);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const float2 wf = __bfloat1622float2(w2[q]), xf = __bfloat1622float2(x2[q]);
          acc[j][m] += wf.x * xf.x + wf.y * xf.y;
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int m = 0; m < MR; ++m)
      for (int o = 16; o > 0; o >>= 1) acc[j][m] += __shfl_xor_sync(0xffffffffu, acc[j][m], o);
  if (lane < 4 * MR) {
    const int j = lane / MR, m = lane % MR;
    const int n = n0 + warp * 4 + j;
    float v = 0.f;
#pragma unroll
    for (int jj = 0; jj < 4; ++jj)
#pragma unroll
      for (int mm = 0; mm < MR; ++mm)
        if (jj == j && mm == m) v = acc[jj][mm];
    if (n < N) {
      if constexpr (kF32Out)
        static_cast<float*>(y)[size_t(m) * ldy + n] = v;
      else
        static_cast<bf16*>(y)[size_t(m) * ldy + n] = __float2bfloat16(v);
    }
  }
}

template <int MR>
void launch_gemv(const bf16* x, int ldx, const bf16* w, int N, int K, void* y, bool f32, int ldy, cudaStream_t s) {
  const dim3 grid((N + kSkinnyOut - 1) / kSkinnyOut);
  const size_t sm = size_t(MR) * K * sizeof(bf16);
  if (f32)
    gemv_kernel<MR, true><<<grid, 256, sm, s>>>(x, ldx, w, N, K, y, ldy);
  else
    gemv_kernel<MR, false><<<grid, 256, sm, s>>>(x, ldx, w, N, K, y, ldy);
  DSV2_CUDA_LAUNCHED();
}

}  // namespace

void gemv_rows(const bf16* x, int ldx, int M, const bf16* w, int N, int K, void* y, bool out_f32, int ldy,
               cudaStream_t s) {
  switch (M) {
    case 1: launch_gemv<1>(x, ldx, w, N, K, y, out_f32, ldy, s); break;
    case 2: launch_gemv<2>(x, ldx, w, N, K, y, out_f32, ldy, s); break;
    case 3: launch_gemv<3>(x, ldx, w, N, K, y, out_f32, ldy, s); break;
    case 4: launch_gemv<4>(x, ldx, w, N, K, y, out_f32, ldy, s); break;
    default: DSV2_CHECK(false, "gemv_rows: {} rows (at most {})", M, kGemvRows);
  }
}

void moe_gemm_rows(const bf16* x, const bf16* w, const int32_t* row_expert, int R, int N, int K, void* y,
                   bool out_f32, cudaStream_t s) {
  if (R == 0) return;
  const dim3 grid((N + kSkinnyOut - 1) / kSkinnyOut, R);
  const size_t sm = size_t(K) * sizeof(bf16);
  if (out_f32)
    moe_skinny_kernel<true><<<grid, 256, sm, s>>>(x, w, row_expert, N, K, y);
  else
    moe_skinny_kernel<false><<<grid, 256, sm, s>>>(x, w, row_expert, N, K, y);
  DSV2_CUDA_LAUNCHED();
}

template <int BM>
static void launch_tiles(const bf16* x, const bf16* w, const int32_t* tile_info, int max_tiles, int N, int K, void* y,
                         bool out_f32, cudaStream_t s) {
  constexpr size_t smem = Tile<BM>::kSmemBytes;
  static bool configured[64] = {};  // per device
  int dev = 0;
  DSV2_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 64 && !configured[dev]) {
    DSV2_CUDA_CHECK(cudaFuncSetAttribute(moe_gemm_kernel<BM, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         int(smem)));
    DSV2_CUDA_CHECK(cudaFuncSetAttribute(moe_gemm_kernel<BM, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         int(smem)));
    configured[dev] = true;
  }
  const dim3 grid((N + BN - 1) / BN, max_tiles);
  if (out_f32)
    moe_gemm_kernel<BM, true><<<grid, THREADS, smem, s>>>(x, w, tile_info, max_tiles, N, K, y);
  else
    moe_gemm_kernel<BM, false><<<grid, THREADS, smem, s>>>(x, w, tile_info, max_tiles, N, K, y);
  DSV2_CUDA_LAUNCHED();
}

void moe_gemm(const bf16* x, const bf16* w, const int32_t* tile_info, int max_tiles, int tile_m, int N, int K,
              void* y, bool out_f32, cudaStream_t s) {
  if (max_tiles == 0) return;
  DSV2_CHECK(tile_m == 16 || tile_m == 64, "moe_gemm: tile rows {} (16 or 64)", tile_m);
  if (K % 8 != 0) {
    moe_gemm_naive_kernel<<<dim3(std::min(64, (tile_m * N + 255) / 256), max_tiles), 256, 0, s>>>(
        x, w, tile_info, max_tiles, N, K, y, out_f32);
    DSV2_CUDA_LAUNCHED();
    return;
  }
  if (tile_m == 16)
    launch_tiles<16>(x, w, tile_info, max_tiles, N, K, y, out_f32, s);
  else
    launch_tiles<64>(x, w, tile_info, max_tiles, N, K, y, out_f32, s);
}

}  // namespace dsv2::cuda
