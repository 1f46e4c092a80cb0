"""V-STaR "What" judges: `judge(question, groundtruth, candidate) -> 0..3 (or -1)`.

Default (no judge): `eval.vstar.metrics`' exact match of normalised strings (3 or 0).
The paper rates answers with Qwen2.5-72B-Instruct (greedy, at most 512 new tokens) and the
prompt below (`eval_vstar.py`). Any OpenAI-compatible chat endpoint serves it, e.g. vLLM:

    vllm serve Qwen/Qwen2.5-72B-Instruct --tensor-parallel-size 8 --port 8000
    python -m o3video_jax.evaluate ... --config.eval.judge_url=http://HOST:8000/v1 \
        --config.eval.judge_model=Qwen/Qwen2.5-72B-Instruct

A reply that is not an integer scores -1 (counted as 0 in the mean score, not correct). A
network failure raises: a silently missing rating would bias the accuracy.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable

__all__ = ["JUDGE_SYSTEM", "JUDGE_USER", "Judge", "make_judge", "openai_judge"]

JUDGE_SYSTEM = """
As an AI assistant, your task is to evaluate a candidate answer in comparison to a given correct answer.
The question itself, the correct 'groundtruth' answer, and the candidate answer will be provided to you.
Your assessment should range from 0 to 3, based solely on the semantic similarity between the groundtruth and the candidate answer, disregarding any grammatical differences.
A rating of 0 suggests no similarity, implying the candidate answer is entirely incorrect.
A rating of 1 suggests low similarity, meaning the candidate answer is largely incorrect.
A rating of 2 suggests high similarity, meaning the candidate answer is largely correct.
Lastly, a rating of 3 indicates complete similarity, which means the candidate answer is entirely correct.
Your response should be a single integer from 0, 1, 2, or 3.
"""
JUDGE_USER = "Question: {}\nGroundtruth answer: {}\nCandidate answer: {}\nYour response: "

Judge = Callable[[str, str, str], int]


def _parse(reply: str) -> int:
    try:
        return int(reply)  # upstream: int(reply), anything else -> -1
    except (TypeError, ValueError):
        return -1


def openai_judge(
    base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0
) -> Judge:
    """A judge backed by `POST {base_url}/chat/completions` (temperature 0, 512 tokens)."""
    url = base_url.rstrip("/") + "/chat/completions"
    key = os.environ.get(api_key_env, "")

    def judge(question: str, groundtruth: str, candidate: str) -> int:
        body = {
            "model": model,
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": JUDGE_USER.format(question, groundtruth, candidate)},
            ],
            "temperature": 0.0,
            "max_tokens": 512,
        }
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            reply = json.loads(resp.read().decode())
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"judge endpoint {url} returned no choices: {reply!r}") from None
        return _parse(text.strip() if isinstance(text, str) else text)

    return judge


def make_judge(url: str, model: str, api_key_env: str = "OPENAI_API_KEY") -> Judge | None:
    """None (exact match) when no URL is configured, else an `openai_judge`."""
    if not url:
        return None
    if not model:
        raise ValueError("eval.judge_url is set but eval.judge_model is empty")
    return openai_judge(url, model, api_key_env=api_key_env)
