"""Bad input gets a clear error before training starts, naming the file, key, dataset, column and row."""

import os

import pytest
from datasets import Dataset, DatasetDict

from hf_rlhf.data.formats import DataValidationError
from hf_rlhf.modeling import ModelNotFoundError
from hf_rlhf.recipes import RecipeError, load_pipeline_recipe, load_yaml_mapping
from hf_rlhf.stages import pretrain, sft

from .conftest import RECIPES

PRETRAIN_RECIPE = os.path.join(RECIPES, "tiny", "pretrain.yaml")
SFT_RECIPE = os.path.join(RECIPES, "tiny", "sft.yaml")


def save(tmp_path, name, rows):
    path = str(tmp_path / name)
    DatasetDict(train=Dataset.from_list(rows)).save_to_disk(path)
    return path


def run_pretrain(tmp_path, dataset, *extra):
    out = tmp_path / "out"
    argv = ["--config", PRETRAIN_RECIPE, "--dataset_name", dataset, "--output_dir", str(out), "--max_steps", "1"]
    return pretrain.main(argv + list(extra)), out


def run_sft(tmp_path, dataset, *extra, model="does/not/exist"):
    out = tmp_path / "out"
    argv = ["--config", SFT_RECIPE, "--dataset_name", dataset, "--output_dir", str(out), "--max_steps", "1"]
    return sft.main(argv + ["--model_name_or_path", model, *extra]), out


def test_unknown_recipe_key_names_file_and_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("learning_rate: 1.0e-3\nnum_train_epoch: 3\n")
    with pytest.raises(
        RecipeError, match=r"recipe file '.*bad.yaml': unknown key 'num_train_epoch'.*num_train_epochs"
    ):
        pretrain.main(["--config", str(recipe), "--output_dir", str(tmp_path)])
    with pytest.raises(RecipeError, match=r"command line: unknown key 'learning_rat'"):
        pretrain.main(["--config", PRETRAIN_RECIPE, "--learning_rat", "1"])


def test_bad_pipeline_recipe_names_file_and_key(tmp_path):
    recipe = tmp_path / "pipe.yaml"
    recipe.write_text("output_dir: x\nstages:\n  pretrian: {}\n")
    with pytest.raises(RecipeError, match=r"pipe.yaml', 'stages': unknown key 'pretrian'.*'pretrain'"):
        load_pipeline_recipe(str(recipe))
    recipe.write_text("output_dir: x\nstages:\n  sft:\n    recipe: missing.yaml\n")
    with pytest.raises(RecipeError, match="missing.yaml' does not exist"):
        load_pipeline_recipe(str(recipe))
    recipe.write_text("- a list\n")
    with pytest.raises(RecipeError, match="must hold a mapping"):
        load_pipeline_recipe(str(recipe))


def test_missing_column_names_dataset_and_columns(tmp_path):
    path = save(tmp_path, "docs", [{"body": "The fox is red."}])
    with pytest.raises(
        DataValidationError, match=r"dataset '.*docs', split 'train': expected columns \('text'\).*'body'"
    ):
        run_pretrain(tmp_path, path)
    assert not (tmp_path / "out").exists()  # nothing was started


def test_misnamed_sft_columns(tmp_path):
    path = save(tmp_path, "demos", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataValidationError, match=r"expected columns \('prompt', 'completion'\) or \('messages'\)"):
        run_sft(tmp_path, path)


def test_empty_dataset(tmp_path):
    path = save(tmp_path, "no_rows", [{"text": "x"}])
    Dataset.from_dict({"text": ["x"]}).filter(lambda r: False).save_to_disk(path + "_filtered")
    with pytest.raises(DataValidationError, match="split 'train' is empty"):
        run_pretrain(tmp_path, path + "_filtered")
    empty_file = tmp_path / "empty.jsonl"
    empty_file.write_text("")
    with pytest.raises(DataValidationError, match="is an empty file"):
        run_pretrain(tmp_path, str(empty_file))


def test_malformed_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(DataValidationError, match="bad.jsonl' could not be read"):
        run_pretrain(tmp_path, str(bad))


def test_wrong_value_type_names_row_and_column(tmp_path):
    path = save(tmp_path, "demos", [{"prompt": "q", "completion": "a"}] * 3 + [{"prompt": "q", "completion": None}])
    with pytest.raises(
        DataValidationError, match=r"row 3, column 'completion': expected a non-empty string, got None"
    ):
        run_sft(tmp_path, path, "--eval_split_size", "0")


def test_empty_response_is_an_error_not_a_silent_drop(tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]},
        {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "  "}]},
    ]
    path = save(tmp_path, "demos", rows)
    with pytest.raises(DataValidationError, match=r"row 1, column 'completion': expected a non-empty 'assistant'"):
        run_sft(tmp_path, path, "--eval_split_size", "0")
    path = save(
        tmp_path, "msgs", [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}]
    )
    with pytest.raises(DataValidationError, match=r"row 0, column 'messages'"):
        run_sft(tmp_path, path, "--eval_split_size", "0")


def test_model_path_that_does_not_exist(tmp_path, world_dir):
    with pytest.raises(ModelNotFoundError, match="model path 'does/not/exist' does not exist"):
        run_sft(tmp_path, world_dir["demonstrations"])
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        run_pretrain(tmp_path, world_dir["documents"], "--model_type", "", "--model_name_or_path", "nowhere")


def test_dataset_that_does_not_exist(tmp_path):
    with pytest.raises(DataValidationError, match="dataset 'nowhere.jsonl' does not exist"):
        run_pretrain(tmp_path, "nowhere.jsonl")


def test_empty_documents_are_dropped_and_counted(tmp_path, world_dir):
    from datasets import load_from_disk

    docs = load_from_disk(world_dir["documents"])
    rows = [{"text": t} for t in docs["train"]["text"][:60]] + [{"text": ""}, {"text": "  "}]
    path = save(tmp_path, "docs", rows)
    manifest, _ = run_pretrain(tmp_path, path, "--eval_split_size", "0", "--block_size", "32")
    assert manifest["metrics"]["rows"]["train"]["dropped"]["empty_document"] == 2


def test_a_key_given_twice_is_refused_naming_file_key_and_line(tmp_path):
    recipe = tmp_path / "sft.yaml"
    recipe.write_text("learning_rate: 1.0e-3\nmax_length: 64\nlearning_rate: 5.0e-4\n")
    with pytest.raises(RecipeError, match=r"recipe file '.*sft.yaml': key 'learning_rate' is given twice \(line 3\)"):
        sft.main(["--config", str(recipe), "--output_dir", str(tmp_path / "o"), "--model_name_or_path", "x"])
    merged = tmp_path / "merged.yaml"  # a YAML merge (`<<:`) overridden by the mapping's own key is not a duplicate
    merged.write_text("base: &b {a: 1, b: 2}\nstage:\n  <<: *b\n  a: 3\n")
    assert load_yaml_mapping(str(merged))["stage"] == {"a": 3, "b": 2}


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--eval_split_size", "1.5", r"eval_split_size must be a fraction in \[0, 1\)"),
        ("--max_train_samples", "0", "max_train_samples must be at least 1"),
    ],
)
def test_data_sizes_are_checked_when_parsed(tmp_path, option, value, message):
    with pytest.raises(RecipeError, match=message):
        run_sft(tmp_path, "does-not-matter.jsonl", option, value)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--learning_rate=-1e-3"], "learning_rate must be positive, got -0.001"),
        (["--max_steps", "0", "--num_train_epochs", "0"], "no optimizer step to take"),
    ],
)
def test_numbers_no_trainer_can_run_with_are_refused_when_parsed(tmp_path, extra, message):
    out = tmp_path / "out"
    argv = ["--config", SFT_RECIPE, "--dataset_name", "x.jsonl", "--output_dir", str(out), "--model_name_or_path", "x"]
    with pytest.raises(RecipeError, match=message):
        sft.main(argv + extra)
    assert not out.exists()  # nothing was started
