#include "sampling/sampling_params.h"

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace dsv2 {

void SamplingParams::validate() const {
  if (!(temperature >= 0.f) || !std::isfinite(temperature)) fail("temperature must be >= 0, got {}", temperature);
  if (!(top_p > 0.f && top_p <= 1.f)) fail("top_p must be in (0, 1], got {}", top_p);
  if (top_k < 0) fail("top_k must be >= 0 (0 disables it), got {}", top_k);
  if (!(min_p >= 0.f && min_p <= 1.f)) fail("min_p must be in [0, 1], got {}", min_p);
  if (!(repetition_penalty > 0.f) || !std::isfinite(repetition_penalty)) {
    fail("repetition_penalty must be > 0, got {}", repetition_penalty);
  }
  if (!(presence_penalty >= -2.f && presence_penalty <= 2.f)) {
    fail("presence_penalty must be in [-2, 2], got {}", presence_penalty);
  }
  if (!(frequency_penalty >= -2.f && frequency_penalty <= 2.f)) {
    fail("frequency_penalty must be in [-2, 2], got {}", frequency_penalty);
  }
  if (max_tokens < 1) fail("max_tokens must be >= 1, got {}", max_tokens);
  if (top_logprobs < 0 || top_logprobs > 20) fail("top_logprobs must be in [0, 20], got {}", top_logprobs);
  for (const auto& s : stop) {
    if (s.empty()) fail("stop strings must not be empty");
  }
}

namespace {

template <typename T>
std::optional<T> number_field(const nlohmann::json& j, const char* key, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) fail("{}: '{}' must be a number, got {}", origin, key, it->dump());
  if constexpr (std::is_integral_v<T>) {
    if (!it->is_number_integer()) fail("{}: '{}' must be an integer, got {}", origin, key, it->dump());
  }
  return it->get<T>();
}

}  // namespace

GenerationConfig GenerationConfig::from_json(const nlohmann::json& j, const std::string& origin) {
  if (!j.is_object()) fail("{}: expected a JSON object", origin);
  GenerationConfig g;
  if (auto it = j.find("do_sample"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) fail("{}: 'do_sample' must be true or false, got {}", origin, it->dump());
    g.do_sample = it->get<bool>();
  }
  g.temperature = number_field<float>(j, "temperature", origin);
  g.top_p = number_field<float>(j, "top_p", origin);
  g.repetition_penalty = number_field<float>(j, "repetition_penalty", origin);
  g.top_k = number_field<int>(j, "top_k", origin);
  g.max_new_tokens = number_field<int>(j, "max_new_tokens", origin);
  if (g.max_new_tokens && *g.max_new_tokens < 1) fail("{}: 'max_new_tokens' must be >= 1, got {}", origin, *g.max_new_tokens);
  g.bos_token_id = number_field<int32_t>(j, "bos_token_id", origin);
  if (auto it = j.find("eos_token_id"); it != j.end() && !it->is_null()) {
    if (it->is_number_integer()) {
      g.eos_token_ids.push_back(it->get<int32_t>());
    } else if (it->is_array()) {
      for (const auto& e : *it) {
        if (!e.is_number_integer()) fail("{}: 'eos_token_id' entries must be integers, got {}", origin, e.dump());
        g.eos_token_ids.push_back(e.get<int32_t>());
      }
    } else {
      fail("{}: 'eos_token_id' must be an integer or a list of integers, got {}", origin, it->dump());
    }
  }
  // Check the values now, so that a bad file is reported with its name rather than per request.
  try {
    g.defaults().validate();
  } catch (const Error& e) {
    fail("{}: {}", origin, e.what());
  }
  return g;
}

GenerationConfig GenerationConfig::from_folder(const std::filesystem::path& folder) {
  std::filesystem::path p = folder / "generation_config.json";
  if (!std::filesystem::exists(p)) return {};
  std::ifstream f(p);
  if (!f) fail("cannot open {}", p.string());
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: invalid JSON: {}", p.string(), e.what());
  }
  return from_json(j, p.string());
}

SamplingParams GenerationConfig::defaults() const {
  SamplingParams p;
  if (temperature) p.temperature = *temperature;
  if (top_p) p.top_p = *top_p;
  if (top_k) p.top_k = *top_k < 0 ? 0 : *top_k;  // transformers and vLLM use -1 or 0 for "off"
  if (repetition_penalty) p.repetition_penalty = *repetition_penalty;
  if (max_new_tokens) p.max_tokens = *max_new_tokens;
  if (do_sample && !*do_sample) p.temperature = 0.f;
  return p;
}

}  // namespace dsv2
