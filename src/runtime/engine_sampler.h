#pragma once
// Per-request token choice on the engine thread: OpenAI-style penalties, temperature, top-k/top-p,
// a seeded RNG owned by the request (so a preempted and recomputed request continues the same
// random stream), and logprobs. Logprobs are those of the model's raw distribution
// (log-softmax of the unmodified logits over the valid vocabulary), as OpenAI and vLLM report them.
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <unordered_map>
#include <vector>

namespace dsv2 {

struct SamplingOptions {
  double temperature = 1.0;       // 0 = greedy (argmax of the penalized logits)
  double top_p = 1.0;             // nucleus mass kept, (0, 1]
  int32_t top_k = 0;              // 0 = off
  double presence_penalty = 0.0;  // subtracted once from every token already generated
  double frequency_penalty = 0.0; // subtracted per occurrence in the generated text
  std::optional<uint64_t> seed;   // none: a fresh random seed
  bool logprobs = false;          // report the chosen token's logprob
  int32_t top_logprobs = 0;       // and this many most likely alternatives
};

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0.0f;
};

struct SampledToken {
  int32_t id = 0;
  float logprob = 0.0f;             // valid when logprobs were asked for
  std::vector<TokenLogprob> top;    // most likely first
};

class TokenSampler {
 public:
  // Only ids < n_valid are ever chosen or reported (rows past the tokenizer's vocabulary are padding).
  TokenSampler(const SamplingOptions& opts, int32_t n_valid);
  // Chooses the next token from one row of logits and records it as generated.
  SampledToken sample(std::span<const float> logits);

 private:
  SamplingOptions o_;
  int32_t n_valid_;
  std::mt19937_64 rng_;
  std::unordered_map<int32_t, int32_t> counts_;  // generated token -> occurrences
  std::vector<float> work_;
  std::vector<int32_t> order_;
};

}  // namespace dsv2
