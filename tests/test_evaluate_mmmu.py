"""VideoMMMU open answers: MMMU's parse_open_response / eval_open, hand-derived cases."""

from o3video_jax.eval import mmmu


def test_key_subresponse_numbers_and_strings():
    preds = mmmu.parse_open_response("So the total is 1,200 dollars")
    # shortest tail after an indicator ("is "), then its numbers: "1,200" and the bare "200"
    assert preds == ["1,200 dollars", 1200.0, 200.0]
    assert mmmu.eval_open("1200", preds) and mmmu.eval_open("dollars", preds)
    assert not mmmu.eval_open("5", preds)
    assert mmmu.parse_open_response("The answer is 4.") == [4.0]
    assert mmmu.eval_open(["3", "4"], [4.0])


def test_single_characters_and_empty_replies():
    assert mmmu.normalize_str("A") == [" a", "a "]  # no trivial substring matches
    assert not mmmu.eval_open("a", ["banana"])
    assert mmmu.parse_open_response("") == []
    # MMMU's regexes as written: the plain-number pattern also splits "-3.5e2" and "1,000"
    assert mmmu.extract_numbers("-3.5e2 and 12, 1,000") == ["1,000", "-3.5e2", "-3", "2", "000"]
