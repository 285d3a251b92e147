// The DeepSeek-V2 forward pass on one GPU (reference section 3), host side: weights in bf16 laid
// out once at load (q and kv_a projections fused, gate and up fused, experts stacked), a paged
// latent cache [layer][slot][kv_lora + rope] in bf16, dense products through cuBLAS (bf16 in, fp32
// accumulate), everything else through the kernels of ops.h. The residual stream stays fp32.
// Decode-only batches run as CUDA graphs captured per (batch size, attention split count).
#include "backend/cuda/cuda_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include <cublas_v2.h>

#include "backend/cuda/ops.h"
#include "common/bf16.h"
#include "common/error.h"
#include "common/log.h"
#include "common/progress.h"
#include "model/rope.h"
#include "model/weights.h"

namespace dsv2::cuda {

namespace {

void cublas_check(cublasStatus_t st, const char* what, int line) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw Error(fmt::format("cuBLAS error at cuda_model.cpp:{}: {}: status {}", line, what, int(st)), "internal");
}
#define CUBLAS_CHECK(x) cublas_check((x), #x, __LINE__)

// Tokens per internal pass: longer batches run as consecutive passes (exact: causal order is kept).
constexpr int kMaxPassTokens = 4096;

template <typename T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  DevBuf() = default;
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : p(o.p), n(o.n) {
    o.p = nullptr;
    o.n = 0;
  }
  ~DevBuf() {
    if (p) cudaFree(p);
  }
  // Grows (contents lost); true when the address changed. Queued passes may still use the old
  // buffer, so the device finishes them first (growth happens only at new shapes).
  bool reserve(size_t count) {
    if (count <= n && p) return false;
    if (p) {
      DSV2_CUDA_CHECK(cudaDeviceSynchronize());
      cudaFree(p);
    }
    p = nullptr;
    n = 0;
    DSV2_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)));
    n = std::max<size_t>(count, 1);
    return true;
  }
};

struct DevLayer {
  DevBuf<float> input_norm, post_norm, q_a_norm, kv_a_norm;
  DevBuf<bf16> w_qkv;     // [q_out + kv_lora + rope, H]: q_proj (or q_a_proj) rows, then kv_a_proj rows
  DevBuf<bf16> q_b;       // [heads * (nope + rope), q_lora]
  DevBuf<bf16> kv_b;      // [heads * (nope + v), kv_lora]: per head W_UK rows then W_UV rows
  DevBuf<bf16> o_proj;    // [H, heads * v]
  bool moe = false;
  DevBuf<bf16> gate_up;   // dense [2I, H]: gate rows then up rows
  DevBuf<bf16> down;      // dense [H, I]
  DevBuf<float> router;   // [E, H] fp32: the routing decision is made in fp32 (reference section 3)
  DevBuf<float> router_folded;  // one-token passes with route_fold_on_: router rows x post_norm weights
  // Routed experts 0..E-1, then the shared MLP as n_shared pseudo-experts of the same shapes
  // (piece s = its intermediate columns [s*moe_inter, (s+1)*moe_inter)).
  DevBuf<bf16> exp_gu;    // [E + n_shared, 2 * moe_inter, H]: gate rows then up rows per expert
  DevBuf<bf16> exp_down;  // [E + n_shared, H, moe_inter]
};

struct PassChunk {
  SequenceCache* seq;
  const int32_t* tokens;
  int n;
  bool logits_all, logits_last;
};

// A chunk of the current pass that attends in the decompressed form.
struct DecompChunk {
  int t0;       // first token of the chunk in the pass
  int n;        // new tokens
  int len0;     // cached positions before the chunk
  size_t boff;  // offset of its block table in the pass metadata
};

// Decompressed attention bounds: the fp32 score block (heads x query block x keys) and the
// materialized [keys, heads, nope + v] rows; longer contexts take the absorbed form.
constexpr size_t kDecompScoreElems = size_t(64) << 20;
constexpr size_t kDecompKvElems = size_t(512) << 20;

class CudaModelImpl final : public CudaModel {
 public:
  CudaModelImpl(const ModelConfig& c, int device) : c_(c), device_(device), rope_tab_(c) {
    DSV2_CUDA_CHECK(cudaSetDevice(device_));
    DSV2_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&cublas_));
    CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    // A fixed workspace so that cuBLAS allocates nothing while a graph is captured.
    DSV2_CUDA_CHECK(cudaMalloc(&cublas_ws_, kCublasWs));
    CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_ws_, kCublasWs));
    cudaDeviceProp prop{};
    DSV2_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
    sms_ = prop.multiProcessorCount;
    name_ = fmt::format("cuda:{} ({})", device_, prop.name);
    trace_init();
    H_ = int(c_.hidden_size);
    heads_ = int(c_.num_attention_heads);
    nope_ = int(c_.qk_nope_head_dim);
    rope_ = int(c_.qk_rope_head_dim);
    vdim_ = int(c_.v_head_dim);
    kvl_ = int(c_.kv_lora_rank);
    D_ = kvl_ + rope_;
    qd_ = nope_ + rope_;
    q_out_ = c_.q_lora_rank > 0 ? int(c_.q_lora_rank) : heads_ * qd_;
    qkv_out_ = q_out_ + D_;
    layers_.resize(size_t(c_.num_hidden_layers));
    DSV2_CUDA_CHECK(cudaEventCreate(&ev0_));
    DSV2_CUDA_CHECK(cudaEventCreate(&ev1_));
    DSV2_CUDA_CHECK(cudaEventCreate(&st0_));
    DSV2_CUDA_CHECK(cudaEventCreate(&st1_));
    for (int k = 0; k < 2; ++k) {
      DSV2_CUDA_CHECK(cudaEventCreateWithFlags(&hmeta_[k].copied, cudaEventDisableTiming));
      DSV2_CUDA_CHECK(cudaEventCreateWithFlags(&ids_[k].done, cudaEventDisableTiming));
    }
    DSV2_CUDA_CHECK(cudaMallocHost(&host_offsets_, size_t(c_.n_routed_experts + 1) * sizeof(int32_t)));
  }

  ~CudaModelImpl() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    if (prof_on_ && !prof_ms_.empty()) profile_report("at exit");
    if (step_times_on_ && st_n_ > 0)
      log::info("cuda", "decode steps: {} timed, GPU span {:.1f} us per step, wall {:.1f} us per step (idle {:.1f} us)",
                st_n_, 1e3 * st_gpu_ms_ / double(st_n_), 1e3 * st_wall_ms_ / double(st_n_),
                1e3 * (st_wall_ms_ - st_gpu_ms_) / double(st_n_));
    // A shape seen once has a graph entry but no captured graph yet: destroying a null exec would
    // leave "invalid argument" as the thread's last error for the next model's first launch check.
    for (auto& [k, g] : graphs_)
      if (g.exec) cudaGraphExecDestroy(g.exec);
    for (int k = 0; k < 2; ++k) {
      if (hmeta_[k].p) cudaFreeHost(hmeta_[k].p);
      if (ids_[k].pin) cudaFreeHost(ids_[k].pin);
      cudaEventDestroy(hmeta_[k].copied);
      cudaEventDestroy(ids_[k].done);
    }
    if (host_offsets_) cudaFreeHost(host_offsets_);
    if (cublas_) cublasDestroy(cublas_);
    if (cublas_ws_) cudaFree(cublas_ws_);
    if (cache_) cudaFree(cache_);
    cudaEventDestroy(ev0_);
    cudaEventDestroy(ev1_);
    cudaEventDestroy(st0_);
    cudaEventDestroy(st1_);
    cudaStreamDestroy(stream_);
    cudaGetLastError();  // teardown errors are not reported; leave no error behind for later checks
  }

  // ---- construction ----
  void alloc_weights();
  void upload(const ModelWeights& w);
  void randomize(uint64_t seed);
  void init_cache(const CacheOptions& opts, bool random_fill, uint64_t seed);

  // ---- Model ----
  const ModelConfig& config() const override { return c_; }
  std::string device_name() const override { return name_; }
  BlockAllocator& blocks() override { return alloc_; }
  size_t cache_bytes_per_token() const override { return size_t(c_.num_hidden_layers) * size_t(D_) * sizeof(bf16); }
  void forward(std::span<const SeqChunk> batch, float* logits) override {
    run(batch, logits, nullptr, {}, 0, false);
    drain_ids();
  }
  void forward_select(std::span<const SeqChunk> batch, const RowUse* use, const RowSampling* sampling,
                      int64_t vocab_limit, float* logits, int32_t* ids) override {
    SampleOptions greedy;
    greedy.vocab_limit = vocab_limit;
    run(batch, logits, ids, greedy, 0, false, use, sampling);
    drain_ids();
  }
  bool samples_rows() const override { return true; }
  void queue_select(std::span<const SeqChunk> batch, const RowUse* use, const RowSampling* sampling,
                    int64_t vocab_limit, int32_t* ids, bool chain) override {
    refuse_logits_rows(batch, use);
    SampleOptions greedy;
    greedy.vocab_limit = vocab_limit;
    const uint64_t before = ids_queued_;
    run(batch, nullptr, ids, greedy, 0, chain, use, sampling);
    if (ids_queued_ - before > 1) drain_ids();  // several passes: one wait_selected() per call must do
  }
  bool wait_selected() override { return wait_sampled(); }
  bool queues_passes() const override { return true; }

  // ---- CudaModel ----
  void forward_sample(std::span<const SeqChunk> batch, const SampleOptions& opt, uint64_t step,
                      int32_t* tokens) override {
    run(batch, nullptr, tokens, opt, step, false);
    drain_ids();
  }
  void queue_sample(std::span<const SeqChunk> batch, const SampleOptions& opt, uint64_t step, int32_t* tokens,
                    bool chain) override {
    run(batch, nullptr, tokens, opt, step, chain);
  }
  bool wait_sampled() override;
  void set_graphs(bool on) override { graphs_on_ = on; }
  void profile_report(const std::string& label) override {
    if (!prof_on_) return;
    if (!label.empty()) {
      double tot = 0;
      for (auto& [n, ms] : prof_ms_) tot += ms;
      const double passes = std::max(prof_passes_, 1);
      log::info("cuda-profile", "{}: {} passes, {:.3f} ms of GPU time per pass", label, prof_passes_, tot / passes);
      for (auto& [n, ms] : prof_ms_)
        log::info("cuda-profile", "  {:>24}: {:9.3f} ms per pass ({:4.1f}%)", n, ms / passes,
                  100.0 * ms / std::max(tot, 1e-9));
    }
    prof_ms_.clear();
    prof_passes_ = 0;
  }
  double copy_bandwidth() override;
  size_t weight_bytes() const override { return weight_bytes_; }
  int64_t cache_tokens() const override { return int64_t(alloc_.total()) * kCacheBlockSize; }

 private:
  // use (with logits): forward_select's row uses (sampling: its RowUse::sample rows); tokens then
  // receives the greedy and sampled rows' ids.
  void run(std::span<const SeqChunk> batch, float* logits, int32_t* tokens, const SampleOptions& opt, uint64_t step,
           bool chain, const RowUse* use = nullptr, const RowSampling* sampling = nullptr);
  void run_pass(const std::vector<PassChunk>& pcs, float* logits, int32_t* tokens, const SampleOptions& opt,
                uint64_t step, bool chain, const RowUse* use, const RowSampling* sampling);
  // The ids of a sampled pass leave through a pinned slot; the host copies them out when its event is done.
  void queue_ids(int R, int32_t* dst);
  void drain_ids() {
    while (wait_sampled()) {
    }
  }
  void layers_forward(int T, int R, int n_items, int n_splits, int n_chunks);
  // x += the previous FFN's output (delta_ when add_delta, or the pending MoE combine, which it
  // consumes); xn = RMSNorm(x) of rows (all R rows when null).
  void residual_norm(bool add_delta, const int32_t* rows, int R, const float* w);
  // One-token passes without separate norm kernels: the products that follow each RMSNorm normalize
  // the residual stream themselves, and o_proj / the FFN add their output straight into x.
  bool fused_one_token(int T) const;
  void attention(int l, int T, int n_items, int n_splits, int n_chunks);
  void attend_decompressed(const DevLayer& L, const bf16* q, int q_stride, const bf16* cache_l, const DecompChunk& dc);
  void ffn(int l, int T);
  void gemm(const bf16* X, int M, int K, int ldx, const bf16* W, int N, void* Y, bool yf32, int ldy);
  // Y = X W^T (accumulate: Y += X W^T; only for f32 Y).
  void gemm_cublas(const bf16* X, int M, int K, int ldx, const bf16* W, int N, void* Y, bool yf32, int ldy,
                   bool accumulate = false);
  void reserve_scratch(int T, int R, int n_items, int n_splits);
  bf16* alloc_matrix(DevBuf<bf16>& b, size_t rows, size_t cols) {
    b.reserve(rows * cols);
    weight_bytes_ += rows * cols * sizeof(bf16);
    return b.p;
  }

  static constexpr size_t kCublasWs = 32u << 20;
  ModelConfig c_;
  int device_;
  int sms_ = 0;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  void* cublas_ws_ = nullptr;
  cudaEvent_t ev0_ = nullptr, ev1_ = nullptr;
  // DSV2_CUDA_STEP_TIMES=1: decode steps time their GPU span (events around the step's stream work)
  // against the wall time between the ends of consecutive steps; the means are logged at exit.
  bool step_times_on_ = std::getenv("DSV2_CUDA_STEP_TIMES") != nullptr;
  cudaEvent_t st0_ = nullptr, st1_ = nullptr;
  double st_gpu_ms_ = 0, st_wall_ms_ = 0;
  long st_n_ = 0;
  std::chrono::steady_clock::time_point st_last_end_{};
  int H_, heads_, nope_, rope_, vdim_, kvl_, D_, qd_, q_out_, qkv_out_;
  size_t weight_bytes_ = 0;

  DevBuf<bf16> embed_, lm_head_;
  DevBuf<float> final_norm_;
  std::vector<DevLayer> layers_;
  RopeTable rope_tab_;  // cos/sin per position, computed on the host like the CPU backend's

  bf16* cache_ = nullptr;  // [L][rows][D]
  size_t cache_rows_ = 0;
  BlockAllocator alloc_;

  // Scratch (grown on demand; growth invalidates captured graphs).
  DevBuf<float> x_, delta_, xnf_, logits_, part_o_, part_ml_, moe_w_, router_logits_;
  DevBuf<float> route_part_;  // route_in_gu: o_proj's per-block partial router logits
  // Greedy steps take the argmax over many blocks (argmax_rows) instead of one block per row
  // (DSV2_CUDA_NO_ARGMAX_SPLIT=1). Measured on the H200, three pairs in one call: batch 1 593 / 588 / 595
  // -> 593 / 590 / 598 tok/s (one block reads the whole 400 KB row in ~7.5 us).
  bool argmax_split_on_ = std::getenv("DSV2_CUDA_NO_ARGMAX_SPLIT") == nullptr;
  DevBuf<unsigned char> argmax_scratch_;
  // The bulk-copy gate/up kernel takes its units in ticket order from these counters (0: MoE layers,
  // 1: dense layers; zeroed once, they only grow), so that faster SMs take more units. Measured on the
  // H200 against DSV2_CUDA_TMA_NO_GU_TICKETS=1 (fixed order), three pairs in one call: batch 1 552-556
  // -> 561-566 tok/s; the gate/up blocks then end within ~2 us of each other instead of ~6.
  bool gu_tickets_on_ = std::getenv("DSV2_CUDA_TMA_NO_GU_TICKETS") == nullptr;
  DevBuf<unsigned long long> gu_tickets_;
  DevBuf<bf16> xn_, qkv_, qa_, q_, qfull_, olat_, o_, gu_, act_, xp_, gup_, actp_;
  DevBuf<float> yp_;
  // Decompressed prefill attention: gathered cache rows, materialized K/V, scores, probabilities.
  DevBuf<bf16> dlat_, dkv_, dprob_;
  DevBuf<float> dscore_;
  std::vector<DecompChunk> decomp_;
  // Chunks of at least this many new tokens attend decompressed (CacheOptions::decompress_min_tokens;
  // 0 = never). DSV2_CUDA_DECOMPRESS=0 turns the decompressed form off (A/B measurements).
  int64_t decompress_min_ = 0;
  // At most this many queries per score block (DSV2_CUDA_DECOMPRESS_QBLOCK; 0 = from kDecompScoreElems).
  int decomp_qblock_ = 0;
  DevBuf<int32_t> meta_, moe_ids_, moe_counts_, moe_offsets_, moe_tiles_, moe_slot_, moe_row_token_, sampled_;
  // Pinned pass metadata, two buffers in turn: the host fills one while the copy from the other
  // may still be queued behind a running pass.
  struct HostMeta {
    int32_t* p = nullptr;
    size_t n = 0;
    cudaEvent_t copied = nullptr;
  } hmeta_[2];
  int hmeta_cur_ = 0;
  // Sampled ids on their way to the host, oldest first: ids_[(ids_head_ + i) % 2] for i < ids_n_.
  struct PendingIds {
    int32_t* pin = nullptr;  // pinned slot
    size_t cap = 0;
    int32_t* dst = nullptr;
    int n = 0;
    cudaEvent_t done = nullptr;
  } ids_[2];
  int ids_head_ = 0, ids_n_ = 0;
  // Rows of the last pass that sampled into sampled_ (0 when the last pass did not): what a chained
  // pass may read as its input tokens.
  int chain_rows_ = 0;
  uint64_t ids_queued_ = 0;  // id transfers queued so far
  const int32_t* tok_src_ = nullptr;  // the current pass's input ids: meta_ or, chained, sampled_
  uint64_t scratch_gen_ = 0;
  // Offsets (in int32) of the metadata arrays inside meta_ for the current pass.
  size_t m_tok_ = 0, m_slot_ = 0, m_chunks_ = 0, m_items_ = 0, m_rows_ = 0, m_blocks_ = 0, m_rope_ = 0, m_params_ = 0;

  struct Graph {
    cudaGraphExec_t exec = nullptr;
    uint64_t gen = 0;
    int seen = 0;
  };
  // (tokens, attention splits, chained, argmax_limit_)
  std::map<std::tuple<int, int, bool, int>, Graph> graphs_;
  // >= 0: the pass ends with the greedy argmax of every row over ids below this (0: all) into sampled_.
  int argmax_limit_ = -1;
  bool graphs_on_ = true;
  // Dense products of <= kGemvRows rows through gemv_rows (DSV2_CUDA_GEMV=1): measured on the H200
  // at c830883 it was no faster than cuBLAS at batch 1 and slower at 2-8, so cuBLAS is the default.
  bool gemv_on_ = std::getenv("DSV2_CUDA_GEMV") != nullptr;
  // One-token products (dense projections, lm_head, W_UK absorb, W_UV) through the project's
  // kernels that load their weights before the PDL wait (gemv1, absorb_q1); DSV2_CUDA_NO_GEMV1=1
  // keeps cuBLAS.
  bool gemv1_on_ = std::getenv("DSV2_CUDA_NO_GEMV1") == nullptr;
  static bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
  // Per-expert cuBLAS products for prefill-sized MoE (DSV2_CUDA_MOE_CUBLAS=1). Measured on an H200:
  // faster for 64 prompts of 128 tokens (48K vs 36K tok/s) but slower for one 4096-token prompt
  // (475 vs 232 ms), whose tokens crowd into few experts; off by default.
  bool moe_cublas_ = std::getenv("DSV2_CUDA_MOE_CUBLAS") != nullptr;
  // DSV2_CUDA_MOE_GATHER=1: the first grouped product reads x rows through the permutation instead
  // of a permuted copy at every batch size. Decode batches of >= kMoeTileFastTokens tokens also take
  // tiles in x order (row tiles of one expert, such as the shared pseudo-experts that hold every
  // token, read its weights close in time). Measured on the H200 at 1647547+: both together at
  // batch 256 18,813 -> 19,430 tok/s; at batch 64 5,950 -> 5,912 (each alone: 5,832 / 5,936), so
  // only from 256 tokens. DSV2_CUDA_NO_MOE_TILE_FAST=1 turns that off.
  bool moe_gather_ = std::getenv("DSV2_CUDA_MOE_GATHER") != nullptr;
  bool moe_tile_fast_on_ = std::getenv("DSV2_CUDA_NO_MOE_TILE_FAST") == nullptr;
  // Decode-sized grouped passes (shared experts as pseudo-experts): the first product gathers x
  // rows and applies SiLU-and-multiply in its epilogue, and the combine is summed by the next
  // layer's add_rmsnorm (pending_comb_) instead of a memset and a combine kernel.
  // DSV2_CUDA_NO_MOE_FUSE=1 keeps the separate kernels.
  bool moe_fuse_ = std::getenv("DSV2_CUDA_NO_MOE_FUSE") == nullptr;
  MoeCombine pending_comb_{};
  static constexpr int kMoeTileFastTokens = 256;
  // Fewest cache positions per attention split when short contexts are split across blocks.
  int64_t attn_split_min_ = [] {
    const char* v = std::getenv("DSV2_CUDA_ATTN_SPLIT_MIN");
    const long n = v ? std::strtol(v, nullptr, 10) : 0;
    return int64_t(n >= 1 ? n : 16);
  }();
  // Decompressed prefill attention as one fused kernel where the head widths allow;
  // DSV2_CUDA_NO_FLASH=1 takes the cuBLAS score-matrix path.
  bool flash_on_ = std::getenv("DSV2_CUDA_NO_FLASH") == nullptr;
  // Single-token MoE in two kernels (moe_rows); DSV2_CUDA_NO_MOE_ROWS=1 takes the dispatch path.
  // Measured on the H200 at c830883: 316 vs 299 tok/s at batch 1, but slower from batch 2 (432 vs
  // 459) to 8 (659 vs 923), where the grouped products read each expert once for all its tokens.
  bool moe_rows_on_ = std::getenv("DSV2_CUDA_NO_MOE_ROWS") == nullptr;
  // One-token MoE products with bulk-copy pipelines (moe_rows_tma) where supported; measured on the
  // H200 against moe_rows (DSV2_CUDA_NO_MOE_TMA=1): batch 1 467 -> 481-485 tok/s, 32K context 385 -> 402.
  bool moe_tma_on_ = std::getenv("DSV2_CUDA_NO_MOE_TMA") == nullptr;
  bool fused1_ = false;  // the pass being recorded is a fused one-token pass
  // One-token passes run dense MLPs in the bulk-copy MoE kernels (one expert); DSV2_CUDA_NO_DENSE_TMA=1
  // keeps gemv1 + silu_mul + gemv1.
  bool dense_tma_on_ = std::getenv("DSV2_CUDA_NO_DENSE_TMA") == nullptr;
  bool dense_tma() const;
  // DSV2_CUDA_NO_FUSE_NORM=1: one-token passes keep the separate add_rmsnorm kernels.
  bool fuse_norm_on_ = std::getenv("DSV2_CUDA_NO_FUSE_NORM") == nullptr;
  // DSV2_CUDA_NO_UV_COMBINE=1: one-token passes merge the attention splits in their own launch
  // instead of inside the W_UV product.
  bool uv_combine_on_ = std::getenv("DSV2_CUDA_NO_UV_COMBINE") == nullptr;
  // DSV2_CUDA_NO_QKV_ABSORB=1: one-token passes keep the W_UK absorb (with the rope and the cache row)
  // in its own launch after the q/kv product instead of inside it (gemv1_norm_absorb) and the attention.
  bool qkv_absorb_on_ = std::getenv("DSV2_CUDA_NO_QKV_ABSORB") == nullptr;
  // DSV2_CUDA_NO_SHARED_L2=1: the one-token W_UV product leaves the shared experts' gate/up rows (23
  // MB per V2-Lite layer) where they are, instead of moving them into the L2 while the attention runs.
  // The gate/up kernel's first copies (before it has routed the token: these units) then come from
  // the memory, and the routing's loads wait behind them. Measured on the H200 at batch 1 (two calls,
  // three rounds each): 611 / 611 / 612 against 607 / 607 / 607, and 608 / 608 / 609 against 604 /
  // 603 / 604; the W_UV launch moving o_proj's rows instead: 605 against 607; the shared down rows
  // as well: 601-606 against 608-609.
  bool shared_gu_l2_ = std::getenv("DSV2_CUDA_NO_SHARED_L2") == nullptr;
  bool attn_cluster_on_ = std::getenv("DSV2_CUDA_ATTN_NO_CLUSTER") == nullptr;
  // DSV2_CUDA_ROUTER_SGEMM=1: router logits by cuBLAS SGEMM and routing in its own kernel at every
  // batch size (unfused passes only).
  bool router_sgemm_ = std::getenv("DSV2_CUDA_ROUTER_SGEMM") != nullptr;
  // Fused one-token passes route with the post-attention norm weights folded into the router rows
  // (moe_route_small_folded: 96 instead of 255 registers, the weight rows loaded during o_proj).
  // Measured on the H200 against DSV2_CUDA_NO_ROUTE_FOLD=1 (one call, five pairs): batch 1 540-552 ->
  // 562-569 tok/s, 32K context 414 -> 432.
  bool route_fold_on_ = std::getenv("DSV2_CUDA_NO_ROUTE_FOLD") == nullptr;
  void fold_router_norms();
  // Fused one-token MoE layers without a router kernel: o_proj writes per-block partial router logits
  // of the new residual (gemv1_accumulate_route) and every gate/up block routes the token from them
  // (moe_rows_tma with route_part). Measured on the H200 against DSV2_CUDA_NO_ROUTE_IN_GU=1 (the
  // folded router kernel), three pairs in one call: batch 1 562-567 -> 568-577 tok/s.
  bool route_gu_on_ = std::getenv("DSV2_CUDA_NO_ROUTE_IN_GU") == nullptr;
  bool route_in_gu(const DevLayer& L) const;
  RouterParams router_params(int T) const;
  static constexpr int kMoeCublasRows = 2048;
  int32_t* host_offsets_ = nullptr;
  bool capturing_ = false;

  // DSV2_CUDA_PROFILE=1: eager steps with events between the stages; totals logged at exit.
  bool prof_on_ = std::getenv("DSV2_CUDA_PROFILE") != nullptr;
  // DSV2_CUDA_TRACE_FILE=path (builds with -DDSV2_CUDA_TRACE=ON): every pass's kernel timeline is
  // appended to path as CSV (bench/gpu/trace.py reads it).
  std::string trace_file_ = [] {
    const char* v = std::getenv("DSV2_CUDA_TRACE_FILE");
    return std::string(v ? v : "");
  }();
  DevBuf<TraceRec> trace_rec_;
  DevBuf<uint32_t> trace_n_;
  uint64_t trace_pass_ = 0;
  void trace_init();
  void trace_write(int T);
  std::vector<std::pair<const char*, cudaEvent_t>> prof_marks_;
  std::map<std::string, double> prof_ms_;
  int prof_passes_ = 0;
  std::string prof_prefix_;
  // DSV2_CUDA_SKIP=stage,stage,...: leaves those launches out of every pass (qkv, absorb, attention,
  // uv, o_proj, router, gate_up, down, lm_head; on the grouped MoE path also dispatch, combine). The
  // results are wrong; the point is the step time without a stage, inside CUDA graphs, where
  // per-kernel profilers cannot look.
  std::string skip_ = [] {
    const char* v = std::getenv("DSV2_CUDA_SKIP");
    return v ? "," + std::string(v) + "," : std::string();
  }();
  bool skip(const char* stage) const { return !skip_.empty() && skip_.find("," + std::string(stage) + ",") != std::string::npos; }
  void mark(const char* name) {
    if (!prof_on_) return;
    cudaEvent_t e;
    DSV2_CUDA_CHECK(cudaEventCreate(&e));
    DSV2_CUDA_CHECK(cudaEventRecord(e, stream_));
    prof_marks_.push_back({name, e});
  }
  void collect_marks() {
    for (size_t i = 1; i < prof_marks_.size(); ++i) {
      float ms = 0;
      DSV2_CUDA_CHECK(cudaEventElapsedTime(&ms, prof_marks_[i - 1].second, prof_marks_[i].second));
      prof_ms_[prof_prefix_ + prof_marks_[i].first] += ms;
    }
    for (auto& [n, e] : prof_marks_) cudaEventDestroy(e);
    prof_marks_.clear();
    ++prof_passes_;
  }
};

// ---------------------------------------------------------------------------------------------
// Weights

void CudaModelImpl::alloc_weights() {
  const size_t H = size_t(H_), V = size_t(c_.vocab_size);
  embed_.reserve(V * H);
  lm_head_.reserve(V * H);
  weight_bytes_ += 2 * V * H * sizeof(bf16);
  final_norm_.reserve(H);
  for (int64_t l = 0; l < c_.num_hidden_layers; ++l) {
    DevLayer& L = layers_[size_t(l)];
    L.input_norm.reserve(H);
    L.post_norm.reserve(H);
    L.kv_a_norm.reserve(size_t(kvl_));
    alloc_matrix(L.w_qkv, size_t(qkv_out_), H);
    if (c_.q_lora_rank > 0) {
      L.q_a_norm.reserve(size_t(c_.q_lora_rank));
      alloc_matrix(L.q_b, size_t(heads_ * qd_), size_t(c_.q_lora_rank));
    }
    alloc_matrix(L.kv_b, size_t(heads_) * size_t(nope_ + vdim_), size_t(kvl_));
    alloc_matrix(L.o_proj, H, size_t(heads_ * vdim_));
    L.moe = c_.is_moe_layer(l);
    if (!L.moe) {
      const size_t I = size_t(c_.intermediate_size);
      alloc_matrix(L.gate_up, 2 * I, H);
      alloc_matrix(L.down, H, I);
    } else {
      const size_t E = size_t(c_.n_routed_experts), I = size_t(c_.moe_intermediate_size);
      const size_t ES = E + size_t(c_.n_shared_experts);
      L.router.reserve(E * H);
      weight_bytes_ += E * H * sizeof(float);
      alloc_matrix(L.exp_gu, ES * 2 * I, H);
      alloc_matrix(L.exp_down, ES * H, I);
    }
  }
}

// Rows [r0, r0 + n) of m.
Matrix row_slice(const Matrix& m, size_t r0, size_t n) {
  Matrix s = m;
  s.rows = int64_t(n);
  s.data = static_cast<const char*>(m.data) + r0 * size_t(m.cols) * dtype_size(m.dtype);
  return s;
}

// Copies matrix `m` (bf16 or f32 on the host) as bf16 to dst, through a pinned staging buffer.
class Uploader {
 public:
  Uploader(cudaStream_t s, ProgressBar& bar) : s_(s), bar_(bar) {
    DSV2_CUDA_CHECK(cudaMallocHost(&stage_[0], kStage * 2));
    DSV2_CUDA_CHECK(cudaMallocHost(&stage_[1], kStage * 2));
    DSV2_CUDA_CHECK(cudaEventCreate(&done_[0]));
    DSV2_CUDA_CHECK(cudaEventCreate(&done_[1]));
  }
  ~Uploader() {
    cudaStreamSynchronize(s_);
    cudaFreeHost(stage_[0]);
    cudaFreeHost(stage_[1]);
    cudaEventDestroy(done_[0]);
    cudaEventDestroy(done_[1]);
  }
  void matrix(const Matrix& m, bf16* dst) {
    const size_t n = size_t(m.rows) * size_t(m.cols);
    for (size_t off = 0; off < n; off += kStage) {
      const size_t cnt = std::min(kStage, n - off);
      const int b = cur_;
      cur_ ^= 1;
      DSV2_CUDA_CHECK(cudaEventSynchronize(done_[b]));
      uint16_t* st = stage_[b];
      if (m.dtype == DType::bf16) {
        std::memcpy(st, static_cast<const uint16_t*>(m.data) + off, cnt * 2);
      } else {
        const float* f = static_cast<const float*>(m.data) + off;
        for (size_t i = 0; i < cnt; ++i) st[i] = f32_to_bf16(f[i]);
      }
      DSV2_CUDA_CHECK(cudaMemcpyAsync(dst + off, st, cnt * 2, cudaMemcpyHostToDevice, s_));
      DSV2_CUDA_CHECK(cudaEventRecord(done_[b], s_));
      bar_.add(cnt * 2);
    }
  }
  void matrix_f32(const Matrix& m, float* dst) {
    const size_t n = size_t(m.rows) * size_t(m.cols);
    std::vector<float> f(n);
    if (m.dtype == DType::f32) {
      std::memcpy(f.data(), m.data, n * sizeof(float));
    } else {
      const uint16_t* b = static_cast<const uint16_t*>(m.data);
      for (size_t i = 0; i < n; ++i) f[i] = bf16_to_f32(b[i]);
    }
    DSV2_CUDA_CHECK(cudaMemcpyAsync(dst, f.data(), n * sizeof(float), cudaMemcpyHostToDevice, s_));
    DSV2_CUDA_CHECK(cudaStreamSynchronize(s_));
    bar_.add(n * sizeof(float));
  }
  // Columns [c0, c0 + n) of m as a [rows, n] bf16 matrix.
  void matrix_cols(const Matrix& m, size_t c0, size_t n, bf16* dst) {
    std::vector<uint16_t> b(size_t(m.rows) * n);
    for (size_t r = 0; r < size_t(m.rows); ++r)
      for (size_t c = 0; c < n; ++c) {
        const size_t i = r * size_t(m.cols) + c0 + c;
        b[r * n + c] = m.dtype == DType::bf16 ? static_cast<const uint16_t*>(m.data)[i]
                                               : f32_to_bf16(static_cast<const float*>(m.data)[i]);
      }
    DSV2_CUDA_CHECK(cudaMemcpyAsync(dst, b.data(), b.size() * 2, cudaMemcpyHostToDevice, s_));
    DSV2_CUDA_CHECK(cudaStreamSynchronize(s_));
    bar_.add(b.size() * 2);
  }
  void vec(const std::vector<float>& v, float* dst) {
    DSV2_CUDA_CHECK(cudaMemcpyAsync(dst, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice, s_));
    DSV2_CUDA_CHECK(cudaStreamSynchronize(s_));
  }

 private:
  static constexpr size_t kStage = size_t(16) << 20;  // elements
  cudaStream_t s_;
  ProgressBar& bar_;
  uint16_t* stage_[2] = {nullptr, nullptr};
  cudaEvent_t done_[2] = {nullptr, nullptr};
  int cur_ = 0;
};

void CudaModelImpl::upload(const ModelWeights& w) {
  ProgressBar bar("upload to " + name_, weight_bytes_, true);
  Uploader up(stream_, bar);
  const size_t H = size_t(H_);
  up.matrix(w.embed, embed_.p);
  up.matrix(w.lm_head, lm_head_.p);
  up.vec(w.final_norm, final_norm_.p);
  for (size_t l = 0; l < layers_.size(); ++l) {
    const LayerWeights& s = w.layers[l];
    DevLayer& d = layers_[l];
    up.vec(s.input_norm, d.input_norm.p);
    up.vec(s.post_norm, d.post_norm.p);
    up.vec(s.kv_a_norm, d.kv_a_norm.p);
    if (c_.q_lora_rank > 0) {
      up.matrix(s.q_a_proj, d.w_qkv.p);
      up.vec(s.q_a_norm, d.q_a_norm.p);
      up.matrix(s.q_b_proj, d.q_b.p);
    } else {
      up.matrix(s.q_proj, d.w_qkv.p);
    }
    up.matrix(s.kv_a_proj, d.w_qkv.p + size_t(q_out_) * H);
    up.matrix(s.kv_b_proj, d.kv_b.p);
    up.matrix(s.o_proj, d.o_proj.p);
    if (!d.moe) {
      const size_t I = size_t(c_.intermediate_size);
      up.matrix(s.gate_proj, d.gate_up.p);
      up.matrix(s.up_proj, d.gate_up.p + I * H);
      up.matrix(s.down_proj, d.down.p);
    } else {
      const size_t E = size_t(c_.n_routed_experts), I = size_t(c_.moe_intermediate_size);
      up.matrix_f32(s.router, d.router.p);
      for (size_t e = 0; e < E; ++e) {
        up.matrix(s.exp_gate[e], d.exp_gu.p + e * 2 * I * H);
        up.matrix(s.exp_up[e], d.exp_gu.p + (e * 2 + 1) * I * H);
        up.matrix(s.exp_down[e], d.exp_down.p + e * H * I);
      }
      for (size_t sp = 0; sp < size_t(c_.n_shared_experts); ++sp) {  // pseudo-expert E + sp
        up.matrix(row_slice(s.sh_gate, sp * I, I), d.exp_gu.p + (E + sp) * 2 * I * H);
        up.matrix(row_slice(s.sh_up, sp * I, I), d.exp_gu.p + ((E + sp) * 2 + 1) * I * H);
        up.matrix_cols(s.sh_down, sp * I, I, d.exp_down.p + (E + sp) * H * I);
      }
    }
  }
  fold_router_norms();
  DSV2_CUDA_CHECK(cudaStreamSynchronize(stream_));
  bar.finish();
}

void CudaModelImpl::randomize(uint64_t seed) {
  uint64_t k = seed * 1000003ull;
  auto mat = [&](DevBuf<bf16>& b, size_t cols) {
    if (!b.p) return;
    // uniform(-a, a) with a = sqrt(3 / in): unit-variance outputs for unit-variance inputs
    fill_random_bf16(b.p, b.n, ++k, float(std::sqrt(3.0 / double(cols))), 0.0f, stream_);
  };
  auto norm = [&](DevBuf<float>& b) {
    if (b.p) fill_random_f32(b.p, b.n, ++k, 0.1f, 1.0f, stream_);
  };
  const size_t H = size_t(H_);
  fill_random_bf16(embed_.p, embed_.n, ++k, 1.0f, 0.0f, stream_);
  mat(lm_head_, H);
  norm(final_norm_);
  for (auto& L : layers_) {
    norm(L.input_norm);
    norm(L.post_norm);
    norm(L.q_a_norm);
    norm(L.kv_a_norm);
    mat(L.w_qkv, H);
    mat(L.q_b, size_t(c_.q_lora_rank));
    mat(L.kv_b, size_t(kvl_));
    mat(L.o_proj, size_t(heads_ * vdim_));
    mat(L.gate_up, H);
    mat(L.down, size_t(c_.intermediate_size));
    if (L.router.p) fill_random_f32(L.router.p, L.router.n, ++k, float(std::sqrt(3.0 / double(H))), 0.0f, stream_);
    mat(L.exp_gu, H);
    mat(L.exp_down, size_t(c_.moe_intermediate_size));
  }
  fold_router_norms();
  DSV2_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaModelImpl::fold_router_norms() {
  if (!route_fold_on_) return;
  const int E = int(c_.n_routed_experts);
  for (auto& L : layers_) {
    if (!L.router.p) continue;
    L.router_folded.reserve(size_t(E) * size_t(H_));
    fold_norm_rows(L.router.p, L.post_norm.p, E, H_, L.router_folded.p, stream_);
  }
}

void CudaModelImpl::init_cache(const CacheOptions& opts, bool random_fill, uint64_t seed) {
  decompress_min_ = opts.decompress_min_tokens;
  if (const char* e = std::getenv("DSV2_CUDA_DECOMPRESS"); e && std::string(e) == "0") decompress_min_ = 0;
  if (const char* e = std::getenv("DSV2_CUDA_DECOMPRESS_QBLOCK")) decomp_qblock_ = std::max(0, std::atoi(e));
  const size_t per_block = size_t(kCacheBlockSize) * cache_bytes_per_token();
  size_t free_b = 0, total_b = 0;
  DSV2_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  // Keep room for the scratch of a full pass (activations, MoE rows, logits) and cuBLAS.
  const size_t T = kMaxPassTokens, K = size_t(std::max<int64_t>(c_.num_experts_per_tok, 1));
  const size_t reserve_b = (size_t(1) << 30) +
                           (T * (size_t(H_) * 24 + size_t(heads_) * size_t(D_ + kvl_) * 2 + size_t(qkv_out_) * 2) +
                            T * K * (size_t(H_) * 6 + size_t(c_.moe_intermediate_size) * 6) +
                            T * size_t(c_.vocab_size) * 4) +
                           // decompressed prefill scratch: scores and probabilities, K/V and latents of 2 passes
                           kDecompScoreElems * 6 + 2 * T * size_t(heads_) * size_t(nope_ + vdim_) * 2 +
                           2 * T * size_t(D_) * 2;
  int64_t n_blocks;
  if (opts.max_tokens > 0) {
    n_blocks = (opts.max_tokens + kCacheBlockSize - 1) / kCacheBlockSize;
    if (size_t(n_blocks) * per_block + reserve_b > free_b)
      fail("latent cache of {} tokens needs {:.2f} GB but only {:.2f} GB are free on {}", opts.max_tokens,
           double(n_blocks * per_block) / 1e9, double(free_b - std::min(free_b, reserve_b)) / 1e9, name_);
  } else {
    const double usable = free_b > reserve_b ? double(free_b - reserve_b) * opts.memory_fraction : 0.0;
    n_blocks = int64_t(usable / double(per_block));
    // Positions beyond the model's context are never needed by one sequence, but many sequences
    // share the cache: cap only by what int32 slot indices can address.
    n_blocks = std::min<int64_t>(n_blocks, (int64_t(1) << 31) / kCacheBlockSize - 1);
  }
  if (n_blocks <= 0) fail("no device memory left for the latent cache on {} ({:.2f} GB free)", name_, free_b / 1e9);
  cache_rows_ = size_t(n_blocks) * kCacheBlockSize;
  DSV2_CUDA_CHECK(cudaMalloc(&cache_, cache_rows_ * size_t(c_.num_hidden_layers) * size_t(D_) * sizeof(bf16)));
  if (random_fill)
    fill_random_bf16(cache_, cache_rows_ * size_t(c_.num_hidden_layers) * size_t(D_), seed ^ 0xC0FFEEull, 1.0f, 0.0f,
                     stream_);
  else
    DSV2_CUDA_CHECK(cudaMemsetAsync(cache_, 0, cache_rows_ * size_t(c_.num_hidden_layers) * size_t(D_) * 2, stream_));
  DSV2_CUDA_CHECK(cudaStreamSynchronize(stream_));
  alloc_.reset(int32_t(n_blocks));
  log::info("cuda", "{}: weights {:.2f} GB; latent cache {:.2f} GB = {} blocks of {} = {} tokens ({} bytes/token)",
            name_, double(weight_bytes_) / 1e9, double(n_blocks * per_block) / 1e9, n_blocks, kCacheBlockSize,
            cache_rows_, cache_bytes_per_token());
}

double CudaModelImpl::copy_bandwidth() {
  DSV2_CUDA_CHECK(cudaSetDevice(device_));
  const size_t bytes = size_t(1) << 30;
  DevBuf<unsigned char> a, b;
  a.reserve(bytes);
  b.reserve(bytes);
  DSV2_CUDA_CHECK(cudaMemsetAsync(a.p, 1, bytes, stream_));
  for (int i = 0; i < 3; ++i) DSV2_CUDA_CHECK(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice, stream_));
  const int reps = 20;
  DSV2_CUDA_CHECK(cudaEventRecord(ev0_, stream_));
  for (int i = 0; i < reps; ++i)
    DSV2_CUDA_CHECK(cudaMemcpyAsync(i % 2 ? a.p : b.p, i % 2 ? b.p : a.p, bytes, cudaMemcpyDeviceToDevice, stream_));
  DSV2_CUDA_CHECK(cudaEventRecord(ev1_, stream_));
  DSV2_CUDA_CHECK(cudaEventSynchronize(ev1_));
  float ms = 0;
  DSV2_CUDA_CHECK(cudaEventElapsedTime(&ms, ev0_, ev1_));
  return 2.0 * double(bytes) * reps / (double(ms) * 1e-3);
}

// ---------------------------------------------------------------------------------------------
// Forward

void CudaModelImpl::gemm(const bf16* X, int M, int K, int ldx, const bf16* W, int N, void* Y, bool yf32, int ldy) {
  if (M == 0) return;
  if (M == 1 && gemv1_on_ && K % 8 == 0 && aligned16(X) && aligned16(W)) {
    gemv1(X, W, N, K, Y, yf32, stream_);
    return;
  }
  if (M <= kGemvRows && gemv_on_ && K % 8 == 0 && ldx % 8 == 0 && size_t(M) * K * 2 <= 48 * 1024) {
    gemv_rows(X, ldx, M, W, N, K, Y, yf32, ldy, stream_);
    return;
  }
  gemm_cublas(X, M, K, ldx, W, N, Y, yf32, ldy);
}

void CudaModelImpl::gemm_cublas(const bf16* X, int M, int K, int ldx, const bf16* W, int N, void* Y, bool yf32,
                                int ldy, bool accumulate) {
  const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  // Row-major Y[M, N] = X[M, K] W[N, K]^T is column-major Y^T = W^T(op T) X^T.
  CUBLAS_CHECK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, W, CUDA_R_16BF, K, X, CUDA_R_16BF, ldx,
                            &beta, Y, yf32 ? CUDA_R_32F : CUDA_R_16BF, ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void CudaModelImpl::reserve_scratch(int T, int R, int n_items, int n_splits) {
  const size_t t = size_t(T), H = size_t(H_);
  bool grown = false;
  grown |= x_.reserve(t * H);
  grown |= delta_.reserve(t * H);
  grown |= xnf_.reserve(t * H);
  grown |= xn_.reserve(t * H);
  grown |= qkv_.reserve(t * size_t(qkv_out_));
  if (c_.q_lora_rank > 0) {
    grown |= qa_.reserve(t * size_t(c_.q_lora_rank));
    grown |= q_.reserve(t * size_t(heads_ * qd_));
  }
  grown |= qfull_.reserve(t * size_t(heads_) * size_t(D_));
  grown |= olat_.reserve(t * size_t(heads_) * size_t(kvl_));
  grown |= o_.reserve(t * size_t(heads_ * vdim_));
  const size_t I = size_t(c_.intermediate_size), Im = size_t(c_.moe_intermediate_size);
  const size_t S = size_t(c_.n_shared_experts) * Im;
  const size_t wide = std::max(I, S);
  grown |= gu_.reserve(t * 2 * wide);
  grown |= act_.reserve(t * wide);
  if (c_.n_routed_experts > 0) {
    // routed rows plus, when the shared experts join the grouped products, one row per piece
    const size_t K = size_t(c_.num_experts_per_tok + c_.n_shared_experts);
    const size_t E = size_t(c_.n_routed_experts + c_.n_shared_experts);
    const size_t rows = t * K;
    grown |= moe_ids_.reserve(rows);
    grown |= moe_w_.reserve(rows);
    grown |= router_logits_.reserve(t * E);
    grown |= route_part_.reserve(size_t(std::max(gemv1_route_parts(H_), 1)) * size_t(route_part_stride(int(E))));
    if (gu_tickets_.reserve(2)) {
      grown = true;
      DSV2_CUDA_CHECK(cudaMemset(gu_tickets_.p, 0, 2 * sizeof(unsigned long long)));
    }
    grown |= moe_slot_.reserve(rows);
    grown |= moe_row_token_.reserve(rows);
    grown |= moe_counts_.reserve(E);
    grown |= moe_offsets_.reserve(E + 1);
    grown |= moe_tiles_.reserve(size_t(moe_max_tiles(int(rows), int(E), kMoeTileRowsDecode)) * 3 + 1);
    grown |= xp_.reserve(rows * H);
    grown |= gup_.reserve(rows * 2 * Im);
    grown |= actp_.reserve(rows * Im);
    grown |= yp_.reserve(rows * H);
  }
  if (n_splits > 1) {
    grown |= part_o_.reserve(size_t(n_items) * n_splits * kAttnRows * size_t(kvl_));
    grown |= part_ml_.reserve(size_t(n_items) * n_splits * kAttnRows * 2);
  }
  grown |= logits_.reserve(size_t(R) * size_t(c_.vocab_size));
  grown |= sampled_.reserve(size_t(R));
  grown |= argmax_scratch_.reserve(argmax_scratch_bytes(int(R), int(c_.vocab_size)));
  if (grown) ++scratch_gen_;
}

void CudaModelImpl::run(std::span<const SeqChunk> batch, float* logits, int32_t* tokens, const SampleOptions& opt,
                        uint64_t step, bool chain, const RowUse* use, const RowSampling* sampling) {
  DSV2_CUDA_CHECK(cudaSetDevice(device_));
  const int64_t V = c_.vocab_size;
  for (auto& ch : batch) {
    DSV2_CHECK(ch.seq != nullptr);
    const int64_t n = int64_t(ch.tokens.size());
    DSV2_CHECK(ch.seq->length + n <= ch.seq->capacity(), "cache blocks do not cover {} tokens", ch.seq->length + n);
    if (chain) {
      if (n != 1 || ch.all_logits) fail("a chained pass takes one-token chunks only");
      continue;  // the input is on the device
    }
    for (int32_t id : ch.tokens)
      if (id < 0 || id >= V) fail("token id {} is outside the vocabulary [0, {})", id, V);
  }
  if (chain && (int64_t(batch.size()) != chain_rows_ || !tokens))
    fail("a chained pass needs the previous pass to have sampled one id per chunk ({} chunks, {} ids)", batch.size(),
         chain_rows_);
  // Cut the batch into passes of at most kMaxPassTokens tokens, keeping chunk order.
  std::vector<PassChunk> pass;
  int in_pass = 0;
  int64_t rows_done = 0;
  auto flush = [&]() {
    if (pass.empty()) return;
    int64_t rows = 0;
    for (auto& pc : pass) rows += pc.logits_all ? pc.n : (pc.logits_last ? 1 : 0);
    run_pass(pass, logits ? logits + rows_done * V : nullptr, tokens ? tokens + rows_done : nullptr, opt, step, chain,
             use ? use + rows_done : nullptr, sampling ? sampling + rows_done : nullptr);
    rows_done += rows;
    pass.clear();
    in_pass = 0;
  };
  for (auto& ch : batch) {
    const int n = int(ch.tokens.size());
    int done = 0;
    while (done < n) {
      if (in_pass == kMaxPassTokens) flush();
      const int take = std::min(n - done, kMaxPassTokens - in_pass);
      pass.push_back({ch.seq, ch.tokens.data() + done, take, ch.all_logits, done + take == n});
      in_pass += take;
      done += take;
      if (done < n) flush();  // the rest of this chunk needs these positions in the cache first
    }
  }
  flush();
}

void CudaModelImpl::run_pass(const std::vector<PassChunk>& pcs, float* logits, int32_t* tokens,
                             const SampleOptions& opt, uint64_t step, bool chain, const RowUse* use,
                             const RowSampling* sampling) {
  // Host metadata: [tokens T][slot T][chunks 4C][items 4I][logit rows R][block tables][cos/sin T x rope]
  // [sampled rows' parameters R x SampleRowParams, when rows are drawn].
  // Which rows are chosen on the device: every row (forward_sample) or forward_select's greedy and
  // sampled rows. A greedy-only choice runs inside the pass (and its graph), right after lm_head.
  // every_row: an id for each row, which a chained pass after this one reads.
  bool pick = !use, draw = false, every_row = true;
  int64_t n_rows = 0;
  for (auto& pc : pcs) n_rows += pc.logits_all ? pc.n : (pc.logits_last ? 1 : 0);
  for (int64_t r = 0; use && r < n_rows; ++r) {
    const bool chosen = use[r] == RowUse::greedy || use[r] == RowUse::sample;
    pick |= chosen;
    every_row &= chosen;
    draw |= use[r] == RowUse::sample;
  }
  int T = 0, R = 0, I = 0;
  int64_t max_kv = 0;
  size_t nblk = 0;
  bool decode_only = true;
  for (auto& pc : pcs) decode_only &= pc.n == 1 && (pc.logits_all || pc.logits_last);
  // Long chunks attend decompressed (never in decode-only passes: those are captured as graphs
  // keyed by batch shape, and one-token chunks gain nothing); the rest share the absorbed kernel.
  std::vector<char> decomp(pcs.size(), 0);
  decomp_.clear();
  {
    size_t boff = 0;
    int t = 0;
    for (size_t ci = 0; ci < pcs.size(); ++ci) {
      const PassChunk& pc = pcs[ci];
      const int64_t P = pc.seq->length + pc.n;
      if (!decode_only && decompress_min_ > 0 && pc.n >= decompress_min_ &&
          size_t(P) * size_t(heads_) * size_t(nope_ + vdim_) <= kDecompKvElems) {
        decomp[ci] = 1;
        decomp_.push_back({t, pc.n, int(pc.seq->length), boff});
      }
      boff += pc.seq->blocks.size();
      t += pc.n;
    }
  }
  for (size_t ci = 0; ci < pcs.size(); ++ci) {
    const PassChunk& pc = pcs[ci];
    T += pc.n;
    R += pc.logits_all ? pc.n : (pc.logits_last ? 1 : 0);
    nblk += pc.seq->blocks.size();
    if (decomp[ci]) continue;
    I += (pc.n * heads_ + kAttnRows - 1) / kAttnRows;
    const int64_t kvlen = pc.seq->length + pc.n;
    max_kv = std::max(max_kv, kvlen);
  }
  const int C = int(pcs.size());
  if (T == 0) return;
  // Split the cache range over blocks when the batch alone would not fill the GPU, as far as one wave
  // of blocks (2 per SM): at batch 256 a second split measured 2.4% slower decode (20,241-20,290 vs
  // 20,728-20,770 tok/s on the H200 with DSV2_CUDA_ATTN_SPLIT_MIN=256 against the default).
  int n_splits = 1;
  // Powers of two only, so that few distinct decode graphs exist.
  if (I > 0 && I < 2 * sms_) {
    // at least attn_split_min_ cache positions per split (DSV2_CUDA_ATTN_SPLIT_MIN, default 16: at batch 1
    // and ~160 positions 529 -> 533-547 tok/s with 32 against 128, batch 8 and 32 unchanged; after the
    // router moved into the gate/up kernel, 16 against 32: 589-594 -> 596-599)
    const int64_t by_len = (max_kv + attn_split_min_ - 1) / attn_split_min_;
    const int want = int(std::clamp<int64_t>(std::min<int64_t>(2 * sms_ / I, by_len), 1, 128));
    while (n_splits * 2 <= want) n_splits *= 2;
  }
  static_assert(sizeof(SampleRowParams) % sizeof(int32_t) == 0 && alignof(SampleRowParams) <= alignof(int32_t));
  constexpr size_t kParamWords = sizeof(SampleRowParams) / sizeof(int32_t);
  const size_t need =
      size_t(2 * T + 4 * C + 4 * I + R) + nblk + size_t(T) * size_t(rope_) + (draw ? size_t(R) * kParamWords : 0);
  hmeta_cur_ ^= 1;
  HostMeta& hmb = hmeta_[hmeta_cur_];
  DSV2_CUDA_CHECK(cudaEventSynchronize(hmb.copied));  // its last copy (two passes ago) has been read
  if (need > hmb.n) {
    if (hmb.p) cudaFreeHost(hmb.p);
    hmb.n = need * 2;
    DSV2_CUDA_CHECK(cudaMallocHost(&hmb.p, hmb.n * sizeof(int32_t)));
  }
  if (need > meta_.n && meta_.reserve(need * 2)) ++scratch_gen_;
  m_tok_ = 0;
  m_slot_ = size_t(T);
  m_chunks_ = 2 * size_t(T);
  m_items_ = m_chunks_ + 4 * size_t(C);
  m_rows_ = m_items_ + 4 * size_t(I);
  m_blocks_ = m_rows_ + size_t(R);
  m_rope_ = m_blocks_ + nblk;  // [T, rope] floats
  m_params_ = m_rope_ + size_t(T) * size_t(rope_);
  int32_t* hm = hmb.p;
  if (draw) {  // with the metadata, so that a queued pass's parameters are not rewritten before they are read
    DSV2_CHECK(sampling != nullptr, "forward_select: sampled rows without their parameters");
    auto* params = reinterpret_cast<SampleRowParams*>(hm + m_params_);
    for (int r = 0; r < R; ++r) {
      const RowSampling& q = sampling[r];
      const float u = std::min(float(q.u), 0.99999994f);  // below 1 after the rounding to float
      params[r] = use[r] == RowUse::sample ? SampleRowParams{q.temperature, q.top_p, q.min_p, q.top_k, u}
                                           : SampleRowParams{0.0f, 1.0f, 0.0f, 0, 0.0f};
    }
  }
  int t = 0, it = 0, r = 0;
  size_t boff = 0;
  for (int ci = 0; ci < C; ++ci) {
    const PassChunk& pc = pcs[size_t(ci)];
    const int64_t len0 = pc.seq->length;
    for (int i = 0; i < pc.n; ++i) {
      const int64_t pos = len0 + i;
      hm[m_tok_ + size_t(t + i)] = chain ? 0 : pc.tokens[i];
      float* cs = reinterpret_cast<float*>(hm + m_rope_ + size_t(t + i) * size_t(rope_));
      rope_tab_.at(pos, cs, cs + rope_ / 2);
      hm[m_slot_ + size_t(t + i)] =
          pc.seq->blocks[size_t(pos / kCacheBlockSize)] * int32_t(kCacheBlockSize) + int32_t(pos % kCacheBlockSize);
      if (pc.logits_all || (pc.logits_last && i == pc.n - 1)) hm[m_rows_ + size_t(r++)] = t + i;
    }
    hm[m_chunks_ + 4 * size_t(ci) + 0] = t;
    hm[m_chunks_ + 4 * size_t(ci) + 1] = pc.n;
    hm[m_chunks_ + 4 * size_t(ci) + 2] = int32_t(len0 + pc.n);
    hm[m_chunks_ + 4 * size_t(ci) + 3] = int32_t(boff);
    for (int row = 0; !decomp[size_t(ci)] && row < pc.n * heads_; row += kAttnRows) {
      hm[m_items_ + 4 * size_t(it) + 0] = ci;
      hm[m_items_ + 4 * size_t(it) + 1] = row;
      hm[m_items_ + 4 * size_t(it) + 2] = 0;
      hm[m_items_ + 4 * size_t(it) + 3] = 0;
      ++it;
    }
    std::memcpy(hm + m_blocks_ + boff, pc.seq->blocks.data(), pc.seq->blocks.size() * sizeof(int32_t));
    boff += pc.seq->blocks.size();
    t += pc.n;
  }
  reserve_scratch(T, R, I, n_splits);
  tok_src_ = chain ? sampled_.p : meta_.p + m_tok_;
  // Step times need the host to wait for each step (not the case for queued passes).
  const bool timed = step_times_on_ && decode_only && !chain && ids_n_ == 0;
  if (timed) DSV2_CUDA_CHECK(cudaEventRecord(st0_, stream_));
  if (!timed) st_last_end_ = {};  // a wall interval spans two consecutive decode steps only
  DSV2_CUDA_CHECK(cudaMemcpyAsync(meta_.p, hm, need * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  DSV2_CUDA_CHECK(cudaEventRecord(hmb.copied, stream_));
  if (trace_n_.p) DSV2_CUDA_CHECK(cudaMemsetAsync(trace_n_.p, 0, sizeof(uint32_t), stream_));

  const bool choose = tokens && R > 0 && pick;
  argmax_limit_ =
      choose && !draw && argmax_split_on_ && opt.temperature <= 0.0f ? int(std::max<int64_t>(opt.vocab_limit, 0)) : -1;

  bool ran = false;
  prof_prefix_ = decode_only ? "decode " : "prefill ";
  if (decode_only && graphs_on_ && !prof_on_) {
    Graph& g = graphs_[{T, n_splits, chain, argmax_limit_}];
    if (g.exec && g.gen != scratch_gen_) {
      cudaGraphExecDestroy(g.exec);
      g.exec = nullptr;
      g.seen = 0;
    }
    if (!g.exec && ++g.seen >= 2) {  // the first time runs eagerly (lazy initialization stays out)
      cudaGraph_t graph = nullptr;
      DSV2_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      capturing_ = true;
      try {
        layers_forward(T, R, I, n_splits, C);
        capturing_ = false;
      } catch (...) {
        capturing_ = false;
        cudaStreamEndCapture(stream_, &graph);
        if (graph) cudaGraphDestroy(graph);
        throw;
      }
      DSV2_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
      DSV2_CUDA_CHECK(cudaGraphInstantiate(&g.exec, graph, 0));
      cudaGraphDestroy(graph);
      g.gen = scratch_gen_;
    }
    if (g.exec) {
      DSV2_CUDA_CHECK(cudaGraphLaunch(g.exec, stream_));
      ran = true;
    }
  }
  if (!ran) layers_forward(T, R, I, n_splits, C);

  const size_t V = size_t(c_.vocab_size);
  if (logits && !use) {
    DSV2_CUDA_CHECK(cudaMemcpyAsync(logits, logits_.p, size_t(R) * V * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  }
  for (int r0 = 0; use && r0 < R;) {  // runs of rows whose logits are wanted
    if (use[r0] != RowUse::logits) {
      ++r0;
      continue;
    }
    int r1 = r0 + 1;
    while (r1 < R && use[r1] == RowUse::logits) ++r1;
    DSV2_CUDA_CHECK(cudaMemcpyAsync(logits + size_t(r0) * V, logits_.p + size_t(r0) * V,
                                    size_t(r1 - r0) * V * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    r0 = r1;
  }
  if (choose) {
    if (argmax_limit_ >= 0) {
      // chosen inside the pass
    } else if (draw) {
      sample_rows_each(logits_.p, R, int(V), int(opt.vocab_limit),
                       reinterpret_cast<const SampleRowParams*>(meta_.p + m_params_), sampled_.p, stream_);
    } else {
      sample_rows(logits_.p, R, int(V), int(opt.vocab_limit), opt.temperature, opt.top_p, opt.seed, step,
                  sampled_.p, stream_);
    }
    queue_ids(R, tokens);
  }
  chain_rows_ = tokens && pick && every_row ? R : 0;
  if (timed) DSV2_CUDA_CHECK(cudaEventRecord(st1_, stream_));
  // Only sampled passes that the caller queued return before the GPU is done.
  const bool queued = tokens && !logits && !timed && !prof_on_ && !trace_n_.p;
  if (!queued) {
    DSV2_CUDA_CHECK(cudaStreamSynchronize(stream_));
    drain_ids();
  }
  if (timed) {
    const auto now = std::chrono::steady_clock::now();
    float ms = 0.0f;
    DSV2_CUDA_CHECK(cudaEventElapsedTime(&ms, st0_, st1_));
    if (st_last_end_ != std::chrono::steady_clock::time_point{}) {  // the first step has no wall interval
      st_gpu_ms_ += ms;
      st_wall_ms_ += std::chrono::duration<double, std::milli>(now - st_last_end_).count();
      ++st_n_;
    }
    st_last_end_ = now;
  }
  if (prof_on_) collect_marks();
  if (trace_n_.p) trace_write(T);
  for (auto& pc : pcs) pc.seq->length += pc.n;
}

void CudaModelImpl::queue_ids(int R, int32_t* dst) {
  if (ids_n_ == 2) wait_sampled();
  PendingIds& q = ids_[(ids_head_ + ids_n_) % 2];
  if (size_t(R) > q.cap) {
    if (q.pin) cudaFreeHost(q.pin);
    q.cap = size_t(R) * 2;
    DSV2_CUDA_CHECK(cudaMallocHost(&q.pin, q.cap * sizeof(int32_t)));
  }
  DSV2_CUDA_CHECK(cudaMemcpyAsync(q.pin, sampled_.p, size_t(R) * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  DSV2_CUDA_CHECK(cudaEventRecord(q.done, stream_));
  q.dst = dst;
  q.n = R;
  ++ids_n_;
  ++ids_queued_;
}

bool CudaModelImpl::wait_sampled() {
  if (ids_n_ == 0) return false;
  PendingIds& q = ids_[ids_head_];
  DSV2_CUDA_CHECK(cudaEventSynchronize(q.done));
  std::memcpy(q.dst, q.pin, size_t(q.n) * sizeof(int32_t));
  ids_head_ = (ids_head_ + 1) % 2;
  --ids_n_;
  return true;
}

void CudaModelImpl::trace_init() {
  if (trace_file_.empty()) return;
  if (!trace_compiled()) {
    log::warn("cuda", "DSV2_CUDA_TRACE_FILE is set, but this build has no kernel timeline (-DDSV2_CUDA_TRACE=ON)");
    return;
  }
  constexpr size_t kCap = size_t(1) << 20;
  trace_rec_.reserve(kCap);
  trace_n_.reserve(1);
  DSV2_CUDA_CHECK(cudaMemset(trace_n_.p, 0, sizeof(uint32_t)));
  TraceBuf b;
  b.rec = trace_rec_.p;
  b.cap = uint32_t(kCap);
  b.n = trace_n_.p;
  trace_bind(b);
  if (std::FILE* f = std::fopen(trace_file_.c_str(), "w")) {
    std::fputs("pass,tokens,kernel,sm,block,blocks,t0_ns,t1_ns,tw_ns,m0_ns,m1_ns,m2_ns,m3_ns\n", f);
    std::fclose(f);
  } else {
    fail("DSV2_CUDA_TRACE_FILE: cannot write {}", trace_file_);
  }
  log::info("cuda", "kernel timeline of every pass appended to {}", trace_file_);
}

void CudaModelImpl::trace_write(int T) {
  uint32_t n = 0;
  DSV2_CUDA_CHECK(cudaMemcpy(&n, trace_n_.p, sizeof n, cudaMemcpyDeviceToHost));
  n = std::min<uint32_t>(n, uint32_t(trace_rec_.n));
  std::vector<TraceRec> recs(n);
  if (n) DSV2_CUDA_CHECK(cudaMemcpy(recs.data(), trace_rec_.p, n * sizeof(TraceRec), cudaMemcpyDeviceToHost));
  std::FILE* f = std::fopen(trace_file_.c_str(), "a");
  if (!f) return;
  for (const TraceRec& r : recs)
    std::fprintf(f, "%llu,%d,%s,%u,%u,%u,%llu,%llu,%llu,%llu,%llu,%llu,%llu\n", (unsigned long long)trace_pass_, T,
                 trace_kernel_name(r.kernel), r.sm, r.block, r.blocks, (unsigned long long)r.t0,
                 (unsigned long long)r.t1, (unsigned long long)r.tw, (unsigned long long)r.tm[0],
                 (unsigned long long)r.tm[1], (unsigned long long)r.tm[2], (unsigned long long)r.tm[3]);
  std::fclose(f);
  ++trace_pass_;
}

void CudaModelImpl::layers_forward(int T, int R, int n_items, int n_splits, int n_chunks) {
  const int32_t* meta = meta_.p;
  // The host queues the whole pass behind a 20 ms sleep, so that the events time the GPU alone.
  if (prof_on_) gpu_sleep(20000, stream_);
  mark("start");
  embed_rows(embed_.p, tok_src_, T, H_, x_.p, stream_);
  const float eps = float(c_.rms_norm_eps);
  fused1_ = fused_one_token(T);
  for (size_t l = 0; l < layers_.size(); ++l) {
    DevLayer& L = layers_[l];
    // x += delta (the previous layer's FFN output); xn = RMSNorm_in(x)
    if (!fused1_) {
      residual_norm(l > 0, nullptr, T, L.input_norm.p);
      mark("norm");
    }
    attention(int(l), T, n_items, n_splits, n_chunks);
    if (!fused1_) {
      add_rmsnorm(x_.p, delta_.p, nullptr, T, H_, L.post_norm.p, eps, xn_.p, L.moe ? xnf_.p : nullptr, stream_);
      mark("norm");
    } else if (!L.moe && !dense_tma()) {
      add_rmsnorm(x_.p, nullptr, nullptr, T, H_, L.post_norm.p, eps, xn_.p, nullptr, stream_);
      mark("norm");
    }
    ffn(int(l), T);
  }
  residual_norm(!fused1_, meta + m_rows_, R, final_norm_.p);
  if (!skip("lm_head")) gemm(xn_.p, R, H_, H_, lm_head_.p, int(c_.vocab_size), logits_.p, true, int(c_.vocab_size));
  mark("lm_head");
  if (argmax_limit_ >= 0) {
    argmax_rows(logits_.p, R, int(c_.vocab_size), argmax_limit_, sampled_.p, argmax_scratch_.p, stream_);
    mark("argmax");
  }
}

void CudaModelImpl::residual_norm(bool add_delta, const int32_t* rows, int R, const float* w) {
  const bool comb = pending_comb_.yp != nullptr;
  add_rmsnorm(x_.p, add_delta && !comb ? delta_.p : nullptr, rows, R, H_, w, float(c_.rms_norm_eps), xn_.p, nullptr,
              stream_, pending_comb_);
  pending_comb_ = {};
}

bool CudaModelImpl::route_in_gu(const DevLayer& L) const {
  const int K = int(c_.num_experts_per_tok), NS = int(c_.n_shared_experts), Im = int(c_.moe_intermediate_size);
  return fused1_ && route_gu_on_ && L.moe && L.router_folded.p && moe_tma_on_ && moe_rows_on_ &&
         moe_rows_tma_supported(1, K, NS, H_, Im) && moe_route_in_gu_supported(router_params(1), gemv1_route_parts(H_));
}

RouterParams CudaModelImpl::router_params(int T) const {
  RouterParams rp{};
  rp.logits = router_logits_.p;
  rp.T = T;
  rp.E = int(c_.n_routed_experts);
  rp.K = int(c_.num_experts_per_tok);
  rp.n_group = int(c_.n_group);
  rp.topk_group = int(c_.topk_group);
  rp.group_limited = c_.topk_method == TopkMethod::group_limited_greedy;
  rp.norm_topk = c_.norm_topk_prob;
  rp.scaling = float(c_.routed_scaling_factor);
  rp.ids = moe_ids_.p;
  rp.weights = moe_w_.p;
  return rp;
}

bool CudaModelImpl::dense_tma() const {
  return fused1_ && moe_tma_on_ && dense_tma_on_ && moe_rows_tma_supported(1, 0, 1, H_, int(c_.intermediate_size));
}

bool CudaModelImpl::fused_one_token(int T) const {
  if (T != 1 || !gemv1_on_ || !fuse_norm_on_ || router_sgemm_ || !moe_rows_on_ || !gemv1_norm_supported(H_))
    return false;
  const bool any_moe = std::any_of(layers_.begin(), layers_.end(), [](const DevLayer& L) { return L.moe; });
  return !any_moe || (moe_route_small_supported(H_, int(c_.num_experts_per_tok), int(c_.n_group)) &&
                      moe_rows_supported(1, int(c_.num_experts_per_tok), int(c_.n_shared_experts), H_,
                                         int(c_.moe_intermediate_size)));
}

void CudaModelImpl::attention(int l, int T, int n_items, int n_splits, int n_chunks) {
  (void)n_chunks;
  DevLayer& L = layers_[size_t(l)];
  const int32_t* meta = meta_.p;
  // One token: the W_UK absorb and the rope/cache row in one launch (absorb_q1), or inside the q/kv
  // product and the attention (qkv_absorb).
  const bool one_token =
      T == 1 && n_items > 0 && gemv1_on_ && kvl_ % 64 == 0 && vdim_ % 2 == 0 && rope_ <= 256 && aligned16(L.kv_b.p);
  const QkvAbsorbParams qa{.uk = L.kv_b.p, .uk_head_rows = nope_ + vdim_, .heads = heads_, .nope = nope_,
                           .rope = rope_, .kv_lora = kvl_, .qfull = qfull_.p,
                           .cossin = reinterpret_cast<const float*>(meta + m_rope_)};
  const bool qkv_absorb = one_token && fused1_ && qkv_absorb_on_ && c_.q_lora_rank == 0 && decomp_.empty() &&
                          !skip("absorb") && gemv1_norm_absorb_supported(H_, qa);
  // [T, H] -> [T, q_out + kv_lora + rope]
  if (skip("qkv")) {
  } else if (qkv_absorb)
    gemv1_norm_absorb(x_.p, L.input_norm.p, float(c_.rms_norm_eps), L.w_qkv.p, H_, qkv_.p, qa, stream_);
  else if (fused1_)
    gemv1_norm(x_.p, L.input_norm.p, float(c_.rms_norm_eps), L.w_qkv.p, qkv_out_, H_, qkv_.p, stream_);
  else
    gemm(xn_.p, T, H_, H_, L.w_qkv.p, qkv_out_, qkv_.p, false, qkv_out_);
  const bf16* q = qkv_.p;
  int q_stride = qkv_out_;
  if (c_.q_lora_rank > 0) {
    const int ql = int(c_.q_lora_rank);
    rmsnorm_bf16(qkv_.p, qkv_out_, T, ql, L.q_a_norm.p, 1e-6f, qa_.p, ql, stream_);
    gemm(qa_.p, T, ql, ql, L.q_b.p, heads_ * qd_, q_.p, false, heads_ * qd_);
    q = q_.p;
    q_stride = heads_ * qd_;
  }
  mark("qkv_proj");
  bf16* cache_l = cache_ + size_t(l) * cache_rows_ * size_t(D_);
  RopeCacheParams rp{};
  rp.q = q;
  rp.q_stride = q_stride;
  rp.kv = qkv_.p + q_out_;
  rp.kv_stride = qkv_out_;
  rp.kv_norm = L.kv_a_norm.p;
  rp.slot = meta + m_slot_;
  rp.cossin = reinterpret_cast<const float*>(meta + m_rope_);
  rp.T = T;
  rp.heads = heads_;
  rp.nope = nope_;
  rp.rope = rope_;
  rp.kv_lora = kvl_;
  rp.qfull = qfull_.p;
  rp.cache = cache_l;
  if (!one_token) {
    rope_and_cache(rp, stream_);
    mark("rope_cache");
  }
  const float one = 1.0f, zero = 0.0f;
  if (n_items > 0) {
    // Absorb W_UK into the queries: qfull[t, h, 0:kv_lora] = q_nope[t, h] W_UK_h  (per head h)
    if (skip("absorb") || qkv_absorb) {
    } else if (one_token)
      absorb_q1(q, qd_, L.kv_b.p, heads_, nope_, nope_ + vdim_, kvl_, qfull_.p, D_, stream_, &rp);
    else
      CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        cublas_, CUBLAS_OP_N, CUBLAS_OP_N, kvl_, T, nope_, &one, L.kv_b.p, CUDA_R_16BF, kvl_,
        (long long)(nope_ + vdim_) * kvl_, q, CUDA_R_16BF, q_stride, qd_, &zero, qfull_.p, CUDA_R_16BF, heads_ * D_, D_,
        heads_, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    mark("absorb_uk");
    AttnParams ap{};
    ap.q = qfull_.p;
    ap.cache = cache_l;
    ap.items = meta + m_items_;
    ap.chunks = meta + m_chunks_;
    ap.blocks = meta + m_blocks_;
    ap.n_items = n_items;
    ap.n_splits = n_splits;
    ap.heads = heads_;
    ap.scale = float(c_.softmax_scale());
    ap.out = olat_.p;
    ap.part_o = part_o_.p;
    ap.part_ml = part_ml_.p;
    if (qkv_absorb) {
      ap.new_kv = qkv_.p + q_out_;
      ap.new_kv_norm = L.kv_a_norm.p;
      ap.new_cossin = rp.cossin;
      ap.new_slot = rp.slot;
      ap.new_cache = cache_l;
    }
    // One token over few splits: the W_UV product merges the splits itself (no combine launch). 2-8
    // items over up to 8 splits: the splits merge inside the attention launch (a thread-block cluster).
    // Measured on the H200 against DSV2_CUDA_ATTN_NO_CLUSTER=1: batch 2 581 / 572, batch 8 1,287 /
    // 1,273 tok/s; but batch 1 579 / 588, batch 32 3,328 / 3,360, batch 64 6,237 / 6,297 (larger
    // grids of clusters), batch 128 11,484 / 11,412.
    ap.cluster_merge =
        !one_token && n_items <= 8 && attn_cluster_on_ && mla_attention_cluster_merge_supported(ap, kvl_);
    const bool uv_combine = !ap.cluster_merge && one_token && uv_combine_on_ && !skip("uv") &&
                            gemv1_combine_supported(ap, kvl_, vdim_);
    if (!skip("attention")) mla_attention(ap, kvl_, rope_, stream_, !uv_combine);
    mark("attention");
    // o[t, h, 0:v] = W_UV_h olat[t, h]
    if (skip("uv")) {
    } else if (uv_combine) {
      // The shared experts' gate/up rows into the L2 while the attention leaves the memory idle (see
      // shared_gu_l2_).
      const size_t Im = c_.moe_intermediate_size, E = c_.n_routed_experts, NS = c_.n_shared_experts;
      const bool pre = shared_gu_l2_ && L.moe && NS > 0;
      gemv1_combine(ap, L.kv_b.p + size_t(nope_) * kvl_, heads_ * vdim_, kvl_, o_.p, stream_, vdim_, nope_ + vdim_,
                    pre ? L.exp_gu.p + E * 2 * Im * size_t(H_) : nullptr, NS * 2 * Im * size_t(H_) * sizeof(bf16));
    } else if (one_token)
      gemv1(olat_.p, L.kv_b.p + size_t(nope_) * kvl_, heads_ * vdim_, kvl_, o_.p, false, stream_, vdim_,
            nope_ + vdim_, kvl_);
    else
      CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        cublas_, CUBLAS_OP_T, CUBLAS_OP_N, vdim_, T, kvl_, &one, L.kv_b.p + size_t(nope_) * kvl_, CUDA_R_16BF, kvl_,
        (long long)(nope_ + vdim_) * kvl_, olat_.p, CUDA_R_16BF, heads_ * kvl_, kvl_, &zero, o_.p, CUDA_R_16BF,
        heads_ * vdim_, vdim_, heads_, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    mark("uv");
  }
  // Decompressed chunks write their rows of o after the absorbed ones (whose W_UV product covers
  // all rows of the pass).
  for (const DecompChunk& dc : decomp_) attend_decompressed(L, q, q_stride, cache_l, dc);
  if (!decomp_.empty()) mark("decomp_attention");
  if (skip("o_proj")) {
  } else if (fused1_ && route_in_gu(L)) {
    gemv1_accumulate_route(o_.p, L.o_proj.p, H_, heads_ * vdim_, x_.p, L.router_folded.p, int(c_.n_routed_experts),
                           route_part_.p, stream_);
  } else if (fused1_) {
    gemv1_accumulate(o_.p, L.o_proj.p, H_, heads_ * vdim_, x_.p, stream_);
  } else
    gemm(o_.p, T, heads_ * vdim_, heads_ * vdim_, L.o_proj.p, H_, delta_.p, true, H_);
  mark("o_proj");
}

// The CPU's attend_decompressed on the device: the chunk's P = len0 + n cache rows gathered,
// [k_nope | v] per head for every row from one product with kv_b_proj, then the fused causal
// kernel (flash_prefill) where the head widths allow; otherwise per block of queries
// S = scale (q_nope K_nope^T + q_pe k_pe^T) (two strided-batched products over the heads, fp32),
// the causal softmax to bf16 probabilities and O = P V straight into o's rows.
void CudaModelImpl::attend_decompressed(const DevLayer& L, const bf16* q, int q_stride, const bf16* cache_l,
                                        const DecompChunk& dc) {
  const int P = dc.len0 + dc.n;
  const int kw = nope_ + vdim_, kvw = heads_ * kw;
  dlat_.reserve(size_t(P) * size_t(D_));
  dkv_.reserve(size_t(P) * size_t(kvw));
  gather_cache_rows(cache_l, meta_.p + m_blocks_ + dc.boff, P, D_, dlat_.p, stream_);
  gemm_cublas(dlat_.p, P, kvl_, D_, L.kv_b.p, kvw, dkv_.p, false, kvw);
  if (flash_on_ && flash_prefill_supported(nope_, rope_, vdim_)) {  // one fused causal kernel
    const size_t t0 = size_t(dc.t0);
    FlashPrefillParams fp{};
    fp.q = q + t0 * size_t(q_stride);
    fp.q_tok = q_stride;
    fp.q_head = qd_;
    fp.q_pe = qfull_.p + t0 * size_t(heads_) * size_t(D_) + kvl_;
    fp.qpe_tok = heads_ * D_;
    fp.qpe_head = D_;
    fp.kv = dkv_.p;
    fp.kv_tok = kvw;
    fp.kv_head = kw;
    fp.k_pe = dlat_.p + kvl_;
    fp.kpe_tok = D_;
    fp.n_q = dc.n;
    fp.len0 = dc.len0;
    fp.heads = heads_;
    fp.scale = float(c_.softmax_scale());
    fp.out = o_.p + t0 * size_t(heads_) * size_t(vdim_);
    fp.out_tok = heads_ * vdim_;
    fp.out_head = vdim_;
    flash_prefill(fp, nope_, rope_, vdim_, stream_);
    return;
  }
  const size_t ldP = (size_t(P) + 7) / 8 * 8;
  int qb = int(std::clamp<size_t>(kDecompScoreElems / (size_t(heads_) * ldP), 1, size_t(dc.n)));
  if (decomp_qblock_ > 0) qb = std::min(qb, decomp_qblock_);
  dscore_.reserve(size_t(heads_) * size_t(qb) * ldP);
  dprob_.reserve(size_t(heads_) * size_t(qb) * ldP);
  const float scale = float(c_.softmax_scale()), one = 1.0f, zero = 0.0f;
  for (int q0 = 0; q0 < dc.n; q0 += qb) {
    const int nq = std::min(qb, dc.n - q0);
    const int Pk = dc.len0 + q0 + nq;  // keys visible to the block's last query
    const int ld = (Pk + 7) / 8 * 8;
    const size_t t = size_t(dc.t0 + q0);
    // S^T[h] (column-major [Pk, nq]) = K_nope_h Q_nope_h^T, then += k_pe Q_pe_h^T
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, Pk, nq, nope_, &scale, dkv_.p,
                                            CUDA_R_16BF, kvw, kw, q + t * size_t(q_stride), CUDA_R_16BF, q_stride, qd_,
                                            &zero, dscore_.p, CUDA_R_32F, ld, (long long)nq * ld, heads_,
                                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (rope_ > 0)
      CUBLAS_CHECK(cublasGemmStridedBatchedEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, Pk, nq, rope_, &scale,
                                              dlat_.p + kvl_, CUDA_R_16BF, D_, 0,
                                              qfull_.p + t * size_t(heads_) * size_t(D_) + kvl_, CUDA_R_16BF,
                                              heads_ * D_, D_, &one, dscore_.p, CUDA_R_32F, ld, (long long)nq * ld,
                                              heads_, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    causal_softmax(dscore_.p, ld, heads_ * nq, nq, Pk, dc.len0 + q0, dprob_.p, stream_);
    // O^T[h] (column-major [v, nq]) = V_h^T P_h^T, written into o[t, h, 0:v]
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(cublas_, CUBLAS_OP_N, CUBLAS_OP_N, vdim_, nq, Pk, &one, dkv_.p + nope_,
                                            CUDA_R_16BF, kvw, kw, dprob_.p, CUDA_R_16BF, ld, (long long)nq * ld, &zero,
                                            o_.p + t * size_t(heads_) * size_t(vdim_), CUDA_R_16BF, heads_ * vdim_,
                                            vdim_, heads_, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

void CudaModelImpl::ffn(int l, int T) {
  DevLayer& L = layers_[size_t(l)];
  if (!L.moe && dense_tma()) {
    // one token: the dense MLP as a one-expert MoE in the bulk-copy kernels (RMSNorm inside)
    MoeRowsParams mp{};
    mp.xf = x_.p;
    mp.norm_w = L.post_norm.p;
    mp.eps = float(c_.rms_norm_eps);
    mp.x_wait = true;  // x comes from o_proj, the kernel just before
    mp.accumulate = true;
    mp.T = 1;
    mp.K = 0;
    mp.S = 1;
    mp.E = 0;
    mp.H = H_;
    mp.I = int(c_.intermediate_size);
    mp.w_gu = L.gate_up.p;
    mp.w_down = L.down.p;
    mp.act = act_.p;
    mp.y = x_.p;
    if (gu_tickets_on_ && gu_tickets_.p) mp.gu_tickets = gu_tickets_.p + 1;
    if (!skip("dense_mlp")) moe_rows_tma(mp, stream_, 3);
    mark("dense_mlp");
    return;
  }
  if (!L.moe) {
    const int I = int(c_.intermediate_size);
    gemm(xn_.p, T, H_, H_, L.gate_up.p, 2 * I, gu_.p, false, 2 * I);
    silu_mul(gu_.p, T, I, act_.p, stream_);
    if (fused1_)
      gemv1_accumulate(act_.p, L.down.p, H_, I, x_.p, stream_);
    else
      gemm(act_.p, T, I, I, L.down.p, H_, delta_.p, true, H_);
    mark("dense_mlp");
    return;
  }
  const int E = int(c_.n_routed_experts), K = int(c_.num_experts_per_tok), Im = int(c_.moe_intermediate_size);
  RouterParams rp = router_params(T);
  const int NS = int(c_.n_shared_experts);
  const bool rows_path = moe_rows_on_ && moe_rows_supported(T, K, NS, H_, Im);  // one token
  DSV2_CHECK(!fused1_ || rows_path, "one-token pass without the two-kernel MoE");
  const bool per_expert_cublas = !rows_path && moe_cublas_ && T * K >= kMoeCublasRows && !capturing_;
  // Decode-sized batches on the grouped path: the shared pieces become rows of pseudo-experts
  // E..E+NS-1 (weight 1) in the same products; prefill-sized ones keep them in cuBLAS.
  const bool shared_grouped = !rows_path && !per_expert_cublas && NS > 0 && moe_decode_sized(T * K, E);
  if (shared_grouped) {
    rp.ids_stride = K + NS;
    rp.n_extra = NS;
  }
  const bool gu_routes = rows_path && route_in_gu(L);
  if (skip("router") || gu_routes) {
  } else if (T <= kRouteSmallMaxTokens && !router_sgemm_ && moe_route_small_supported(H_, K, rp.n_group)) {
    // logits and routing, one launch (fused one-token passes: with the post-attention RMSNorm)
    if (fused1_ && L.router_folded.p)
      moe_route_small_folded(rp, x_.p, L.router_folded.p, H_, float(c_.rms_norm_eps), stream_);
    else if (fused1_)
      moe_route_small(rp, x_.p, L.router.p, H_, stream_, L.post_norm.p, float(c_.rms_norm_eps));
    else
      moe_route_small(rp, xnf_.p, L.router.p, H_, stream_);
  } else {
    // router logits in fp32: [T, H] x [E, H]^T
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, E, T, H_, &one, L.router.p, H_, xnf_.p, H_, &zero,
                             router_logits_.p, E));
    moe_route(rp, stream_);
  }
  mark("router");
  if (rows_path) {
    // Decode-sized: routed and shared experts together in two kernels, no dispatch or combine.
    MoeRowsParams mp{};
    mp.x = xn_.p;
    mp.ids = moe_ids_.p;
    mp.weights = moe_w_.p;
    mp.T = T;
    mp.K = K;
    mp.S = NS;
    mp.E = E;
    mp.H = H_;
    mp.I = Im;
    mp.w_gu = L.exp_gu.p;
    mp.w_down = L.exp_down.p;
    mp.act = actp_.p;
    mp.y = delta_.p;
    if (fused1_) {
      mp.x = nullptr;
      mp.xf = x_.p;
      mp.norm_w = L.post_norm.p;
      mp.eps = float(c_.rms_norm_eps);
      mp.accumulate = true;
      mp.y = x_.p;
    }
    if (gu_routes) {
      mp.route_part = route_part_.p;
      mp.n_part = gemv1_route_parts(H_);
      mp.route = rp;
    }
    if (gu_tickets_on_ && gu_tickets_.p) mp.gu_tickets = gu_tickets_.p;
    const int stages = (skip("gate_up") ? 0 : 1) | (skip("down") ? 0 : 2);
    if (moe_tma_on_ && moe_rows_tma_supported(T, K, NS, H_, Im))
      moe_rows_tma(mp, stream_, stages);
    else
      moe_rows(mp, stream_, stages);
    mark("experts");
    return;
  }
  MoeDispatch d{};
  d.counts = moe_counts_.p;
  d.offsets = moe_offsets_.p;
  d.tile_info = moe_tiles_.p;
  d.slot_of = moe_slot_.p;
  d.row_token = moe_row_token_.p;
  const int Kx = shared_grouped ? K + NS : K, Ex = shared_grouped ? E + NS : E;
  d.tile_m = moe_tile_rows(T * Kx, Ex);
  d.max_tiles = moe_max_tiles(T * Kx, Ex, d.tile_m);
  const int R = T * Kx;
  const bool tile_fast = moe_tile_fast_on_ && shared_grouped && T >= kMoeTileFastTokens;
  // fused: gathered rows, SiLU in the first product's epilogue, the combine in the next add_rmsnorm
  const bool fused = moe_fuse_ && shared_grouped && moe_swiglu_supported(Im, H_);
  const bool gather = (moe_gather_ || tile_fast || fused) && !per_expert_cublas;
  if (!skip("dispatch")) moe_dispatch(moe_ids_.p, T, Kx, Ex, xn_.p, H_, d, gather ? nullptr : xp_.p, stream_);
  mark("dispatch");
  if (per_expert_cublas) {
    // Prefill-sized: per-expert cuBLAS products over the permuted rows (the counts are read back
    // once per layer; prefill passes are not captured in graphs).
    DSV2_CUDA_CHECK(cudaMemcpyAsync(host_offsets_, d.offsets, size_t(E + 1) * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                    stream_));
    DSV2_CUDA_CHECK(cudaStreamSynchronize(stream_));
    for (int e = 0; e < E; ++e) {
      const int off = host_offsets_[e], cnt = host_offsets_[e + 1] - off;
      if (cnt == 0) continue;
      gemm_cublas(xp_.p + size_t(off) * H_, cnt, H_, H_, L.exp_gu.p + size_t(e) * 2 * Im * H_, 2 * Im,
                  gup_.p + size_t(off) * 2 * Im, false, 2 * Im);
    }
    silu_mul(gup_.p, R, Im, actp_.p, stream_);
    for (int e = 0; e < E; ++e) {
      const int off = host_offsets_[e], cnt = host_offsets_[e + 1] - off;
      if (cnt == 0) continue;
      gemm_cublas(actp_.p + size_t(off) * Im, cnt, Im, Im, L.exp_down.p + size_t(e) * H_ * Im, H_,
                  yp_.p + size_t(off) * H_, true, H_);
    }
  } else {
    if (fused) {
      if (!skip("gate_up"))
        moe_gemm_swiglu(xn_.p, L.exp_gu.p, d.tile_info, d.max_tiles, d.tile_m, Im, H_, actp_.p, stream_, d.row_token,
                        tile_fast);
    } else {
      if (!skip("gate_up"))
        moe_gemm(gather ? xn_.p : xp_.p, L.exp_gu.p, d.tile_info, d.max_tiles, d.tile_m, 2 * Im, H_, gup_.p, false,
                 stream_, gather ? d.row_token : nullptr, tile_fast);
      silu_mul(gup_.p, R, Im, actp_.p, stream_);
    }
    if (!skip("down"))
      moe_gemm(actp_.p, L.exp_down.p, d.tile_info, d.max_tiles, d.tile_m, H_, Im, yp_.p, true, stream_, nullptr,
               tile_fast);
  }
  mark("experts");
  if (fused) {
    // no shared-expert rows outside the products: the next add_rmsnorm sums the combine into x
    if (!skip("combine")) pending_comb_ = MoeCombine{yp_.p, moe_slot_.p, moe_w_.p, Kx};
    return;
  }
  if (!shared_grouped && NS > 0) {
    // The pseudo-experts E..E+NS-1 are consecutive [2I, H] blocks: one product gives [T, NS, 2I],
    // i.e. NS*T rows of [gate | up]; their activations are [T, NS*I] in the shared MLP's column
    // order, and the down product sums the pieces.
    gemm(xn_.p, T, H_, H_, L.exp_gu.p + size_t(E) * 2 * Im * H_, NS * 2 * Im, gu_.p, false, NS * 2 * Im);
    silu_mul(gu_.p, T * NS, Im, act_.p, stream_);
    for (int sp = 0; sp < NS; ++sp)
      gemm_cublas(act_.p + size_t(sp) * Im, T, Im, NS * Im, L.exp_down.p + size_t(E + sp) * H_ * Im, H_, delta_.p,
                  true, H_, sp > 0);
  } else {
    DSV2_CUDA_CHECK(cudaMemsetAsync(delta_.p, 0, size_t(T) * H_ * sizeof(float), stream_));
  }
  mark("shared_exp");
  if (!skip("combine")) moe_combine(yp_.p, moe_slot_.p, moe_w_.p, T, Kx, H_, delta_.p, stream_);
  mark("combine");
}

}  // namespace

// ---------------------------------------------------------------------------------------------

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

bool available() { return device_count() > 0; }

std::string device_summary(int device) {
  cudaDeviceProp p{};
  DSV2_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  return fmt::format("cuda:{} {} ({:.1f} GB, {} SMs, compute {}.{})", device, p.name, double(p.totalGlobalMem) / 1e9,
                     p.multiProcessorCount, p.major, p.minor);
}

static void check_device(int device) {
  const int n = device_count();
  if (n == 0) fail("--device cuda: no CUDA device is available");
  if (device < 0 || device >= n) fail("--device cuda:{}: only {} CUDA device(s) present", device, n);
}

static void check_shapes(const ModelConfig& c) {
  if (c.kv_lora_rank + c.qk_rope_head_dim > 1024 || c.qk_rope_head_dim % 2 != 0)
    fail("CUDA backend: kv_lora_rank + qk_rope_head_dim = {} (at most 1024, rope even) is not supported",
         c.kv_lora_rank + c.qk_rope_head_dim);
  if (c.num_experts_per_tok > 64) fail("CUDA backend: num_experts_per_tok {} is above 64", c.num_experts_per_tok);
}

std::unique_ptr<Model> make_model(std::shared_ptr<const ModelWeights> w, int device, const CacheOptions& opts) {
  check_device(device);
  check_shapes(w->config);
  log::info("cuda", "{}", device_summary(device));
  auto m = std::make_unique<CudaModelImpl>(w->config, device);
  m->alloc_weights();
  m->upload(*w);
  m->init_cache(opts, false, 0);
  return m;
}

std::unique_ptr<Model> make_synthetic_model(const ModelConfig& c, int device, uint64_t seed, const CacheOptions& opts) {
  check_device(device);
  check_shapes(c);
  log::info("cuda", "{}", device_summary(device));
  auto m = std::make_unique<CudaModelImpl>(c, device);
  m->alloc_weights();
  m->randomize(seed);
  m->init_cache(opts, true, seed);
  return m;
}

CudaModel* as_cuda(Model* m) { return dynamic_cast<CudaModel*>(m); }

}  // namespace dsv2::cuda
