#include "server/completion_session.h"

#include "server/api_error.h"

namespace dsv2::server {

using nlohmann::json;

std::string dump_json(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

CompletionSession::CompletionSession(const Tokenizer& tok, SessionSetup setup) : tok_(tok), s_(std::move(setup)) {
  const int total = s_.n * s_.n_prompts;
  choices_.reserve(size_t(total));
  for (int i = 0; i < total; ++i) {
    choices_.push_back(Choice{IncrementalDetokenizer(tok_, true), StopMatcher(s_.stop), "", "", 0, json(), 0});
    Choice& c = choices_.back();
    if (s_.chat) {
      c.logprobs = json::array();
    } else {
      c.logprobs = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
                    {"text_offset", json::array()}};
    }
    if (!s_.chat && !s_.echo_texts.empty()) c.text = s_.echo_texts[size_t(i / s_.n)];
    c.text_offset = int64_t(c.text.size());
  }
}

json CompletionSession::chunk_base() const {
  json j = {{"id", s_.id},
            {"object", s_.chat ? "chat.completion.chunk" : "text_completion"},
            {"created", s_.created},
            {"model", s_.model}};
  if (s_.chat) j["system_fingerprint"] = nullptr;
  return j;
}

std::string CompletionSession::frame(const json& j) const { return "data: " + dump_json(j) + "\n\n"; }

std::string CompletionSession::delta_frame(int index, const std::string& text, const json& logprobs) const {
  json j = chunk_base();
  json choice;
  if (s_.chat) {
    choice = {{"index", index}, {"delta", {{"content", text}}}, {"logprobs", logprobs}, {"finish_reason", nullptr}};
  } else {
    choice = {{"index", index}, {"text", text}, {"logprobs", logprobs}, {"finish_reason", nullptr}};
  }
  j["choices"] = json::array({choice});
  if (s_.include_usage) j["usage"] = nullptr;
  return frame(j);
}

std::string CompletionSession::finish_frame(int index) const {
  json j = chunk_base();
  const std::string& reason = choices_[size_t(index)].finish_reason;
  json choice;
  if (s_.chat) {
    choice = {{"index", index}, {"delta", json::object()}, {"logprobs", nullptr}, {"finish_reason", reason}};
  } else {
    choice = {{"index", index}, {"text", ""}, {"logprobs", nullptr}, {"finish_reason", reason}};
  }
  j["choices"] = json::array({choice});
  if (s_.include_usage) j["usage"] = nullptr;
  return frame(j);
}

std::string CompletionSession::stream_start() {
  if (!s_.stream) return "";
  std::string out;
  for (int i = 0; i < int(choices_.size()); ++i) {
    if (s_.chat) {
      json j = chunk_base();
      j["choices"] = json::array({{{"index", i},
                                   {"delta", {{"role", "assistant"}, {"content", ""}}},
                                   {"logprobs", nullptr},
                                   {"finish_reason", nullptr}}});
      if (s_.include_usage) j["usage"] = nullptr;
      out += frame(j);
    } else if (!s_.echo_texts.empty()) {
      out += delta_frame(i, choices_[size_t(i)].text, nullptr);
    }
  }
  return out;
}

json CompletionSession::logprob_entry(Choice& c, const SampleResult& t, const std::string& emitted) {
  auto token_text = [&](int32_t id) { return tok_.token_bytes(id); };
  auto bytes_of = [](const std::string& s) {
    json b = json::array();
    for (unsigned char ch : s) b.push_back(int(ch));
    return b;
  };
  if (s_.chat) {
    json top = json::array();
    for (const TokenLogprob& a : t.top) {
      std::string s = token_text(a.id);
      top.push_back({{"token", s}, {"logprob", a.logprob}, {"bytes", bytes_of(s)}});
    }
    std::string s = token_text(t.id);
    json e = {{"token", s}, {"logprob", t.logprob}, {"bytes", bytes_of(s)}, {"top_logprobs", top}};
    c.logprobs.push_back(e);
    return e;
  }
  json top = json::object();
  for (const TokenLogprob& a : t.top) top[token_text(a.id)] = a.logprob;
  const json& top_clean = top;
  std::string s = token_text(t.id);
  c.logprobs["tokens"].push_back(s);
  c.logprobs["token_logprobs"].push_back(t.logprob);
  c.logprobs["top_logprobs"].push_back(top_clean);
  c.logprobs["text_offset"].push_back(c.text_offset);
  c.text_offset += int64_t(emitted.size());
  return {{"tokens", {s}}, {"token_logprobs", {t.logprob}}, {"top_logprobs", {top_clean}},
          {"text_offset", {c.text_offset - int64_t(emitted.size())}}};
}

void CompletionSession::close_choice(int index, const std::string& reason, std::string& frames, std::string tail_text) {
  Choice& c = choices_[size_t(index)];
  if (!tail_text.empty()) {
    c.text += tail_text;
    if (s_.stream) frames += delta_frame(index, tail_text, nullptr);
  }
  c.finish_reason = reason;
  ++finished_;
  if (s_.stream) frames += finish_frame(index);
}

void CompletionSession::on_events(std::span<const EngineEvent> events, std::string& frames,
                                  std::vector<int32_t>& stop_choices) {
  for (const EngineEvent& ev : events) {
    if (ev.choice < 0 || ev.choice >= int(choices_.size())) continue;
    Choice& c = choices_[size_t(ev.choice)];
    if (!c.finish_reason.empty()) continue;  // stopped by a stop string: later tokens are dropped
    switch (ev.kind) {
      case EngineEvent::Kind::token: {
        ++c.tokens;
        std::string piece = ev.stop_token ? std::string() : c.detok.push(ev.token.id);
        StopMatcher::Result r = c.stop.push(piece);
        json lp = nullptr;
        if (s_.logprobs) {
          json e = logprob_entry(c, ev.token, r.emit);
          lp = s_.chat ? json{{"content", json::array({e})}} : e;
        }
        c.text += r.emit;
        if (s_.stream && (!r.emit.empty() || s_.logprobs)) frames += delta_frame(ev.choice, r.emit, lp);
        if (r.stopped) {
          close_choice(ev.choice, "stop", frames, "");
          stop_choices.push_back(ev.choice);
        }
        break;
      }
      case EngineEvent::Kind::finish: {
        StopMatcher::Result r = c.stop.push(c.detok.flush());
        std::string tail = r.emit;
        if (!r.stopped) tail += c.stop.flush();
        close_choice(ev.choice, r.stopped ? "stop" : ev.finish_reason, frames, tail);
        break;
      }
      case EngineEvent::Kind::error: {
        error_ = ev.error;
        if (s_.stream) {
          ApiError e(500, "generation failed: " + ev.error, "", "", "server_error");
          frames += "data: " + error_body(e) + "\n\n";
        }
        c.finish_reason = "error";
        ++finished_;
        break;
      }
    }
  }
}

int64_t CompletionSession::completion_tokens() const {
  int64_t n = 0;
  for (const Choice& c : choices_) n += c.tokens;
  return n;
}

std::string CompletionSession::stream_end() const {
  std::string out;
  if (s_.include_usage) {
    json j = chunk_base();
    j["choices"] = json::array();
    int64_t ct = completion_tokens();
    j["usage"] = {{"prompt_tokens", s_.prompt_tokens}, {"completion_tokens", ct}, {"total_tokens", s_.prompt_tokens + ct}};
    out += frame(j);
  }
  out += "data: [DONE]\n\n";
  return out;
}

std::string CompletionSession::response_body() const {
  if (!error_.empty()) return error_body(ApiError(500, "generation failed: " + error_, "", "", "server_error"));
  json j = {{"id", s_.id},
            {"object", s_.chat ? "chat.completion" : "text_completion"},
            {"created", s_.created},
            {"model", s_.model}};
  json choices = json::array();
  for (int i = 0; i < int(choices_.size()); ++i) {
    const Choice& c = choices_[size_t(i)];
    if (s_.chat) {
      choices.push_back({{"index", i},
                         {"message", {{"role", "assistant"}, {"content", c.text}, {"refusal", nullptr}}},
                         {"logprobs", s_.logprobs ? json{{"content", c.logprobs}} : json(nullptr)},
                         {"finish_reason", c.finish_reason}});
    } else {
      choices.push_back({{"index", i},
                         {"text", c.text},
                         {"logprobs", s_.logprobs ? c.logprobs : json(nullptr)},
                         {"finish_reason", c.finish_reason}});
    }
  }
  j["choices"] = choices;
  const int64_t ct = completion_tokens();
  j["usage"] = {{"prompt_tokens", s_.prompt_tokens}, {"completion_tokens", ct}, {"total_tokens", s_.prompt_tokens + ct}};
  if (s_.chat) j["system_fingerprint"] = nullptr;
  return dump_json(j);
}

}  // namespace dsv2::server
