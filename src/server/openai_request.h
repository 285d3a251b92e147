#pragma once
// OpenAI request bodies (chat completions and completions) parsed and validated into native
// types. Unknown fields are ignored; a field of the wrong type or out of range is an ApiError 400
// naming the parameter. JSON does not go past this layer.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sampling/sampling_params.h"
#include "server/api_error.h"

namespace dsv2::server {

struct CompletionRequest {
  bool chat = false;
  std::string model;
  nlohmann::json messages;                          // chat: validated list of {role, content:string}
  std::vector<std::string> prompt_texts;            // completions: text prompts ...
  std::vector<std::vector<int32_t>> prompt_ids;     // ... or token-id prompts
  int n = 1;
  std::optional<int64_t> max_tokens;                // max_tokens / max_completion_tokens
  std::vector<std::string> stop;
  bool stream = false, include_usage = false;
  SamplingParams sampling;                          // defaults from generation_config, then the body
  bool logprobs = false;
  int top_logprobs = 0;                             // chat top_logprobs / completions logprobs=N
  bool echo = false;                                // completions: prepend the prompt text
};

// `defaults` are the checkpoint's sampling defaults (generation_config.json).
CompletionRequest parse_completion_request(const std::string& body, bool chat, const SamplingParams& defaults);

}  // namespace dsv2::server
