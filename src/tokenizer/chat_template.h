#pragma once
// Chat templates: the checkpoint's Jinja chat_template (tokenizer_config.json) rendered with a
// conversation, as transformers' apply_chat_template(tokenize=False) renders it.
//
// The template is parsed once (unsupported Jinja constructs are a dsv2::Error at parse time,
// naming the construct and line) and can be rendered concurrently from several threads.
//
// Reference behaviour is Python's jinja2 as transformers configures it (see tokenizer/jinja.h).
// Where @huggingface/jinja differs from it (it prints booleans as true/false and None as an empty
// string, uses JavaScript's % on negatives, ignores strip()'s argument, has no str < str), dsv2
// follows jinja2; the committed conversations (tests/data/chat) avoid those corners, so both
// engines produce identical text for them and dsv2 is checked against each.
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace dsv2 {

namespace jinja {
struct Program;
}

struct ChatMessage {
  std::string role, content;
};

class ChatTemplate {
 public:
  static ChatTemplate parse(const std::string& source);
  // Reads "chat_template" (a string, or a list of {name, template} where "default" is used) and the
  // bos/eos token strings (plain strings or AddedToken objects) from a tokenizer_config.json.
  static ChatTemplate from_tokenizer_config(const std::filesystem::path& path);

  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                     const std::string& bos_token, const std::string& eos_token) const;
  // The full context: messages as JSON objects (so assistant turns may carry tool_calls and a null
  // content) and the tools list (null when absent, as transformers passes it). Pass ordered_json
  // to keep object keys in request order, as Python does (tojson of a tool schema shows them);
  // nlohmann::json has already sorted them.
  std::string render_json(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                          const std::string& bos_token, const std::string& eos_token,
                          const nlohmann::ordered_json& tools) const;
  std::string render_json(const nlohmann::json& messages, bool add_generation_prompt, const std::string& bos_token,
                          const std::string& eos_token, const nlohmann::json& tools) const;

  const std::string& source() const { return source_; }
  // Token strings from tokenizer_config.json (empty when built with parse()).
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }

 private:
  template <typename Json>
  std::string render_any(const Json& messages, bool add_generation_prompt, const std::string& bos_token,
                         const std::string& eos_token, const Json& tools) const;

  std::string source_, bos_token_, eos_token_;
  std::shared_ptr<const jinja::Program> program_;
};

}  // namespace dsv2
