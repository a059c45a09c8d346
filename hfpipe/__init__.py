"""hfpipe: one YAML recipe runs data -> tokenizer -> pretrain -> post-training -> eval -> deploy."""

__version__ = "0.1.0"
