"""The local Hub server speaks the protocol the unmodified `huggingface_hub` client uses: plain client calls only."""

from __future__ import annotations

import os

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .hub_server import TOKEN, running_hub


@pytest.fixture
def hub_server(tmp_path, monkeypatch):
    yield from running_hub(tmp_path, monkeypatch)


def test_round_trip_commits_branches_and_old_revisions(hub_server, tmp_path):
    api = HfApi(endpoint=hub_server.url, token=TOKEN)
    url = api.create_repo("alice/tiny", private=True)
    assert url.repo_id == "alice/tiny"
    assert api.create_repo("alice/tiny", exist_ok=True).repo_id == "alice/tiny"
    weights_v1, weights_v2 = os.urandom(3000), os.urandom(5000)
    first = api.create_commit(
        "alice/tiny",
        [CommitOperationAdd("model.safetensors", weights_v1), CommitOperationAdd("config.json", b'{"a": 1}')],
        commit_message="v1",
    )
    second = api.create_commit(
        "alice/tiny", [CommitOperationAdd("model.safetensors", weights_v2)], commit_message="v2"
    )
    assert len(first.oid) == 40 and first.oid != second.oid
    assert api.repo_info("alice/tiny").sha == second.oid
    assert api.repo_info("alice/tiny", revision=first.oid).sha == first.oid

    # LFS (safetensors) and regular files; the LFS blob went through the batch API to the CDN origin
    tree = {f.path: f for f in api.list_repo_tree("alice/tiny", recursive=True)}
    assert tree["model.safetensors"].lfs is not None and tree["model.safetensors"].lfs.size == 5000
    assert tree["config.json"].lfs is None
    assert any(path.startswith("/upload/") for method, path, _ in hub_server.requests if method == "PUT")

    # downloads: the current revision, an old one by sha, the same file unchanged
    path = hf_hub_download("alice/tiny", "model.safetensors")
    assert open(path, "rb").read() == weights_v2
    old = snapshot_download("alice/tiny", revision=first.oid)
    assert os.path.basename(old) == first.oid
    assert open(os.path.join(old, "model.safetensors"), "rb").read() == weights_v1

    # branches
    api.create_branch("alice/tiny", branch="experiment", revision=first.oid)
    on_branch = api.create_commit(
        "alice/tiny", [CommitOperationAdd("notes.txt", b"hi")], commit_message="b", revision="experiment"
    )
    refs = {b.name: b.target_commit for b in api.list_repo_refs("alice/tiny").branches}
    assert refs == {"main": second.oid, "experiment": on_branch.oid}
    assert api.get_paths_info("alice/tiny", ["notes.txt", "config.json"], revision="experiment")[0].path
    assert "notes.txt" not in api.list_repo_files("alice/tiny")

    # datasets too
    api.create_repo("tiny-org/data", repo_type="dataset")
    api.create_commit(
        "tiny-org/data",
        [CommitOperationAdd("data/train-00000-of-00001.parquet", b"PAR1" + os.urandom(100))],
        commit_message="data",
        repo_type="dataset",
    )
    folder = snapshot_download("tiny-org/data", repo_type="dataset")
    assert os.path.isfile(os.path.join(folder, "data", "train-00000-of-00001.parquet"))


def test_errors_carry_the_hub_error_codes(hub_server):
    api = HfApi(endpoint=hub_server.url, token=TOKEN)
    api.create_repo("alice/private", private=True)
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("alice/missing")
    with pytest.raises(RevisionNotFoundError):
        api.repo_info("alice/private", revision="nope")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/private", "missing.json")
    anonymous = HfApi(endpoint=hub_server.url, token=False)
    with pytest.raises(RepositoryNotFoundError):  # a private repo, no token: as the Hub, "not found"
        anonymous.repo_info("alice/private")
    with pytest.raises(HfHubHTTPError) as info:  # writes need a token
        anonymous.create_repo("alice/other")
    assert info.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as info:  # and the right to the namespace
        api.create_repo("bob/model")
    assert info.value.response.status_code == 403
    hub_server.create_repo("model", "tiny-org/gated", "alice", private=False, gated=True)
    with pytest.raises(GatedRepoError):
        HfApi(endpoint=hub_server.url, token=False).repo_info("tiny-org/gated")
