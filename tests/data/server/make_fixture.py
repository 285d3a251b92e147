#!/usr/bin/python3
"""Builds tests/data/server/model: the golden 'lite' checkpoint (vocab 256) with a byte-level
tokenizer whose ids fit it: 0 = BOS, 1 = EOS, then one token per byte except 0xC0 and 0xC1,
which never occur in UTF-8, so every text can be encoded. No merges: one token per byte.
Run from the repository root: /usr/bin/python3 tests/data/server/make_fixture.py"""
import json
import os
import shutil

here = os.path.dirname(os.path.abspath(__file__))
src = os.path.join(here, "..", "golden", "lite", "model")
dst = os.path.join(here, "model")
os.makedirs(dst, exist_ok=True)
for f in ("config.json", "model.safetensors"):
    shutil.copyfile(os.path.join(src, f), os.path.join(dst, f))


def bytes_to_unicode():
    # The byte-level alphabet: printable bytes map to themselves, the rest to code points from 256 up.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


alphabet = bytes_to_unicode()
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
vocab = {BOS: 0, EOS: 1}
for b in range(256):
    if b in (0xC0, 0xC1):
        continue
    vocab[alphabet[b]] = len(vocab)
assert len(vocab) == 256

added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
          "special": True} for t, i in ((BOS, 0), (EOS, 1))]
tokenizer = {
    "version": "1.0",
    "truncation": None,
    "padding": None,
    "added_tokens": added,
    "normalizer": None,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    "post_processor": None,
    "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
              "vocab": vocab, "merges": []},
}
with open(os.path.join(dst, "tokenizer.json"), "w", encoding="utf-8") as f:
    json.dump(tokenizer, f, ensure_ascii=False, indent=1)

with open(os.path.join(here, "..", "chat", "templates", "deepseek_v2.jinja"), encoding="utf-8") as f:
    template = f.read().rstrip("\n")
config = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": {"__type": "AddedToken", "content": BOS, "lstrip": False, "normalized": True, "rstrip": False,
                  "single_word": False},
    "eos_token": {"__type": "AddedToken", "content": EOS, "lstrip": False, "normalized": True, "rstrip": False,
                  "single_word": False},
    "model_max_length": 640,
    "tokenizer_class": "LlamaTokenizerFast",
    "chat_template": template,
}
with open(os.path.join(dst, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, ensure_ascii=False, indent=1)
# Greedy unless a request asks otherwise, so that default outputs are reproducible.
with open(os.path.join(dst, "generation_config.json"), "w") as f:
    json.dump({"bos_token_id": 0, "eos_token_id": 1, "do_sample": False}, f, indent=1)
print("wrote", dst)
