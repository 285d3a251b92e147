#pragma once
// Lexer of the Jinja subset (internal to jinja_parser.cpp): splits a template into text and the
// tokens of its {{ }} and {% %} tags, applying whitespace control as jinja2 does with trim_blocks
// and lstrip_blocks ('-' strips all whitespace on that side, '+' keeps it) and dropping comments.
#include <cstdint>
#include <string>
#include <vector>

namespace dsv2::jinja {

struct Token {
  enum Type { Text, ExprBegin, ExprEnd, StmtBegin, StmtEnd, Name, Str, Int, Float, Op, Eof };
  Type type;
  std::string s;
  int64_t i = 0;
  double f = 0;
  int line = 0;
};

// Throws dsv2::Error for an unclosed tag, comment or string, or a character no token starts with.
std::vector<Token> lex(const std::string& source);

}  // namespace dsv2::jinja
