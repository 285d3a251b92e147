#include <algorithm>

#include "common/error.h"
#include "tokenizer/jinja.h"
#include "tokenizer/jinja_lexer.h"

namespace dsv2::jinja {
namespace {

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

class Lexer {
 public:
  explicit Lexer(std::string src) : src_(std::move(src)) {
    // keep_trailing_newline=False: one trailing newline of the template is dropped.
    if (!src_.empty() && src_.back() == '\n') {
      src_.pop_back();
      if (!src_.empty() && src_.back() == '\r') src_.pop_back();
    }
    for (size_t k = 0; k < src_.size(); ++k) {
      if (src_[k] == '\n') newlines_.push_back(k);
    }
  }

  std::vector<Token> run() {
    size_t pos = 0, n = src_.size();
    bool lstrip_next = false;
    while (pos < n) {
      size_t tag = pos;
      while (true) {
        tag = src_.find('{', tag);
        if (tag == std::string::npos || tag + 1 >= n) {
          tag = n;
          break;
        }
        char k = src_[tag + 1];
        if (k == '{' || k == '%' || k == '#') break;
        ++tag;
      }
      std::string text = src_.substr(pos, tag - pos);
      if (lstrip_next) {
        size_t a = 0;
        while (a < text.size() && is_ws(text[a])) ++a;
        text.erase(0, a);
        lstrip_next = false;
      }
      if (tag == n) {
        push_text(text, pos);
        break;
      }
      char kind = src_[tag + 1];
      size_t p = tag + 2;
      bool strip_before = p < n && src_[p] == '-';
      bool plus = p < n && src_[p] == '+';
      if (strip_before || plus) ++p;
      if (strip_before) {
        while (!text.empty() && is_ws(text.back())) text.pop_back();
      } else if (kind != '{' && !plus) {
        // lstrip_blocks: spaces and tabs between the start of a line and a block or comment tag.
        ptrdiff_t k = ptrdiff_t(tag) - 1;
        while (k >= 0 && (src_[k] == ' ' || src_[k] == '\t')) --k;
        if (k < 0 || src_[k] == '\n') {
          size_t cut = std::min(text.size(), tag - size_t(k + 1));
          text.erase(text.size() - cut);
        }
      }
      push_text(text, pos);
      if (kind == '#') {
        size_t end = src_.find("#}", p);
        if (end == std::string::npos) fail("chat template: unclosed comment opened at line {}", line_at(tag));
        bool strip_after = end > p && src_[end - 1] == '-';
        pos = end + 2;
        if (strip_after) {
          lstrip_next = true;
        } else {
          pos = trim_block_newline(pos);
        }
        continue;
      }
      tokens_.push_back({kind == '{' ? Token::ExprBegin : Token::StmtBegin, "", 0, 0, line_at(tag)});
      pos = lex_tag(p, kind, lstrip_next);
    }
    tokens_.push_back({Token::Eof, "", 0, 0, line_at(n)});
    return std::move(tokens_);
  }

 private:
  int line_at(size_t pos) const {
    return int(std::lower_bound(newlines_.begin(), newlines_.end(), pos) - newlines_.begin()) + 1;
  }

  void push_text(const std::string& text, size_t pos) {
    if (!text.empty()) tokens_.push_back({Token::Text, text, 0, 0, line_at(pos)});
  }

  // trim_blocks: the first newline after a block or comment tag is removed.
  size_t trim_block_newline(size_t pos) const {
    if (pos < src_.size() && src_[pos] == '\n') return pos + 1;
    if (pos + 1 < src_.size() && src_[pos] == '\r' && src_[pos + 1] == '\n') return pos + 2;
    return pos;
  }

  // Tokenizes the inside of {{ }} or {% %}; returns the position after the closing delimiter.
  size_t lex_tag(size_t p, char kind, bool& lstrip_next) {
    const size_t n = src_.size();
    const std::string close = kind == '{' ? "}}" : "%}";
    int depth = 0;
    while (true) {
      while (p < n && is_ws(src_[p])) ++p;
      if (p >= n) fail("chat template: unclosed tag at line {}", line_at(p));
      bool closable = kind == '%' || depth == 0;
      if (closable && src_.compare(p, 2, close) == 0) {
        tokens_.push_back({kind == '{' ? Token::ExprEnd : Token::StmtEnd, "", 0, 0, line_at(p)});
        p += 2;
        return kind == '%' ? trim_block_newline(p) : p;
      }
      if (kind == '%' && src_[p] == '+' && src_.compare(p + 1, 2, close) == 0) {
        tokens_.push_back({Token::StmtEnd, "", 0, 0, line_at(p)});  // "+%}": no trim_blocks here
        return p + 3;
      }
      if (closable && src_[p] == '-' && src_.compare(p + 1, 2, close) == 0) {
        tokens_.push_back({kind == '{' ? Token::ExprEnd : Token::StmtEnd, "", 0, 0, line_at(p)});
        lstrip_next = true;
        return p + 3;
      }
      int line = line_at(p);
      char c = src_[p];
      if (is_name_start(c)) {
        size_t a = p;
        while (p < n && (is_name_start(src_[p]) || is_digit(src_[p]))) ++p;
        tokens_.push_back({Token::Name, src_.substr(a, p - a), 0, 0, line});
      } else if (is_digit(c)) {
        size_t a = p;
        while (p < n && (is_digit(src_[p]) || src_[p] == '_')) ++p;
        bool is_float = false;
        if (p + 1 < n && src_[p] == '.' && is_digit(src_[p + 1])) {
          is_float = true;
          ++p;
          while (p < n && is_digit(src_[p])) ++p;
        }
        if (p < n && (src_[p] == 'e' || src_[p] == 'E')) {
          size_t q = p + 1;
          if (q < n && (src_[q] == '+' || src_[q] == '-')) ++q;
          if (q < n && is_digit(src_[q])) {
            is_float = true;
            p = q;
            while (p < n && is_digit(src_[p])) ++p;
          }
        }
        std::string num = src_.substr(a, p - a);
        num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
        Token t{is_float ? Token::Float : Token::Int, num, 0, 0, line};
        try {
          if (is_float) {
            t.f = std::stod(num);
          } else {
            t.i = std::stoll(num);
          }
        } catch (const std::exception&) {
          fail("chat template: number '{}' out of range at line {}", num, line);
        }
        tokens_.push_back(t);
      } else if (c == '\'' || c == '"') {
        tokens_.push_back({Token::Str, lex_string(p), 0, 0, line});
      } else {
        static const char* ops[] = {"**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "|",
                                    ".",  ",",  ":",  "(",  ")",  "[",  "]", "{", "}", "<", ">", "="};
        std::string op;
        for (const char* o : ops) {
          if (src_.compare(p, std::char_traits<char>::length(o), o) == 0) {
            op = o;
            break;
          }
        }
        if (op.empty()) fail("chat template: unexpected character '{}' at line {}", c, line);
        if (op == "(" || op == "[" || op == "{") ++depth;
        if (op == ")" || op == "]" || op == "}") --depth;
        p += op.size();
        tokens_.push_back({Token::Op, op, 0, 0, line});
      }
    }
  }

  // A quoted literal with Python's escapes (jinja2 decodes literals with unicode-escape).
  std::string lex_string(size_t& p) {
    const size_t n = src_.size();
    char q = src_[p++];
    int line = line_at(p);
    std::u32string out;
    std::string raw;
    auto flush = [&] {
      out += utf8_decode(raw);
      raw.clear();
    };
    while (true) {
      if (p >= n) fail("chat template: unterminated string literal at line {}", line);
      char c = src_[p];
      if (c == q) {
        ++p;
        break;
      }
      if (c != '\\') {
        raw += c;
        ++p;
        continue;
      }
      if (p + 1 >= n) fail("chat template: unterminated string literal at line {}", line);
      char e = src_[p + 1];
      p += 2;
      auto hex = [&](int digits) {
        if (p + digits > n) fail("chat template: truncated \\x/\\u escape at line {}", line);
        char32_t v = 0;
        for (int d = 0; d < digits; ++d) {
          char h = src_[p + d];
          int x = is_digit(h) ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10 : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
          if (x < 0) fail("chat template: bad escape digit '{}' at line {}", h, line);
          v = v * 16 + char32_t(x);
        }
        p += digits;
        flush();
        out += v;
      };
      switch (e) {
        case 'n': raw += '\n'; break;
        case 't': raw += '\t'; break;
        case 'r': raw += '\r'; break;
        case 'b': raw += '\b'; break;
        case 'f': raw += '\f'; break;
        case 'v': raw += '\v'; break;
        case 'a': raw += '\a'; break;
        case '0': raw += '\0'; break;
        case '\\': raw += '\\'; break;
        case '\'': raw += '\''; break;
        case '"': raw += '"'; break;
        case '\n': break;
        case 'x': hex(2); break;
        case 'u': hex(4); break;
        case 'U': hex(8); break;
        default:
          raw += '\\';
          raw += e;
      }
    }
    flush();
    return utf8_encode(out);
  }

  std::string src_;
  std::vector<size_t> newlines_;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> lex(const std::string& source) { return Lexer(source).run(); }

}  // namespace dsv2::jinja
