#!/usr/bin/python3
"""Generates vectors.json: how SentencePiece's Unigram tokenizer, with its
precompiled normalization charsmap, splits texts into ids.

This is the tokenizer llama.cpp names "t5" in GGUF (T5, XLM-RoBERTa:
multilingual-e5, bge-m3, bge-reranker-v2-m3). The oracle is the
sentencepiece library itself (Debian's python3-sentencepiece): small
Unigram models are trained here on the Cranfield collection plus a few
multilingual lines, then asked to encode fixed texts aimed at the
normalizer (NFKC compatibility forms, case folding, white space of every
kind, leading, trailing and repeated spaces, unknown characters) and random
texts drawn from a pool of such characters.

Models, one per combination the GGUF keys can express:
  nfkc      nmt_nfkc, dummy prefix, extra white space removed (the usual)
  keep_ws   nmt_nfkc, dummy prefix, white space kept as it is
  no_prefix nmt_nfkc, no dummy prefix, extra white space removed
  identity  no normalization rule (an empty charsmap), no dummy prefix

Each model's charsmap (normalizer_spec.precompiled_charsmap, field 2 of
field 3 in the model's protobuf) is stored once per rule, base64; the texts
once, each model's ids in the same order.

The C++ tests (tests/engine/sentencepiece_test.cpp and the XLM-RoBERTa
tests through sentencepiece_vocab.h) read only vectors.json.

Usage: /usr/bin/python3 make_vectors.py /path/to/shared/eval/cranfield/cran.all.1400
(needs python3-sentencepiece from apt)
"""
import base64
import io
import json
import os
import random
import sys

import sentencepiece as spm

MULTILINGUAL = [
    "Die Strömung über dem Flügel bleibt bis zur Hinterkante anliegend.",
    "L'écoulement autour de l'aile reste laminaire à faible incidence.",
    "Поток около крыла остаётся ламинарным при малых углах атаки.",
    "Η ροή γύρω από την πτέρυγα παραμένει στρωτή.",
    "翼の周りの流れは小さな迎角で層流のままである。",
    "机翼周围的流动在小迎角下保持层流。",
    "날개 주위의 흐름은 작은 받음각에서 층류로 유지된다.",
    "El flujo alrededor del ala permanece laminar con ángulos pequeños.",
    "يبقى التدفق حول الجناح صفائحيا عند زوايا الهجوم الصغيرة.",
    "Dòng chảy quanh cánh vẫn là dòng chảy tầng ở góc tấn nhỏ.",
    "ガスタービンのパネルとカバーとハブ。",
]

FIXED = [
    "",
    " ",
    "   ",
    "Hello world",
    "hello  world",
    "  leading and trailing  ",
    "tab\tseparated\tvalues\t",
    "line one\n\nline two\r\n  indented\n",
    "boundary layer transition at supersonic speeds",
    "ＦＵＬＬＷＩＤＴＨ ｌｅｔｔｅｒｓ ａｎｄ １２３",
    "ligatures ﬁ ﬂ ﬀ and ẞ ß",
    "compatibility ① ⑵ ㍻ ™ ½ ² ℃ ㎏",
    "half-width ｶﾀｶﾅ and full-width カタカナ",
    "voiced half-width ｶﾞｷﾞｸﾞ ﾊﾟﾋﾟ ｳﾞ and ｶ ﾞ apart",
    "ｶﾞｽﾀｰﾋﾞﾝ ﾊﾟﾈﾙ ｶﾊﾞｰ",
    "ta\u0302\u0300ng ca\u0301nh tâ\u0300ng",
    "e\u0301te\u0301 cafe\u0301 A\u030a",
    "\u00a0nbsp\u3000ideographic\u2009thin\u2003em",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "emoji 😀👍🏽 ok",
    "Die Strömung über dem Flügel",
    "Поток около крыла",
    "翼の周りの流れ",
    "unknown 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ⅧⅨ ䷀䷁䷂ ok",
    "control\x01\x02chars\x7f here",
    "MiXeD CaSe ΑΒΓ Straße İstanbul",
    "control <s> and </s> and <unk> and <pad> written as text",
    "a <mask> written as text",
    "unused [PAD0] and [PAD1] written as text",
    "a" * 300,
    "The quick brown fox jumps over the lazy dog. " * 4,
]

POOL = (
    list("abcdefghijklmnopqrstuvwxyz") + list("ABCDEFGHIJ") + list("0123456789")
    + list(".,;:-()'/") + [" ", " ", " ", "  ", "\t", "\n", "\u00a0", "\u3000", "\u2009"]
    + ["é", "ü", "ß", "ẞ", "Ω", "ж", "Ж", "İ"]
    + ["Ａ", "ａ", "１", "ﬁ", "①", "㍻", "™", "½", "²", "ｶ", "ﾞ", "カ", "\u0301", "\u030a"]
    + ["翼", "流", "の", "날", "😀", "𝔘", "䷀", "\u200b", "\ufeff", "\x01"]
)

CONFIGS = [
    ("nfkc", "nmt_nfkc", True, True),
    ("keep_ws", "nmt_nfkc", True, False),
    ("no_prefix", "nmt_nfkc", False, True),
    ("identity", "identity", False, False),
]


def field(buf, number):
    """The first length-delimited field `number` of a protobuf message."""
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            _, i = varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = varint(buf, i)
            if num == number:
                return buf[i:i + n]
            i += n
        else:
            raise ValueError("unexpected wire type %d" % wire)
    return b""


def varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def main():
    cranfield = open(sys.argv[1], encoding="utf-8").read().splitlines()
    corpus = [line for line in cranfield if line and not line.startswith(".")]
    corpus += MULTILINGUAL * 20
    rng = random.Random(20261206)
    texts = list(FIXED)
    for _ in range(150):
        texts.append("".join(rng.choice(POOL) for _ in range(rng.randint(1, 40))))
    for _ in range(50):
        texts.append(rng.choice(corpus) + " " + rng.choice(MULTILINGUAL))
    charsmaps, models = {}, []
    for name, rule, prefix, remove in CONFIGS:
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus), model_writer=model, model_type="unigram", vocab_size=1200,
            character_coverage=1.0, normalization_rule_name=rule, add_dummy_prefix=prefix,
            remove_extra_whitespaces=remove, user_defined_symbols=["<sep2>"], minloglevel=2)
        proto = model.getvalue()
        charsmap = field(field(proto, 3), 2)
        if rule in charsmaps:
            assert charsmaps[rule] == charsmap
        charsmaps[rule] = charsmap
        sp = spm.SentencePieceProcessor(model_proto=proto)
        pieces = []
        for i in range(sp.get_piece_size()):
            kind = 3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 5 if sp.is_unused(i) else 6 if sp.is_byte(i) else 1
            pieces.append([sp.id_to_piece(i), sp.get_score(i), kind])
        # The user-defined symbol: sentencepiece has no is_user_defined.
        pieces[sp.piece_to_id("<sep2>")][2] = 4
        models.append({"name": name, "rule": rule, "add_dummy_prefix": prefix, "remove_extra_whitespaces": remove,
                       "unk": sp.unk_id(), "pieces": pieces, "ids": [sp.encode(t) for t in texts]})
    out = {"charsmaps": {k: base64.b64encode(v).decode() for k, v in charsmaps.items()}, "texts": texts,
           "models": models}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(path, len(texts), "texts,", len(models), "models;",
          ", ".join("%s %d bytes" % (k, len(v)) for k, v in charsmaps.items()))


if __name__ == "__main__":
    main()
