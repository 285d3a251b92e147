// dsv2 generate: continue a prompt given as token ids (--ids) or as text (--prompt).
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/model_args.h"
#include "common/error.h"
#include "common/log.h"
#include "runtime/generate.h"

namespace dsv2::cli {
namespace {

struct GenerateArgs {
  ModelArgs model;
  std::string ids;
  int64_t max_tokens = 64;
  double temperature = 0.0;
  bool ignore_eos = false, json = false;
};

std::function<int()> setup(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  add_model_args(app, a->model);
  app.add_option("--ids", a->ids, "Prompt as comma-separated token ids (no BOS is added)");
  app.add_option("--max-tokens,-n", a->max_tokens, "Maximum number of tokens to generate")->capture_default_str();
  app.add_option("--temperature", a->temperature, "0 = greedy")->capture_default_str();
  app.add_flag("--ignore-eos", a->ignore_eos, "Do not stop at the end-of-sequence token");
  app.add_flag("--json", a->json, "Print one JSON object with the generated ids on stdout");
  return [a] {
    if (a->ids.empty()) fail("give the prompt with --ids");
    if (a->max_tokens < 0) fail("--max-tokens must be >= 0, got {}", a->max_tokens);
    if (a->temperature != 0.0) fail("--temperature: only 0 (greedy) is supported with --ids");
    std::vector<int32_t> prompt = parse_ids(a->ids);
    CacheOptions co;
    co.max_tokens = int64_t(prompt.size()) + a->max_tokens;
    LoadedModel m = load_model(a->model, co);
    const ModelConfig& c = m.model->config();
    for (int32_t id : prompt)
      if (id >= c.vocab_size) fail("--ids: token id {} is outside the vocabulary [0, {})", id, c.vocab_size);
    GenerateOptions go;
    go.max_tokens = a->max_tokens;
    go.ignore_eos = a->ignore_eos;
    if (c.eos_token_id >= 0) go.stop_ids.push_back(int32_t(c.eos_token_id));
    auto pick = [](std::span<const float> logits, std::span<const int32_t>) { return argmax(logits); };
    GenerateResult r = generate(*m.model, prompt, go, pick, [&](int32_t id) {
      if (!a->json) {
        std::printf("%d ", id);
        std::fflush(stdout);
      }
      return true;
    });
    double pre_tps = r.prefill_seconds > 0 ? double(r.prompt_tokens) / r.prefill_seconds : 0;
    double dec_tps = r.decode_seconds > 0 && r.ids.size() > 1 ? double(r.ids.size() - 1) / r.decode_seconds : 0;
    if (a->json) {
      nlohmann::json j;
      j["generated_ids"] = r.ids;
      j["finish_reason"] = r.finish_reason;
      j["prompt_tokens"] = r.prompt_tokens;
      j["completion_tokens"] = r.ids.size();
      j["prefill_tokens_per_s"] = pre_tps;
      j["decode_tokens_per_s"] = dec_tps;
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("\n");
    }
    log::info("generate", "prompt {} tokens at {:.1f} tok/s, generated {} tokens at {:.1f} tok/s ({})", r.prompt_tokens,
              pre_tps, r.ids.size(), dec_tps, r.finish_reason);
    return 0;
  };
}

DSV2_COMMAND("generate", "Generate a continuation of a prompt", setup);

}  // namespace
}  // namespace dsv2::cli
