#include "server/openai_request.h"

#include <cmath>

#include <fmt/format.h>

namespace dsv2::server {

using nlohmann::json;

std::string error_body(const ApiError& e) {
  json j = {{"error",
             {{"message", e.what()},
              {"type", e.type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& msg) { throw ApiError(400, msg, param); }

std::string type_name(const json& v) {
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  if (v.is_object()) return "an object";
  return "null";
}

// The field, or nullptr when absent or null (OpenAI treats an explicit null as "not given").
const json* field(const json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

double number(const json& v, const std::string& name, double lo, double hi) {
  if (!v.is_number()) bad(name, fmt::format("'{}' must be a number, got {}", name, type_name(v)));
  double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    bad(name, fmt::format("'{}' must be between {} and {}, got {}", name, lo, hi, v.dump()));
  return x;
}

int64_t integer(const json& v, const std::string& name, int64_t lo, int64_t hi) {
  bool ok = v.is_number_integer() || (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() &&
                                      std::fabs(v.get<double>()) < 9e15);
  if (!ok) bad(name, fmt::format("'{}' must be an integer, got {}", name, v.is_number() ? v.dump() : type_name(v)));
  int64_t x = v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX) ? INT64_MAX
              : v.is_number_integer()                                            ? v.get<int64_t>()
                                                                                 : int64_t(v.get<double>());
  if (x < lo || x > hi) bad(name, fmt::format("'{}' must be between {} and {}, got {}", name, lo, hi, x));
  return x;
}

bool boolean(const json& v, const std::string& name) {
  if (!v.is_boolean()) bad(name, fmt::format("'{}' must be a boolean, got {}", name, type_name(v)));
  return v.get<bool>();
}

std::string content_text(const json& content, const std::string& name) {
  if (content.is_null()) return "";
  if (content.is_string()) return content.get<std::string>();
  if (content.is_array()) {
    std::string out;
    for (size_t i = 0; i < content.size(); ++i) {
      const json& part = content[i];
      std::string pn = fmt::format("{}[{}]", name, i);
      if (!part.is_object()) bad(pn, fmt::format("'{}' must be an object, got {}", pn, type_name(part)));
      auto t = part.find("type");
      if (t == part.end() || !t->is_string()) bad(pn + ".type", fmt::format("'{}.type' must be a string", pn));
      if (*t != "text") bad(pn + ".type", fmt::format("content parts of type '{}' are not supported (only 'text')",
                                                      t->get<std::string>()));
      auto tx = part.find("text");
      if (tx == part.end() || !tx->is_string()) bad(pn + ".text", fmt::format("'{}.text' must be a string", pn));
      out += tx->get<std::string>();
    }
    return out;
  }
  bad(name, fmt::format("'{}' must be a string or an array of content parts, got {}", name, type_name(content)));
}

std::vector<int32_t> id_list(const json& v, const std::string& name) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < v.size(); ++i) ids.push_back(int32_t(integer(v[i], fmt::format("{}[{}]", name, i), 0, INT32_MAX)));
  return ids;
}

}  // namespace

CompletionRequest parse_completion_request(const std::string& body_text, bool chat, const SamplingParams& defaults) {
  json body;
  try {
    body = json::parse(body_text);
  } catch (const json::parse_error& e) {
    throw ApiError(400, fmt::format("the request body is not valid JSON: {}", e.what()), "", "invalid_json");
  }
  if (!body.is_object()) throw ApiError(400, fmt::format("the request body must be a JSON object, got {}", type_name(body)));
  CompletionRequest r;
  r.chat = chat;
  r.sampling = defaults;
  if (auto* v = field(body, "model")) {
    if (!v->is_string()) bad("model", fmt::format("'model' must be a string, got {}", type_name(*v)));
    r.model = v->get<std::string>();
  }
  if (chat) {
    const json* m = field(body, "messages");
    if (!m) bad("messages", "'messages' is required");
    if (!m->is_array()) bad("messages", fmt::format("'messages' must be an array, got {}", type_name(*m)));
    if (m->empty()) bad("messages", "'messages' must contain at least one message");
    r.messages = json::array();
    for (size_t i = 0; i < m->size(); ++i) {
      const json& msg = (*m)[i];
      std::string name = fmt::format("messages[{}]", i);
      if (!msg.is_object()) bad(name, fmt::format("'{}' must be an object, got {}", name, type_name(msg)));
      auto role = msg.find("role");
      if (role == msg.end() || !role->is_string()) bad(name + ".role", fmt::format("'{}.role' must be a string", name));
      std::string rs = role->get<std::string>();
      if (rs == "developer") rs = "system";
      if (rs != "system" && rs != "user" && rs != "assistant" && rs != "tool")
        bad(name + ".role", fmt::format("'{}.role' must be one of system, developer, user, assistant, tool; got '{}'",
                                        name, rs));
      auto content = msg.find("content");
      if ((content == msg.end() || content->is_null()) && rs != "assistant")
        bad(name + ".content", fmt::format("'{}.content' is required", name));
      std::string text = content == msg.end() ? "" : content_text(*content, name + ".content");
      r.messages.push_back({{"role", rs}, {"content", text}});
    }
  } else {
    const json* p = field(body, "prompt");
    if (!p) bad("prompt", "'prompt' is required");
    if (p->is_string()) {
      r.prompt_texts.push_back(p->get<std::string>());
    } else if (p->is_array() && !p->empty()) {
      if ((*p)[0].is_string()) {
        for (size_t i = 0; i < p->size(); ++i) {
          if (!(*p)[i].is_string()) bad("prompt", fmt::format("'prompt[{}]' must be a string", i));
          r.prompt_texts.push_back((*p)[i].get<std::string>());
        }
      } else if ((*p)[0].is_array()) {
        for (size_t i = 0; i < p->size(); ++i) {
          if (!(*p)[i].is_array()) bad("prompt", fmt::format("'prompt[{}]' must be an array of token ids", i));
          r.prompt_ids.push_back(id_list((*p)[i], fmt::format("prompt[{}]", i)));
        }
      } else {
        r.prompt_ids.push_back(id_list(*p, "prompt"));
      }
    } else {
      bad("prompt", fmt::format("'prompt' must be a string, an array of strings or an array of token ids, got {}",
                                p->is_array() ? "an empty array" : type_name(*p)));
    }
    if (r.prompt_texts.size() + r.prompt_ids.size() > 64) bad("prompt", "at most 64 prompts per request");
  }
  if (auto* v = field(body, "n")) r.n = int(integer(*v, "n", 1, 128));
  if (auto* v = field(body, "max_tokens")) r.max_tokens = integer(*v, "max_tokens", 1, INT32_MAX);
  if (auto* v = field(body, "max_completion_tokens")) r.max_tokens = integer(*v, "max_completion_tokens", 1, INT32_MAX);
  if (auto* v = field(body, "temperature")) r.sampling.temperature = float(number(*v, "temperature", 0.0, 2.0));
  if (auto* v = field(body, "top_p")) {
    r.sampling.top_p = float(number(*v, "top_p", 0.0, 1.0));
    if (r.sampling.top_p == 0.f) {  // the smallest nucleus: the most likely token
      r.sampling.top_p = 1.f;
      r.sampling.top_k = 1;
    }
  }
  if (auto* v = field(body, "top_k")) {
    int64_t k = integer(*v, "top_k", -1, INT32_MAX);
    r.sampling.top_k = k < 0 ? 0 : int(k);
  }
  if (auto* v = field(body, "min_p")) r.sampling.min_p = float(number(*v, "min_p", 0.0, 1.0));
  if (auto* v = field(body, "repetition_penalty"))
    r.sampling.repetition_penalty = float(number(*v, "repetition_penalty", 1e-3, 100.0));
  if (auto* v = field(body, "presence_penalty")) r.sampling.presence_penalty = float(number(*v, "presence_penalty", -2.0, 2.0));
  if (auto* v = field(body, "frequency_penalty"))
    r.sampling.frequency_penalty = float(number(*v, "frequency_penalty", -2.0, 2.0));
  if (auto* v = field(body, "seed")) {
    r.sampling.seed = uint64_t(integer(*v, "seed", INT64_MIN, INT64_MAX));
    r.sampling.has_seed = true;
  }
  if (auto* v = field(body, "stop")) {
    if (v->is_string()) {
      r.stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      if (v->size() > 16) bad("stop", fmt::format("'stop' may hold at most 16 strings, got {}", v->size()));
      for (size_t i = 0; i < v->size(); ++i) {
        if (!(*v)[i].is_string()) bad("stop", fmt::format("'stop[{}]' must be a string, got {}", i, type_name((*v)[i])));
        r.stop.push_back((*v)[i].get<std::string>());
      }
    } else {
      bad("stop", fmt::format("'stop' must be a string or an array of strings, got {}", type_name(*v)));
    }
    std::erase(r.stop, std::string());
  }
  if (auto* v = field(body, "stop_token_ids")) {
    if (!v->is_array()) bad("stop_token_ids", "'stop_token_ids' must be an array of token ids");
    r.sampling.stop_token_ids = id_list(*v, "stop_token_ids");
  }
  if (auto* v = field(body, "ignore_eos")) r.sampling.ignore_eos = boolean(*v, "ignore_eos");
  if (auto* v = field(body, "stream")) r.stream = boolean(*v, "stream");
  if (auto* v = field(body, "stream_options")) {
    if (!v->is_object()) bad("stream_options", fmt::format("'stream_options' must be an object, got {}", type_name(*v)));
    if (!r.stream) bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    if (auto* u = field(*v, "include_usage")) r.include_usage = boolean(*u, "stream_options.include_usage");
  }
  if (chat) {
    if (auto* v = field(body, "logprobs")) r.logprobs = boolean(*v, "logprobs");
    if (auto* v = field(body, "top_logprobs")) {
      r.top_logprobs = int(integer(*v, "top_logprobs", 0, 20));
      if (!r.logprobs) bad("top_logprobs", "'top_logprobs' requires 'logprobs' to be true");
    }
  } else {
    if (auto* v = field(body, "logprobs")) {
      r.top_logprobs = int(integer(*v, "logprobs", 0, 20));
      r.logprobs = true;
    }
    if (auto* v = field(body, "echo")) r.echo = boolean(*v, "echo");
  }
  r.sampling.logprobs = r.logprobs;
  r.sampling.top_logprobs = r.top_logprobs;
  try {
    r.sampling.validate();
  } catch (const std::exception& e) {
    throw ApiError(400, e.what());
  }
  return r;
}

}  // namespace dsv2::server
