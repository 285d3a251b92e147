// Whole-model golden tests: the CPU backend against the float64 oracle (tools/reference), and the
// latent cache against a full recompute.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "golden_util.h"
#include "runtime/generate.h"

namespace dsv2::test {
namespace {

class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, LogitsMatchFloat64Oracle) {
  const std::string c = GetParam();
  auto j = golden_json(c);
  auto w = ModelWeights::load(golden_dir(c) / "model", false);
  CacheOptions co;
  co.max_tokens = 256;
  auto m = make_cpu_model(w, co);
  std::vector<int32_t> ids = j["prompt_ids"].get<std::vector<int32_t>>();
  NpyArray ref = read_npy_f32(golden_dir(c) / j["logits_npy"].get<std::string>());
  ASSERT_EQ(ref.shape, (std::vector<int64_t>{int64_t(ids.size()), w->config.vocab_size}));
  std::vector<float> got = full_logits(*m, ids);
  double err = rel_l2(got.data(), ref.data.data(), got.size());
  EXPECT_LE(err, 1e-4) << c;
  // Row by row too, so that a late-position error (YaRN past the original context) is not averaged away.
  const size_t V = size_t(w->config.vocab_size);
  for (size_t t = 0; t < ids.size(); ++t)
    EXPECT_LE(rel_l2(&got[t * V], &ref.data[t * V], V), 1e-4) << c << " row " << t;
}

TEST_P(Golden, GreedyContinuationMatchesOracle) {
  const std::string c = GetParam();
  auto j = golden_json(c)["greedy"];
  auto w = ModelWeights::load(golden_dir(c) / "model", false);
  CacheOptions co;
  co.max_tokens = 256;
  auto m = make_cpu_model(w, co);
  std::vector<int32_t> prompt = j["prompt_ids"].get<std::vector<int32_t>>();
  std::vector<int32_t> expect = j["generated_ids"].get<std::vector<int32_t>>();
  GenerateOptions go;
  go.max_tokens = j["max_tokens"].get<int64_t>();
  go.ignore_eos = true;
  auto r = generate(*m, prompt, go, [](std::span<const float> l, std::span<const int32_t>) { return argmax(l); });
  EXPECT_EQ(r.ids, expect) << c;
  EXPECT_EQ(m->blocks().used_count(), 0);
}

// The decompressed attention (used for long prefill chunks) against the oracle: force it for
// every chunk, and also split the prompt so that a decompressed chunk follows cached tokens.
TEST_P(Golden, DecompressedPrefillMatchesOracle) {
  const std::string c = GetParam();
  auto j = golden_json(c);
  auto w = ModelWeights::load(golden_dir(c) / "model", false);
  CacheOptions co;
  co.max_tokens = 256;
  co.decompress_min_tokens = 1;
  auto m = make_cpu_model(w, co);
  std::vector<int32_t> ids = j["prompt_ids"].get<std::vector<int32_t>>();
  NpyArray ref = read_npy_f32(golden_dir(c) / j["logits_npy"].get<std::string>());
  std::vector<float> got = full_logits(*m, ids);
  EXPECT_LE(rel_l2(got.data(), ref.data.data(), got.size()), 1e-4) << c;

  co.decompress_min_tokens = 8;  // first chunk of 5 absorbed, the rest decompressed over the cache
  auto m2 = make_cpu_model(w, co);
  SequenceCache seq;
  ASSERT_TRUE(reserve(m2->blocks(), seq, int64_t(ids.size())));
  const int64_t V = w->config.vocab_size;
  std::vector<float> a(size_t(5 * V)), b((ids.size() - 5) * size_t(V));
  SeqChunk c1{&seq, std::span<const int32_t>(ids.data(), 5), true};
  m2->forward({&c1, 1}, a.data());
  SeqChunk c2{&seq, std::span<const int32_t>(ids.data() + 5, ids.size() - 5), true};
  m2->forward({&c2, 1}, b.data());
  a.insert(a.end(), b.begin(), b.end());
  EXPECT_LE(rel_l2(a.data(), ref.data.data(), a.size()), 1e-4) << c;
}

INSTANTIATE_TEST_SUITE_P(Cases, Golden, ::testing::Values("lite", "v2", "norope", "f16"));

// Decoding one token at a time over the latent cache must equal recomputing the whole sequence,
// for two sequences decoded side by side in one batch (their blocks interleave in the cache).
TEST(LatentCache, IncrementalDecodeEqualsFullRecompute) {
  for (std::string c : {"v2", "lite"}) {
    auto w = ModelWeights::load(golden_dir(c) / "model", false);
    const int64_t V = w->config.vocab_size;
    CacheOptions co;
    co.max_tokens = 1024;
    auto m = make_cpu_model(w, co);
    const int steps = 72;
    std::vector<std::vector<int32_t>> toks = {{1, 5, 9, 200, 17}, {3, 44, 7}};
    std::vector<SequenceCache> seqs(2);
    std::vector<std::vector<float>> step_logits(2);
    // Prefill both prompts.
    for (int s = 0; s < 2; ++s) {
      ASSERT_TRUE(reserve(m->blocks(), seqs[s], int64_t(toks[s].size())));
      std::vector<float> l(static_cast<size_t>(V));
      SeqChunk ch{&seqs[s], toks[s], false};
      m->forward({&ch, 1}, l.data());
      step_logits[s].insert(step_logits[s].end(), l.begin(), l.end());
      toks[s].push_back(argmax(l));
    }
    for (int i = 0; i < steps; ++i) {
      SeqChunk chs[2];
      for (int s = 0; s < 2; ++s) {
        ASSERT_TRUE(reserve(m->blocks(), seqs[s], seqs[s].length + 1));
        chs[s] = SeqChunk{&seqs[s], std::span<const int32_t>(&toks[s].back(), 1), false};
      }
      std::vector<float> l(size_t(2 * V));
      m->forward(chs, l.data());
      for (int s = 0; s < 2; ++s) {
        step_logits[s].insert(step_logits[s].end(), l.begin() + s * V, l.begin() + (s + 1) * V);
        toks[s].push_back(argmax(std::span<const float>(l.data() + s * V, size_t(V))));
      }
    }
    // The blocks of the two sequences must interleave for this test to exercise the paging.
    EXPECT_GT(seqs[0].blocks.size(), 1u);
    for (int s = 0; s < 2; ++s) {
      release_all(m->blocks(), seqs[s]);
      std::vector<int32_t> all(toks[s].begin(), toks[s].end() - 1);
      std::vector<float> full = full_logits(*m, all);
      // Rows from the last prompt token on are the ones the decode produced.
      size_t prompt_len = all.size() - steps;
      const float* ref = full.data() + (prompt_len - 1) * size_t(V);
      ASSERT_EQ(step_logits[s].size(), size_t(steps + 1) * size_t(V));
      double err = rel_l2(step_logits[s].data(), ref, step_logits[s].size());
      EXPECT_LE(err, 1e-5) << c << " sequence " << s;
    }
    EXPECT_EQ(m->blocks().used_count(), 0);
  }
}

TEST(LatentCache, BytesPerTokenAreLayersTimesLatentWidth) {
  for (std::string c : {"lite", "v2", "norope"}) {
    auto w = ModelWeights::load(golden_dir(c) / "model", false);
    auto m = make_cpu_model(w, CacheOptions{});
    const auto& cfg = w->config;
    EXPECT_EQ(m->cache_bytes_per_token(),
              size_t(cfg.num_hidden_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim)) * sizeof(float));
  }
}

// A batch of sequences must give each the logits it gets alone.
TEST(Batching, MixedPrefillAndDecodeMatchesSingleSequences) {
  auto w = ModelWeights::load(golden_dir("v2") / "model", false);
  const int64_t V = w->config.vocab_size;
  CacheOptions co;
  co.max_tokens = 1024;
  auto m = make_cpu_model(w, co);
  std::vector<int32_t> a = {4, 8, 15, 16, 23, 42}, b = {100, 7}, a_next = {9};
  // Alone.
  std::vector<float> a_full = full_logits(*m, {4, 8, 15, 16, 23, 42, 9});
  std::vector<float> b_full = full_logits(*m, b);
  // Together: a is prefilled first, then its decode step shares a batch with b's prefill.
  SequenceCache sa, sb;
  ASSERT_TRUE(reserve(m->blocks(), sa, 7));
  ASSERT_TRUE(reserve(m->blocks(), sb, 2));
  std::vector<float> tmp(static_cast<size_t>(V));
  SeqChunk c0{&sa, a, false};
  m->forward({&c0, 1}, tmp.data());
  SeqChunk chs[2] = {{&sa, a_next, false}, {&sb, b, true}};
  ASSERT_EQ(Model::logits_rows(chs), 3);
  std::vector<float> out(size_t(3 * V));
  m->forward(chs, out.data());
  EXPECT_LE(rel_l2(out.data(), a_full.data() + 6 * V, size_t(V)), 1e-6);
  EXPECT_LE(rel_l2(out.data() + V, b_full.data(), size_t(2 * V)), 1e-6);
}

}  // namespace
}  // namespace dsv2::test
