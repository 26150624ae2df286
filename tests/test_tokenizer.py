import random

import numpy as np
import pytest

from rsclip_jax import tokenize
from rsclip_jax.data import tokenizer as tokenizer_module

CORPUS = [
    "A photo of a dog.",
    "",
    "   leading and trailing   ",
    "Café crème, naïve façade, Ångström, Straße, İstanbul",
    "Tom &amp; Jerry &lt;b&gt;bold&lt;/b&gt; &amp;amp;lt; &#39;quoted&#39; &nbsp;gap &copy 2024",
    "Emoji: 😀🐶🎉 ❤️ 👩‍👩‍👧 🇯🇵 and a heart ♥",
    "中文标题 日本語のキャプション 한국어 설명 العربية עברית",
    "Curly ‘quotes’ and “double” — dashes – ellipsis…",
    "mojibake: Ã©tÃ© â€œquotedâ€\x9d",
    "ligatures ﬁ ﬂ and fullwidth ＡＢＣ１２３",
    "control\x00chars\x07and\x1bescape[31m\x7fdel",
    "tabs\tand\nnew\r\nlines\x0bvertical\x0cform",
    "It's the dog's bone; they're here, we've won, I'm in, you'll see, he'd go. IT'S LOUD",
    "numbers 3.14159, 1,000,000 and 2nd 42x",
    "a <end_of_text> b <start_of_text> c a<end_of_text>b x.<end_of_text> <<end_of_text> <END_OF_TEXT>",
    "punctuation!!! ?!?! ... --- *** ### @@@ $$$ %%% ^^^ ((( ))) [[[ ]]] {{{ }}}",
    "combining e\u0301 versus \u00e9, zero\u200bwidth",
    "long " + " ".join(["The Narrative Setter imagines the story behind the scene"] * 40),
    "x" * 3000,
]


def random_texts(count, seed):
    """Texts drawn from an alphabet chosen to stress cleaning and splitting."""
    pieces = list("abcXYZ019 .,'!?&;#<>_-\t\n\r") + [
        "&amp;",
        "&lt;",
        "&#",
        "é",
        "Ã©",
        "ß",
        "İ",
        "😀",
        "\u200b",
        "\x00",
        "\x1b",
        "’",
        "…",
        "中",
        "'s",
        "'LL",
        "<end_of_text>",
        "ﬁ",
        "\u0301",
    ]
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 60))) for _ in range(count)]


@pytest.mark.parametrize("context_length", [77, 248, 5])
def test_tokenize_equals_open_clip_on_corpus(context_length):
    open_clip = pytest.importorskip("open_clip")
    ours = tokenize(CORPUS, context_length=context_length)
    theirs = open_clip.tokenize(CORPUS, context_length=context_length).numpy()
    assert ours.dtype == np.int32 and ours.shape == (len(CORPUS), context_length)
    for text, a, b in zip(CORPUS, ours, theirs):
        np.testing.assert_array_equal(a, b, err_msg=repr(text[:80]))


def test_tokenize_equals_open_clip_on_random_texts():
    open_clip = pytest.importorskip("open_clip")
    texts = random_texts(3000, seed=0)
    np.testing.assert_array_equal(tokenize(texts, 77), open_clip.tokenize(texts, 77).numpy())


def test_truncation_ends_with_end_of_text():
    row = tokenize("word " * 500, context_length=248)[0]
    assert row[0] == tokenizer_module.SOT_ID and row[-1] == tokenizer_module.EOT_ID and (row != 0).all()


def test_single_string_and_cache_reset(monkeypatch):
    open_clip = pytest.importorskip("open_clip")
    expected = open_clip.tokenize(CORPUS, 77).numpy()
    np.testing.assert_array_equal(tokenize(CORPUS[0], 77)[0], expected[0])
    # A cache that overflows at once must give the same ids.
    monkeypatch.setattr(tokenizer_module, "_MAX_CACHED_CHUNKS", 3)
    np.testing.assert_array_equal(tokenize(CORPUS, 77), expected)
    np.testing.assert_array_equal(tokenize(CORPUS, 77), expected)


def test_context_length_too_small():
    with pytest.raises(ValueError, match="context_length must be at least 2"):
        tokenize("a", context_length=1)
