# Sourced by the scripts: create or reuse .venv and keep it in step with pyproject.toml.
# GPUGUARDD_VENV overrides the location.
venv="${GPUGUARDD_VENV:-$PWD/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    echo "creating virtualenv $venv" >&2
    "$python" -m venv "$venv"
fi
stamp="$venv/.gpuguardd-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)-${1:-base}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing gpuguardd and its dependencies into $venv" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".${2:-}" >&2
    echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
