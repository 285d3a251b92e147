#pragma once
// Single-sequence generation on a Model: prefill the prompt, then decode one token per step.
// The token choice is a callback (greedy argmax, or a Sampler), so the CLI and tests share the loop.
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "model/model.h"
#include "sampling/sampler.h"

namespace dsv2 {

struct GenerateOptions {
  int64_t max_tokens = 16;
  bool ignore_eos = false;
  std::vector<int32_t> stop_ids;   // generation ends after emitting one of these (eos included by caller)
  int64_t prefill_chunk = 512;     // prompt tokens per forward call
};

struct GenerateResult {
  std::vector<int32_t> ids;        // generated ids (the stop id included, as OpenAI counts it)
  std::string finish_reason;       // "stop" or "length"
  double prefill_seconds = 0, decode_seconds = 0;
  int64_t prompt_tokens = 0;
};

// pick(logits[vocab], generated so far) -> next id; on_token(id) -> false to stop early ("stop").
using PickFn = std::function<int32_t(std::span<const float>, std::span<const int32_t>)>;
using TokenFn = std::function<bool(int32_t)>;

GenerateResult generate(Model& model, std::span<const int32_t> prompt, const GenerateOptions& opts, const PickFn& pick,
                        const TokenFn& on_token = {});
// The same loop choosing with `sampler` (penalties over the prompt and the generated ids): greedy
// requests without logprobs, and sampled ones without penalties or logprobs where the backend draws
// itself, take only the id from Model::forward_select (on the GPU no logits row crosses to the host);
// the rest sample the row on the host. Prompt chunks before the last ask for no row at all.
GenerateResult generate(Model& model, std::span<const int32_t> prompt, const GenerateOptions& opts, Sampler& sampler,
                        const TokenFn& on_token = {});

int32_t argmax(std::span<const float> logits);

// What Model::forward_select needs of the next row chosen with `s`: only the argmax, only a draw (a
// backend that draws itself; `draw` then holds the parameters and the uniform sample() would have
// taken), or the whole row for the host sampler.
RowUse row_use_for(Sampler& s, const Model& m, RowSampling& draw);
// The choice for a row of that use: the backend's id, or the host sampler's over the row (penalties
// over the prompt and the generated ids).
SampleResult row_choice(RowUse use, int32_t id, Sampler& s, std::span<const float> logits,
                        std::span<const int32_t> prompt, std::span<const int32_t> generated);

}  // namespace dsv2
