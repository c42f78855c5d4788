"""A small local server that speaks the Hugging Face Hub protocol, for tests: the unmodified `huggingface_hub`
client talks to it through `HF_ENDPOINT`.

It implements what the client uses to create repos and branches, commit (preupload, the LFS batch API with uploads
to a separate "CDN" origin, the ndjson commit), read repo info at a revision, list files (tree, paths-info, refs) and
download (`resolve`, with `X-Repo-Commit`, `ETag` / `X-Linked-Etag`, `X-Linked-Size`, `Content-Length`, and a
redirect to the CDN origin for LFS files, as the real Hub does), for model and dataset repos. Commits are stored
on disk with their full file list, so every old revision stays downloadable; branches point to commits.
`HubServer.downloads` records every file whose content was sent (GETs, not HEADs), so a test can count what a
client fetched.

The unmodified `datasets.load_dataset("org/name", name=..., revision=..., data_dir=..., split=...)` works against
it too: `datasets` reads through `huggingface_hub`'s `HfFileSystem` (repo info at a revision, tree listings,
`resolve` HEADs and downloads). `datasets.config` copies `HF_ENDPOINT`, `HF_HOME` and the offline switch at import
time, so the fixture patches it as well (`configure_client`), and `go_offline` switches both libraries offline.

Writes need a `Bearer` token the fixture configures. Errors carry the Hub's headers (`X-Error-Code`: RepoNotFound,
RevisionNotFound, EntryNotFound, GatedRepo; `X-Error-Message`), so the client raises its own typed errors.
Fault injection (`HubServer.faults`): reject the next commits (403), or drop the connection in the middle of the
next LFS uploads or commit requests. Xet is not implemented: the fixture sets `HF_HUB_DISABLE_XET=1`, the client's
documented switch, so it uses the LFS protocol. Pagination is not implemented (repos here are small).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import pytest
import yaml

TOKEN = "hf_test_write_token_5b2e7c1d9a"  # the fixture's write token for user "alice" (and org "tiny-org")
# Organisations of the public datasets that tests copy (tests/public_datasets.py): "alice" may write to them too, so
# a local copy can be uploaded under its real repo id, and recipes naming that id read it from this server.
PUBLIC_ORGS = ("HuggingFaceFW", "HuggingFaceH4", "HuggingFaceTB", "Anthropic", "openbmb", "trl-lib")
LFS_THRESHOLD = 10 * 1024 * 1024  # bigger files always go to LFS, as on the Hub
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.pkl", "*.parquet", "*.arrow", "*.png", "*.zip")
)


class HubError(Exception):
    """An error response, with the Hub's error headers."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict | None = None,
        extra: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.headers, self.extra = status, code, headers or {}, extra or {}


@dataclass
class Faults:
    """Fault injection: each counter is how many of the next such requests fail."""

    reject_commits: int = 0  # answered 403 (a server-side hook refusing the push)
    drop_lfs_uploads: int = 0  # connection closed after half of the upload body
    drop_commits: int = 0  # connection closed after half of the commit body


def git_blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class HubServer:
    """The Hub (API, git LFS batch, `resolve`) on one origin, the LFS storage ("CDN") on another, both on 127.0.0.1.

    Args:
        root: directory for repos, commits and blobs.
        tokens: token -> user name.
        orgs: user -> organisations the user may write to.
    """

    def __init__(self, root: str, tokens: dict[str, str], orgs: dict[str, list[str]] | None = None):
        self.root, self.tokens, self.orgs = root, tokens, orgs or {}
        self.faults = Faults()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every request
        # (repo_type, repo_id, path) of every file whose content was sent: a `resolve` GET of a regular file, or the
        # CDN GET an LFS file's `resolve` redirects to (ranged reads included: one entry per request)
        self.downloads: list[tuple[str, str, str]] = []
        self.lock = threading.RLock()
        self.secret = os.urandom(16)
        self._servers = [_Server(("127.0.0.1", 0), Handler, self, role) for role in ("hub", "cdn")]
        self.url, self.cdn_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in self._servers)

    def start(self) -> HubServer:
        for server in self._servers:
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    # ------------------------------------------------------------------------------------------ storage
    def _repo_dir(self, repo_type: str, repo_id: str) -> str:
        return os.path.join(self.root, "repos", repo_type, repo_id)

    def repo(self, repo_type: str, repo_id: str) -> dict[str, Any] | None:
        path = os.path.join(self._repo_dir(repo_type, repo_id), "repo.json")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)

    def _save_repo(self, repo_type: str, repo_id: str, repo: dict[str, Any]) -> None:
        _write(os.path.join(self._repo_dir(repo_type, repo_id), "repo.json"), json.dumps(repo).encode())

    def commit_info(self, repo_type: str, repo_id: str, sha: str) -> dict[str, Any]:
        with open(os.path.join(self._repo_dir(repo_type, repo_id), "commits", f"{sha}.json")) as f:
            return json.load(f)

    def put_object(self, content: bytes) -> str:
        sha = git_blob_sha(content)
        _write(os.path.join(self.root, "objects", sha), content)
        return sha

    def lfs_path(self, oid: str) -> str:
        return os.path.join(self.root, "lfs", oid)

    def create_repo(self, repo_type: str, repo_id: str, owner: str, private: bool, gated: bool = False) -> None:
        with self.lock:
            self._save_repo(repo_type, repo_id, {"private": private, "gated": gated, "approved": [], "branches": {}})
            self.make_commit(
                repo_type,
                repo_id,
                "main",
                {".gitattributes": DEFAULT_GITATTRIBUTES.encode()},
                [],
                "initial commit",
                author=owner,
            )

    def make_commit(
        self,
        repo_type: str,
        repo_id: str,
        branch: str,
        added: dict[str, bytes | dict],
        deleted: list[tuple[str, bool]],
        message: str,
        author: str,
    ) -> str:
        """A new commit on `branch`: `added` maps paths to content (regular) or LFS entries; `deleted` (path,
        is_folder). Returns the commit sha."""
        with self.lock:
            repo = self.repo(repo_type, repo_id)
            parent = repo["branches"].get(branch)
            files = dict(self.commit_info(repo_type, repo_id, parent)["files"]) if parent else {}
            for path, is_folder in deleted:
                gone = [p for p in files if p == path or (is_folder and p.startswith(path.rstrip("/") + "/"))]
                if not gone:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                for p in gone:
                    del files[p]
            for path, content in added.items():
                if isinstance(content, dict):  # an LFS file already in storage
                    pointer = lfs_pointer(content["oid"], content["size"])
                    files[path] = {"oid": git_blob_sha(pointer), "size": content["size"], "lfs": content}
                else:
                    files[path] = {"oid": self.put_object(content), "size": len(content), "lfs": None}
            record = {"parent": parent, "message": message, "author": author, "date": now_iso(), "files": files}
            payload = json.dumps({**record, "nonce": os.urandom(8).hex()}, sort_keys=True).encode()
            sha = hashlib.sha1(payload).hexdigest()
            _write(
                os.path.join(self._repo_dir(repo_type, repo_id), "commits", f"{sha}.json"), json.dumps(record).encode()
            )
            repo["branches"][branch] = sha
            self._save_repo(repo_type, repo_id, repo)
            return sha

    def resolve_revision(self, repo_type: str, repo_id: str, revision: str) -> str:
        repo = self.repo(repo_type, repo_id)
        if revision in repo["branches"]:
            return repo["branches"][revision]
        if len(revision) == 40 and os.path.isfile(
            os.path.join(self._repo_dir(repo_type, repo_id), "commits", f"{revision}.json")
        ):
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def file_content(self, entry: dict[str, Any]) -> bytes:
        path = self.lfs_path(entry["lfs"]["oid"]) if entry["lfs"] else os.path.join(self.root, "objects", entry["oid"])
        with open(path, "rb") as f:
            return f.read()

    def sign(self, oid: str, expires: int) -> str:
        return hmac.new(self.secret, f"{oid}:{expires}".encode(), hashlib.sha256).hexdigest()

    def signed_url(self, kind: str, oid: str, source: tuple[str, str, str] | None = None) -> str:
        """A CDN URL for an LFS object; `source` (repo_type, repo_id, path) is carried along, unsigned, so the CDN
        can record which repo file a download was."""
        expires = int(time.time()) + 600
        url = f"{self.cdn_url}/{kind}/{oid}?expires={expires}&signature={self.sign(oid, expires)}"
        if source:
            url += "&" + urlencode(dict(zip(("repo_type", "repo_id", "path"), source, strict=True)))
        return url

    def all_files(self) -> Iterator[tuple[str, bytes]]:
        """Every stored object and blob, for tests that check what was uploaded."""
        for kind in ("objects", "lfs"):
            folder = os.path.join(self.root, kind)
            for name in os.listdir(folder) if os.path.isdir(folder) else []:
                with open(os.path.join(folder, name), "rb") as f:
                    yield f"{kind}/{name}", f.read()


def _write(path: str, content: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{threading.get_ident()}.tmp"
    with open(tmp, "wb") as f:
        f.write(content)
    os.replace(tmp, path)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, hub: HubServer, role: str):
        super().__init__(address, handler)
        self.hub, self.role = hub, role

    def handle_error(self, request, client_address) -> None:  # dropped connections are the point of some tests
        pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    # ----------------------------------------------------------------------------------------- plumbing
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        hub, split = self.server.hub, urlsplit(self.path)
        self.query = parse_qs(split.query)
        self.segments = [unquote(s) for s in split.path.strip("/").split("/")]
        self._body: bytes | None = None
        self.status = 0
        try:
            route = self._route_cdn() if self.server.role == "cdn" else self._route_hub()
            if route is None:
                raise HubError(404, f"Not found: {split.path}")
            route()
        except HubError as e:
            if self._body is None and self.command in ("POST", "PUT"):
                self.body()
            headers = {**e.headers, "X-Error-Message": str(e)}
            if e.code:
                headers["X-Error-Code"] = e.code
            self.send_json({"error": str(e), **e.extra}, e.status, headers)
        except ConnectionError:
            self.close_connection = True
        if not self.status:  # no response sent (a dropped connection): recorded here, with status 0
            hub.requests.append((self.command, split.path, self.status))

    def body(self, drop_after_half: bool = False) -> bytes:
        """The request body (Content-Length or chunked); with `drop_after_half`, read half of it and cut the
        connection (fault injection)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                if drop_after_half:
                    self.drop()
            self._body = b"".join(chunks)
        else:
            length = int(self.headers.get("Content-Length") or 0)
            if drop_after_half:
                self.rfile.read(length // 2)
                self.drop()
            self._body = self.rfile.read(length)
        return self._body

    def drop(self) -> None:
        self.connection.shutdown(socket.SHUT_RDWR)
        self.connection.close()
        raise ConnectionAbortedError("connection dropped (fault injection)")

    def send_json(self, payload: Any, status: int = 200, headers: dict | None = None) -> None:
        self.send_bytes(json.dumps(payload).encode(), status, {"Content-Type": "application/json", **(headers or {})})

    def send_bytes(self, content: bytes, status: int = 200, headers: dict | None = None, length: int | None = None):
        self.status = status
        # recorded before the client can read the response, so a test sees every request its client call made
        self.server.hub.requests.append((self.command, urlsplit(self.path).path, status))
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(content) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    # ----------------------------------------------------------------------------------------- auth
    def user(self) -> str | None:
        header = self.headers.get("Authorization", "")
        if not header:
            return None
        token = header.removeprefix("Bearer ").strip()
        if token not in self.server.hub.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.server.hub.tokens[token]

    def can_write(self, namespace: str) -> str:
        user = self.user()
        if user is None:
            raise HubError(401, "You must be authenticated to write to the Hub (no token sent)")
        if namespace != user and namespace not in self.server.hub.orgs.get(user, []):
            raise HubError(403, f"You don't have the rights to write to the namespace '{namespace}'")
        return user

    def readable_repo(self, repo_type: str, repo_id: str, write: bool = False) -> dict[str, Any]:
        """The repo if this request may read (or write) it; otherwise the error the Hub gives."""
        repo = self.server.hub.repo(repo_type, repo_id)
        user = self.user()
        namespace = repo_id.split("/")[0]
        owner = user is not None and (namespace == user or namespace in self.server.hub.orgs.get(user, []))
        if repo is None or (repo["private"] and not owner):
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        if write:
            self.can_write(namespace)
        elif repo["gated"] and not owner and user not in repo["approved"]:
            raise HubError(401 if user is None else 403, f"Access to {repo_id} is restricted.", "GatedRepo")
        return repo

    # ----------------------------------------------------------------------------------------- routes
    def _route_hub(self):
        s, c = self.segments, self.command
        if s[:1] == ["api"]:
            if s[1:] == ["repos", "create"] and c == "POST":
                return self.create_repo
            if s[1:] == ["whoami-v2"]:
                return self.whoami
            if s[1:] == ["validate-yaml"] and c == "POST":
                return self.validate_yaml
            if len(s) >= 4 and s[1] in ("models", "datasets"):
                self.repo_type, self.repo_id, rest = s[1][:-1], f"{s[2]}/{s[3]}", s[4:]
                return self._route_repo_api(rest)
            return None
        repo_type = "dataset" if s[:1] == ["datasets"] else "model"
        s = s[1:] if repo_type == "dataset" else s
        if (
            len(s) >= 2
            and s[1].endswith(".git")
            and s[2:] in (["info", "lfs", "objects", "batch"], ["info", "lfs", "objects", "verify"])
        ):
            self.repo_type, self.repo_id = repo_type, f"{s[0]}/{s[1][:-4]}"
            return self.lfs_batch if s[-1] == "batch" else self.lfs_verify
        if len(s) >= 5 and s[2] == "resolve" and c in ("GET", "HEAD"):
            self.repo_type, self.repo_id, self.revision, self.filename = (
                repo_type,
                f"{s[0]}/{s[1]}",
                s[3],
                "/".join(s[4:]),
            )
            return self.resolve
        return None

    def _route_repo_api(self, rest: list[str]):
        c = self.command
        if not rest and c == "GET":
            self.revision = "main"
            return self.repo_info
        if rest[:1] == ["revision"] and c == "GET":
            self.revision = "/".join(rest[1:])
            return self.repo_info
        if rest[:1] == ["tree"] and c == "GET":
            self.revision, self.tree_path = rest[1], "/".join(rest[2:])
            return self.tree
        if rest[:1] == ["paths-info"] and c == "POST":
            self.revision = "/".join(rest[1:])
            return self.paths_info
        if rest == ["refs"] and c == "GET":
            return self.refs
        if rest[:1] == ["preupload"] and c == "POST":
            self.revision = "/".join(rest[1:])
            return self.preupload
        if rest[:1] == ["commit"] and c == "POST":
            self.revision = "/".join(rest[1:])
            return self.commit
        if rest[:1] == ["branch"] and c == "POST":
            self.branch = "/".join(rest[1:])
            return self.create_branch
        return None

    def _route_cdn(self):
        s = self.segments
        if len(s) == 2 and s[0] == "upload" and self.command == "PUT":
            return self.cdn_upload
        if len(s) == 2 and s[0] == "blobs" and self.command in ("GET", "HEAD"):
            return self.cdn_download
        return None

    # ----------------------------------------------------------------------------------------- repos
    def create_repo(self) -> None:
        payload = json.loads(self.body() or b"{}")
        namespace = payload.get("organization") or self.user() or ""
        user = self.can_write(namespace)
        repo_type, repo_id = payload.get("type") or "model", f"{namespace}/{payload['name']}"
        prefix = "datasets/" if repo_type == "dataset" else ""
        hub = self.server.hub
        with hub.lock:
            if hub.repo(repo_type, repo_id) is not None:
                url = f"{hub.url}/{prefix}{repo_id}"
                raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
            hub.create_repo(repo_type, repo_id, user, payload.get("visibility") == "private")
        self.send_json({"url": f"{hub.url}/{prefix}{repo_id}", "name": repo_id, "id": repo_id})

    def whoami(self) -> None:
        user = self.user()
        if user is None:
            raise HubError(401, "You must be authenticated")
        orgs = [{"name": org, "type": "org"} for org in self.server.hub.orgs.get(user, [])]
        token = {"displayName": "tests", "role": "write"}
        self.send_json({"type": "user", "name": user, "fullname": user, "orgs": orgs, "auth": {"accessToken": token}})

    def validate_yaml(self) -> None:
        content = json.loads(self.body()).get("content", "")
        try:
            if content.startswith("---"):
                metadata = yaml.safe_load(content.split("---", 2)[1])
                if metadata is not None and not isinstance(metadata, dict):
                    raise yaml.YAMLError("metadata must be a mapping")
        except yaml.YAMLError as e:
            self.send_json({"errors": [{"message": str(e)}]}, 400)
            return
        self.send_json({"errors": [], "warnings": []})

    def repo_info(self) -> None:
        hub = self.server.hub
        repo = self.readable_repo(self.repo_type, self.repo_id)
        sha = hub.resolve_revision(self.repo_type, self.repo_id, self.revision)
        commit = hub.commit_info(self.repo_type, self.repo_id, sha)
        self.send_json(
            {
                "id": self.repo_id,
                "author": self.repo_id.split("/")[0],
                "sha": sha,
                "private": repo["private"],
                "gated": "auto" if repo["gated"] else False,
                "disabled": False,
                "lastModified": commit["date"],
                "siblings": [{"rfilename": path} for path in sorted(commit["files"])],
                "tags": [],
                "downloads": 0,
                "likes": 0,
            }
        )

    def refs(self) -> None:
        repo = self.readable_repo(self.repo_type, self.repo_id)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha} for name, sha in repo["branches"].items()
        ]
        self.send_json({"branches": branches, "tags": [], "converts": [], "pullRequests": []})

    def create_branch(self) -> None:
        hub = self.server.hub
        repo = self.readable_repo(self.repo_type, self.repo_id, write=True)
        start = json.loads(self.body() or b"{}").get("startingPoint") or "main"
        with hub.lock:
            if self.branch in repo["branches"]:
                raise HubError(409, f"Reference already exists: refs/heads/{self.branch}")
            repo["branches"][self.branch] = hub.resolve_revision(self.repo_type, self.repo_id, start)
            hub._save_repo(self.repo_type, self.repo_id, repo)
        self.send_json({})

    # ----------------------------------------------------------------------------------------- listing
    def _files_at(self, revision: str) -> tuple[str, dict[str, Any]]:
        hub = self.server.hub
        sha = hub.resolve_revision(self.repo_type, self.repo_id, revision)
        return sha, hub.commit_info(self.repo_type, self.repo_id, sha)["files"]

    @staticmethod
    def _entry(path: str, entry: dict[str, Any]) -> dict[str, Any]:
        out = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
        if entry["lfs"]:
            pointer = lfs_pointer(entry["lfs"]["oid"], entry["lfs"]["size"])
            out["lfs"] = {"oid": entry["lfs"]["oid"], "size": entry["lfs"]["size"], "pointerSize": len(pointer)}
        return out

    def _folders(self, files: dict[str, Any]) -> set[str]:
        return {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}

    def tree(self) -> None:
        self.readable_repo(self.repo_type, self.repo_id)
        sha, files = self._files_at(self.revision)
        base = self.tree_path.strip("/")
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        folders = self._folders(files)
        if base and base not in folders:
            raise HubError(404, f"Entry not found: {base}", "EntryNotFound", {"X-Repo-Commit": sha})
        prefix = f"{base}/" if base else ""

        def shown(path: str) -> bool:
            return path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])

        entries = [
            {"type": "directory", "oid": hashlib.sha1(f"{sha}:{f}".encode()).hexdigest(), "size": 0, "path": f}
            for f in sorted(folders)
            if shown(f)
        ]
        entries += [self._entry(p, e) for p, e in sorted(files.items()) if shown(p)]
        self.send_json(entries)

    def paths_info(self) -> None:
        self.readable_repo(self.repo_type, self.repo_id)
        _, files = self._files_at(self.revision)
        form = parse_qs(self.body().decode())
        self.send_json([self._entry(p, files[p]) for p in form.get("paths", []) if p in files])

    # ----------------------------------------------------------------------------------------- uploads
    def _lfs_wanted(self, path: str, size: int, sample: bytes, files: dict[str, Any]) -> bool:
        attributes = files.get(".gitattributes")
        text = self.server.hub.file_content(attributes).decode() if attributes else DEFAULT_GITATTRIBUTES
        patterns = [line.split()[0] for line in text.splitlines() if "filter=lfs" in line]
        name = path.rsplit("/", 1)[-1]
        return size >= LFS_THRESHOLD or b"\0" in sample or any(fnmatch.fnmatch(name, p) for p in patterns)

    def preupload(self) -> None:
        self.readable_repo(self.repo_type, self.repo_id, write=True)
        _, files = self._files_at(self.revision)
        out = []
        for item in json.loads(self.body())["files"]:
            path, sample = item["path"], base64.b64decode(item["sample"])
            lfs = self._lfs_wanted(path, item["size"], sample, files)
            existing = files.get(path)
            oid = (existing["lfs"]["oid"] if existing["lfs"] else existing["oid"]) if existing else None
            out.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self.send_json({"files": out, "commitOid": None})

    def lfs_batch(self) -> None:
        hub = self.server.hub
        self.readable_repo(self.repo_type, self.repo_id, write=True)
        request = json.loads(self.body())
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        objects = []
        for obj in request["objects"]:
            oid, size = obj["oid"], obj["size"]
            stored = hub.lfs_path(oid)
            if os.path.isfile(stored) and os.path.getsize(stored) == size:
                objects.append({"oid": oid, "size": size})  # already uploaded: nothing to send
                continue
            verify = f"{hub.url}/{prefix}{self.repo_id}.git/info/lfs/objects/verify"
            actions = {"upload": {"href": hub.signed_url("upload", oid)}, "verify": {"href": verify, "header": {}}}
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
        self.send_json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_verify(self) -> None:
        self.readable_repo(self.repo_type, self.repo_id, write=True)
        request = json.loads(self.body())
        stored = self.server.hub.lfs_path(request["oid"])
        if not os.path.isfile(stored) or os.path.getsize(stored) != request["size"]:
            raise HubError(404, f"LFS object {request['oid']} was not uploaded")
        self.send_json({"success": True})

    def cdn_upload(self) -> None:
        hub, oid = self.server.hub, self.segments[1]
        self._check_signature(oid)
        with hub.lock:
            drop = hub.faults.drop_lfs_uploads > 0
            hub.faults.drop_lfs_uploads -= int(drop)
        content = self.body(drop_after_half=drop)
        if hashlib.sha256(content).hexdigest() != oid:
            raise HubError(400, f"uploaded content does not match its sha256 {oid}")
        _write(hub.lfs_path(oid), content)
        self.send_bytes(b"", 200, {"ETag": f'"{oid}"'})

    def commit(self) -> None:
        hub = self.server.hub
        self.readable_repo(self.repo_type, self.repo_id, write=True)
        with hub.lock:
            drop = hub.faults.drop_commits > 0
            hub.faults.drop_commits -= int(drop)
            reject = hub.faults.reject_commits > 0
            hub.faults.reject_commits -= int(reject)
        lines = [json.loads(line) for line in self.body(drop_after_half=drop).splitlines() if line.strip()]
        if reject:
            raise HubError(403, "Push rejected by the server's pre-receive hook (fault injection)")
        user = self.user()
        header = next(item["value"] for item in lines if item["key"] == "header")
        added, deleted = {}, []
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                added[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                stored = hub.lfs_path(value["oid"])
                if not os.path.isfile(stored):
                    raise HubError(422, f"LFS object {value['oid']} for '{value['path']}' was never uploaded")
                added[value["path"]] = {"oid": value["oid"], "size": os.path.getsize(stored)}
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append((value["path"], key == "deletedFolder"))
        with hub.lock:
            head = hub.resolve_revision(self.repo_type, self.repo_id, self.revision)
            if self.revision not in hub.repo(self.repo_type, self.repo_id)["branches"]:
                raise HubError(400, f"Cannot commit to '{self.revision}': not a branch")
            if header.get("parentCommit") and header["parentCommit"] != head:
                raise HubError(412, "A commit has happened since the parent commit; rebase and retry")
            message = header["summary"] + (f"\n\n{header['description']}" if header.get("description") else "")
            sha = hub.make_commit(self.repo_type, self.repo_id, self.revision, added, deleted, message, user)
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        url = f"{hub.url}/{prefix}{self.repo_id}/commit/{sha}"
        self.send_json({"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None})

    # ----------------------------------------------------------------------------------------- downloads
    def resolve(self) -> None:
        hub = self.server.hub
        self.readable_repo(self.repo_type, self.repo_id)
        sha, files = self._files_at(self.revision)
        entry = files.get(self.filename)
        if entry is None:
            raise HubError(404, f"Entry not found: {self.filename}", "EntryNotFound", {"X-Repo-Commit": sha})
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if entry["lfs"]:  # the Hub redirects LFS files to its CDN (another origin: the client drops the token)
            oid = entry["lfs"]["oid"]
            location = hub.signed_url("blobs", oid, (self.repo_type, self.repo_id, self.filename))
            headers.update({"Location": location, "X-Linked-Etag": f'"{oid}"', "X-Linked-Size": entry["size"]})
            self.send_bytes(b"", 302, {**headers, "ETag": f'"{entry["oid"]}"'})
            return
        headers.update({"ETag": f'"{entry["oid"]}"', "Content-Type": "application/octet-stream"})
        if self.command == "GET":
            hub.downloads.append((self.repo_type, self.repo_id, self.filename))
        self._send_range(hub.file_content(entry), headers)

    def cdn_download(self) -> None:
        hub, oid = self.server.hub, self.segments[1]
        self._check_signature(oid)
        if not os.path.isfile(hub.lfs_path(oid)):
            raise HubError(404, "no such blob")
        with open(hub.lfs_path(oid), "rb") as f:
            content = f.read()
        if self.command == "GET" and "repo_id" in self.query:
            source = tuple(self.query[key][0] for key in ("repo_type", "repo_id", "path"))
            hub.downloads.append(source)
        self._send_range(content, {"ETag": f'"{oid}"', "Content-Type": "application/octet-stream"})

    def _send_range(self, content: bytes, headers: dict[str, Any]) -> None:
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes="):
            start_text, _, end_text = ranged[6:].partition("-")
            start, end = int(start_text or 0), int(end_text) if end_text else len(content) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            self.send_bytes(content[start : end + 1], 206, headers)
            return
        self.send_bytes(content, 200, headers)

    def _check_signature(self, oid: str) -> None:
        hub = self.server.hub
        expires = int(self.query.get("expires", ["0"])[0])
        signature = self.query.get("signature", [""])[0]
        if expires < time.time() or not hmac.compare_digest(signature, hub.sign(oid, expires)):
            raise HubError(403, "Request has expired or the signature does not match")


# ------------------------------------------------------------------------------------------------ fixture
def configure_client(monkeypatch: pytest.MonkeyPatch, endpoint: str, hf_home: str, token: str | None) -> None:
    """Point the unmodified clients at `endpoint` with a fresh `HF_HOME` cache: through their documented environment
    variables, and the `huggingface_hub.constants` and `datasets.config` values they read from them at import time
    (imported here first, so that the values patched are restored after the test, not left pointing at it)."""
    import datasets
    from huggingface_hub import constants

    cache = os.path.join(hf_home, "hub")
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": hf_home,
        "HF_HUB_CACHE": cache,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    else:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    values = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": hf_home,
        "HF_HUB_CACHE": cache,
        "HF_TOKEN_PATH": os.path.join(hf_home, "token"),
        "HF_STORED_TOKENS_PATH": os.path.join(hf_home, "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
    }
    for key, value in values.items():
        monkeypatch.setattr(constants, key, value)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", endpoint)
    monkeypatch.setattr(
        datasets.config, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
    )
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    _datasets_offline(monkeypatch, False)
    _datasets_cache(monkeypatch, hf_home)


def _datasets_cache(monkeypatch: pytest.MonkeyPatch, hf_home: str) -> None:
    """`datasets`' own caches (prepared Arrow files, downloads, modules) under `hf_home`, as `HF_HOME` would put them."""
    from pathlib import Path

    import datasets

    cache = Path(hf_home, "datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    for key, value in {
        "HF_CACHE_HOME": hf_home,
        "HF_DATASETS_CACHE": cache,
        "DOWNLOADED_DATASETS_PATH": cache / "downloads",
        "EXTRACTED_DATASETS_PATH": cache / "downloads" / "extracted",
        "HF_MODULES_CACHE": Path(hf_home, "modules"),
    }.items():
        monkeypatch.setattr(datasets.config, key, value)


def _datasets_offline(monkeypatch: pytest.MonkeyPatch, offline: bool) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", offline)


def go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """`HF_HUB_OFFLINE=1` and `HF_DATASETS_OFFLINE=1` for the rest of the test, as a user would set them before
    starting Python: the environment, `huggingface_hub.constants` and `datasets.config`."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _datasets_offline(monkeypatch, True)


def use_fresh_cache(monkeypatch: pytest.MonkeyPatch, hf_home: str) -> None:
    """A new, empty cache: another machine, as far as downloads go."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", hf_home)
    monkeypatch.setenv("HF_HUB_CACHE", os.path.join(hf_home, "hub"))
    monkeypatch.setattr(constants, "HF_HOME", hf_home)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", os.path.join(hf_home, "hub"))
    _datasets_cache(monkeypatch, hf_home)


def running_hub(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """The body of the `hub_server` fixtures: a running local Hub on 127.0.0.1 (user `alice`, orgs `tiny-org` and
    `PUBLIC_ORGS`, token `TOKEN` in HF_TOKEN), with the clients pointed at it and a fresh cache; stopped afterwards."""
    orgs = {"alice": ["tiny-org", *PUBLIC_ORGS]}
    server = HubServer(str(tmp_path / "hub-storage"), tokens={TOKEN: "alice"}, orgs=orgs).start()
    configure_client(monkeypatch, server.url, str(tmp_path / "hf_home"), TOKEN)
    yield server
    server.stop()
