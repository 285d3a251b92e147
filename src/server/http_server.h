#pragma once
// The OpenAI-compatible HTTP server: routes, authentication, request limits, and the bridge from
// HTTP threads (parse JSON, apply the chat template, tokenize, frame SSE) to the engine thread.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/engine.h"
#include "sampling/sampling_params.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace dsv2::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                      // 0 = any free port
  std::string api_key;                  // empty: no authentication
  size_t max_body_bytes = 4u << 20;
  int http_threads = 192;               // a streaming response holds one thread for its duration
  std::string model_name = "dsv2";
};

struct ServedModel {
  Tokenizer tokenizer;
  std::optional<ChatTemplate> chat_template;  // none: /v1/chat/completions answers 400
  SamplingParams defaults;                    // generation_config.json
  std::vector<int32_t> eos_ids;               // end the generation ("stop")
  int64_t created = 0;                        // for /v1/models
};

class HttpServer {
 public:
  HttpServer(Engine& engine, ServedModel model, ServerOptions opts);
  ~HttpServer();
  // Binds the socket (throws dsv2::Error when it cannot) and returns the port.
  int bind();
  // Serves until stop(); returns false if the server failed.
  bool run();
  void stop();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsv2::server
