#!/usr/bin/env bash
# A throw-away MLflow tracking server backed by PostgreSQL, on loopback.
#
#   scripts/mlflow-postgres.sh start DIR   # initdb + postgres + mlflow server; writes DIR/env
#   scripts/mlflow-postgres.sh stop DIR    # stops both, deletes the cluster; DIR can then be deleted
#
# After `start`, `source DIR/env` points transferline at the server:
#   MLFLOW_TRACKING_URI=http://127.0.0.1:<port>          (runs, registry, artifacts)
#   TRANSFERLINE_PROMOTE_LOCK=postgresql://...<pgport>/mlflow (the promotion gate's advisory lock)
# ARTIFACTS_DESTINATION=s3://bucket/prefix stores artifacts in an object store instead of
# DIR/artifacts (the server proxies them: clients need no object-store credentials; the
# server needs AWS_* and, for an S3-compatible store, MLFLOW_S3_ENDPOINT_URL).
# Run it with the project's Python on PATH (`uv run scripts/mlflow-postgres.sh start DIR`)
# or set PYTHON. PostgreSQL binaries come from PATH or /usr/lib/postgresql/*/bin
# (Debian: apt-get install -y postgresql). Postgres refuses to run as root: as
# root the cluster belongs to the `postgres` system user.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [[ -z "$cmd" || -z "$dir" ]]; then
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi
PYTHON=${PYTHON:-python}

pg_bin() {
  if command -v "$1" >/dev/null 2>&1; then command -v "$1"; return; fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n1 || true)
  if [[ -z "$found" ]]; then
    echo "error: PostgreSQL's $1 not found on PATH or in /usr/lib/postgresql/*/bin;" \
         "install it (Debian: apt-get install -y postgresql)" >&2
    exit 1
  fi
  echo "$found"
}

# Run a postgres binary as the cluster owner (root is refused by postgres).
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local pgroot initdb pg_ctl pgport port
  initdb=$(pg_bin initdb)
  pg_ctl=$(pg_bin pg_ctl)
  mkdir -p "$dir/artifacts"
  # The cluster lives in its own temp folder owned by its user, so the postgres
  # user never needs access to DIR (which may sit under a private folder).
  pgroot=$(mktemp -d "${TMPDIR:-/tmp}/transferline-pg.XXXXXX")
  echo "$pgroot" >"$dir/pgroot"
  mkdir -p "$pgroot/data" "$pgroot/run"
  if [[ $(id -u) -eq 0 ]]; then chown -R postgres "$pgroot"; fi
  as_owner "$initdb" -D "$pgroot/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  pgport=$(free_port)
  as_owner "$pg_ctl" -D "$pgroot/data" -l "$pgroot/run/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $pgport -k $pgroot/run" start >/dev/null \
    || { cat "$pgroot/run/postgres.log" >&2; exit 1; }
  local psql
  psql=$(pg_bin psql)
  "$psql" -h 127.0.0.1 -p "$pgport" -U postgres -q -c "CREATE DATABASE mlflow" >/dev/null
  local db="postgresql://postgres@127.0.0.1:$pgport/mlflow"

  port=$(free_port)
  # No background job runner (GenAI evaluation jobs): it forks a dozen workers we do not use.
  MLFLOW_DISABLE_TELEMETRY=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$PYTHON" -m mlflow server \
    --backend-store-uri "${db/postgresql:/postgresql+psycopg2:}" --artifacts-destination "${ARTIFACTS_DESTINATION:-$dir/artifacts}" \
    --host 127.0.0.1 --port "$port" --workers 2 >"$dir/mlflow.log" 2>&1 &
  echo $! >"$dir/mlflow.pid"
  local url="http://127.0.0.1:$port"
  for _ in $(seq 1 180); do
    if "$PYTHON" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" "$url" 2>/dev/null; then
      cat >"$dir/env" <<EOF
export MLFLOW_TRACKING_URI=$url
export TRANSFERLINE_PROMOTE_LOCK=$db
export TRANSFERLINE_MLFLOW_DB=$db
EOF
      echo "mlflow server on $url (PostgreSQL on 127.0.0.1:$pgport, database mlflow); source $dir/env"
      return
    fi
    if ! kill -0 "$(cat "$dir/mlflow.pid")" 2>/dev/null; then break; fi
    sleep 1
  done
  echo "error: mlflow server did not answer on $url; its log:" >&2
  tail -n 30 "$dir/mlflow.log" >&2
  stop
  exit 1
}

stop() {
  dir=$(cd "$dir" 2>/dev/null && pwd) || return 0
  if [[ -f "$dir/mlflow.pid" ]]; then
    local pid
    pid=$(cat "$dir/mlflow.pid")
    # setsid made the server lead its own process group (it and its workers).
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 10); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$dir/mlflow.pid"
  fi
  if [[ -f "$dir/pgroot" ]]; then
    local pgroot
    pgroot=$(cat "$dir/pgroot")
    if [[ -f "$pgroot/data/postmaster.pid" ]]; then
      as_owner "$(pg_bin pg_ctl)" -D "$pgroot/data" -m fast -w stop >/dev/null || true
    fi
    case "$pgroot" in */transferline-pg.*) rm -rf "$pgroot" ;; esac
    rm -f "$dir/pgroot"
  fi
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
