#include "server/http_server.h"

#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <arpa/inet.h>

#include <atomic>
#include <chrono>
#include <random>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/log.h"
#include "server/api_error.h"
#include "server/completion_session.h"
#include "server/metrics.h"
#include "server/openai_request.h"

namespace dsv2::server {

using nlohmann::json;

namespace {

// httplib keeps its listening socket protected; its backlog of 5 refuses bursts of connections.
class Listener : public httplib::Server {
 public:
  bool raise_backlog(int n) { return ::listen(svr_sock_, n) == 0; }
};

std::string random_id(const char* prefix) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  static const char* hex = "0123456789abcdef";
  std::string s = prefix;
  for (int i = 0; i < 24; ++i) s += hex[rng() % 16];
  return s;
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// The accepted socket of a request, found by its two endpoints: httplib does not hand it to
// handlers, and the server needs it to notice a client that went away while it waits for tokens.
int find_socket(const httplib::Request& req) {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  int found = -1;
  while (dirent* e = readdir(d)) {
    int fd = std::atoi(e->d_name);
    if (fd <= 2) continue;
    sockaddr_storage local{}, peer{};
    socklen_t ll = sizeof(local), pl = sizeof(peer);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0) continue;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0) continue;
    auto port_of = [](const sockaddr_storage& a) {
      if (a.ss_family == AF_INET) return int(ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port));
      if (a.ss_family == AF_INET6) return int(ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port));
      return -1;
    };
    if (port_of(local) == req.local_port && port_of(peer) == req.remote_port) {
      found = fd;
      break;
    }
  }
  closedir(d);
  return found;
}

// True when the peer closed or reset the connection (a pending request byte does not count).
bool peer_gone(int fd) {
  if (fd < 0) return false;
  char c;
  ssize_t r = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (r == 0) return true;
  if (r < 0) return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
  return false;
}

}  // namespace

struct HttpServer::Impl {
  Engine& engine;
  ServedModel model;
  ServerOptions o;
  Listener http;
  Metrics metrics;
  int port = -1;

  Impl(Engine& e, ServedModel m, ServerOptions opts) : engine(e), model(std::move(m)), o(std::move(opts)) {}

  void send_error(httplib::Response& res, const ApiError& e) {
    res.status = e.status;
    res.set_content(error_body(e), "application/json");
  }

  bool authorized(const httplib::Request& req, httplib::Response& res) {
    if (o.api_key.empty()) return true;
    std::string h = req.get_header_value("Authorization");
    if (h == "Bearer " + o.api_key) return true;
    send_error(res, ApiError(401,
                             h.empty() ? "missing API key: send it as 'Authorization: Bearer <key>'"
                                       : "incorrect API key provided",
                             "", "invalid_api_key"));
    return false;
  }

  void routes();
  void generate(const httplib::Request& req, httplib::Response& res, bool chat);
};

void HttpServer::Impl::routes() {
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content("{\"status\":\"ok\"}", "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.render(engine.stats()), "text/plain; version=0.0.4; charset=utf-8");
  });
  http.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    json j = {{"object", "list"},
              {"data",
               {{{"id", o.model_name},
                 {"object", "model"},
                 {"created", model.created},
                 {"owned_by", "dsv2"},
                 {"max_model_len", engine.max_context()}}}}};
    res.set_content(j.dump(), "application/json");
  });
  http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    generate(req, res, true);
  });
  http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) { generate(req, res, false); });
  http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 404)
      send_error(res, ApiError(404, "no route for " + req.method + " " + req.path, "", "not_found"));
    else if (res.status == 413)
      send_error(res, ApiError(413, fmt::format("the request body exceeds the limit of {} bytes", o.max_body_bytes), "",
                               "request_too_large"));
    else
      send_error(res, ApiError(res.status, fmt::format("the request failed with HTTP status {}", res.status)));
  });
  http.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    log::error("server", "request failed: {}", what);
    send_error(res, ApiError(500, "internal error: " + what, "", "", "server_error"));
  });
  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    if (req.path == "/v1/chat/completions" || req.path == "/v1/completions") {
      if (res.status != 200) metrics.request_done(req.path, res.status);  // successes are counted when they end
    }
    log::debug("http", "{} {} -> {}", req.method, req.path, res.status);
  });
}

void HttpServer::Impl::generate(const httplib::Request& req, httplib::Response& res, bool chat) {
  const Clock::time_point arrival = Clock::now();
  const std::string endpoint = req.path;
  if (!authorized(req, res)) return;
  try {
    CompletionRequest cr = parse_completion_request(req.body, chat, model.defaults);
    const Tokenizer& tok = model.tokenizer;
    std::vector<std::vector<int32_t>> prompts;
    std::vector<std::string> echo;
    if (chat) {
      if (!model.chat_template)
        throw ApiError(400, "this model has no chat template: use /v1/completions", "messages");
      std::string text;
      try {
        text = model.chat_template->render_json(cr.messages, true, model.chat_template->bos_token(),
                                                model.chat_template->eos_token(), nullptr);
      } catch (const Error& e) {
        throw ApiError(400, std::string("the chat template failed on these messages: ") + e.what(), "messages");
      }
      prompts.push_back(tok.encode(text, false));
    } else {
      for (const std::string& t : cr.prompt_texts) {
        try {
          prompts.push_back(tok.encode(t, true));
        } catch (const Error& e) {
          throw ApiError(400, e.what(), "prompt");
        }
        if (cr.echo) echo.push_back(t);
      }
      for (auto& ids : cr.prompt_ids) {
        for (int32_t id : ids)
          if (id >= tok.vocab_size())
            throw ApiError(400, fmt::format("token id {} is outside the vocabulary [0, {})", id, tok.vocab_size()),
                           "prompt");
        if (cr.echo) echo.push_back(tok.decode(ids, false));
        prompts.push_back(ids);
      }
    }
    const char* prompt_param = chat ? "messages" : "prompt";
    const int64_t ctx = engine.max_context();
    int64_t prompt_tokens = 0;
    std::vector<EngineRequest> ereqs;
    for (size_t p = 0; p < prompts.size(); ++p) {
      const int64_t len = int64_t(prompts[p].size());
      if (len == 0) throw ApiError(400, "the prompt is empty", prompt_param);
      if (len >= ctx)
        throw ApiError(400,
                       fmt::format("this model's maximum context length is {} tokens, but the prompt has {} tokens",
                                   ctx, len),
                       prompt_param, "context_length_exceeded");
      const int64_t max_tokens = cr.max_tokens ? *cr.max_tokens : ctx - len;
      if (len + max_tokens > ctx)
        throw ApiError(400,
                       fmt::format("this model's maximum context length is {} tokens, but {} were requested ({} in "
                                   "the prompt, {} for the completion)",
                                   ctx, len + max_tokens, len, max_tokens),
                       cr.max_tokens ? "max_tokens" : prompt_param, "context_length_exceeded");
      prompt_tokens += len;
      for (int i = 0; i < cr.n; ++i) {
        EngineRequest er;
        er.prompt = prompts[p];
        er.max_tokens = max_tokens;
        er.sampling = cr.sampling;
        // Each choice its own stream: seed + choice index keeps n > 1 reproducible and distinct.
        const int choice = int(p) * cr.n + i;
        if (er.sampling.has_seed) er.sampling.seed += uint64_t(choice);
        er.choice = choice;
        if (!cr.sampling.ignore_eos) er.stop_ids = model.eos_ids;
        for (int32_t s : cr.sampling.stop_token_ids) er.stop_ids.push_back(s);
        ereqs.push_back(std::move(er));
      }
    }
    auto channel = std::make_shared<ResultChannel>();
    try {
      engine.submit(std::move(ereqs), channel);
    } catch (const Error& e) {
      if (e.kind() == "overloaded") throw ApiError(503, e.what(), "", "overloaded", "server_error");
      throw ApiError(400, e.what(), prompt_param, e.kind() == "context_length_exceeded" ? e.kind() : "");
    }
    metrics.add_tokens(prompt_tokens, 0);

    SessionSetup setup;
    setup.chat = chat;
    setup.id = random_id(chat ? "chatcmpl-" : "cmpl-");
    setup.model = cr.model.empty() ? o.model_name : cr.model;
    setup.created = unix_now();
    setup.stream = cr.stream;
    setup.include_usage = cr.include_usage;
    setup.logprobs = cr.logprobs;
    setup.top_logprobs = cr.top_logprobs;
    setup.stop = cr.stop;
    setup.n = cr.n;
    setup.echo_texts = echo;
    setup.n_prompts = int(prompts.size());
    setup.prompt_tokens = prompt_tokens;

    struct State {
      CompletionSession session;
      std::shared_ptr<ResultChannel> channel;
      int fd = -1;
      bool started = false, finished = false;
      std::vector<Clock::time_point> last_token;  // per choice
      Clock::time_point arrival;
      Clock::time_point last_check{};
      bool first = true;
      int64_t delivered = 0;
    };
    auto st = std::make_shared<State>(State{CompletionSession(tok, setup), channel, find_socket(req), false, false,
                                            std::vector<Clock::time_point>(size_t(cr.n * int(prompts.size()))),
                                            arrival, Clock::time_point{}, true, 0});
    const bool stream = cr.stream;
    auto provider = [this, st, stream](size_t, httplib::DataSink& sink) -> bool {
      if (!st->started) {
        st->started = true;
        std::string head = st->session.stream_start();
        if (!head.empty() && !sink.write(head.data(), head.size())) return false;
      }
      std::vector<EngineEvent> evs;
      const bool got = st->channel->pop_all(evs, std::chrono::milliseconds(20));
      // A vanished client is noticed within ~20 ms even while tokens keep coming (a non-streaming
      // request writes nothing until the end, so failed writes cannot tell).
      const Clock::time_point now = Clock::now();
      if (!got || now - st->last_check > std::chrono::milliseconds(20)) {
        st->last_check = now;
        if (peer_gone(st->fd)) {
          engine.cancel(*st->channel);
          return false;
        }
      }
      if (!got) return true;
      for (const EngineEvent& ev : evs) {
        if (ev.kind != EngineEvent::Kind::token) continue;
        auto& last = st->last_token[size_t(ev.choice)];
        if (st->first) {
          metrics.ttft.observe(std::chrono::duration<double>(ev.time - st->arrival).count());
          st->first = false;
        }
        if (last != Clock::time_point{}) metrics.itl.observe(std::chrono::duration<double>(ev.time - last).count());
        last = ev.time;
      }
      std::string frames;
      std::vector<int32_t> stops;
      const int64_t before = st->session.completion_tokens();
      st->session.on_events(evs, frames, stops);
      metrics.add_tokens(0, st->session.completion_tokens() - before);
      for (int32_t c : stops) engine.cancel(*st->channel, c);
      if (stream && !frames.empty() && !sink.write(frames.data(), frames.size())) {
        engine.cancel(*st->channel);
        return false;
      }
      if (st->session.done()) {
        std::string tail = stream ? st->session.stream_end() : st->session.response_body();
        if (!sink.write(tail.data(), tail.size())) return false;
        st->finished = true;
        metrics.e2e.observe(std::chrono::duration<double>(Clock::now() - st->arrival).count());
        sink.done();
      }
      return true;
    };
    auto releaser = [this, st, endpoint](bool success) {
      if (!st->finished) engine.cancel(*st->channel);
      metrics.request_done(endpoint, st->finished && success ? 200 : 499);
    };
    res.status = 200;
    if (stream) {
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider("text/event-stream", provider, releaser);
    } else {
      res.set_chunked_content_provider("application/json", provider, releaser);
    }
  } catch (const ApiError& e) {
    send_error(res, e);
  }
}

HttpServer::HttpServer(Engine& engine, ServedModel model, ServerOptions opts)
    : impl_(std::make_unique<Impl>(engine, std::move(model), std::move(opts))) {
  Impl& s = *impl_;
  const int threads = std::max(8, s.o.http_threads);
  s.http.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  s.http.set_tcp_nodelay(true);
  s.http.set_payload_max_length(s.o.max_body_bytes);
  s.http.set_keep_alive_max_count(100000);
  s.http.set_keep_alive_timeout(5);
  s.http.set_read_timeout(10);
  s.http.set_write_timeout(10);
  s.routes();
}

HttpServer::~HttpServer() { stop(); }

int HttpServer::bind() {
  Impl& s = *impl_;
  if (s.o.port == 0) {
    s.port = s.http.bind_to_any_port(s.o.host);
    if (s.port < 0) fail("cannot listen on {} (any port)", s.o.host);
  } else {
    if (!s.http.bind_to_port(s.o.host, s.o.port)) fail("cannot listen on {}:{} (in use, or not an address of this host?)", s.o.host, s.o.port);
    s.port = s.o.port;
  }
  if (!s.http.raise_backlog(1024)) log::warn("server", "could not raise the listen backlog");
  return s.port;
}

bool HttpServer::run() {
  Impl& s = *impl_;
  log::info("server", "listening on http://{}:{} (model '{}', {} HTTP threads{})", s.o.host, s.port, s.o.model_name,
            s.o.http_threads, s.o.api_key.empty() ? "" : ", API key required");
  return s.http.listen_after_bind();
}

void HttpServer::stop() {
  if (impl_ && impl_->http.is_running()) impl_->http.stop();
}

}  // namespace dsv2::server
