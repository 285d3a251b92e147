#include "tokenizer/pretok.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace dsv2 {

namespace {

// Per-thread PCRE2 match state: a one-pair match block (only the whole match is needed) and a
// JIT stack large enough for long runs of whitespace or letters.
struct MatchState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mc = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchState() {
    md = pcre2_match_data_create(1, nullptr);
    mc = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (mc && stack) pcre2_jit_stack_assign(mc, nullptr, stack);
  }
  ~MatchState() {
    pcre2_match_data_free(md);
    pcre2_match_context_free(mc);
    pcre2_jit_stack_free(stack);
  }
};

MatchState& match_state() {
  thread_local MatchState s;
  return s;
}

// Oniguruma's Ruby syntax reads \h as a hex digit, PCRE2 as horizontal space: refuse rather than
// silently match something else.
void check_supported_syntax(const std::string& p) {
  for (size_t i = 0; i + 1 < p.size(); ++i) {
    if (p[i] != '\\') continue;
    char c = p[i + 1];
    if (c == 'h' || c == 'H' || c == 'G' || c == 'K' || c == 'R' || c == 'X' || c == 'y' || c == 'Y')
      fail("tokenizer.json: regex \"{}\" uses \\{}, whose meaning differs between Oniguruma and PCRE2; "
           "this pattern is not supported",
           p, c);
    ++i;
  }
}

const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace

Regex::Regex(const std::string& pattern) : pattern_(pattern) {
  check_supported_syntax(pattern);
  int err = 0;
  PCRE2_SIZE erroff = 0;
  pcre2_compile_context* cc = pcre2_compile_context_create(nullptr);
  pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                             PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &err, &erroff, cc);
  pcre2_compile_context_free(cc);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    fail("tokenizer.json: cannot compile regex \"{}\" at offset {}: {}", pattern, erroff,
         reinterpret_cast<const char*>(msg));
  }
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

bool Regex::find(std::string_view subject, size_t start, size_t& begin, size_t& end) const {
  MatchState& st = match_state();
  auto* code = static_cast<pcre2_code*>(code_);
  auto subj = reinterpret_cast<PCRE2_SPTR>(subject.data());
  // The caller guarantees valid UTF-8 (checked once per encode), so skip PCRE2's own check.
  int rc = jit_ ? pcre2_jit_match(code, subj, subject.size(), start, PCRE2_NO_UTF_CHECK, st.md, st.mc)
                : pcre2_match(code, subj, subject.size(), start, PCRE2_NO_UTF_CHECK, st.md, st.mc);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(rc, msg, sizeof(msg));
    fail("tokenizer: regex \"{}\" failed on a {}-byte piece: {}", pattern_, subject.size(),
         reinterpret_cast<const char*>(msg));
  }
  PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
  begin = ov[0];
  end = ov[1];
  return true;
}

struct PreTokenizer::Step {
  std::unique_ptr<Regex> re;  // null: literal
  std::string literal;
  SplitBehavior behavior = SplitBehavior::isolated;
  bool invert = false;

  // Splits text[b, e) and appends the resulting non-empty ranges to `out`.
  void apply(std::string_view text, uint32_t b, uint32_t e, Ranges& out,
             std::vector<std::pair<std::pair<uint32_t, uint32_t>, bool>>& segs) const {
    std::string_view piece = text.substr(b, e - b);
    segs.clear();
    uint32_t prev = 0;
    auto on_match = [&](size_t mb, size_t me) {
      if (prev != mb) segs.push_back({{prev, static_cast<uint32_t>(mb)}, false});
      segs.push_back({{static_cast<uint32_t>(mb), static_cast<uint32_t>(me)}, true});
      prev = static_cast<uint32_t>(me);
    };
    if (re) {
      re->for_each_match(piece, on_match);
    } else if (!literal.empty()) {
      size_t pos = 0;
      while ((pos = piece.find(literal, pos)) != std::string_view::npos) {
        on_match(pos, pos + literal.size());
        pos += literal.size();
      }
    }
    if (prev != piece.size()) segs.push_back({{prev, static_cast<uint32_t>(piece.size())}, false});
    if (invert)
      for (auto& s : segs) s.second = !s.second;

    size_t first = out.size();
    auto push = [&](uint32_t s, uint32_t t) { out.push_back({b + s, b + t}); };
    switch (behavior) {
      case SplitBehavior::isolated:
        for (auto& [r, m] : segs) push(r.first, r.second);
        break;
      case SplitBehavior::removed:
        for (auto& [r, m] : segs)
          if (!m) push(r.first, r.second);
        break;
      case SplitBehavior::merged_with_previous: {
        bool prev_match = false;
        for (auto& [r, m] : segs) {
          if (m && !prev_match && out.size() > first)
            out.back().second = b + r.second;
          else
            push(r.first, r.second);
          prev_match = m;
        }
        break;
      }
      case SplitBehavior::merged_with_next: {
        // Walk backwards: a delimiter joins the piece that follows it.
        std::vector<std::pair<uint32_t, uint32_t>> rev;
        bool prev_match = false;
        for (size_t k = segs.size(); k-- > 0;) {
          auto& [r, m] = segs[k];
          if (m && !prev_match && !rev.empty())
            rev.back().first = r.first;
          else
            rev.push_back(r);
          prev_match = m;
        }
        for (size_t k = rev.size(); k-- > 0;) push(rev[k].first, rev[k].second);
        break;
      }
      case SplitBehavior::contiguous: {
        bool prev_match = false;
        for (auto& [r, m] : segs) {
          if (m == prev_match && out.size() > first)
            out.back().second = b + r.second;
          else
            push(r.first, r.second);
          prev_match = m;
        }
        break;
      }
    }
    // Empty pieces never reach the model.
    size_t w = first;
    for (size_t k = first; k < out.size(); ++k)
      if (out[k].second > out[k].first) out[w++] = out[k];
    out.resize(w);
  }
};

PreTokenizer::PreTokenizer() = default;
PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

static SplitBehavior parse_behavior(const nlohmann::json& j) {
  std::string b = j.value("behavior", std::string("Isolated"));
  if (b == "Removed") return SplitBehavior::removed;
  if (b == "Isolated") return SplitBehavior::isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::merged_with_previous;
  if (b == "MergedWithNext") return SplitBehavior::merged_with_next;
  if (b == "Contiguous") return SplitBehavior::contiguous;
  fail("tokenizer.json: pre_tokenizer Split has unknown behavior \"{}\"", b);
}

void PreTokenizer::add_json_step(const nlohmann::json& j, int depth) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    fail("tokenizer.json: pre_tokenizer entry without a \"type\": {}", j.dump().substr(0, 200));
  if (byte_level_)
    fail("tokenizer.json: pre_tokenizer ByteLevel must be the last step of the chain (found \"{}\" after it)",
         j["type"].get<std::string>());
  std::string type = j["type"];
  if (type == "Sequence") {
    if (depth > 8) fail("tokenizer.json: pre_tokenizer Sequence nested too deeply");
    if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array())
      fail("tokenizer.json: pre_tokenizer Sequence without a \"pretokenizers\" array");
    for (const auto& s : j["pretokenizers"]) add_json_step(s, depth + 1);
  } else if (type == "Split") {
    auto step = std::make_unique<Step>();
    const auto& pat = j.at("pattern");
    if (pat.contains("Regex")) {
      step->re = std::make_unique<Regex>(pat["Regex"].get<std::string>());
    } else if (pat.contains("String")) {
      step->literal = pat["String"].get<std::string>();
    } else {
      fail("tokenizer.json: pre_tokenizer Split pattern must be {{\"Regex\": ..}} or {{\"String\": ..}}, got {}",
           pat.dump());
    }
    step->behavior = parse_behavior(j);
    step->invert = j.value("invert", false);
    steps_.push_back(std::move(step));
  } else if (type == "Digits") {
    // Rust's char::is_numeric is the N category; individual digits are isolated one by one,
    // otherwise runs of them are kept together.
    auto step = std::make_unique<Step>();
    step->re = std::make_unique<Regex>("\\p{N}");
    step->behavior = j.value("individual_digits", false) ? SplitBehavior::isolated : SplitBehavior::contiguous;
    steps_.push_back(std::move(step));
  } else if (type == "ByteLevel") {
    byte_level_ = true;
    add_prefix_space_ = j.value("add_prefix_space", true);
    if (j.value("use_regex", true)) byte_level_regex_ = std::make_unique<Regex>(kGpt2Pattern);
  } else {
    fail("tokenizer.json: pre_tokenizer type \"{}\" is not supported (supported: Sequence, Split, Digits, "
         "ByteLevel)",
         type);
  }
}

PreTokenizer PreTokenizer::from_json(const nlohmann::json& j) {
  PreTokenizer p;
  if (!j.is_null()) p.add_json_step(j, 0);
  return p;
}

void PreTokenizer::split(std::string_view text, std::string& buf, Ranges& words) const {
  Ranges cur, next;
  std::vector<std::pair<std::pair<uint32_t, uint32_t>, bool>> segs;
  if (!text.empty()) cur.push_back({0, static_cast<uint32_t>(text.size())});
  for (const auto& step : steps_) {
    next.clear();
    for (auto [b, e] : cur) step->apply(text, b, e, next, segs);
    cur.swap(next);
  }
  for (auto [b, e] : cur) {
    std::string_view piece = text.substr(b, e - b);
    size_t base = buf.size();
    if (add_prefix_space_ && piece.front() != ' ') buf += ' ';
    buf.append(piece);
    if (!byte_level_regex_) {
      words.push_back({static_cast<uint32_t>(base), static_cast<uint32_t>(buf.size())});
      continue;
    }
    std::string_view subject(buf.data() + base, buf.size() - base);
    size_t prev = 0;
    auto emit = [&](size_t s, size_t t) {
      if (t > s) words.push_back({static_cast<uint32_t>(base + s), static_cast<uint32_t>(base + t)});
    };
    byte_level_regex_->for_each_match(subject, [&](size_t mb, size_t me) {
      emit(prev, mb);
      emit(mb, me);
      prev = me;
    });
    emit(prev, subject.size());
  }
}

}  // namespace dsv2
