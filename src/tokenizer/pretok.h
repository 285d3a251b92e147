#pragma once
// Pre-tokenization as Hugging Face's tokenizers library does it: a text is cut into pieces by a
// chain of splitters (Split with a regex or a literal and one of five behaviors, Digits), then the
// final ByteLevel step (optional prefix space, optional GPT-2 regex). Regexes run on PCRE2 with
// JIT in UTF + UCP mode, which follows Oniguruma (the engine the library uses) on the constructs
// these tokenizers use: Unicode classes, lookahead, possessive-free backtracking, ^/$ at lines.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace dsv2 {

// A compiled PCRE2 pattern (JIT when available). Thread-safe: match state is per thread.
class Regex {
 public:
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Calls on_match(begin, end) for each non-overlapping match in `subject` (valid UTF-8), left to
  // right; after an empty match the search resumes one character further.
  template <typename F>
  void for_each_match(std::string_view subject, F&& on_match) const {
    size_t pos = 0;
    size_t b, e;
    while (pos <= subject.size() && find(subject, pos, b, e)) {
      on_match(b, e);
      if (e > b) {
        pos = e;
      } else {
        if (e >= subject.size()) break;
        pos = e + 1;
        while (pos < subject.size() && (static_cast<unsigned char>(subject[pos]) & 0xC0) == 0x80) ++pos;
      }
    }
  }
  // Finds the first match at or after `start`; false when there is none.
  bool find(std::string_view subject, size_t start, size_t& begin, size_t& end) const;
  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

// Byte ranges of `text` (the pieces pre-tokenization produced so far).
using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;

class PreTokenizer {
 public:
  // Builds from tokenizer.json's "pre_tokenizer" value. Throws dsv2::Error naming the type or
  // option it does not support.
  static PreTokenizer from_json(const nlohmann::json& j);
  PreTokenizer();
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  // True when the chain ends with ByteLevel (the model then sees byte-level characters).
  bool byte_level() const { return byte_level_; }

  // Cuts `text` (valid UTF-8) into words. Each word's bytes are appended to `buf`, and its range
  // in `buf` to `words` (a ByteLevel prefix space, when added, is part of the word).
  void split(std::string_view text, std::string& buf, Ranges& words) const;

 private:
  struct Step;
  void add_json_step(const nlohmann::json& j, int depth);
  std::vector<std::unique_ptr<Step>> steps_;
  bool byte_level_ = false;
  bool add_prefix_space_ = false;
  std::unique_ptr<Regex> byte_level_regex_;  // set when ByteLevel has use_regex
};

}  // namespace dsv2
