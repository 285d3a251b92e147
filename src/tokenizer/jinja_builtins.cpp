// Filters, tests, methods and global functions of the Jinja subset, with Python's semantics
// (jinja2 filters call Python str methods). Case mapping covers ASCII, Latin-1, Latin Extended-A,
// Greek, Cyrillic and fullwidth Latin; other scripts are left unchanged (one-to-many mappings such
// as German sharp s are not applied).
#include <algorithm>
#include <cmath>
#include <functional>
#include <set>

#include "common/error.h"
#include "tokenizer/jinja.h"

namespace dsv2::jinja {
namespace {

const std::set<std::string> kFilters = {
    "trim",  "length", "count", "string", "default", "d",    "upper",      "lower",     "capitalize", "title",
    "replace", "join", "first", "last",   "items",   "list", "reverse",    "tojson",    "safe",       "int",
    "float", "abs",    "map",   "select", "reject",  "selectattr", "rejectattr", "unique", "sort"};
const std::set<std::string> kTests = {"defined", "undefined", "none",    "string",  "number",  "integer", "float",
                                      "boolean", "true",      "false",   "mapping", "iterable", "sequence",
                                      "callable", "even",     "odd",     "divisibleby", "equalto", "eq", "ne",
                                      "lower",   "upper",     "in",      "gt",      "ge",      "lt",      "le"};
const std::set<std::string> kMethods = {"strip", "lstrip", "rstrip", "split",  "startswith", "endswith", "upper",
                                        "lower", "title",  "capitalize", "replace", "find", "count", "join",
                                        "items", "keys",   "values", "get"};
const std::set<std::string> kFunctions = {"raise_exception", "namespace", "range", "dict"};

char32_t to_upper(char32_t c) {
  if (c >= 'a' && c <= 'z') return c - 32;
  if (c < 0x80) return c;
  if (c >= 0xE0 && c <= 0xFE && c != 0xF7) return c - 0x20;
  if (c == 0xFF) return 0x178;
  if ((c >= 0x100 && c <= 0x137) || (c >= 0x14A && c <= 0x177)) return (c & 1) ? c - 1 : c;
  if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c & 1) ? c : c - 1;
  if (c == 0x3C2) return 0x3A3;
  if (c >= 0x3B1 && c <= 0x3C9) return c - 0x20;
  if (c >= 0x430 && c <= 0x44F) return c - 0x20;
  if (c >= 0x450 && c <= 0x45F) return c - 0x50;
  if (c >= 0xFF41 && c <= 0xFF5A) return c - 0x20;
  return c;
}

char32_t to_lower(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c < 0x80) return c;
  if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 0x20;
  if (c == 0x178) return 0xFF;
  if ((c >= 0x100 && c <= 0x137) || (c >= 0x14A && c <= 0x177)) return (c & 1) ? c : c + 1;
  if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c & 1) ? c + 1 : c;
  if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) return c + 0x20;
  if (c >= 0x410 && c <= 0x42F) return c + 0x20;
  if (c >= 0x400 && c <= 0x40F) return c + 0x50;
  if (c >= 0xFF21 && c <= 0xFF3A) return c + 0x20;
  return c;
}

bool is_cased(char32_t c) { return to_upper(c) != c || to_lower(c) != c; }

bool is_space(char32_t c) {
  return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

std::string map_case(const std::string& s, int mode) {  // 0 upper, 1 lower, 2 capitalize, 3 title
  std::u32string u = utf8_decode(s);
  bool prev_cased = false;
  for (size_t k = 0; k < u.size(); ++k) {
    char32_t c = u[k];
    switch (mode) {
      case 0: u[k] = to_upper(c); break;
      case 1: u[k] = to_lower(c); break;
      case 2: u[k] = k == 0 ? to_upper(c) : to_lower(c); break;
      default:
        u[k] = prev_cased ? to_lower(c) : to_upper(c);
        prev_cased = is_cased(c);
    }
  }
  return utf8_encode(u);
}

// jinja2's title filter (unlike str.title) starts words only after whitespace, '-', or an
// opening bracket: each word is its first character upper-cased plus the rest lower-cased.
std::string title_filter(const std::string& s) {
  std::u32string u = utf8_decode(s);
  bool word_start = true;
  for (auto& c : u) {
    bool sep = is_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
    if (sep) {
      word_start = true;
      continue;
    }
    c = word_start ? to_upper(c) : to_lower(c);
    word_start = false;
  }
  return utf8_encode(u);
}

// Python str.strip/lstrip/rstrip: whitespace, or any of the code points in `chars`.
std::string strip(const std::string& s, const Value* chars, bool left, bool right) {
  std::u32string u = utf8_decode(s);
  std::u32string set;
  bool use_set = chars && !chars->is_none() && !chars->is_undefined();
  if (use_set) set = utf8_decode(to_str(*chars));
  auto drop = [&](char32_t c) { return use_set ? set.find(c) != std::u32string::npos : is_space(c); };
  size_t a = 0, b = u.size();
  if (left) {
    while (a < b && drop(u[a])) ++a;
  }
  if (right) {
    while (b > a && drop(u[b - 1])) --b;
  }
  return utf8_encode(u.substr(a, b - a));
}

Value split(const std::string& s, const Value* sep, int64_t maxsplit, int line) {
  List out;
  if (!sep || sep->is_none()) {
    std::u32string u = utf8_decode(s);
    size_t k = 0;
    while (true) {
      while (k < u.size() && is_space(u[k])) ++k;
      if (k >= u.size()) break;
      if (maxsplit >= 0 && int64_t(out.size()) == maxsplit) {
        out.push_back(Value::string(utf8_encode(u.substr(k))));  // the rest keeps its trailing spaces
        break;
      }
      size_t a = k;
      while (k < u.size() && !is_space(u[k])) ++k;
      out.push_back(Value::string(utf8_encode(u.substr(a, k - a))));
    }
    return Value::make_list(std::move(out));
  }
  if (!sep->is_string()) fail("chat template: split() separator must be a string (line {})", line);
  if (sep->s.empty()) fail("chat template: split() got an empty separator (line {})", line);
  size_t a = 0;
  while (true) {
    size_t f = s.find(sep->s, a);
    if (f == std::string::npos || (maxsplit >= 0 && int64_t(out.size()) == maxsplit)) {
      out.push_back(Value::string(s.substr(a)));
      break;
    }
    out.push_back(Value::string(s.substr(a, f - a)));
    a = f + sep->s.size();
  }
  return Value::make_list(std::move(out));
}

std::string replace(const std::string& s, const std::string& old, const std::string& with, int64_t count) {
  std::string out;
  int64_t done = 0;
  if (old.empty()) {
    std::u32string u = utf8_decode(s);
    for (size_t k = 0; k <= u.size(); ++k) {
      if (count < 0 || done < count) {
        out += with;
        ++done;
      }
      if (k < u.size()) out += utf8_encode(std::u32string(1, u[k]));
    }
    return out;
  }
  size_t a = 0;
  while (true) {
    size_t f = s.find(old, a);
    if (f == std::string::npos || (count >= 0 && done >= count)) break;
    out += s.substr(a, f - a) + with;
    a = f + old.size();
    ++done;
  }
  return out + s.substr(a);
}

const Value* arg(const CallArgs& a, size_t pos, const char* name) {
  if (pos < a.pos.size()) return &a.pos[pos];
  return a.kwarg(name);
}

int64_t int_arg(const CallArgs& a, size_t pos, const char* name, int64_t def, int line) {
  const Value* v = arg(a, pos, name);
  if (!v || v->is_none()) return def;
  if (v->kind != Value::Kind::Int) fail("chat template: argument '{}' must be an integer (line {})", name, line);
  return v->i;
}

const std::string& str_arg(const CallArgs& a, size_t pos, const char* name, const char* what, int line) {
  const Value* v = arg(a, pos, name);
  if (!v || !v->is_string()) fail("chat template: {}() needs a string argument '{}' (line {})", what, name, line);
  return v->s;
}

List as_list(const Value& v, const char* what, int line) {
  switch (v.kind) {
    case Value::Kind::List: return *v.list;
    case Value::Kind::Undefined: return {};
    case Value::Kind::String: {
      List l;
      for (char32_t c : utf8_decode(v.s)) l.push_back(Value::string(utf8_encode(std::u32string(1, c))));
      return l;
    }
    case Value::Kind::Dict:
      if (!v.is_namespace) {
        List l;
        for (const auto& kv : v.dict->items) l.push_back(Value::string(kv.first));
        return l;
      }
      break;
    default: break;
  }
  fail("chat template: {}: '{}' object is not iterable (line {})", what, v.type_name(), line);
}

Value attribute_of(const Value& v, const std::string& path) {
  Value cur = v;
  size_t a = 0;
  while (true) {
    size_t dot = path.find('.', a);
    std::string part = path.substr(a, dot == std::string::npos ? std::string::npos : dot - a);
    if (cur.is_dict()) {
      const Value* f = cur.dict->find(part);
      cur = f ? *f : Value::undefined(part);
    } else {
      return Value::undefined(part);
    }
    if (dot == std::string::npos) return cur;
    a = dot + 1;
  }
}

// select/reject/selectattr/rejectattr: args[first] is the test name (truthiness when absent).
bool select_test(const Value& v, const CallArgs& a, size_t first, int line) {
  if (a.pos.size() <= first) return v.truthy();
  if (!a.pos[first].is_string()) fail("chat template: test name must be a string (line {})", line);
  const std::string& test = a.pos[first].s;
  if (!kTests.count(test)) fail("chat template: unsupported test '{}' (line {})", test, line);
  CallArgs rest;
  rest.pos.assign(a.pos.begin() + long(first) + 1, a.pos.end());
  return apply_test(test, v, rest, line);
}

}  // namespace

bool is_known_filter(const std::string& name) { return kFilters.count(name) > 0; }
bool is_known_test(const std::string& name) { return kTests.count(name) > 0; }
bool is_known_method(const std::string& name) { return kMethods.count(name) > 0; }
bool is_known_global_function(const std::string& name) { return kFunctions.count(name) > 0; }

Value apply_filter(const std::string& name, const Value& v, const CallArgs& a, int line) {
  if (name == "default" || name == "d") {
    const Value* def = arg(a, 0, "default_value");
    const Value* boolean = arg(a, 1, "boolean");
    bool use_default = v.is_undefined() || (boolean && boolean->truthy() && !v.truthy());
    if (use_default) return def ? *def : Value::string("");
    return v;
  }
  if (name == "length" || name == "count") {
    switch (v.kind) {
      case Value::Kind::String: return Value::integer(int64_t(utf8_decode(v.s).size()));
      case Value::Kind::List: return Value::integer(int64_t(v.list->size()));
      case Value::Kind::Dict: return Value::integer(int64_t(v.dict->items.size()));
      case Value::Kind::Undefined: return Value::integer(0);
      default: fail("chat template: object of type '{}' has no length (line {})", v.type_name(), line);
    }
  }
  if (name == "tojson") {
    int64_t indent = int_arg(a, 0, "indent", -1, line);
    return Value::string(to_json(v, int(indent)));
  }
  if (name == "safe") return v;
  if (name == "string") return Value::string(to_str(v));
  if (name == "trim") return Value::string(strip(to_str(v), arg(a, 0, "chars"), true, true));
  if (name == "upper") return Value::string(map_case(to_str(v), 0));
  if (name == "lower") return Value::string(map_case(to_str(v), 1));
  if (name == "capitalize") return Value::string(map_case(to_str(v), 2));
  if (name == "title") return Value::string(title_filter(to_str(v)));
  if (name == "replace") {
    const std::string& old = str_arg(a, 0, "old", "replace", line);
    const std::string& with = str_arg(a, 1, "new", "replace", line);
    return Value::string(replace(to_str(v), old, with, int_arg(a, 2, "count", -1, line)));
  }
  if (name == "join") {
    const Value* sep = arg(a, 0, "d");
    const Value* attr = arg(a, 1, "attribute");
    std::string out, s = sep ? to_str(*sep) : "";
    bool first = true;
    for (const auto& e : as_list(v, "join", line)) {
      out += (first ? "" : s) + to_str(attr ? attribute_of(e, to_str(*attr)) : e);
      first = false;
    }
    return Value::string(out);
  }
  if (name == "first" || name == "last") {
    List l = as_list(v, name.c_str(), line);
    if (l.empty()) return Value::undefined(name);
    return name == "first" ? l.front() : l.back();
  }
  if (name == "items") {
    if (v.is_undefined()) return Value::make_list();
    if (!v.is_dict()) fail("chat template: items: '{}' is not a mapping (line {})", v.type_name(), line);
    List l;
    for (const auto& [k, e] : v.dict->items) {
      l.push_back(Value::make_list({Value::string(k), e}));
      l.back().is_tuple = true;
    }
    return Value::make_list(std::move(l));
  }
  if (name == "list") return Value::make_list(as_list(v, "list", line));
  if (name == "reverse") {
    if (v.is_string()) {
      std::u32string u = utf8_decode(v.s);
      return Value::string(utf8_encode(std::u32string(u.rbegin(), u.rend())));
    }
    List l = as_list(v, "reverse", line);
    return Value::make_list(List(l.rbegin(), l.rend()));
  }
  if (name == "unique") {
    List out;
    for (const auto& e : as_list(v, "unique", line)) {
      bool seen = false;
      for (const auto& o : out) seen = seen || equals(o, e);
      if (!seen) out.push_back(e);
    }
    return Value::make_list(std::move(out));
  }
  if (name == "sort") {
    // jinja2: sorted(value, reverse=..., key=case-folded strings unless case_sensitive), stable.
    const Value* reverse = arg(a, 0, "reverse");
    const Value* case_sensitive = arg(a, 1, "case_sensitive");
    const Value* attr = arg(a, 2, "attribute");
    bool fold = !(case_sensitive && case_sensitive->truthy());
    List items = as_list(v, "sort", line);
    std::vector<Value> keys;
    for (const auto& e : items) {
      Value k = attr ? attribute_of(e, to_str(*attr)) : e;
      if (fold && k.is_string()) k = Value::string(map_case(k.s, 1));
      keys.push_back(std::move(k));
    }
    std::vector<size_t> idx(items.size());
    for (size_t k = 0; k < idx.size(); ++k) idx[k] = k;
    std::function<bool(const Value&, const Value&)> lt = [&](const Value& x, const Value& y) -> bool {
      bool xn = x.is_number() || x.kind == Value::Kind::Bool, yn = y.is_number() || y.kind == Value::Kind::Bool;
      if (xn && yn) {
        double dx = x.kind == Value::Kind::Bool ? x.b : x.as_double(), dy = y.kind == Value::Kind::Bool ? y.b : y.as_double();
        return dx < dy;
      }
      if (x.is_string() && y.is_string()) return x.s < y.s;
      if (x.is_list() && y.is_list()) {
        size_t n = std::min(x.list->size(), y.list->size());
        for (size_t k = 0; k < n; ++k) {
          if (!equals((*x.list)[k], (*y.list)[k])) return lt((*x.list)[k], (*y.list)[k]);
        }
        return x.list->size() < y.list->size();
      }
      fail("chat template: sort: '<' not supported between '{}' and '{}' (line {})", x.type_name(), y.type_name(), line);
    };
    bool rev = reverse && reverse->truthy();
    std::stable_sort(idx.begin(), idx.end(), [&](size_t x, size_t y) { return rev ? lt(keys[y], keys[x]) : lt(keys[x], keys[y]); });
    List out;
    for (size_t k : idx) out.push_back(items[k]);
    return Value::make_list(std::move(out));
  }
  if (name == "int" || name == "float") {
    const Value* def = arg(a, 0, "default");
    Value fallback = def ? *def : (name == "int" ? Value::integer(0) : Value::number(0));
    double d;
    if (v.is_number()) {
      d = v.as_double();
    } else if (v.kind == Value::Kind::Bool) {
      d = v.b;
    } else if (v.is_string()) {
      try {
        size_t used = 0;
        std::string t = strip(v.s, nullptr, true, true);
        d = std::stod(t, &used);
        if (used != t.size()) return fallback;
      } catch (const std::exception&) {
        return fallback;
      }
    } else {
      return fallback;
    }
    return name == "int" ? Value::integer(int64_t(std::trunc(d))) : Value::number(d);
  }
  if (name == "abs") {
    if (v.kind == Value::Kind::Int) return Value::integer(v.i < 0 ? -v.i : v.i);
    if (v.kind == Value::Kind::Float) return Value::number(std::fabs(v.f));
    fail("chat template: bad operand type for abs(): '{}' (line {})", v.type_name(), line);
  }
  if (name == "map") {
    List out;
    const Value* attr = a.kwarg("attribute");
    for (const auto& e : as_list(v, "map", line)) {
      if (attr) {
        Value got = attribute_of(e, to_str(*attr));
        if (got.is_undefined()) {
          if (const Value* def = a.kwarg("default")) got = *def;
        }
        out.push_back(got);
      } else {
        if (a.pos.empty() || !a.pos[0].is_string()) fail("chat template: map needs a filter name or attribute= (line {})", line);
        const std::string& f = a.pos[0].s;
        if (!kFilters.count(f)) fail("chat template: unsupported filter '{}' (line {})", f, line);
        CallArgs rest;
        rest.pos.assign(a.pos.begin() + 1, a.pos.end());
        rest.kw = a.kw;
        out.push_back(apply_filter(f, e, rest, line));
      }
    }
    return Value::make_list(std::move(out));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    bool by_attr = name == "selectattr" || name == "rejectattr";
    bool want = name == "select" || name == "selectattr";
    if (by_attr && (a.pos.empty() || !a.pos[0].is_string())) {
      fail("chat template: {} needs an attribute name (line {})", name, line);
    }
    List out;
    for (const auto& e : as_list(v, name.c_str(), line)) {
      Value subject = by_attr ? attribute_of(e, a.pos[0].s) : e;
      if (select_test(subject, a, by_attr ? 1 : 0, line) == want) out.push_back(e);
    }
    return Value::make_list(std::move(out));
  }
  fail("chat template: unsupported filter '{}' (line {})", name, line);
}

bool apply_test(const std::string& name, const Value& v, const CallArgs& a, int line) {
  auto other = [&]() -> const Value& {
    if (a.pos.empty()) fail("chat template: test '{}' needs an argument (line {})", name, line);
    return a.pos[0];
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "number") return v.is_number() || v.kind == Value::Kind::Bool;  // Python: bool is a Number
  if (name == "integer") return v.kind == Value::Kind::Int;
  if (name == "float") return v.kind == Value::Kind::Float;
  if (name == "boolean") return v.kind == Value::Kind::Bool;
  if (name == "true") return v.kind == Value::Kind::Bool && v.b;
  if (name == "false") return v.kind == Value::Kind::Bool && !v.b;
  if (name == "mapping") return v.is_dict() && !v.is_namespace;
  // jinja2's Undefined iterates as empty and has a length, so it passes both.
  if (name == "iterable" || name == "sequence") {
    return v.is_list() || v.is_string() || v.is_undefined() || (v.is_dict() && !v.is_namespace);
  }
  if (name == "callable") return v.kind == Value::Kind::Function;
  if (name == "even" || name == "odd") {
    if (v.kind != Value::Kind::Int) fail("chat template: test '{}' needs an integer (line {})", name, line);
    return (((v.i % 2) + 2) % 2 == 0) == (name == "even");
  }
  if (name == "divisibleby") {
    const Value& d = other();
    if (v.kind != Value::Kind::Int || d.kind != Value::Kind::Int || d.i == 0) {
      fail("chat template: divisibleby needs non-zero integers (line {})", line);
    }
    return v.i % d.i == 0;
  }
  if (name == "equalto" || name == "eq") return equals(v, other());
  if (name == "ne") return !equals(v, other());
  if (name == "lower") return v.is_string() && map_case(v.s, 1) == v.s && map_case(v.s, 0) != v.s;
  if (name == "upper") return v.is_string() && map_case(v.s, 0) == v.s && map_case(v.s, 1) != v.s;
  if (name == "in") {
    const Value& c = other();
    if (c.is_string()) return v.is_string() && c.s.find(v.s) != std::string::npos;
    if (c.is_dict()) return v.is_string() && c.dict->find(v.s) != nullptr;
    for (const auto& e : as_list(c, "in", line)) {
      if (equals(e, v)) return true;
    }
    return false;
  }
  if (name == "gt" || name == "ge" || name == "lt" || name == "le") {
    const Value& o = other();
    bool num = v.is_number() && o.is_number();
    if (!num && !(v.is_string() && o.is_string())) {
      fail("chat template: test '{}' cannot compare '{}' and '{}' (line {})", name, v.type_name(), o.type_name(), line);
    }
    int c = num ? (v.as_double() < o.as_double() ? -1 : v.as_double() > o.as_double() ? 1 : 0) : v.s.compare(o.s);
    if (name == "gt") return c > 0;
    if (name == "ge") return c >= 0;
    if (name == "lt") return c < 0;
    return c <= 0;
  }
  fail("chat template: unsupported test '{}' (line {})", name, line);
}

Value call_method(const Value& obj, const std::string& name, const CallArgs& a, int line) {
  if (obj.is_string()) {
    const std::string& s = obj.s;
    if (name == "strip") return Value::string(strip(s, arg(a, 0, "chars"), true, true));
    if (name == "lstrip") return Value::string(strip(s, arg(a, 0, "chars"), true, false));
    if (name == "rstrip") return Value::string(strip(s, arg(a, 0, "chars"), false, true));
    if (name == "split") return split(s, arg(a, 0, "sep"), int_arg(a, 1, "maxsplit", -1, line), line);
    if (name == "upper") return Value::string(map_case(s, 0));
    if (name == "lower") return Value::string(map_case(s, 1));
    if (name == "capitalize") return Value::string(map_case(s, 2));
    if (name == "title") return Value::string(map_case(s, 3));
    if (name == "replace") {
      return Value::string(replace(s, str_arg(a, 0, "old", "replace", line), str_arg(a, 1, "new", "replace", line),
                                   int_arg(a, 2, "count", -1, line)));
    }
    if (name == "startswith" || name == "endswith") {
      const Value* p = arg(a, 0, "prefix");
      if (!p) fail("chat template: {}() needs an argument (line {})", name, line);
      List options = p->is_list() ? *p->list : List{*p};
      for (const auto& o : options) {
        if (!o.is_string()) fail("chat template: {}() needs string arguments (line {})", name, line);
        bool hit = name == "startswith" ? s.compare(0, o.s.size(), o.s) == 0
                                        : s.size() >= o.s.size() && s.compare(s.size() - o.s.size(), o.s.size(), o.s) == 0;
        if (hit) return Value::boolean(true);
      }
      return Value::boolean(false);
    }
    if (name == "find") {
      const std::string& sub = str_arg(a, 0, "sub", "find", line);
      size_t f = s.find(sub);
      if (f == std::string::npos) return Value::integer(-1);
      return Value::integer(int64_t(utf8_decode(s.substr(0, f)).size()));
    }
    if (name == "count") {
      const std::string& sub = str_arg(a, 0, "sub", "count", line);
      if (sub.empty()) return Value::integer(int64_t(utf8_decode(s).size()) + 1);
      int64_t n = 0;
      for (size_t f = s.find(sub); f != std::string::npos; f = s.find(sub, f + sub.size())) ++n;
      return Value::integer(n);
    }
    if (name == "join") {
      const Value* items = arg(a, 0, "iterable");
      if (!items) fail("chat template: join() needs an argument (line {})", line);
      std::string out;
      bool first = true;
      for (const auto& e : as_list(*items, "join", line)) {
        if (!e.is_string()) fail("chat template: join() expects strings, got '{}' (line {})", e.type_name(), line);
        out += (first ? "" : s) + e.s;
        first = false;
      }
      return Value::string(out);
    }
  } else if (obj.is_list() && name == "count") {
    const Value* x = arg(a, 0, "value");
    if (!x) fail("chat template: count() needs an argument (line {})", line);
    int64_t n = 0;
    for (const auto& e : *obj.list) n += equals(e, *x) ? 1 : 0;
    return Value::integer(n);
  } else if (obj.is_dict() && !obj.is_namespace) {
    if (name == "items") return apply_filter("items", obj, {}, line);
    if (name == "keys") return Value::make_list(as_list(obj, "keys", line));
    if (name == "values") {
      List l;
      for (const auto& kv : obj.dict->items) l.push_back(kv.second);
      return Value::make_list(std::move(l));
    }
    if (name == "get") {
      const Value* key = arg(a, 0, "key");
      const Value* def = arg(a, 1, "default");
      if (!key) fail("chat template: get() needs a key (line {})", line);
      const Value* f = key->is_string() ? obj.dict->find(key->s) : nullptr;
      return f ? *f : def ? *def : Value::none();
    }
  }
  fail("chat template: '{}' object has no method '{}' (line {})", obj.type_name(), name, line);
}

void add_global_functions(std::map<std::string, Value>& globals) {
  globals.emplace("raise_exception", Value::function([](const CallArgs& a) -> Value {
                    std::string msg = a.pos.empty() ? "" : to_str(a.pos[0]);
                    fail("chat template raised an exception: {}", msg);
                  }));
  globals.emplace("namespace", Value::function([](const CallArgs& a) {
                    Value ns = Value::make_dict();
                    ns.is_namespace = true;
                    for (const auto& p : a.pos) {
                      if (!p.is_dict()) fail("chat template: namespace() takes a mapping or keyword arguments");
                      for (const auto& [k, v] : p.dict->items) ns.dict->set(k, v);
                    }
                    for (const auto& [k, v] : a.kw) ns.dict->set(k, v);
                    return ns;
                  }));
  globals.emplace("dict", Value::function([](const CallArgs& a) {
                    Value d = Value::make_dict();
                    for (const auto& [k, v] : a.kw) d.dict->set(k, v);
                    return d;
                  }));
  globals.emplace("range", Value::function([](const CallArgs& a) {
                    int64_t start = 0, stop = 0, step = 1;
                    for (const auto& p : a.pos) {
                      if (p.kind != Value::Kind::Int) fail("chat template: range() takes integers");
                    }
                    if (a.pos.size() == 1) {
                      stop = a.pos[0].i;
                    } else if (a.pos.size() == 2 || a.pos.size() == 3) {
                      start = a.pos[0].i;
                      stop = a.pos[1].i;
                      if (a.pos.size() == 3) step = a.pos[2].i;
                    } else {
                      fail("chat template: range() takes 1 to 3 arguments");
                    }
                    if (step == 0) fail("chat template: range() step must not be zero");
                    List l;
                    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
                      l.push_back(Value::integer(k));
                      if (l.size() > 1000000) fail("chat template: range() larger than 1000000 items");
                    }
                    return Value::make_list(std::move(l));
                  }));
}

}  // namespace dsv2::jinja
