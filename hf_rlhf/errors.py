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


class ModelRoleError(ValueError):
    """A model given for a role it cannot play (a causal LM as reward model, a reward model as policy, an adapter on
    another base, a head that would be newly initialised): names the path, what it is and what was expected."""


class TokenizerMismatchError(ValueError):
    """Two models that must share a tokenizer (e.g. a value model initialised from the reward model) do not."""


class RemoteCodeError(RuntimeError):
    """Remote model code that is not allowed to run: from a repo the recipe does not list, or not pinnable."""


class OutputExistsError(FileExistsError):
    """An output directory that already holds a complete stage, written to without `--overwrite`."""


class OutputWriteError(OSError):
    """An output that cannot be written (disk full, read-only, no permission): names the path and what is needed;
    the previous complete output and the last complete checkpoint are kept."""


# What `hf-rlhf` reports as one line and exit code 1 (TrainingInterrupted exits with 143, see hf_rlhf.resilience).
USER_ERRORS = (
    RecipeError,
    DataValidationError,
    ModelNotFoundError,
    IncompleteStageError,
    HubError,
    NonFiniteLossError,
    ModelRoleError,
    TokenizerMismatchError,
    RemoteCodeError,
    OutputExistsError,
    OutputWriteError,
)
