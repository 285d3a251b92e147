#pragma once
// Added tokens (special or not) are found in the text before pre-tokenization, leftmost-longest
// and non-overlapping, with their single_word / lstrip / rstrip rules, as Hugging Face's
// AddedVocabulary does.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dsv2 {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

// A piece of text: either an added token (id >= 0) or plain text for the model (id == -1).
struct TextSpan {
  size_t begin, end;
  int32_t id;
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(std::vector<AddedToken> tokens);
  bool empty() const { return tokens_.empty(); }
  // Splits text[begin, end) and appends the spans (in order; plain spans may be empty-free).
  void split(std::string_view text, size_t begin, size_t end, std::vector<TextSpan>& out) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;  // sorted by byte
    int32_t token = -1;                                       // index into tokens_
  };
  int32_t child(int32_t node, unsigned char b) const;
  std::vector<AddedToken> tokens_;
  std::vector<Node> trie_;
};

}  // namespace dsv2
