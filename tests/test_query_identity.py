"""Which query texts are one query (serving/query_identity.py): the key of de-duplication and of the score
cache. The rule is checked against the tokenizers themselves: texts that share a key tokenize to the same
ids, and a cased tokenizer keeps texts apart that an uncased one merges."""

from __future__ import annotations

import itertools
import pickle

import pytest

from rerank_engine.serving.query_identity import QueryKey, QueryNormaliser

VARIANTS = [
    "What is COBRA?",
    "what is cobra?",
    "  what is\tcobra?\n",
    "what  is cobra ?",
    "what is cobra",
    "US life insurance",
    "us life insurance",
    "straße",
    "strasse",
    "ﬁle a claim",
    "file a claim",
    "Été",
    "ete",
    "a [SEP] b",
    "a [sep] b",
    "x\x1cy",
    "x y",
]


@pytest.fixture(scope="module")
def cased_tokenizer():
    """An XLM-R-like tokenizer (NFKC, SentencePiece ▁ pre-tokenizer): cased, whitespace kept as ▁."""
    from tests.conftest import _xlmr_tokenizer

    return _xlmr_tokenizer()


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, "a passage")["input_ids"]


@pytest.mark.parametrize("which", ["bundled_tokenizer", "cased_tokenizer"])
def test_texts_sharing_a_key_tokenize_alike(request, which):
    tokenizer = request.getfixturevalue(which)
    key = QueryNormaliser.of(tokenizer)
    for a, b in itertools.combinations(VARIANTS, 2):
        if key(a) == key(b):
            assert _ids(tokenizer, a) == _ids(tokenizer, b), (a, b)


def test_an_uncased_tokenizer_merges_case_and_spacing_but_not_casefold(bundled_tokenizer):
    key = QueryNormaliser.of(bundled_tokenizer)
    assert key("What is COBRA?") == key("  what is\tcobra?\n") == key("what is  cobra?")
    assert key("Été") == key("ete")  # the uncased BERT normalizer strips accents
    assert key("straße") != key("strasse")  # str.casefold would merge them; the tokenizer does not
    assert _ids(bundled_tokenizer, "straße") != _ids(bundled_tokenizer, "strasse")
    assert key("a [SEP] b") != key("a [sep] b")  # an added token is matched before normalizing


def test_a_cased_tokenizer_keeps_case_apart(cased_tokenizer):
    key = QueryNormaliser.of(cased_tokenizer)
    assert key("US life insurance") != key("us life insurance")
    assert not key.collapse_whitespace  # Metaspace gives whitespace a token of its own
    assert key("ﬁle a claim") == key("file a claim")  # its NFKC normalizer merges the ligature


def test_a_query_is_one_only_where_every_model_reading_it_agrees(bundled_tokenizer, cased_tokenizer):
    both = QueryKey([QueryNormaliser.of(cased_tokenizer), QueryNormaliser.of(bundled_tokenizer)])
    uncased = QueryKey([QueryNormaliser.of(bundled_tokenizer)])
    assert uncased("US life insurance") == uncased("us life insurance")
    assert both("US life insurance") != both("us life insurance")
    assert pickle.loads(pickle.dumps(both))("US") == both("US")  # shipped to Ray actors


def test_a_tokenizer_without_a_fast_backend_keys_texts_as_they_are():
    key = QueryNormaliser.of(object())
    assert key("What is COBRA?") != key("what is cobra?") and key(" x ") == " x "
