#pragma once
// Token sampling from one row of logits.
//
// Pipeline (the order transformers and vLLM use): penalties -> temperature -> top-k -> top-p ->
// min-p -> draw. temperature 0 is greedy (argmax of the penalized logits, lowest id on ties).
// Rows at or past n_valid_vocab (the embedding's padding rows) are never candidates.
//
// Logprobs: like vLLM's default and OpenAI, the reported logprob of the chosen token and of the
// top alternatives are the model's raw log-softmax over the valid vocabulary, before penalties,
// temperature and truncation. So a greedy and a sampled request report the same numbers.
//
// Randomness: one std::mt19937_64 per Sampler (per request), seeded from SamplingParams::seed when
// has_seed, and uniforms built from its raw 53 bits, so a seed gives the same tokens on every
// platform and standard library.
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "sampling/sampling_params.h"

namespace dsv2 {

struct TokenLogprob {
  int32_t id;
  float logprob;
};

struct SampleResult {
  int32_t id;
  float logprob;                   // raw log-softmax of the chosen token
  std::vector<TokenLogprob> top;   // top_logprobs alternatives, best first (empty unless requested)
};

class Sampler {
 public:
  // n_valid_vocab: the tokenizer's vocabulary size (<= the logits row length).
  Sampler(const SamplingParams& params, int32_t n_valid_vocab);

  // context_ids: the tokens every penalty counts (repetition, presence and frequency).
  SampleResult sample(std::span<const float> logits, std::span<const int32_t> context_ids);
  // vLLM's split: repetition penalty over prompt and output, presence/frequency over output only
  // (OpenAI defines them on the generated text).
  SampleResult sample(std::span<const float> logits, std::span<const int32_t> prompt_ids,
                      std::span<const int32_t> output_ids);

  const SamplingParams& params() const { return params_; }
  int32_t vocab_size() const { return n_valid_; }  // ids at or past it are never chosen
  // The choice is the argmax of the raw logits over the valid ids (lowest id on ties) and nothing
  // else is reported: a backend can make it without the row (Model::forward_select, RowUse::greedy),
  // and SampleResult{id, 0, {}} is what sample() would return.
  bool argmax_only() const { return params_.greedy() && row_free(); }
  // A sampled choice without penalties or logprobs: a backend can draw it from the parameters and
  // next_uniform() (Model::forward_select, RowUse::sample).
  bool draw_only() const { return !params_.greedy() && row_free(); }
  // The uniform draw sample() makes for a sampled token (the generator advances the same way).
  double next_uniform() { return uniform(); }
  uint64_t seed() const { return seed_; }

 private:
  bool row_free() const {
    return params_.repetition_penalty == 1.f && params_.presence_penalty == 0.f && params_.frequency_penalty == 0.f &&
           !params_.logprobs && params_.top_logprobs == 0;
  }
  SampleResult finish(std::span<const float> logits, int32_t id);
  double uniform();  // [0, 1)

  SamplingParams params_;
  int32_t n_valid_;
  uint64_t seed_;
  std::mt19937_64 rng_;
  std::vector<float> work_;        // penalized logits (only when a penalty is set)
  std::vector<int32_t> order_;     // candidate ids
  std::vector<float> probs_;       // their unnormalized probabilities
  std::vector<int> bucket_;        // top-p: log-probability bucket per candidate
  std::vector<double> bucket_mass_;
  std::vector<std::pair<float, int32_t>> edge_;  // top-p: the bucket where the nucleus ends
  std::vector<int32_t> counts_;    // occurrences per id (output or context)
  std::vector<int32_t> touched_;   // ids with non-zero counts, to reset counts_ cheaply
};

// Why a sequence ended.
enum class FinishReason { None, Stop, Length };

// After a token was sampled: Stop when it is a stop token (EOS unless ignore_eos, or one of
// stop_token_ids), Length when n_generated (including this token) reached max_tokens.
FinishReason finish_reason_after_token(const SamplingParams& params, std::span<const int32_t> eos_ids, int32_t id,
                                       int n_generated);

}  // namespace dsv2
