#!/usr/bin/python3
"""Writes the tokenizer test corpus (tests/data/tokenizer/corpus/*.txt), deterministically.

usage: make_corpus.py OUT_DIR [SOURCE_ROOT]

Sources, all written for this project (see tests/data/tokenizer/README.md):
  - prose_*.txt: paragraphs assembled by a seeded generator from the sentence bank below (English,
    Chinese, Japanese, Korean, German, French, Spanish, Russian, Greek, Arabic, Hindi, Thai,
    Vietnamese), with numbers in many scripts and forms, emoji sequences, whitespace runs, CRLF,
    markup, URLs and contractions in mixed case;
  - code_*.txt: the project's own tokenizer sources and tools (SOURCE_ROOT), plus generated code
    in several languages;
  - unicode_*.txt: sweeps over Unicode blocks (letters, marks, digits, symbols of many scripts),
    generated from Python's unicodedata (Unicode 14, as PCRE2 10.42), assigned code points only.
"""
import os
import random
import sys
import unicodedata

SENTENCES = {
    "en": [
        "The quick brown fox jumps over the lazy dog.",
        "I'm sure they'll say it's fine, but we've seen what happens when nobody checks.",
        "Tokenizers split text into pieces; models only ever see the pieces.",
        "She said: \"Don't touch that!\" and then, after a pause, 'OK... maybe just once.'",
        "IT'S LOUD IN HERE, ISN'T IT? WE'RE LEAVING AT 5 P.M.",
        "He'D never tried it; They'Ll learn; you'Re right; I'M here; she'S gone.",
        "A well-known, state-of-the-art, end-to-end approach (v2.0) was re-evaluated.",
        "Mr. O'Neil paid $1,234.56 on 2024-03-15 at 09:30 for 3 items -- a 12.5% discount.",
        "Email me at first.last+tag@example.org or visit https://example.com/path?q=a&b=2#frag.",
        "Numbers like 1st, 2nd, 3rd and 4th; ranges 10-20; versions 1.2.3-rc.4; hex 0xDEADBEEF.",
        "The café's crème brûlée cost €7.50, naïve coöperation aside.",
        "Line one\\nstill line one (escaped), then a tab\there.",
        "Why?!?! Because... well --- it's complicated ;-) <3",
        "CamelCaseIdentifiers and snake_case_names and SCREAMING_SNAKE and kebab-case-words.",
        "In 1969, 600,000,000 people watched; in 2019, the number was 3141592653.",
    ],
    "zh": [
        "深度学习模型需要大量的训练数据，以及足够的计算资源。",
        "今天天气很好，我们一起去公园散步吧！",
        "分词器把文本切成若干片段，模型只看到这些片段。",
        "这个版本修复了三个错误，并提高了百分之二十的速度。",
        "《红楼梦》是中国古典小说的巅峰之作，共一百二十回。",
        "请在2024年3月15日之前提交报告，谢谢合作。",
        "人工智能、机器学习与自然语言处理密切相关；它们互相促进。",
        "他说：“我们明天见。”然后就走了。",
    ],
    "ja": [
        "吾輩は猫である。名前はまだ無い。",
        "東京都の人口は約一千四百万人です。",
        "カタカナとひらがなと漢字が混ざった文章をトークナイズします。",
        "今日は２０２４年３月１５日、金曜日です。",
        "「ありがとうございます」と彼女は言った。",
        "ラーメンを食べに行きませんか？ぜひ！",
        "ｶﾀｶﾅの半角文字もテストに含めます。ﾃｽﾄ、ﾃｽﾄ。",
    ],
    "ko": [
        "안녕하세요, 만나서 반갑습니다.",
        "한국어 문장은 띄어쓰기가 있어서 단어 경계가 비교적 분명합니다.",
        "오늘은 2024년 3월 15일 금요일입니다.",
        "토크나이저는 텍스트를 작은 조각으로 나눕니다!",
        "서울특별시의 인구는 약 940만 명입니다.",
    ],
    "de": ["Die Würde des Menschen ist unantastbar.", "Fünf große Äpfel und Öl für Straßenbäume kosten 12,50 €.",
           "Donaudampfschifffahrtsgesellschaftskapitän ist ein langes Wort."],
    "fr": ["L'été dernier, nous sommes allés à la mer.", "Où est la bibliothèque ? C'est à côté de l'hôpital.",
           "« Bonjour », dit-il ; « ça va ? »"],
    "es": ["¿Dónde está la estación? ¡Muy cerca!", "El niño comió piñas y jalapeños en el año 1999."],
    "ru": ["Съешь же ещё этих мягких французских булок, да выпей чаю.", "Москва — столица России; население 13 млн."],
    "el": ["Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.", "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας."],
    "ar": ["مرحبا بالعالم، كيف حالك اليوم؟", "الأرقام العربية: ٠١٢٣٤٥٦٧٨٩ والسنة ٢٠٢٤."],
    "hi": ["नमस्ते दुनिया, आप कैसे हैं?", "भारत की जनसंख्या लगभग १४० करोड़ है।"],
    "th": ["สวัสดีครับ ยินดีที่ได้รู้จัก", "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ"],
    "vi": ["Tiếng Việt có rất nhiều dấu thanh điệu.", "Hà Nội là thủ đô của Việt Nam."],
}

EMOJI = ["😀", "🦙", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🇺🇸", "❤️", "✨", "🔥", "1️⃣", "#️⃣", "🧑🏿‍💻",
         "🎉🎉🎉", "☕", "🚀", "🐍", "©", "™", "→", "⇒", "∑", "∞", "≠", "√2", "π≈3.14159", "°C", "♪♫"]

WHITESPACE = [" ", "  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n", " \n", "\n ",
              "  \n  ", "\u00a0", "\u3000", "\u2003", " \t \t", "\n\t", "        ", "\u200b", "\ufeff"]


def number(rng):
    kind = rng.randrange(14)
    if kind == 0:
        return str(rng.randrange(10))
    if kind == 1:
        return str(rng.randrange(10 ** rng.randrange(2, 12)))
    if kind == 2:
        return f"{rng.random() * 10 ** rng.randrange(1, 6):.{rng.randrange(1, 5)}f}"
    if kind == 3:
        return f"{rng.randrange(1, 10 ** 9):,}"
    if kind == 4:
        return f"{rng.randrange(1900, 2100)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    if kind == 5:
        return f"+1 ({rng.randrange(200, 999)}) {rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}"
    if kind == 6:
        return "".join(chr(0xFF10 + int(d)) for d in str(rng.randrange(10 ** 5)))  # fullwidth
    if kind == 7:
        return "".join(chr(0x0660 + int(d)) for d in str(rng.randrange(10 ** 4)))  # Arabic-Indic
    if kind == 8:
        return rng.choice(["½", "¼", "¾", "²", "³", "①②③", "Ⅻ", "ⅷ", "⁴⁵", "₁₂", "〇", "一二三"])
    if kind == 9:
        return f"{rng.random():.3e}"
    if kind == 10:
        return hex(rng.randrange(16 ** 8))
    if kind == 11:
        return f"{rng.randrange(100)}%"
    if kind == 12:
        return "".join(chr(0x0966 + int(d)) for d in str(rng.randrange(10 ** 4)))  # Devanagari
    return "9" * rng.randrange(1, 40)


def prose_paragraph(rng):
    langs = list(SENTENCES)
    weights = [8, 5, 4, 3] + [1] * (len(langs) - 4)
    parts = []
    for _ in range(rng.randrange(3, 12)):
        lang = rng.choices(langs, weights)[0]
        s = rng.choice(SENTENCES[lang])
        r = rng.random()
        if r < 0.15:
            s = s.upper()
        elif r < 0.2:
            s = s.lower()
        parts.append(s)
        r = rng.random()
        if r < 0.3:
            parts.append(rng.choice(WHITESPACE))
        elif r < 0.5:
            parts.append(" " + number(rng) + " ")
        elif r < 0.65:
            parts.append(rng.choice(EMOJI))
        elif r < 0.7:
            parts.append(rng.choice(["...", "!!!", "???", "---", "***", "~~~", "。。。", "！？", "<|", "|>", "[[", "]]"]))
        else:
            parts.append(" ")
    return "".join(parts)


def markup(rng):
    items = [
        "# Heading\n\n* item one\n* item two\n  - nested `code` here\n\n> quote\n",
        "| a | b |\n|---|---|\n| 1 | 2 |\n",
        '{"name": "dsv2", "tokens": [1, 2, 3], "ok": true, "nested": {"x": null}}',
        "<html><body><p class=\"x\">Hello &amp; goodbye</p></body></html>",
        "```python\nprint('hi')\n```",
        "$ ls -la /tmp && echo \"done\" | tee out.txt 2>&1",
        "<｜begin▁of▁sentence｜> is not special inside plain prose, but looks like it",
        "<|endoftext|> and <|im_start|>user text<|im_end|> markers",
    ]
    return rng.choice(items)


def write_prose(out_dir, rng, n_files, target):
    for k in range(n_files):
        paras = []
        size = 0
        while size < target:
            p = markup(rng) if rng.random() < 0.1 else prose_paragraph(rng)
            sep = rng.choice(["\n\n", "\n", "\r\n\r\n", "\n\n\n\n", "\n \n"])
            paras.append(p + sep)
            size += len((p + sep).encode("utf-8"))
        write(out_dir, f"prose_{k:02d}.txt", "".join(paras))


CODE_SNIPPETS = [
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += x[i] * y[i];\n}\n",
    "const f = async (x) => { await sleep(100); return x ?? 'default'; };\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;\n",
    "if [[ -z \"$VAR\" ]]; then\n  echo 'empty' >&2\n  exit 1\nfi\n",
    "    \n        \n\t\t\n",
    "x=1;y=2;z=x+y*3/4-5%6**7//8\n",
    "#include <vector>\ntemplate <typename T> T max(T a, T b) { return a > b ? a : b; }\n",
    "public static void main(String[] args) { System.out.println(\"Hello, 世界\"); }\n",
    "<div>\n  <span>{{ value | upper }}</span>\n</div>\n",
    "matrix = [[1, 2, 3],\n          [4, 5, 6],\n          [7, 8, 9]]\n",
]


def write_code(out_dir, rng, root):
    sources = []
    if root:
        for rel in ["src/tokenizer", "tools/tokenizer"]:
            d = os.path.join(root, rel)
            for name in sorted(os.listdir(d)):
                if name.endswith((".h", ".cpp", ".py", ".mjs")) and not name.startswith("chat_template"):
                    with open(os.path.join(d, name), encoding="utf-8") as f:
                        sources.append(f"// ===== {rel}/{name} =====\n" + f.read())
    gen = []
    size = 0
    while size < 120_000:
        s = rng.choice(CODE_SNIPPETS)
        indent = rng.choice(["", "    ", "\t", "  ", "        "])
        s = "".join(indent + line + "\n" for line in s.split("\n"))
        gen.append(s)
        size += len(s)
    write(out_dir, "code_00.txt", "".join(sources))
    write(out_dir, "code_01.txt", "".join(gen))


BLOCKS = [
    (0x0020, 0x007E), (0x00A0, 0x024F), (0x0250, 0x02FF), (0x0300, 0x036F), (0x0370, 0x03FF), (0x0400, 0x052F),
    (0x0530, 0x058F), (0x0590, 0x05FF), (0x0600, 0x06FF), (0x0900, 0x097F), (0x0980, 0x09FF), (0x0E00, 0x0E7F),
    (0x10A0, 0x10FF), (0x1100, 0x11FF), (0x13A0, 0x13FF), (0x1E00, 0x1FFF), (0x2000, 0x206F), (0x2070, 0x209F),
    (0x20A0, 0x20CF), (0x2100, 0x214F), (0x2150, 0x218F), (0x2190, 0x22FF), (0x2460, 0x24FF), (0x2500, 0x257F),
    (0x2600, 0x26FF), (0x2700, 0x27BF), (0x2C00, 0x2CFF), (0x3000, 0x303F), (0x3040, 0x30FF), (0x3100, 0x312F),
    (0x3130, 0x318F), (0x31F0, 0x31FF), (0x3200, 0x32FF), (0x3300, 0x33FF), (0x4E00, 0x4FFF), (0x9F00, 0x9FA5),
    (0xA640, 0xA69F), (0xA720, 0xA7FF), (0xAB70, 0xABBF), (0xAC00, 0xAFFF), (0xD7B0, 0xD7FF), (0xF900, 0xFAFF),
    (0xFB00, 0xFB4F), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF), (0x10400, 0x1044F), (0x1D400, 0x1D7FF),
    (0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F900, 0x1F9FF), (0x20000, 0x2004F),
]


def stable(cp):
    c = chr(cp)
    cat = unicodedata.category(c)
    # Unassigned here means unassigned in PCRE2 too (both Unicode 14); Node's newer tables only add.
    return cat not in ("Cn", "Cs", "Co")


def write_unicode(out_dir, rng):
    chars = [chr(cp) for lo, hi in BLOCKS for cp in range(lo, hi + 1) if stable(cp)]
    # 1) every character of the blocks in order, in short runs separated by whitespace
    runs = []
    for i in range(0, len(chars), 7):
        runs.append("".join(chars[i:i + 7]))
        runs.append(rng.choice([" ", "\n", "  ", "\t", "", " "]))
    write(out_dir, "unicode_00.txt", "".join(runs))
    # 2) random mixtures of letters, marks, digits, spaces from all blocks
    out = []
    size = 0
    while size < 150_000:
        n = rng.randrange(1, 20)
        w = "".join(rng.choice(chars) for _ in range(n))
        sep = rng.choice(WHITESPACE + [" "] * 10)
        out.append(w + sep)
        size += len((w + sep).encode("utf-8"))
    write(out_dir, "unicode_01.txt", "".join(out))


def write(out_dir, name, text):
    with open(os.path.join(out_dir, name), "w", encoding="utf-8", newline="") as f:
        f.write(text)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    root = sys.argv[2] if len(sys.argv) == 3 else None
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(20261130)
    write_prose(out_dir, rng, 8, 100_000)
    write_code(out_dir, rng, root)
    write_unicode(out_dir, rng)


if __name__ == "__main__":
    main()
