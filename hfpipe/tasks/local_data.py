"""Dataset loader for hfpipe's bundled lm-eval tasks (referenced as ``custom_dataset: !function local_data.load``).

lm-eval resolves ``dataset_kwargs.data_files`` against the current directory; this loader resolves them against this
folder instead, so the tasks work from any working directory and from an installed wheel. It builds the splits in
memory (no Hub, no datasets cache).
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(data_files: dict[str, str], **_metadata):
    """{split: jsonl path relative to hfpipe/tasks/} -> datasets.DatasetDict. lm-eval also passes the task metadata."""
    import datasets

    splits = {}
    for split, rel in data_files.items():
        lines = (HERE / rel).read_text(encoding="utf-8").splitlines()
        splits[split] = datasets.Dataset.from_list([json.loads(line) for line in lines if line.strip()])
    return datasets.DatasetDict(splits)
