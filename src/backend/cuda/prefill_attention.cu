// Pieces of the decompressed prefill attention (reference section 3, "Decompressed MLA"): the
// products themselves run through cuBLAS in cuda_model.cpp; here are the gather of a sequence's
// latent rows out of the paged cache and the causal softmax over a block of fp32 scores.
#include <cfloat>

#include "backend/cuda/ops.h"

namespace dsv2::cuda {

namespace {

// One row per block-row: row j of the sequence lives in cache block blocks[j / 64] at j % 64.
__global__ void gather_rows_vec(const bf16* __restrict__ cache, const int32_t* __restrict__ blocks, int P, int D,
                                bf16* __restrict__ out) {
  const int j = blockIdx.x * blockDim.y + threadIdx.y;
  if (j >= P) return;
  const size_t src = (size_t(blocks[j / kAttnTile]) * kAttnTile + size_t(j % kAttnTile)) * size_t(D);
  const uint4* s = reinterpret_cast<const uint4*>(cache + src);
  uint4* d = reinterpret_cast<uint4*>(out + size_t(j) * size_t(D));
  for (int c = threadIdx.x; c < D / 8; c += blockDim.x) d[c] = s[c];
}

__global__ void gather_rows_scalar(const bf16* __restrict__ cache, const int32_t* __restrict__ blocks, int P, int D,
                                   bf16* __restrict__ out) {
  const int j = blockIdx.x * blockDim.y + threadIdx.y;
  if (j >= P) return;
  const size_t src = (size_t(blocks[j / kAttnTile]) * kAttnTile + size_t(j % kAttnTile)) * size_t(D);
  for (int c = threadIdx.x; c < D; c += blockDim.x) out[size_t(j) * size_t(D) + c] = cache[src + c];
}

constexpr int kSoftmaxThreads = 256;

__device__ inline void merge(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2);
  if (mn == -FLT_MAX) return;  // both empty
  s = s * __expf(m - mn) + s2 * __expf(m2 - mn);
  m = mn;
}

// One block per score row (head h, query i): keys 0..first_pos + i are visible.
__global__ void __launch_bounds__(kSoftmaxThreads)
    causal_softmax_kernel(const float* __restrict__ S, int ld, int nq, int Pk, int first_pos, bf16* __restrict__ probs) {
  const int row = blockIdx.x;  // h * nq + i
  const int i = row % nq;
  const int last = min(first_pos + i, Pk - 1);  // highest visible key
  const float* s = S + size_t(row) * size_t(ld);
  bf16* p = probs + size_t(row) * size_t(ld);
  float m = -FLT_MAX, sum = 0.0f;
  for (int j = threadIdx.x; j <= last; j += kSoftmaxThreads) {
    const float v = s[j];
    if (v > m) {
      sum = sum * __expf(m - v) + 1.0f;
      m = v;
    } else {
      sum += __expf(v - m);
    }
  }
  // warp, then block reduction of (max, sum)
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
    const float s2 = __shfl_xor_sync(0xffffffffu, sum, o);
    merge(m, sum, m2, s2);
  }
  __shared__ float sm[kSoftmaxThreads / 32], ss[kSoftmaxThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = sum;
  }
  __syncthreads();
  m = sm[0];
  sum = ss[0];
  for (int w = 1; w < kSoftmaxThreads / 32; ++w) merge(m, sum, sm[w], ss[w]);
  const float inv = 1.0f / sum;
  for (int j = threadIdx.x; j < Pk; j += kSoftmaxThreads)
    p[j] = __float2bfloat16(j <= last ? __expf(s[j] - m) * inv : 0.0f);
}

}  // namespace

void gather_cache_rows(const bf16* cache, const int32_t* blocks, int P, int D, bf16* out, cudaStream_t s) {
  if (P <= 0) return;
  if (D % 8 == 0) {
    const dim3 block(32, 8);
    gather_rows_vec<<<(P + 7) / 8, block, 0, s>>>(cache, blocks, P, D, out);
  } else {
    const dim3 block(32, 8);
    gather_rows_scalar<<<(P + 7) / 8, block, 0, s>>>(cache, blocks, P, D, out);
  }
  DSV2_CUDA_LAUNCHED();
}

void causal_softmax(const float* S, int ld, int rows, int nq, int Pk, int first_pos, bf16* probs, cudaStream_t s) {
  if (rows <= 0) return;
  causal_softmax_kernel<<<rows, kSoftmaxThreads, 0, s>>>(S, ld, nq, Pk, first_pos, probs);
  DSV2_CUDA_LAUNCHED();
}

}  // namespace dsv2::cuda
