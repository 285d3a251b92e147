#!/usr/bin/python3
"""Runs llama.cpp's tokenizer test vectors (VOCAB.gguf.inp / .out) through `dsv2 tokenize`.

usage: check_llama_vectors.py DSV2_BINARY MODEL_DIR VECTORS_PREFIX

VECTORS_PREFIX.inp holds texts separated by "\\n__ggml_vocab_test__\\n"; VECTORS_PREFIX.out holds
the expected ids (no BOS), one line of space-separated ids per text. Exits non-zero on any
mismatch and prints "N passed, N failed".
"""
import json
import os
import subprocess
import sys
import tempfile

SEP = "\n__ggml_vocab_test__\n"


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    binary, model, prefix = sys.argv[1:]
    with open(prefix + ".inp", encoding="utf-8", newline="") as f:
        inputs = f.read().split(SEP)
    # The file ends with a separator; the piece after it is empty.
    if inputs and inputs[-1] in ("", "\n"):
        inputs.pop()
    with open(prefix + ".out", encoding="utf-8", newline="") as f:
        outputs = f.read().split("\n")
    if outputs and outputs[-1] == "":
        outputs.pop()
    if len(inputs) != len(outputs):
        sys.exit(f"{len(inputs)} inputs but {len(outputs)} expected outputs")
    passed = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vectors.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for text in inputs:
                f.write(json.dumps(text) + "\n")
        r = subprocess.run([binary, "tokenize", "--model", model, "--file", path, "--jsonl", "--no-special"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"dsv2 tokenize failed: {r.stderr}")
        results = [json.loads(x) for x in r.stdout.splitlines()]
    if len(results) != len(inputs):
        sys.exit(f"{len(inputs)} inputs but {len(results)} results")
    for i, (text, line, got) in enumerate(zip(inputs, outputs, results)):
        expected = [int(x) for x in line.split()]
        if got == expected:
            passed += 1
        else:
            failed += 1
            print(f"vector {i} {text!r}: expected {expected}, got {got}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


if __name__ == "__main__":
    main()
