#!/usr/bin/env bash
# Prepare a Debian 12 machine to run the test suite: system packages, the venv, and the local
# PostgreSQL / Redis (/ RabbitMQ) servers. Root, non-interactive, idempotent: a second run on a
# ready machine changes nothing and takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
exec </dev/null
export DEBIAN_FRONTEND=noninteractive
export CI="${CI:-true}"

log() { printf '[setup] %s\n' "$*" >&2; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_port() {  # PORT NAME
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  log "$2 did not come up on 127.0.0.1:$1"; return 1
}

# --- system packages -------------------------------------------------------------------------
packages=(orthanc orthanc-dicomweb dcmtk docker-compose postgresql redis-server python3-venv)
# Headless Chromium for the dashboard test (Debian's own browser and driver, no download).
packages+=(chromium chromium-driver)
# The front proxy of tests/integration/test_behind_nginx.py (started by the test on its own
# config and loopback ports; the packaged service is never used).
packages+=(nginx)
# ip netns and tc tbf for the clinic-link benchmark (tests/bench/clinic_link.py).
packages+=(iproute2)
# Node and npm rebuild the upload screen's assets from web/package-lock.json in
# tests/unit/web/test_assets.py (the committed build must match; the app itself needs no Node).
command -v npm >/dev/null || packages+=(nodejs npm)
# A C compiler builds the LD_PRELOAD shim that keeps the test Orthanc on loopback.
command -v cc >/dev/null || packages+=(gcc libc6-dev)
missing=()
for pkg in "${packages[@]}"; do installed "$pkg" || missing+=("$pkg"); done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- the packaged Orthanc service: tests start their own Orthanc -----------------------------
# Never `service orthanc stop`: its init script also runs `start-stop-daemon --stop --exec
# /usr/sbin/Orthanc`, which kills every Orthanc on the machine, test servers included.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  systemctl disable --now orthanc.service >/dev/null 2>&1 || true
elif [ -s /run/orthanc.pid ]; then
  pid="$(cat /run/orthanc.pid)"
  if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/sbin/Orthanc ]; then
    log "stopping the packaged Orthanc service (pid $pid)"
    kill "$pid" || true
  fi
  rm -f /run/orthanc.pid
fi

# --- the packaged nginx service: the proxy test starts its own nginx -------------------------
# Only the packaged service's pid file is read: test nginx processes keep theirs in temp dirs.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  systemctl disable --now nginx.service >/dev/null 2>&1 || true
elif [ -s /run/nginx.pid ]; then
  pid="$(cat /run/nginx.pid)"
  if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/sbin/nginx ]; then
    log "stopping the packaged nginx service (pid $pid)"
    kill "$pid" || true
  fi
fi

# --- PostgreSQL 127.0.0.1:5432, trust auth for user postgres ----------------------------------
if ! port_open 5432; then
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port 5432 PostgreSQL
fi
if ! psql -h 127.0.0.1 -U postgres -w -Atqc 'SELECT 1' >/dev/null 2>&1; then
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  log "allowing trust auth for postgres@127.0.0.1 in $hba"
  sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
  pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  psql -h 127.0.0.1 -U postgres -w -Atqc 'SELECT 1' >/dev/null
fi

# --- Redis 127.0.0.1:6379 --------------------------------------------------------------------
if ! port_open 6379; then
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_port 6379 Redis
fi

# --- RabbitMQ 127.0.0.1:5672 (optional: only if installed) -----------------------------------
if command -v rabbitmq-server >/dev/null && ! port_open 5672; then
  log "starting RabbitMQ"
  rabbitmq-server -detached || log "RabbitMQ did not start (not required)"
fi

# --- the venv --------------------------------------------------------------------------------
# A venv without pip is what a failed `python3 -m venv` leaves behind: make it again.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  log "creating .venv"
  python3 -m venv --clear .venv
fi
# The test lock (runtime + test extra, `make lock`), then the project without resolving again.
# Reinstall only when pyproject.toml or the lock changed since the last install.
stamp=".venv/.relaypacs-installed-$(cat pyproject.toml requirements/test.txt | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ] || [ ! -x .venv/bin/relaypacs ]; then
  log "requirements/install.sh .venv requirements/test.txt (the lock, then the project)"
  requirements/install.sh .venv requirements/test.txt
  rm -f .venv/.relaypacs-installed-*
  touch "$stamp"
fi
log "ready"
