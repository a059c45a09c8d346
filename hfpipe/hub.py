"""Push a finished run's export to the Hugging Face Hub: ``hfpipe push RECIPE --repo-id ID [--revision R]``.

What is uploaded is exactly the deploy stage's ``export/`` folder (weights, tokenizer, generation config, quantized
variants, GGUF files, README.md = the model card), through huggingface_hub's ``create_repo`` / ``create_branch`` /
``upload_folder``. When the serve stage has finished too, README.md is the card of every finished stage (its Serving
section holds the load test, run after deploy wrote its card); the export is then staged as symlinks, nothing is
copied. One revision (branch) per run: by default ``run-<deploy fingerprint[:12]>``; a revision that already exists
is refused unless ``--force``. The token comes only from ``HF_TOKEN`` or the login cache
(``huggingface_hub.get_token``); hfpipe never writes it anywhere, refuses to upload pickles (``training_args.bin``
pickles the whole TrainingArguments, ``hub_token`` included) and refuses a folder in which the token's bytes appear.
``HF_ENDPOINT`` is read at call time, so it is honoured even when huggingface_hub was imported before it was set.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from hfpipe.errors import HfpipeError

PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt", "*.joblib", "training_args*"]
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
REVISION_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,127}$")


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def export_folder(recipe, runs_dir: Path, command: str = "push") -> tuple[Path, str]:
    """(deploy/export folder, deploy fingerprint) of the recipe's finished run; errors start with ``command``."""
    from hfpipe import runner

    plans = {p.name: p for p in runner.plan(recipe, runs_dir)}
    deploy = plans.get("deploy")
    if deploy is None:
        raise HfpipeError(f"{command}: recipe '{recipe.name}' has no deploy stage; add a `deploy:` section", 2)
    if not deploy.done:
        raise HfpipeError(f"{command}: the deploy stage of '{recipe.name}' has not finished with the current recipe "
                          f"({deploy.folder} missing); run `hfpipe run` first", 2)
    from hfpipe.stages.deploy import EXPORT

    folder = deploy.folder / EXPORT
    if not (folder / "README.md").is_file():
        raise HfpipeError(f"{command}: {folder} has no README.md (model card); re-run the deploy stage with --force deploy", 1)
    return folder, deploy.fingerprint


def _scan(folder: Path, token: str | None) -> list[Path]:
    """Files to upload; refuses pickles and any file that contains the token."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    pickles = [p for p in files if any(p.match(pat) for pat in PICKLE_PATTERNS)]
    if pickles:
        raise HfpipeError(f"push: refusing to upload pickled files (they can hold the Hub token): "
                          f"{', '.join(str(p.relative_to(folder)) for p in pickles)}", 1)
    if token:
        needle = token.encode()
        for p in files:
            if _contains(p, needle):
                raise HfpipeError(f"push: {p} contains the Hub token; refusing to upload it", 1)
    return files


def _contains(path: Path, needle: bytes, chunk: int = 1 << 24) -> bool:
    """Whether the file holds ``needle``, read in 16 MiB blocks (weights are many GB) that overlap by len(needle) - 1
    bytes, so a match across two blocks is found."""
    tail = b""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            window = tail + block
            if needle in window:
                return True
            tail = window[-(len(needle) - 1):] if len(needle) > 1 else b""
    return False


def _one_line(e: Exception, repo_id: str, revision: str, url: str, token: str | None) -> HfpipeError:
    """A huggingface_hub / HTTP failure as one line (never the token)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError

    status = getattr(getattr(e, "response", None), "status_code", None)
    server = ""
    if isinstance(e, HfHubHTTPError):
        server = (getattr(e, "server_message", None) or "").strip().splitlines()[0:1]
        server = f": {server[0]}" if server else ""
    if isinstance(e, OfflineModeIsEnabled):
        msg = "HF_HUB_OFFLINE=1 is set; unset it to push"
    elif status == 401:
        msg = f"the Hub at {url} refused the token (401 Unauthorized): set HF_TOKEN or run `hf auth login`"
    elif status == 403:
        msg = f"no write access to {repo_id} at {url} (403 Forbidden){server}"
    elif isinstance(e, RevisionNotFoundError):
        msg = f"revision '{revision}' not found in {repo_id} at {url} (404)"
    elif isinstance(e, RepositoryNotFoundError) or status == 404:
        msg = f"repository {repo_id} not found at {url}, or the token cannot see it (404)"
    elif status == 409:
        msg = f"conflict on {repo_id}@{revision} at {url} (409){server}; pass --force or choose another --revision"
    elif status == 412:
        msg = f"{repo_id}@{revision} changed during the push (412); run the push again"
    elif status is not None and status >= 500:
        msg = f"the Hub at {url} failed with {status}{server}; nothing was changed by this error, try again later"
    elif status is not None:
        msg = f"the Hub at {url} answered {status}{server}"
    else:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        msg = f"cannot reach the Hub at {url}: {type(e).__name__}: {first}"
    if token:
        msg = msg.replace(token, "<token>")
    return HfpipeError(f"push: {msg}", 1)


def push(recipe, runs_dir: Path, repo_id: str, *, revision: str | None = None, private: bool = False,
         dry_run: bool = False, force: bool = False) -> dict:
    """Upload the finished export of ``recipe`` to ``repo_id`` at ``revision``; returns what was (or would be) done."""
    if not REPO_ID_RE.match(repo_id):
        raise HfpipeError(f"push: --repo-id '{repo_id}' is not a Hub repo id of the form 'namespace/name'", 2)
    folder, fingerprint = export_folder(recipe, runs_dir)
    revision = revision or f"run-{fingerprint[:12]}"
    if not REVISION_RE.match(revision):
        raise HfpipeError(f"push: --revision '{revision}' is not a valid branch name (letters, digits, . _ -)", 2)

    from huggingface_hub import get_token

    token = get_token()
    with tempfile.TemporaryDirectory(prefix="hfpipe-push-") as tmp:
        staged = _with_serving_card(recipe, runs_dir, folder, Path(tmp))
        return _push_folder(recipe, staged or folder, folder, fingerprint, repo_id, revision, private, dry_run, force,
                            token)


def _with_serving_card(recipe, runs_dir: Path, folder: Path, tmp: Path) -> Path | None:
    """When the serve stage has finished, the card deploy wrote predates the load test: stage the export as links
    (no copy of the weights) with the card rendered from every finished stage, Serving section included."""
    from hfpipe import runner
    from hfpipe.card import build_card, write_card

    stages = runner.finished_stages(recipe, runs_dir)
    if "serve" not in stages:
        return None
    staged = tmp / "export"
    for p in folder.rglob("*"):
        if p.is_file() and p.name != "README.md":
            (staged / p.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(p.resolve(), staged / p.relative_to(folder))
    write_card(build_card(recipe.name, recipe.to_yaml(), stages, recipe_dir=recipe.recipe_dir), staged / "README.md")
    return staged


def _push_folder(recipe, folder: Path, export: Path, fingerprint: str, repo_id: str, revision: str, private: bool,
                 dry_run: bool, force: bool, token: str | None) -> dict:
    from huggingface_hub import HfApi

    files = _scan(folder, token)
    url = endpoint()
    plan = {"repo_id": repo_id, "revision": revision, "endpoint": url, "folder": str(export), "private": private,
            "files": [str(p.relative_to(folder)) for p in files], "bytes": sum(p.stat().st_size for p in files),
            "dry_run": dry_run}
    if dry_run:
        return plan
    if not token:
        raise HfpipeError("push: no Hub token; set HF_TOKEN or run `hf auth login` (hfpipe never stores it)", 2)

    api = HfApi(endpoint=url, token=token)
    try:
        # ---- the repository (created if missing; an existing one is reused)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        # ---- one revision per run: refuse an existing one unless --force
        branches = {b.name: b.target_commit for b in api.list_repo_refs(repo_id).branches}
        if revision == "main":
            existing = [f for f in api.list_repo_files(repo_id, revision="main") if f != ".gitattributes"]
        else:
            existing = revision in branches
        if existing and not force:
            raise HfpipeError(f"push: revision '{revision}' already exists in {repo_id}; pass --force to replace its "
                              f"content or choose another --revision", 1)
        if revision not in branches:
            api.create_branch(repo_id, branch=revision, exist_ok=False)
        # ---- upload: the export folder, exactly; --force also removes files the new export no longer has
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                 commit_message=f"hfpipe: {recipe.name} (deploy {fingerprint[:12]})",
                                 commit_description=f"Uploaded by `hfpipe push`; stage folder {export.parent.name}.",
                                 ignore_patterns=PICKLE_PATTERNS, delete_patterns=["*"] if force else None)
    except HfpipeError:
        raise
    except Exception as e:  # noqa: BLE001 - every library/HTTP failure becomes one line
        raise _one_line(e, repo_id, revision, url, token) from e
    plan.update(commit=getattr(info, "oid", None), url=f"{url}/{repo_id}/tree/{revision}")
    return plan
