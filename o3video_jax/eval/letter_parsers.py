"""Upstream's non-think option-letter parsers, one per benchmark (`eval.letter_parser="upstream"`).

Open-o3 Video's evaluation reads the letter of a direct (non-think) reply with three variants
of MMMU's substring search (`eval/dataloader/{videomme,worldsense,videommmu}.py`,
`parse_multi_choice_response`). They look for literal pieces such as "B." or "(B)" anywhere in
the reply, so a letter inside a word counts ("DNA." holds "A."). `mcq.extract_letter` is our
word-bounded parser (`eval.letter_parser="ours"`); these reproduce upstream's decisions:

1. An empty reply has no letter. Otherwise ",.!?;:'" are stripped from both ends (in that
   order) and the reply is padded with one space on each side.
2. Candidates, each a literal piece found in the reply:
   - videomme / worldsense: for every piece pattern in `_PIECES` and every letter, the piece.
   - videommmu: "L." and "L:"; if none, "(L)"; if none, "L " (the letter is the candidate).
3. videomme / videommmu, no candidate and more than 5 words: every option whose text occurs
   (case-insensitive) is a candidate, and positions are those of the option text.
4. No candidate: none (worldsense: `random.choice` after `random.seed(42)`, i.e. always the
   same letter, "A" for A-D).
5. Several: the one whose piece occurs last (`rfind`; ties to the earliest candidate);
   videommmu looks up "L." if any period piece was found, else "L:", else "(L)", else " L ".
6. The letter is the first option letter contained in the chosen piece.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["LETTER_PARSERS", "upstream_letter"]

LETTER_PARSERS = ("upstream", "ours")
_STRIP = (",", ".", "!", "?", ";", ":", "'")
# videomme.py / worldsense.py, in their order: "{L}." "{L}:" "({L})" "{L} " "\n{L}\n" ...
_PIECES = (
    "{L}.", "{L}:", "({L})", "{L} ", "\n{L}\n", " {L}\n", "\n{L} ", ": {L}", ":{L}", ":\n{L}",
    "\n\n{L}", "**{L}**", "{{{L}}}",
)  # fmt: skip


def _clean(response: str) -> str:
    for ch in _STRIP:
        response = response.strip(ch)
    return " " + response + " "


def _last(candidates: list[str], where: list[int]) -> str:
    return candidates[max(range(len(where)), key=lambda i: (where[i], -i))]


def upstream_letter(
    response: str, benchmark: str, options: Sequence[str] = (), letters: str = "ABCD"
) -> str | None:
    """The letter upstream's parser for `benchmark` reads from a direct reply, or None.

    options: the option texts as the benchmark file gives them (content matching);
    letters: the choices (upstream: one per option for videomme / videommmu, A-D worldsense).
    """
    if benchmark not in ("videomme", "worldsense", "videommmu"):
        raise ValueError(f"no upstream letter parser for {benchmark!r}")
    if not isinstance(response, str) or response in ("", "API Error"):
        return None
    if benchmark != "worldsense" and options:
        letters = "".join(chr(ord("A") + i) for i in range(len(options)))
    text = _clean(response)
    if benchmark == "videommmu":
        found = [c for c in letters if f"{c}." in text] + [c for c in letters if f"{c}:" in text]
        kind = "." if any(f"{c}." in text for c in letters) else ":" if found else ""
        if not found:
            found, kind = [c for c in letters if f"({c})" in text], "()"
        if not found:
            found, kind = [c for c in letters if f"{c} " in text], " "
        pieces = {".": "{L}.", ":": "{L}:", "()": "({L})", " ": " {L} "}
        where_piece = [pieces.get(kind, " {L} ").format(L=c) for c in found]
    else:
        found = [p.format(L=c) for p in _PIECES for c in letters if p.format(L=c) in text]
        where_piece = list(found)
    content = False
    if not found and benchmark != "worldsense" and len(text.split()) > 5:
        index2ans = {chr(ord("A") + i): str(o) for i, o in enumerate(options)}
        found = [c for c, body in index2ans.items() if body.lower() in text.lower()]
        content = True
    if not found:
        if benchmark == "worldsense":
            return random.Random(42).choice(list(letters))
        return None
    if len(found) == 1:
        chosen = found[0]
    elif content:
        index2ans = {chr(ord("A") + i): str(o) for i, o in enumerate(options)}
        chosen = _last(found, [text.lower().rfind(index2ans[c].lower()) for c in found])
    else:
        chosen = _last(found, [text.rfind(p) for p in where_piece])
    if benchmark == "videommmu" or content:
        return chosen
    return next((c for c in letters if c in chosen), None)
