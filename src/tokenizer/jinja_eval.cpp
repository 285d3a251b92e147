// Tree-walking evaluator of the Jinja subset. Scoping follows jinja2: a for loop body gets a fresh
// scope on every iteration (so a plain `set` inside a loop does not leak out, which is why templates
// use namespace()), `if` does not create a scope, and a macro sees the template's top-level
// variables plus its own arguments.
#include <cmath>

#include "common/error.h"
#include "tokenizer/jinja.h"

namespace dsv2::jinja {
namespace {

constexpr uint64_t kMaxRepeatUnits = uint64_t(1) << 26;  // bytes or items that '*' may produce
constexpr int kMaxCallDepth = 100;                        // nested macro calls

[[noreturn]] void type_error(const std::string& op, const Value& a, const Value& b, int line) {
  if (a.is_undefined()) fail("chat template: '{}' is undefined (line {})", a.s, line);
  if (b.is_undefined()) fail("chat template: '{}' is undefined (line {})", b.s, line);
  fail("chat template: unsupported operand types for {}: '{}' and '{}' (line {})", op, a.type_name(), b.type_name(),
       line);
}

bool numeric(const Value& v) { return v.is_number() || v.kind == Value::Kind::Bool; }
int64_t as_int(const Value& v) { return v.kind == Value::Kind::Bool ? int64_t(v.b) : v.i; }
double as_num(const Value& v) { return v.kind == Value::Kind::Bool ? double(v.b) : v.as_double(); }
bool both_int(const Value& a, const Value& b) { return a.kind != Value::Kind::Float && b.kind != Value::Kind::Float; }

int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

Value arithmetic(const std::string& op, const Value& a, const Value& b, int line) {
  if (op == "+") {
    if (a.is_string() && b.is_string()) return Value::string(a.s + b.s);
    if (a.is_list() && b.is_list()) {
      List l = *a.list;
      l.insert(l.end(), b.list->begin(), b.list->end());
      return Value::make_list(std::move(l));
    }
  }
  if (op == "*") {
    const Value* seq = a.is_string() || a.is_list() ? &a : b.is_string() || b.is_list() ? &b : nullptr;
    const Value* count = seq == &a ? &b : &a;
    if (seq && (count->kind == Value::Kind::Int || count->kind == Value::Kind::Bool)) {
      int64_t n = std::max<int64_t>(0, as_int(*count));
      size_t unit = seq->is_string() ? seq->s.size() : seq->list->size();
      if (unit > 0 && uint64_t(n) > kMaxRepeatUnits / unit) {
        fail("chat template: repetition of a {} {} times is too large (line {})", seq->type_name(), n, line);
      }
      if (seq->is_string()) {
        std::string s;
        for (int64_t k = 0; k < n; ++k) s += seq->s;
        return Value::string(s);
      }
      List l;
      for (int64_t k = 0; k < n; ++k) l.insert(l.end(), seq->list->begin(), seq->list->end());
      return Value::make_list(std::move(l));
    }
  }
  if (!numeric(a) || !numeric(b)) type_error(op, a, b, line);
  if (op == "/") {
    if (as_num(b) == 0) fail("chat template: division by zero (line {})", line);
    return Value::number(as_num(a) / as_num(b));
  }
  if (both_int(a, b)) {
    int64_t x = as_int(a), y = as_int(b);
    int64_t r;
    // Python integers do not overflow; rather than wrap around, refuse.
    auto overflow = [&] { fail("chat template: integer overflow in {} (line {})", op, line); };
    if (op == "+") return __builtin_add_overflow(x, y, &r) ? overflow(), Value() : Value::integer(r);
    if (op == "-") return __builtin_sub_overflow(x, y, &r) ? overflow(), Value() : Value::integer(r);
    if (op == "*") return __builtin_mul_overflow(x, y, &r) ? overflow(), Value() : Value::integer(r);
    if (op == "//" || op == "%") {
      if (y == 0) fail("chat template: integer division or modulo by zero (line {})", line);
      int64_t q = floor_div(x, y);
      return Value::integer(op == "//" ? q : x - q * y);
    }
    if (op == "**") {
      if (y >= 0) {
        int64_t acc = 1, base = x;
        for (int64_t e = y; e > 0; e >>= 1) {
          if ((e & 1) && __builtin_mul_overflow(acc, base, &acc)) overflow();
          if (e > 1 && __builtin_mul_overflow(base, base, &base)) overflow();
        }
        return Value::integer(acc);
      }
      return Value::number(std::pow(double(x), double(y)));
    }
  }
  double x = as_num(a), y = as_num(b);
  if (op == "+") return Value::number(x + y);
  if (op == "-") return Value::number(x - y);
  if (op == "*") return Value::number(x * y);
  if (op == "//" || op == "%") {
    if (y == 0) fail("chat template: float division or modulo by zero (line {})", line);
    double q = std::floor(x / y);
    return Value::number(op == "//" ? q : x - q * y);
  }
  if (op == "**") return Value::number(std::pow(x, y));
  fail("chat template: unknown operator '{}' (line {})", op, line);
}

bool less(const Value& a, const Value& b, const std::string& op, int line) {
  if (numeric(a) && numeric(b)) return as_num(a) < as_num(b);
  if (a.is_string() && b.is_string()) return a.s < b.s;  // UTF-8 byte order == code point order
  if (a.is_list() && b.is_list()) {
    size_t n = std::min(a.list->size(), b.list->size());
    for (size_t k = 0; k < n; ++k) {
      if (!equals((*a.list)[k], (*b.list)[k])) return less((*a.list)[k], (*b.list)[k], op, line);
    }
    return a.list->size() < b.list->size();
  }
  type_error(op, a, b, line);
}

bool contains(const Value& container, const Value& item, int line) {
  switch (container.kind) {
    case Value::Kind::String:
      if (!item.is_string()) type_error("in", item, container, line);
      return container.s.find(item.s) != std::string::npos;
    case Value::Kind::List:
      for (const auto& e : *container.list) {
        if (equals(e, item)) return true;
      }
      return false;
    case Value::Kind::Dict:
      if (item.is_list() || item.is_dict()) {
        fail("chat template: unhashable type: '{}' (line {})", item.type_name(), line);
      }
      return item.is_string() && container.dict->find(item.s) != nullptr;
    case Value::Kind::Undefined: return false;
    default: type_error("in", item, container, line);
  }
}

// Python's slice.indices + iteration over [start, stop) with step.
std::vector<int64_t> slice_indices(int64_t len, const Value* start, const Value* stop, const Value* step, int line) {
  auto get = [&](const Value* v, bool& present) -> int64_t {
    present = v && !v->is_none() && !v->is_undefined();
    if (!present) return 0;
    if (v->kind != Value::Kind::Int && v->kind != Value::Kind::Bool) {
      fail("chat template: slice indices must be integers, got {} (line {})", v->type_name(), line);
    }
    return as_int(*v);
  };
  bool has;
  int64_t st = get(step, has);
  if (!has) st = 1;
  if (st == 0) fail("chat template: slice step cannot be zero (line {})", line);
  int64_t lo, hi;
  int64_t b = get(start, has);
  if (!has) {
    lo = st > 0 ? 0 : len - 1;
  } else {
    if (b < 0) b += len;
    lo = st > 0 ? std::clamp<int64_t>(b, 0, len) : std::clamp<int64_t>(b, -1, len - 1);
  }
  int64_t e = get(stop, has);
  if (!has) {
    hi = st > 0 ? len : -1;
  } else {
    if (e < 0) e += len;
    hi = st > 0 ? std::clamp<int64_t>(e, 0, len) : std::clamp<int64_t>(e, -1, len - 1);
  }
  std::vector<int64_t> out;
  for (int64_t k = lo; st > 0 ? k < hi : k > hi; k += st) out.push_back(k);
  return out;
}

class Evaluator {
 public:
  explicit Evaluator(const std::map<std::string, Value>& globals) { frames_.push_back(globals); }

  enum class Flow { Normal, Break, Continue };

  Flow exec(const Body& body, std::string& out) {
    for (const auto& n : body) {
      Flow f = exec(*n, out);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

 private:
  Flow exec(const Node& n, std::string& out) {
    switch (n.kind) {
      case Node::Kind::Text: out += n.text; return Flow::Normal;
      case Node::Kind::Output: out += to_str(eval(*n.expr)); return Flow::Normal;
      case Node::Kind::If:
        for (const auto& [cond, body] : n.branches) {
          if (eval(*cond).truthy()) return exec(body, out);
        }
        return exec(n.else_body, out);
      case Node::Kind::For: return exec_for(n, out);
      case Node::Kind::Set: assign(n, eval(*n.expr)); return Flow::Normal;
      case Node::Kind::SetBlock: {
        std::string captured;
        exec(n.body, captured);
        assign(n, Value::string(captured));
        return Flow::Normal;
      }
      case Node::Kind::Macro: {
        const Node* node = &n;
        frames_.back()[n.text] = Value::function([this, node](const CallArgs& a) { return call_macro(*node, a); });
        return Flow::Normal;
      }
      case Node::Kind::Break: return Flow::Break;
      case Node::Kind::Continue: return Flow::Continue;
    }
    return Flow::Normal;
  }

  void assign(const Node& n, Value v) {
    if (n.attr.empty()) {
      frames_.back()[n.text] = std::move(v);
      return;
    }
    Value target = lookup(n.text);
    if (!(target.is_dict() && target.is_namespace)) {
      fail("chat template: cannot assign attribute '{}' of '{}' (a {}, not a namespace) at line {}", n.attr, n.text,
           target.type_name(), n.line);
    }
    target.dict->set(n.attr, std::move(v));
  }

  Value lookup(const std::string& name) const {
    for (auto it = frames_.rbegin(); it != frames_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    return Value::undefined(name);
  }

  static List iterate(const Value& v, int line) {
    switch (v.kind) {
      case Value::Kind::List: return *v.list;
      case Value::Kind::Undefined: return {};
      case Value::Kind::Dict: {
        if (v.is_namespace) break;
        List keys;
        for (const auto& kv : v.dict->items) keys.push_back(Value::string(kv.first));
        return keys;
      }
      case Value::Kind::String: {
        List chars;
        for (char32_t c : utf8_decode(v.s)) chars.push_back(Value::string(utf8_encode(std::u32string(1, c))));
        return chars;
      }
      default: break;
    }
    fail("chat template: '{}' object is not iterable (line {})", v.type_name(), line);
  }

  void bind_targets(std::map<std::string, Value>& frame, const std::vector<std::string>& targets, const Value& item,
                    int line) {
    if (targets.size() == 1) {
      frame[targets[0]] = item;
      return;
    }
    List parts = iterate(item, line);
    if (parts.size() != targets.size()) {
      fail("chat template: cannot unpack {} values into {} loop variables (line {})", parts.size(), targets.size(),
           line);
    }
    for (size_t k = 0; k < targets.size(); ++k) frame[targets[k]] = parts[k];
  }

  Flow exec_for(const Node& n, std::string& out) {
    List items = iterate(eval(*n.expr), n.line);
    if (n.filter) {
      List kept;
      for (const auto& item : items) {
        frames_.emplace_back();
        bind_targets(frames_.back(), n.targets, item, n.line);
        bool keep = eval(*n.filter).truthy();
        frames_.pop_back();
        if (keep) kept.push_back(item);
      }
      items = std::move(kept);
    }
    const int64_t len = int64_t(items.size());
    for (int64_t k = 0; k < len; ++k) {
      frames_.emplace_back();
      Value loop = Value::make_dict();
      loop.dict->set("index", Value::integer(k + 1));
      loop.dict->set("index0", Value::integer(k));
      loop.dict->set("revindex", Value::integer(len - k));
      loop.dict->set("revindex0", Value::integer(len - k - 1));
      loop.dict->set("first", Value::boolean(k == 0));
      loop.dict->set("last", Value::boolean(k == len - 1));
      loop.dict->set("length", Value::integer(len));
      loop.dict->set("previtem", k > 0 ? items[k - 1] : Value::undefined("previtem"));
      loop.dict->set("nextitem", k + 1 < len ? items[k + 1] : Value::undefined("nextitem"));
      frames_.back()["loop"] = loop;
      bind_targets(frames_.back(), n.targets, items[k], n.line);
      Flow f = exec(n.body, out);
      frames_.pop_back();
      if (f == Flow::Break) break;
    }
    if (len == 0) return exec(n.else_body, out);
    return Flow::Normal;
  }

  Value call_macro(const Node& m, const CallArgs& a) {
    if (a.pos.size() > m.params.size()) {
      fail("chat template: macro '{}' takes {} arguments, got {} (line {})", m.text, m.params.size(), a.pos.size(),
           m.line);
    }
    std::map<std::string, Value> args;
    for (size_t k = 0; k < m.params.size(); ++k) {
      const auto& [name, def] = m.params[k];
      if (k < a.pos.size()) {
        args[name] = a.pos[k];
      } else if (const Value* v = a.kwarg(name)) {
        args[name] = *v;
      } else if (def) {
        args[name] = eval(*def);
      } else {
        args[name] = Value::undefined(name);
      }
    }
    for (const auto& [key, v] : a.kw) {
      bool known = false;
      for (const auto& p : m.params) known = known || p.first == key;
      if (!known) fail("chat template: macro '{}' has no parameter '{}' (line {})", m.text, key, m.line);
    }
    if (call_depth_ >= kMaxCallDepth) {
      fail("chat template: macro calls nested deeper than {} (recursion in '{}'?)", kMaxCallDepth, m.text);
    }
    std::vector<std::map<std::string, Value>> saved = std::move(frames_);
    frames_ = {saved.front(), std::move(args)};
    std::string out;
    ++call_depth_;
    try {
      exec(m.body, out);
    } catch (...) {
      --call_depth_;
      frames_ = std::move(saved);
      throw;
    }
    --call_depth_;
    frames_ = std::move(saved);
    return Value::string(out);
  }

  CallArgs eval_args(const Expr& e, size_t first) {
    CallArgs a;
    for (size_t k = first; k < e.args.size(); ++k) a.pos.push_back(eval(*e.args[k]));
    for (const auto& [key, v] : e.kwargs) a.kw.emplace_back(key, eval(*v));
    return a;
  }

  static void require_defined(const Value& v, int line) {
    if (v.is_undefined()) fail("chat template: '{}' is undefined (line {})", v.s, line);
  }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::Literal: return e.literal;
      case Expr::Kind::Name: return lookup(e.name);
      case Expr::Kind::List: {
        List l;
        for (const auto& a : e.args) l.push_back(eval(*a));
        Value v = Value::make_list(std::move(l));
        v.is_tuple = e.negated;
        return v;
      }
      case Expr::Kind::Dict: {
        Value d = Value::make_dict();
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
          Value key = eval(*e.args[k]);
          if (!key.is_string()) fail("chat template: dict keys must be strings (line {})", e.line);
          d.dict->set(key.s, eval(*e.args[k + 1]));
        }
        return d;
      }
      case Expr::Kind::Attr: {
        Value obj = eval(*e.args[0]);
        require_defined(obj, e.line);
        return get_item(obj, Value::string(e.name), e.line, e.name);
      }
      case Expr::Kind::Index: {
        Value obj = eval(*e.args[0]);
        require_defined(obj, e.line);
        return get_item(obj, eval(*e.args[1]), e.line, "");
      }
      case Expr::Kind::Slice: return eval_slice(e);
      case Expr::Kind::Call: return eval_call(e);
      case Expr::Kind::Filter: {
        Value v = eval(*e.args[0]);
        return apply_filter(e.name, v, eval_args(e, 1), e.line);
      }
      case Expr::Kind::Test: {
        Value v = eval(*e.args[0]);
        bool r = apply_test(e.name, v, eval_args(e, 1), e.line);
        return Value::boolean(e.negated ? !r : r);
      }
      case Expr::Kind::Unary: {
        Value v = eval(*e.args[0]);
        if (e.name == "not") return Value::boolean(!v.truthy());
        if (!numeric(v)) {
          require_defined(v, e.line);
          fail("chat template: bad operand type for unary {}: '{}' (line {})", e.name, v.type_name(), e.line);
        }
        if (e.name == "+") return v.kind == Value::Kind::Bool ? Value::integer(v.b) : v;
        if (v.kind == Value::Kind::Float) return Value::number(-v.f);
        return Value::integer(-as_int(v));
      }
      case Expr::Kind::Binary: return eval_binary(e);
      case Expr::Kind::Cond:
        if (eval(*e.args[0]).truthy()) return eval(*e.args[1]);
        return e.args[2] ? eval(*e.args[2]) : Value::undefined("else");
    }
    return Value::undefined();
  }

  static Value get_item(const Value& obj, const Value& key, int line, const std::string& attr) {
    if (obj.is_dict()) {
      if (key.is_string()) {
        if (const Value* v = obj.dict->find(key.s)) return *v;
      }
      return Value::undefined(key.is_string() ? key.s : to_str(key));
    }
    if ((obj.is_list() || obj.is_string()) && (key.kind == Value::Kind::Int || key.kind == Value::Kind::Bool)) {
      if (obj.is_list()) {
        int64_t n = int64_t(obj.list->size()), k = as_int(key);
        if (k < 0) k += n;
        if (k < 0 || k >= n) return Value::undefined(fmt::format("[{}]", as_int(key)));
        return (*obj.list)[size_t(k)];
      }
      std::u32string s = utf8_decode(obj.s);
      int64_t n = int64_t(s.size()), k = as_int(key);
      if (k < 0) k += n;
      if (k < 0 || k >= n) return Value::undefined(fmt::format("[{}]", as_int(key)));
      return Value::string(utf8_encode(std::u32string(1, s[size_t(k)])));
    }
    (void)line;
    return Value::undefined(attr.empty() ? to_str(key) : attr);
  }

  Value eval_slice(const Expr& e) {
    Value obj = eval(*e.args[0]);
    require_defined(obj, e.line);
    Value parts[3];
    const Value* ptr[3] = {nullptr, nullptr, nullptr};
    for (int k = 0; k < 3; ++k) {
      if (e.args[1 + k]) {
        parts[k] = eval(*e.args[1 + k]);
        ptr[k] = &parts[k];
      }
    }
    if (obj.is_list()) {
      List out;
      for (int64_t k : slice_indices(int64_t(obj.list->size()), ptr[0], ptr[1], ptr[2], e.line)) {
        out.push_back((*obj.list)[size_t(k)]);
      }
      return Value::make_list(std::move(out));
    }
    if (obj.is_string()) {
      std::u32string s = utf8_decode(obj.s), out;
      for (int64_t k : slice_indices(int64_t(s.size()), ptr[0], ptr[1], ptr[2], e.line)) out += s[size_t(k)];
      return Value::string(utf8_encode(out));
    }
    // Unlike x[i] (undefined when it fails), jinja2 compiles slices to a plain Python subscript.
    fail("chat template: '{}' object is not subscriptable (line {})", obj.type_name(), e.line);
  }

  Value eval_call(const Expr& e) {
    const Expr& callee = *e.args[0];
    CallArgs args = eval_args(e, 1);
    if (callee.kind == Expr::Kind::Attr) {
      Value obj = eval(*callee.args[0]);
      require_defined(obj, e.line);
      return call_method(obj, callee.name, args, e.line);
    }
    Value fn = eval(callee);
    if (fn.kind != Value::Kind::Function) {
      require_defined(fn, e.line);
      fail("chat template: '{}' object is not callable (line {})", fn.type_name(), e.line);
    }
    return (*fn.fn)(args);
  }

  Value eval_binary(const Expr& e) {
    const std::string& op = e.name;
    if (op == "and") {
      Value a = eval(*e.args[0]);
      return a.truthy() ? eval(*e.args[1]) : a;
    }
    if (op == "or") {
      Value a = eval(*e.args[0]);
      return a.truthy() ? a : eval(*e.args[1]);
    }
    Value a = eval(*e.args[0]), b = eval(*e.args[1]);
    if (op == "==") return Value::boolean(equals(a, b));
    if (op == "!=") return Value::boolean(!equals(a, b));
    if (op == "<") return Value::boolean(less(a, b, op, e.line));
    if (op == ">") return Value::boolean(less(b, a, op, e.line));
    if (op == "<=") return Value::boolean(!less(b, a, op, e.line));
    if (op == ">=") return Value::boolean(!less(a, b, op, e.line));
    if (op == "in") return Value::boolean(contains(b, a, e.line));
    if (op == "not in") return Value::boolean(!contains(b, a, e.line));
    if (op == "~") return Value::string(to_str(a) + to_str(b));
    return arithmetic(op, a, b, e.line);
  }

  std::vector<std::map<std::string, Value>> frames_;
  int call_depth_ = 0;
};

}  // namespace

std::string render(const Program& program, const std::map<std::string, Value>& globals) {
  std::map<std::string, Value> scope = globals;
  add_global_functions(scope);
  Evaluator ev(scope);
  std::string out;
  ev.exec(program.body, out);
  return out;
}

}  // namespace dsv2::jinja
