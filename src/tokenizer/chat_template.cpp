#include "tokenizer/chat_template.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "tokenizer/jinja.h"

namespace dsv2 {

ChatTemplate ChatTemplate::parse(const std::string& source) {
  ChatTemplate t;
  t.source_ = source;
  t.program_ = std::make_shared<const jinja::Program>(jinja::parse(source));
  return t;
}

static std::string token_string(const nlohmann::json& cfg, const char* key, const std::filesystem::path& path) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  fail("{}: '{}' must be a string or an object with a string 'content'", path.string(), key);
}

ChatTemplate ChatTemplate::from_tokenizer_config(const std::filesystem::path& path) {
  std::ifstream f(path);
  if (!f) fail("cannot open {}", path.string());
  nlohmann::json cfg;
  try {
    cfg = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: invalid JSON: {}", path.string(), e.what());
  }
  auto it = cfg.find("chat_template");
  if (it == cfg.end() || it->is_null()) fail("{}: no 'chat_template'", path.string());
  std::string source;
  if (it->is_string()) {
    source = it->get<std::string>();
  } else if (it->is_array()) {
    for (const auto& e : *it) {
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string()) {
        source = e["template"].get<std::string>();
      }
    }
    if (source.empty()) fail("{}: 'chat_template' list has no template named 'default'", path.string());
  } else {
    fail("{}: 'chat_template' must be a string or a list of named templates", path.string());
  }
  ChatTemplate t;
  try {
    t = parse(source);
  } catch (const Error& e) {
    fail("{}: {}", path.string(), e.what());
  }
  t.bos_token_ = token_string(cfg, "bos_token", path);
  t.eos_token_ = token_string(cfg, "eos_token", path);
  return t;
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                 const std::string& bos_token, const std::string& eos_token) const {
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const auto& m : messages) list.push_back({{"role", m.role}, {"content", m.content}});
  return render_any(list, add_generation_prompt, bos_token, eos_token, nlohmann::ordered_json(nullptr));
}

template <typename Json>
std::string ChatTemplate::render_any(const Json& messages, bool add_generation_prompt, const std::string& bos_token,
                                     const std::string& eos_token, const Json& tools) const {
  DSV2_CHECK(program_ != nullptr, "render() on a ChatTemplate that was never parsed");
  if (!messages.is_array()) fail("chat template: messages must be a JSON array");
  std::map<std::string, jinja::Value> globals;
  globals["messages"] = jinja::Value::from_json(messages);
  globals["add_generation_prompt"] = jinja::Value::boolean(add_generation_prompt);
  globals["bos_token"] = jinja::Value::string(bos_token);
  globals["eos_token"] = jinja::Value::string(eos_token);
  globals["tools"] = jinja::Value::from_json(tools);
  return jinja::render(*program_, globals);
}

std::string ChatTemplate::render_json(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                      const std::string& bos_token, const std::string& eos_token,
                                      const nlohmann::ordered_json& tools) const {
  return render_any(messages, add_generation_prompt, bos_token, eos_token, tools);
}

std::string ChatTemplate::render_json(const nlohmann::json& messages, bool add_generation_prompt,
                                      const std::string& bos_token, const std::string& eos_token,
                                      const nlohmann::json& tools) const {
  return render_any(messages, add_generation_prompt, bos_token, eos_token, tools);
}

}  // namespace dsv2
