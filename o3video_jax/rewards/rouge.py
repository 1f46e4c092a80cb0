"""Fast mean of the ROUGE-1/2/L F-measures, bit-identical to `rouge_score` with the Porter stemmer.

The free-form `ans_acc` reward is `(F1 + F2 + FL) / 3` of `RougeScorer(['rouge1', 'rouge2',
'rougeL'], use_stemmer=True).score(reference, hypothesis)` (docs/open_o3_video.md §3). Scoring that way
re-stems every token and fills an O(n·m) LCS table in pure Python. Here:
  * tokenisation is rouge_score's own `tokenize.tokenize`, with a memoising stemmer (the
    Porter stemmer is a pure function of the word);
  * the reference side (tokens, n-gram counts, LCS match masks) is cached per unique reference,
    since all G completions of a prompt share it;
  * the LCS length uses the bit-parallel recurrence of Crochemore et al. (2001) on Python ints,
    one big-int step per hypothesis token;
  * precision, recall and F are the same float expressions as rouge_score, so the result is the
    same float, not merely a close one.
`rouge_mean_f_batch` scores many pairs at once: tokens become integer ids, and the n-gram
overlaps (sums of min counts, integers) and the F arithmetic run in numpy over the batch;
only tokenisation and the LCS stay per pair.
"""

from __future__ import annotations

import collections
import functools
import itertools
from collections import _count_elements  # C helper behind Counter.update
from typing import NamedTuple

import numpy as np
from nltk.stem import porter
from rouge_score import tokenize as rouge_tokenize

_MAX_STEM_CACHE = 1 << 20
_STEMMER = porter.PorterStemmer()  # rouge_score's DefaultTokenizer(use_stemmer=True)


class _Tokens(dict):
    """word -> its token (the Porter stem of words longer than 3 characters, else the word
    itself), None when that is not a valid token. Filled on first use (`__missing__`), so a
    lookup of a known word stays in C."""

    def __missing__(self, word: str) -> str | None:
        if len(self) >= _MAX_STEM_CACHE:
            self.clear()
        token = word
        if len(word) > 3:
            token = _STEMMER.stem(word)
            if not rouge_tokenize.VALID_TOKEN_RE.match(token):
                token = None
        self[word] = token
        return token


_TOKENS = _Tokens()


# ASCII text: each byte outside [a-z0-9] becomes a space (bytes.translate runs in C).
_ALNUM_OR_SPACE = bytes(c if 48 <= c <= 57 or 97 <= c <= 122 else 32 for c in range(256))


def tokenize(text: str) -> list[str]:
    """`rouge_score.tokenize.tokenize(text, PorterStemmer())`, memoising the stemmer.

    Lowercase, replace runs of [^a-z0-9] by a space, split, stem words longer than 3
    characters, keep tokens matching ^[a-z0-9]+$. After the substitution only [a-z0-9] and
    spaces remain, so `str.split` equals the `\\s+` split minus its empty strings (and for
    ASCII text, replacing each such character instead of each run splits the same), and
    unstemmed words are always valid (and non-empty, so `filter(None, ..)` drops exactly the
    invalid ones).
    """
    lower = text.lower()
    if lower.isascii():
        words = lower.encode("ascii").translate(_ALNUM_OR_SPACE).decode("ascii").split()
    else:
        words = rouge_tokenize.NON_ALPHANUM_RE.sub(" ", lower).split()
    return list(filter(None, map(_TOKENS.__getitem__, words)))


class _Reference(NamedTuple):
    """A tokenised ROUGE reference: distinct n-grams with counts, LCS position masks."""

    length: int
    unigrams: list
    unigram_counts: list
    bigrams: list
    bigram_counts: list
    masks: dict  # token -> bitmask of its positions


@functools.lru_cache(maxsize=4096)
def _reference(text: str) -> _Reference:
    tokens = tokenize(text)
    uni = collections.Counter(tokens)
    bi = collections.Counter(zip(tokens, tokens[1:], strict=False))
    masks: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return _Reference(
        len(tokens), list(uni), list(uni.values()), list(bi), list(bi.values()), masks
    )


def lcs_length(masks: dict[str, int], m: int, hypothesis: list[str]) -> int:
    """LCS length of a reference of m tokens (`masks`: token -> bitmask of its positions) and a
    hypothesis: V' = (V + (V & M)) | (V & ~M); the LCS length is the number of zero bits."""
    full = (1 << m) - 1
    v = full
    for tok in hypothesis:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return m - v.bit_count()


def _fmeasure(precision, recall):
    # rouge_score.scoring.fmeasure, expression for expression.
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _counts(grams) -> dict:
    # Counter(grams) without Counter's Python-level __init__ (its C counting helper).
    out: dict = {}
    _count_elements(out, grams)
    return out


def _ngram_f(grams: list, counts: list, target_total: int, prediction: dict, total: int):
    """rouge_score.rouge_scorer._score_ngrams: sum over target n-grams of min(target count,
    prediction count) (integers, so the order is irrelevant), then the same divisions."""
    intersection = sum(map(min, counts, map(prediction.get, grams, itertools.repeat(0))))
    precision = intersection / max(total, 1)
    recall = intersection / max(target_total, 1)
    return _fmeasure(precision, recall)


def rouge_mean_f(reference: str, hypothesis: str) -> float:
    """(ROUGE-1 F + ROUGE-2 F + ROUGE-L F) / 3 with rouge_score's tokenizer and Porter stemmer."""
    ref = _reference(reference)
    hyp = tokenize(hypothesis)
    m, h = ref.length, len(hyp)
    r1 = _ngram_f(ref.unigrams, ref.unigram_counts, m, _counts(hyp), h)
    bigrams = _counts(zip(hyp, hyp[1:], strict=False))
    r2 = _ngram_f(ref.bigrams, ref.bigram_counts, max(m - 1, 0), bigrams, max(h - 1, 0))
    if not m or not h:
        rl = 0  # rouge_score's Score(precision=0, recall=0, fmeasure=0)
    else:
        lcs = lcs_length(ref.masks, m, hyp)
        rl = _fmeasure(lcs / h, lcs / m)
    return (r1 + r2 + rl) / 3


# ---------------------------------------------------------------------------------------------
# Batch form: token ids.


class _WordIds(dict):
    """word -> id of its token (ids from 1, shared by words with the same token), 0 when the
    word yields no valid token."""

    def __init__(self):
        super().__init__()
        self.token_ids: dict[str, int] = {}

    def __missing__(self, word: str) -> int:
        token = _TOKENS[word]
        out = 0 if token is None else self.token_ids.setdefault(token, len(self.token_ids) + 1)
        self[word] = out
        return out


_WORD_IDS = _WordIds()


def _words(text: str) -> list[str]:
    # tokenize() before the stemming (see its docstring).
    lower = text.lower()
    if lower.isascii():
        return lower.encode("ascii").translate(_ALNUM_OR_SPACE).decode("ascii").split()
    return rouge_tokenize.NON_ALPHANUM_RE.sub(" ", lower).split()


def _token_ids(text: str) -> list[int]:
    """Ids of tokenize(text), in order."""
    return list(filter(None, map(_WORD_IDS.__getitem__, _words(text))))


@functools.lru_cache(maxsize=4096)
def _reference_ids(text: str) -> tuple[list[int], dict[int, int]]:
    ids = _token_ids(text)
    masks: dict[int, int] = {}
    for i, tok in enumerate(ids):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return ids, masks


def _overlap(ref_keys: np.ndarray, hyp_keys: np.ndarray, stride: int, pairs: int) -> np.ndarray:
    """Per pair, sum over distinct n-grams of min(reference count, hypothesis count), from
    int64 keys pair * stride + n-gram id."""
    ref, ref_count = np.unique(ref_keys, return_counts=True)
    hyp, hyp_count = np.unique(hyp_keys, return_counts=True)
    common, i, j = np.intersect1d(ref, hyp, assume_unique=True, return_indices=True)
    both = np.minimum(ref_count[i], hyp_count[j])
    return np.bincount(common // stride, both, minlength=pairs).astype(np.int64)


def _bigram_keys(ids: np.ndarray, pair: np.ndarray, v: int) -> np.ndarray:
    same = pair[:-1] == pair[1:]  # consecutive tokens of one text
    return (pair[:-1][same] * v + ids[:-1][same]) * v + ids[1:][same]


def _f(overlap: np.ndarray, predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """_fmeasure(overlap / max(predicted, 1), overlap / max(target, 1)), elementwise."""
    precision = overlap / np.maximum(predicted, 1)
    recall = overlap / np.maximum(target, 1)
    total = precision + recall
    out = np.zeros(len(overlap))
    np.divide(2 * precision * recall, total, out=out, where=total > 0)
    return out


def rouge_mean_f_batch(references: list[str], hypotheses: list[str]) -> np.ndarray:
    """float64[P]: rouge_mean_f(reference, hypothesis) for P pairs, the same floats."""
    if len(_WORD_IDS) >= _MAX_STEM_CACHE:  # bound memory; ids restart, so do cached references
        _WORD_IDS.clear()
        _WORD_IDS.token_ids.clear()
        _reference_ids.cache_clear()
    ref_ids, hyp_ids, ref_len, hyp_len, lcs = [], [], [], [], []
    reference_ids, token_ids = _reference_ids, _token_ids
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ref, masks = reference_ids(reference)
        hyp = token_ids(hypothesis)
        m, h = len(ref), len(hyp)
        lcs.append(lcs_length(masks, m, hyp) if m and h else 0)
        ref_ids += ref
        hyp_ids += hyp
        ref_len.append(m)
        hyp_len.append(h)
    p = len(lcs)
    m, h, lcs = (np.array(x, np.int64).reshape(p) for x in (ref_len, hyp_len, lcs))
    ref_ids, hyp_ids = (np.array(x, np.int64).reshape(-1) for x in (ref_ids, hyp_ids))
    ref_pair, hyp_pair = np.repeat(np.arange(p), m), np.repeat(np.arange(p), h)
    v = int(max(ref_ids.max(initial=0), hyp_ids.max(initial=0))) + 1
    if p * v * v >= 1 << 62:  # keep int64 bigram keys exact: renumber the ids of this batch
        _, dense = np.unique(np.concatenate([ref_ids, hyp_ids]), return_inverse=True)
        ref_ids, hyp_ids = dense[: len(ref_ids)], dense[len(ref_ids) :]
        v = int(dense.max(initial=0)) + 1
    r1 = _f(_overlap(ref_pair * v + ref_ids, hyp_pair * v + hyp_ids, v, p), h, m)
    bigrams = _overlap(
        _bigram_keys(ref_ids, ref_pair, v), _bigram_keys(hyp_ids, hyp_pair, v), v * v, p
    )
    r2 = _f(bigrams, np.maximum(h - 1, 0), np.maximum(m - 1, 0))
    rl = np.where((m > 0) & (h > 0), _f(lcs, h, m), 0.0)
    return (r1 + r2 + rl) / 3
