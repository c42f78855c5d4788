"""`hf-rlhf label export`: a project's answers as the datasets the SFT and reward stages read.

* A **ranking** project becomes the reward stage's ranked format (`hf_rlhf.data.preference`): `prompt`,
  `completions` (K), `ranking` (rank of each completion, 1 = best, equal ranks tie), plus `num_labelers`,
  `all_unacceptable`, `flags` (per completion) and `comments`, which the reward stage ignores. `aggregate` chooses
  the rows:
  - `borda` (the default): one row per item, its completions ordered by Borda count over its labelers (a point for
    each completion ranked below, half a point for each tie). Every prompt weighs once in the loss however many
    labelers saw it, a prompt's pairs stay in one split, and labelers who disagree cancel out into a tie (the
    ranking loss then skips that pair) instead of training the model both ways.
  - `mean_rank`: one row per item, ordered by the mean of the labelers' ranks (ties where the means are equal).
  - `none`: one row per answer, with its `labeler`: every labeler's judgement, disagreements included (the
    InstructGPT setup), for studying labelers or training on soft labels.
  Rows left with every completion tied (no preference to learn from) are dropped and counted (`dropped_all_tied`).
* A **demonstration** project becomes SFT's prompt-completion format: `prompt` as stored and `completion` (an
  assistant message for a conversational prompt, text for a text prompt), one row per demonstration.

Items keep their source's split (a `sample` stage's train/test), so the reward stage's held-out checks use the same
prompts. The directory holds the dataset (`save_to_disk`), JSONL copies, a card with the agreement figures and a
manifest (stage `label`) whose `answers_fingerprint` tells the pipeline whether the export is up to date;
`push_to_hub` pushes it as a dataset repo (parquet and the card; no local paths).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from typing import Any

from ..data.preference import pairs_from_ranking, ranks_from_scores
from ..errors import DataValidationError, RecipeError
from .agreement import agreement, agreement_lines
from .db import Database
from .models import AGGREGATES, DEFAULT_AGGREGATE, RANKING
from .projects import db_label, get_project
from .tasks import answers, progress


def borda(rankings: list[list[int]]) -> list[int]:
    """Competition ranks by Borda count: per labeler, a point for each completion ranked below, half for each tie.
    [[1, 2, 2], [3, 1, 1]] -> points [2, 2, 2] -> [1, 1, 1]."""
    k = len(rankings[0])
    points = [0.0] * k
    for ranks in rankings:
        for i in range(k):
            points[i] += sum(ranks[i] < ranks[j] for j in range(k)) + 0.5 * sum(
                ranks[i] == ranks[j] for j in range(k) if j != i
            )
    return ranks_from_scores(points)


def mean_rank(rankings: list[list[int]]) -> list[int]:
    """Competition ranks of the mean rank over labelers (lower is better): [[1, 2, 2], [3, 1, 1]] -> [3, 1, 1]."""
    k = len(rankings[0])
    means = [sum(r[i] for r in rankings) / len(rankings) for i in range(k)]
    return ranks_from_scores([-m for m in means])


def comparison_rows(rows: list[dict[str, Any]], aggregate: str = DEFAULT_AGGREGATE) -> tuple[dict[str, list], int]:
    """Split name -> ranked rows from ranking answers (`tasks.answers`); and how many all-tied rows were dropped."""
    if aggregate not in AGGREGATES:
        raise RecipeError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    dropped = 0
    if aggregate == "none":
        for a in rows:
            row = {
                "prompt": a["prompt"],
                "completions": a["completions"],
                "ranking": a["ranking"],
                "labeler": a["labeler"],
                "all_unacceptable": a["all_unacceptable"],
                "flags": a["flags"] or [[] for _ in a["completions"]],
                "comment": a["comment"],
            }
            if pairs_from_ranking(row["ranking"]):
                out[a["split"]].append(row)
            else:
                dropped += 1
        return dict(out), dropped
    by_item: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for a in rows:
        by_item[a["item_id"]].append(a)
    combine = borda if aggregate == "borda" else mean_rank
    for group in sorted(by_item.values(), key=lambda g: g[0]["position"]):
        first, k = group[0], len(group[0]["completions"])
        ranking = combine([a["ranking"] for a in group])
        if not pairs_from_ranking(ranking):
            dropped += 1
            continue
        out[first["split"]].append(
            {
                "prompt": first["prompt"],
                "completions": first["completions"],
                "ranking": ranking,
                "num_labelers": len(group),
                "all_unacceptable": 2 * sum(a["all_unacceptable"] for a in group) > len(group),  # a majority
                "flags": [sorted({f for a in group for f in (a["flags"] or [[]] * k)[i]}) for i in range(k)],
                "comments": [a["comment"] for a in group if a["comment"]],
            }
        )
    return dict(out), dropped


def demonstration_rows(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Split name -> SFT prompt-completion rows from demonstration answers."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in rows:
        text = a["demonstration"]
        completion = [{"role": "assistant", "content": text}] if isinstance(a["prompt"], list) else text
        out[a["split"]].append({"prompt": a["prompt"], "completion": completion})
    return dict(out)


def answers_fingerprint(rows: list[dict[str, Any]]) -> str:
    """Changes whenever an answer is added (answers are never edited): what the pipeline compares."""
    return hashlib.sha256(json.dumps(sorted(a["answer_id"] for a in rows)).encode()).hexdigest()[:16]


def check_exportable(db: Database, project_name: str, min_rankings: int = 1) -> tuple[Any, list[dict[str, Any]]]:
    """The project and its answers, else a one-line error: unknown project, or fewer answers than `min_rankings`."""
    project = get_project(db, project_name)
    rows = answers(db, project.id)
    what = "rankings" if project.kind == RANKING else "demonstrations"
    if len(rows) < max(1, min_rankings):
        figures = progress(db, project.id)
        raise DataValidationError(
            f"project '{project_name}' has {len(rows)} {what}, "
            f"{'none yet' if not rows else f'fewer than the {min_rankings} asked for'} ({figures['items']} items, "
            f"{len(figures['labelers'])} labelers): label more first (hf-rlhf label status --project {project_name})"
        )
    return project, rows


def export_project(
    db: Database,
    project_name: str,
    output_dir: str,
    *,
    aggregate: str = DEFAULT_AGGREGATE,
    overwrite: bool = False,
    min_rankings: int = 1,
    push: Any = None,
) -> dict[str, Any]:
    """Write a project's export to `output_dir` (built aside and swapped in, as the stages do); returns the manifest.

    Args:
        push: a `hf_rlhf.hub.push.PushRequest` (from `push_request`), pushed once the export is complete.
    """
    from datasets import Dataset, DatasetDict

    from ..hub.cards import render_dataset_card
    from ..hub.resolve import ResolvedInput
    from ..outputs import check_output, finish_stage, open_output
    from ..storage import writing

    if aggregate not in AGGREGATES:
        raise RecipeError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    project, rows = check_exportable(db, project_name, min_rankings)
    check_output(output_dir, overwrite)
    if project.kind == RANKING:
        splits, dropped = comparison_rows(rows, aggregate)
        figures = agreement(rows)
    else:
        splits, dropped, figures = demonstration_rows(rows), 0, None
    if "train" not in splits:
        raise DataValidationError(
            f"project '{project_name}': no usable answers on items of the train split yet ({dropped} all tied)"
        )
    partial = open_output(output_dir, overwrite)
    prefix = "comparisons" if project.kind == RANKING else "demonstrations"
    data = DatasetDict({name: Dataset.from_list(split_rows) for name, split_rows in splits.items()})
    with writing(partial):
        data.save_to_disk(partial)
        for name, ds in data.items():
            ds.to_json(os.path.join(partial, f"{prefix}_{name}.jsonl"), lines=True)
    figures_progress = progress(db, project.id)
    metrics = {
        "project": project.name,
        "kind": project.kind,
        "aggregate": aggregate if project.kind == RANKING else None,
        "answers": len(rows),
        "rows": {name: len(ds) for name, ds in data.items()},
        "dropped_all_tied": dropped,
        "items": figures_progress["items"],
        "labelers": len(figures_progress["labelers"]),
        "agreement": figures,
    }
    description = card_text(project, metrics, figures)
    with writing(partial):
        render_dataset_card(partial, push.repo_id if push else None, description).save(
            os.path.join(partial, "README.md")
        )
    source = (project.source or {}).get("dataset")
    inputs: dict[str, Any] = {"labels": {"database": db_label(db), "project": project.name}}
    if source and os.path.isdir(source):
        inputs["dataset"] = ResolvedInput(path=source, repo_type="dataset")
    elif source:
        inputs["dataset"] = source
    manifest = finish_stage(
        partial,
        "label",
        configs={"export": {"aggregate": aggregate, "min_rankings": min_rankings}},
        inputs=inputs,
        metrics=metrics,
        extra={"answers_fingerprint": answers_fingerprint(rows)},
        push=push,
    )
    if push is not None:
        from ..hub.push import push_dataset

        repo_id, commit = push_dataset(
            output_dir, push.repo_id, description=description, private=push.private, revision=push.revision,
            token=push.token,
        )  # fmt: skip
        manifest = {**manifest, "hub": {"repo_id": repo_id, "repo_type": "dataset", "commit": commit}}
        from ..manifest import MANIFEST, atomic_write_json

        atomic_write_json(os.path.join(output_dir, MANIFEST), manifest)
    return manifest


def card_text(project: Any, metrics: dict[str, Any], figures: dict[str, Any] | None) -> str:
    """The card's description: what the dataset is, how it was made, and the agreement figures."""
    source = (project.source or {}).get("dataset")
    shown = os.path.basename(os.path.normpath(source)) if source and os.path.exists(source) else source
    rows = ", ".join(f"{n} {split}" for split, n in metrics["rows"].items())
    if project.kind == RANKING:
        how = {
            "borda": "one row per prompt, its completions ordered by Borda count over the labelers (ties half a "
            "point)",
            "mean_rank": "one row per prompt, its completions ordered by their mean rank over the labelers",
            "none": "one row per labeler's ranking",
        }[metrics["aggregate"]]
        lines = [
            f"K-way rankings collected with `hf-rlhf label` (project `{project.name}`), in the reward stage's ranked "
            "format: `prompt`, `completions`, `ranking` (rank of each completion, 1 = best, equal ranks tie).",
            "",
            f"- {metrics['answers']} rankings of {metrics['items']} items by {metrics['labelers']} labelers "
            f"(each item for {project.overlap}); rows: {rows}; {how}; {metrics['dropped_all_tied']} rows with every "
            "completion tied dropped.",
            f"- Items from: {shown or 'rows given to the API'}.",
            "",
            "## Agreement",
            "",
            *agreement_lines(figures),
        ]
    else:
        lines = [
            f"Demonstrations written with `hf-rlhf label` (project `{project.name}`), in SFT's prompt-completion "
            f"format: `prompt`, `completion`. {metrics['answers']} demonstrations of {metrics['items']} prompts by "
            f"{metrics['labelers']} labelers; rows: {rows}. Prompts from: {shown or 'rows given to the API'}.",
        ]
    return "\n".join(lines)
