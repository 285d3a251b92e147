// OpenAI request parsing, SSE framing and stop handling of the server layer, without sockets.
#include <filesystem>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "server/completion_session.h"
#include "server/metrics.h"
#include "server/openai_request.h"

namespace dsv2::server {
namespace {

using nlohmann::json;

Tokenizer fixture_tokenizer() {
  static Tokenizer t = Tokenizer::from_folder(std::filesystem::path(DSV2_TEST_DATA) / "server/model");
  return t;
}
// The fixture is one token per byte: ids 2.. for bytes, skipping 0xC0 and 0xC1.
int32_t byte_id(unsigned char b) { return b < 0xC0 ? int32_t(b) + 2 : int32_t(b); }

ApiError parse_error(const std::string& body, bool chat) {
  try {
    parse_completion_request(body, chat, SamplingParams{});
  } catch (const ApiError& e) {
    return e;
  }
  return ApiError(0, "no error");
}

TEST(OpenAIRequest, ParsesEveryChatField) {
  SamplingParams defaults;
  defaults.temperature = 0.3f;
  defaults.top_p = 0.95f;
  auto r = parse_completion_request(R"({"model":"m","messages":[{"role":"developer","content":"sys"},
      {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},{"role":"assistant","content":null}],
      "n":2,"max_completion_tokens":7,"stop":["x","",".."],"stream":true,"stream_options":{"include_usage":true},
      "seed":-1,"presence_penalty":0.5,"frequency_penalty":-0.5,"logprobs":true,"top_logprobs":4,"some_new_field":[1,2]})",
                                    true, defaults);
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.messages.size(), 3u);
  EXPECT_EQ(r.messages[0]["role"], "system");
  EXPECT_EQ(r.messages[1]["content"], "ab");
  EXPECT_EQ(r.messages[2]["content"], "");
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"x", ".."}));
  EXPECT_TRUE(r.stream && r.include_usage && r.logprobs);
  EXPECT_EQ(r.top_logprobs, 4);
  EXPECT_TRUE(r.sampling.has_seed);
  EXPECT_EQ(r.sampling.seed, ~uint64_t(0));
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.3f);  // generation_config default kept
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.95f);
  EXPECT_FLOAT_EQ(r.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.frequency_penalty, -0.5f);
}

TEST(OpenAIRequest, ParsesCompletionPrompts) {
  auto a = parse_completion_request(R"({"prompt":"hi","logprobs":3,"echo":true,"max_tokens":null})", false, {});
  EXPECT_EQ(a.prompt_texts, std::vector<std::string>{"hi"});
  EXPECT_TRUE(a.logprobs);
  EXPECT_EQ(a.top_logprobs, 3);
  EXPECT_TRUE(a.echo);
  EXPECT_FALSE(a.max_tokens.has_value());
  auto b = parse_completion_request(R"({"prompt":[[1,2],[3]]})", false, {});
  EXPECT_EQ(b.prompt_ids, (std::vector<std::vector<int32_t>>{{1, 2}, {3}}));
  auto c = parse_completion_request(R"({"prompt":[5,6,7],"temperature":0})", false, {});
  EXPECT_EQ(c.prompt_ids, (std::vector<std::vector<int32_t>>{{5, 6, 7}}));
  EXPECT_TRUE(c.sampling.greedy());
}

TEST(OpenAIRequest, InvalidValuesNameTheParameter) {
  struct Case {
    const char* body;
    bool chat;
    const char* param;
  };
  const Case cases[] = {
      {R"({"messages":[{"role":"user","content":"x"}],"temperature":2.5})", true, "temperature"},
      {R"({"messages":[{"role":"user","content":"x"}],"temperature":"1"})", true, "temperature"},
      {R"({"messages":[{"role":"user","content":"x"}],"top_p":1.5})", true, "top_p"},
      {R"({"messages":[{"role":"user","content":"x"}],"n":0})", true, "n"},
      {R"({"messages":[{"role":"user","content":"x"}],"n":2.5})", true, "n"},
      {R"({"messages":[{"role":"user","content":"x"}],"max_tokens":0})", true, "max_tokens"},
      {R"({"messages":[{"role":"user","content":"x"}],"stop":{"a":1}})", true, "stop"},
      {R"({"messages":[{"role":"user","content":"x"}],"stream":1})", true, "stream"},
      {R"({"messages":[{"role":"user","content":"x"}],"stream_options":{}})", true, "stream_options"},
      {R"({"messages":[{"role":"user","content":"x"}],"top_logprobs":21,"logprobs":true})", true, "top_logprobs"},
      {R"({"messages":[{"role":"user","content":"x"}],"seed":1.5})", true, "seed"},
      {R"({"messages":{}})", true, "messages"},
      {R"({"messages":[{"role":"robot","content":"x"}]})", true, "messages[0].role"},
      {R"({"messages":[{"role":"user"}]})", true, "messages[0].content"},
      {R"({"prompt":null})", false, "prompt"},
      {R"({"prompt":[1,-2]})", false, "prompt[1]"},
      {R"({"prompt":"x","logprobs":50})", false, "logprobs"},
  };
  for (const Case& c : cases) {
    ApiError e = parse_error(c.body, c.chat);
    EXPECT_EQ(e.status, 400) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << ": " << e.what();
    json j = json::parse(error_body(e));
    EXPECT_EQ(j["error"]["param"], c.param);
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  }
  ApiError bad = parse_error("{\"messages\": [", true);
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(bad.code, "invalid_json");
  EXPECT_EQ(parse_error("[]", true).status, 400);
}

EngineEvent token(int32_t id, int choice = 0) {
  EngineEvent e;
  e.kind = EngineEvent::Kind::token;
  e.choice = choice;
  e.token.id = id;
  e.token.logprob = -0.5f;
  return e;
}
EngineEvent finish(const char* reason, int choice = 0) {
  EngineEvent e;
  e.kind = EngineEvent::Kind::finish;
  e.choice = choice;
  e.finish_reason = reason;
  return e;
}
std::vector<json> sse_events(const std::string& frames, bool* saw_done = nullptr) {
  std::vector<json> out;
  size_t pos = 0;
  while (pos < frames.size()) {
    size_t end = frames.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "every frame ends with a blank line";
    if (end == std::string::npos) break;
    std::string f = frames.substr(pos, end - pos);
    EXPECT_EQ(f.rfind("data: ", 0), 0u) << f;
    if (f == "data: [DONE]") {
      if (saw_done) *saw_done = true;
    } else {
      out.push_back(json::parse(f.substr(6)));
    }
    pos = end + 2;
  }
  return out;
}

TEST(CompletionSession, StreamsChatAsOpenAIFramesIt) {
  Tokenizer tok = fixture_tokenizer();
  SessionSetup s;
  s.chat = true;
  s.id = "chatcmpl-1";
  s.model = "m";
  s.created = 42;
  s.stream = true;
  s.include_usage = true;
  s.prompt_tokens = 9;
  CompletionSession cs(tok, s);
  std::string frames = cs.stream_start();
  std::vector<int32_t> stops;
  // "hé!" where é is two bytes: the first byte alone yields no text yet.
  const std::string text = "h\xc3\xa9!";
  std::vector<EngineEvent> evs;
  for (unsigned char b : text) evs.push_back(token(byte_id(b)));
  evs.push_back(token(1));  // EOS: a stop token has no text
  evs.back().stop_token = true;
  evs.push_back(finish("stop"));
  cs.on_events(evs, frames, stops);
  EXPECT_TRUE(cs.done());
  EXPECT_TRUE(stops.empty());
  frames += cs.stream_end();
  bool saw_done = false;
  auto ev = sse_events(frames, &saw_done);
  EXPECT_TRUE(saw_done);
  EXPECT_EQ(frames.substr(frames.size() - 14), "data: [DONE]\n\n");
  ASSERT_EQ(ev.size(), 6u);  // role, "h", "é", "!", finish, usage
  EXPECT_EQ(ev[0]["choices"][0]["delta"], json({{"role", "assistant"}, {"content", ""}}));
  std::string joined;
  for (size_t i = 1; i <= 3; ++i) {
    EXPECT_EQ(ev[i]["object"], "chat.completion.chunk");
    EXPECT_EQ(ev[i]["id"], "chatcmpl-1");
    EXPECT_TRUE(ev[i]["usage"].is_null());
    EXPECT_TRUE(ev[i]["choices"][0]["finish_reason"].is_null());
    joined += ev[i]["choices"][0]["delta"]["content"].get<std::string>();
  }
  EXPECT_EQ(joined, text);
  EXPECT_EQ(ev[4]["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(ev[4]["choices"][0]["delta"], json::object());
  EXPECT_EQ(ev[5]["choices"], json::array());
  EXPECT_EQ(ev[5]["usage"], json({{"prompt_tokens", 9}, {"completion_tokens", 5}, {"total_tokens", 14}}));
}

TEST(CompletionSession, StopStringAcrossTokensIsHeldBackAndCut) {
  Tokenizer tok = fixture_tokenizer();
  SessionSetup s;
  s.chat = false;
  s.stream = true;
  s.stop = {"lo w"};
  s.n = 2;
  CompletionSession cs(tok, s);
  std::string frames = cs.stream_start();
  std::vector<int32_t> stops;
  std::vector<EngineEvent> evs;
  for (unsigned char b : std::string("hello world")) evs.push_back(token(byte_id(b), 0));
  for (unsigned char b : std::string("help")) evs.push_back(token(byte_id(b), 1));
  evs.push_back(finish("length", 1));
  cs.on_events(evs, frames, stops);
  EXPECT_EQ(stops, std::vector<int32_t>{0});
  cs.on_events(std::vector<EngineEvent>{finish("length", 0)}, frames, stops);  // ignored: choice 0 stopped
  EXPECT_TRUE(cs.done());
  std::string t0, t1;
  std::vector<std::string> reasons(2);
  for (auto& e : sse_events(frames)) {
    auto& c = e["choices"][0];
    (c["index"] == 0 ? t0 : t1) += c["text"].get<std::string>();
    if (!c["finish_reason"].is_null()) reasons[c["index"].get<size_t>()] = c["finish_reason"];
  }
  EXPECT_EQ(t0, "hel");
  EXPECT_EQ(t1, "help");
  EXPECT_EQ(reasons, (std::vector<std::string>{"stop", "length"}));
}

TEST(CompletionSession, NonStreamingBodyWithLogprobs) {
  Tokenizer tok = fixture_tokenizer();
  SessionSetup s;
  s.chat = true;
  s.id = "x";
  s.logprobs = true;
  s.top_logprobs = 1;
  s.prompt_tokens = 3;
  CompletionSession cs(tok, s);
  std::string frames;
  std::vector<int32_t> stops;
  EngineEvent a = token(byte_id('o'));
  a.token.top = {{byte_id('o'), -0.5f}};
  EngineEvent b = token(byte_id('k'));
  b.token.top = {{byte_id('x'), -0.1f}};
  cs.on_events(std::vector<EngineEvent>{a, b, finish("length")}, frames, stops);
  EXPECT_TRUE(frames.empty());
  json j = json::parse(cs.response_body());
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "ok");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  auto& lp = j["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(lp.size(), 2u);
  EXPECT_EQ(lp[0]["token"], "o");
  EXPECT_EQ(lp[0]["bytes"], json::array({int('o')}));
  EXPECT_EQ(lp[1]["top_logprobs"][0]["token"], "x");
  EXPECT_EQ(j["usage"]["completion_tokens"], 2);
  EXPECT_EQ(j["usage"]["total_tokens"], 5);
}

TEST(Metrics, PrometheusTextWithCumulativeHistograms) {
  Metrics m;
  m.request_done("/v1/completions", 200);
  m.request_done("/v1/completions", 200);
  m.add_tokens(10, 4);
  m.ttft.observe(0.003);
  m.ttft.observe(0.2);
  m.ttft.observe(100);
  EngineStats s;
  s.blocks_total = 10;
  s.blocks_used = 3;
  s.blocks_free = 5;
  s.blocks_cached = 2;
  s.prompt_tokens = 200;
  s.prefix_hit_tokens = 50;
  std::string t = m.render(s);
  EXPECT_NE(t.find("dsv2_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 2\n"), std::string::npos);
  EXPECT_NE(t.find("dsv2_prompt_tokens_total 10\n"), std::string::npos);
  EXPECT_NE(t.find("dsv2_generation_tokens_total 4\n"), std::string::npos);
  EXPECT_NE(t.find("dsv2_cache_blocks_used 3\n"), std::string::npos);
  EXPECT_NE(t.find("dsv2_cache_blocks_free 5\n"), std::string::npos);
  EXPECT_NE(t.find("dsv2_prefix_cache_hit_rate 0.25\n"), std::string::npos);
  EXPECT_NE(t.find("dsv2_time_to_first_token_seconds_bucket{le=\"0.005\"} 1\n"), std::string::npos);
  EXPECT_NE(t.find("dsv2_time_to_first_token_seconds_bucket{le=\"0.25\"} 2\n"), std::string::npos);
  EXPECT_NE(t.find("dsv2_time_to_first_token_seconds_bucket{le=\"60\"} 2\n"), std::string::npos);
  EXPECT_NE(t.find("dsv2_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3\n"), std::string::npos);
  EXPECT_NE(t.find("dsv2_time_to_first_token_seconds_count 3\n"), std::string::npos);
  EXPECT_NE(t.find("# TYPE dsv2_inter_token_latency_seconds histogram\n"), std::string::npos);
}

}  // namespace
}  // namespace dsv2::server
