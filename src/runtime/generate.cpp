#include "runtime/generate.h"

#include <algorithm>
#include <chrono>

#include "common/error.h"

namespace dsv2 {

int32_t argmax(std::span<const float> logits) {
  return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

GenerateResult generate(Model& model, std::span<const int32_t> prompt, const GenerateOptions& opts, const PickFn& pick,
                        const TokenFn& on_token) {
  using clock = std::chrono::steady_clock;
  GenerateResult res;
  res.prompt_tokens = int64_t(prompt.size());
  if (prompt.empty()) fail("the prompt is empty: at least one token is needed");
  const int64_t V = model.config().vocab_size;
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

  std::vector<float> logits(static_cast<size_t>(V));
  auto t0 = clock::now();
  for (size_t b = 0; b < prompt.size(); b += size_t(opts.prefill_chunk)) {
    size_t n = std::min(prompt.size() - b, size_t(opts.prefill_chunk));
    SeqChunk ch{&seq, prompt.subspan(b, n), false};
    model.forward({&ch, 1}, logits.data());
  }
  auto t1 = clock::now();
  res.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  res.finish_reason = "length";
  for (int64_t step = 0; step < opts.max_tokens; ++step) {
    int32_t id = pick(logits, res.ids);
    res.ids.push_back(id);
    bool stop = !opts.ignore_eos && std::find(opts.stop_ids.begin(), opts.stop_ids.end(), id) != opts.stop_ids.end();
    if (on_token && !on_token(id)) stop = true;
    if (stop) {
      res.finish_reason = "stop";
      break;
    }
    if (step + 1 == opts.max_tokens) break;
    SeqChunk ch{&seq, std::span<const int32_t>(&res.ids.back(), 1), false};
    model.forward({&ch, 1}, logits.data());
  }
  res.decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  return res;
}

}  // namespace dsv2
