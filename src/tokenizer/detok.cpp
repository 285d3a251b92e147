#include "tokenizer/detok.h"

#include "tokenizer/unicode.h"

namespace dsv2 {

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tok, bool skip_special)
    : tok_(tok), skip_special_(skip_special) {}

std::string IncrementalDetokenizer::push(int32_t id) {
  if (!tok_.has_token(id) || (skip_special_ && tok_.is_special(id))) return "";
  pending_ += tok_.token_bytes(id);
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    size_t len;
    utf8::Scan r = utf8::scan(pending_, i, len);
    // A sequence cut off by the end of what we have so far may still complete: keep it.
    if (r == utf8::Scan::incomplete) break;
    if (r == utf8::Scan::valid)
      out.append(pending_, i, len);
    else
      out += "\xEF\xBF\xBD";
    i += len;
  }
  pending_.erase(0, i);
  return out;
}

std::string IncrementalDetokenizer::flush() {
  std::string out = utf8::lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace dsv2
