#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on the loopback interface for the hub's tests and benchmarks.
#
#   scripts/hub/start_postgres.sh [--dir DIR] [--port PORT]   -> prints the database URL on its last line
#   scripts/hub/start_postgres.sh --stop DIR                  -> stops the server started with that DIR
#
# Installs Debian's postgresql package when no server binaries are found (needs root, or sudo). The cluster lives in
# DIR (default: a new temporary folder), trusts local connections (test use only), listens on 127.0.0.1 only, and
# runs as the 'postgres' system user when this script runs as root (PostgreSQL refuses to run as root).
set -euo pipefail

dir="" port="" stop=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --stop) stop="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "start_postgres.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

find_bin() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then echo "$d"; return 0; fi
  done
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"; return 0
  fi
  return 1
}

bin="$(find_bin || true)"
if [[ -z "$bin" ]]; then
  sudo_cmd=""
  if [[ "$(id -u)" != "0" ]]; then
    if command -v sudo >/dev/null 2>&1; then sudo_cmd="sudo -n"; else
      echo "start_postgres.sh: PostgreSQL is not installed and this user cannot install it (apt-get install postgresql)" >&2
      exit 3
    fi
  fi
  echo "start_postgres.sh: installing Debian's postgresql package" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq >&2
  $sudo_cmd apt-get install -y -qq postgresql >&2
  bin="$(find_bin)"
fi

run_as=()
if [[ "$(id -u)" == "0" ]]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  run_as=(runuser -u postgres --)
fi

if [[ -n "$stop" ]]; then
  "${run_as[@]}" "$bin/pg_ctl" -D "$stop/data" -m fast -w stop >&2 || true
  rm -rf "$stop"
  exit 0
fi

if [[ -z "$dir" ]]; then dir="$(mktemp -d /tmp/adapterhub-pg-XXXXXX)"; fi
mkdir -p "$dir"
if [[ -z "$port" ]]; then
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
fi
if [[ "$(id -u)" == "0" ]]; then chown -R postgres "$dir"; chmod 700 "$dir"; fi

if [[ ! -f "$dir/data/PG_VERSION" ]]; then
  "${run_as[@]}" "$bin/initdb" -D "$dir/data" -U adapterhub --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 4; }
fi
"${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
  -o "-p $port -c listen_addresses=127.0.0.1 -k $dir -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
  start >&2 || { cat "$dir/server.log" >&2; exit 5; }
"${run_as[@]}" "$bin/psql" -h 127.0.0.1 -p "$port" -U adapterhub -d postgres -qAt \
  -c "SELECT 1 FROM pg_database WHERE datname='adapterhub'" | grep -q 1 \
  || "${run_as[@]}" "$bin/createdb" -h 127.0.0.1 -p "$port" -U adapterhub adapterhub
echo "# PostgreSQL running in $dir (stop: $0 --stop $dir)" >&2
echo "postgresql://adapterhub@127.0.0.1:$port/adapterhub"
