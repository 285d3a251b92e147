#!/usr/bin/python3
"""Converts the vocabulary of a llama.cpp GGUF file (tokenizer.ggml.*) with the "deepseek-llm"
pre-tokenizer into tokenizer.json + tokenizer_config.json, so that dsv2's Tokenizer can be checked
against llama.cpp's test vectors for the DeepSeek-LLM/V2 vocabulary.

usage: gguf_to_tokenizer_json.py VOCAB.gguf OUT_DIR

Only the metadata is read (no tensor data); pure Python, no third-party modules.
"""
import json
import os
import struct
import sys

# The deepseek-llm pre-tokenizer: the Split rules llama.cpp applies for this vocabulary, in order,
# each isolating its matches, followed by ByteLevel without prefix space. Written with escapes:
# several of these characters (U+212A KELVIN SIGN, U+2126 OHM SIGN, ...) change under Unicode
# normalization and must not pass through an editor.
DEEPSEEK_LLM_SPLITS = [
    "[\r\n]",
    "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481"
    "\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf"
    "\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d"
    "\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4"
    "\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107"
    "\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f"
    "\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
    "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17"
    "\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb"
    "\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    "\\s+$",
    "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
    "\\p{N}+",
]

# GGUF scalar types -> struct format
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4


class Reader:
    def __init__(self, data):
        self.d, self.o = data, 0

    def scalar(self, fmt):
        v = struct.unpack_from("<" + fmt, self.d, self.o)[0]
        self.o += struct.calcsize("<" + fmt)
        return v

    def string(self):
        n = self.scalar("Q")
        s = self.d[self.o:self.o + n]
        self.o += n
        return s.decode("utf-8")

    def value(self, t):
        if t == 8:
            return self.string()
        if t == 9:
            et, n = self.scalar("I"), self.scalar("Q")
            return [self.value(et) for _ in range(n)]
        if t not in SCALARS:
            raise ValueError(f"unknown GGUF value type {t}")
        return self.scalar(SCALARS[t])


def read_metadata(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    r = Reader(data)
    r.o = 4
    version = r.scalar("I")
    if version < 2:
        raise ValueError(f"{path}: GGUF version {version} is not supported")
    r.scalar("Q")  # tensor count
    kv = {}
    for _ in range(r.scalar("Q")):
        key = r.string()
        kv[key] = r.value(r.scalar("I"))
    return kv


def convert(kv):
    if kv.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError("only tokenizer.ggml.model = gpt2 (byte-level BPE) is supported")
    if kv.get("tokenizer.ggml.pre") != "deepseek-llm":
        raise ValueError(f"pre-tokenizer {kv.get('tokenizer.ggml.pre')!r} is not deepseek-llm")
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    vocab, added = {}, []
    for i, (tok, ty) in enumerate(zip(tokens, types)):
        if ty == TOKEN_NORMAL:
            vocab[tok] = i
        elif ty in (TOKEN_CONTROL, TOKEN_USER_DEFINED):
            special = ty == TOKEN_CONTROL
            added.append({"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": not special, "special": special})
        else:
            raise ValueError(f"token {i} has unsupported type {ty}")
    tj = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": False}
            for p in DEEPSEEK_LLM_SPLITS] + [
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": vocab, "merges": kv["tokenizer.ggml.merges"]},
    }
    cfg = {
        "add_bos_token": bool(kv.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(kv.get("tokenizer.ggml.add_eos_token", False)),
        "bos_token": tokens[kv["tokenizer.ggml.bos_token_id"]],
        "eos_token": tokens[kv["tokenizer.ggml.eos_token_id"]],
    }
    if "tokenizer.ggml.padding_token_id" in kv:
        cfg["pad_token"] = tokens[kv["tokenizer.ggml.padding_token_id"]]
    return tj, cfg


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    tj, cfg = convert(read_metadata(sys.argv[1]))
    os.makedirs(sys.argv[2], exist_ok=True)
    with open(os.path.join(sys.argv[2], "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=True)
    with open(os.path.join(sys.argv[2], "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=True, indent=1)


if __name__ == "__main__":
    main()
