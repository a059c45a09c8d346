"""Pretrain on 2 processes: the stage itself runs `accelerate launch` (ddp.yaml; gloo on CPU) on its worker.

With the same global batch (2 x 8 blocks vs 1 x 16) both runs see the same blocks in the same order, so they must
reach the same losses and weights up to float summation order (the all-reduce sums two half-batch gradients):
tolerance 1e-4 nats on the train and validation losses, 1e-4 on every weight.

Run: .venv/bin/python -m pytest tests/test_pretrain_distributed.py -q
"""

import json

import pytest
from test_stage_pretrain import TINY, make_upstream

from hfpipe.errors import HfpipeError
from hfpipe.stages import Inputs
from hfpipe.stages import pretrain as stage

CFG = {**TINY, "max_steps": 16, "warmup_steps": 2, "eval_interval": 8, "log_interval": 4}


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    import torch
    from safetensors.torch import load_file

    upstream = make_upstream(tmp_path)
    one = stage.run(stage.Config(**{**CFG, "batch_size": 16}), Inputs("t", 0, tmp_path / "one", upstream), tmp_path / "one")
    two = stage.run(stage.Config(**{**CFG, "batch_size": 8, "num_processes": 2}), Inputs("t", 0, tmp_path / "two", upstream),
                    tmp_path / "two")
    assert one["num_processes"] == 1 and two["num_processes"] == 2
    assert one["train_tokens"] == two["train_tokens"] == 16 * 16 * 64
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=1e-4)
    assert two["val_loss"] == pytest.approx(one["val_loss"], abs=1e-4)
    a, b = (load_file(tmp_path / n / "model" / "model.safetensors") for n in ("one", "two"))
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    curve = [json.loads(line) for line in (tmp_path / "two" / "curves.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve if "train_loss" in r] == [4, 8, 12, 16]  # rank 0 alone writes the curve


def test_unknown_accelerate_config_is_a_one_line_error(tmp_path):
    with pytest.raises(HfpipeError, match=r"accelerate_config: no 'nope' in .*hfpipe/accelerate \(have: ddp, deepspeed_zero3, fsdp, single\)"):
        stage.input_files(stage.Config(num_processes=2, accelerate_config="nope"), tmp_path)
    assert stage.input_files(stage.Config(), tmp_path) == []  # one process in-process: no config file is read
