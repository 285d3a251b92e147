// dsv2 serve: the OpenAI-compatible HTTP server over the continuous-batching engine.
#include <csignal>
#include <filesystem>
#include <thread>

#include <fmt/ranges.h>

#include "cli/command.h"
#include "cli/model_args.h"
#include "cli/text_gen.h"
#include "common/error.h"
#include "common/log.h"
#include "runtime/engine.h"
#include "sampling/sampling_params.h"
#include "server/http_server.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace dsv2::cli {
namespace {

struct ServeArgs {
  ModelArgs model;
  server::ServerOptions http;
  int max_batch_size = 64;
  int64_t max_batch_tokens = 512;
  int64_t max_model_len = 0;
  int64_t max_queue = 1024;
  int64_t cache_tokens = 0;
  bool no_prefix_cache = false;
};

std::function<int()> setup(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  add_model_args(app, a->model);
  app.add_option("--host", a->http.host, "Address to listen on")->capture_default_str();
  app.add_option("--port", a->http.port, "TCP port (0 = any free port, printed in the log)")->capture_default_str();
  app.add_option("--api-key", a->http.api_key, "Require 'Authorization: Bearer <key>' on /v1 routes");
  app.add_option("--served-model-name", a->http.model_name, "Model id reported by /v1/models (default: the folder name)");
  app.add_option("--max-batch-size", a->max_batch_size, "Sequences decoded together per step")->capture_default_str();
  app.add_option("--max-batch-tokens", a->max_batch_tokens, "Tokens per forward step (prompt chunks + decodes)")
      ->capture_default_str();
  app.add_option("--max-model-len", a->max_model_len, "Context per request in tokens (default: the model's)");
  app.add_option("--max-queue", a->max_queue, "Waiting sequences before requests get 503")->capture_default_str();
  app.add_option("--max-body-bytes", a->http.max_body_bytes, "Largest request body accepted (413 beyond)")
      ->capture_default_str();
  app.add_option("--cache-tokens", a->cache_tokens, "Latent cache capacity in tokens (default: the backend's)");
  app.add_option("--http-threads", a->http.http_threads, "HTTP worker threads (each open stream holds one)")
      ->capture_default_str();
  app.add_flag("--no-prefix-cache", a->no_prefix_cache, "Do not reuse cache blocks of shared prompt prefixes");
  return [a] {
    if (a->max_batch_size < 1) fail("--max-batch-size must be at least 1, got {}", a->max_batch_size);
    if (a->max_batch_tokens < 1) fail("--max-batch-tokens must be at least 1, got {}", a->max_batch_tokens);
    if (a->max_queue < 1) fail("--max-queue must be at least 1, got {}", a->max_queue);
    if (a->max_model_len < 0) fail("--max-model-len must be positive, got {}", a->max_model_len);
    if (a->cache_tokens < 0) fail("--cache-tokens must be positive, got {}", a->cache_tokens);
    if (a->http.port < 0 || a->http.port > 65535) fail("--port must be in [0, 65535], got {}", a->http.port);
    if (a->http.max_body_bytes < 1024) fail("--max-body-bytes must be at least 1024, got {}", a->http.max_body_bytes);

    // Signals go to one waiting thread, which stops the server cleanly.
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    CacheOptions co;
    co.max_tokens = a->cache_tokens;
    // The CPU backend's own default (one context) is sized for a single sequence; a server wants
    // room for a batch. CUDA sizes its cache from free device memory.
    if (co.max_tokens == 0 && a->model.device == "cpu") co.max_tokens = 16384;
    LoadedModel m = load_model(a->model, co);
    const ModelConfig& c = m.model->config();

    server::ServedModel sm{Tokenizer::from_folder(m.dir), std::nullopt, {}, {}, 0};
    const auto tc = m.dir / "tokenizer_config.json";
    if (std::filesystem::exists(tc)) {
      try {
        sm.chat_template = ChatTemplate::from_tokenizer_config(tc);
      } catch (const Error& e) {
        log::warn("serve", "no chat template ({}): /v1/chat/completions is disabled", e.what());
      }
    }
    GenerationConfig gc = GenerationConfig::from_folder(m.dir);
    sm.defaults = gc.defaults();
    sm.eos_ids = eos_ids_for(m.dir, c, &sm.tokenizer);  // the same stop ids as generate and chat
    std::error_code ec;
    auto mtime = std::filesystem::last_write_time(m.dir / "config.json", ec);
    sm.created = ec ? 0
                    : std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::file_clock::to_sys(mtime).time_since_epoch())
                          .count();
    if (sm.tokenizer.vocab_size() > c.vocab_size)
      fail("{}: the tokenizer has {} ids but the model only {} embedding rows", m.dir.string(),
           sm.tokenizer.vocab_size(), c.vocab_size);

    EngineOptions eo;
    eo.scheduler.max_running = a->max_batch_size;
    eo.scheduler.max_batch_tokens = a->max_batch_tokens;
    eo.scheduler.prefix_caching = !a->no_prefix_cache;
    eo.max_queue = a->max_queue;
    eo.n_valid_vocab = sm.tokenizer.vocab_size();
    const int64_t cache_cap = int64_t(m.model->blocks().total()) * kCacheBlockSize;
    int64_t ctx = a->max_model_len > 0 ? std::min(a->max_model_len, c.max_position_embeddings) : c.max_position_embeddings;
    if (ctx > cache_cap) {
      log::warn("serve", "context limited to {} tokens: the latent cache holds no more (raise --cache-tokens)", cache_cap);
      ctx = cache_cap;
    }
    eo.max_context = ctx;
    if (a->http.model_name == server::ServerOptions{}.model_name) a->http.model_name = m.dir.filename().string();

    log::info("serve", "tokenizer: {} ids, eos {}, chat template {}; sampling defaults: temperature {}, top_p {}",
              sm.tokenizer.vocab_size(), fmt::join(sm.eos_ids, ","), sm.chat_template ? "yes" : "no",
              sm.defaults.temperature, sm.defaults.top_p);
    log::info("serve", "context {} tokens, batch {} sequences / {} tokens per step, queue {}, prefix cache {}", ctx,
              a->max_batch_size, a->max_batch_tokens, a->max_queue, a->no_prefix_cache ? "off" : "on");

    Engine engine(*m.model, eo);
    server::HttpServer http(engine, std::move(sm), a->http);
    http.bind();
    engine.start();
    std::thread waiter([&] {
      int sig = 0;
      sigwait(&sigs, &sig);
      if (sig != 0) log::info("serve", "signal {}: shutting down", sig);
      http.stop();
    });
    bool ok = http.run();
    // Wake the signal thread if the server stopped on its own.
    pthread_kill(waiter.native_handle(), SIGTERM);
    waiter.join();
    engine.stop();
    log::info("serve", "stopped");
    return ok ? 0 : 1;
  };
}

DSV2_COMMAND("serve", "Serve the model over an OpenAI-compatible HTTP API", setup);

}  // namespace
}  // namespace dsv2::cli
