#include "runtime/generate.h"

#include <algorithm>
#include <chrono>

#include "common/error.h"

namespace dsv2 {

int32_t argmax(std::span<const float> logits) {
  return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

RowUse row_use_for(Sampler& s, const Model& m, RowSampling& draw) {
  if (s.argmax_only()) return RowUse::greedy;
  if (!s.draw_only() || !m.samples_rows()) return RowUse::logits;
  const SamplingParams& p = s.params();
  draw = RowSampling{p.temperature, p.top_p, p.min_p, p.top_k, s.next_uniform()};
  return RowUse::sample;
}

SampleResult row_choice(RowUse use, int32_t id, Sampler& s, std::span<const float> logits,
                        std::span<const int32_t> prompt, std::span<const int32_t> generated) {
  if (use == RowUse::greedy || use == RowUse::sample) return SampleResult{id, 0.f, {}};
  return s.sample(logits, prompt, generated);
}

namespace {

// Runs one chunk of the sequence; when want_id, returns the next id (chosen over `generated`).
using StepFn = std::function<int32_t(const SeqChunk&, bool want_id, std::span<const int32_t> generated)>;

GenerateResult generate_loop(Model& model, std::span<const int32_t> prompt, const GenerateOptions& opts,
                             const StepFn& step, const TokenFn& on_token) {
  using clock = std::chrono::steady_clock;
  GenerateResult res;
  res.prompt_tokens = int64_t(prompt.size());
  if (prompt.empty()) fail("the prompt is empty: at least one token is needed");
  const int64_t need = int64_t(prompt.size()) + std::max<int64_t>(opts.max_tokens, 0);
  if (need > model.config().max_position_embeddings)
    fail("prompt ({} tokens) plus max tokens ({}) exceeds the model's context of {} positions", prompt.size(),
         opts.max_tokens, model.config().max_position_embeddings);
  SequenceCache seq;
  if (!reserve(model.blocks(), seq, need))
    fail("prompt ({} tokens) plus max tokens ({}) does not fit in the latent cache ({} tokens free)", prompt.size(),
         opts.max_tokens, int64_t(model.blocks().free_count()) * kCacheBlockSize);
  struct Release {
    Model& m;
    SequenceCache& s;
    ~Release() { release_all(m.blocks(), s); }
  } release{model, seq};

  auto t0 = clock::now();
  int32_t next = -1;
  for (size_t b = 0; b < prompt.size(); b += size_t(opts.prefill_chunk)) {
    const size_t n = std::min(prompt.size() - b, size_t(opts.prefill_chunk));
    const bool last = b + n == prompt.size();
    const int32_t id = step(SeqChunk{&seq, prompt.subspan(b, n), false}, last && opts.max_tokens > 0, res.ids);
    if (last) next = id;
  }
  auto t1 = clock::now();
  res.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  res.finish_reason = "length";
  for (int64_t k = 0; k < opts.max_tokens; ++k) {
    const int32_t id = next;
    res.ids.push_back(id);
    bool stop = !opts.ignore_eos && std::find(opts.stop_ids.begin(), opts.stop_ids.end(), id) != opts.stop_ids.end();
    if (on_token && !on_token(id)) stop = true;
    if (stop) {
      res.finish_reason = "stop";
      break;
    }
    if (k + 1 == opts.max_tokens) break;
    next = step(SeqChunk{&seq, std::span<const int32_t>(&res.ids.back(), 1), false}, true, res.ids);
  }
  res.decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  return res;
}

}  // namespace

GenerateResult generate(Model& model, std::span<const int32_t> prompt, const GenerateOptions& opts, const PickFn& pick,
                        const TokenFn& on_token) {
  std::vector<float> logits(static_cast<size_t>(model.config().vocab_size));
  auto step = [&](const SeqChunk& ch, bool want_id, std::span<const int32_t> generated) {
    model.forward({&ch, 1}, logits.data());
    return want_id ? pick(logits, generated) : -1;
  };
  return generate_loop(model, prompt, opts, step, on_token);
}

GenerateResult generate(Model& model, std::span<const int32_t> prompt, const GenerateOptions& opts, Sampler& sampler,
                        const TokenFn& on_token) {
  std::vector<float> logits(static_cast<size_t>(model.config().vocab_size));
  auto step = [&](const SeqChunk& ch, bool want_id, std::span<const int32_t> generated) {
    RowSampling rs;
    const RowUse use = want_id ? row_use_for(sampler, model, rs) : RowUse::none;
    int32_t id = -1;
    model.forward_select({&ch, 1}, &use, &rs, sampler.vocab_size(), logits.data(), &id);
    return want_id ? row_choice(use, id, sampler, logits, prompt, generated).id : -1;
  };
  return generate_loop(model, prompt, opts, step, on_token);
}

}  // namespace dsv2
