// Lexer and recursive-descent parser of the Jinja subset. Operator precedence follows jinja2's
// parser: conditional < or < and < not < comparisons/in < ~ < + - < * / // % < ** < unary -,
// with filters (|) and tests (is) binding to the primary they follow.
#include <algorithm>
#include <set>

#include "common/error.h"
#include "tokenizer/jinja.h"

namespace dsv2::jinja {
namespace {

struct Token {
  enum Type { Text, ExprBegin, ExprEnd, StmtBegin, StmtEnd, Name, Str, Int, Float, Op, Eof };
  Type type;
  std::string s;
  int64_t i = 0;
  double f = 0;
  int line = 0;
};

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

const std::set<std::string> kUnsupportedStatements = {
    "extends", "block", "include", "import", "from", "call", "filter", "with", "raw", "autoescape", "do",
    "trans", "generation", "endgeneration"};

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

  Program run() {
    Program prog;
    prog.body = parse_body({});
    if (peek().type != Token::Eof) {
      fail("chat template: unexpected '{{% {} %}}' at line {}", peek().s, peek().line);
    }
    for (const auto& [name, line] : called_) {
      if (!macros_.count(name) && !is_known_global_function(name)) {
        fail("chat template: unsupported function '{}()' at line {}", name, line);
      }
    }
    return prog;
  }

 private:
  const Token& peek(size_t ahead = 0) const { return t_[std::min(k_ + ahead, t_.size() - 1)]; }
  Token next() { return t_[std::min(k_++, t_.size() - 1)]; }
  bool is_op(const char* op, size_t ahead = 0) const {
    return peek(ahead).type == Token::Op && peek(ahead).s == op;
  }
  bool is_name(const char* name, size_t ahead = 0) const {
    return peek(ahead).type == Token::Name && peek(ahead).s == name;
  }
  bool accept_op(const char* op) {
    if (!is_op(op)) return false;
    ++k_;
    return true;
  }
  bool accept_name(const char* name) {
    if (!is_name(name)) return false;
    ++k_;
    return true;
  }
  [[noreturn]] void unexpected(const std::string& wanted) const {
    const Token& t = peek();
    std::string got = t.type == Token::Eof        ? "end of template"
                      : t.type == Token::ExprEnd  ? "'}}'"
                      : t.type == Token::StmtEnd  ? "'%}'"
                      : t.type == Token::Text     ? "text"
                                                  : "'" + t.s + "'";
    fail("chat template: expected {} but found {} at line {}", wanted, got, t.line);
  }
  void expect_op(const char* op) {
    if (!accept_op(op)) unexpected(std::string("'") + op + "'");
  }
  std::string expect_name() {
    if (peek().type != Token::Name) unexpected("a name");
    return next().s;
  }
  void expect(Token::Type type, const char* what) {
    if (peek().type != type) unexpected(what);
    ++k_;
  }

  // Parses nodes until a {% name %} with name in `until` (left unconsumed) or the end.
  Body parse_body(const std::set<std::string>& until) {
    Body body;
    while (true) {
      const Token& t = peek();
      if (t.type == Token::Eof) {
        if (!until.empty()) fail("chat template: missing '{{% {} %}}' at end of template", *until.rbegin());
        return body;
      }
      if (t.type == Token::Text) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Text;
        n->line = t.line;
        n->text = t.s;
        body.push_back(std::move(n));
        ++k_;
      } else if (t.type == Token::ExprBegin) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Output;
        n->line = t.line;
        ++k_;
        n->expr = parse_expr();
        expect(Token::ExprEnd, "'}}'");
        body.push_back(std::move(n));
      } else if (t.type == Token::StmtBegin) {
        const Token& name = peek(1);
        if (name.type != Token::Name) fail("chat template: expected a statement name at line {}", t.line);
        if (until.count(name.s)) {
          ++k_;  // leave the name for the caller
          return body;
        }
        ++k_;
        body.push_back(parse_statement());
      } else {
        unexpected("text or a tag");
      }
    }
  }

  // Called with the statement name as the next token.
  NodePtr parse_statement() {
    Token name = next();
    auto n = std::make_unique<Node>();
    n->line = name.line;
    if (name.s == "if") {
      n->kind = Node::Kind::If;
      ExprPtr cond = parse_expr();
      expect(Token::StmtEnd, "'%}'");
      while (true) {
        Body b = parse_body({"elif", "else", "endif"});
        n->branches.emplace_back(std::move(cond), std::move(b));
        std::string kw = next().s;
        if (kw == "elif") {
          cond = parse_expr();
          expect(Token::StmtEnd, "'%}'");
          continue;
        }
        if (kw == "else") {
          expect(Token::StmtEnd, "'%}'");
          n->else_body = parse_body({"endif"});
          next();
        }
        expect(Token::StmtEnd, "'%}'");
        break;
      }
    } else if (name.s == "for") {
      n->kind = Node::Kind::For;
      n->targets.push_back(expect_name());
      while (accept_op(",")) n->targets.push_back(expect_name());
      if (!accept_name("in")) unexpected("'in'");
      n->expr = parse_expr(false);
      if (accept_name("if")) n->filter = parse_expr(false);
      if (is_name("recursive")) fail("chat template: unsupported construct 'recursive' loop at line {}", name.line);
      expect(Token::StmtEnd, "'%}'");
      n->body = parse_body({"else", "endfor"});
      if (next().s == "else") {
        expect(Token::StmtEnd, "'%}'");
        n->else_body = parse_body({"endfor"});
        next();
      }
      expect(Token::StmtEnd, "'%}'");
    } else if (name.s == "set") {
      n->text = expect_name();
      if (accept_op(".")) n->attr = expect_name();
      if (is_op(",")) fail("chat template: unsupported construct 'set' with several targets at line {}", name.line);
      if (accept_op("=")) {
        n->kind = Node::Kind::Set;
        n->expr = parse_expr();
        expect(Token::StmtEnd, "'%}'");
      } else {
        if (!n->attr.empty()) unexpected("'='");
        n->kind = Node::Kind::SetBlock;
        if (is_op("|")) fail("chat template: unsupported construct filtered 'set' block at line {}", name.line);
        expect(Token::StmtEnd, "'%}'");
        n->body = parse_body({"endset"});
        next();
        expect(Token::StmtEnd, "'%}'");
      }
    } else if (name.s == "macro") {
      n->kind = Node::Kind::Macro;
      n->text = expect_name();
      expect_op("(");
      while (!accept_op(")")) {
        if (!n->params.empty()) expect_op(",");
        std::string p = expect_name();
        ExprPtr def;
        if (accept_op("=")) def = parse_expr();
        n->params.emplace_back(p, std::move(def));
      }
      expect(Token::StmtEnd, "'%}'");
      macros_.insert(n->text);
      n->body = parse_body({"endmacro"});
      next();
      expect(Token::StmtEnd, "'%}'");
    } else if (name.s == "break" || name.s == "continue") {
      n->kind = name.s == "break" ? Node::Kind::Break : Node::Kind::Continue;
      expect(Token::StmtEnd, "'%}'");
    } else if (kUnsupportedStatements.count(name.s)) {
      fail("chat template: unsupported construct '{{% {} %}}' at line {}", name.s, name.line);
    } else {
      fail("chat template: unknown or unexpected statement '{{% {} %}}' at line {}", name.s, name.line);
    }
    return n;
  }

  ExprPtr make(Expr::Kind kind, int line, std::string name = {}) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    e->name = std::move(name);
    return e;
  }
  ExprPtr binary(const std::string& op, ExprPtr a, ExprPtr b) {
    auto e = make(Expr::Kind::Binary, a->line, op);
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }

  ExprPtr parse_expr(bool with_cond = true) {
    ExprPtr e = parse_or();
    if (with_cond && is_name("if")) {
      ++k_;
      auto c = make(Expr::Kind::Cond, e->line);
      ExprPtr cond = parse_or();
      ExprPtr other = accept_name("else") ? parse_expr() : nullptr;
      c->args.push_back(std::move(cond));
      c->args.push_back(std::move(e));
      c->args.push_back(std::move(other));
      return c;
    }
    return e;
  }
  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (accept_name("or")) e = binary("or", std::move(e), parse_and());
    return e;
  }
  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (accept_name("and")) e = binary("and", std::move(e), parse_not());
    return e;
  }
  ExprPtr parse_not() {
    if (is_name("not")) {
      int line = next().line;
      auto e = make(Expr::Kind::Unary, line, "not");
      e->args.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }
  ExprPtr parse_compare() {
    ExprPtr e = parse_concat();
    while (true) {
      static const char* ops[] = {"==", "!=", "<=", ">=", "<", ">"};
      bool done = true;
      for (const char* op : ops) {
        if (accept_op(op)) {
          e = binary(op, std::move(e), parse_concat());
          done = false;
          break;
        }
      }
      if (!done) continue;
      if (accept_name("in")) {
        e = binary("in", std::move(e), parse_concat());
      } else if (is_name("not") && is_name("in", 1)) {
        k_ += 2;
        e = binary("not in", std::move(e), parse_concat());
      } else {
        return e;
      }
    }
  }
  ExprPtr parse_concat() {
    ExprPtr e = parse_math1();
    while (accept_op("~")) e = binary("~", std::move(e), parse_math1());
    return e;
  }
  ExprPtr parse_math1() {
    ExprPtr e = parse_math2();
    while (is_op("+") || is_op("-")) {
      std::string op = next().s;
      e = binary(op, std::move(e), parse_math2());
    }
    return e;
  }
  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      std::string op = next().s;
      e = binary(op, std::move(e), parse_pow());
    }
    return e;
  }
  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (accept_op("**")) e = binary("**", std::move(e), parse_unary(true));
    return e;
  }
  ExprPtr parse_unary(bool with_filter) {
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      Token op = next();
      e = make(Expr::Kind::Unary, op.line, op.s);
      e->args.push_back(parse_unary(false));
    } else {
      e = parse_postfix(parse_primary());
    }
    return with_filter ? parse_filter_expr(std::move(e)) : std::move(e);
  }

  ExprPtr parse_primary() {
    Token t = next();
    if (t.type == Token::Name) {
      if (t.s == "true" || t.s == "True") return literal(Value::boolean(true), t.line);
      if (t.s == "false" || t.s == "False") return literal(Value::boolean(false), t.line);
      if (t.s == "none" || t.s == "None") return literal(Value::none(), t.line);
      return make(Expr::Kind::Name, t.line, t.s);
    }
    if (t.type == Token::Str) {
      std::string s = t.s;
      while (peek().type == Token::Str) s += next().s;  // adjacent literals concatenate
      return literal(Value::string(s), t.line);
    }
    if (t.type == Token::Int) return literal(Value::integer(t.i), t.line);
    if (t.type == Token::Float) return literal(Value::number(t.f), t.line);
    if (t.type == Token::Op && t.s == "(") {
      if (accept_op(")")) {
        auto empty = make(Expr::Kind::List, t.line);
        empty->negated = true;
        return empty;
      }
      ExprPtr e = parse_expr();
      if (is_op(",")) {
        auto tuple = make(Expr::Kind::List, t.line);
        tuple->negated = true;  // a tuple literal
        tuple->args.push_back(std::move(e));
        while (accept_op(",")) {
          if (is_op(")")) break;
          tuple->args.push_back(parse_expr());
        }
        e = std::move(tuple);
      }
      expect_op(")");
      return e;
    }
    if (t.type == Token::Op && t.s == "[") {
      auto e = make(Expr::Kind::List, t.line);
      while (!accept_op("]")) {
        if (!e->args.empty()) {
          expect_op(",");
          if (accept_op("]")) break;
        }
        e->args.push_back(parse_expr());
      }
      return e;
    }
    if (t.type == Token::Op && t.s == "{") {
      auto e = make(Expr::Kind::Dict, t.line);
      while (!accept_op("}")) {
        if (!e->args.empty()) {
          expect_op(",");
          if (accept_op("}")) break;
        }
        e->args.push_back(parse_expr());
        expect_op(":");
        e->args.push_back(parse_expr());
      }
      return e;
    }
    --k_;
    unexpected("an expression");
  }

  ExprPtr literal(Value v, int line) {
    auto e = make(Expr::Kind::Literal, line);
    e->literal = std::move(v);
    return e;
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".")) {
        int line = next().line;
        if (peek().type == Token::Int) {
          auto idx = make(Expr::Kind::Index, line);
          idx->args.push_back(std::move(e));
          idx->args.push_back(literal(Value::integer(next().i), line));
          e = std::move(idx);
          continue;
        }
        auto a = make(Expr::Kind::Attr, line, expect_name());
        a->args.push_back(std::move(e));
        e = std::move(a);
      } else if (is_op("[")) {
        int line = next().line;
        ExprPtr parts[3];
        int colons = 0;
        while (!is_op("]")) {
          if (accept_op(":")) {
            if (++colons > 2) unexpected("']'");
            continue;
          }
          if (parts[colons]) unexpected("':' or ']'");
          parts[colons] = parse_expr();
        }
        expect_op("]");
        if (colons == 0) {
          if (!parts[0]) unexpected("a subscript");
          auto idx = make(Expr::Kind::Index, line);
          idx->args.push_back(std::move(e));
          idx->args.push_back(std::move(parts[0]));
          e = std::move(idx);
        } else {
          auto sl = make(Expr::Kind::Slice, line);
          sl->args.push_back(std::move(e));
          for (auto& p : parts) sl->args.push_back(std::move(p));
          e = std::move(sl);
        }
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  void parse_args(Expr& e) {
    expect_op("(");
    bool first = true;
    while (!accept_op(")")) {
      if (!first) {
        expect_op(",");
        if (accept_op(")")) break;
      }
      first = false;
      if (peek().type == Token::Name && is_op("=", 1)) {
        std::string key = next().s;
        ++k_;
        e.kwargs.emplace_back(key, parse_expr());
      } else {
        if (!e.kwargs.empty()) fail("chat template: positional argument after keyword argument at line {}", e.line);
        e.args.push_back(parse_expr());
      }
    }
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto c = make(Expr::Kind::Call, callee->line);
    if (callee->kind == Expr::Kind::Attr) {
      if (!is_known_method(callee->name)) {
        fail("chat template: unsupported method '.{}()' at line {}", callee->name, callee->line);
      }
    } else if (callee->kind == Expr::Kind::Name) {
      called_.emplace_back(callee->name, callee->line);
    } else {
      fail("chat template: unsupported call of a computed value at line {}", callee->line);
    }
    c->args.push_back(std::move(callee));
    parse_args(*c);
    return c;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (accept_op("|")) {
        Token name = next();
        if (name.type != Token::Name) fail("chat template: expected a filter name at line {}", name.line);
        std::string fname = name.s;
        while (is_op(".") && peek(1).type == Token::Name) {
          k_ += 1;
          fname += "." + next().s;
        }
        if (!is_known_filter(fname)) fail("chat template: unsupported filter '{}' at line {}", fname, name.line);
        auto f = make(Expr::Kind::Filter, name.line, fname);
        f->args.push_back(std::move(e));
        if (is_op("(")) parse_args(*f);
        e = std::move(f);
      } else if (is_name("is")) {
        int line = next().line;
        bool negated = accept_name("not");
        Token name = next();
        if (name.type != Token::Name) fail("chat template: expected a test name at line {}", line);
        if (!is_known_test(name.s)) fail("chat template: unsupported test '{}' at line {}", name.s, name.line);
        auto t = make(Expr::Kind::Test, line, name.s);
        t->negated = negated;
        t->args.push_back(std::move(e));
        if (is_op("(")) {
          parse_args(*t);
        } else {
          const Token& a = peek();
          bool arg_start = a.type == Token::Str || a.type == Token::Int || a.type == Token::Float ||
                           (a.type == Token::Op && (a.s == "[" || a.s == "{")) ||
                           (a.type == Token::Name && a.s != "else" && a.s != "or" && a.s != "and" &&
                            a.s != "if" && a.s != "in" && a.s != "not" && a.s != "is");
          if (arg_start) t->args.push_back(parse_postfix(parse_primary()));
        }
        e = std::move(t);
      } else {
        return e;
      }
    }
  }

  std::vector<Token> t_;
  size_t k_ = 0;
  std::set<std::string> macros_;
  std::vector<std::pair<std::string, int>> called_;
};

}  // namespace

Program parse(const std::string& source) {
  return Parser(Lexer(source).run()).run();
}

}  // namespace dsv2::jinja
