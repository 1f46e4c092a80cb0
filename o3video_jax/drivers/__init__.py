"""The drivers: everything above the libraries (docs/architecture.md).

Config resolution (`experiment`, `model_config`), preflight, the AOT planner (`aot`), the loop
skeleton (`loop`) with the SFT (`sft`) and GSPO (`gspo`) loops on it, held-out evaluation during
training (`heldout`, `evaluation`), the two-stage run, the pod tools (`smoke`, `supervise`) and the
command lines (`cli`, `plan`). The benchmark evaluation, sweep, demo and infer entry points are
drivers too; they keep their own top-level modules. Nothing below this floor imports it.
"""
