"""A small loopback Hugging Face Hub server: a TEST FIXTURE, not a Hub replacement.

It speaks just enough of the Hub's HTTP API for the real `huggingface_hub` client to push a folder
(`create_repo` + `upload_folder`) and pull it back (`hf_hub_download`, `snapshot_download`, `file_exists`,
`model_info`, `list_repo_tree`), so that `peft_ckt.hub` and `PeftModel.from_pretrained(..., "user/repo")` can be
tested without the network. Everything lives in memory; every file is accepted as a "regular" (inline base64)
upload, so no LFS/Xet storage is involved.

Endpoints:
    GET  /api/whoami-v2
    POST /api/repos/create
    POST /api/validate-yaml
    POST /api/models/{repo}/preupload/{rev}
    POST /api/models/{repo}/commit/{rev}
    GET  /api/models/{repo}[/revision/{rev}]
    GET  /api/models/{repo}/tree/{rev}[/{path}]?recursive=true
    POST /api/models/{repo}/paths-info/{rev}
    HEAD/GET /{repo}/resolve/{rev}/{file}   (X-Repo-Commit, ETag, 404 with X-Error-Code: EntryNotFound)

Write endpoints require an `Authorization: Bearer ...` header (any token), like the real Hub.
The server is bounded: it runs in a daemon thread, refuses bodies over `max_body_bytes`, and shuts itself down
after `lifetime_s` seconds even if a test forgets to stop it.

Usage:
    with HubTestServer() as hub:
        env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "test-token", ...}   # set before importing huggingface_hub
        ...
        hub.files("ckt-tester/repo")  # {path: bytes} of the main branch
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

DEFAULT_USER = "ckt-tester"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class _Repo:
    repo_id: str
    private: bool = False
    # commits[i] = (commit sha, {path: bytes}); the last one is the head of "main".
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)

    def snapshot(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        if revision == "main":
            return self.commits[-1]
        for sha, files in self.commits:
            if sha == revision or (len(revision) >= 7 and sha.startswith(revision)):
                return sha, files
        return None


class HubTestServer:
    """In-memory Hub endpoints on 127.0.0.1 (see module docstring). Use as a context manager."""

    def __init__(self, lifetime_s: float = 300.0, max_body_bytes: int = 64 * 1024 * 1024, user: str = DEFAULT_USER):
        self.user = user
        self.lifetime_s = lifetime_s
        self.max_body_bytes = max_body_bytes
        self.repos: dict[str, _Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) log, for assertions
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # ----------------------------------------------------------------------------------------------- lifecycle
    @property
    def endpoint(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubTestServer is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubTestServer:
        handler = type("_BoundHandler", (_HubHandler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-test-server", daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if self._timer is not None:
            self._timer.cancel()
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def __enter__(self) -> HubTestServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------------- state
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self._lock:
            snapshot = self.repos[repo_id].snapshot(revision)
            return dict(snapshot[1]) if snapshot else {}

    def create_repo(self, repo_id: str, private: bool = False) -> bool:
        """Creates `repo_id` with an initial commit holding `.gitattributes`; False when it exists already."""
        with self._lock:
            if repo_id in self.repos:
                return False
            repo = _Repo(repo_id, private=private)
            files = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}
            repo.commits.append((self._new_sha(repo_id, files), files))
            self.repos[repo_id] = repo
            return True

    def commit(self, repo_id: str, operations: list[dict], parent: str | None = None) -> str:
        with self._lock:
            repo = self.repos[repo_id]
            head_sha, head_files = repo.commits[-1]
            if parent is not None and not head_sha.startswith(parent):
                raise ValueError(f"parent commit {parent} is not the head {head_sha}")
            files = dict(head_files)
            for op in operations:
                key, value = op["key"], op["value"]
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise ValueError(f"unsupported encoding {value.get('encoding')}")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: d for p, d in files.items() if not p.startswith(prefix)}
                else:  # lfsFile, copies: never requested since preupload answers "regular"
                    raise ValueError(f"unsupported commit operation {key!r}")
            sha = self._new_sha(repo_id, files)
            repo.commits.append((sha, files))
            return sha

    @staticmethod
    def _new_sha(repo_id: str, files: dict[str, bytes]) -> str:
        digest = hashlib.sha1(repo_id.encode())
        digest.update(str(time.time_ns()).encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + hashlib.sha1(files[path]).digest())
        return digest.hexdigest()


class _HubHandler(BaseHTTPRequestHandler):
    hub: HubTestServer  # set on the bound subclass
    protocol_version = "HTTP/1.1"

    # Silence the default stderr access log (tests read `hub.requests` instead).
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass

    # ----------------------------------------------------------------------------------------------- helpers
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False):
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict[str, str] | None = None):
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, status: int, message: str, code: str | None = None, head: bool = False):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.hub.max_body_bytes:
            raise ValueError(f"request body of {length} bytes exceeds the test server's limit")
        return self.rfile.read(length) if length else b""

    def _authorized(self) -> bool:
        return (self.headers.get("Authorization") or "").startswith("Bearer ")

    def _repo_or_404(self, repo_id: str, head: bool = False) -> _Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, f"Repository {repo_id} not found", "RepoNotFound", head=head)
        return repo

    # ----------------------------------------------------------------------------------------------- routing
    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method: str):
        url = urlparse(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        self.hub.requests.append((method, path))
        try:
            self._route(method, path, query)
        except (ValueError, KeyError, json.JSONDecodeError) as error:
            self._error(400, f"bad request: {error}")

    def _route(self, method: str, path: str, query: dict):
        if path == "/api/whoami-v2" and method == "GET":
            if not self._authorized():
                return self._error(401, "Invalid credentials in Authorization header")
            return self._json(
                200,
                {
                    "type": "user",
                    "name": self.hub.user,
                    "fullname": "CKT Tester",
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
                },
            )
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo()
        if path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml()

        match = re.fullmatch(
            r"/api/models/([^/]+/[^/]+)(?:/(preupload|commit|revision|tree|paths-info)/([^/]+)(/.*)?)?", path
        )
        if match:
            repo_id, action, revision, rest = match.groups()
            if action is None and method == "GET":
                return self._repo_info(repo_id, "main")
            if action == "revision" and method == "GET":
                return self._repo_info(repo_id, revision)
            if action == "preupload" and method == "POST":
                return self._preupload(repo_id, revision)
            if action == "commit" and method == "POST":
                return self._commit(repo_id, revision)
            if action == "tree" and method == "GET":
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                return self._tree(repo_id, revision, (rest or "").strip("/"), recursive)
            if action == "paths-info" and method == "POST":
                return self._paths_info(repo_id, revision)

        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if match and method in ("GET", "HEAD"):
            return self._resolve(*match.groups(), head=method == "HEAD")
        return self._error(404, f"no test endpoint for {method} {path}")

    # ----------------------------------------------------------------------------------------------- endpoints
    def _create_repo(self):
        if not self._authorized():
            return self._error(401, "You must be authenticated to create a repo")
        payload = json.loads(self._body() or b"{}")
        if payload.get("type", "model") != "model":
            return self._error(400, "the test server only hosts model repos")
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload['name']}"
        created = self.hub.create_repo(repo_id, private=payload.get("visibility") == "private")
        url = f"{self.hub.endpoint}/{repo_id}"
        if not created:  # the client treats 409 as success with exist_ok=True
            return self._json(409, {"error": "You already created this model repo", "url": url})
        return self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self):
        payload = json.loads(self._body() or b"{}")
        content = payload.get("content", "")
        errors = []
        if content.startswith("---"):
            parts = content.split("---", 2)
            if len(parts) < 3:
                errors.append({"message": "unterminated YAML front matter"})
            else:
                try:
                    import yaml

                    if not isinstance(yaml.safe_load(parts[1]) or {}, dict):
                        errors.append({"message": "YAML metadata must be a mapping"})
                except ImportError:
                    pass
                except yaml.YAMLError as error:
                    errors.append({"message": f"invalid YAML: {error}"})
        if errors:
            return self._json(400, {"errors": errors, "error": errors[0]["message"]})
        return self._json(200, {"errors": [], "warnings": []})

    def _preupload(self, repo_id: str, revision: str):
        if not self._authorized():
            return self._error(401, "Unauthorized")
        if self._repo_or_404(repo_id) is None:
            return
        payload = json.loads(self._body() or b"{}")
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in payload.get("files", [])]
        return self._json(200, {"files": files, "commitOid": self.hub.repos[repo_id].commits[-1][0]})

    def _commit(self, repo_id: str, revision: str):
        if not self._authorized():
            return self._error(401, "Unauthorized")
        if self._repo_or_404(repo_id) is None:
            return
        if revision != "main":
            return self._error(400, "the test server only commits to main")
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return self._error(400, "commit payload must start with a header line")
        sha = self.hub.commit(repo_id, lines[1:], parent=lines[0]["value"].get("parentCommit"))
        return self._json(
            200, {"commitUrl": f"{self.hub.endpoint}/{repo_id}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None}
        )

    def _snapshot_or_404(self, repo_id: str, revision: str, head: bool = False):
        repo = self._repo_or_404(repo_id, head=head)
        if repo is None:
            return None
        snapshot = repo.snapshot(revision)
        if snapshot is None:
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
        return snapshot

    def _repo_info(self, repo_id: str, revision: str):
        snapshot = self._snapshot_or_404(repo_id, revision)
        if snapshot is None:
            return
        sha, files = snapshot
        repo = self.hub.repos[repo_id]
        return self._json(
            200,
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": sha,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(repo.created_at)),
                "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                "siblings": [{"rfilename": p} for p in sorted(files)],
            },
        )

    @staticmethod
    def _entry(path: str, data: bytes) -> dict:
        return {"type": "file", "path": path, "size": len(data), "oid": _git_blob_sha1(data)}

    def _tree(self, repo_id: str, revision: str, prefix: str, recursive: bool):
        snapshot = self._snapshot_or_404(repo_id, revision)
        if snapshot is None:
            return
        _, files = snapshot
        entries, folders = [], set()
        for path in sorted(files):
            if prefix and not path.startswith(prefix + "/"):
                continue
            relative = path[len(prefix) + 1 :] if prefix else path
            if not recursive and "/" in relative:
                folders.add((prefix + "/" if prefix else "") + relative.split("/")[0])
                continue
            if recursive:
                parts = path.split("/")[:-1]
                for depth in range(1, len(parts) + 1):
                    folder = "/".join(parts[:depth])
                    if not prefix or folder.startswith(prefix + "/"):
                        folders.add(folder)
            entries.append(self._entry(path, files[path]))
        folder_entries = [{"type": "directory", "path": f, "size": 0, "oid": "0" * 40} for f in sorted(folders)]
        return self._json(200, folder_entries + entries)

    def _paths_info(self, repo_id: str, revision: str):
        snapshot = self._snapshot_or_404(repo_id, revision)
        if snapshot is None:
            return
        _, files = snapshot
        body = self._body()
        content_type = self.headers.get("Content-Type", "")
        if "json" in content_type:
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        return self._json(200, [self._entry(p, files[p]) for p in paths if p in files])

    def _resolve(self, repo_id: str, revision: str, filename: str, head: bool):
        snapshot = self._snapshot_or_404(repo_id, revision, head=head)
        if snapshot is None:
            return
        sha, files = snapshot
        if filename not in files:
            return self._error(404, f"Entry not found: {filename}", "EntryNotFound", head=head)
        data = files[filename]
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": sha,
            "ETag": f'"{_git_blob_sha1(data)}"',
            "Content-Length": str(len(data)),
        }
        self._send(200, data, headers, head=head)


if __name__ == "__main__":  # manual use: python tests/hub_server.py
    with HubTestServer(lifetime_s=3600) as server:
        print(f"HF_ENDPOINT={server.endpoint}", flush=True)
        try:
            while server._httpd is not None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
