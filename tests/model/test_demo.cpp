// The embedded default model (models/dsv2-demo) against the files its trainer wrote
// (tests/data/demo): logits, greedy continuation, tokenization of the validation text.
#include <gtest/gtest.h>

#include <fstream>

#include "golden_util.h"
#include "runtime/generate.h"
#include "tokenizer/tokenizer.h"

namespace dsv2::test {
namespace {

std::filesystem::path demo_model() { return std::filesystem::path(DSV2_SOURCE_DIR) / "models" / "dsv2-demo"; }
std::filesystem::path demo_data() { return std::filesystem::path(DSV2_TEST_DATA) / "demo"; }
nlohmann::json demo_golden() {
  std::ifstream in(demo_data() / "golden.json");
  return nlohmann::json::parse(in);
}

TEST(DemoModel, LogitsMatchTrainer) {
  auto g = demo_golden();
  auto w = ModelWeights::load(demo_model(), false);
  auto m = make_cpu_model(w, CacheOptions{});
  std::vector<int32_t> ids = g["prompt_ids"].get<std::vector<int32_t>>();
  NpyArray ref = read_npy_f32(demo_data() / g["logits_file"].get<std::string>());
  ASSERT_EQ(ref.shape, (std::vector<int64_t>{int64_t(ids.size()), w->config.vocab_size}));
  std::vector<float> got = full_logits(*m, ids);
  EXPECT_LE(rel_l2(got.data(), ref.data.data(), got.size()), 1e-4);
}

TEST(DemoModel, PromptTokenizesAsTrainerAndGreedyContinuationMatches) {
  auto g = demo_golden();
  Tokenizer tok = Tokenizer::from_folder(demo_model());
  std::vector<int32_t> ids = tok.encode(g["prompt"].get<std::string>(), g["add_bos"].get<bool>());
  EXPECT_EQ(ids, g["prompt_ids"].get<std::vector<int32_t>>());
  auto w = ModelWeights::load(demo_model(), false);
  auto m = make_cpu_model(w, CacheOptions{});
  GenerateOptions go;
  go.max_tokens = g["greedy"]["n"].get<int64_t>();
  go.ignore_eos = true;
  auto r = generate(*m, ids, go, [](std::span<const float> l, std::span<const int32_t>) { return argmax(l); });
  EXPECT_EQ(r.ids, g["greedy"]["ids"].get<std::vector<int32_t>>());
  EXPECT_EQ(tok.decode(r.ids, true), g["greedy"]["text"].get<std::string>());
}

TEST(DemoModel, ValidationTextTokenizesAsTrainer) {
  Tokenizer tok = Tokenizer::from_folder(demo_model());
  std::ifstream in(demo_data() / "val.txt", std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  std::ifstream jin(demo_data() / "val_ids.json");
  auto j = nlohmann::json::parse(jin);
  std::vector<int32_t> expect = j.is_array() ? j.get<std::vector<int32_t>>() : j["ids"].get<std::vector<int32_t>>();
  EXPECT_EQ(tok.encode(text, false), expect);
}

}  // namespace
}  // namespace dsv2::test
