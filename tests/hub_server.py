"""A loopback Hugging Face Hub for tests: the HTTP contract huggingface_hub's client speaks (see
../shared/notes/hub-and-reliability.md §1.4), in memory, stdlib only.

Implements: create repo (409 if it exists), validate-yaml (front matter parsed with yaml.safe_load; licence checked),
preupload (always "regular": no LFS/Xet), NDJSON commit (412 on a stale parentCommit; 400 if a file holds a known
token, like the Hub's secret scanner), repo info / revision info, refs, create branch (409 if it exists), tree, resolve
(HEAD/GET with X-Repo-Commit + ETag). Bearer tokens are checked against ``tokens``; private repos answer 404 to others.
``fail`` injects a status for (method, path-prefix) pairs. Every request body is kept in ``bodies`` so tests can scan
what was sent.

Used by tests/test_push.py. Run standalone for manual tries: python tests/hub_server.py (prints the endpoint).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LICENSES = {"apache-2.0", "mit", "openrail", "cc-by-4.0", "cc-by-sa-4.0", "cc0-1.0", "bsd-3-clause", "gpl-3.0",
            "llama3.3", "gemma", "unknown", "other"}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, repo_id: str, private: bool):
        self.id, self.private = repo_id, private
        self.commits: dict[str, dict[str, bytes]] = {}
        self.branches: dict[str, str] = {}
        self.branches["main"] = self.add_commit({".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
                                                                    b"*.gguf filter=lfs diff=lfs merge=lfs -text\n"},
                                                "initial commit")

    def add_commit(self, files: dict[str, bytes], message: str) -> str:
        sha = hashlib.sha1(f"{self.id}\n{message}\n{time.time_ns()}\n{len(self.commits)}".encode()).hexdigest()
        self.commits[sha] = dict(files)
        return sha

    def resolve(self, rev: str) -> str | None:
        return self.branches.get(rev) or (rev if rev in self.commits else None)


class HubState:
    def __init__(self, tokens: dict[str, str]):
        self.tokens = dict(tokens)  # token -> user name
        self.repos: dict[str, Repo] = {}
        self.fail: dict[tuple[str, str], int] = {}  # (METHOD, path prefix) -> status to answer
        self.bodies: list[bytes] = []
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    server_version = "hfpipe-test-hub/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    # ---- plumbing
    @property
    def state(self) -> HubState:
        return self.server.state  # type: ignore[attr-defined]

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(n) if n else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            data = b"".join(chunks)
        self.state.bodies.append(data)
        return data

    def _send(self, status: int, obj=None, *, raw: bytes | None = None, headers: dict | None = None, head=False):
        body = raw if raw is not None else (json.dumps(obj).encode() if obj is not None else b"")
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None, head=False):
        self._send(status, {"error": message}, headers={"X-Error-Code": code} if code else None, head=head)

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return self.state.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None

    def _repo(self, repo_id: str, head=False) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and self._user() != repo_id.split("/")[0]):
            self._error(404, f"Repository Not Found for url: {self.path}", "RepoNotFound", head=head)
            return None
        return repo

    def _dispatch(self, method: str):
        path = urlsplit(self.path).path
        self.state.requests.append((method, path))
        body = self._body() if method in ("POST", "PUT") else b""
        for (m, prefix), status in self.state.fail.items():
            if m == method and path.startswith(prefix):
                return self._error(status, f"injected {status}")
        if self.headers.get("Authorization") and self._user() is None:
            return self._error(401, "Invalid credentials in Authorization header")
        with self.state.lock:
            return self._route(method, path, body)

    do_GET = lambda self: self._dispatch("GET")  # noqa: E731
    do_POST = lambda self: self._dispatch("POST")  # noqa: E731
    do_HEAD = lambda self: self._dispatch("HEAD")  # noqa: E731

    # ---- routes
    def _route(self, method: str, path: str, body: bytes):
        head = method == "HEAD"
        if method == "GET" and path == "/api/whoami-v2":
            user = self._user()
            return self._send(200, {"type": "user", "name": user, "orgs": []}) if user else self._error(401, "no token")
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body or b"{}"))
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body or b"{}"))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(preupload|commit|revision|tree|branch|refs|paths-info)(?:/(.*))?)?", path)
        if m:
            repo_id, action, rest = m.group(1), m.group(2), unquote(m.group(3) or "")
            repo = self._repo(repo_id, head=head)
            if repo is None:
                return
            if action is None or action == "revision":
                return self._info(repo, rest or "main")
            if action == "refs":
                return self._send(200, {"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha}
                                                     for b, sha in repo.branches.items()],
                                        "converts": [], "tags": [], "pullRequests": []})
            if self._user() != repo_id.split("/")[0] and method == "POST" and action != "paths-info":
                return self._error(403, "You don't have the rights to write to this repo")
            if action == "branch":
                return self._create_branch(repo, rest, json.loads(body or b"{}"))
            if action == "preupload":
                return self._preupload(repo, rest, json.loads(body or b"{}"))
            if action == "commit":
                return self._commit(repo, rest, body)
            if action == "tree":
                rev, _, sub = rest.partition("/")
                return self._tree(repo, rev, sub)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and method in ("GET", "HEAD"):
            repo = self._repo(m.group(1), head=head)
            if repo is None:
                return
            return self._resolve(repo, unquote(m.group(2)), unquote(m.group(3)), head)
        return self._error(404, f"no route {method} {path}")

    def _create_repo(self, req: dict):
        user = self._user()
        if user is None:
            return self._error(401, "You must be authenticated to create a repo")
        ns = req.get("organization") or user
        repo_id = f"{ns}/{req['name']}"
        if repo_id in self.state.repos:
            return self._send(409, {"error": "You already created this model repo", "url": self._url(repo_id)})
        private = req.get("visibility") == "private" if "visibility" in req else bool(req.get("private"))
        self.state.repos[repo_id] = Repo(repo_id, private)
        return self._send(200, {"url": self._url(repo_id)})

    def _url(self, repo_id: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/{repo_id}"

    def _validate_yaml(self, req: dict):
        import yaml

        text = req.get("content", "")
        m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
        if not m:
            return self._send(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
        try:
            meta = yaml.safe_load(m.group(1))
        except yaml.YAMLError as e:
            return self._send(400, {"errors": [{"message": f"invalid YAML: {e}"}]})
        if not isinstance(meta, dict):
            return self._send(400, {"errors": [{"message": "metadata must be a mapping"}]})
        errors = []
        if "license" in meta and meta["license"] not in LICENSES:
            errors.append({"message": f'"license" must be one of [{", ".join(sorted(LICENSES))}]'})
        for entry in meta.get("model-index") or []:
            for r in entry.get("results") or []:
                if not (r.get("task", {}).get("type") and r.get("dataset", {}).get("type")
                        and r.get("dataset", {}).get("name") and all("type" in x and "value" in x
                                                                    for x in r.get("metrics") or [None])):
                    errors.append({"message": f"model-index result is missing required keys: {r}"})
        return self._send(400 if errors else 200, {"errors": errors, "warnings": []})

    def _create_branch(self, repo: Repo, branch: str, req: dict):
        if branch in repo.branches:
            return self._send(409, {"error": f"Reference refs/heads/{branch} already exists"})
        start = repo.resolve(req.get("startingPoint") or "main")
        if start is None:
            return self._error(404, "starting point not found", "RevisionNotFound")
        repo.branches[branch] = start
        return self._send(200, {})

    def _preupload(self, repo: Repo, rev: str, req: dict):
        sha = repo.resolve(rev)
        files = repo.commits[sha] if sha else {}
        return self._send(200, {"files": [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": git_blob_sha1(files[f["path"]]) if f["path"] in files else None}
            for f in req.get("files", [])]})

    def _commit(self, repo: Repo, rev: str, body: bytes):
        if rev not in repo.branches:
            return self._error(404, f"Revision Not Found: {rev}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        if header.get("parentCommit") and header["parentCommit"] != repo.branches[rev]:
            return self._send(412, {"error": "A commit has happened since. Please refresh and try again."})
        files = dict(repo.commits[repo.branches[rev]])
        for op in lines:
            v = op["value"]
            if op["key"] == "file":
                data = base64.b64decode(v["content"])
                if any(t.encode() in data for t in self.state.tokens):
                    return self._send(400, {"error": "It appears that one or more of your files contain valid "
                                                     "Hugging Face secrets, such as tokens or API keys."})
                files[v["path"]] = data
            elif op["key"] == "deletedFile":
                files.pop(v["path"], None)
            elif op["key"] == "deletedFolder":
                files = {p: d for p, d in files.items() if not p.startswith(v["path"].rstrip("/") + "/")}
            elif op["key"] == "lfsFile":
                return self._send(400, {"error": "this test hub stores regular files only"})
        sha = repo.add_commit(files, header.get("summary", ""))
        repo.branches[rev] = sha
        return self._send(200, {"commitUrl": f"{self._url(repo.id)}/commit/{sha}", "commitOid": sha,
                                "pullRequestUrl": None})

    def _info(self, repo: Repo, rev: str):
        sha = repo.resolve(rev)
        if sha is None:
            return self._error(404, f"Revision Not Found: {rev}", "RevisionNotFound")
        files = repo.commits[sha]
        return self._send(200, {"id": repo.id, "modelId": repo.id, "sha": sha, "private": repo.private,
                                "lastModified": "2026-01-01T00:00:00.000Z", "tags": [], "downloads": 0, "likes": 0,
                                "siblings": [{"rfilename": p, "size": len(d), "blobId": git_blob_sha1(d)}
                                             for p, d in sorted(files.items())]})

    def _tree(self, repo: Repo, rev: str, sub: str):
        sha = repo.resolve(rev)
        if sha is None:
            return self._error(404, f"Revision Not Found: {rev}", "RevisionNotFound")
        prefix = sub.rstrip("/") + "/" if sub else ""
        return self._send(200, [{"type": "file", "path": p, "size": len(d), "oid": git_blob_sha1(d)}
                                for p, d in sorted(repo.commits[sha].items()) if p.startswith(prefix)])

    def _resolve(self, repo: Repo, rev: str, path: str, head: bool):
        sha = repo.resolve(rev)
        if sha is None:
            return self._error(404, f"Revision Not Found: {rev}", "RevisionNotFound", head=head)
        data = repo.commits[sha].get(path)
        if data is None:
            return self._send(404, {"error": "Entry not found"}, head=head,
                              headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha})
        return self._send(200, raw=data, head=head,
                          headers={"X-Repo-Commit": sha, "ETag": f'"{git_blob_sha1(data)}"'})


class HubServer:
    """``with HubServer({"hf_token": "user"}) as hub: hub.url ...``: serves on 127.0.0.1, a free port, in a thread."""

    def __init__(self, tokens: dict[str, str]):
        self.state = HubState(tokens)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = self.state  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.state.repos[repo_id]
        return dict(repo.commits[repo.resolve(revision)])


if __name__ == "__main__":
    with HubServer({"hf_test_token": "test-user"}) as hub:
        print(f"HF_ENDPOINT={hub.url} HF_TOKEN=hf_test_token  (Ctrl-C stops)")
        try:
            hub.thread.join()
        except KeyboardInterrupt:
            pass
