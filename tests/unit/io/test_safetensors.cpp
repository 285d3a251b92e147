// Bad checkpoints must give an Error naming the file and the tensor, never a crash.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/safetensors.h"
#include "model/weights.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace dsv2 {
namespace {

fs::path golden_model(const std::string& c) { return fs::path(DSV2_TEST_DATA) / "golden" / c / "model"; }

struct TempDir {
  fs::path p;
  TempDir() {
    p = fs::temp_directory_path() / ("dsv2-io-" + std::to_string(::getpid()) + "-" +
                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(p);
    fs::create_directories(p);
  }
  ~TempDir() { fs::remove_all(p); }
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void write_file(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}

// Writes a safetensors file from a header object and a data section.
void write_st(const fs::path& p, const json& header, const std::string& data) {
  std::string h = header.dump();
  uint64_t n = h.size();
  std::string s(reinterpret_cast<const char*>(&n), 8);
  write_file(p, s + h + data);
}

// A copy of a golden model folder that a test can damage.
fs::path copy_model(const TempDir& t, const std::string& c) {
  fs::path d = t.p / c;
  fs::copy(golden_model(c), d, fs::copy_options::recursive);
  return d;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(Safetensors, ReadsSingleFileAndShardedCheckpoints) {
  Checkpoint single(golden_model("lite"));
  EXPECT_TRUE(single.has("model.embed_tokens.weight"));
  EXPECT_EQ(single.files().size(), 1u);
  Checkpoint sharded(golden_model("v2"));
  EXPECT_GT(sharded.files().size(), 1u);
  EXPECT_TRUE(sharded.has("lm_head.weight"));
  const TensorView& v = sharded.get_any("model.norm.weight");
  EXPECT_EQ(v.dtype, DType::bf16);
}

TEST(Safetensors, AcceptsF16AndF32Tensors) {
  Checkpoint ck(golden_model("f16"));
  bool f16 = false, f32 = false;
  for (auto& f : ck.files())
    for (auto& [n, v] : f->tensors()) {
      f16 |= v.dtype == DType::f16;
      f32 |= v.dtype == DType::f32;
    }
  EXPECT_TRUE(f16);
  EXPECT_TRUE(f32);
  EXPECT_NO_THROW(ModelWeights::load(golden_model("f16"), false));
}

TEST(Safetensors, MissingFolderAndFiles) {
  TempDir t;
  EXPECT_NE(error_of([&] { Checkpoint c(t.p / "nope"); }).find("does not exist"), std::string::npos);
  EXPECT_NE(error_of([&] { Checkpoint c(t.p); }).find("no model.safetensors"), std::string::npos);
  fs::path d = copy_model(t, "v2");
  json idx = json::parse(read_file(d / "model.safetensors.index.json"));
  std::string shard = idx["weight_map"]["lm_head.weight"];
  fs::remove(d / shard);
  std::string e = error_of([&] { Checkpoint c(d); });
  EXPECT_NE(e.find(shard), std::string::npos) << e;
  EXPECT_NE(e.find("missing"), std::string::npos) << e;
}

TEST(Safetensors, TruncatedFile) {
  TempDir t;
  fs::path d = copy_model(t, "lite");
  std::string s = read_file(d / "model.safetensors");
  write_file(d / "model.safetensors", s.substr(0, s.size() - 100));
  std::string e = error_of([&] { Checkpoint c(d); });
  EXPECT_NE(e.find("model.safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find("outside the data section"), std::string::npos) << e;
  // Cut inside the header, and before the header length.
  write_file(d / "model.safetensors", s.substr(0, 40));
  e = error_of([&] { Checkpoint c(d); });
  EXPECT_NE(e.find("header length"), std::string::npos) << e;
  write_file(d / "model.safetensors", s.substr(0, 5));
  e = error_of([&] { Checkpoint c(d); });
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
}

TEST(Safetensors, HeaderProblems) {
  TempDir t;
  fs::path f = t.p / "x.safetensors";
  write_st(f, {{"a", {{"dtype", "BF16"}, {"shape", {2, 2}}, {"data_offsets", {0, 64}}}}}, std::string(8, '\0'));
  std::string e = error_of([&] { SafetensorsFile s(f); });
  EXPECT_NE(e.find("'a'"), std::string::npos) << e;
  EXPECT_NE(e.find("outside the data section"), std::string::npos) << e;

  write_st(f, {{"a", {{"dtype", "BF16"}, {"shape", {2, 3}}, {"data_offsets", {0, 8}}}}}, std::string(8, '\0'));
  e = error_of([&] { SafetensorsFile s(f); });
  EXPECT_NE(e.find("needs 12 bytes"), std::string::npos) << e;

  write_st(f, {{"q", {{"dtype", "F8_E4M3"}, {"shape", {2}}, {"data_offsets", {0, 2}}}}}, std::string(2, '\0'));
  e = error_of([&] { SafetensorsFile s(f); });
  EXPECT_NE(e.find("'q'"), std::string::npos) << e;
  EXPECT_NE(e.find("F8_E4M3"), std::string::npos) << e;

  write_st(f, {{"a", {{"dtype", "F32"}, {"shape", {-1}}, {"data_offsets", {0, 4}}}}}, std::string(4, '\0'));
  EXPECT_NE(error_of([&] { SafetensorsFile s(f); }).find("invalid shape"), std::string::npos);

  write_st(f, {{"a", {{"dtype", "F32"}, {"shape", {1}}}}}, std::string(4, '\0'));
  EXPECT_NE(error_of([&] { SafetensorsFile s(f); }).find("lacks"), std::string::npos);

  uint64_t n = 5;
  write_file(f, std::string(reinterpret_cast<const char*>(&n), 8) + "{oops");
  EXPECT_NE(error_of([&] { SafetensorsFile s(f); }).find("not valid JSON"), std::string::npos);
}

TEST(Safetensors, WrongShapeAndMissingTensorNameTheTensor) {
  TempDir t;
  fs::path d = copy_model(t, "lite");
  json cfg = json::parse(read_file(d / "config.json"));
  cfg["kv_lora_rank"] = cfg["kv_lora_rank"].get<int>() * 2;
  write_file(d / "config.json", cfg.dump());
  std::string e = error_of([&] { ModelWeights::load(d, false); });
  EXPECT_NE(e.find("kv_a_proj_with_mqa"), std::string::npos) << e;
  EXPECT_NE(e.find("config implies"), std::string::npos) << e;
  EXPECT_NE(e.find("model.safetensors"), std::string::npos) << e;

  // A layer more than the checkpoint holds: the first missing tensor is named.
  cfg = json::parse(read_file(golden_model("lite") / "config.json"));
  cfg["num_hidden_layers"] = cfg["num_hidden_layers"].get<int>() + 1;
  write_file(d / "config.json", cfg.dump());
  e = error_of([&] { ModelWeights::load(d, false); });
  EXPECT_NE(e.find("is missing"), std::string::npos) << e;
  EXPECT_NE(e.find("model.layers." + std::to_string(cfg["num_hidden_layers"].get<int>() - 1)), std::string::npos) << e;
}

TEST(Safetensors, IndexProblems) {
  TempDir t;
  fs::path d = copy_model(t, "v2");
  write_file(d / "model.safetensors.index.json", "{\"weight_map\": 3}");
  EXPECT_NE(error_of([&] { Checkpoint c(d); }).find("weight_map"), std::string::npos);
  write_file(d / "model.safetensors.index.json", "{\"weight_map\": {\"x\": \"../etc/passwd\"}}");
  EXPECT_NE(error_of([&] { Checkpoint c(d); }).find("not a file in the folder"), std::string::npos);
  json idx = json::parse(read_file(golden_model("v2") / "model.safetensors.index.json"));
  std::string first = idx["weight_map"].begin().value();
  idx["weight_map"]["model.layers.99.extra.weight"] = first;
  write_file(d / "model.safetensors.index.json", idx.dump());
  std::string e = error_of([&] { Checkpoint c(d); });
  EXPECT_NE(e.find("model.layers.99.extra.weight"), std::string::npos) << e;
}

}  // namespace
}  // namespace dsv2
