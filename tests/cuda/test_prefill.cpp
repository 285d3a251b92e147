// The decompressed prefill attention of the CUDA backend (chunks of >= decompress_min_tokens new
// tokens) against the absorbed CUDA path, the CPU backend and the float64 oracle's golden logits.
// Skipped without a GPU.
#include <cstdlib>
#include <filesystem>

#include "../model/golden_util.h"
#include "cuda_test_util.h"
#include "model/weights.h"

namespace dsv2::test {
namespace {

std::filesystem::path golden_case(const std::string& c) {
  if (const char* env = std::getenv("DSV2_TEST_DATA")) return std::filesystem::path(env) / "golden" / c;
  return golden_dir(c);
}

CacheOptions gpu_opts(int64_t decompress_min) {
  CacheOptions o;
  o.max_tokens = 4096;
  o.memory_fraction = 0.9;
  o.decompress_min_tokens = decompress_min;
  return o;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

// Logits of every position for `ids` fed as consecutive chunks of the given sizes.
std::vector<float> chunked_logits(Model& m, const std::vector<int32_t>& ids, const std::vector<int>& sizes) {
  SequenceCache seq;
  EXPECT_TRUE(reserve(m.blocks(), seq, int64_t(ids.size())));
  const size_t V = size_t(m.config().vocab_size);
  std::vector<float> out(ids.size() * V);
  size_t done = 0;
  for (int n : sizes) {
    SeqChunk ch{&seq, std::span<const int32_t>(ids.data() + done, size_t(n)), true};
    m.forward({&ch, 1}, out.data() + done * V);
    done += size_t(n);
  }
  EXPECT_EQ(done, ids.size());
  release_all(m.blocks(), seq);
  return out;
}

class DecompressedGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(DecompressedGolden, MatchesAbsorbedCpuAndOracle) {
  DSV2_REQUIRE_GPU();
  const std::string c = GetParam();
  if (!std::filesystem::exists(golden_case(c) / "golden.json")) GTEST_SKIP() << "no golden case " << c;
  std::ifstream in(golden_case(c) / "golden.json");
  const auto gj = nlohmann::json::parse(in);
  auto w = ModelWeights::load(golden_case(c) / "model", false);
  const auto prompt = gj["prompt_ids"].get<std::vector<int32_t>>();
  ASSERT_GE(prompt.size(), 22u);
  const auto ref = read_npy_f32(golden_case(c) / gj["logits_npy"].get<std::string>());
  auto cpu = make_cpu_model(w, CacheOptions{});
  const auto lc = full_logits(*cpu, prompt);
  ASSERT_EQ(ref.data.size(), lc.size());

  // Absorbed everywhere (0), decompressed for every chunk (1), and a split prompt whose second
  // chunk attends decompressed over the 5 cached positions of the first (absorbed) one (8).
  auto absorbed = cuda::make_model(w, 0, gpu_opts(0));
  const auto la = full_logits(*absorbed, prompt);
  absorbed.reset();
  auto dec1 = cuda::make_model(w, 0, gpu_opts(1));
  const auto l1 = full_logits(*dec1, prompt);
  dec1.reset();
  auto dec8 = cuda::make_model(w, 0, gpu_opts(8));
  const auto l8 = chunked_logits(*dec8, prompt, {5, int(prompt.size()) - 5});

  const double e1_cpu = rel_l2(l1.data(), lc.data(), lc.size()), e1_ref = rel_l2(l1.data(), ref.data.data(), lc.size());
  const double e1_abs = rel_l2(l1.data(), la.data(), lc.size());
  const double e8_cpu = rel_l2(l8.data(), lc.data(), lc.size()), e8_ref = rel_l2(l8.data(), ref.data.data(), lc.size());
  std::printf("[prefill] %s: decompressed vs CPU %.2e, vs oracle %.2e, vs absorbed %.2e; split chunk vs CPU %.2e, "
              "vs oracle %.2e\n",
              c.c_str(), e1_cpu, e1_ref, e1_abs, e8_cpu, e8_ref);
  EXPECT_LT(e1_cpu, 1e-2) << c;
  EXPECT_LT(e1_ref, 1e-2) << c;
  EXPECT_LT(e1_abs, 1e-2) << c;
  EXPECT_LT(e8_cpu, 1e-2) << c;
  EXPECT_LT(e8_ref, 1e-2) << c;
  // The two forms round differently: identical logits would mean the decompressed path never ran.
  EXPECT_GT(max_abs_diff(l1, la), 0.0) << c;

  // A mixed pass with decompress_min 8: a 20-token prompt (decompressed), a decode step and a
  // 5-token prompt (both absorbed) and a 12-token chunk after 8 cached tokens (decompressed); each
  // sequence must get the logits it gets alone through the same chunks (as in GoldenParity; single
  // rows against the CPU are only as close as the bf16 forward pass, ~1e-2, whatever the attention).
  const int64_t V = w->config.vocab_size;
  SequenceCache a, b, d, e;
  ASSERT_TRUE(reserve(dec8->blocks(), a, 64) && reserve(dec8->blocks(), b, 64) && reserve(dec8->blocks(), d, 64) &&
              reserve(dec8->blocks(), e, 64));
  std::vector<int32_t> pa(prompt.begin(), prompt.begin() + 20), pb(prompt.begin() + 2, prompt.begin() + 9);
  std::vector<int32_t> pe(prompt.begin() + 3, prompt.begin() + 8);
  std::vector<float> tmp(size_t(V) * 20);
  SeqChunk cb{&b, pb, false};
  dec8->forward({&cb, 1}, tmp.data());
  SeqChunk cd{&d, std::span<const int32_t>(pa.data(), 8), false};
  dec8->forward({&cd, 1}, tmp.data());
  const int32_t nb = prompt[11];
  std::vector<SeqChunk> batch = {{&a, pa, true},
                                 {&b, {&nb, 1}, false},
                                 {&d, std::span<const int32_t>(pa.data() + 8, 12), true},
                                 {&e, pe, false}};
  std::vector<float> mixed(size_t(V) * (20 + 1 + 12 + 1));
  dec8->forward(batch, mixed.data());
  for (auto* s : {&a, &b, &d, &e}) release_all(dec8->blocks(), *s);
  std::vector<int32_t> fb = pb;
  fb.push_back(nb);
  const auto ga = full_logits(*dec8, pa);  // decompressed
  const auto gb = chunked_logits(*dec8, fb, {7, 1});  // absorbed, then a decode step
  const auto gd = chunked_logits(*dec8, pa, {8, 12});  // decompressed twice
  const auto ge = full_logits(*dec8, pe);  // absorbed
  EXPECT_LT(rel_l2(mixed.data(), ga.data(), ga.size()), 5e-3) << c << ": decompressed prompt in a mixed pass";
  EXPECT_LT(rel_l2(mixed.data() + 20 * V, gb.data() + 7 * V, size_t(V)), 5e-3) << c << ": decode";
  EXPECT_LT(rel_l2(mixed.data() + 21 * V, gd.data() + 8 * V, 12 * size_t(V)), 5e-3) << c << ": appended chunk";
  EXPECT_LT(rel_l2(mixed.data() + 33 * V, ge.data() + 4 * V, size_t(V)), 5e-3) << c << ": short prompt";
  // and the whole decompressed prompt stays as close to the CPU as the full-prompt comparisons above
  const auto ca = full_logits(*cpu, pa);
  EXPECT_LT(rel_l2(mixed.data(), ca.data(), ca.size()), 2e-2) << c << ": decompressed prompt vs CPU";
}

INSTANTIATE_TEST_SUITE_P(Golden, DecompressedGolden, ::testing::Values("lite", "v2", "norope", "f16"));

// Random weights at V2-Lite's attention widths (16 heads, kv_lora 512, rope 64, nope 128, v 128).
ModelConfig lite_widths() {
  ModelConfig c;
  c.model_type = "deepseek_v2";
  c.vocab_size = 2000;
  c.hidden_size = 512;
  c.intermediate_size = 1024;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 16;
  c.max_position_embeddings = 163840;
  c.rms_norm_eps = 1e-6;
  c.rope_scaling.yarn = true;
  c.rope_scaling.factor = 40;
  c.rope_scaling.original_max_position = 4096;
  c.rope_scaling.mscale = 0.707;
  c.rope_scaling.mscale_all_dim = 0.707;
  c.q_lora_rank = 0;
  c.kv_lora_rank = 512;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 128;
  c.n_routed_experts = 16;
  c.n_shared_experts = 2;
  c.moe_intermediate_size = 128;
  c.num_experts_per_tok = 6;
  c.topk_method = TopkMethod::greedy;
  c.n_group = 1;
  c.topk_group = 1;
  c.routed_scaling_factor = 1.0;
  c.first_k_dense_replace = 1;
  c.moe_layer_freq = 1;
  return c;
}

// A prefill of 320 tokens as two chunks (192, then 128 attending to the 192 cached positions),
// both decompressed, once with one score block per chunk and once with 48-query blocks; against
// the CPU (one chunk) and the absorbed CUDA path.
TEST(CudaPrefill, TwoChunksRealWidths) {
  DSV2_REQUIRE_GPU();
  auto w = ModelWeights::synthetic(lite_widths(), 23);
  std::vector<int32_t> ids;
  for (int i = 0; i < 320; ++i) ids.push_back(int32_t((i * 7919 + 5) % 2000));
  auto cpu = make_cpu_model(w, CacheOptions{});
  const auto lc = full_logits(*cpu, ids);
  std::vector<float> la;
  {
    auto g = cuda::make_model(w, 0, gpu_opts(0));
    la = chunked_logits(*g, ids, {192, 128});
  }
  std::vector<float> l1, l2;
  {
    auto g = cuda::make_model(w, 0, gpu_opts(64));
    l1 = chunked_logits(*g, ids, {192, 128});
  }
  {
    setenv("DSV2_CUDA_DECOMPRESS_QBLOCK", "48", 1);
    auto g = cuda::make_model(w, 0, gpu_opts(64));
    unsetenv("DSV2_CUDA_DECOMPRESS_QBLOCK");
    l2 = chunked_logits(*g, ids, {192, 128});
  }
  const double ea = rel_l2(la.data(), lc.data(), lc.size());
  const double e1 = rel_l2(l1.data(), lc.data(), lc.size()), e2 = rel_l2(l2.data(), lc.data(), lc.size());
  const double e1a = rel_l2(l1.data(), la.data(), lc.size());
  std::printf("[prefill] real widths, 192 + 128 tokens: absorbed vs CPU %.2e; decompressed vs CPU %.2e, "
              "48-query blocks vs CPU %.2e, decompressed vs absorbed %.2e\n",
              ea, e1, e2, e1a);
  EXPECT_LT(e1, 1e-2);
  EXPECT_LT(e2, 1e-2);
  EXPECT_LT(e1a, 1e-2);
  EXPECT_GT(max_abs_diff(l1, la), 0.0);
  // the query blocking changes no arithmetic of a score row: same logits up to cuBLAS kernel choice
  EXPECT_LT(rel_l2(l2.data(), l1.data(), lc.size()), 2e-3);
}

}  // namespace
}  // namespace dsv2::test
