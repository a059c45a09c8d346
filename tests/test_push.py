"""hfpipe push: the real huggingface_hub client against a loopback Hub (tests/hub_server.py), no network.

Uploads weights, tokenizer and card into one branch per run; refuses a second push to the same revision; the token
(set in the environment while the pipeline runs and while it pushes) appears in no file of the run folder, the Hub's
stored files or any request body; Hub failures (401/403/404/409/5xx, unreachable) are one line.

Run: .venv/bin/python -m pytest tests/test_push.py -q
"""

import secrets
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer  # noqa: E402

from hfpipe import cli, runner  # noqa: E402
from hfpipe.errors import HfpipeError  # noqa: E402
from hfpipe.hub import _scan, push  # noqa: E402
from hfpipe.recipe import load_recipe  # noqa: E402

TOKEN = "hf_" + secrets.token_hex(17)  # a fresh fake token each session: any hit below is a real leak


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    """A recipe whose deploy stage finished (base_model = the tiny model), run with HF_TOKEN in the environment."""
    root = tmp_path_factory.mktemp("push")
    recipe_file = root / "pushy.yaml"
    recipe_file.write_text(f"name: pushy\nseed: 0\nbase_model: {tiny_model_dir}\n"
                           "card: {license: apache-2.0, language: [en]}\ndeploy: {check_new_tokens: 2}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", TOKEN)
        recipe = load_recipe(recipe_file)
        runner.run(recipe, root / "runs")
    return recipe, root / "runs"


@pytest.fixture
def hub(monkeypatch):
    from huggingface_hub import constants

    with HubServer({TOKEN: "alice"}) as server:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest sets offline mode for everything else
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield server


def _token_hits(paths) -> list[str]:
    needle = TOKEN.encode()
    return [str(p) for p in paths if p.is_file() and needle in p.read_bytes()]


def test_push_uploads_export_and_refuses_second_push(finished, hub, tmp_path):
    from huggingface_hub import HfApi, ModelCard, hf_hub_download

    recipe, runs = finished
    done = push(recipe, runs, "alice/tiny-test", private=True)
    export = Path(done["folder"])
    assert done["revision"].startswith("run-") and not done["dry_run"]

    stored = hub.files("alice/tiny-test", done["revision"])
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"):
        assert stored[name] == (export / name).read_bytes(), name
    assert not [n for n in stored if n.endswith((".bin", ".pt", ".pkl"))]
    assert set(stored) - {".gitattributes"} == {str(p.relative_to(export)) for p in export.rglob("*") if p.is_file()}
    assert "README.md" not in hub.files("alice/tiny-test", "main")  # the run went to its own branch

    # the real client reads it back: card and weights
    api = HfApi(endpoint=hub.url, token=TOKEN)
    assert api.model_info("alice/tiny-test", revision=done["revision"]).sha == done["commit"]
    readme = hf_hub_download("alice/tiny-test", "README.md", revision=done["revision"], cache_dir=tmp_path / "cache",
                             endpoint=hub.url, token=TOKEN)
    card = ModelCard.load(readme)
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "text-generation"

    # a second push of the same run to the same revision is refused; --force replaces it
    with pytest.raises(HfpipeError, match=r"revision 'run-[0-9a-f]{12}' already exists in alice/tiny-test; pass --force"):
        push(recipe, runs, "alice/tiny-test")
    assert push(recipe, runs, "alice/tiny-test", force=True)["revision"] == done["revision"]
    # an explicit new revision is its own branch
    assert push(recipe, runs, "alice/tiny-test", revision="v2")["url"].endswith("/alice/tiny-test/tree/v2")

    # the token is nowhere: run folder (manifests, logs, weights, card), Hub storage, request bodies
    assert not _token_hits(runs.rglob("*"))
    needle = TOKEN.encode()
    for repo in hub.state.repos.values():
        for files in repo.commits.values():
            assert not [p for p, data in files.items() if needle in data]
    assert not [b for b in hub.state.bodies if needle in b]


def test_dry_run_touches_nothing(finished, hub, capsys):
    recipe, runs = finished
    code = cli.main(["--runs-dir", str(runs), "push", str(recipe.path), "--repo-id", "alice/dry", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("dry run: would upload") and "  model.safetensors" in out
    assert hub.state.requests == []


@pytest.mark.parametrize("case, pattern", [
    ("bad_token", r"refused the token \(401 Unauthorized\)"),
    ("other_namespace", r"no write access to bob/theirs .*\(403 Forbidden\)"),
    ("private_of_other", r"repository bob/secret not found at .*\(404\)"),
    ("branch_conflict", r"conflict on alice/c@x .*\(409\)"),
    ("server_error", r"failed with 503"),
    ("unreachable", r"cannot reach the Hub at http://127\.0\.0\.1:1"),
])
def test_hub_failures_are_one_line(finished, hub, monkeypatch, capsys, case, pattern):
    from hub_server import Repo

    recipe, runs = finished
    repo_id, revision = "alice/c", "x"
    if case == "bad_token":
        monkeypatch.setenv("HF_TOKEN", "hf_" + "0" * 34)
    elif case == "other_namespace":
        hub.state.repos["bob/theirs"] = Repo("bob/theirs", private=False)
        repo_id = "bob/theirs"
    elif case == "private_of_other":
        hub.state.repos["bob/secret"] = Repo("bob/secret", private=True)
        repo_id = "bob/secret"
    elif case == "branch_conflict":
        hub.state.fail[("POST", "/api/models/alice/c/branch/")] = 409
    elif case == "server_error":
        hub.state.fail[("POST", "/api/repos/create")] = 503
    elif case == "unreachable":
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")
    code = cli.main(["--runs-dir", str(runs), "push", str(recipe.path), "--repo-id", repo_id, "--revision", revision])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and err.startswith("hfpipe: error: push: "), err
    assert pytest.importorskip("re").search(pattern, err), err
    assert TOKEN not in err and "Traceback" not in err


def test_refuses_pickles_token_bytes_and_missing_token(finished, tmp_path, monkeypatch):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "training_args.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(HfpipeError, match="refusing to upload pickled files .*training_args.bin"):
        _scan(tmp_path, TOKEN)
    (tmp_path / "training_args.bin").unlink()
    (tmp_path / "notes.txt").write_text(f"token={TOKEN}")
    with pytest.raises(HfpipeError, match="notes.txt contains the Hub token") as e:
        _scan(tmp_path, TOKEN)
    assert TOKEN not in str(e.value)

    recipe, runs = finished
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(HfpipeError, match="no Hub token; set HF_TOKEN"):
        push(recipe, runs, "alice/x")
    with pytest.raises(HfpipeError, match="is not a Hub repo id"):
        push(recipe, runs, "no-namespace")


def test_token_scan_streams_blocks_and_finds_a_token_that_straddles_two(tmp_path):
    """Multi-GB shards are read in blocks, never whole: a token cut by a block boundary is still found."""
    from hfpipe.hub import _contains

    shard = tmp_path / "model-00001-of-00002.safetensors"
    shard.write_bytes(b"\0" * 1000 + TOKEN.encode() + b"\1" * 500)
    for chunk in (7, 64, 1000, 1001, 1000 + len(TOKEN) - 1, 1 << 24):  # boundaries before, inside and after it
        assert _contains(shard, TOKEN.encode(), chunk), chunk
    shard.write_bytes(b"\0" * 1000 + TOKEN[:-1].encode() + b"\1" * 500)
    assert not any(_contains(shard, TOKEN.encode(), chunk) for chunk in (7, 1000, 1 << 24))
