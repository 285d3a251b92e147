#include "model/weights.h"

#include <sys/mman.h>

#include "common/bf16.h"
#include "common/error.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/thread_pool.h"

namespace dsv2 {

namespace fs = std::filesystem;

struct WeightBinder {
  ModelWeights& w;
  const Checkpoint& ck;
  ProgressBar& bar;

  // Reads every page of a mapped tensor once so that the load cost is paid (and shown) here,
  // not in the first forward pass.
  void prefault(const void* data, size_t n) {
    const volatile uint8_t* p = static_cast<const volatile uint8_t*>(data);
    uintptr_t page = 4096;
    uintptr_t start = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
    ::madvise(reinterpret_cast<void*>(start), n + (reinterpret_cast<uintptr_t>(p) - start), MADV_WILLNEED);
    int64_t pages = int64_t((n + page - 1) / page);
    ThreadPool::global().parallel_for(
        pages,
        [&](int64_t b, int64_t e, int) {
          uint8_t acc = 0;
          for (int64_t i = b; i < e; ++i) acc ^= p[size_t(i) * page];
          (void)acc;
        },
        256);
  }

  float* alloc(int64_t n) {
    w.owned_.push_back(std::make_unique<float[]>(size_t(n)));
    return w.owned_.back().get();
  }

  Matrix matrix(const std::string& name, int64_t rows, int64_t cols) {
    const TensorView& v = ck.get(name, {rows, cols});
    Matrix m;
    m.rows = rows;
    m.cols = cols;
    if (v.dtype == DType::f16) {  // widened once: the kernels read bf16 or f32
      float* dst = alloc(rows * cols);
      const uint16_t* src = static_cast<const uint16_t*>(v.data);
      for (int64_t i = 0; i < rows * cols; ++i) dst[i] = f16_to_f32(src[i]);
      m.dtype = DType::f32;
      m.data = dst;
    } else {
      m.dtype = v.dtype;
      m.data = v.data;
      prefault(v.data, v.nbytes());
    }
    w.matrix_bytes += m.nbytes();
    bar.add(v.nbytes());
    return m;
  }

  std::vector<float> vec(const std::string& name, int64_t n) {
    const TensorView& v = ck.get(name, {n});
    std::vector<float> out(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      switch (v.dtype) {
        case DType::bf16: out[size_t(i)] = bf16_to_f32(static_cast<const uint16_t*>(v.data)[i]); break;
        case DType::f16: out[size_t(i)] = f16_to_f32(static_cast<const uint16_t*>(v.data)[i]); break;
        case DType::f32: out[size_t(i)] = static_cast<const float*>(v.data)[i]; break;
      }
    }
    bar.add(v.nbytes());
    return out;
  }
};

std::shared_ptr<ModelWeights> ModelWeights::load(const fs::path& dir, bool progress) {
  auto w = std::make_shared<ModelWeights>();
  w->config = load_config(dir / "config.json");
  const ModelConfig& c = w->config;
  w->ckpt_ = std::make_unique<Checkpoint>(dir);
  const Checkpoint& ck = *w->ckpt_;

  // Most common matrix dtype, for the log line.
  size_t n_bf16 = 0, n_f16 = 0, n_f32 = 0;
  for (auto& f : ck.files())
    for (auto& [name, v] : f->tensors()) (v.dtype == DType::bf16 ? n_bf16 : v.dtype == DType::f16 ? n_f16 : n_f32) += v.nbytes();
  w->checkpoint_dtype = n_bf16 >= n_f16 && n_bf16 >= n_f32 ? DType::bf16 : n_f16 >= n_f32 ? DType::f16 : DType::f32;

  ProgressBar bar("weights", ck.total_bytes(), progress);
  WeightBinder b{*w, ck, bar};
  const int64_t H = c.hidden_size, nh = c.num_attention_heads;
  w->embed = b.matrix("model.embed_tokens.weight", c.vocab_size, H);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    LayerWeights L;
    L.input_norm = b.vec(p + "input_layernorm.weight", H);
    L.post_norm = b.vec(p + "post_attention_layernorm.weight", H);
    const std::string a = p + "self_attn.";
    if (c.q_lora_rank > 0) {
      L.q_a_proj = b.matrix(a + "q_a_proj.weight", c.q_lora_rank, H);
      L.q_a_norm = b.vec(a + "q_a_layernorm.weight", c.q_lora_rank);
      L.q_b_proj = b.matrix(a + "q_b_proj.weight", nh * c.qk_head_dim(), c.q_lora_rank);
    } else {
      L.q_proj = b.matrix(a + "q_proj.weight", nh * c.qk_head_dim(), H);
    }
    L.kv_a_proj = b.matrix(a + "kv_a_proj_with_mqa.weight", c.kv_lora_rank + c.qk_rope_head_dim, H);
    L.kv_a_norm = b.vec(a + "kv_a_layernorm.weight", c.kv_lora_rank);
    L.kv_b_proj = b.matrix(a + "kv_b_proj.weight", nh * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
    L.o_proj = b.matrix(a + "o_proj.weight", H, nh * c.v_head_dim);
    const std::string m = p + "mlp.";
    L.moe = c.is_moe_layer(l);
    if (L.moe) {
      const int64_t E = c.n_routed_experts, I = c.moe_intermediate_size;
      L.router = b.matrix(m + "gate.weight", E, H);
      for (int64_t e = 0; e < E; ++e) {
        const std::string ep = fmt::format("{}experts.{}.", m, e);
        L.exp_gate.push_back(b.matrix(ep + "gate_proj.weight", I, H));
        L.exp_up.push_back(b.matrix(ep + "up_proj.weight", I, H));
        L.exp_down.push_back(b.matrix(ep + "down_proj.weight", H, I));
      }
      if (c.n_shared_experts > 0) {
        const int64_t S = c.n_shared_experts * I;
        L.sh_gate = b.matrix(m + "shared_experts.gate_proj.weight", S, H);
        L.sh_up = b.matrix(m + "shared_experts.up_proj.weight", S, H);
        L.sh_down = b.matrix(m + "shared_experts.down_proj.weight", H, S);
      }
    } else {
      L.gate_proj = b.matrix(m + "gate_proj.weight", c.intermediate_size, H);
      L.up_proj = b.matrix(m + "up_proj.weight", c.intermediate_size, H);
      L.down_proj = b.matrix(m + "down_proj.weight", H, c.intermediate_size);
    }
    w->layers.push_back(std::move(L));
  }
  w->final_norm = b.vec("model.norm.weight", H);
  if (ck.has("lm_head.weight"))
    w->lm_head = b.matrix("lm_head.weight", c.vocab_size, H);
  else if (c.tie_word_embeddings)
    w->lm_head = w->embed;
  else
    fail("{}: tensor 'lm_head.weight' is missing from the checkpoint", dir.string());
  bar.finish();
  return w;
}

std::shared_ptr<ModelWeights> ModelWeights::synthetic(const ModelConfig& c, uint64_t seed) {
  auto w = std::make_shared<ModelWeights>();
  w->config = c;
  w->checkpoint_dtype = DType::bf16;
  uint64_t counter = 0;
  auto matrix = [&](int64_t rows, int64_t cols) {
    auto buf = std::make_unique<float[]>(size_t(rows * cols + 1) / 2);  // bf16 pairs in float storage
    uint16_t* p = reinterpret_cast<uint16_t*>(buf.get());
    const uint64_t stream = seed * 0x9E3779B97F4A7C15ull + (++counter);
    ThreadPool::global().parallel_for(
        rows,
        [&](int64_t b, int64_t e, int) {
          for (int64_t r = b; r < e; ++r) {
            uint64_t x = stream ^ (uint64_t(r + 1) * 0xD1B54A32D192ED03ull);
            for (int64_t i = 0; i < cols; ++i) {
              x ^= x << 13, x ^= x >> 7, x ^= x << 17;  // xorshift64
              float u = float(int64_t(x >> 40) - (1 << 23)) / float(1 << 23);  // [-1, 1)
              p[r * cols + i] = f32_to_bf16(0.035f * u);  // std ~0.02
            }
          }
        },
        16);
    Matrix m{DType::bf16, rows, cols, buf.get()};
    w->owned_.push_back(std::move(buf));
    w->matrix_bytes += m.nbytes();
    return m;
  };
  const int64_t H = c.hidden_size, nh = c.num_attention_heads;
  w->embed = matrix(c.vocab_size, H);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights L;
    L.input_norm.assign(size_t(H), 1.0f);
    L.post_norm.assign(size_t(H), 1.0f);
    if (c.q_lora_rank > 0) {
      L.q_a_proj = matrix(c.q_lora_rank, H);
      L.q_a_norm.assign(size_t(c.q_lora_rank), 1.0f);
      L.q_b_proj = matrix(nh * c.qk_head_dim(), c.q_lora_rank);
    } else {
      L.q_proj = matrix(nh * c.qk_head_dim(), H);
    }
    L.kv_a_proj = matrix(c.kv_lora_rank + c.qk_rope_head_dim, H);
    L.kv_a_norm.assign(size_t(c.kv_lora_rank), 1.0f);
    L.kv_b_proj = matrix(nh * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
    L.o_proj = matrix(H, nh * c.v_head_dim);
    L.moe = c.is_moe_layer(l);
    if (L.moe) {
      const int64_t I = c.moe_intermediate_size;
      L.router = matrix(c.n_routed_experts, H);
      for (int64_t e = 0; e < c.n_routed_experts; ++e) {
        L.exp_gate.push_back(matrix(I, H));
        L.exp_up.push_back(matrix(I, H));
        L.exp_down.push_back(matrix(H, I));
      }
      if (c.n_shared_experts > 0) {
        L.sh_gate = matrix(c.n_shared_experts * I, H);
        L.sh_up = matrix(c.n_shared_experts * I, H);
        L.sh_down = matrix(H, c.n_shared_experts * I);
      }
    } else {
      L.gate_proj = matrix(c.intermediate_size, H);
      L.up_proj = matrix(c.intermediate_size, H);
      L.down_proj = matrix(H, c.intermediate_size);
    }
    w->layers.push_back(std::move(L));
  }
  w->final_norm.assign(size_t(H), 1.0f);
  w->lm_head = matrix(c.vocab_size, H);
  return w;
}

}  // namespace dsv2
