#include "tokenizer/tokenizer_added.h"

#include <algorithm>

#include "tokenizer/pretok.h"
#include "tokenizer/unicode.h"

namespace dsv2 {

namespace {

// A "word character" in the reference's single_word rule: Unicode \w.
bool is_word_char(uint32_t cp) {
  static const Regex word("^\\w$");
  std::string s;
  utf8::append(s, cp);
  size_t b, e;
  return word.find(s, 0, b, e);
}

uint32_t last_char(std::string_view s) {
  size_t i = s.size();
  while (i > 0 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) --i;
  if (i > 0) --i;
  size_t j = i;
  return utf8::next(s, j);
}

// Byte offset where the run of whitespace that ends `s` begins (s.size() when there is none).
size_t trailing_space_start(std::string_view s) {
  size_t i = s.size();
  while (i > 0) {
    size_t k = i - 1;
    while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
    size_t j = k;
    if (!utf8::is_whitespace(utf8::next(s, j))) break;
    i = k;
  }
  return i;
}

// Length in bytes of the run of whitespace that starts `s`.
size_t leading_space_len(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    if (!utf8::is_whitespace(utf8::next(s, j))) break;
    i = j;
  }
  return i;
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  trie_.emplace_back();
  for (size_t t = 0; t < tokens_.size(); ++t) {
    const std::string& c = tokens_[t].content;
    if (c.empty()) continue;
    int32_t node = 0;
    for (unsigned char b : c) {
      int32_t nx = child(node, b);
      if (nx < 0) {
        nx = static_cast<int32_t>(trie_.size());
        trie_.emplace_back();
        auto& ch = trie_[node].children;
        ch.insert(std::lower_bound(ch.begin(), ch.end(), std::make_pair(b, int32_t{-1})), {b, nx});
      }
      node = nx;
    }
    // A content listed twice: the later entry wins, as in the reference's map.
    trie_[node].token = static_cast<int32_t>(t);
  }
}

int32_t AddedTokenMatcher::child(int32_t node, unsigned char b) const {
  const auto& ch = trie_[node].children;
  auto it = std::lower_bound(ch.begin(), ch.end(), std::make_pair(b, int32_t{-1}));
  return (it != ch.end() && it->first == b) ? it->second : -1;
}

void AddedTokenMatcher::split(std::string_view text, size_t begin, size_t end, std::vector<TextSpan>& out) const {
  std::string_view s = text.substr(begin, end - begin);
  size_t start_offset = 0;
  size_t i = 0;
  while (i < s.size()) {
    // Longest token starting at i.
    int32_t node = 0, best = -1;
    size_t best_len = 0;
    for (size_t k = i; k < s.size(); ++k) {
      node = child(node, static_cast<unsigned char>(s[k]));
      if (node < 0) break;
      if (trie_[node].token >= 0) {
        best = trie_[node].token;
        best_len = k + 1 - i;
      }
    }
    if (best < 0) {
      ++i;
      continue;
    }
    size_t mstart = i, mstop = i + best_len;
    i = mstop;  // the search resumes after this match even when the rules below discard it
    const AddedToken& tok = tokens_[best];
    if (tok.single_word) {
      bool start_ok = mstart == 0 || !is_word_char(last_char(s.substr(0, mstart)));
      bool stop_ok = mstop == s.size() || [&] {
        size_t j = mstop;
        return !is_word_char(utf8::next(s, j));
      }();
      if (!start_ok || !stop_ok) continue;
    }
    if (tok.lstrip) mstart = std::max(trailing_space_start(s.substr(0, mstart)), start_offset);
    if (tok.rstrip) mstop += leading_space_len(s.substr(mstop));
    if (start_offset < mstart) out.push_back({begin + start_offset, begin + mstart, -1});
    out.push_back({begin + mstart, begin + mstop, tok.id});
    start_offset = mstop;
  }
  if (start_offset < s.size()) out.push_back({begin + start_offset, begin + s.size(), -1});
}

}  // namespace dsv2
