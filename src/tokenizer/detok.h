#pragma once
// Streaming detokenizer: turns generated ids into text pieces that are always valid UTF-8. Bytes
// of a character split across tokens are held back until it is complete; invalid bytes become
// U+FFFD exactly as Tokenizer::decode does, so the pieces joined equal decode(all ids).
#include <cstdint>
#include <string>

#include "tokenizer/tokenizer.h"

namespace dsv2 {

class IncrementalDetokenizer {
 public:
  // Keeps its own (cheap, shared) copy of the tokenizer.
  explicit IncrementalDetokenizer(const Tokenizer& tok, bool skip_special);
  // Text that became complete with this token ("" while a character is still incomplete).
  std::string push(int32_t id);
  // Everything still held back (an unfinished character becomes U+FFFD); call at the end.
  std::string flush();
  // Bytes held back so far (at most 3).
  size_t pending() const { return pending_.size(); }

 private:
  Tokenizer tok_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace dsv2
