#pragma once
// Tokenizer: reads tokenizer.json (+ tokenizer_config.json) exactly as Hugging Face's tokenizers
// library does for byte-level BPE families (DeepSeek, Llama 3, GPT-4o, Qwen style):
//   text -> added tokens matched first (non-normalized ones on the raw text, normalized ones after
//   the normalizer: none, NFC, NFKC, NFD, NFKD or a Sequence of them) -> pre-tokenizer
//   (Split/Digits chain, ByteLevel) -> BPE per word -> ids.
// Anything the file asks for that is not implemented exactly is refused at load with dsv2::Error.
// Instances are cheap to copy (shared immutable state) and safe to use from several threads.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dsv2 {

class Tokenizer {
 public:
  // tokenizer.json is required; tokenizer_config.json is read when present.
  static Tokenizer from_folder(const std::filesystem::path& dir);
  static Tokenizer from_json(const std::string& tokenizer_json, const std::string& config_json = "");

  // Text must be valid UTF-8 (dsv2::Error otherwise, naming the byte offset). With
  // add_special_tokens, BOS/EOS are added as tokenizer_config.json's add_bos_token/add_eos_token
  // say, or, without those keys, as tokenizer.json's TemplateProcessing post-processor says.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Concatenates the tokens' bytes (special tokens dropped on request) and replaces invalid UTF-8
  // the way the reference decoder does (one U+FFFD per maximal invalid subsequence). Ids with no
  // token (padding rows past the vocabulary) decode to nothing.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // Raw bytes a token decodes to ("" for an id with no token).
  std::string token_bytes(int32_t id) const;
  // The token's string as tokenizer.json spells it ("Ġthe", "<｜end▁of▁sentence｜>"); "" if none.
  std::string id_to_token(int32_t id) const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  bool has_token(int32_t id) const;
  bool is_special(int32_t id) const;  // an added token marked special

  int32_t bos_id() const;  // -1 if none
  int32_t eos_id() const;  // -1 if none
  int32_t pad_id() const;  // -1 if none
  std::string bos_token() const;
  std::string eos_token() const;
  bool add_bos_token() const;
  int32_t vocab_size() const;  // max id + 1
  const std::string& chat_template() const;  // "" if none

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  static std::shared_ptr<const Impl> build_impl(const std::string& tokenizer_json, const std::string& config_json);
  std::shared_ptr<const Impl> impl_;
};

}  // namespace dsv2
