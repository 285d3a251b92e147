// dsv2 generate: continue a prompt given as text (--prompt, streamed to the terminal) or as token
// ids (--ids, for scripts: --json prints the generated ids).
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/text_gen.h"
#include "common/error.h"
#include "common/log.h"
#include "runtime/generate.h"
#include "sampling/sampler.h"

namespace dsv2::cli {
namespace {

struct GenerateArgs {
  ModelArgs model;
  SamplingArgs sampling;
  std::string ids, prompt;
  bool json = false, no_bos = false;
};

int run_ids(const GenerateArgs& a) {
  std::vector<int32_t> prompt = parse_ids(a.ids);
  std::filesystem::path dir = prepare(a.model);
  SamplingParams p = sampling_params(a.sampling, dir);
  CacheOptions co;
  co.max_tokens = int64_t(prompt.size()) + p.max_tokens;
  LoadedModel m = load_model(a.model, co);
  const ModelConfig& c = m.model->config();
  for (int32_t id : prompt)
    if (id >= c.vocab_size) fail("--ids: token id {} is outside the vocabulary [0, {})", id, c.vocab_size);
  std::optional<Tokenizer> tok;
  if (std::filesystem::exists(m.dir / "tokenizer.json")) tok = Tokenizer::from_folder(m.dir);
  std::vector<int32_t> eos = eos_ids_for(m.dir, c, tok ? &*tok : nullptr);
  const int32_t n_valid = tok ? std::min<int32_t>(tok->vocab_size(), int32_t(c.vocab_size)) : int32_t(c.vocab_size);
  Sampler sampler(p, n_valid);
  GenerateOptions go;
  go.max_tokens = p.max_tokens;
  go.ignore_eos = p.ignore_eos;
  go.stop_ids = eos;
  go.stop_ids.insert(go.stop_ids.end(), p.stop_token_ids.begin(), p.stop_token_ids.end());
  GenerateResult r = generate(*m.model, prompt, go, sampler, [&](int32_t id) {
    if (!a.json) {
      std::printf("%d ", id);
      std::fflush(stdout);
    }
    return true;
  });
  double pre_tps = r.prefill_seconds > 0 ? double(r.prompt_tokens) / r.prefill_seconds : 0;
  double dec_tps = r.decode_seconds > 0 && r.ids.size() > 1 ? double(r.ids.size() - 1) / r.decode_seconds : 0;
  if (a.json) {
    nlohmann::json j;
    j["generated_ids"] = r.ids;
    j["finish_reason"] = r.finish_reason;
    j["prompt_tokens"] = r.prompt_tokens;
    j["completion_tokens"] = r.ids.size();
    j["prefill_tokens_per_s"] = pre_tps;
    j["decode_tokens_per_s"] = dec_tps;
    if (tok) j["text"] = tok->decode(r.ids, true);
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("\n");
  }
  log::info("generate", "prompt {} tokens at {:.1f} tok/s, generated {} tokens at {:.1f} tok/s ({})", r.prompt_tokens,
            pre_tps, r.ids.size(), dec_tps, r.finish_reason);
  return 0;
}

int run_prompt(const GenerateArgs& a) {
  std::filesystem::path dir = prepare(a.model);
  Tokenizer tok = Tokenizer::from_folder(dir);
  SamplingParams p = sampling_params(a.sampling, dir);
  std::vector<int32_t> prompt = tok.encode(a.prompt, !a.no_bos);
  if (prompt.empty()) fail("--prompt: the prompt encodes to no tokens");
  CacheOptions co;
  co.max_tokens = int64_t(prompt.size()) + p.max_tokens;
  ModelArgs ma = a.model;
  ma.model = dir.string();
  LoadedModel m = load_model(ma, co);
  std::vector<int32_t> eos = eos_ids_for(m.dir, m.model->config(), &tok);
  if (!a.json) {
    std::printf("%s", a.prompt.c_str());
    std::fflush(stdout);
  }
  TextResult r = generate_text(*m.model, tok, prompt, p, eos, [&](const std::string& piece) {
    if (!a.json) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
  });
  if (a.json) {
    nlohmann::json j;
    j["prompt_ids"] = prompt;
    j["generated_ids"] = r.ids;
    j["text"] = r.text;
    j["finish_reason"] = r.finish_reason;
    j["prompt_tokens"] = r.prompt_tokens;
    j["completion_tokens"] = r.ids.size();
    j["prefill_tokens_per_s"] = r.prefill_tps;
    j["decode_tokens_per_s"] = r.decode_tps;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("\n");
  }
  log::info("generate", "prompt {} tokens at {:.1f} tok/s, generated {} tokens at {:.1f} tok/s ({})", r.prompt_tokens,
            r.prefill_tps, r.ids.size(), r.decode_tps, r.finish_reason);
  return 0;
}

std::function<int()> setup(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  add_model_args(app, a->model);
  add_sampling_args(app, a->sampling);
  auto* o_prompt = app.add_option("--prompt,-p", a->prompt, "Prompt text (BOS added as tokenizer_config.json says)");
  auto* o_ids = app.add_option("--ids", a->ids, "Prompt as comma-separated token ids (no BOS is added)");
  o_prompt->excludes(o_ids);
  app.add_flag("--no-bos", a->no_bos, "With --prompt: do not add BOS");
  app.add_flag("--json", a->json, "Print one JSON object (generated_ids, finish_reason, ...) on stdout");
  return [a, o_prompt, o_ids] {
    if (o_ids->count()) return run_ids(*a);
    if (o_prompt->count()) return run_prompt(*a);
    fail("give a prompt with --prompt \"text\" or --ids 1,2,3");
  };
}

DSV2_COMMAND("generate", "Generate a continuation of a prompt", setup);

}  // namespace
}  // namespace dsv2::cli
