"""Fast mean of the ROUGE-1/2/L F-measures, bit-identical to `rouge_score` with the Porter stemmer.

The free-form `ans_acc` reward is `(F1 + F2 + FL) / 3` of `RougeScorer(['rouge1', 'rouge2',
'rougeL'], use_stemmer=True).score(reference, hypothesis)` (reference §3). Scoring that way
re-stems every token and fills an O(n·m) LCS table in pure Python. Here:
  * tokenisation is rouge_score's own `tokenize.tokenize`, with a memoising stemmer (the
    Porter stemmer is a pure function of the word);
  * the reference side (tokens, n-gram counts, LCS match masks) is cached per unique reference,
    since all G completions of a prompt share it;
  * the LCS length uses the bit-parallel recurrence of Crochemore et al. (2001) on Python ints,
    one big-int step per hypothesis token;
  * precision, recall and F are the same float expressions as rouge_score, so the result is the
    same float, not merely a close one.
"""

from __future__ import annotations

import collections
import functools

from nltk.stem import porter
from rouge_score import tokenize as rouge_tokenize

_MAX_STEM_CACHE = 1 << 20


_STEMMER = porter.PorterStemmer()  # rouge_score's DefaultTokenizer(use_stemmer=True)
_STEMS: dict[str, str | None] = {}  # word -> its stem, None when the stem is not a valid token


def tokenize(text: str) -> list[str]:
    """`rouge_score.tokenize.tokenize(text, PorterStemmer())`, memoising the stemmer.

    Lowercase, replace runs of [^a-z0-9] by a space, split, stem words longer than 3
    characters, keep tokens matching ^[a-z0-9]+$. After the substitution only [a-z0-9] and
    spaces remain, so `str.split` equals the `\\s+` split minus its empty strings, and
    unstemmed words are always valid.
    """
    out = []
    for word in rouge_tokenize.NON_ALPHANUM_RE.sub(" ", text.lower()).split():
        if len(word) > 3:
            stem = _STEMS.get(word, "")
            if stem == "":
                if len(_STEMS) >= _MAX_STEM_CACHE:
                    _STEMS.clear()
                stem = _STEMMER.stem(word)
                stem = _STEMS[word] = stem if rouge_tokenize.VALID_TOKEN_RE.match(stem) else None
            if stem is None:
                continue
            word = stem
        out.append(word)
    return out


def _bigrams(tokens: list[str]) -> collections.Counter:
    return collections.Counter(zip(tokens, tokens[1:], strict=False))


@functools.lru_cache(maxsize=4096)
def _reference(text: str):
    tokens = tokenize(text)
    masks: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return tokens, collections.Counter(tokens), _bigrams(tokens), masks


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


def _ngram_f(target: collections.Counter, prediction: collections.Counter) -> float:
    # rouge_score.rouge_scorer._score_ngrams (integer counts, so summation order is irrelevant).
    intersection = sum(min(c, prediction[g]) for g, c in target.items())
    precision = intersection / max(sum(prediction.values()), 1)
    recall = intersection / max(sum(target.values()), 1)
    return _fmeasure(precision, recall)


def rouge_mean_f(reference: str, hypothesis: str) -> float:
    """(ROUGE-1 F + ROUGE-2 F + ROUGE-L F) / 3 with rouge_score's tokenizer and Porter stemmer."""
    ref_tokens, ref_uni, ref_bi, masks = _reference(reference)
    hyp_tokens = tokenize(hypothesis)
    r1 = _ngram_f(ref_uni, collections.Counter(hyp_tokens))
    r2 = _ngram_f(ref_bi, _bigrams(hyp_tokens))
    if not ref_tokens or not hyp_tokens:
        rl = 0  # rouge_score's Score(precision=0, recall=0, fmeasure=0)
    else:
        lcs = lcs_length(masks, len(ref_tokens), hyp_tokens)
        rl = _fmeasure(lcs / len(hyp_tokens), lcs / len(ref_tokens))
    return (r1 + r2 + rl) / 3
