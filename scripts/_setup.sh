# Shared set-up for scripts/run and scripts/test: a virtualenv in .venv with PEON installed.
# Sourced, not run.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${PEON_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}

peon_venv() {  # $1: pip extras, e.g. "[dev]"
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "PEON needs Python 3.11 or newer ($PYTHON is $("$PYTHON" --version 2>&1))." >&2
    exit 1
  fi
  local stamp="$VENV/.peon-installed$1"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT$1"
    touch "$stamp"
  fi
}

apt_install() {  # install Debian packages when missing and we may
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "Please install: ${missing[*]} (needs root and apt-get)." >&2
    return 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

docker_answers() {
  "$VENV/bin/python" - <<'PY' >/dev/null 2>&1
import docker
docker.from_env(timeout=5).ping()
PY
}

ensure_docker() {  # reuse an engine that answers; else install docker.io and start dockerd
  if docker_answers; then return 0; fi
  command -v dockerd >/dev/null || apt_install docker.io
  if [ -n "${DOCKER_HOST:-}" ] || [ "$(id -u)" -ne 0 ]; then
    echo "No Docker engine answers at ${DOCKER_HOST:-the local socket}; start one first." >&2
    return 1
  fi
  echo "Starting dockerd in the background (log: /tmp/peon-dockerd.log)" >&2
  setsid dockerd >/tmp/peon-dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    docker_answers && return 0
    sleep 1
  done
  echo "dockerd did not answer within 60 s; see /tmp/peon-dockerd.log" >&2
  return 1
}
