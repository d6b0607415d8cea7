#!/usr/bin/env python3
"""Generates vectors.json: how each byte-level BPE pre-tokenizer splits texts.

The oracle is the pre-tokenizer regex each vocabulary's tokenizer.json
carries (as Hugging Face tokenizers applies it: every match a piece, text
between matches none here, since the patterns cover every character), run
by Python's `regex` module, which has Unicode properties, (?i:...) and
look-ahead. qwen2's tokenizer.json normalises to NFC first; so does this.

The texts: fixed ones aimed at each rule, then random strings drawn from a
pool of characters of every class the rules tell apart (upper, lower,
title-case, modifier and other letters, combining marks, decimal/letter/
other numbers, ASCII and Unicode spaces, newlines, apostrophes, slashes,
punctuation and symbols), characters of long-assigned Unicode blocks only,
so that ICU and `regex` agree on their categories.

The C++ test (tests/engine/tokenizer_test.cpp) reads only vectors.json.

Usage: python3 make_vectors.py   (needs the `regex` module: apt install python3-regex)
"""
import json
import os
import random
import unicodedata

import regex

CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
HEAD = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
TAIL = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
PATTERNS = {
    "gpt-2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    "llama-bpe": CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "gpt-4o": (r"[^\r\n\p{L}\p{N}]?" + HEAD + "*" + TAIL + "+" + CONTRACTIONS + "?"
               r"|[^\r\n\p{L}\p{N}]?" + HEAD + "+" + TAIL + "*" + CONTRACTIONS + "?"
               r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "tekken": (r"[^\r\n\p{L}\p{N}]?" + HEAD + "*" + TAIL + "+"
               r"|[^\r\n\p{L}\p{N}]?" + HEAD + "+" + TAIL + "*"
               r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
}

FIXED = [
    "Hello world",
    "HTTPServer and XMLHttpRequest",
    "don't I'LL we've THEY'RE she'd it's",
    "'s 'S ''s it'\u017f IT'\u017fT",  # U+017F (long s) folds to s under (?i:...)
    "1234567 12 1",
    "a  b   c    ",
    "line one\n\nline two\r\n  indented\n",
    "path/to/file.txt and a/b//c\n/",
    "end;\n//comment\n/* block */\r\n/x",
    "¿Qué tal? Ça va — très bien!",
    "ǅemal ǈubljana ʰello",
    "e\u0301te\u0301 cafe\u0301",  # combining marks
    "Ⅻ ²³ ٣٤٥ 10×20",
    "中文字符和English混合",
    "\u00a0nbsp\u3000ideographic\u2009thin",
    "emoji 😀👍🏽 ok",
    "tab\tseparated\tvalues\t",
    "CamelCaseWordsHere lowerUPPERlower",
    "  leading and trailing  ",
    "mixed123numbers456and789",
    "!!! ??? ... ---\n\n***",
]

POOL = (
    list("ABCXYZ") + list("abcxyz") + ["É", "ß", "é", "Ω", "ω", "Ж", "ж"]  # Lu/Ll
    + ["ǅ", "ǈ"]                     # Lt
    + ["ʰ", "ː", "ー"]               # Lm
    + ["中", "文", "あ", "ا", "ב"]    # Lo
    + ["\u0301", "\u0308", "\u0903"] # Mn, Mc
    + list("0189") + ["٣", "Ⅻ", "²", "½"]  # Nd, Nl, No
    + [" ", " ", " ", "\t", "\n", "\r", "\u00a0", "\u3000", "\u2009"]
    + ["'", "'", "/", ".", ",", "-", "!", "(", ")", "€", "😀", "×", "\u017f"]
)


def splits(pre, text):
    if pre == "qwen2":
        text = unicodedata.normalize("NFC", text)
    pieces = [m.group(0) for m in regex.finditer(PATTERNS[pre], text)]
    assert "".join(pieces) == text, (pre, text)
    return pieces


def main():
    rng = random.Random(20261206)
    texts = list(FIXED)
    for _ in range(300):
        n = rng.randint(1, 24)
        texts.append("".join(rng.choice(POOL) for _ in range(n)))
    # contractions in random company
    for _ in range(60):
        word = "".join(rng.choice(POOL[:30]) for _ in range(rng.randint(0, 4)))
        texts.append(word + "'" + rng.choice(["s", "S", "t", "re", "RE", "Ve", "m", "ll", "lL", "d", "x", ""]) +
                     rng.choice(["", " ", "a", "1", "'"]))
    out = [{"pre": pre, "text": t, "pieces": splits(pre, t)} for pre in PATTERNS for t in texts]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True, indent=0)
        f.write("\n")
    print(f"{len(out)} vectors written to {path}")


if __name__ == "__main__":
    main()
