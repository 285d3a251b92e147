#include <filesystem>
#include <fstream>
#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "sampling/sampler.h"
#include "sampling/stop_matcher.h"

namespace fs = std::filesystem;
using dsv2::StopMatcher;

namespace {

TEST(StopMatcher, StopAcrossPieces) {
  StopMatcher m({"</s>"});
  auto r = m.push("Hel");
  EXPECT_EQ(r.emit, "Hel");
  EXPECT_FALSE(r.stopped);
  r = m.push("lo<");
  EXPECT_EQ(r.emit, "lo");  // "<" may start the stop string
  EXPECT_EQ(m.pending(), 1u);
  r = m.push("/s");
  EXPECT_EQ(r.emit, "");
  r = m.push(">rest");
  EXPECT_EQ(r.emit, "");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.matched, "</s>");
  r = m.push("more");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emit, "");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, FalseStartIsReleased) {
  StopMatcher m({"abc"});
  EXPECT_EQ(m.push("xxab").emit, "xx");
  EXPECT_EQ(m.push("d").emit, "abd");
  EXPECT_EQ(m.push("a").emit, "");
  EXPECT_EQ(m.flush(), "a");
}

TEST(StopMatcher, EarliestStopWinsAndTextBeforeItIsEmitted) {
  StopMatcher m({"world", "lo w"});
  auto r = m.push("hello world");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emit, "hel");
  EXPECT_EQ(r.matched, "lo w");
}

TEST(StopMatcher, MultiByteStopStrings) {
  StopMatcher m({"。\n"});
  EXPECT_EQ(m.push("你好").emit, "你好");
  EXPECT_EQ(m.push("。").emit, "");
  auto r = m.push("\n下");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emit, "");
}

// Any split of a text into pieces emits exactly the text before the first stop occurrence.
TEST(StopMatcher, RandomSplitsMatchAReference) {
  std::mt19937 g(5);
  const std::vector<std::string> stops = {"STOP", "\n\nUser:", "ab"};
  const std::string alphabet = "aabSTOPUser:\n x";
  for (int trial = 0; trial < 2000; ++trial) {
    std::string text;
    int len = int(g() % 40);
    for (int k = 0; k < len; ++k) text += alphabet[g() % alphabet.size()];
    size_t cut = std::string::npos;
    for (const auto& s : stops) cut = std::min(cut, text.find(s));
    std::string want = cut == std::string::npos ? text : text.substr(0, cut);
    StopMatcher m(stops);
    std::string got;
    bool stopped = false;
    size_t pos = 0;
    while (pos < text.size()) {
      size_t n = 1 + g() % 5;
      auto r = m.push(text.substr(pos, n));
      got += r.emit;
      pos += n;
      if (r.stopped) {
        stopped = true;
        break;
      }
    }
    if (!stopped) got += m.flush();
    EXPECT_EQ(got, want) << "text: " << text;
    EXPECT_EQ(stopped, cut != std::string::npos) << "text: " << text;
  }
}

TEST(StopMatcher, RejectsEmptyStop) { EXPECT_THROW(StopMatcher({""}), dsv2::Error); }

struct TempFolder {
  fs::path path;
  explicit TempFolder(const std::string& name) : path(fs::temp_directory_path() / name) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempFolder() { fs::remove_all(path); }
  void write(const std::string& text) const { std::ofstream(path / "generation_config.json") << text; }
};

TEST(GenerationConfig, DeepSeekV2ChatDefaults) {
  TempFolder dir("dsv2_gencfg_chat");
  dir.write(R"({"_from_model_config": true, "bos_token_id": 100000, "eos_token_id": 100001,
               "do_sample": true, "temperature": 0.3, "top_p": 0.95, "transformers_version": "4.39.3"})");
  auto g = dsv2::GenerationConfig::from_folder(dir.path);
  EXPECT_EQ(g.bos_token_id, 100000);
  EXPECT_EQ(g.eos_token_ids, std::vector<int32_t>{100001});
  auto p = g.defaults();
  EXPECT_FLOAT_EQ(p.temperature, 0.3f);
  EXPECT_FLOAT_EQ(p.top_p, 0.95f);
  EXPECT_EQ(p.top_k, 0);
  EXPECT_FLOAT_EQ(p.repetition_penalty, 1.f);
  EXPECT_EQ(p.max_tokens, dsv2::SamplingParams{}.max_tokens);
  EXPECT_FALSE(p.greedy());
}

TEST(GenerationConfig, DoSampleFalseIsGreedyAndOtherFields) {
  TempFolder dir("dsv2_gencfg_greedy");
  dir.write(R"({"do_sample": false, "temperature": 0.7, "top_k": 20, "repetition_penalty": 1.1,
               "max_new_tokens": 64, "eos_token_id": [100001, 7]})");
  auto g = dsv2::GenerationConfig::from_folder(dir.path);
  auto p = g.defaults();
  EXPECT_TRUE(p.greedy());
  EXPECT_EQ(p.top_k, 20);
  EXPECT_FLOAT_EQ(p.repetition_penalty, 1.1f);
  EXPECT_EQ(p.max_tokens, 64);
  EXPECT_EQ(g.eos_token_ids, (std::vector<int32_t>{100001, 7}));
  dir.write(R"({"top_k": -1})");
  EXPECT_EQ(dsv2::GenerationConfig::from_folder(dir.path).defaults().top_k, 0);
}

TEST(GenerationConfig, MissingFileGivesDefaults) {
  TempFolder dir("dsv2_gencfg_missing");
  auto g = dsv2::GenerationConfig::from_folder(dir.path);
  EXPECT_FALSE(g.temperature.has_value());
  EXPECT_TRUE(g.eos_token_ids.empty());
  EXPECT_FLOAT_EQ(g.defaults().temperature, 1.f);
}

TEST(GenerationConfig, BadValuesNameFileAndKey) {
  TempFolder dir("dsv2_gencfg_bad");
  auto expect_error = [&](const std::string& text, const std::string& key) {
    dir.write(text);
    try {
      dsv2::GenerationConfig::from_folder(dir.path);
      ADD_FAILURE() << "accepted " << text;
    } catch (const dsv2::Error& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find("generation_config.json"), std::string::npos) << msg;
      EXPECT_NE(msg.find(key), std::string::npos) << msg;
    }
  };
  expect_error(R"({"temperature": "hot"})", "temperature");
  expect_error(R"({"temperature": -0.5})", "temperature");
  expect_error(R"({"top_p": 0})", "top_p");
  expect_error(R"({"top_k": 2.5})", "top_k");
  expect_error(R"({"do_sample": "yes"})", "do_sample");
  expect_error(R"({"eos_token_id": "x"})", "eos_token_id");
  expect_error(R"({"eos_token_id": [1, "x"]})", "eos_token_id");
  expect_error(R"({"repetition_penalty": 0})", "repetition_penalty");
  expect_error(R"({"max_new_tokens": 0})", "max_new_tokens");
  expect_error(R"([1, 2])", "object");
  expect_error(R"({"temperature": )", "invalid JSON");
}

}  // namespace
