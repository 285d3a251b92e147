#pragma once
// Weights bound by name from a checkpoint, shape-checked against the config, in one canonical
// layout the backends read. Matrices keep the checkpoint's nn.Linear layout [out, in] and stay
// memory-mapped when they are bf16 or f32; f16 matrices are widened to f32 once at load.
// Norm weights are always f32 vectors.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

#include "io/safetensors.h"
#include "model/config.h"

namespace dsv2 {

struct Matrix {
  DType dtype = DType::bf16;  // bf16 or f32 only
  int64_t rows = 0, cols = 0; // [out, in]
  const void* data = nullptr;
  bool empty() const { return data == nullptr; }
  size_t nbytes() const { return size_t(rows * cols) * dtype_size(dtype); }
};

struct LayerWeights {
  std::vector<float> input_norm, post_norm;  // [H]
  // attention
  Matrix q_proj;                // [heads*(nope+rope), H]          (q_lora_rank == 0)
  Matrix q_a_proj;              // [q_lora, H]                      (q_lora_rank > 0)
  std::vector<float> q_a_norm;  // [q_lora]
  Matrix q_b_proj;              // [heads*(nope+rope), q_lora]
  Matrix kv_a_proj;             // [kv_lora+rope, H]  output = [c | k_pe]
  std::vector<float> kv_a_norm; // [kv_lora]
  Matrix kv_b_proj;             // [heads*(nope+v), kv_lora]  per head: W_UK rows then W_UV rows
  Matrix o_proj;                // [H, heads*v]
  // FFN: dense
  bool moe = false;
  Matrix gate_proj, up_proj;    // [inter, H]
  Matrix down_proj;             // [H, inter]
  // FFN: MoE
  Matrix router;                // [n_routed, H]
  std::vector<Matrix> exp_gate, exp_up;  // n_routed x [moe_inter, H]
  std::vector<Matrix> exp_down;          // n_routed x [H, moe_inter]
  Matrix sh_gate, sh_up;        // [n_shared*moe_inter, H]
  Matrix sh_down;               // [H, n_shared*moe_inter]
};

struct ModelWeights {
  ModelConfig config;
  Matrix embed;                 // [V, H]
  std::vector<float> final_norm;// [H]
  Matrix lm_head;               // [V, H]
  std::vector<LayerWeights> layers;
  DType checkpoint_dtype = DType::bf16;  // dtype of most matrices, for logs
  size_t matrix_bytes = 0;               // bytes of all matrices as held in memory

  // Loads config.json and binds every tensor; shows a progress bar on stderr when `progress`.
  static std::shared_ptr<ModelWeights> load(const std::filesystem::path& dir, bool progress = true);
  // Random bf16 weights of the config's shapes, in memory (for benchmarks; nothing touches disk).
  // Matrices ~ N(0, 0.02^2)-like uniform noise, norms 1.
  static std::shared_ptr<ModelWeights> synthetic(const ModelConfig& c, uint64_t seed = 1);

 private:
  std::unique_ptr<Checkpoint> ckpt_;
  std::vector<std::unique_ptr<float[]>> owned_;
  friend struct WeightBinder;
};

}  // namespace dsv2
