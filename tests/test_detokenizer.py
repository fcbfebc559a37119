"""runtime.generate.Detokenizer: the anchored incremental decode gives, after every token, exactly the
tokenizer's decode of all tokens so far, and its pieces add up to that text; with byte tokens cut
inside UTF-8 characters, a tokenizer whose decode is not a concatenation, stop strings, and
SmolLM2's real tokenizer where it is installed."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime._testing import CharTokenizer
from runtime.generate import Detokenizer


class StripTokenizer(CharTokenizer):
    """Like sentencepiece's decoders: one leading space of the decoded text is dropped, so
    decode(a + b) != decode(a) + decode(b) when b's text starts with a space."""

    def decode(self, ids, skip_special_tokens=True):
        text = super().decode(ids, skip_special_tokens)
        return text[1:] if text.startswith(" ") else text


class CountingTokenizer(CharTokenizer):
    def __init__(self):
        self.decoded = 0

    def decode(self, ids, skip_special_tokens=True):
        self.decoded += len(ids)
        return super().decode(ids, skip_special_tokens)


def feed(tok, ids, stop=(), window=None, check=True):
    d = Detokenizer(tok, stop)
    if window:
        d.WINDOW, d.check_at = window, 2 * window
    pieces, hit = [], False
    for i, t in enumerate(ids):
        piece, hit = d.add(t)
        pieces.append(piece)
        if hit:
            break
        assert not check or d.text == tok.decode(ids[:i + 1]), i
    return d, "".join(pieces) + d.finish(), hit


TEXT = st.lists(st.sampled_from(["a", "b", " ", ".", "\n", "é", "€", "🙂", "ab c", "  "]), max_size=120).map("".join)


@settings(max_examples=60, deadline=None)
@given(text=TEXT, window=st.sampled_from([1, 2, 3, 8]), strip=st.booleans(), cut=st.integers(0, 400))
def test_text_equals_full_decode_after_every_token(text, window, strip, cut):
    tok = StripTokenizer() if strip else CharTokenizer()
    ids = tok.encode(text)
    ids = ids[:cut] + [1] + ids[cut:]                 # a special token (decodes to nothing) somewhere
    d, out, _ = feed(tok, ids, window=window)
    assert out == getattr(d, "text", "") == tok.decode(ids)


@settings(max_examples=40, deadline=None)
@given(text=TEXT, stop=st.sampled_from(["b.", "€ ", "\n\n", "🙂a", "c"]), window=st.sampled_from([1, 2, 5]))
def test_stop_strings_end_the_text_as_without_anchors(text, stop, window):
    tok = CharTokenizer()
    ids = tok.encode(text)
    d, out, hit = feed(tok, ids, (stop,), window)
    ref, ref_out, ref_hit = feed(tok, ids, (stop,), 10 ** 9)   # never anchors: a full decode per token
    assert (out, hit, getattr(d, "text", "")) == (ref_out, ref_hit, getattr(ref, "text", ""))
    assert hit == (stop in tok.decode(ids))


def test_cost_per_token_stays_bounded():
    tok = CountingTokenizer()
    d, out, _ = feed(tok, tok.encode("abc " * 500), window=32, check=False)    # 2000 tokens
    assert out == "abc " * 500
    assert tok.decoded < 2000 ** 2 / 8                # a full decode per token: 2000**2 / 2 token decodes


def test_smollm2_tokenizer():
    try:
        from quant.source import smollm2_gguf_path
        from transformers import AutoTokenizer
        import pathlib
        g = pathlib.Path(smollm2_gguf_path())
        tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
    except Exception as e:                            # noqa: BLE001 - the package or transformers' GGUF support
        pytest.skip(f"SmolLM2 tokenizer unavailable: {e}")
    import numpy as np
    rng = np.random.default_rng(0)
    text = "Once upon a time, in a café — naïve 🙂 coöperation… 日本語のテキスト.\n\n  x = f(y)  # ok"
    for ids in (tok.encode(text * 4), rng.integers(0, tok.vocab_size, 300).tolist()):
        for window in (3, 32):
            d, out, _ = feed(tok, ids, window=window)
            assert out == d.text == tok.decode(ids, skip_special_tokens=True)
