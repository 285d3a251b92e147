#!/usr/bin/python3
"""Renders every (template, conversation) pair of tests/data/chat with Debian's python3-jinja2,
configured the way Hugging Face transformers renders chat templates (sandboxed, trim_blocks,
lstrip_blocks, loop controls, a tojson without key sorting or HTML escaping, raise_exception).

usage: /usr/bin/python3 tools/chat/render_python.py [data_dir] > tests/data/chat/expected_python.json
"""
import json
import os
import sys

import jinja2
from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    data = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "tests", "data", "chat")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    cases = json.load(open(os.path.join(data, "conversations.json"), encoding="utf-8"))
    out = {"engine": "python3-jinja2 " + jinja2.__version__, "results": {}}
    templates = {}
    for case in cases:
        for name in case["templates"]:
            if name not in templates:
                with open(os.path.join(data, "templates", name + ".jinja"), encoding="utf-8") as f:
                    templates[name] = env.from_string(f.read())
            ctx = {"messages": case["messages"], "add_generation_prompt": case["add_generation_prompt"],
                   "bos_token": case["bos_token"], "eos_token": case["eos_token"], "tools": case.get("tools")}
            key = name + "/" + case["name"]
            try:
                out["results"][key] = {"text": templates[name].render(**ctx)}
            except TemplateError as e:
                out["results"][key] = {"error": str(e)}
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1, sort_keys=True)
    sys.stdout.write("\n")


main()
