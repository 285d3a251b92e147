#pragma once
// A Jinja subset for chat templates: lexer -> AST -> tree-walking evaluator.
//
// Semantics follow Python's jinja2 configured the way Hugging Face transformers renders chat
// templates (trim_blocks, lstrip_blocks, loop controls, raise_exception, a tojson without key
// sorting or HTML escaping), because that is how the checkpoints' templates are meant to be read.
// Anything outside the subset (an unknown statement, filter, test, method or function) is a
// dsv2::Error when the template is parsed, never something skipped at render time.
//
// Strings are UTF-8; length, indexing and slicing count code points, as Python does.
//
// The subset: {{ }}, {% %}, {# #}, whitespace control (-, +, trim_blocks, lstrip_blocks); if/elif/
// else; for (tuple targets, `if` filter, else, loop.index/index0/revindex/revindex0/first/last/
// length/previtem/nextitem, break/continue); set (names, namespace attributes, set blocks); macros
// with defaults and keyword arguments; literals (str, int, float, bool, none, list, tuple, dict);
// and/or/not, comparisons, in/not in, + - * / // % **, ~, conditional expressions, attributes,
// subscripts, slices; the filters, tests, methods and functions listed in jinja_builtins.cpp.
// Not supported (an error at parse): extends/block/include/import, call, filter blocks, with, raw,
// recursive loops, loop.cycle and other unknown methods, unknown filters, tests and functions.
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace dsv2::jinja {

struct Value;
using List = std::vector<Value>;

// Keys keep insertion order (Python dicts do, and tojson/items() show it).
struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value v);
};

struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  const Value* kwarg(const std::string& name) const;
};
using Function = std::function<Value(const CallArgs&)>;

struct Value {
  enum class Kind { Undefined, None, Bool, Int, Float, String, List, Dict, Function };
  Kind kind = Kind::Undefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;                    // String; for Undefined the name that was looked up
  std::shared_ptr<List> list;       // shared: Python reference semantics
  std::shared_ptr<Dict> dict;       // also namespace() objects (is_namespace)
  std::shared_ptr<Function> fn;
  bool is_namespace = false;
  bool is_tuple = false;  // a List that Python would hold as a tuple (items(), tuple literals): repr only

  static Value undefined(std::string name = {});
  static Value none();
  static Value boolean(bool v);
  static Value integer(int64_t v);
  static Value number(double v);
  static Value string(std::string v);
  static Value make_list(List v = {});
  static Value make_dict();
  static Value function(Function f);
  // ordered_json keeps object keys in document order (as Python dicts do); json sorts them.
  static Value from_json(const nlohmann::json& j);
  static Value from_json(const nlohmann::ordered_json& j);

  bool is_undefined() const { return kind == Kind::Undefined; }
  bool is_none() const { return kind == Kind::None; }
  bool is_string() const { return kind == Kind::String; }
  bool is_number() const { return kind == Kind::Int || kind == Kind::Float; }
  bool is_list() const { return kind == Kind::List; }
  bool is_dict() const { return kind == Kind::Dict; }
  bool truthy() const;
  double as_double() const { return kind == Kind::Int ? double(i) : f; }
  const char* type_name() const;
};

// Python str() of a value (what {{ }} prints; Undefined prints as nothing).
std::string to_str(const Value& v);
// Python repr(), used for containers' str().
std::string to_repr(const Value& v);
// json.dumps(v, ensure_ascii=False, indent=indent) (indent < 0: single line).
std::string to_json(const Value& v, int indent = -1);
bool equals(const Value& a, const Value& b);

// UTF-8 <-> code points (invalid bytes map to U+FFFD).
std::u32string utf8_decode(const std::string& s);
std::string utf8_encode(const std::u32string& s);

// ---- AST ----
struct Expr;
using ExprPtr = std::unique_ptr<Expr>;
struct Expr {
  enum class Kind { Literal, Name, List, Dict, Attr, Index, Slice, Call, Filter, Test, Unary, Binary, Cond };
  Kind kind;
  int line = 0;
  Value literal;
  std::string name;  // Name / Attr / Filter / Test name, Unary and Binary operator
  std::vector<ExprPtr> args;  // operands, list items, dict keys/values interleaved, call/filter args
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  int depth = 1;         // height of the tree below, bounded by the parser
  bool negated = false;  // "is not"; for a List, a tuple literal
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;
struct Node {
  enum class Kind { Text, Output, If, For, Set, SetBlock, Macro, Break, Continue };
  Kind kind;
  int line = 0;
  std::string text;                          // Text; Set/SetBlock target name; Macro name
  std::string attr;                          // Set target attribute (ns.attr)
  ExprPtr expr;                              // Output, Set value, For iterable
  ExprPtr filter;                            // For ... if filter
  std::vector<std::string> targets;          // For loop variables
  std::vector<std::pair<ExprPtr, Body>> branches;  // If: (condition, body)...
  Body body, else_body;                      // For, SetBlock, Macro; If/For else
  std::vector<std::pair<std::string, ExprPtr>> params;  // Macro parameters with defaults (may be null)
};

struct Program {
  Body body;
};

// Parses a template; throws dsv2::Error naming the construct and line for anything unsupported.
Program parse(const std::string& source);

// Renders with the given top-level variables. raise_exception() and template errors throw
// dsv2::Error.
std::string render(const Program& program, const std::map<std::string, Value>& globals);

// Names known to the evaluator, used by the parser to reject unsupported ones at load.
bool is_known_filter(const std::string& name);
bool is_known_test(const std::string& name);
bool is_known_method(const std::string& name);
bool is_known_global_function(const std::string& name);

// Builtins, implemented in jinja_builtins.cpp.
Value apply_filter(const std::string& name, const Value& v, const CallArgs& args, int line);
bool apply_test(const std::string& name, const Value& v, const CallArgs& args, int line);
Value call_method(const Value& obj, const std::string& name, const CallArgs& args, int line);
// raise_exception, namespace, range, dict: added to the globals of every render.
void add_global_functions(std::map<std::string, Value>& globals);

}  // namespace dsv2::jinja
