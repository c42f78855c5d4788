"""The errors hf_rlhf reports to users: each message names the file, key, row or repo at fault and what to do.

`hf-rlhf` prints these as one line (`hf-rlhf <command>: error: ...`) and exits with code 1; anything else is a bug
and keeps its traceback. A leaf module: every other module may import it.
"""

from __future__ import annotations


class RecipeError(ValueError):
    """A recipe file or command line that cannot be used: names the file and the key at fault."""


class DataValidationError(ValueError):
    """A dataset that a stage cannot train on. The message says where and what was expected."""


class ModelNotFoundError(FileNotFoundError):
    """A model or tokenizer path that does not exist or holds no model."""


class IncompleteStageError(RuntimeError):
    """A stage directory that has no complete manifest."""


class HubError(RuntimeError):
    """A Hub input that cannot be read, or a stage that cannot be pushed. The message says what to do."""


class HubInputError(HubError):
    """A Hub repo id that cannot be resolved (not found, no such revision, gated, offline and not cached)."""


class HubPushError(HubError):
    """A push that failed; the local stage output is untouched and `hf-rlhf push` retries it."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the message says where, what was kept and what to try."""


class TrainingInterrupted(RuntimeError):
    """Training stopped on SIGTERM after saving a complete checkpoint; the message says how to resume."""


# What `hf-rlhf` reports as one line and exit code 1 (TrainingInterrupted exits with 143, see hf_rlhf.resilience).
USER_ERRORS = (
    RecipeError,
    DataValidationError,
    ModelNotFoundError,
    IncompleteStageError,
    HubError,
    NonFiniteLossError,
)
