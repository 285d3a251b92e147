// Unit tests of the tokenizer on small hand-made tokenizer.json files: BPE merge order, both merge
// spellings, every Split behavior, ByteLevel options, Digits, added-token rules, tokenizer_config
// forms, post-processors, and refusal of what is not supported.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "tokenizer/pretok.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "tokenizer/unicode_norm.h"

using json = nlohmann::json;
using dsv2::Tokenizer;

namespace {

// A byte-level vocabulary: ids 0-255 are the bytes, merges add ids from 256 on.
struct Spec {
  std::vector<std::pair<std::string, std::string>> merges;  // raw bytes
  json pre_tokenizer = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  json added = json::array();
  json normalizer = nullptr;
  json post_processor = nullptr;
  bool array_merges = false;
  bool ignore_merges = false;
};

json make_json(const Spec& s) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[dsv2::bytelevel::encode(std::string(1, static_cast<char>(b)))] = b;
  json merges = json::array();
  int next = 256;
  for (const auto& [l, r] : s.merges) {
    std::string L = dsv2::bytelevel::encode(l), R = dsv2::bytelevel::encode(r);
    if (!vocab.contains(L + R)) vocab[L + R] = next++;
    if (s.array_merges)
      merges.push_back(json::array({L, R}));
    else
      merges.push_back(L + " " + R);
  }
  return {{"version", "1.0"},
          {"added_tokens", s.added},
          {"normalizer", s.normalizer},
          {"pre_tokenizer", s.pre_tokenizer},
          {"post_processor", s.post_processor},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model",
           {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}, {"ignore_merges", s.ignore_merges}}}};
}

Tokenizer make(const Spec& s, const std::string& cfg = "") { return Tokenizer::from_json(make_json(s).dump(), cfg); }

std::vector<std::string> pieces(const Tokenizer& t, const std::vector<int32_t>& ids) {
  std::vector<std::string> out;
  for (int32_t id : ids) out.push_back(t.token_bytes(id));
  return out;
}

std::vector<std::string> split(const json& pre, const std::string& text) {
  auto p = dsv2::PreTokenizer::from_json(pre);
  std::string buf;
  dsv2::Ranges words;
  p.split(text, buf, words);
  std::vector<std::string> out;
  for (auto [b, e] : words) out.push_back(buf.substr(b, e - b));
  return out;
}

json split_step(const std::string& pattern, const std::string& behavior, bool invert = false, bool literal = false) {
  return {{"type", "Split"},
          {"pattern", {{literal ? "String" : "Regex", pattern}}},
          {"behavior", behavior},
          {"invert", invert}};
}

json seq(json a) {
  return {{"type", "Sequence"},
          {"pretokenizers", json::array({a, {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
}

using V = std::vector<std::string>;

}  // namespace

TEST(BpeMerge, LowestRankFirstThenLeftmost) {
  Spec s;
  s.merges = {{"b", "c"}, {"a", "b"}, {"a", "bc"}, {"x", "x"}};
  auto t = make(s);
  // (b,c) has the lowest rank, so "abc" never becomes "ab"+"c".
  EXPECT_EQ(pieces(t, t.encode("abc", false)), (V{"abc"}));
  EXPECT_EQ(pieces(t, t.encode("abd", false)), (V{"ab", "d"}));
  // Equal ranks: the leftmost pair merges first.
  EXPECT_EQ(pieces(t, t.encode("xxx", false)), (V{"xx", "x"}));
  EXPECT_EQ(pieces(t, t.encode("xxxx", false)), (V{"xx", "xx"}));
}

TEST(BpeMerge, BothMergeSpellingsAgree) {
  Spec s;
  s.merges = {{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}};
  auto a = make(s);
  s.array_merges = true;
  auto b = make(s);
  EXPECT_EQ(a.encode("hello hell", false), b.encode("hello hell", false));
  EXPECT_EQ(pieces(a, a.encode("hello", false)), (V{"hello"}));
}

TEST(BpeMerge, IgnoreMergesTakesWholeWords) {
  Spec s;
  // "abc" is reachable only as a whole vocabulary entry: no merge builds it from (ab, c).
  s.merges = {{"a", "b"}, {"b", "c"}, {"a", "bc"}};
  json j = make_json(s);
  j["model"]["merges"].erase(2);
  auto plain = Tokenizer::from_json(j.dump());
  EXPECT_EQ(pieces(plain, plain.encode("abc", false)), (V{"ab", "c"}));
  j["model"]["ignore_merges"] = true;
  auto whole = Tokenizer::from_json(j.dump());
  EXPECT_EQ(pieces(whole, whole.encode("abc", false)), (V{"abc"}));
}

TEST(PreTokenizer, SplitBehaviors) {
  const std::string text = "The-final--countdown";
  EXPECT_EQ(split(seq(split_step("-", "Removed", false, true)), text), (V{"The", "final", "countdown"}));
  EXPECT_EQ(split(seq(split_step("-", "Isolated", false, true)), text),
            (V{"The", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(split(seq(split_step("-", "MergedWithPrevious", false, true)), text),
            (V{"The-", "final-", "-", "countdown"}));
  EXPECT_EQ(split(seq(split_step("-", "MergedWithNext", false, true)), text),
            (V{"The", "-final", "-", "-countdown"}));
  EXPECT_EQ(split(seq(split_step("-", "Contiguous", false, true)), text), (V{"The", "-", "final", "--", "countdown"}));
  // invert: the pattern describes the pieces to keep.
  EXPECT_EQ(split(seq(split_step("\\p{L}+", "Removed", true)), "héllo, wörld! 你好"),
            (V{"héllo", "wörld", "你好"}));
  EXPECT_EQ(split(seq(split_step("\\p{L}+", "Isolated", true)), "ab, cd"), (V{"ab", ", ", "cd"}));
}

TEST(PreTokenizer, RegexLookaheadAndClasses) {
  // \s+(?!\S) leaves the last space to the following word, as in GPT-2's pattern.
  auto w = split(seq(split_step("\\s+(?!\\S)|\\s+|\\S+", "Isolated")), "a   b");
  EXPECT_EQ(w, (V{"a", "  ", " ", "b"}));
  EXPECT_EQ(split(seq(split_step("\\p{N}{1,3}", "Isolated")), "x12345٣٤"), (V{"x", "123", "45٣", "٤"}));
  // $ matches before a newline, as Oniguruma's does.
  EXPECT_EQ(split(seq(split_step("\\s+$", "Isolated")), "a  \nb"), (V{"a", "  ", "\nb"}));
}

TEST(PreTokenizer, ByteLevelOptions) {
  json bl = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  EXPECT_EQ(split(bl, "Hello world"), (V{" Hello", " world"}));
  EXPECT_EQ(split(bl, "  hi"), (V{" ", " hi"}));
  EXPECT_EQ(split(bl, "it's 42!!"), (V{" it", "'s", " 42", "!!"}));
  bl["add_prefix_space"] = false;
  EXPECT_EQ(split(bl, "Hello world"), (V{"Hello", " world"}));
  bl["use_regex"] = false;
  EXPECT_EQ(split(bl, "Hello world"), (V{"Hello world"}));
  // The prefix space is added to every piece the earlier steps made.
  json s = {{"type", "Sequence"},
            {"pretokenizers", json::array({split_step(",", "Removed", false, true),
                                           {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", false}}})}};
  EXPECT_EQ(split(s, "a,b, c"), (V{" a", " b", " c"}));
}

TEST(PreTokenizer, Digits) {
  json d = {{"type", "Digits"}, {"individual_digits", true}};
  EXPECT_EQ(split(seq(d), "a123b½"), (V{"a", "1", "2", "3", "b", "½"}));
  d["individual_digits"] = false;
  EXPECT_EQ(split(seq(d), "a123b½"), (V{"a", "123", "b", "½"}));
}

TEST(AddedTokens, MatchedBeforePreTokenization) {
  Spec s;
  s.merges = {{"a", "b"}};
  s.added = json::array({
      {{"id", 300}, {"content", "<s>"}, {"special", true}, {"normalized", false}},
      {{"id", 301}, {"content", "<sep>"}, {"special", true}, {"normalized", false}},
      {{"id", 302}, {"content", "[L]"}, {"lstrip", true}, {"special", false}, {"normalized", false}},
      {{"id", 303}, {"content", "[R]"}, {"rstrip", true}, {"special", false}, {"normalized", false}},
      {{"id", 304}, {"content", "ab"}, {"single_word", true}, {"special", false}, {"normalized", true}},
  });
  auto t = make(s);
  // Longest match at the leftmost position: "<sep>" rather than "<s" + "ep>".
  EXPECT_EQ(t.encode("x<sep>y<s>", false), (std::vector<int32_t>{'x', 301, 'y', 300}));
  // lstrip swallows the whitespace before, rstrip the whitespace after.
  EXPECT_EQ(t.encode("x  [L]y", false), (std::vector<int32_t>{'x', 302, 'y'}));
  EXPECT_EQ(t.encode("x[R] \t y", false), (std::vector<int32_t>{'x', 303, 'y'}));
  // single_word: only when not inside a word.
  EXPECT_EQ(t.encode("ab cab", false), (std::vector<int32_t>{304, ' ', 'c', 256}));
  EXPECT_TRUE(t.is_special(300));
  EXPECT_FALSE(t.is_special(302));
  EXPECT_EQ(t.token_to_id("<sep>"), 301);
  EXPECT_EQ(t.decode(t.encode("x<sep>y", false)), "x<sep>y");
  EXPECT_EQ(t.decode(t.encode("x<sep>y", false), true), "xy");
  EXPECT_EQ(t.vocab_size(), 305);
}

TEST(TokenizerConfig, BosEosForms) {
  Spec s;
  s.added = json::array({{{"id", 300}, {"content", "<bos>"}, {"special", true}},
                         {{"id", 301}, {"content", "<eos>"}, {"special", true}}});
  // AddedToken-object form.
  json cfg = {{"add_bos_token", true},
              {"bos_token", {{"__type", "AddedToken"}, {"content", "<bos>"}, {"lstrip", false}}},
              {"eos_token", {{"__type", "AddedToken"}, {"content", "<eos>"}}},
              {"chat_template", "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"}};
  auto t = make(s, cfg.dump());
  EXPECT_EQ(t.bos_id(), 300);
  EXPECT_EQ(t.eos_id(), 301);
  EXPECT_EQ(t.bos_token(), "<bos>");
  EXPECT_EQ(t.eos_token(), "<eos>");
  EXPECT_TRUE(t.add_bos_token());
  EXPECT_EQ(t.encode("a"), (std::vector<int32_t>{300, 'a'}));
  EXPECT_EQ(t.encode("a", false), (std::vector<int32_t>{'a'}));
  EXPECT_EQ(t.chat_template(), cfg["chat_template"].get<std::string>());
  // String form, no BOS, EOS added.
  json cfg2 = {{"add_bos_token", false}, {"add_eos_token", true}, {"bos_token", "<bos>"}, {"eos_token", "<eos>"}};
  auto t2 = make(s, cfg2.dump());
  EXPECT_EQ(t2.encode("a"), (std::vector<int32_t>{'a', 301}));
  EXPECT_EQ(t2.chat_template(), "");
  // No config: nothing added, no BOS known.
  auto t3 = make(s);
  EXPECT_EQ(t3.bos_id(), -1);
  EXPECT_EQ(t3.encode("a"), (std::vector<int32_t>{'a'}));
}

TEST(TokenizerConfig, TemplateProcessingWithoutConfigKeys) {
  Spec s;
  s.added = json::array({{{"id", 300}, {"content", "<bos>"}, {"special", true}}});
  s.post_processor = {{"type", "TemplateProcessing"},
                      {"single", json::array({{{"SpecialToken", {{"id", "<bos>"}, {"type_id", 0}}}},
                                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                      {"special_tokens", {{"<bos>", {{"id", "<bos>"}, {"ids", {300}}, {"tokens", {"<bos>"}}}}}}};
  auto t = make(s, json({{"bos_token", "<bos>"}}).dump());
  EXPECT_EQ(t.encode("a"), (std::vector<int32_t>{300, 'a'}));
  EXPECT_TRUE(t.add_bos_token());
}

TEST(TokenizerRefusals, UnsupportedComponentsAreErrors) {
  auto refuses = [](const json& j, const std::string& needle) {
    try {
      Tokenizer::from_json(j.dump());
    } catch (const dsv2::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      return;
    }
    ADD_FAILURE() << "accepted: " << needle;
  };
  Spec s;
  json base = make_json(s);
  json j = base;
  j["normalizer"] = {{"type", "Lowercase"}};
  refuses(j, "Lowercase");
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "NFC"}}, {{"type", "Replace"}}})}};
  refuses(j, "Replace");
  j = base;
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  refuses(j, "Whitespace");
  j["pre_tokenizer"] = seq(split_step("\\h+", "Isolated"));
  refuses(j, "\\h");
  j["pre_tokenizer"] = seq(split_step("(unclosed", "Isolated"));
  refuses(j, "cannot compile");
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", json::array({{{"type", "ByteLevel"}}, split_step("a", "Isolated")})}};
  refuses(j, "last step");
  j = base;
  j["model"]["type"] = "WordPiece";
  refuses(j, "WordPiece");
  j = base;
  j["model"]["merges"] = json::array({"a"});
  refuses(j, "\"a b\"");
  j = base;
  j["model"]["merges"] = json::array({"a zz"});
  refuses(j, "missing from the vocabulary");
  j = base;
  j["model"]["dropout"] = 0.1;
  refuses(j, "dropout");
  j = base;
  j["decoder"] = {{"type", "WordPiece"}};
  refuses(j, "decoder");
  j = base;
  j["post_processor"] = {{"type", "BertProcessing"}};
  refuses(j, "BertProcessing");
  EXPECT_THROW(Tokenizer::from_json("{not json"), dsv2::Error);
  j = base;
  j["added_tokens"] = json::array({{{"id", "seven"}, {"content", "x"}}});
  refuses(j, "unexpected structure");
  j = base;
  j["pre_tokenizer"] = seq({{"type", "Split"}, {"pattern", 5}});
  refuses(j, "Split pattern");
  EXPECT_THROW(Tokenizer::from_json(base.dump(), R"({"add_bos_token": true})"), dsv2::Error);
  EXPECT_THROW(Tokenizer::from_json(base.dump(), R"({"bos_token": "<nope>"})"), dsv2::Error);
}

TEST(TokenizerEncode, InvalidUtf8IsAnError) {
  auto t = make(Spec{});
  try {
    t.encode("ok\xC3(", false);
    FAIL() << "accepted invalid UTF-8";
  } catch (const dsv2::Error& e) {
    EXPECT_NE(std::string(e.what()).find("offset 2"), std::string::npos) << e.what();
  }
}

TEST(TokenizerDecode, InvalidBytesBecomeReplacementCharacters) {
  auto t = make(Spec{});
  // 0xE4 0xB8 0xAD is 中; cut short and followed by 'A' it is one U+FFFD then A.
  EXPECT_EQ(t.decode(std::vector<int32_t>{0xE4, 0xB8, 0xAD}), "中");
  EXPECT_EQ(t.decode(std::vector<int32_t>{0xE4, 0xB8, 'A'}), "\xEF\xBF\xBD" "A");
  EXPECT_EQ(t.decode(std::vector<int32_t>{0xE4, 0xB8}), "\xEF\xBF\xBD");
  // Ids without a token decode to nothing.
  EXPECT_EQ(t.decode(std::vector<int32_t>{'a', 99999, -1, 'b'}), "ab");
  EXPECT_EQ(t.token_bytes(99999), "");
}

TEST(Utf8Lossy, LossyFollowsMaximalSubparts) {
  using dsv2::utf8::lossy;
  const std::string R = "\xEF\xBF\xBD";
  EXPECT_EQ(lossy("a\xF0\x9F\x98"), "a" + R);                // truncated 4-byte sequence: one
  EXPECT_EQ(lossy("\xED\xA0\x80"), R + R + R);                // surrogate: each byte
  EXPECT_EQ(lossy("\xC0\x80"), R + R);                        // overlong lead bytes never start a sequence
  EXPECT_EQ(lossy("\xF4\x90\x80\x80"), R + R + R + R);        // above U+10FFFF
  EXPECT_EQ(lossy("\xE2\x82\xAC\x80x"), "\xE2\x82\xAC" + R + "x");
  EXPECT_EQ(dsv2::utf8::find_invalid("ok\xE2\x82"), 2u);
  EXPECT_EQ(dsv2::utf8::find_invalid("€"), std::string::npos);
}

TEST(UnicodeNormalization, KnownExamples) {
  using dsv2::normalize;
  using dsv2::NormForm;
  // Composition, including a mark that reorders and one that is blocked.
  EXPECT_EQ(normalize("e\u0301", NormForm::nfc), "\u00e9");
  EXPECT_EQ(normalize("a\u0323\u0302", NormForm::nfc), "\u1ead");  // ậ
  EXPECT_EQ(normalize("a\u0302\u0323", NormForm::nfc), "\u1ead");  // reordered first
  EXPECT_EQ(normalize("\u00e9", NormForm::nfd), "e\u0301");
  // Singletons and exclusions: Ohm and Kelvin signs become letters; U+0958 stays decomposed.
  EXPECT_EQ(normalize("\u2126\u212a", NormForm::nfc), "\u03a9K");
  EXPECT_EQ(normalize("\u0958", NormForm::nfc), "\u0915\u093c");
  // Hangul by algorithm.
  EXPECT_EQ(normalize("\u1112\u1161\u11ab", NormForm::nfc), "\ud55c");
  EXPECT_EQ(normalize("\ud55c", NormForm::nfd), "\u1112\u1161\u11ab");
  // Compatibility mappings only under K forms.
  EXPECT_EQ(normalize("\ufb01\u2460\uff21\u00a0", NormForm::nfkc), "fi1A ");
  EXPECT_EQ(normalize("\ufb01\u2460\uff21\u00a0", NormForm::nfc), "\ufb01\u2460\uff21\u00a0");
  EXPECT_EQ(normalize("\uff76\uff9e", NormForm::nfkc), "\u30ac");  // half-width ｶﾞ -> ガ
  EXPECT_EQ(normalize("plain ascii", NormForm::nfkc), "plain ascii");
}

TEST(UnicodeNormalization, NormalizerAppliesBeforePreTokenization) {
  Spec s;
  s.normalizer = {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "NFKC"}}})}};
  s.added = json::array({{{"id", 300}, {"content", "\uff21"}, {"normalized", true}, {"special", false}},
                         {{"id", 301}, {"content", "\uff22"}, {"normalized", false}, {"special", false}}});
  auto t = make(s);
  // "Ａ" (normalized token) is matched as its NFKC form "A"; "Ｂ" (not normalized) only verbatim.
  EXPECT_EQ(t.encode("xAＡＢ\u2460", false), (std::vector<int32_t>{'x', 300, 300, 301, '1'}));
}
