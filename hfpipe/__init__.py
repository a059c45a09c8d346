"""hfpipe: one YAML recipe runs data -> tokenizer -> pretrain -> post-training -> eval -> deploy."""

__version__ = "0.1.0"

import logging as _logging

# transformers imports torchao (our deploy quantizer) on every from_pretrained; torchao then warns about its CUDA-only
# kernels and torch about its Enum registrations on every CPU machine. Neither is actionable: keep them out of logs.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)


def __getattr__(name: str):
    """``hfpipe.Recipe`` (``Recipe.load(path_or_card)``), imported on first use so ``import hfpipe`` stays light."""
    if name == "Recipe":  # by name: every stage's code fingerprint includes this file's imports (hfpipe.runner)
        import importlib

        return importlib.import_module("hfpipe.recipe").Recipe
    raise AttributeError(f"module 'hfpipe' has no attribute {name!r}")
