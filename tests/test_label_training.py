"""The labeling app's data in the pipeline: simulated labelers and agreement, the export training the reward and SFT
stages, and `labeler: human` stopping and resuming the pipeline."""

from __future__ import annotations

import os
import random

import pytest

pytest.importorskip("sqlalchemy")
from datasets import Dataset, DatasetDict  # noqa: E402

from hf_rlhf.data.preference import ranks_from_scores  # noqa: E402
from hf_rlhf.data.world import TinyWorld  # noqa: E402
from hf_rlhf.errors import RecipeError  # noqa: E402
from hf_rlhf.label.db import Database  # noqa: E402
from hf_rlhf.label.export import export_project  # noqa: E402
from hf_rlhf.label.pipeline import human_labels  # noqa: E402
from hf_rlhf.label.projects import add_labeler, create_project, dataset_rows  # noqa: E402
from hf_rlhf.label.tasks import Submission, answers, next_assignment, submit  # noqa: E402
from hf_rlhf.manifest import MANIFEST, atomic_write_json  # noqa: E402

from .conftest import RECIPES  # noqa: E402
from .label_fixtures import fresh_db_url  # noqa: E402

TINY_MODEL = (
    '{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, '
    '"num_key_value_heads": 2, "max_position_embeddings": 128, "tie_word_embeddings": true}'
)
STYLES = ("ideal", "terse", "rambling", "hedged", "wrong", "deflect")
NOISE_LEVELS = (0.0, 0.1, 0.3, 1.0)


def world_rows(n: int, k: int = 4, seed: int = 0) -> list[dict]:
    """`n` tiny-world questions with K completions of different styles (as an SFT model's samples would vary)."""
    world, rng = TinyWorld(seed), random.Random(seed)
    prompts = world.all_prompts()
    rng.shuffle(prompts)
    rows = []
    for prompt in prompts[:n]:
        styles = rng.sample(STYLES, k)
        completions = [world._styled_answer(prompt, s, rng) for s in styles]
        rows.append({"prompt": [{"role": "user", "content": prompt.text}], "completions": completions})
    return rows


def simulate(db: Database, project: str, labelers: dict[str, float], seed: int = 0) -> None:
    """Labelers who rank by the gold score plus Gaussian noise of their standard deviation, through the app's
    assignment and submit path, until nothing is left for them."""
    from sqlalchemy import select

    from hf_rlhf.label.models import Item, Labeler

    world = TinyWorld(0)
    for name, noise in labelers.items():
        add_labeler(db, project, name)
        with db.session() as s:
            labeler_id = s.scalar(select(Labeler.id).where(Labeler.name == name, Labeler.project.has(name=project)))
        rng = random.Random(f"{seed}:{name}")
        while (assignment := next_assignment(db, labeler_id)) is not None:
            with db.session() as s:
                from hf_rlhf.label.models import Assignment

                item = s.get(Item, s.get(Assignment, assignment).item_id)
            question = item.prompt[-1]["content"]
            scores = [world.gold_score(question, c) + rng.gauss(0, noise) for c in item.completions]
            submit(
                db, labeler_id, assignment, Submission(nonce=f"{name}-{assignment}", ranking=ranks_from_scores(scores))
            )


def test_agreement_falls_as_labeler_noise_rises(db):
    rows = world_rows(16)
    figures = {}
    for noise in NOISE_LEVELS:
        name = f"noise-{noise}"
        project = create_project(db, name, "ranking", rows, overlap=3, seed=0)
        simulate(db, name, {f"{name}-{i}": noise for i in range(3)})
        from hf_rlhf.label.agreement import agreement

        figures[noise] = agreement(answers(db, project))
    print("\nnoise  kendall_tau  alpha_ordinal  alpha_interval  (3 labelers, 16 items x K=4, seed 0)")
    for noise, f in figures.items():
        print(f"{noise:5}  {f['kendall_tau']:11.3f}  {f['alpha_ordinal']:13.3f}  {f['alpha_interval']:14.3f}")
    assert figures[0.0]["kendall_tau"] == pytest.approx(1.0) and figures[0.0]["alpha_ordinal"] == pytest.approx(1.0)
    for key in ("kendall_tau", "alpha_ordinal", "alpha_interval"):
        values = [figures[n][key] for n in NOISE_LEVELS]
        assert values == sorted(values, reverse=True) and values[-1] < values[0] - 0.3, (key, values)
    assert all(figures[n]["pairs"] == 16 * 3 for n in NOISE_LEVELS[1:])  # 3 labeler pairs on every item


@pytest.fixture(scope="module")
def tiny_lm(world_dir, tmp_path_factory) -> str:
    """A two-step pretraining stage on the tiny world: a causal LM with a tokenizer, for the stages to start from."""
    from hf_rlhf.stages import pretrain

    out = str(tmp_path_factory.mktemp("label") / "pretrain")
    argv = ["--config", os.path.join(RECIPES, "tiny", "pretrain.yaml"), "--dataset_name", world_dir["documents"]]
    argv += ["--output_dir", out, "--max_steps", "2", "--model_config_kwargs", TINY_MODEL, "--vocab_size", "300"]
    pretrain.main(argv + ["--block_size", "64", "--per_device_train_batch_size", "8", "--logging_steps", "1"])
    return out


@pytest.mark.slow
def test_the_export_trains_the_reward_and_sft_stages(db, tiny_lm, tmp_path):
    from hf_rlhf.stages import reward, sft

    create_project(db, "rank", "ranking", world_rows(12), overlap=2)
    simulate(db, "rank", {"a": 0.1, "b": 0.1})
    export_project(db, "rank", str(tmp_path / "comparisons"))
    common = ["--output_dir", "--max_steps", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1"]
    argv = ["--config", os.path.join(RECIPES, "tiny", "reward.yaml"), "--model_name_or_path", tiny_lm]
    argv += ["--dataset_name", str(tmp_path / "comparisons"), "--eval_split_size", "0.25"]
    manifest = reward.main(argv + [common[0], str(tmp_path / "rm"), *common[1:]])
    assert manifest["metrics"]["format"] == "ranked" and manifest["metrics"]["rows"]["train"]["used"] == 9

    world = TinyWorld(0)
    prompts = [{"prompt": r["prompt"]} for r in world_rows(8)]
    create_project(db, "demos", "demonstration", prompts)
    add_labeler(db, "demos", "writer")
    labeler_id = 3  # a, b, writer
    while (assignment := next_assignment(db, labeler_id)) is not None:
        from hf_rlhf.label.models import Assignment, Item

        with db.session() as s:
            question = s.get(Item, s.get(Assignment, assignment).item_id).prompt[-1]["content"]
        text = world.ideal_answer(world.find_prompt(question))
        submit(db, labeler_id, assignment, Submission(nonce=f"d{assignment}", demonstration=text))
    export_project(db, "demos", str(tmp_path / "demonstrations"))
    argv = ["--config", os.path.join(RECIPES, "tiny", "sft.yaml"), "--model_name_or_path", tiny_lm]
    argv += ["--dataset_name", str(tmp_path / "demonstrations"), "--eval_split_size", "0"]
    manifest = sft.main(argv + [common[0], str(tmp_path / "sft"), *common[1:]])
    assert manifest["stage"] == "sft" and manifest["metrics"]["train_loss"] > 0


def fake_sample_stage(directory: str, rows: list[dict]) -> str:
    """A finished `sample` stage holding `rows` with empty rankings (what `labeler: human` writes)."""
    data = Dataset.from_list([{**r, "ranking": []} for r in rows])
    DatasetDict(train=data).save_to_disk(directory)
    finished(directory, "2026-01-01T00:00:00Z")
    return directory


def finished(directory: str, at: str) -> None:
    """Mark a directory a complete `sample` stage finished at `at`."""
    atomic_write_json(os.path.join(directory, MANIFEST), {"stage": "sample", "finished_at": at, "complete": True})


def test_labeler_human_stops_until_the_project_has_its_rankings_then_hands_the_export_on(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    sample = fake_sample_stage(str(run / "sample"), world_rows(4))
    with fresh_db_url(tmp_path) as url:
        values = {"labeler": "human", "label_db": url, "label_project": "rank-v1", "label_min_rankings": 6}
        assert human_labels(values, sample, str(run)) is None  # no project yet
        printed = capsys.readouterr().out
        assert "no labeling project yet in project 'rank-v1'; the pipeline stops here" in printed
        assert f"hf-rlhf label create-project --db {url} --name rank-v1 --dataset {sample}" in printed
        db = Database(url)
        rows, source = dataset_rows(sample)
        create_project(db, "rank-v1", "ranking", rows, overlap=2, source=source)
        simulate(db, "rank-v1", {"a": 0.0})
        assert human_labels(values, sample, str(run)) is None  # 4 of 6
        printed = capsys.readouterr().out
        assert "4 of 6 rankings" in printed and "create-project" not in printed and "add-labeler" in printed
        simulate(db, "rank-v1", {"b": 0.0})
        labels = human_labels(values, sample, str(run))
        assert labels == str(run / "labels") and "8 rankings of project 'rank-v1' exported" in capsys.readouterr().out
        first = open(os.path.join(labels, "hf_rlhf_manifest.json")).read()
        assert human_labels(values, sample, str(run)) == labels and "unchanged" in capsys.readouterr().out
        assert open(os.path.join(labels, "hf_rlhf_manifest.json")).read() == first  # not exported again
        # a project made from another sample run is refused: its completions are not the ones sampled now
        finished(sample, "2026-01-02T00:00:00Z")
        with pytest.raises(RecipeError, match="was created from a sample run finished at"):
            human_labels(values, sample, str(run))
        db.close()


@pytest.mark.slow
def test_pipeline_with_human_labels_stops_then_resumes_at_the_reward_stage(tmp_path, capsys):
    import yaml

    from hf_rlhf.pipeline import run_pipeline
    from hf_rlhf.recipes import load_pipeline_recipe

    from .test_pipeline import small_recipe

    path = small_recipe(tmp_path)
    raw = yaml.safe_load(open(path))
    raw["stages"]["sample"]["overrides"].update(labeler="human", max_prompts=6, label_min_rankings=6)
    raw["stages"].pop("rl")
    open(path, "w").write(yaml.safe_dump(raw))
    out = str(tmp_path / "run")
    recipe = load_pipeline_recipe(path, out)
    assert run_pipeline(recipe) == {"stopped_for": "labeling"}
    printed = capsys.readouterr().out
    assert "the pipeline stops here" in printed and "hf-rlhf label create-project" in printed
    assert not os.path.exists(os.path.join(out, "reward"))
    db = Database(f"sqlite:///{os.path.abspath(os.path.join(out, 'labels.db'))}")
    rows, source = dataset_rows(os.path.join(out, "sample"))
    create_project(db, "run-rank", "ranking", rows, overlap=1, source=source)
    simulate(db, "run-rank", {"a": 0.1})
    report = run_pipeline(load_pipeline_recipe(path, out))
    printed = capsys.readouterr().out
    assert (
        "sample: already complete" in printed
        and "exported to" in printed
        and "[hf-rlhf] reward: hf-rlhf reward" in printed
    )
    assert os.path.join(out, "labels") in printed and report.get("rows")
