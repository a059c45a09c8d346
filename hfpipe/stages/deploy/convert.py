"""Architectures beyond Llama (Qwen2, Qwen3, SmolLM3, ...): llama.cpp's own converter, ``convert_hf_to_gguf.py``.

The converter ships inside llama-cpp-python's sdist (``vendor/llama.cpp``: the script, its ``conversion/`` package
and its matching ``gguf-py``), not in the wheel. ``make gguf`` keeps a copy per machine in
``~/.cache/hfpipe/llama.cpp-<version>`` (``HFPIPE_LLAMA_CPP_CONVERTER`` points elsewhere); the deploy stage runs it on
the safetensors export as a subprocess, offline. The converter recognises a pre-tokenizer by the hash of known
models' token ids on its check string; a tokenizer trained here has ids of its own, so the type hfpipe identified
(``hfpipe.stages.deploy.gguf.llama_pre_type``, the same check string cut by the pre-tokenizer's rules) is handed to
it: ``python -m hfpipe.stages.deploy.convert PRE_TYPE <converter args>``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hfpipe.errors import HfpipeError


def converter_dir() -> Path | None:
    """The folder holding llama.cpp's convert_hf_to_gguf.py, or None."""
    env = os.environ.get("HFPIPE_LLAMA_CPP_CONVERTER")
    candidates = [Path(env)] if env else sorted((Path.home() / ".cache" / "hfpipe").glob("llama.cpp-*"), reverse=True)
    return next((c for c in candidates if (c / "convert_hf_to_gguf.py").is_file()), None)


def convert(export: Path, out: Path, pre_type: str, outtype: str = "f16", log: Path | None = None) -> Path:
    """llama.cpp's converter on the exported folder, writing ``out`` (f16 by default)."""
    where = converter_dir()
    if where is None:
        raise HfpipeError("deploy.gguf: this architecture is written by llama.cpp's converter (convert_hf_to_gguf.py), "
                          "which is not on this machine: `make gguf` keeps one in ~/.cache/hfpipe/llama.cpp-<version> "
                          "(or set HFPIPE_LLAMA_CPP_CONVERTER)", 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(where), str(where / "gguf-py"), str(Path(__file__).resolve().parents[3])])}
    cmd = [sys.executable, "-m", "hfpipe.stages.deploy.convert", pre_type, str(export), "--outfile", str(out),
           "--outtype", outtype]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if log is not None:
        log.write_text(res.stdout + res.stderr)
    if res.returncode != 0 or not out.is_file():
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise HfpipeError(f"deploy.gguf: llama.cpp's converter failed on {export.name}: {tail}", 1)
    return out


def unpack(sdist: Path, dest: Path) -> Path:
    """llama.cpp's converter (convert_hf_to_gguf.py, conversion/, gguf-py/, LICENSE) out of llama-cpp-python's sdist
    into ``dest`` (what `make gguf` keeps per machine)."""
    import shutil
    import tarfile
    import tempfile

    keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
    with tarfile.open(sdist) as tar, tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        members = []
        for m in tar.getmembers():
            parts = m.name.split("/", 3)  # llama_cpp_python-X/vendor/llama.cpp/<path>
            if len(parts) == 4 and parts[1:3] == ["vendor", "llama.cpp"] and parts[3].startswith(keep) \
                    and (m.isfile() or m.isdir()):
                m.name = parts[3]
                members.append(m)
        tar.extractall(tmp, members=members, filter="data")
        if not (Path(tmp) / "convert_hf_to_gguf.py").is_file():
            raise HfpipeError(f"{sdist}: no vendor/llama.cpp/convert_hf_to_gguf.py in it", 1)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(tmp, dest)
        Path(tmp).mkdir()  # TemporaryDirectory removes it on exit
    return dest


def _main(argv: list[str]) -> None:
    """In the converter's process: its own main(), with the pre-tokenizer type identified by hfpipe. Or, with
    ``--unpack SDIST DEST``: keep the converter out of the sdist."""
    if argv[0] == "--unpack":
        print(unpack(Path(argv[1]), Path(argv[2])))
        return
    pre_type, rest = argv[0], argv[1:]
    import convert_hf_to_gguf
    from conversion import base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre_type
    sys.argv = ["convert_hf_to_gguf.py", *rest]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    _main(sys.argv[1:])
