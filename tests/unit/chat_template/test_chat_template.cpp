// Chat templates rendered by dsv2's Jinja subset against two reference engines (Python's jinja2
// configured like transformers, and @huggingface/jinja), whose outputs tools/chat/render_*.{py,mjs}
// wrote to tests/data/chat/expected_*.json for every (template, conversation) pair.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/jinja.h"

namespace fs = std::filesystem;
using dsv2::ChatMessage;
using dsv2::ChatTemplate;
using json = nlohmann::ordered_json;

namespace {

const fs::path kData = fs::path(DSV2_TEST_DATA) / "chat";
const std::string kBos = "<｜begin▁of▁sentence｜>";
const std::string kEos = "<｜end▁of▁sentence｜>";

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  EXPECT_TRUE(f.good()) << p;
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json read_json(const fs::path& p) { return json::parse(read_file(p)); }

ChatTemplate load(const std::string& name) { return ChatTemplate::parse(read_file(kData / "templates" / (name + ".jinja"))); }

// Renders every pair and compares with one engine's results; returns the number compared.
int compare_all(const json& expected) {
  json cases = read_json(kData / "conversations.json");
  std::map<std::string, ChatTemplate> templates;
  int compared = 0;
  for (const auto& c : cases) {
    for (const auto& tname : c["templates"]) {
      const std::string name = tname.get<std::string>();
      if (!templates.count(name)) templates.emplace(name, load(name));
      const std::string key = name + "/" + c["name"].get<std::string>();
      SCOPED_TRACE(key);
      if (!expected["results"].contains(key)) {
        ADD_FAILURE() << "no reference result for " << key;
        continue;
      }
      const json& want = expected["results"][key];
      json tools = c.contains("tools") ? c["tools"] : json(nullptr);
      auto render = [&] {
        return templates.at(name).render_json(c["messages"], c["add_generation_prompt"].get<bool>(),
                                              c["bos_token"].get<std::string>(), c["eos_token"].get<std::string>(),
                                              tools);
      };
      if (want.contains("error")) {
        try {
          std::string got = render();
          ADD_FAILURE() << "expected an error (" << want["error"] << ") but rendered:\n" << got;
        } catch (const dsv2::Error& e) {
          EXPECT_NE(std::string(e.what()).find(want["error"].get<std::string>()), std::string::npos) << e.what();
        }
      } else {
        EXPECT_EQ(render(), want["text"].get<std::string>());
      }
      ++compared;
    }
  }
  return compared;
}

TEST(ChatTemplate, ReferenceEnginesAgreeWithEachOther) {
  json py = read_json(kData / "expected_python.json"), node = read_json(kData / "expected_node.json");
  ASSERT_EQ(py["results"].size(), node["results"].size());
  for (auto it = py["results"].begin(); it != py["results"].end(); ++it) {
    EXPECT_EQ(it.value(), node["results"][it.key()]) << it.key();
  }
}

TEST(ChatTemplate, MatchesPythonJinja2) {
  EXPECT_GE(compare_all(read_json(kData / "expected_python.json")), 50);
}

TEST(ChatTemplate, MatchesHuggingFaceJinja) {
  EXPECT_GE(compare_all(read_json(kData / "expected_node.json")), 50);
}

// The V2 chat format as the model contract (reference section 4) spells it out.
TEST(ChatTemplate, DeepSeekV2FormatFromTokenizerConfig) {
  ChatTemplate t = ChatTemplate::from_tokenizer_config(kData / "deepseek_v2_tokenizer_config.json");
  EXPECT_EQ(t.bos_token(), kBos);
  EXPECT_EQ(t.eos_token(), kEos);
  std::vector<ChatMessage> msgs = {{"system", "SYS"}, {"user", "U1"}, {"assistant", "A1"}, {"user", "U2"}};
  EXPECT_EQ(t.render(msgs, true, t.bos_token(), t.eos_token()),
            kBos + "SYS\n\nUser: U1\n\nAssistant: A1" + kEos + "User: U2\n\nAssistant:");
  EXPECT_EQ(t.render(msgs, false, t.bos_token(), t.eos_token()),
            kBos + "SYS\n\nUser: U1\n\nAssistant: A1" + kEos + "User: U2\n\n");
}

TEST(ChatTemplate, DeepSeekV3StyleTemplate) {
  ChatTemplate t = load("deepseek_v3");
  std::vector<ChatMessage> msgs = {{"system", "S"}, {"user", "Q"}, {"assistant", "A"}, {"user", "Q2"}};
  EXPECT_EQ(t.render(msgs, true, kBos, kEos),
            kBos + "S<｜User｜>Q<｜Assistant｜>A" + kEos + "<｜User｜>Q2<｜Assistant｜>");
}

TEST(ChatTemplate, SharedAcrossThreadsAndCopies) {
  const ChatTemplate t = load("features_loops");
  ChatTemplate copy = t;
  EXPECT_EQ(copy.source(), t.source());
  const std::vector<ChatMessage> msgs = {{"system", "s"}, {"user", "u"}, {"assistant", "a"}};
  const std::string want = t.render(msgs, true, "<s>", "</s>");
  std::vector<std::string> got(4);
  std::vector<std::thread> threads;
  for (size_t k = 0; k < got.size(); ++k) {
    threads.emplace_back([&, k] {
      for (int i = 0; i < 200; ++i) got[k] = (k % 2 ? copy : t).render(msgs, true, "<s>", "</s>");
    });
  }
  for (auto& th : threads) th.join();
  for (const auto& g : got) EXPECT_EQ(g, want);
}

void expect_parse_error(const std::string& src, const std::string& needle) {
  try {
    ChatTemplate::parse(src);
    ADD_FAILURE() << "parsed without error: " << src;
  } catch (const dsv2::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "template: " << src << "\nerror: " << e.what();
  }
}

TEST(ChatTemplate, UnsupportedConstructsFailAtLoad) {
  expect_parse_error("{% include 'other.jinja' %}", "'{% include %}'");
  expect_parse_error("a\n{% extends 'base' %}", "line 2");
  expect_parse_error("{% call foo() %}x{% endcall %}", "'{% call %}'");
  expect_parse_error("{% filter upper %}x{% endfilter %}", "'{% filter %}'");
  expect_parse_error("{% with a = 1 %}{% endwith %}", "'{% with %}'");
  expect_parse_error("{% raw %}x{% endraw %}", "'{% raw %}'");
  expect_parse_error("{{ x | wordcount }}", "filter 'wordcount'");
  expect_parse_error("{{ x is sameas y }}", "test 'sameas'");
  expect_parse_error("{{ 'a'.format(1) }}", "method '.format()'");
  expect_parse_error("{{ strftime_now('%Y') }}", "function 'strftime_now()'");
  expect_parse_error("{% for x in y recursive %}{% endfor %}", "recursive");
  expect_parse_error("{% frobnicate %}", "'{% frobnicate %}'");
  expect_parse_error("{% if x %}unterminated", "endif");
  expect_parse_error("{{ x ", "unclosed tag");
  expect_parse_error("{# open comment", "unclosed comment");
  expect_parse_error("{{ 'abc }}", "unterminated string");
  expect_parse_error("{{ x + }}", "expected an expression");
  expect_parse_error("{% endfor %}", "endfor");
}

TEST(ChatTemplate, RenderErrorsAreReported) {
  auto render = [](const std::string& src) {
    return ChatTemplate::parse(src).render({{"user", "hi"}}, false, "", "");
  };
  EXPECT_THROW(render("{{ raise_exception('bad roles') }}"), dsv2::Error);
  try {
    render("{{ raise_exception('bad roles') }}");
  } catch (const dsv2::Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad roles"), std::string::npos);
  }
  EXPECT_THROW(render("{{ missing.attr }}"), dsv2::Error);
  EXPECT_THROW(render("{{ 'a' + 1 }}"), dsv2::Error);
  EXPECT_THROW(render("{% set x = 1 %}{% set x.y = 2 %}"), dsv2::Error);
  EXPECT_THROW(render("{{ 1 // 0 }}"), dsv2::Error);
  EXPECT_THROW(render("{% for a, b in [[1, 2, 3]] %}{% endfor %}"), dsv2::Error);
  EXPECT_THROW(render("{{ messages.append(1) }}"), dsv2::Error);
  // Limits instead of crashes or runaway memory.
  EXPECT_THROW(render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"), dsv2::Error);
  EXPECT_THROW(render("{{ 'ab' * 100000000 }}"), dsv2::Error);
  EXPECT_THROW(render("{{ 3 ** 100 }}"), dsv2::Error);
  EXPECT_THROW(render("{{ 9223372036854775807 + 1 }}"), dsv2::Error);
  EXPECT_EQ(render("{{ 3 ** 39 }} {{ (-2) ** 63 }}"), "4052555153018976267 -9223372036854775808");
  EXPECT_THROW(ChatTemplate::parse("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}"), dsv2::Error);
  EXPECT_THROW(ChatTemplate::parse("{{ " + std::string(5000, '[') + " }}"), dsv2::Error);
  std::string chain = "{{ 1", attrs = "{{ messages";
  for (int k = 0; k < 100000; ++k) {
    chain += " + 1";
    attrs += ".x";
  }
  EXPECT_THROW(ChatTemplate::parse(chain + " }}"), dsv2::Error);
  EXPECT_THROW(ChatTemplate::parse(attrs + " }}"), dsv2::Error);
  EXPECT_THROW(ChatTemplate::parse("{{ " + std::string(100000, '-') + "1 }}"), dsv2::Error);
  EXPECT_THROW(ChatTemplate::parse(std::string(100000, '{') + "% if x %}"), dsv2::Error);
  // Undefined values print as nothing, as in jinja2's default mode.
  EXPECT_EQ(render("[{{ nothing }}][{{ messages[5] }}][{{ messages[0].nope }}]"), "[][][]");
}

TEST(ChatTemplate, TokenizerConfigErrorsNameTheFile) {
  fs::path p = fs::temp_directory_path() / "dsv2_chat_bad_config.json";
  {
    std::ofstream(p) << R"({"chat_template": "{% include 'x' %}"})";
  }
  try {
    ChatTemplate::from_tokenizer_config(p);
    ADD_FAILURE() << "no error";
  } catch (const dsv2::Error& e) {
    EXPECT_NE(std::string(e.what()).find(p.string()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("include"), std::string::npos) << e.what();
  }
  {
    std::ofstream(p) << R"({"bos_token": "<s>"})";
  }
  EXPECT_THROW(ChatTemplate::from_tokenizer_config(p), dsv2::Error);
  {
    std::ofstream(p) << R"({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ bos_token }}"}], "bos_token": "<b>"})";
  }
  ChatTemplate t = ChatTemplate::from_tokenizer_config(p);
  EXPECT_EQ(t.render({}, false, t.bos_token(), ""), "D<b>");
  fs::remove(p);
}

// Re-runs a reference driver now and checks that it still produces the committed file, so the
// committed expectations cannot drift from the engines they claim to come from.
void rerun_driver(const std::string& cmd_prefix, const std::string& expected_file) {
  fs::path out = fs::temp_directory_path() / ("dsv2_chat_" + expected_file);
  std::string cmd = cmd_prefix + " > " + out.string() + " 2>/dev/null";
  int rc = std::system(cmd.c_str());
  ASSERT_EQ(rc, 0) << cmd;
  EXPECT_EQ(read_json(out), read_json(kData / expected_file));
  fs::remove(out);
}

TEST(ChatTemplate, NodeReferenceDriverReproducesCommittedResults) {
  fs::path src = DSV2_SOURCE_DIR;
  if (std::system("node --version > /dev/null 2>&1") != 0 ||
      !fs::exists(src / "tests/npm/node_modules/@huggingface/jinja/package.json")) {
    GTEST_SKIP() << "node or tests/npm/node_modules is not installed";
  }
  rerun_driver("node " + (src / "tools/chat/render_node.mjs").string(), "expected_node.json");
}

TEST(ChatTemplate, PythonReferenceDriverReproducesCommittedResults) {
  fs::path src = DSV2_SOURCE_DIR;
  if (std::system("/usr/bin/python3 -c 'import jinja2' > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "python3-jinja2 is not installed";
  }
  rerun_driver("/usr/bin/python3 " + (src / "tools/chat/render_python.py").string(), "expected_python.json");
  rerun_driver("/usr/bin/python3 " + (src / "tools/chat/fuzz_python.py").string() + " 500 1", "fuzz_python.json");
}

}  // namespace

namespace {

// Random templates over the whole subset (tools/chat/fuzz_python.py), rendered by python3-jinja2:
// dsv2 must produce the same text, or an error where jinja2 raised one.
TEST(ChatTemplate, RandomTemplatesMatchPythonJinja2) {
  json corpus = read_json(kData / "fuzz_python.json");
  std::map<std::string, dsv2::jinja::Value> globals;
  for (auto it = corpus["context"].begin(); it != corpus["context"].end(); ++it) {
    globals[it.key()] = dsv2::jinja::Value::from_json(it.value());
  }
  int mismatches = 0, checked = 0;
  for (const auto& c : corpus["cases"]) {
    const std::string src = c["template"].get<std::string>();
    std::string got, error;
    try {
      got = dsv2::jinja::render(dsv2::jinja::parse(src), globals);
    } catch (const dsv2::Error& e) {
      error = e.what();
    }
    ++checked;
    bool ok = c.contains("error") ? !error.empty() : (error.empty() && got == c["text"].get<std::string>());
    if (!ok && ++mismatches <= 15) {
      ADD_FAILURE() << "template:\n" << src << "\njinja2: " << (c.contains("error") ? c["error"] : c["text"])
                    << "\ndsv2:   " << (error.empty() ? json(got) : json("error: " + error));
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << checked;
  EXPECT_GE(checked, 500);
}

}  // namespace
