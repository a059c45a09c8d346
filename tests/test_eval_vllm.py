"""eval.backend: vllm, the part that runs on a CPU: the stage builds lm-eval's model from the upstream model folder
(no model object in the stage), scores, and writes results.json, the per-sample outputs and the card facts without
touching a model object (the crash this guards against: ``model.parameters()`` on ``None`` after scoring).

Here lm-eval's VLLM class is swapped for lm-eval's HFLM constructed the same way (``pretrained=<folder>``: lm-eval
loads the weights itself, as VLLM does); everything else is the stage's vLLM path. The real vLLM engine on a GPU:
tests/test_gpu.py::test_vllm_eval_backend_gives_the_hf_backend_scores (marker ``gpu``, needs vllm).

Run: .venv/bin/python -m pytest -q tests/test_eval_vllm.py
"""

import json

from hfpipe.stages import eval as stage


def test_the_vllm_path_scores_from_the_folder_and_writes_everything_without_a_model_object(
        tiny_model_dir, make_inputs, tmp_path, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    made = []

    def folder_model(pretrained, seed, **kwargs):  # the arguments the stage gives lm-eval's VLLM
        made.append({"pretrained": pretrained, "seed": seed, **kwargs})
        return HFLM(pretrained=pretrained, device="cpu", **kwargs)  # vLLM picks its device itself

    monkeypatch.setattr(stage, "_vllm_class", lambda: folder_model)
    common = dict(tasks=["capitals", "math", "heldout_prose"], limit=4, latency_batch_sizes=[1], latency_repeats=1,
                  max_gen_toks=16, apply_chat_template=True)
    inputs = make_inputs(upstream={"pretrain": tiny_model_dir.parent}, model_stage="pretrain")
    (tmp_path / "vllm").mkdir()
    (tmp_path / "hf").mkdir()
    vl = stage.run(stage.Config(**common, backend="vllm", model_args={"dtype": "float32"}), inputs, tmp_path / "vllm")
    hf = stage.run(stage.Config(**common, backend="hf"), inputs, tmp_path / "hf")

    assert made == [{"pretrained": str(tiny_model_dir), "seed": inputs.seed, "batch_size": 8, "max_length": None,
                     "dtype": "float32"}]
    results = json.loads((tmp_path / "vllm" / "results.json").read_text())
    assert results["model"]["parameters"] is None and results["latency"] is None  # no model object: none measured
    assert results["chat_template_sha256"] == json.loads((tmp_path / "hf" / "results.json").read_text())[
        "chat_template_sha256"] is not None
    scores = {k: v for k, v in hf.items() if not k.startswith(("latency/", "cost/"))}
    assert scores and {k: vl[k] for k in scores} == scores  # same folder, same weights: the same scores
    assert not any(k.startswith(("latency/", "cost/")) for k in vl)
    for task in common["tasks"]:
        lines = (tmp_path / "vllm" / f"samples_{task}.jsonl").read_text().splitlines()
        assert len(lines) == 4, task

    from hfpipe.card import build_card

    card = build_card("t", "name: t\n", {"eval": tmp_path / "vllm"})
    assert {r.dataset_type for r in card.data.eval_results} == set(common["tasks"])
    assert stage.headline(vl) == "3 tasks scored"
