#pragma once
// One client request from the engine's events to OpenAI's output: per choice it detokenizes
// incrementally (UTF-8 safe), applies stop strings (held back across tokens, never sent), collects
// logprobs, and frames either Server-Sent-Event chunks exactly as OpenAI streams them (role chunk,
// content deltas, a finish chunk, the usage chunk when asked, `data: [DONE]`) or the final
// response object. Runs on the HTTP thread; knows nothing of sockets.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/engine.h"
#include "sampling/stop_matcher.h"
#include "tokenizer/detok.h"
#include "tokenizer/tokenizer.h"

namespace dsv2::server {

struct SessionSetup {
  bool chat = true;
  std::string id, model;
  int64_t created = 0;
  bool stream = false, include_usage = false;
  bool logprobs = false;
  int top_logprobs = 0;
  std::vector<std::string> stop;
  int n = 1;                             // choices per prompt
  std::vector<std::string> echo_texts;   // completions with echo: one per prompt (prepended)
  int n_prompts = 1;
  int64_t prompt_tokens = 0;             // all prompts together
};

class CompletionSession {
 public:
  CompletionSession(const Tokenizer& tok, SessionSetup setup);

  // SSE frames to send before any token (the chat role chunks); "" for non-streaming requests.
  std::string stream_start();
  // Consumes engine events. Appends SSE frames to `frames` (streaming) and the choices whose stop
  // string matched (the engine should stop them) to `stop_choices`.
  void on_events(std::span<const EngineEvent> events, std::string& frames, std::vector<int32_t>& stop_choices);
  bool done() const { return finished_ == int(choices_.size()); }
  bool failed() const { return !error_.empty(); }
  // Streaming: the usage chunk (when asked) and `data: [DONE]`.
  std::string stream_end() const;
  // Non-streaming: the response object (or an error object when the engine failed).
  std::string response_body() const;
  int64_t completion_tokens() const;
  int64_t prompt_tokens() const { return s_.prompt_tokens; }

 private:
  struct Choice {
    IncrementalDetokenizer detok;
    StopMatcher stop;
    std::string text;
    std::string finish_reason;  // "" while running
    int64_t tokens = 0;
    nlohmann::json logprobs;    // chat: list of entries; completions: the four parallel lists
    int64_t text_offset = 0;
  };
  nlohmann::json chunk_base() const;
  std::string frame(const nlohmann::json& j) const;
  std::string finish_frame(int index) const;
  std::string delta_frame(int index, const std::string& text, const nlohmann::json& logprobs) const;
  nlohmann::json logprob_entry(Choice& c, const SampleResult& t, const std::string& emitted);
  void close_choice(int index, const std::string& reason, std::string& frames, std::string tail_text);

  const Tokenizer& tok_;
  SessionSetup s_;
  std::vector<Choice> choices_;
  int finished_ = 0;
  std::string error_;
};

// JSON text that never throws on invalid UTF-8 (replaced by U+FFFD).
std::string dump_json(const nlohmann::json& j);

}  // namespace dsv2::server
