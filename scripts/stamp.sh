# Shared by scripts/setup.sh and scripts/setup_hosts.sh (sourced, not run): the idempotency stamp.
#
# sources_digest FOLDER FILE...   sha256 of FILEs and every source file under FOLDER (py, cfg, toml, yaml)
# venv_up_to_date VENV WANT MODULES   true when VENV's stamp equals WANT and VENV's python imports MODULES

sources_digest() {
  local folder=$1
  shift
  local files
  files=$(find "$folder" -type f \( -name '*.py' -o -name '*.cfg' -o -name '*.toml' -o -name '*.yaml' \) \
          -not -path '*/build/*' -not -path '*.egg-info/*' | LC_ALL=C sort)
  # shellcheck disable=SC2086
  cat "$@" $files | sha256sum | cut -d' ' -f1
}

venv_up_to_date() {
  local venv=$1 want=$2 modules=$3
  [ -x "$venv/bin/python" ] && [ -f "$venv/.setup-stamp" ] && [ "$(cat "$venv/.setup-stamp")" = "$want" ] \
    && "$venv/bin/python" -c "import $modules" 2>/dev/null
}
