#include "tokenizer/tokenizer.h"

#include <fstream>
#include <sstream>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pretok.h"
#include "tokenizer/tokenizer_added.h"
#include "tokenizer/unicode.h"
#include "tokenizer/unicode_norm.h"

namespace dsv2 {

using json = nlohmann::json;

struct Tokenizer::Impl {
  std::unique_ptr<BpeModel> bpe;
  PreTokenizer pretok;
  AddedTokenMatcher raw_added;         // non-normalized added tokens, matched on the raw text
  AddedTokenMatcher normalized_added;  // normalized ones, matched after the normalizer
  std::vector<NormForm> normalizers;   // applied in order to text outside non-normalized added tokens

  std::vector<std::string> id_token;  // tokenizer.json spelling per id ("" = no token)
  std::vector<std::string> id_bytes;  // what each id decodes to
  std::vector<uint8_t> id_flags;      // bit 0: has token, bit 1: special
  std::unordered_map<std::string, int32_t> token_id;

  // BOS/EOS policy for encode(add_special_tokens = true).
  std::vector<int32_t> prefix, suffix;
  int32_t bos = -1, eos = -1, pad = -1;
  bool add_bos = false;
  std::string chat_template;

  std::string normalize_text(std::string_view text) const {
    std::string s(text);
    for (NormForm f : normalizers) s = normalize(s, f);
    return s;
  }
  void encode_plain(std::string_view text, std::vector<int32_t>& ids) const;
};

namespace {

std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) fail("cannot read {}", p.string());
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json parse_json(const std::string& text, const char* what) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", what, e.what());
  }
}

void read_normalizer(const json& n, std::vector<NormForm>& steps, int depth = 0) {
  if (n.is_null()) return;
  std::string type = n.value("type", std::string());
  if (type == "Sequence" && depth < 8) {
    for (const auto& s : n.value("normalizers", json::array())) read_normalizer(s, steps, depth + 1);
    return;
  }
  if (type == "NFC") return steps.push_back(NormForm::nfc);
  if (type == "NFKC") return steps.push_back(NormForm::nfkc);
  if (type == "NFD") return steps.push_back(NormForm::nfd);
  if (type == "NFKD") return steps.push_back(NormForm::nfkd);
  fail("tokenizer.json: normalizer type \"{}\" is not supported (supported: none, Sequence, NFC, NFKC, NFD, NFKD)",
       type);
}

void check_decoder(const json& d) {
  if (d.is_null())
    fail("tokenizer.json: a byte-level BPE tokenizer without a decoder is not supported (expected ByteLevel)");
  std::string type = d.value("type", std::string());
  if (type == "ByteLevel") return;
  if (type == "Sequence" && d.contains("decoders") && d["decoders"].size() == 1) return check_decoder(d["decoders"][0]);
  fail("tokenizer.json: decoder type \"{}\" is not supported (supported: ByteLevel)", type);
}

// tokenizer_config.json names tokens either as a string or as {"__type": "AddedToken", "content": ..}.
std::string config_token(const json& cfg, const char* key) {
  if (!cfg.contains(key) || cfg[key].is_null()) return "";
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  fail("tokenizer_config.json: \"{}\" must be a string or an object with \"content\", got {}", key, v.dump());
}

// post_processor: what add_special_tokens adds when tokenizer_config.json does not say.
void read_post_processor(const json& pp, const std::unordered_map<std::string, int32_t>& ids,
                         std::vector<int32_t>& prefix, std::vector<int32_t>& suffix, int depth = 0) {
  if (pp.is_null()) return;
  std::string type = pp.value("type", std::string());
  if (type == "ByteLevel") return;  // offsets only
  if (type == "Sequence" && depth < 8) {
    for (const auto& p : pp.value("processors", json::array())) read_post_processor(p, ids, prefix, suffix, depth + 1);
    return;
  }
  if (type == "TemplateProcessing") {
    bool seen_a = false;
    for (const auto& piece : pp.at("single")) {
      if (piece.contains("Sequence")) {
        if (piece["Sequence"].value("id", std::string("A")) != "A")
          fail("tokenizer.json: TemplateProcessing single template refers to sequence B");
        seen_a = true;
      } else if (piece.contains("SpecialToken")) {
        std::string name = piece["SpecialToken"].at("id");
        const json& st = pp.at("special_tokens").at(name);
        for (const auto& id : st.at("ids")) (seen_a ? suffix : prefix).push_back(id.get<int32_t>());
      }
    }
    return;
  }
  fail("tokenizer.json: post_processor type \"{}\" is not supported (supported: ByteLevel, TemplateProcessing, "
       "Sequence)",
       type);
}

}  // namespace

Tokenizer Tokenizer::from_folder(const std::filesystem::path& dir) {
  auto tj = dir / "tokenizer.json";
  if (!std::filesystem::exists(tj)) fail("{} not found (a model folder needs tokenizer.json)", tj.string());
  auto cj = dir / "tokenizer_config.json";
  std::string cfg = std::filesystem::exists(cj) ? read_file(cj) : "";
  try {
    return from_json(read_file(tj), cfg);
  } catch (const Error& e) {
    fail("{}: {}", dir.string(), e.what());
  }
}

Tokenizer Tokenizer::from_json(const std::string& tokenizer_json, const std::string& config_json) {
  try {
    return Tokenizer(build_impl(tokenizer_json, config_json));
  } catch (const json::exception& e) {
    // A key of the wrong type or a missing required field deep inside the files.
    fail("tokenizer.json / tokenizer_config.json: unexpected structure: {}", e.what());
  }
}

std::shared_ptr<const Tokenizer::Impl> Tokenizer::build_impl(const std::string& tokenizer_json,
                                                              const std::string& config_json) {
  json tj = parse_json(tokenizer_json, "tokenizer.json");
  json cfg = config_json.empty() ? json::object() : parse_json(config_json, "tokenizer_config.json");
  if (!tj.is_object()) fail("tokenizer.json: top level must be an object");
  if (!cfg.is_object()) fail("tokenizer_config.json: top level must be an object");
  auto impl = std::make_shared<Impl>();

  // Model.
  if (!tj.contains("model") || !tj["model"].is_object()) fail("tokenizer.json: no \"model\" object");
  const json& m = tj["model"];
  std::string mtype = m.value("type", std::string("BPE"));
  if (mtype != "BPE") fail("tokenizer.json: model type \"{}\" is not supported (supported: BPE)", mtype);
  if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() != 0.0)
    fail("tokenizer.json: BPE dropout {} is not supported", m["dropout"].dump());
  if (m.value("byte_fallback", false)) fail("tokenizer.json: BPE byte_fallback is not supported");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (m.contains(k) && !m[k].is_null() && !m[k].get<std::string>().empty())
      fail("tokenizer.json: BPE {} \"{}\" is not supported", k, m[k].get<std::string>());
  if (!m.contains("vocab") || !m["vocab"].is_object()) fail("tokenizer.json: model has no \"vocab\" object");

  read_normalizer(tj.value("normalizer", json()), impl->normalizers);
  impl->pretok = PreTokenizer::from_json(tj.value("pre_tokenizer", json()));
  if (!impl->pretok.byte_level())
    fail("tokenizer.json: only byte-level BPE is supported; the pre_tokenizer chain must end with ByteLevel");
  check_decoder(tj.value("decoder", json()));

  int32_t max_id = -1;
  std::unordered_map<std::string, int32_t> bpe_vocab;
  std::vector<std::pair<int32_t, std::string>> all_tokens;
  std::string bytes;
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() > (1 << 24))
      fail("tokenizer.json: vocab entry \"{}\" has an invalid id {}", it.key(), it.value().dump());
    int32_t id = it.value().get<int32_t>();
    all_tokens.push_back({id, it.key()});
    // Tokens made of byte-level characters are reachable by BPE; others only as added tokens.
    if (bytelevel::decode(it.key(), bytes)) bpe_vocab.emplace(bytes, id);
    max_id = std::max(max_id, id);
  }
  std::vector<std::pair<std::string, std::string>> merges;
  for (const auto& mj : m.value("merges", json::array())) {
    std::string l, r;
    if (mj.is_string()) {
      std::string s = mj.get<std::string>();
      size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        fail("tokenizer.json: merge \"{}\" is not of the form \"a b\"", s);
      l = s.substr(0, sp);
      r = s.substr(sp + 1);
    } else if (mj.is_array() && mj.size() == 2 && mj[0].is_string() && mj[1].is_string()) {
      l = mj[0].get<std::string>();
      r = mj[1].get<std::string>();
    } else {
      fail("tokenizer.json: merge {} is neither \"a b\" nor [\"a\", \"b\"]", mj.dump());
    }
    std::string lb, rb;
    if (!bytelevel::decode(l, lb) || !bytelevel::decode(r, rb))
      fail("tokenizer.json: merge \"{} {}\" uses characters outside the byte-level alphabet", l, r);
    merges.push_back({std::move(lb), std::move(rb)});
  }
  impl->bpe = std::make_unique<BpeModel>(std::move(bpe_vocab), merges, m.value("ignore_merges", false));

  // Added tokens.
  std::vector<AddedToken> added;
  for (const auto& a : tj.value("added_tokens", json::array())) {
    AddedToken t;
    t.id = a.at("id").get<int32_t>();
    t.content = a.at("content").get<std::string>();
    t.single_word = a.value("single_word", false);
    t.lstrip = a.value("lstrip", false);
    t.rstrip = a.value("rstrip", false);
    t.special = a.value("special", false);
    t.normalized = a.value("normalized", !t.special);
    if (t.id < 0 || t.id > (1 << 24)) fail("tokenizer.json: added token \"{}\" has an invalid id {}", t.content, t.id);
    if (utf8::find_invalid(t.content) != std::string::npos)
      fail("tokenizer.json: added token {} is not valid UTF-8", t.id);
    max_id = std::max(max_id, t.id);
    added.push_back(t);
  }

  impl->id_token.assign(max_id + 1, "");
  impl->id_bytes.assign(max_id + 1, "");
  impl->id_flags.assign(max_id + 1, 0);
  auto set_token = [&](int32_t id, const std::string& s) {
    impl->id_token[id] = s;
    impl->id_flags[id] |= 1;
    // The ByteLevel decoder maps a token through the byte table when every character is in it,
    // and passes its UTF-8 through otherwise.
    if (!bytelevel::decode(s, impl->id_bytes[id])) impl->id_bytes[id] = s;
  };
  for (const auto& [id, s] : all_tokens) {
    set_token(id, s);
    impl->token_id[s] = id;
  }
  std::vector<AddedToken> raw, norm;
  for (auto& t : added) {
    set_token(t.id, t.content);
    impl->token_id[t.content] = t.id;
    if (t.special) impl->id_flags[t.id] |= 2;
    if (t.normalized) {
      // The reference matches normalized tokens by their normalized content.
      t.content = impl->normalize_text(t.content);
      norm.push_back(t);
    } else {
      raw.push_back(t);
    }
  }
  impl->raw_added = AddedTokenMatcher(std::move(raw));
  impl->normalized_added = AddedTokenMatcher(std::move(norm));

  // Special-token policy and the chat template.
  auto lookup = [&](const std::string& s) -> int32_t {
    if (s.empty()) return -1;
    auto it = impl->token_id.find(s);
    if (it == impl->token_id.end()) fail("tokenizer_config.json names token \"{}\", which is not in the vocabulary", s);
    return it->second;
  };
  impl->bos = lookup(config_token(cfg, "bos_token"));
  impl->eos = lookup(config_token(cfg, "eos_token"));
  impl->pad = lookup(config_token(cfg, "pad_token"));
  if (cfg.contains("add_bos_token") || cfg.contains("add_eos_token")) {
    impl->add_bos = cfg.value("add_bos_token", false);
    if (impl->add_bos) {
      if (impl->bos < 0) fail("tokenizer_config.json: add_bos_token is true but no bos_token is given");
      impl->prefix.push_back(impl->bos);
    }
    if (cfg.value("add_eos_token", false)) {
      if (impl->eos < 0) fail("tokenizer_config.json: add_eos_token is true but no eos_token is given");
      impl->suffix.push_back(impl->eos);
    }
  } else {
    read_post_processor(tj.value("post_processor", json()), impl->token_id, impl->prefix, impl->suffix);
    impl->add_bos = !impl->prefix.empty() && impl->prefix.front() == impl->bos;
  }
  for (int32_t id : impl->prefix)
    if (id < 0 || id > max_id) fail("tokenizer.json: post_processor adds unknown id {}", id);
  for (int32_t id : impl->suffix)
    if (id < 0 || id > max_id) fail("tokenizer.json: post_processor adds unknown id {}", id);
  if (cfg.contains("chat_template")) {
    const json& ct = cfg["chat_template"];
    if (ct.is_string()) {
      impl->chat_template = ct.get<std::string>();
    } else if (ct.is_array()) {
      // The named-template form: take "default".
      for (const auto& e : ct)
        if (e.value("name", std::string()) == "default") impl->chat_template = e.value("template", std::string());
    }
  }
  return impl;
}

void Tokenizer::Impl::encode_plain(std::string_view text, std::vector<int32_t>& ids) const {
  std::string buf;
  Ranges words;
  pretok.split(text, buf, words);
  for (auto [b, e] : words) bpe->encode_word(std::string_view(buf).substr(b, e - b), ids);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const Impl& im = *impl_;
  size_t bad = utf8::find_invalid(text);
  if (bad != std::string_view::npos)
    fail("tokenizer: input text is not valid UTF-8 (byte 0x{:02X} at offset {})", static_cast<unsigned char>(text[bad]),
         bad);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens) ids.insert(ids.end(), im.prefix.begin(), im.prefix.end());
  // 1. Non-normalized added tokens on the raw text; 2. the normalizer on what lies between them;
  // 3. normalized added tokens on that; 4. pre-tokenizer and BPE on the rest.
  std::vector<TextSpan> first, second;
  if (im.raw_added.empty())
    first.push_back({0, text.size(), -1});
  else
    im.raw_added.split(text, 0, text.size(), first);
  for (const auto& s : first) {
    if (s.id >= 0) {
      ids.push_back(s.id);
      continue;
    }
    std::string normalized;
    std::string_view piece = text.substr(s.begin, s.end - s.begin);
    if (!im.normalizers.empty()) {
      normalized = im.normalize_text(piece);
      piece = normalized;
    }
    if (im.normalized_added.empty()) {
      im.encode_plain(piece, ids);
      continue;
    }
    second.clear();
    im.normalized_added.split(piece, 0, piece.size(), second);
    for (const auto& t : second) {
      if (t.id >= 0)
        ids.push_back(t.id);
      else
        im.encode_plain(piece.substr(t.begin, t.end - t.begin), ids);
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), im.suffix.begin(), im.suffix.end());
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const Impl& im = *impl_;
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= im.id_flags.size()) continue;
    uint8_t f = im.id_flags[id];
    if (!(f & 1) || (skip_special_tokens && (f & 2))) continue;
    bytes += im.id_bytes[id];
  }
  return utf8::lossy(bytes);
}

std::string Tokenizer::token_bytes(int32_t id) const { return has_token(id) ? impl_->id_bytes[id] : std::string(); }
std::string Tokenizer::id_to_token(int32_t id) const { return has_token(id) ? impl_->id_token[id] : std::string(); }
std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->token_id.find(std::string(token));
  if (it == impl_->token_id.end()) return std::nullopt;
  return it->second;
}
bool Tokenizer::has_token(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->id_flags.size() && (impl_->id_flags[id] & 1);
}
bool Tokenizer::is_special(int32_t id) const { return has_token(id) && (impl_->id_flags[id] & 2); }
int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
int32_t Tokenizer::pad_id() const { return impl_->pad; }
std::string Tokenizer::bos_token() const { return id_to_token(impl_->bos); }
std::string Tokenizer::eos_token() const { return id_to_token(impl_->eos); }
bool Tokenizer::add_bos_token() const { return impl_->add_bos; }
int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_flags.size()); }
const std::string& Tokenizer::chat_template() const { return impl_->chat_template; }

}  // namespace dsv2
