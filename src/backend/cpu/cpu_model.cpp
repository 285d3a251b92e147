// The DeepSeek-V2 forward pass on the CPU, exactly as reference section 3, in fp32 from bf16 (or
// f32) weights. Decoding uses absorbed MLA over the latent cache: per token and layer only the
// normalized latent c [kv_lora] and the roped k_pe [rope] are kept (fp32 here).
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/kernels.h"
#include "common/error.h"
#include "common/log.h"
#include "common/thread_pool.h"
#include "model/model.h"
#include "model/rope.h"
#include "model/router.h"
#include "model/weights.h"

namespace dsv2 {

int64_t Model::logits_rows(std::span<const SeqChunk> batch) {
  int64_t n = 0;
  for (auto& ch : batch) n += ch.all_logits ? int64_t(ch.tokens.size()) : (ch.tokens.empty() ? 0 : 1);
  return n;
}

void Model::forward_select(std::span<const SeqChunk> batch, const RowUse* use, const RowSampling* sampling,
                           int64_t vocab_limit, float* logits, int32_t* ids) {
  (void)sampling;
  const int64_t rows = logits_rows(batch);
  for (int64_t r = 0; r < rows; ++r)
    if (use[r] == RowUse::sample) fail("{}: this backend does not draw samples itself", device_name());
  forward(batch, logits);
  const int64_t V = config().vocab_size, n = vocab_limit > 0 ? std::min(vocab_limit, V) : V;
  for (int64_t r = 0; r < rows; ++r) {
    if (use[r] != RowUse::greedy) continue;
    const float* l = logits + r * V;
    ids[r] = int32_t(std::max_element(l, l + n) - l);  // the first of equal maxima: the lowest id
  }
}

void Model::refuse_logits_rows(std::span<const SeqChunk> batch, const RowUse* use) {
  for (int64_t r = 0, rows = logits_rows(batch); r < rows; ++r)
    if (use[r] == RowUse::logits) fail("queue_select: row {} asks for its logits", r);
}

void Model::queue_select(std::span<const SeqChunk> batch, const RowUse* use, const RowSampling* sampling,
                         int64_t vocab_limit, int32_t* ids, bool chain) {
  std::vector<SeqChunk> chained;
  if (chain) {
    if (batch.size() != chain_ids_.size())
      fail("a chained pass needs the previous pass to have chosen one id per chunk ({} chunks, {} ids)", batch.size(),
           chain_ids_.size());
    chained.assign(batch.begin(), batch.end());
    for (size_t i = 0; i < chained.size(); ++i) {
      if (chained[i].tokens.size() != 1 || chained[i].all_logits) fail("a chained pass takes one-token chunks only");
      chained[i].tokens = std::span<const int32_t>(&chain_ids_[i], 1);
    }
    batch = chained;
  }
  refuse_logits_rows(batch, use);
  const int64_t rows = logits_rows(batch);
  queue_logits_.resize(size_t(rows * config().vocab_size));
  forward_select(batch, use, sampling, vocab_limit, queue_logits_.data(), ids);
  bool all = rows == int64_t(batch.size());
  for (int64_t r = 0; r < rows; ++r) all = all && use[r] != RowUse::none;
  if (all)
    chain_ids_.assign(ids, ids + rows);
  else
    chain_ids_.clear();
}

namespace {

using cpu::MatmulJob;

// scores <- exp(scores - max) in place (fp32 softmax numerators); returns 1 / their sum.
float softmax_unnormalized(std::vector<float>& scores) {
  float mx = -INFINITY;
  for (float v : scores) mx = std::max(mx, v);
  double sum = 0;
  for (float& v : scores) {
    v = std::exp(v - mx);
    sum += v;
  }
  return float(1.0 / sum);
}

class CpuModel final : public Model {
 public:
  CpuModel(std::shared_ptr<const ModelWeights> w, const CacheOptions& opts)
      : w_(std::move(w)), c_(w_->config), rope_(c_), D_(c_.kv_cache_dim()), L_(c_.num_hidden_layers),
        decompress_min_(opts.decompress_min_tokens) {
    int64_t max_tokens = opts.max_tokens > 0 ? opts.max_tokens : std::min<int64_t>(c_.max_position_embeddings, 8192);
    int64_t n_blocks = (max_tokens + kCacheBlockSize - 1) / kCacheBlockSize;
    cache_.assign(size_t(n_blocks * L_ * kCacheBlockSize * D_), 0.0f);
    alloc_.reset(int32_t(n_blocks));
  }

  const ModelConfig& config() const override { return c_; }
  std::string device_name() const override {
    return fmt::format("cpu ({} threads{})", ThreadPool::global().size(), cpu::has_avx512() ? ", AVX-512" : "");
  }
  BlockAllocator& blocks() override { return alloc_; }
  size_t cache_bytes_per_token() const override { return size_t(L_ * D_) * sizeof(float); }

  void forward(std::span<const SeqChunk> batch, float* logits) override;

 private:
  float* cache_row(const SequenceCache& s, int64_t layer, int64_t pos) {
    int64_t block = s.blocks[size_t(pos / kCacheBlockSize)];
    return cache_.data() + ((size_t(block) * L_ + layer) * kCacheBlockSize + pos % kCacheBlockSize) * D_;
  }
  void attention(int64_t layer, const float* xn, float* out);
  // Attention outputs o [rows, heads*v] for the rows of one chunk (roped q given).
  void attend_absorbed(int64_t layer, const std::vector<int64_t>& rows, const float* q, float* o);
  void attend_decompressed(int64_t layer, int64_t r0, int64_t n, const float* q, float* o);
  void ffn(int64_t layer, const float* xn, float* out);

  std::shared_ptr<const ModelWeights> w_;
  const ModelConfig& c_;
  RopeTable rope_;
  const int64_t D_, L_;
  const int64_t decompress_min_;
  std::vector<float> cache_;  // [block][layer][64][kv_lora + rope]
  BlockAllocator alloc_;

  // Per-call batch layout.
  int64_t T_ = 0;
  std::vector<int64_t> pos_;                  // absolute position of each row
  std::vector<const SequenceCache*> seq_of_;  // sequence of each row
  std::vector<std::pair<int64_t, int64_t>> chunks_;  // (first row, rows) of each chunk
};

void CpuModel::forward(std::span<const SeqChunk> batch, float* logits) {
  const int64_t H = c_.hidden_size, V = c_.vocab_size;
  T_ = 0;
  pos_.clear();
  seq_of_.clear();
  chunks_.clear();
  std::vector<int32_t> tokens;
  std::vector<int64_t> out_rows;
  for (auto& ch : batch) {
    DSV2_CHECK(ch.seq != nullptr);
    int64_t n = int64_t(ch.tokens.size());
    DSV2_CHECK(ch.seq->length + n <= ch.seq->capacity(), "cache blocks do not cover {} tokens", ch.seq->length + n);
    for (int64_t i = 0; i < n; ++i) {
      int32_t id = ch.tokens[size_t(i)];
      if (id < 0 || id >= V) fail("token id {} is outside the vocabulary [0, {})", id, V);
      tokens.push_back(id);
      pos_.push_back(ch.seq->length + i);
      seq_of_.push_back(ch.seq);
      if (ch.all_logits || i == n - 1) out_rows.push_back(T_ + i);
    }
    if (n > 0) chunks_.push_back({T_, n});
    T_ += n;
  }
  if (T_ == 0) return;

  std::vector<float> x(static_cast<size_t>(T_ * H)), xn(static_cast<size_t>(T_ * H)), y(static_cast<size_t>(T_ * H));
  for (int64_t t = 0; t < T_; ++t) cpu::load_row(w_->embed, tokens[size_t(t)], &x[size_t(t * H)]);

  auto norm_rows = [&](const std::vector<float>& weight) {
    ThreadPool::global().parallel_for(T_, [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t)
        cpu::rmsnorm(&x[size_t(t * H)], weight.data(), H, c_.rms_norm_eps, &xn[size_t(t * H)]);
    });
  };
  for (int64_t l = 0; l < L_; ++l) {
    const LayerWeights& lw = w_->layers[size_t(l)];
    norm_rows(lw.input_norm);
    attention(l, xn.data(), y.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
    norm_rows(lw.post_norm);
    ffn(l, xn.data(), y.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
  }

  // Final norm and lm_head only for the rows whose logits are wanted.
  const int64_t R = int64_t(out_rows.size());
  std::vector<float> h(static_cast<size_t>(R * H));
  for (int64_t r = 0; r < R; ++r)
    cpu::rmsnorm(&x[size_t(out_rows[size_t(r)] * H)], w_->final_norm.data(), H, c_.rms_norm_eps, &h[size_t(r * H)]);
  cpu::matmul(w_->lm_head, h.data(), R, logits);

  for (auto& ch : batch) ch.seq->length += int64_t(ch.tokens.size());
}

void CpuModel::attention(int64_t layer, const float* xn, float* out) {
  const LayerWeights& lw = w_->layers[size_t(layer)];
  const int64_t H = c_.hidden_size, nh = c_.num_attention_heads, nope = c_.qk_nope_head_dim,
                rope = c_.qk_rope_head_dim, vd = c_.v_head_dim, kvl = c_.kv_lora_rank, qd = c_.qk_head_dim();
  const int64_t T = T_;
  std::vector<float> q(static_cast<size_t>(T * nh * qd));            // [T, heads, nope|rope]
  std::vector<float> kv(static_cast<size_t>(T * (kvl + rope)));      // [T, c | k_pe]
  if (c_.q_lora_rank > 0) {
    const int64_t ql = c_.q_lora_rank;
    std::vector<float> qa(static_cast<size_t>(T * ql));
    MatmulJob jobs[2] = {{&lw.q_a_proj, xn, H, T, qa.data(), ql}, {&lw.kv_a_proj, xn, H, T, kv.data(), kvl + rope}};
    cpu::matmul_multi(jobs);
    std::vector<float> qan(qa.size());
    // q_a_layernorm and kv_a_layernorm use eps 1e-6 whatever rms_norm_eps says (reference section 3).
    for (int64_t t = 0; t < T; ++t) cpu::rmsnorm(&qa[size_t(t * ql)], lw.q_a_norm.data(), ql, 1e-6, &qan[size_t(t * ql)]);
    cpu::matmul(lw.q_b_proj, qan.data(), T, q.data());
  } else {
    MatmulJob jobs[2] = {{&lw.q_proj, xn, H, T, q.data(), nh * qd}, {&lw.kv_a_proj, xn, H, T, kv.data(), kvl + rope}};
    cpu::matmul_multi(jobs);
  }
  // Latent cache entries of the new tokens: normalized c, roped k_pe.
  for (int64_t t = 0; t < T; ++t) {
    float* row = cache_row(*seq_of_[size_t(t)], layer, pos_[size_t(t)]);
    const float* src = &kv[size_t(t * (kvl + rope))];
    cpu::rmsnorm(src, lw.kv_a_norm.data(), kvl, 1e-6, row);
    std::copy(src + kvl, src + kvl + rope, row + kvl);
    rope_.apply(row + kvl, pos_[size_t(t)]);
  }

  std::vector<float> o(static_cast<size_t>(T * nh * vd));
  ThreadPool::global().parallel_for(T * nh, [&](int64_t b, int64_t e, int) {
    for (int64_t item = b; item < e; ++item) {
      const int64_t t = item / nh, h = item % nh;
      rope_.apply(&q[size_t((t * nh + h) * qd + nope)], pos_[size_t(t)]);
    }
  });
  std::vector<int64_t> absorbed_rows;
  for (auto [r0, n] : chunks_) {
    if (decompress_min_ > 0 && n >= decompress_min_) {
      attend_decompressed(layer, r0, n, q.data(), o.data());
    } else {
      for (int64_t t = r0; t < r0 + n; ++t) absorbed_rows.push_back(t);
    }
  }
  attend_absorbed(layer, absorbed_rows, q.data(), o.data());
  cpu::matmul(lw.o_proj, o.data(), T, out);
}

// score_j = scale * ([W_UK^T q_nope | q_pe] . [c_j | k_pe_j]) over the cached positions j <= pos,
// o = W_UV (sum_j p_j c_j): multi-query attention over the 576-wide latent, one KV head for all.
void CpuModel::attend_absorbed(int64_t layer, const std::vector<int64_t>& rows, const float* q, float* o) {
  const LayerWeights& lw = w_->layers[size_t(layer)];
  const int64_t nh = c_.num_attention_heads, nope = c_.qk_nope_head_dim, vd = c_.v_head_dim, kvl = c_.kv_lora_rank,
                qd = c_.qk_head_dim();
  const float scale = float(c_.softmax_scale());
  ThreadPool::global().parallel_for(int64_t(rows.size()) * nh, [&](int64_t b, int64_t e, int) {
    std::vector<float> qfull(static_cast<size_t>(D_)), ctx(static_cast<size_t>(kvl)), scores;
    for (int64_t item = b; item < e; ++item) {
      const int64_t t = rows[size_t(item / nh)], h = item % nh;
      const SequenceCache& s = *seq_of_[size_t(t)];
      const int64_t p = pos_[size_t(t)];
      const float* qh = &q[size_t((t * nh + h) * qd)];
      std::fill(qfull.begin(), qfull.end(), 0.0f);
      const int64_t base = h * (nope + vd);
      for (int64_t i = 0; i < nope; ++i) cpu::axpy_row(lw.kv_b_proj, base + i, qh[i], qfull.data());
      std::copy(qh + nope, qh + qd, qfull.data() + kvl);
      scores.resize(size_t(p + 1));
      for (int64_t j = 0; j <= p; ++j) scores[size_t(j)] = scale * cpu::dot(qfull.data(), cache_row(s, layer, j), D_);
      const float inv = softmax_unnormalized(scores);
      std::fill(ctx.begin(), ctx.end(), 0.0f);
      for (int64_t j = 0; j <= p; ++j) cpu::axpy(scores[size_t(j)] * inv, cache_row(s, layer, j), ctx.data(), kvl);
      float* oh = &o[size_t((t * nh + h) * vd)];
      for (int64_t d = 0; d < vd; ++d) oh[d] = cpu::dot_row(lw.kv_b_proj, base + nope + d, ctx.data());
    }
  });
}

// The same attention with keys and values materialized: [k_nope | v] per head for every cached
// position (one product of kv_b_proj with the latents), then ordinary causal attention with
// K_h = [k_nope_h | k_pe] (192 wide) and V_h (128 wide). Cheaper than absorbed for long chunks.
void CpuModel::attend_decompressed(int64_t layer, int64_t r0, int64_t n, const float* q, float* o) {
  const LayerWeights& lw = w_->layers[size_t(layer)];
  const int64_t nh = c_.num_attention_heads, nope = c_.qk_nope_head_dim, rope = c_.qk_rope_head_dim,
                vd = c_.v_head_dim, kvl = c_.kv_lora_rank, qd = c_.qk_head_dim(), kvw = nh * (nope + vd);
  const SequenceCache& s = *seq_of_[size_t(r0)];
  const int64_t P = pos_[size_t(r0 + n - 1)] + 1;  // positions the chunk's last token sees
  std::vector<float> lat(static_cast<size_t>(P * kvl)), kpe(static_cast<size_t>(P * rope));
  for (int64_t j = 0; j < P; ++j) {
    const float* row = cache_row(s, layer, j);
    std::copy(row, row + kvl, &lat[size_t(j * kvl)]);
    std::copy(row + kvl, row + D_, &kpe[size_t(j * rope)]);
  }
  std::vector<float> kv(static_cast<size_t>(P * kvw));  // [P, heads, nope | v]
  cpu::matmul(lw.kv_b_proj, lat.data(), P, kv.data());
  const float scale = float(c_.softmax_scale());
  ThreadPool::global().parallel_for(n * nh, [&](int64_t b, int64_t e, int) {
    std::vector<float> scores;
    for (int64_t item = b; item < e; ++item) {
      const int64_t t = r0 + item / nh, h = item % nh;
      const int64_t p = pos_[size_t(t)];
      const float* qh = &q[size_t((t * nh + h) * qd)];
      scores.resize(size_t(p + 1));
      for (int64_t j = 0; j <= p; ++j) {
        const float* k = &kv[size_t(j * kvw + h * (nope + vd))];
        scores[size_t(j)] = scale * (cpu::dot(qh, k, nope) + cpu::dot(qh + nope, &kpe[size_t(j * rope)], rope));
      }
      const float inv = softmax_unnormalized(scores);
      float* oh = &o[size_t((t * nh + h) * vd)];
      std::fill(oh, oh + vd, 0.0f);
      for (int64_t j = 0; j <= p; ++j)
        cpu::axpy(scores[size_t(j)] * inv, &kv[size_t(j * kvw + h * (nope + vd) + nope)], oh, vd);
    }
  });
}

void CpuModel::ffn(int64_t layer, const float* xn, float* out) {
  const LayerWeights& lw = w_->layers[size_t(layer)];
  const int64_t H = c_.hidden_size, T = T_;
  if (!lw.moe) {
    const int64_t I = c_.intermediate_size;
    std::vector<float> g(static_cast<size_t>(T * I)), u(static_cast<size_t>(T * I));
    MatmulJob jobs[2] = {{&lw.gate_proj, xn, H, T, g.data(), I}, {&lw.up_proj, xn, H, T, u.data(), I}};
    cpu::matmul_multi(jobs);
    cpu::silu_mul(g.data(), u.data(), T * I, g.data());
    cpu::matmul(lw.down_proj, g.data(), T, out);
    return;
  }
  const int64_t E = c_.n_routed_experts, K = c_.num_experts_per_tok, I = c_.moe_intermediate_size;
  // Router in fp32.
  std::vector<float> rl(static_cast<size_t>(T * E));
  cpu::matmul(lw.router, xn, T, rl.data());
  std::vector<int32_t> ids(static_cast<size_t>(T * K));
  std::vector<float> wts(static_cast<size_t>(T * K));
  {
    std::vector<float> scratch(static_cast<size_t>(2 * E + 8));
    for (int64_t t = 0; t < T; ++t)
      route_token(c_, &rl[size_t(t * E)], &ids[size_t(t * K)], &wts[size_t(t * K)], scratch.data());
  }
  // Permute tokens by expert: slot order = expert-major.
  std::vector<int64_t> count(size_t(E), 0), offset(size_t(E + 1), 0);
  for (auto id : ids) ++count[size_t(id)];
  for (int64_t e = 0; e < E; ++e) offset[size_t(e + 1)] = offset[size_t(e)] + count[size_t(e)];
  std::vector<int64_t> slot(static_cast<size_t>(T * K));
  {
    std::vector<int64_t> fill(offset.begin(), offset.end() - 1);
    for (int64_t i = 0; i < T * K; ++i) slot[size_t(i)] = fill[size_t(ids[size_t(i)])]++;
  }
  std::vector<float> xg(static_cast<size_t>(T * K * H));
  for (int64_t i = 0; i < T * K; ++i) std::copy(xn + (i / K) * H, xn + (i / K + 1) * H, &xg[size_t(slot[size_t(i)] * H)]);

  const int64_t S = c_.n_shared_experts * I;
  const bool shared = S > 0;
  std::vector<float> g(static_cast<size_t>(T * K * I)), u(static_cast<size_t>(T * K * I)), sg(size_t(T * S)), su(static_cast<size_t>(T * S));
  std::vector<MatmulJob> jobs;
  for (int64_t e = 0; e < E; ++e) {
    int64_t n = count[size_t(e)], off = offset[size_t(e)];
    if (n == 0) continue;
    jobs.push_back({&lw.exp_gate[size_t(e)], &xg[size_t(off * H)], H, n, &g[size_t(off * I)], I});
    jobs.push_back({&lw.exp_up[size_t(e)], &xg[size_t(off * H)], H, n, &u[size_t(off * I)], I});
  }
  if (shared) {
    jobs.push_back({&lw.sh_gate, xn, H, T, sg.data(), S});
    jobs.push_back({&lw.sh_up, xn, H, T, su.data(), S});
  }
  cpu::matmul_multi(jobs);
  cpu::silu_mul(g.data(), u.data(), T * K * I, g.data());
  if (shared) cpu::silu_mul(sg.data(), su.data(), T * S, sg.data());

  std::vector<float> yg(static_cast<size_t>(T * K * H));
  jobs.clear();
  for (int64_t e = 0; e < E; ++e) {
    int64_t n = count[size_t(e)], off = offset[size_t(e)];
    if (n == 0) continue;
    jobs.push_back({&lw.exp_down[size_t(e)], &g[size_t(off * I)], I, n, &yg[size_t(off * H)], H});
  }
  if (shared) jobs.push_back({&lw.sh_down, sg.data(), S, T, out, H});
  cpu::matmul_multi(jobs);
  if (!shared) std::fill(out, out + T * H, 0.0f);
  // Routed outputs, weighted, accumulated in fp32 onto the shared-expert output.
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k)
      cpu::axpy(wts[size_t(t * K + k)], &yg[size_t(slot[size_t(t * K + k)] * H)], out + t * H, H);
}

}  // namespace

std::unique_ptr<Model> make_cpu_model(std::shared_ptr<const ModelWeights> weights, const CacheOptions& opts) {
  return std::make_unique<CpuModel>(std::move(weights), opts);
}

}  // namespace dsv2
