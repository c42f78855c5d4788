"""`hf-rlhf label <command>`: serve the labeling app, create projects and labelers, export, status.

    hf-rlhf label create-project --db sqlite:///labels.db --name rank-v1 --dataset outputs/tiny/sample \
        --overlap 3 --guidelines guidelines.md
    hf-rlhf label add-labeler --db sqlite:///labels.db --project rank-v1 --name alice
    hf-rlhf label serve --db sqlite:///labels.db --port 7860
    hf-rlhf label status --db sqlite:///labels.db --project rank-v1
    hf-rlhf label export --db sqlite:///labels.db --project rank-v1 --output_dir outputs/labels

Login links are printed once (the database keeps only their hashes); `admin-link` prints a new admin link and
`add-labeler` a labeler's. See docs/labeling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

DEFAULT_DB = "sqlite:///labels.db"
DEFAULT_URL = "http://127.0.0.1:7860"


def _db(args):
    from .db import open_database

    return open_database(args.db)


def _link(base: str, token: str) -> str:
    from .auth import login_path

    return base.rstrip("/") + login_path(token)


def serve(args) -> dict[str, Any]:
    import uvicorn

    from .app import create_app
    from .projects import add_admin, has_admin

    db = _db(args)
    public = args.public_url or f"http://{args.host}:{args.port}"
    if not has_admin(db):
        print(
            f"admin login link (shown once; `hf-rlhf label admin-link` makes another): {_link(public, add_admin(db))}"
        )
    print(f"serving {args.db.split('@')[-1]} at {public} (Ctrl+C to stop)")
    uvicorn.run(create_app(db, public_url=args.public_url), host=args.host, port=args.port, log_level="warning")
    return {}


def create_project(args) -> dict[str, Any]:
    from ..errors import RecipeError
    from .models import DEMONSTRATION, RANKING
    from .projects import create_project as create
    from .projects import dataset_rows

    guidelines = ""
    if args.guidelines:
        if not os.path.isfile(args.guidelines):
            raise RecipeError(f"--guidelines: no file '{args.guidelines}' (a markdown file shown beside every task)")
        with open(args.guidelines, encoding="utf-8") as f:
            guidelines = f.read()
    rows, source = dataset_rows(args.dataset, config=args.dataset_config, split=args.split, max_items=args.max_items)
    kind = args.kind or (RANKING if rows and "completions" in rows[0] else DEMONSTRATION)
    db = _db(args)
    project_id = create(
        db, args.name, kind, rows, guidelines=guidelines, overlap=args.overlap, seed=args.seed, source=source
    )
    print(f"project '{args.name}' ({kind}): {len(rows)} items, each for {args.overlap} labeler(s); id {project_id}")
    print(f"next: hf-rlhf label add-labeler --db {args.db} --project {args.name} --name NAME")
    return {"project": args.name, "kind": kind, "items": len(rows), "id": project_id}


def add_labeler(args) -> dict[str, Any]:
    from .projects import add_labeler as add

    token = add(_db(args), args.project, args.name)
    link = _link(args.public_url, token)
    print(f"login link for {args.name} (shown once, send it privately): {link}")
    return {"labeler": args.name, "link": link}


def admin_link(args) -> dict[str, Any]:
    from .projects import add_admin

    link = _link(args.public_url, add_admin(_db(args)))
    print(f"admin login link (shown once): {link}")
    return {"link": link}


def export(args) -> dict[str, Any]:
    from ..hub.push import push_request
    from .export import export_project

    push = push_request(args)  # no token, or a bad repo id: fails now
    manifest = export_project(
        _db(args), args.project, args.output_dir, aggregate=args.aggregate, overwrite=args.overwrite, push=push
    )
    metrics = manifest["metrics"]
    print(json.dumps({k: metrics[k] for k in ("project", "kind", "answers", "rows", "dropped_all_tied")}))
    print(f"written to {args.output_dir}")
    return manifest


def status(args) -> dict[str, Any]:
    from sqlalchemy import select

    from .agreement import project_agreement
    from .models import RANKING, Project
    from .projects import get_project
    from .tasks import progress

    db = _db(args)
    if args.project:
        projects = [get_project(db, args.project)]
    else:
        with db.session() as s:
            projects = s.scalars(select(Project).order_by(Project.id)).all()
    out = {}
    for project in projects:
        figures = progress(db, project.id)
        if project.kind == RANKING:
            figures["agreement"] = project_agreement(db, project.id)
        out[project.name] = figures
        if not args.json:
            print(
                f"{project.name} ({project.kind}): {figures['answered']} / {figures['wanted']} answers "
                f"({figures['items']} items x {figures['overlap']}), {figures['skipped']} skips"
            )
            for entry in figures["labelers"]:
                print(f"  {entry['name']}: {entry['answered']} answered, {entry['skipped']} skipped")
            if "agreement" in figures:
                a = figures["agreement"]
                show = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
                print(
                    f"  agreement: Kendall's tau-b {show(a['kendall_tau'])} ({a['pairs']} pairs), Krippendorff's "
                    f"alpha ordinal {show(a['alpha_ordinal'])}, interval {show(a['alpha_interval'])}"
                )
    if args.json:
        print(json.dumps(out, default=str))
    return out


def build_parser() -> argparse.ArgumentParser:
    from .models import AGGREGATES, DEFAULT_AGGREGATE, KINDS

    parser = argparse.ArgumentParser(prog="hf-rlhf label", description="The labeling web app (docs/labeling.md).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, function, help_: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, description=help_)
        sub.add_argument("--db", default=DEFAULT_DB, help=f"SQLAlchemy URL of the database (default {DEFAULT_DB}).")
        sub.set_defaults(function=function)
        return sub

    sub = command("serve", serve, "Serve the labeling app.")
    sub.add_argument("--host", default="127.0.0.1", help="Address to listen on (default loopback only).")
    sub.add_argument("--port", type=int, default=7860)
    sub.add_argument("--public_url", help="The address labelers reach the server at, for login links.")

    sub = command("create-project", create_project, "Create a project from a dataset.")
    sub.add_argument("--name", required=True, help="Project name.")
    sub.add_argument(
        "--dataset",
        required=True,
        help="A `sample` stage output (ranking), a prompt dataset (demonstration): a local dataset folder or file, "
        "or a Hub dataset org/name[@revision].",
    )
    sub.add_argument("--dataset_config", help="The Hub dataset's config.")
    sub.add_argument("--split", help="Only this split (default: train and test, kept apart in the export).")
    sub.add_argument("--kind", choices=KINDS, help="Default: ranking when the rows have `completions`.")
    sub.add_argument("--overlap", type=int, default=1, help="Labelers per item (>= 2 for agreement figures).")
    sub.add_argument("--seed", type=int, default=0, help="Seed of each labeler's order of the completions.")
    sub.add_argument("--guidelines", help="A markdown file shown beside every task.")
    sub.add_argument("--max_items", type=int, help="Use at most this many rows.")

    for name, function, help_ in (
        ("add-labeler", add_labeler, "Add a labeler to a project and print their login link."),
        ("admin-link", admin_link, "Print a new admin login link."),
    ):
        sub = command(name, function, help_)
        if name == "add-labeler":
            sub.add_argument("--project", required=True)
            sub.add_argument("--name", required=True, help="The labeler's name.")
        sub.add_argument("--public_url", default=DEFAULT_URL, help=f"The server's address (default {DEFAULT_URL}).")

    sub = command("export", export, "Export a project as the reward stage's comparisons or SFT demonstrations.")
    sub.add_argument("--project", required=True)
    sub.add_argument("--output_dir", required=True)
    sub.add_argument(
        "--aggregate", choices=AGGREGATES, default=DEFAULT_AGGREGATE, help="Rankings per item or per labeler."
    )
    sub.add_argument("--overwrite", action="store_true", help="Replace an earlier export in output_dir.")
    sub.add_argument("--push_to_hub", action="store_true", help="Push the export as a Hub dataset repo.")
    sub.add_argument("--hub_model_id", help="Dataset repo id (org/name); default the output directory's name.")
    sub.add_argument("--hub_private_repo", action="store_true", default=None, help="Create the repo private.")
    sub.add_argument("--hub_revision", help="Branch to push to (default: main).")

    sub = command("status", status, "Progress and agreement of the projects.")
    sub.add_argument("--project", help="Only this project.")
    sub.add_argument("--json", action="store_true", help="Print JSON.")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`hf-rlhf label ...` (errors are `hf_rlhf.errors.USER_ERRORS`, printed as one line by `hf-rlhf`)."""
    args = build_parser().parse_args(argv)
    return args.function(args)


if __name__ == "__main__":  # `python -m hf_rlhf.label.cli`, before `label` is in hf_rlhf.cli's COMMANDS
    from ..errors import USER_ERRORS

    try:
        main()
    except USER_ERRORS as e:
        print(f"hf-rlhf label: error: {e}", file=sys.stderr)
        sys.exit(1)
