"""Helpers of the tests that run the training loops in subprocesses (test_train_loop,
test_eval_every, test_multiprocess); their fixtures `loop_env` and `loop_data` are in
conftest.py."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def base_flags(data, stage: str) -> dict:
    """Config flags of a run on `data`: its records, no generation, quiet logging."""
    return {
        "data.synthetic.videos": 0,
        "data.train_json": data.sft_json if stage == "sft" else data.rl_json,
        "data.media_root": data.media_root,
        "data.tokenizer_dir": data.tokenizer_dir,
        "optim.schedule": "constant",
        "log.progress": False,
        "log.tensorboard": False,
    }
