"""The six STGR task names (docs/open_o3_video.md §1.3): the one task vocabulary.

The records reader (`data.records`) validates a record's task against these names; the reward
code (`rewards`) turns a name into its integer id (`TASK_IDS`, the index in `TASKS`) for the
jitted scoring. Both import them from here.
"""

TEMPORAL_SPATIAL = "temporal-spatial free-form QA"
VISUAL_QA = "visual QA"
TEMPORAL_QA = "temporal QA"
TEMPORAL_QA_MCQ = "temporal QA (MCQ)"
GENERAL_MCQ = "General video QA MCQ"
GENERAL_FREE_FORM = "General video QA Free-form"

# In the order of their integer ids.
TASKS = (
    TEMPORAL_SPATIAL,
    VISUAL_QA,
    TEMPORAL_QA,
    TEMPORAL_QA_MCQ,
    GENERAL_MCQ,
    GENERAL_FREE_FORM,
)
TASK_IDS = {name: i for i, name in enumerate(TASKS)}
SFT_TASKS = tuple(t for t in TASKS if t != TEMPORAL_QA_MCQ)  # upstream SFT has no TG-MCQ prompt
