#pragma once
// Stop strings over streamed text. Text arrives in pieces (one per token, already UTF-8 safe);
// a stop string may span several pieces, so the matcher holds back the longest tail of the text
// that could still be the start of a stop string and releases it once it cannot. The stop string
// itself and anything after it are never emitted (OpenAI semantics).
#include <string>
#include <vector>

namespace dsv2 {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);

  struct Result {
    std::string emit;     // text that is final and can be sent to the client now
    bool stopped = false; // a stop string matched; later pushes emit nothing
    std::string matched;  // which stop string (when stopped)
  };

  Result push(const std::string& piece);
  // End of generation without a stop string: releases the held-back tail.
  std::string flush();

  bool stopped() const { return stopped_; }
  // Bytes currently held back.
  size_t pending() const { return pending_.size(); }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace dsv2
