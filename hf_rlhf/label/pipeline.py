"""`labeler: human` in a pipeline: stop after sampling until people have ranked, then hand the reward stage the export.

After the `sample` stage, `human_labels` looks at the labeling project (`label_db`, `label_project`):

* not created yet, or fewer than `label_min_rankings` rankings (default: every item by `overlap` labelers): it
  prints what to run (create the project from the sample output, add labelers, serve) and the pipeline stops;
* enough: it exports the rankings (`hf_rlhf.label.export`, Borda aggregation) to `<pipeline dir>/labels`, unless
  the export there already holds exactly these answers, and the reward stage reads that directory. A new ranking
  means a new export, so the reward stage (whose inputs changed) reruns; a rerun with nothing new skips it.

A project created from another `sample` run than the one in the pipeline directory is refused: its completions are
not the ones sampled now.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import RecipeError
from ..manifest import read_manifest

LABELS_DIR = "labels"


def label_settings(values: dict[str, Any], pipeline_dir: str) -> tuple[str, str, int | None]:
    """(database URL, project name, minimum rankings) of a `labeler: human` sample stage, defaults filled in."""
    url = values.get("label_db") or f"sqlite:///{os.path.abspath(os.path.join(pipeline_dir, 'labels.db'))}"
    project = values.get("label_project") or f"{os.path.basename(os.path.abspath(pipeline_dir))}-rank"
    minimum = values.get("label_min_rankings")
    if minimum is not None and minimum < 1:
        raise RecipeError(f"label_min_rankings must be >= 1, got {minimum}")
    return url, project, minimum


def commands(url: str, project: str, sample_dir: str, exists: bool) -> list[str]:
    """What to run to label (the project's creation only when it does not exist yet)."""
    out = []
    if not exists:
        out.append(
            f"hf-rlhf label create-project --db {url} --name {project} --dataset {sample_dir} --overlap 3 "
            "--guidelines guidelines.md"
        )
    out += [
        f"hf-rlhf label add-labeler --db {url} --project {project} --name NAME   (once per labeler: prints a login link)",
        f"hf-rlhf label serve --db {url} --port 7860   (prints the admin login link on first start)",
        f"hf-rlhf label status --db {url} --project {project}",
    ]
    return out


def human_labels(values: dict[str, Any], sample_dir: str, pipeline_dir: str) -> str | None:
    """The export directory the reward stage reads, or None (after printing what to do) when labeling is not done."""
    from .db import open_database
    from .export import answers_fingerprint, export_project
    from .projects import get_project
    from .tasks import answers, progress

    url, name, minimum = label_settings(values, pipeline_dir)
    db = open_database(url)
    try:
        try:
            project = get_project(db, name)
        except RecipeError:
            project = None
        if project is not None:
            made_from = (project.source or {}).get("finished_at")
            sampled = (read_manifest(sample_dir) or {}).get("finished_at")
            if made_from and sampled and made_from != sampled:
                raise RecipeError(
                    f"labeling project '{name}' was created from a sample run finished at {made_from}, but "
                    f"'{sample_dir}' was sampled at {sampled}: set `label_project` to a new project and create it"
                )
        done = answers(db, project.id) if project is not None else []
        figures = progress(db, project.id) if project is not None else None
        needed = minimum if minimum is not None else (figures["wanted"] if figures else None)
        if project is None or len(done) < needed:
            where = f"{len(done)} of {needed} rankings" if project is not None else "no labeling project yet"
            lines = [f"[hf-rlhf] sample: labeler 'human': {where} in project '{name}'; the pipeline stops here."]
            lines += [
                "[hf-rlhf] to label, run:",
                *(f"    {c}" for c in commands(url, name, sample_dir, project is not None)),
            ]
            lines.append("[hf-rlhf] then rerun this pipeline: it resumes at the reward stage.")
            print("\n".join(lines))
            return None
        out = os.path.join(pipeline_dir, LABELS_DIR)
        current = read_manifest(out)
        if current and current.get("complete") and current.get("answers_fingerprint") == answers_fingerprint(done):
            print(f"[hf-rlhf] sample: labels of project '{name}' unchanged since the export in {out}, reused")
            return out
        export_project(db, name, out, overwrite=True)
        print(f"[hf-rlhf] sample: {len(done)} rankings of project '{name}' exported to {out}")
        return out
    finally:
        db.close()
