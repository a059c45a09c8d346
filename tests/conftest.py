"""Shared, hermetic fixtures: no Hub, tiny models built in-process from real text shipped with Python."""

import os
import sysconfig
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    # tiny models gain nothing from a second thread, and on a shared 2-core machine two threads thrash
    import torch

    torch.set_num_threads(1)


def stdlib_text(max_bytes: int = 400_000) -> list[str]:
    """Real text: modules of the running interpreter's standard library (PSF licence)."""
    texts, total = [], 0
    for name in ("json/__init__.py", "textwrap.py", "argparse.py", "pathlib/__init__.py", "statistics.py", "heapq.py"):
        p = Path(sysconfig.get_paths()["stdlib"]) / name
        if p.is_file():
            t = p.read_text(encoding="utf-8")
            texts.append(t)
            total += len(t)
        if total > max_bytes:
            break
    return texts


def build_tiny_tokenizer(texts, vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hfpipe.models import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, default_chat_template

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                   pad_token=PAD_TOKEN, chat_template=default_chat_template())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A folder with a tiny random Llama + a real trained BPE tokenizer with the ChatML template (save_pretrained)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hfpipe.models import save_model

    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer(stdlib_text())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    return save_model(model, tokenizer, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def make_inputs(tmp_path):
    """Build the Inputs the runner would hand a stage: make_inputs(upstream={"pretrain": folder}, ...)."""
    from hfpipe.stages import Inputs

    def _make(upstream=None, model_stage=None, base_model=None, recipe_dir=REPO / "recipes", seed=0):
        return Inputs(recipe_name="test", seed=seed, recipe_dir=Path(recipe_dir), upstream=dict(upstream or {}),
                      model_stage=model_stage, base_model=base_model, fingerprint="0" * 64)

    return _make


def deploy_variant(model_dir: Path, out: Path, scheme: str, **config) -> Path:
    """The deploy stage's real output for ``model_dir`` with one quantized variant (``scheme``): export/ and
    export/quantized/<scheme>/ in ``out`` (shared by the serve tests, CPU int8 and GPU bnb_int8)."""
    from hfpipe.stages import Inputs, deploy

    inputs = Inputs(recipe_name="test", seed=0, recipe_dir=REPO / "recipes", upstream={"pretrain": model_dir.parent},
                    model_stage="pretrain", fingerprint="0" * 64,
                    recipe_yaml=f"name: test\nseed: 0\npretrain: {{max_steps: 2}}\ndeploy: {{quantize: [{scheme}]}}\n")
    deploy.run(deploy.Config(quantize=[scheme], **config), inputs, out)
    return out
