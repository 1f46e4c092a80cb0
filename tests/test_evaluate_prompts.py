"""Prompts sent per benchmark == the reference templates (§5), written out by hand here."""

from evaluate_fixtures import vstar_item

from o3video_jax.data.tokenizer import QWEN_VL_CHAT_TEMPLATE, Tokenizer, make_tiny_tokenizer
from o3video_jax.evaluate import prompts as P

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
THINK = (
    "You must first think about the reasoning process in the mind and then provide the user "
    "with the answer. The reasoning process and answer are enclosed within <think> </think> "
    "and <answer> </answer> tags, respectively."
)
GROUNDED = (
    "All reasoning must be grounded in visual evidence from the video. When you mention any "
    "related object, person, or specific visual element, you must strictly follow the "
    "following format: `<obj>object_name</obj><box>bounding_box</box>at<t>time_in_seconds</t>s`."
)
FRAMES = f"Frame 1 at 0.0s: {IMG}\nFrame 2 at 1.0s: {IMG}\nFrame 3 at 2.1s: {IMG}\n"
TIMES = [0.0, 1.0, 2.0666]


def _vstar(think):
    return {p.call: p for p in P.vstar_prompts(vstar_item("v0"), TIMES, think)}


def test_vstar_five_calls_think():
    got = _vstar(True)
    assert list(got) == ["vqa", "temporal", "spatial", "spatial_2", "temporal_2"]
    assert got["vqa"].text == (
        FRAMES + "Answer the question about the video: What moves across the video? \n (If the "
        "answer is a person, you don't need to identify the person.)" + THINK + " " + GROUNDED
        + " Do not use <box>, <obj> and <t> in the answer part."
    )  # fmt: skip
    assert got["temporal"].text == (
        "This video is 3.0 seconds long. " + FRAMES + "\nAnswer the question about the video: "
        "When does the square move? \n. " + THINK + " The answer must follow the following "
        "format: `From <t>start_time</t>s to <t>end_time</t>s'"
    )
    # chain 1 Where: the GT time range [ceil(0.6), floor(2.4)] = [1, 2] is handed over
    assert got["spatial"].text == (
        FRAMES + "\nPlease answer the question about the video: Where is the square? with a "
        "series of bounding boxes in [x1, y1, x2, y2] format.\n" + THINK + "\nIn the answer part, "
        "for each whole second within the time range [1, 2] provided (inclusive of the "
        "boundaries), output a series of bounding boxes of the object in JSON format. The keys "
        "should be the whole seconds (as strings), and the values should be the box in "
        '[x1, y1, x2, y2] format.\nExample output of the answer part: {"1": [x1, y1, x2, y2],'
        "...}\n"
    )
    assert got["spatial_2"].text == (
        FRAMES + "\nPlease answer the question about the video: Where is the moving square? "
        "with a series of bounding boxes in [x1, y1, x2, y2] format.\n" + THINK + "\nIn the "
        "answer part, for each whole second that may related to the question, output a series "
        "of bounding boxes of the object in JSON format. You only need to output 2 bbox(es). "
        "You need to determine which frame is related to the question, and you don't need to "
        "output the bbox for the frames not related to the question.\nThe keys should be the "
        "whole seconds (as strings), and the values should be the bounding box in [x0,y0,x1,y1] "
        'format.\n\nExample output of the answer part:\n{"0": [x0,y0,x1,y1], "1":..., ..., '
        '"2":...} (if the frames at 0~2 second are related to the questions)\n'
    )
    # chain 2 When: the GT boxes (count and list, no times) are handed over
    assert got["temporal_2"].text == (
        "This video is 3.0 seconds long with a resolution of 64x48 (width x height). " + FRAMES
        + "\nAnswer the question about the video: When does the square move? \nThere are 2 "
        "bounding boxes of the key object related to the question in the video without knowing "
        "the time, which are:[[4, 10, 16, 22], [8, 10, 20, 22]]. " + THINK + " The answer must "
        "follow the following format: `From <t>start_time</t>s to <t>end_time</t>s'"
    )  # fmt: skip


def test_vstar_non_think_and_chat_rendering(tmp_path):
    got = _vstar(False)
    assert got["temporal"].text.endswith(
        "When does the square move? \nDirectly output the start and end moment timestamps. You "
        "must follow the following format: `From <t>start_time</t>s to <t>end_time</t>s'."
    )
    assert got["spatial"].text.startswith(FRAMES + "\nPlease answer")
    assert "format.\nFor each whole second within the time range [1, 2]" in got["spatial"].text
    assert got["spatial"].text.endswith('Example output: {"1": [x1, y1, x2, y2],...}\n')
    assert "format.\n\nExample output:\n{" in got["spatial_2"].text
    # The chat the model sees: default system prompt, each frame's image tag in its line.
    tok = make_tiny_tokenizer(tmp_path, ["Frame"])
    text = tok.render(P.render_messages(got["vqa"], 3), add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        + FRAMES + "Answer the question about the video: What moves across the video? \n (If "
        "the answer is a person, you don't need to identify the person.)<|im_end|>\n"
        "<|im_start|>assistant\n"
    )  # fmt: skip
    assert isinstance(tok, Tokenizer) and tok.chat_template == QWEN_VL_CHAT_TEMPLATE


def test_videomme_prompt_and_chat(tmp_path):
    item = {"question": "How many?", "options": ["A. One.", "B. Two.", "C. 3.", "D. 4."]}
    plain = P.videomme_prompt(item, think=False)
    assert plain.text == (
        "Select the best answer to the multiple-choice question based on the video. Respond "
        "with only the letter (A, B, C, or D) of the correct option.\nHow many?\nA. One.\n"
        "B. Two.\nC. 3.\nD. 4.\n"
    )
    think = P.videomme_prompt(item, think=True)
    assert think.text == (
        "Question:How many?\nA. One.\nB. Two.\nC. 3.\nD. 4.\nSelect the best answer to the "
        "multiple-choice question based on the video. " + THINK + " " + GROUNDED + " The "
        "reasoning process MUST NOT be longer than 100 words. In the answer part, respond with "
        "only the letter (A, B, C, or D) of the correct option."
    )
    tok = make_tiny_tokenizer(tmp_path, ["Select"])
    text = tok.render(P.render_messages(plain), add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|video_pad|><|vision_end|>" + plain.text + "<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_worldsense_prompt():
    item = {"question": "What colour?", "candidates": ["A. Red.", "B. Green."]}
    assert P.worldsense_prompt(item, think=False).text == (
        "Carefully watch this video and pay attention to every detail. Based on your "
        "observations, select the best option that accurately addresses the question.\nThese "
        "are the frames of a video. Audio transcripts of the video:\nThis video does not have "
        "audio transcripts. Question: What colour?\nA. Red.\nB. Green.\n\nSelect the best answer "
        "to the multiple-choice question based on the video. Respond with only the letter (A, "
        "B, C, or D) of the correct option. "
    )
    think = P.worldsense_prompt(item, think=True).text
    assert think.endswith(
        "B. Green.\n\nSelect the best answer to the multiple-choice question based on the "
        "video. " + THINK + " " + GROUNDED + " The reasoning process MUST NOT be longer than 100 "
        "words.In the answer part, respond with only the letter (A, B, C, or D) of the correct "
        "option. "
    )


def test_videommmu_prompts():
    mcq = {"question": "Which law?", "options": ["Newton", "Ohm"], "category": "Perception"}
    assert P.videommmu_prompt(mcq, think=False).text == (
        "Which law?\nA. Newton\nB. Ohm\nQuestion Category:Perception\nPlease ignore the Quiz "
        "question in last frame of the video."
    )
    open_q = {
        "question": "How many beats?",
        "options": [],
        "category": "Adaptation",
        "question_type": "open",
        "image_bytes": b"png",
    }
    got = P.videommmu_prompt(open_q, think=True)
    assert got.image
    assert got.text == (
        "How many beats?\n\nQuestion Category:Adaptation\nYou should watch and learn the video "
        "content. Then apply what you learned to the question. Some key information of the "
        "question is in the input image.\n" + THINK + " " + GROUNDED + " The reasoning process "
        "MUST NOT be longer than 100 words. In the answer part, respond with only the final "
        "answer."
    )
    lettered = {"question": "Q", "options": ["A. x", "B. y"], "category": "Comprehension"}
    assert P.videommmu_prompt(lettered, False).text.startswith("Q\nA. x\nB. y\n")
    messages = P.render_messages(got)
    assert [c["type"] for c in messages[0]["content"]] == ["video", "image", "text"]


def test_tvg_and_relevance_prompts():
    got = P.tvg_prompt({"query": "the square moves"}, [0.0, 0.5], 2.0, 2)
    assert got.text == (
        f"Frame 1 at 0.0s: {IMG}\nFrame 2 at 0.5s: {IMG}\nThe video is in total 1 seconds.\n"
        "the square moves"
    )
    # the RL temporal-QA system prompt the model was trained with (§1.3)
    assert got.system.startswith("A conversation between user and assistant. The user provides")
    assert "From <t>start_time</t>s to <t>end_time</t>s" in got.system
    msgs = P.relevance_messages("Q?\nA. x", 2)
    assert msgs[0]["content"] == (
        "You are a helpful assistant. Only reply with a single digit: 0, 1, or 2."
    )
    assert msgs[1]["content"][0]["text"] == (
        "You will be given a video question and a set of cropped images extracted from the "
        "video.\nScore how related these images are to answering the question.\n\nScoring "
        "rules:\n2 = clearly relevant to answering the question\n1 = might be useful but "
        "uncertain\n0 = not relevant at all\n\nOnly output one of: 0, 1, or 2. No other text.\n"
        "Question: Q?\nA. x"
    )
    assert [c["type"] for c in msgs[1]["content"][1:]] == ["image", "image"]
