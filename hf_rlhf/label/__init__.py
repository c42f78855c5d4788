"""`hf-rlhf label`: the labeling web app where people write demonstrations and rank K completions.

* `db`: the engine for any SQLAlchemy URL (SQLite in WAL mode by default, PostgreSQL unchanged) and the schema
  migrations; `models`: the tables.
* `projects`: projects from a `sample` stage output, a prompt dataset or a Hub dataset; labelers and their login
  links; the assignment of each item to `overlap` labelers; answers stored once per (item, labeler).
* `app`: the Starlette app (`create_app(db_url)`), its templates and static files; `auth`: tokens and CSRF.
* `export`: comparisons in the reward stage's ranked format, demonstrations in SFT's prompt-completion format,
  with a manifest and a card; `agreement`: Kendall's tau and Krippendorff's alpha.
* `cli`: `hf-rlhf label serve | create-project | add-labeler | admin-link | export | status`.

See docs/labeling.md.
"""
