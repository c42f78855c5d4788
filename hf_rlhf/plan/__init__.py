"""`--dry-run`: a stage's or a pipeline's plan and a GPU memory estimate, without loading any weights.

Each stage's `plan(...)` (in `hf_rlhf.stages`) runs the checks its `run(...)` runs before a model is loaded and
describes the stage; this package adds only the launch layout (`launch`), the models' configs and exact parameter
counts on the meta device (`architecture`, `counting`), the memory arithmetic (`memory`), the rows a plan prints
(`context`, `rows`) and the entry points (`pipeline`).
"""

from __future__ import annotations

from ..errors import RecipeError


class DryRunError(RecipeError):
    """A recipe the dry run cannot plan: names the recipe key, model or dataset at fault and what to do."""
