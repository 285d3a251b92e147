#!/usr/bin/python3
"""Generates random templates from the Jinja subset dsv2 implements (expressions, filters, tests,
methods, loops, namespaces, whitespace control) and renders each with Debian's python3-jinja2,
configured as render_python.py configures it. The output is the differential corpus that
tests/unit/chat_template checks dsv2 against: the same text, or an error where jinja2 raised one.

usage: /usr/bin/python3 tools/chat/fuzz_python.py [count] [seed] > tests/data/chat/fuzz_python.json
"""
import json
import random
import sys

import jinja2
from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

CONTEXT = {
    "n": 7,
    "m": -3,
    "x": 2.5,
    "s": "Hello World",
    "e": "",
    "p": "  padded text \n",
    "u": "héllo wörld ÄÖ",
    "lst": [3, 1, 2],
    "words": ["alpha", "beta", "gamma"],
    "d": {"k": "v", "num": 4, "nested": {"a": [1, 2]}},
    "messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi there?"},
        {"role": "assistant", "content": "Hello.", "name": "bot"},
        {"role": "user", "content": "Bye"},
    ],
    "flag": True,
    "nothing": None,
}

INT_ATOMS = ["n", "m", "0", "1", "2", "3", "-1", "10", "lst|length", "messages|length", "d.num", "loop_free_int"]
STR_ATOMS = ["s", "e", "p", "u", "'ab'", '"x y"', "''", "' a b '", "'Hi There'", "d.k", "messages[1].content",
             "words[0]", "'\\n'", "'tab\\there'"]
LIST_ATOMS = ["lst", "words", "[1, 2, 3]", "[]", "['b', 'a']", "messages", "s.split()", "d.nested.a"]
ANY_ATOMS = ["x", "flag", "nothing", "undefined_name", "d", "true", "false", "none", "1.5", "0.25"]

STR_FILTERS = ["upper", "lower", "trim", "capitalize", "title", "length", "string", "first", "last", "reverse|join",
               "list", "tojson", "replace('l', 'L')", "replace(' ', '')", "default('dflt')", "count"]
LIST_FILTERS = ["length", "first", "last", "join", "join(', ')", "reverse|list", "list", "tojson", "unique",
                "join('-')", "map('string')|join(',')", "select('odd')|list", "reject('odd')|list"]
MSG_FILTERS = ["selectattr('role', 'equalto', 'user')|list|length", "map(attribute='role')|join(',')",
               "rejectattr('role', 'eq', 'user')|map(attribute='content')|join('|')",
               "selectattr('name', 'defined')|list|length", "map(attribute='name', default='anon')|join(' ')"]
TESTS = ["defined", "undefined", "none", "string", "number", "integer", "float", "boolean", "mapping",
         "iterable", "sequence", "true", "false"]
INT_TESTS = ["even", "odd", "divisibleby(3)", "divisibleby 2", "eq 7", "gt 2", "lt(0)", "ge 7", "le -3", "ne(1)"]
STR_METHODS = ["upper()", "lower()", "strip()", "lstrip()", "rstrip()", "title()", "capitalize()", "split()",
               "split(' ')", "split('l', 1)", "startswith('He')", "endswith('d')", "startswith(('x', 'H'))",
               "replace('o', '0')", "find('o')", "count('l')", "strip('H')", "rstrip('d \\n')"]


# Hand-written edge cases, checked before the random ones: whitespace control, comments, raw
# text that looks like tags, macros, set blocks, scoping.
FIXED = [
    "a\n  {% if flag %}\n    yes\n  {% endif %}\nb",
    "a\n  {%+ if flag %}x{% endif %}\n",
    "a\n  {% if flag +%}\nx{% endif %}\nend\n",
    "  {# comment #}\nline\n\t{#- c -#}  \n tail",
    "x {{ '{{' }} {{ '%}' }} {} { } %} }} y",
    "{% for i in range(3) %}\n  {{ i }}\n{% endfor %}\n",
    "{%- for i in range(3) -%}\n  {{ i }}\n{%- endfor -%}\n",
    "{% macro m(a, b='B') %}[{{ a }}{{ b }}]{% endmacro %}{{ m(1) }}{{ m(2, b=3) }}{{ m(b=4, a=5) }}",
    "{% macro outer(x) %}{{ inner(x ~ '!') }}{% endmacro %}{% macro inner(y) %}<{{ y }}>{% endmacro %}{{ outer('hi') }}",
    "{% set t %}\n  inside {{ n }}\n{% endset %}[{{ t }}]",
    "{% set x = 1 %}{% for i in lst %}{% set x = i %}{% endfor %}{{ x }}",
    "{% set x = 1 %}{% if flag %}{% set x = 2 %}{% endif %}{{ x }}",
    "{% for a, b in d|items %}{{ a }}={{ b }};{% endfor %}",
    "{% for m in messages %}{{ loop.previtem.role if loop.previtem is defined else '-' }}>{{ m.role }}|{% endfor %}",
    "{{ 'a' 'b' \"c\" }} {{ (1, 2) }} {{ (1,) }} {{ () }} {{ [(1, 2)] }} {{ {'t': (1,)} }}",
    "{{ 1 if false }}|{{ none }}|{{ nothing }}|{{ undefined_name }}|{{ d.missing }}",
    "{{ 10 / 4 }} {{ 10 // 4 }} {{ 2 ** -1 }} {{ 7 % -3 }} {{ -7 // 2.0 }} {{ 1e20 }} {{ 1.5e-7 }} {{ 0.1 * 3 }}",
    "{{ \"it's\" }} {{ ['it\\'s', \"q\\\"\"] }} {{ {'a': none, 'b': true} }}",
    "{{ messages|tojson }}\n{{ d|tojson(indent=2) }}\n{{ 'ü \\u00e9 \"'|tojson }}",
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% else %}{% set loop_messages = messages %}{% endif %}{{ loop_messages|length }}",
    "{{ raise_exception('custom failure') }}",
    "{% for x in nothing %}{% endfor %}",
    "{{ lst[5] }}|{{ lst[-1] }}|{{ s[1] }}|{{ d['k'] }}|{{ d.nested['a'][1] }}",
    "{{ u|upper }} {{ u|lower }} {{ u.title() }} {{ u|title }}",
    "{{ '  a b  c  '.split(None, 1) }} {{ 'a,b,,c'.split(',', 2) }} {{ '  x y '.split(None, 0) }} {{ ''.split() }}",
    "{{ 'abcabc'.replace('b', 'X', 1) }} {{ 'abc'.replace('', '-') }} {{ 'abc'|replace('', '-', 2) }}",
    "{{ 'aXbXc'.split('X') }} {{ 'a  b'.split(' ') }} {{ 'héllo'.find('l') }} {{ 'héllo'[1:3] }}",
]


def raise_exception(message):
    raise TemplateError(message)


class Gen:
    def __init__(self, rng):
        self.r = rng

    def pick(self, xs):
        return self.r.choice(xs)

    def int_expr(self, depth):
        if depth <= 0 or self.r.random() < 0.35:
            a = self.pick(INT_ATOMS)
            return "3" if a == "loop_free_int" else a
        k = self.r.randrange(6)
        if k == 0:
            return "(%s %s %s)" % (self.int_expr(depth - 1), self.pick(["+", "-", "*", "//", "%"]), self.int_expr(depth - 1))
        if k == 1:
            return "(%s ** %s)" % (self.int_expr(depth - 1), self.pick(["0", "1", "2", "3"]))
        if k == 2:
            return "%s|length" % self.str_expr(depth - 1)
        if k == 3:
            return "-%s" % self.int_expr(depth - 1)
        if k == 4:
            return "%s|abs" % self.int_expr(depth - 1)
        return "(%s|int)" % self.pick(["'42'", "'x'", "3.9", "'-7'", "flag"])

    def str_expr(self, depth):
        if depth <= 0 or self.r.random() < 0.3:
            return self.pick(STR_ATOMS)
        k = self.r.randrange(7)
        if k == 0:
            return "(%s ~ %s)" % (self.any_expr(depth - 1), self.any_expr(depth - 1))
        if k == 1:
            return "(%s + %s)" % (self.str_expr(depth - 1), self.str_expr(depth - 1))
        if k == 2:
            return "(%s|%s)" % (self.str_expr(depth - 1), self.pick(STR_FILTERS))
        if k == 3:
            return "%s.%s" % (self.str_expr(depth - 1), self.pick(STR_METHODS))
        if k == 4:
            i = self.pick(["0", "-1", "1", "2", "100"])
            sl = self.pick(["[%s]" % i, "[1:]", "[:3]", "[::-1]", "[-3:]", "[1:5:2]", "[::2]", "[5:1:-1]", "[-100:100]"])
            # The base is an atom: jinja2 constant-folds a slice of a constant non-sequence to
            # undefined but raises for the same slice at run time, so keep bases real strings.
            return "%s%s" % (self.pick(STR_ATOMS), sl)
        if k == 5:
            return "(%s if %s else %s)" % (self.str_expr(depth - 1), self.bool_expr(depth - 1), self.str_expr(depth - 1))
        return "%s|join(%s)" % (self.list_expr(depth - 1), self.pick(["", "', '", "'+'"]))

    def list_expr(self, depth):
        if depth <= 0 or self.r.random() < 0.4:
            return self.pick(LIST_ATOMS)
        k = self.r.randrange(4)
        if k == 0:
            return "(%s + %s)" % (self.list_expr(depth - 1), self.list_expr(depth - 1))
        if k == 1:
            return "%s%s" % (self.list_expr(depth - 1), self.pick(["[1:]", "[::-1]", "[:2]", "[-2:]"]))
        if k == 2:
            return "[%s, %s]" % (self.any_expr(depth - 1), self.any_expr(depth - 1))
        return "%s.split(%s)" % (self.str_expr(depth - 1), self.pick(["", "' '", "'l'", "'o', 1"]))

    def bool_expr(self, depth):
        if depth <= 0 or self.r.random() < 0.2:
            return self.pick(["flag", "true", "false", "nothing", "e", "s", "lst", "undefined_name"])
        k = self.r.randrange(8)
        if k == 0:
            return "(%s %s %s)" % (self.int_expr(depth - 1), self.pick(["==", "!=", "<", ">", "<=", ">="]), self.int_expr(depth - 1))
        if k == 1:
            return "(%s %s %s)" % (self.str_expr(depth - 1), self.pick(["==", "!=", "<", ">="]), self.str_expr(depth - 1))
        if k == 2:
            return "(%s %s %s)" % (self.bool_expr(depth - 1), self.pick(["and", "or"]), self.bool_expr(depth - 1))
        if k == 3:
            return "(not %s)" % self.bool_expr(depth - 1)
        if k == 4:
            return "(%s is %s%s)" % (self.any_expr(depth - 1), self.pick(["", "not "]), self.pick(TESTS))
        if k == 5:
            return "(%s is %s%s)" % (self.int_expr(depth - 1), self.pick(["", "not "]), self.pick(INT_TESTS))
        if k == 6:
            return "(%s %s %s)" % (self.str_expr(depth - 1), self.pick(["in", "not in"]), self.pick(["s", "u", "words", "d", "'abc'"]))
        return "(%s in %s)" % (self.int_expr(depth - 1), self.list_expr(depth - 1))

    def any_expr(self, depth):
        k = self.r.randrange(6)
        if k == 0:
            return self.int_expr(depth)
        if k == 1:
            return self.str_expr(depth)
        if k == 2:
            return self.list_expr(depth)
        if k == 3:
            return self.bool_expr(depth)
        if k == 4:
            return "(messages|%s)" % self.pick(MSG_FILTERS)
        return self.pick(ANY_ATOMS + ["d.get('k')", "d.get('zz', 5)", "d|items|list", "d.keys()|list",
                                      "d.values()|list", "d|tojson", "d.nested|tojson(indent=2)", "lst|tojson(indent=1)",
                                      "(x * 2)", "(x / 2)", "(7 / 2)", "(n / 7)", "(x // 1)", "(1e3)", "(0.1 + 0.2)",
                                      "('ab' * 3)", "(2 * [1, 'a'])", "('7'|float)", "('x'|float(1.5))", "(x|int)",
                                      "(e|default('E', true))", "(nothing|default('N'))", "('v' if flag)",
                                      "{'a': n, 'b': [s, none]}|tojson", "{'a': {'b': x}}", "(lst|sort if false else lst)|length",
                                      "messages[-1].role", "messages[0]['content'][:4]", "(d.nested.a|last)",
                                      "(1, 'x')", "(words|map('upper')|join)", "(lst|select('even')|list)",
                                      "(messages|map(attribute='content')|map('length')|list)", "('%s' ~ n)",
                                      "(s is in 'xx ' ~ s)", "(n is in lst)", "(3 is in lst)", "(words|unique|list)", "(lst|sort)", "(words|sort(reverse=true))",
                                      "(['b', 'A', 'a', 'B']|sort)", "(['b', 'A', 'a']|sort(case_sensitive=true))",
                                      "(messages|sort(attribute='role')|map(attribute='content')|join(','))",
                                      "([[2, 'a'], [1, 'b'], [1, 'a']]|sort)", "([1, 'a']|sort)"])

    def ws(self):
        return self.pick(["", "", " ", "\n", "\n  ", "  \n", "\n\n", "\t"])

    def tag(self, body):
        return "{%" + self.pick(["", "", "-", "+"]).replace("+", "") + " " + body + " " + self.pick(["", "", "-"]) + "%}"

    def out(self, e):
        return "{{" + self.pick(["", "-"]) + " " + e + " " + self.pick(["", "-"]) + "}}"

    def block(self, depth):
        parts = []
        for _ in range(self.r.randrange(1, 4)):
            parts.append(self.ws() + self.stmt(depth) + self.ws() + self.pick(["", "text", "[", "]"]))
        return "".join(parts)

    def stmt(self, depth):
        k = self.r.randrange(6) if depth > 0 else 0
        if k in (0, 1):
            return self.out(self.any_expr(3))
        if k == 2:
            b = self.tag("if " + self.bool_expr(2)) + self.block(depth - 1)
            if self.r.random() < 0.4:
                b += self.tag("elif " + self.bool_expr(2)) + self.block(depth - 1)
            if self.r.random() < 0.5:
                b += self.tag("else") + self.block(depth - 1)
            return b + self.tag("endif")
        if k == 3:
            var = self.pick(["item", "m2"])
            head = "for %s in %s" % (var, self.pick(["lst", "words", "messages", "s", "d", "[]", "range(3)", "lst|reverse"]))
            if self.r.random() < 0.3:
                head += " if %s is not none" % var
            body = self.out("loop.index ~ '/' ~ loop.length ~ (' first' if loop.first else '') ~ (' last' if loop.last else '') ~ ':' ~ %s" % var)
            body += self.block(depth - 1)
            if self.r.random() < 0.2:
                body += self.tag("if loop.index0 == 1") + self.tag(self.pick(["break", "continue"])) + self.tag("endif")
            b = self.tag(head) + body
            if self.r.random() < 0.3:
                b += self.tag("else") + "empty"
            return b + self.tag("endfor")
        if k == 4:
            return (self.tag("set ns = namespace(acc='', c=0)") + self.tag("for w in words") +
                    self.tag("set ns.acc = ns.acc ~ w[0]") + self.tag("set ns.c = ns.c + loop.index") +
                    self.tag("set leaked = w") + self.tag("endfor") + self.out("ns.acc ~ ns.c ~ (leaked is defined)"))
        return self.tag("set v = " + self.any_expr(2)) + self.ws() + self.out("v")


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rng = random.Random(seed)
    gen = Gen(rng)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    cases = []
    for k in range(len(FIXED) + count):
        src = FIXED[k] if k < len(FIXED) else gen.block(2)
        case = {"template": src}
        try:
            case["text"] = env.from_string(src).render(**CONTEXT)
        except (TemplateError, TypeError, ValueError, AttributeError, IndexError, KeyError, ZeroDivisionError,
                OverflowError) as e:
            case["error"] = type(e).__name__ + ": " + str(e)
        cases.append(case)
    out = {"engine": "python3-jinja2 " + jinja2.__version__, "seed": seed, "context": CONTEXT, "cases": cases}
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


main()
