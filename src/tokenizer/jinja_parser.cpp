// Recursive-descent parser of the Jinja subset. Operator precedence follows jinja2's
// parser: conditional < or < and < not < comparisons/in < ~ < + - < * / // % < ** < unary -,
// with filters (|) and tests (is) binding to the primary they follow.
#include <algorithm>
#include <set>

#include "common/error.h"
#include "tokenizer/jinja.h"
#include "tokenizer/jinja_lexer.h"

namespace dsv2::jinja {
namespace {

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
    DepthGuard guard(depth_, peek().line);
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
    add(*e, std::move(a));
    add(*e, std::move(b));
    return e;
  }

  // Bounds the recursion of the descent, so a pathological template is an error, not a crash.
  struct DepthGuard {
    int& depth;
    DepthGuard(int& d, int line) : depth(d) {
      if (++depth > kMaxNesting) fail("chat template: nesting deeper than {} at line {}", kMaxNesting, line);
    }
    ~DepthGuard() { --depth; }
  };
  static constexpr int kMaxNesting = 200;

  // Adds an operand and tracks the tree's depth: long left-nested chains (a.b.c..., 1+1+1...) are
  // built by loops, not recursion, but evaluating or destroying them recurses.
  void add(Expr& parent, ExprPtr child) {
    if (child) {
      parent.depth = std::max(parent.depth, child->depth + 1);
      if (parent.depth > kMaxExprDepth) {
        fail("chat template: expression nested deeper than {} at line {}", kMaxExprDepth, parent.line);
      }
    }
    parent.args.push_back(std::move(child));
  }
  static constexpr int kMaxExprDepth = 400;

  ExprPtr parse_expr(bool with_cond = true) {
    DepthGuard guard(depth_, peek().line);
    ExprPtr e = parse_or();
    if (with_cond && is_name("if")) {
      ++k_;
      auto c = make(Expr::Kind::Cond, e->line);
      ExprPtr cond = parse_or();
      ExprPtr other = accept_name("else") ? parse_expr() : nullptr;
      add(*c, std::move(cond));
      add(*c, std::move(e));
      add(*c, std::move(other));
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
    DepthGuard guard(depth_, peek().line);
    if (is_name("not")) {
      int line = next().line;
      auto e = make(Expr::Kind::Unary, line, "not");
      add(*e, parse_not());
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
    DepthGuard guard(depth_, peek().line);
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      Token op = next();
      e = make(Expr::Kind::Unary, op.line, op.s);
      add(*e, parse_unary(false));
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
        add(*tuple, std::move(e));
        while (accept_op(",")) {
          if (is_op(")")) break;
          add(*tuple, parse_expr());
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
        add(*e, parse_expr());
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
        add(*e, parse_expr());
        expect_op(":");
        add(*e, parse_expr());
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
          add(*idx, std::move(e));
          add(*idx, literal(Value::integer(next().i), line));
          e = std::move(idx);
          continue;
        }
        auto a = make(Expr::Kind::Attr, line, expect_name());
        add(*a, std::move(e));
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
          add(*idx, std::move(e));
          add(*idx, std::move(parts[0]));
          e = std::move(idx);
        } else {
          auto sl = make(Expr::Kind::Slice, line);
          add(*sl, std::move(e));
          for (auto& p : parts) add(*sl, std::move(p));
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
        ExprPtr value = parse_expr();
        e.depth = std::max(e.depth, value->depth + 1);
        e.kwargs.emplace_back(key, std::move(value));
      } else {
        if (!e.kwargs.empty()) fail("chat template: positional argument after keyword argument at line {}", e.line);
        add(e, parse_expr());
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
    add(*c, std::move(callee));
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
        add(*f, std::move(e));
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
        add(*t, std::move(e));
        if (is_op("(")) {
          parse_args(*t);
        } else {
          const Token& a = peek();
          bool arg_start = a.type == Token::Str || a.type == Token::Int || a.type == Token::Float ||
                           (a.type == Token::Op && (a.s == "[" || a.s == "{")) ||
                           (a.type == Token::Name && a.s != "else" && a.s != "or" && a.s != "and" &&
                            a.s != "if" && a.s != "in" && a.s != "not" && a.s != "is");
          if (arg_start) add(*t, parse_postfix(parse_primary()));
        }
        e = std::move(t);
      } else {
        return e;
      }
    }
  }

  std::vector<Token> t_;
  size_t k_ = 0;
  int depth_ = 0;
  std::set<std::string> macros_;
  std::vector<std::pair<std::string, int>> called_;
};

}  // namespace

Program parse(const std::string& source) {
  return Parser(lex(source)).run();
}

}  // namespace dsv2::jinja
