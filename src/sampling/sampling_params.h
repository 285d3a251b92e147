#pragma once
// Per-request sampling parameters and the checkpoint's generation_config.json defaults.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace dsv2 {

struct SamplingParams {
  float temperature = 1.f;  // 0 = greedy (argmax)
  float top_p = 1.f;        // nucleus mass in (0, 1]
  int top_k = 0;            // 0 = off
  float min_p = 0.f;        // keep tokens with p >= min_p * p_max; 0 = off
  float repetition_penalty = 1.f;  // HF/vLLM: logit > 0 ? logit / r : logit * r for seen tokens
  float presence_penalty = 0.f;    // OpenAI: logit -= presence * (count > 0) + frequency * count
  float frequency_penalty = 0.f;
  uint64_t seed = 0;
  bool has_seed = false;  // without a seed every Sampler draws its own from std::random_device
  int max_tokens = 256;
  std::vector<std::string> stop;        // stop strings, not included in the output
  std::vector<int32_t> stop_token_ids;  // extra stop tokens (besides EOS), not included either
  bool ignore_eos = false;
  int top_logprobs = 0;  // alternatives reported per token (0..20)
  bool logprobs = false;

  bool greedy() const { return temperature == 0.f; }
  // Throws dsv2::Error naming the first invalid parameter and its value.
  void validate() const;
};

// generation_config.json. Only keys present in the file change the defaults (vLLM's reading;
// transformers' own class defaults such as top_k 50 are not applied).
struct GenerationConfig {
  std::optional<bool> do_sample;
  std::optional<float> temperature, top_p, repetition_penalty;
  std::optional<int> top_k;
  std::optional<int> max_new_tokens;
  std::optional<int32_t> bos_token_id;
  std::vector<int32_t> eos_token_ids;  // "eos_token_id" may be one id or a list

  // A folder without generation_config.json gives an empty config.
  static GenerationConfig from_folder(const std::filesystem::path& folder);
  static GenerationConfig from_json(const nlohmann::json& j, const std::string& origin);

  // Request defaults: do_sample false means greedy whatever the temperature says.
  SamplingParams defaults() const;
};

}  // namespace dsv2
