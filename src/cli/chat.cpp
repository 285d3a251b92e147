// dsv2 chat: an interactive multi-turn conversation using the checkpoint's chat template, with
// the reply streamed as it is generated. Lines starting with / are commands (/reset, /exit).
#include <cstdio>
#include <iostream>

#include <unistd.h>

#include "cli/command.h"
#include "cli/text_gen.h"
#include "common/error.h"
#include "common/log.h"
#include "tokenizer/chat_template.h"

namespace dsv2::cli {
namespace {

struct ChatArgs {
  ModelArgs model;
  SamplingArgs sampling;
  std::string system;
  int64_t context = 0;
};

std::function<int()> setup(CLI::App& app) {
  auto a = std::make_shared<ChatArgs>();
  add_model_args(app, a->model);
  add_sampling_args(app, a->sampling);
  app.add_option("--system,-s", a->system, "System prompt");
  app.add_option("--context", a->context, "Latent cache size in tokens (default: 8192 or the model's context)");
  return [a] {
    std::filesystem::path dir = prepare(a->model);
    Tokenizer tok = Tokenizer::from_folder(dir);
    ChatTemplate tmpl = ChatTemplate::from_tokenizer_config(dir / "tokenizer_config.json");
    SamplingParams p = sampling_params(a->sampling, dir);
    CacheOptions co;
    ModelArgs ma = a->model;
    ma.model = dir.string();
    LoadedModel m = load_model(ma, co);
    const int64_t ctx = a->context > 0 ? a->context : int64_t(m.model->blocks().total()) * kCacheBlockSize;
    std::vector<int32_t> eos = eos_ids_for(m.dir, m.model->config(), &tok);
    std::vector<ChatMessage> messages;
    if (!a->system.empty()) messages.push_back({"system", a->system});
    const bool tty = isatty(STDIN_FILENO);
    if (tty) std::fprintf(stderr, "Chat with %s. /reset starts over, /exit or Ctrl-D ends.\n", dir.filename().c_str());
    std::string line;
    for (;;) {
      if (tty) std::fprintf(stderr, "> ");
      if (!std::getline(std::cin, line)) break;
      if (line == "/exit" || line == "/quit") break;
      if (line == "/reset") {
        messages.resize(a->system.empty() ? 0 : 1);
        std::fprintf(stderr, "(conversation cleared)\n");
        continue;
      }
      if (line.empty()) continue;
      messages.push_back({"user", line});
      std::string text = tmpl.render(messages, true, tok.bos_token(), tok.eos_token());
      // The template writes BOS itself.
      std::vector<int32_t> prompt = tok.encode(text, false);
      SamplingParams turn = p;
      if (int64_t(prompt.size()) + turn.max_tokens > ctx) {
        if (int64_t(prompt.size()) >= ctx) {
          std::fprintf(stderr, "(the conversation no longer fits in %lld tokens: /reset to start over)\n",
                       (long long)ctx);
          messages.pop_back();
          continue;
        }
        turn.max_tokens = int(ctx - int64_t(prompt.size()));
      }
      TextResult r = generate_text(*m.model, tok, prompt, turn, eos, [](const std::string& piece) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
      });
      std::printf("\n");
      std::fflush(stdout);
      log::info("chat", "prompt {} tokens at {:.1f} tok/s, reply {} tokens at {:.1f} tok/s ({})", r.prompt_tokens,
                r.prefill_tps, r.ids.size(), r.decode_tps, r.finish_reason);
      messages.push_back({"assistant", r.text});
    }
    return 0;
  };
}

DSV2_COMMAND("chat", "Interactive chat using the model's chat template", setup);

}  // namespace
}  // namespace dsv2::cli
