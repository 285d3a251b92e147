#pragma once
// The CUDA backend's kernel boundary: plain parameters and one launch function per op family.
// Validation lives in the callers (cuda_model.cpp, the tests); kernels trust their arguments.
// Layouts: activations row-major [tokens, width]; matrices nn.Linear [out, in] bf16.
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace dsv2::cuda {

using bf16 = __nv_bfloat16;

[[noreturn]] void cuda_fail(cudaError_t e, const char* what, const char* file, int line);
#define DSV2_CUDA_CHECK(x)                                                              \
  do {                                                                                  \
    cudaError_t dsv2_err_ = (x);                                                        \
    if (dsv2_err_ != cudaSuccess) ::dsv2::cuda::cuda_fail(dsv2_err_, #x, __FILE__, __LINE__); \
  } while (0)
#define DSV2_CUDA_LAUNCHED() DSV2_CUDA_CHECK(cudaGetLastError())

// ---- elementwise / normalization (kernels.cu) ----

// x[t] (f32 residual) = float(embed[tokens[t]]); tokens out of range give zeros (callers validate).
void embed_rows(const bf16* embed, const int32_t* tokens, int T, int H, float* x, cudaStream_t s);

// The MoE combine of a grouped pass, to be summed into the residual by the next add_rmsnorm:
// sum_k weights[i, k] * yp[slot_of[i, k]] for token row i (yp null: none).
struct MoeCombine {
  const float* yp = nullptr;
  const int32_t* slot_of = nullptr;
  const float* weights = nullptr;
  int K = 0;
};
// For output row r (source row i = rows ? rows[r] : r): if comb.yp, x[i] += its combine (as
// moe_combine into a zeroed row computes it); if add, x[i] += add[i]; then
// y[r] = bf16(w * x[i] / sqrt(mean(x[i]^2) + eps)); yf[r] (optional) gets the same in f32.
void add_rmsnorm(float* x, const float* add, const int32_t* rows, int R, int H, const float* w, float eps, bf16* y,
                 float* yf, cudaStream_t s, const MoeCombine& comb = {});

// RMSNorm of bf16 rows: y[t, 0:n] = bf16(w * x / rms(x)), x with row stride ldx, y with ldy.
void rmsnorm_bf16(const bf16* x, int ldx, int T, int n, const float* w, float eps, bf16* y, int ldy, cudaStream_t s);

// a[r, i] = bf16(silu(gu[r, i]) * gu[r, I + i]) for gu rows [gate | up] of width 2I.
void silu_mul(const bf16* gu, int R, int I, bf16* a, cudaStream_t s);

// ---- MLA pieces (kernels.cu) ----

struct RopeCacheParams {
  const bf16* q;          // [T, q_stride]: per head [nope | rope] at h*(nope+rope)
  int q_stride;
  const bf16* kv;         // [T, kv_stride]: [c (kv_lora) | k_pe (rope)]
  int kv_stride;
  const float* kv_norm;   // [kv_lora] kv_a_layernorm weight
  const int32_t* slot;    // [T] cache row (block * 64 + pos % 64)
  const float* cossin;    // [T, rope]: cos then sin (rope/2 each) of the token's position, scaled by
                          // the YaRN attention factor: RopeTable::at on the host
  int T, heads, nope, rope, kv_lora;
  bf16* qfull;            // [T, heads, kv_lora + rope]: writes the roped q_pe at kv_lora
  bf16* cache;            // this layer's cache [rows, kv_lora + rope]
};
// Normalizes c and ropes k_pe into the cache rows of the new tokens; ropes q_pe into qfull.
void rope_and_cache(const RopeCacheParams& p, cudaStream_t s);

struct AttnParams {
  const bf16* q;            // [T, heads, D] absorbed queries (D = kv_lora + rope)
  const bf16* cache;        // this layer's cache [rows, D]
  const int32_t* items;     // [n_items, 4]: chunk, first row of the tile, -, -
  const int32_t* chunks;    // [n_chunks, 4]: first token, n tokens, kv length after, block-table offset
  const int32_t* blocks;    // flat block tables
  int n_items, n_splits, heads;
  float scale;
  bf16* out;                // [T, heads, kv_lora] latent outputs (before W_UV)
  float* part_o;            // [n_items, n_splits, kAttnRows, kv_lora] split partials (n_splits > 1)
  float* part_ml;           // [n_items, n_splits, kAttnRows, 2] max and sum
  bool pdl = false;         // set by mla_attention: launched with PDL (small grids only)
  // 2 <= n_splits <= kAttnClusterMergeMax: the splits of an item run as one thread-block cluster and
  // merge through distributed shared memory; out is written, part_o / part_ml are not used
  bool cluster_merge = false;
  // One token whose kv row the q/kv product left raw (gemv1_norm_absorb): the blocks whose range holds
  // its position normalize the row and rope its k_pe (rope_and_cache's operations) straight into their
  // cache tile in shared memory, and item 0's block writes it to the cache. Chunks of one token only.
  const bf16* new_kv = nullptr;         // [kv_lora + rope]: [c | k_pe] as the product wrote them
  const float* new_kv_norm = nullptr;   // [kv_lora] kv_a_layernorm weight
  const float* new_cossin = nullptr;    // [rope]
  const int32_t* new_slot = nullptr;    // its cache row
  bf16* new_cache = nullptr;            // the layer's cache (= cache) to write it to
};
// (token, head) rows per block: one m16 tile (V2-Lite's 16 heads of a token; V2's 128 heads make
// 8 items per token; with other head counts an item straddles tokens).
constexpr int kAttnRows = 16;
constexpr int kAttnTile = 64;   // cache block size the kernel's block tables index (it steps 32 positions)
// MQA flash attention over the paged latent cache with QK width 576 and V width 512 (V = the first
// 512 columns of the same rows), causal per row, split over the cache length when n_splits > 1.
// combine = false: the split partials stay in part_o / part_ml for gemv1_combine (out is not written
// when n_splits > 1).
void mla_attention(const AttnParams& p, int kv_lora, int rope, cudaStream_t s, bool combine = true);
constexpr int kAttnClusterMergeMax = 8;  // the portable cluster size
bool mla_attention_cluster_merge_supported(const AttnParams& p, int kv_lora);
// Split counts merged by the few-splits combine (one block per item), and by gemv1_combine.
constexpr int kAttnCombineFewMax = 16;

// ---- decompressed prefill attention (prefill_attention.cu; the products are cuBLAS calls) ----

// out[j, 0:D] = cache row j of a sequence (block blocks[j / 64], row j % 64) for j < P.
void gather_cache_rows(const bf16* cache, const int32_t* blocks, int P, int D, bf16* out, cudaStream_t s);
// Causal softmax over `rows` fp32 score rows (row r = head * nq + query i, row stride ld): query i
// sees keys j <= first_pos + i (and j < Pk); probs[r, j] = bf16 normalized weight, 0 for j beyond,
// for all j < Pk.
void causal_softmax(const float* S, int ld, int rows, int nq, int Pk, int first_pos, bf16* probs, cudaStream_t s);

// Fused causal attention over decompressed keys for one chunk (flash_prefill.cu): query i (position
// len0 + i) of head h attends keys j <= len0 + i; score = scale * (q_nope . k_nope + q_pe . k_pe);
// out = softmax(score) V. All strides are in elements; every pointer and stride is a multiple of 8.
struct FlashPrefillParams {
  const bf16* q;    int q_tok, q_head;      // q_nope of (i, h) at q + i*q_tok + h*q_head, `nope` values
  const bf16* q_pe; int qpe_tok, qpe_head;  // roped q_pe of (i, h), `rope` values
  const bf16* kv;   int kv_tok, kv_head;    // key j, head h: k_nope (nope values) then v (v values)
  const bf16* k_pe; int kpe_tok;            // key j: k_pe (rope values), shared by all heads
  int n_q, len0, heads;
  float scale;
  bf16* out;        int out_tok, out_head;  // (i, h): v values
};
// True for the head widths the fused kernel handles (at least nope = 128, rope = 64, v = 128).
bool flash_prefill_supported(int nope, int rope, int v);
void flash_prefill(const FlashPrefillParams& p, int nope, int rope, int v, cudaStream_t s);

// ---- MoE (kernels.cu, moe_gemm.cu) ----

struct RouterParams {
  const float* logits;    // [T, E] router logits x W_gate^T, fp32
  int T, E, K, n_group, topk_group;
  bool group_limited, norm_topk;
  float scaling;
  int32_t* ids;           // [T, ids_stride]
  float* weights;         // [T, ids_stride]
  int ids_stride = 0;     // row stride of ids / weights (0: K)
  int n_extra = 0;        // after the K routed entries: experts E..E+n_extra-1 with weight 1
};
// Softmax, (group-limited) top-k and scaling of the router logits in one kernel, one block per token.
void moe_route(const RouterParams& p, cudaStream_t s);
// The same for decode batches (T <= kRouteSmallMaxTokens) with the logits computed in the same
// launch (one thread-block cluster per 8 tokens; Hopper): p.logits is not used, x [T, H] fp32, w [E, H]
// fp32 router weights, H <= 2048. With norm_w, x is the residual stream and the logits use RMSNorm(x)
// (weights norm_w, eps) as add_rmsnorm's fp32 output. Measured on the H200 against the SGEMM + route
// pair: +0.5-1% decode tok/s at batch 8-64, -3% at 256, hence the limit.
constexpr int kRouteSmallMaxTokens = 64;
bool moe_route_small_supported(int H, int K, int n_group);
void moe_route_small(const RouterParams& p, const float* x, const float* w, int H, cudaStream_t s,
                     const float* norm_w = nullptr, float eps = 0.0f);
// The same with the RMSNorm weights folded into the router rows (w_folded = fold_norm_rows(w, norm_w)):
// x is the residual stream, logit = rsqrt(mean(x^2) + eps) * (x . w_folded row). The products round
// differently from moe_route_small's (norm applied to x first); the kernel holds fewer registers.
void moe_route_small_folded(const RouterParams& p, const float* x, const float* w_folded, int H, float eps,
                            cudaStream_t s);
// out[r, c] = w[r, c] * g[c] (fp32).
void fold_norm_rows(const float* w, const float* g, int rows, int cols, float* out, cudaStream_t s);

// Decode-sized MoE work: experts get fewer than ~96 of the R rows on average.
inline bool moe_decode_sized(int R, int E) { return R < 96 * E; }
// Rows of one expert per GEMM tile: 32 for decode-sized work (128-row tiles would spend most of
// their products on padding), else 128.
constexpr int kMoeTileRowsDecode = 32, kMoeTileRowsPrefill = 128;
inline int moe_tile_rows(int R, int E) { return moe_decode_sized(R, E) ? kMoeTileRowsDecode : kMoeTileRowsPrefill; }
struct MoeDispatch {
  int32_t* counts;      // [E]  (zeroed by moe_dispatch itself)
  int32_t* offsets;     // [E + 1]
  int32_t* tile_info;   // [max_tiles, 3]: expert, first row, rows; plus one int: number of tiles at [max_tiles*3]
  int32_t* slot_of;     // [T*K] permuted row of each (token, k)
  int32_t* row_token;   // [T*K] token (row of x) of each permuted row
  int max_tiles;
  int tile_m;           // 32 or 128 (moe_tile_rows)
};
inline int moe_max_tiles(int R, int E, int tile_m) { return (R + tile_m - 1) / tile_m + E; }
// Counts, offsets, tile list and the permutation; copies x rows into xp [T*K, H] (expert-major),
// unless xp is null (the first grouped product then gathers x rows through row_token). Up to
// kDispatchOneBlockMax rows (decode batches) it is one launch (plus the copy, if any).
constexpr int kDispatchOneBlockMax = 2048;
void moe_dispatch(const int32_t* ids, int T, int K, int E, const bf16* x, int H, const MoeDispatch& d, bf16* xp,
                  cudaStream_t s);
// y[t] += sum_k weights[t, k] * yp[slot_of[t, k]]
void moe_combine(const float* yp, const int32_t* slot_of, const float* weights, int T, int K, int H, float* y,
                 cudaStream_t s);

// Grouped GEMM over the tile list: y[r, n] = sum_k x[r, k] * w[expert(r), n, k] for rows r of each tile.
// w is [E, N, K]. y is bf16 (out_f32 false) or f32.
// With x_rows, permuted row r reads x row x_rows[r] (x not permuted: the gather replaces the copy).
// tile_fast: the grid takes tiles along x and column blocks along y (the row tiles of one expert run
// close together and share its weights in L2).
void moe_gemm(const bf16* x, const bf16* w, const int32_t* tile_info, int max_tiles, int tile_m, int N, int K,
              void* y, bool out_f32, cudaStream_t s, const int32_t* x_rows = nullptr, bool tile_fast = false);
// The first expert product with the activation in its epilogue: w is [E, 2I, K] (rows [gate | up]),
// x rows gathered through x_rows, act[r, i] = bf16(silu(bf16 g) * bf16 u), the same bits as moe_gemm
// followed by silu_mul.
inline bool moe_swiglu_supported(int I, int K) { return I % 8 == 0 && K % 8 == 0; }
void moe_gemm_swiglu(const bf16* x, const bf16* w, const int32_t* tile_info, int max_tiles, int tile_m, int I, int K,
                     bf16* act, cudaStream_t s, const int32_t* x_rows, bool tile_fast = false);


// The whole MoE block of one token in two kernels and without dispatch: y = sum_s down_{E+s}(act) +
// sum_k weights[k] * down_{ids[k]}(act), where act = silu(gate) * up of the same expert (rounded to
// bf16 as silu_mul does). The S shared experts are stored as pseudo-experts E..E+S-1 of w_gu /
// w_down (piece s = intermediate columns [s*I, (s+1)*I) of the shared MLP), so that every expert has
// the routed experts' shapes. (For two or more tokens the grouped products read each expert once for
// all its tokens, which measured faster.)
struct MoeRowsParams {
  const bf16* x;          // [T, H] post-attention normalized hidden states
  const float* xf;        // instead of x (when norm_w is set): [T, H] residual stream, normalized here
  const float* norm_w;    //   with these RMSNorm weights
  float eps;
  bool accumulate;        // y += the MoE output (the residual add) instead of y =
  const int32_t* ids;     // [T, K] routed experts
  const float* weights;   // [T, K] their weights
  int T, K, S, E, H, I;   // T = 1; S shared pieces (pseudo-experts E..E+S-1), I = moe_intermediate_size
  const bf16* w_gu;       // [E + S, 2I, H]: gate rows then up rows per expert
  const bf16* w_down;     // [E + S, H, I]
  bf16* act;              // scratch [K + S, I]: bf16(silu(gate) * up) per row (routed, then shared)
  float* y;               // [T, H], overwritten
  bool evict_first = false; // set by moe_rows: weights streamed with L2 evict_first
  bool x_wait = false;    // moe_rows_tma: xf comes from the kernel just before (no router between)
  // moe_rows_tma with route_part: no router kernel; the gate/up blocks each route the token from the
  // partials gemv1_accumulate_route wrote (the kernel just before): logits = the column sums times
  // rsqrt(mean(xf^2) + eps) (the norm's factor), then route_token_warp with `route` (its ids / weights
  // are ids / weights above).
  const float* route_part = nullptr;  // [n_part, route_part_stride(E)]
  // moe_rows_tma: gate/up units in ticket order from this zero-initialized counter (one per shape of
  // call: it advances by a fixed count per launch), instead of unit u in block u % grid
  unsigned long long* gu_tickets = nullptr;
  int n_part = 0;
  RouterParams route{};
};
bool moe_rows_supported(int T, int K, int S, int H, int I);
// stages: 1 = gate/up only, 2 = down only, 3 = both (the split is for timing experiments).
void moe_rows(const MoeRowsParams& p, cudaStream_t s, int stages = 3);
// The same products with resident blocks fed by bulk-copy pipelines (moe_tma.cu; Hopper, H a
// multiple of 256 up to 2048): the same activations as moe_rows' gate/up kernel; y summed in another
// order than moe_rows' down kernel. With K = 0, S = 1 and E = 0 it is a dense SwiGLU MLP (gate/up
// [2I, H], down [H, I]).
bool moe_rows_tma_supported(int T, int K, int S, int H, int I);
// Whether moe_rows_tma can route inside its gate/up blocks (route_part) for these settings.
bool moe_route_in_gu_supported(const RouterParams& r, int n_part);
void moe_rows_tma(const MoeRowsParams& p, cudaStream_t s, int stages = 3);

// Dense y[m, n] = sum_k x[m, k] w[n, k] for M <= kGemvRows rows (decode); K % 8 == 0, 16-byte aligned
// rows (ldx % 8 == 0). y row stride ldy; bf16 or f32 out.
constexpr int kGemvRows = 8;
void gemv_rows(const bf16* x, int ldx, int M, const bf16* w, int N, int K, void* y, bool out_f32, int ldy,
               cudaStream_t s);
// One row (batch-1 decode): y[n] = sum_k x_h[k] w[row(n), k], f32 or bf16 out. With heads
// (0 < n_head < N, n_head even): output n is in head h = n / n_head, reads weight row
// h * w_head_rows + n % n_head and x_h = x + h * x_head (per-head products such as W_UV).
// K % 8 == 0, x and the weight rows 16-byte aligned. gemv_rows with M == 1 lands here.
void gemv1(const bf16* x, const bf16* w, int N, int K, void* y, bool out_f32, cudaStream_t s, int n_head = 0,
           long long w_head_rows = 0, long long x_head = 0);
// gemv1 with heads (bf16 out) whose x_h is row h of the one-token attention output that
// mla_attention(p, ..., combine = false) left as split partials: the block merges that row as the
// few-splits combine does (the same bf16 values) before its product. One token (the rows of p are
// its heads), 1 < n_splits <= kAttnCombineFewMax, K = kv_lora, n_head a multiple of 16.
bool gemv1_combine_supported(const AttnParams& p, int K, int n_head);
// l2_next (16-byte aligned, l2_next_bytes % 16 == 0): bytes a later kernel reads, moved into the L2
// by the blocks before their PDL wait (while the attention runs).
void gemv1_combine(const AttnParams& p, const bf16* w, int N, int K, bf16* y, cudaStream_t s, int n_head,
                   long long w_head_rows, const void* l2_next = nullptr, size_t l2_next_bytes = 0);
// y[n] += sum_k x[k] w[n, k] (one row, fp32 y: the residual add fused into the product).
void gemv1_accumulate(const bf16* x, const bf16* w, int N, int K, float* y, cudaStream_t s);
// Router partials for route_in_gu (one-token MoE layers): row stride of the partials (E logits padded
// to 16 bytes), and the number of partial rows gemv1_accumulate_route writes for N outputs (0: N
// unsupported).
constexpr int route_part_stride(int E) { return (E + 3) / 4 * 4; }
int gemv1_route_parts(int N);
// gemv1_accumulate (y += x W^T, y the fp32 residual) that also writes, per block of 16 rows n, the
// partial router logits of the new y: part[b, e] = sum_n route_w[e, n] y[n] (route_w: router rows with
// the following RMSNorm's weights folded in, fold_norm_rows).
void gemv1_accumulate_route(const bf16* x, const bf16* w, int N, int K, float* y, const float* route_w, int E,
                            float* route_part, cudaStream_t s);
// y[n] = sum_k bf16(RMSNorm(x))[k] w[n, k] for the fp32 row x with norm weights norm_w (the same
// bf16 values add_rmsnorm writes, without the separate kernel); K <= gemv1's one-piece width.
bool gemv1_norm_supported(int K);
void gemv1_norm(const float* x, const float* norm_w, float eps, const bf16* w, int N, int K, bf16* y, cudaStream_t s);
// The one-token q/kv product (no q LoRA) with what absorb_q1 and rope_and_cache do to its outputs,
// except the kv row: gemv1_norm over the rows [heads x (q_nope | q_pe) | c | k_pe] (N = heads * (nope
// + rope) + kv_lora + rope), where y receives only the kv row, raw (the attention normalizes and ropes
// it: AttnParams::new_kv), qfull[h, 0:kv_lora] = the bf16 q_nope of head h times W_UK (as absorb_q1,
// up to the order of the fp32 sums) and qfull[h, kv_lora:] = its roped q_pe (as rope_and_cache). The
// q_nope rows of a head are one thread-block cluster of nope / 16 blocks that sums its W_UK partials
// through distributed shared memory (Hopper; supported() is false elsewhere).
constexpr int kQkvAbsorbLatent = 512;  // kv_lora of the form (every DeepSeek-V2 checkpoint)
struct QkvAbsorbParams {
  const bf16* uk = nullptr;     // kv_b_proj [heads * uk_head_rows, kv_lora]: W_UK_h = rows h * uk_head_rows ..
  long long uk_head_rows = 0;   // nope + v
  int heads = 0, nope = 0, rope = 0, kv_lora = 0;
  bf16* qfull = nullptr;        // [heads, kv_lora + rope]
  const float* cossin = nullptr;  // [rope]: the token's cos then sin (RopeCacheParams::cossin)
};
bool gemv1_norm_absorb_supported(int K, const QkvAbsorbParams& p);
void gemv1_norm_absorb(const float* x, const float* norm_w, float eps, const bf16* w, int K, bf16* y,
                       const QkvAbsorbParams& p, cudaStream_t s);
// Absorbed queries of one token: out[h * out_stride + c] = sum_d q[h * q_stride + d] *
// w[(h * w_head_rows + d) * C + c] for d < nope, c < C (W_UK of kv_b_proj); C % 64 == 0. With rope
// (one token), the same launch also does rope_and_cache(*rope) in one more block.
void absorb_q1(const bf16* q, int q_stride, const bf16* w, int heads, int nope, long long w_head_rows, int C,
               bf16* out, int out_stride, cudaStream_t s, const RopeCacheParams* rope = nullptr);

// ---- kernel timeline (trace.cuh; only in builds with -DDSV2_CUDA_TRACE=ON) ----

// One block of one instrumented kernel: global timer (ns) at its start, when its PDL wait returned
// (0: thread 0 did not wait) and at its end.
constexpr int kTraceMarks = 4;
struct TraceRec {
  uint32_t kernel, sm, block, blocks;
  uint64_t t0, t1, tw;
  uint64_t tm[kTraceMarks];  // DSV2_TRACE_MARK(i) stamps (0: not reached)
};
struct TraceBuf {
  TraceRec* rec = nullptr;
  uint32_t cap = 0;
  uint32_t* n = nullptr;  // records written (may exceed cap: the rest were dropped)
};
enum TraceKernel : uint32_t {
  kTrEmbed = 1, kTrNorm, kTrGemv1Norm, kTrGemv1F32, kTrGemv1Bf16, kTrGemv1Comb, kTrAbsorb, kTrAttn, kTrCombine,
  kTrRoute, kTrMoeGu, kTrMoeDown, kTrMoeTmaGu, kTrMoeTmaDown, kTrGrouped, kTrDispatch, kTrSilu, kTrSample,
  kTrQkvAbsorb, kTrKernels
};
// Binds the buffer for every instrumented kernel (does nothing in other builds).
void trace_bind(const TraceBuf& b);
bool trace_compiled();
const char* trace_kernel_name(uint32_t k);

// ---- sampling and utilities (kernels.cu) ----

// How a row is drawn: one block streaming the row (one_block), or a cluster of 8 blocks each holding
// an eighth in shared memory (cluster, Hopper); automatic: the cluster for up to kSampleClusterMaxRows
// rows (DSV2_CUDA_SAMPLE_ONE_BLOCK=1: never). The same kept sets and draws up to float rounding.
enum class SampleForm { automatic, one_block, cluster };
constexpr int kSampleClusterMaxRows = 64;
// One token per row of logits [R, V] (only the first v_limit columns are candidates): argmax when
// temperature <= 0, else softmax(logits / temperature) restricted to the top-p nucleus, drawn with a
// counter-based generator from (seed, step, row).
void sample_rows(const float* logits, int R, int V, int v_limit, float temperature, float top_p, uint64_t seed,
                 uint64_t step, int32_t* out, cudaStream_t s, SampleForm form = SampleForm::automatic);
// Per-row sampling parameters: the host sampler's pipeline without penalties (temperature, then
// top-k, top-p over what top-k kept, min-p), drawn with the uniform u from the request's generator.
struct SampleRowParams {
  float temperature;  // <= 0: argmax (lowest index on ties)
  float top_p;        // 1: off
  float min_p;        // 0: off
  int top_k;          // 0: off
  float u;            // in [0, 1)
};
// sample_rows with each row's own parameters (p: R entries in device memory). top-k keeps every
// token tied with the k-th largest (the host keeps the lower ids); otherwise the same kept set.
void sample_rows_each(const float* logits, int R, int V, int v_limit, const SampleRowParams* p, int32_t* out,
                      cudaStream_t s, SampleForm form = SampleForm::automatic);
// Greedy rows (argmax, lowest index on ties) with the row split over blocks: per-block maxima into
// scratch (argmax_scratch_bytes(R, V)), then one warp per row merges them. The same ids as
// sample_rows with temperature <= 0.
size_t argmax_scratch_bytes(int R, int V);
void argmax_rows(const float* logits, int R, int V, int v_limit, int32_t* out, void* scratch, cudaStream_t s);
// The uniform draw sample_rows uses for (seed, step, row), exposed for tests.
__host__ __device__ inline double sample_uniform(uint64_t seed, uint64_t step, uint64_t row) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull ^ (step + 0x632BE59BD9B4E019ull) * 0xBF58476D1CE4E5B9ull ^
               (row + 1) * 0x94D049BB133111EBull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return double(z >> 11) * (1.0 / 9007199254740992.0);
}

// Keeps the stream busy for about `us` microseconds (profiling: lets the host queue a whole step
// so that event times measure the GPU, not launch gaps).
void gpu_sleep(int us, cudaStream_t s);

// Fills n bf16 values with uniform(-scale, scale) (offset added) from a counter-based hash of (seed, i).
void fill_random_bf16(bf16* p, size_t n, uint64_t seed, float scale, float offset, cudaStream_t s);
void fill_random_f32(float* p, size_t n, uint64_t seed, float scale, float offset, cudaStream_t s);

}  // namespace dsv2::cuda
