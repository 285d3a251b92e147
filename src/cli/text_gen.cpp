#include "cli/text_gen.h"

#include <algorithm>

#include "common/error.h"
#include "runtime/generate.h"
#include "sampling/sampler.h"
#include "sampling/stop_matcher.h"
#include "tokenizer/detok.h"

namespace dsv2::cli {

void add_sampling_args(CLI::App& app, SamplingArgs& a) {
  app.add_option("--max-tokens,-n", a.max_tokens, "Maximum tokens to generate (default: generation_config.json, else 256)");
  app.add_option("--temperature", a.temperature, "Sampling temperature; 0 = greedy (default: generation_config.json)");
  app.add_option("--top-p", a.top_p, "Nucleus sampling mass");
  app.add_option("--top-k", a.top_k, "Keep the k most likely tokens (0 = off)");
  app.add_option("--min-p", a.min_p, "Keep tokens with p >= min_p * p_max");
  app.add_option("--repetition-penalty", a.repetition_penalty, "Penalty for tokens already seen (1 = off)");
  app.add_option("--presence-penalty", a.presence_penalty, "OpenAI presence penalty");
  app.add_option("--frequency-penalty", a.frequency_penalty, "OpenAI frequency penalty");
  app.add_option("--seed", a.seed, "Random seed (same seed, same output)");
  app.add_option("--stop", a.stop, "Stop string (repeatable)");
  app.add_flag("--ignore-eos", a.ignore_eos, "Do not stop at the end-of-sequence token");
}

SamplingParams sampling_params(const SamplingArgs& a, const std::filesystem::path& model_dir) {
  SamplingParams p = GenerationConfig::from_folder(model_dir).defaults();
  if (a.max_tokens) p.max_tokens = int(*a.max_tokens);
  if (a.temperature) p.temperature = *a.temperature;
  if (a.top_p) p.top_p = *a.top_p;
  if (a.top_k) p.top_k = *a.top_k;
  if (a.min_p) p.min_p = *a.min_p;
  if (a.repetition_penalty) p.repetition_penalty = *a.repetition_penalty;
  if (a.presence_penalty) p.presence_penalty = *a.presence_penalty;
  if (a.frequency_penalty) p.frequency_penalty = *a.frequency_penalty;
  if (a.seed) {
    p.seed = *a.seed;
    p.has_seed = true;
  }
  p.stop = a.stop;
  p.ignore_eos = a.ignore_eos;
  p.validate();
  return p;
}

std::vector<int32_t> eos_ids_for(const std::filesystem::path& model_dir, const ModelConfig& c, const Tokenizer* tok) {
  std::vector<int32_t> ids = GenerationConfig::from_folder(model_dir).eos_token_ids;
  if (c.eos_token_id >= 0 && std::find(ids.begin(), ids.end(), int32_t(c.eos_token_id)) == ids.end())
    ids.push_back(int32_t(c.eos_token_id));
  if (ids.empty() && tok && tok->eos_id() >= 0) ids.push_back(tok->eos_id());
  return ids;
}

TextResult generate_text(Model& model, const Tokenizer& tok, const std::vector<int32_t>& prompt_ids,
                         const SamplingParams& params, const std::vector<int32_t>& eos_ids,
                         const std::function<void(const std::string&)>& emit) {
  const int32_t n_valid = std::min<int32_t>(tok.vocab_size(), int32_t(model.config().vocab_size));
  Sampler sampler(params, n_valid);
  IncrementalDetokenizer detok(tok, /*skip_special=*/true);
  StopMatcher stops(params.stop);
  TextResult out;
  GenerateOptions go;
  go.max_tokens = params.max_tokens;
  go.ignore_eos = true;  // stop tokens are decided below, where stop_token_ids also count
  std::string finish;
  auto on_token = [&](int32_t id) {
    bool is_stop_token = (!params.ignore_eos && std::find(eos_ids.begin(), eos_ids.end(), id) != eos_ids.end()) ||
                         std::find(params.stop_token_ids.begin(), params.stop_token_ids.end(), id) !=
                             params.stop_token_ids.end();
    if (is_stop_token) return false;  // the stop token itself is not shown
    auto r = stops.push(detok.push(id));
    if (!r.emit.empty()) {
      out.text += r.emit;
      emit(r.emit);
    }
    return !r.stopped;
  };
  GenerateResult g = generate(model, prompt_ids, go, sampler, on_token);
  if (g.finish_reason != "stop") {
    std::string tail = stops.push(detok.flush()).emit;
    if (!stops.stopped()) tail += stops.flush();
    if (!tail.empty()) {
      out.text += tail;
      emit(tail);
    }
  }
  out.ids = g.ids;
  out.finish_reason = g.finish_reason;
  out.prompt_tokens = g.prompt_tokens;
  out.prefill_tps = g.prefill_seconds > 0 ? double(g.prompt_tokens) / g.prefill_seconds : 0;
  out.decode_tps = g.decode_seconds > 0 && g.ids.size() > 1 ? double(g.ids.size() - 1) / g.decode_seconds : 0;
  return out;
}

}  // namespace dsv2::cli
