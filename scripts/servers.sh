#!/usr/bin/env bash
# The servers a team runs, all on loopback, in one command: PostgreSQL, an
# S3-compatible object store (moto's server mode), the MLflow tracking server
# (runs and registry in PostgreSQL, artifacts in the object store) and the
# Prefect server (state in PostgreSQL).
#
#   scripts/servers.sh start DIR   # starts all four; writes DIR/env
#   scripts/servers.sh stop DIR    # stops them; DIR can then be deleted
#
# After `start`, `source DIR/env` points transferline, DVC, MLflow and Prefect at them:
#   PREFECT_API_URL, MLFLOW_TRACKING_URI, TRANSFERLINE_PROMOTE_LOCK,
#   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION (throw-away keys
#   moto accepts), TRANSFERLINE_S3_ENDPOINT and TRANSFERLINE_S3_BUCKET (for
#   `dvc remote add -d store s3://$TRANSFERLINE_S3_BUCKET/dvc` and
#   `dvc remote modify store endpointurl $TRANSFERLINE_S3_ENDPOINT`).
# Run it with the project's environment (`uv run scripts/servers.sh start DIR`) or set
# PYTHON. PostgreSQL comes from scripts/mlflow-postgres.sh (apt-get install -y postgresql).
# The object store keeps its objects in memory: they are gone after `stop`.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [[ -z "$cmd" || -z "$dir" ]]; then
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi
PYTHON=${PYTHON:-python}
here=$(cd "$(dirname "$0")" && pwd)
bucket=transferline
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-tl-local-key-id}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-tl-local-secret-key}
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for URL PIDFILE LOG NAME: poll until URL answers 200, or fail with the log's tail.
wait_for() {
  for _ in $(seq 1 240); do
    if "$PYTHON" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$(cat "$2")" 2>/dev/null; then break; fi
    sleep 0.5
  done
  echo "error: $4 did not answer on $1; its log ($3):" >&2
  tail -n 30 "$3" >&2
  stop
  exit 1
}

start() {
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  # a failed step stops whatever had started before it
  trap 'echo "error: start failed; stopping the servers started so far" >&2; stop' ERR

  local s3port s3
  s3port=$(free_port)
  s3="http://127.0.0.1:$s3port"
  setsid "$PYTHON" -m moto.server -H 127.0.0.1 -p "$s3port" >"$dir/s3.log" 2>&1 &
  echo $! >"$dir/s3.pid"
  wait_for "$s3/moto-api/" "$dir/s3.pid" "$dir/s3.log" "the S3-compatible server (moto)"
  "$PYTHON" -c "import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1]).create_bucket(Bucket=sys.argv[2])" \
    "$s3" "$bucket"

  # MLflow proxies the artifacts: clients talk HTTP to it, only the server needs the keys.
  MLFLOW_S3_ENDPOINT_URL=$s3 ARTIFACTS_DESTINATION="s3://$bucket/mlartifacts" \
    bash "$here/mlflow-postgres.sh" start "$dir/mlflow" >/dev/null
  local db pgbase
  db=$(sed -n 's/^export TRANSFERLINE_MLFLOW_DB=//p' "$dir/mlflow/env")
  pgbase=${db%/mlflow}
  "$PYTHON" -c "import psycopg2, sys; c = psycopg2.connect(sys.argv[1]); c.autocommit = True; \
c.cursor().execute('CREATE DATABASE prefect')" "$db"

  local port api
  port=$(free_port)
  api="http://127.0.0.1:$port/api"
  mkdir -p "$dir/prefect"
  PREFECT_HOME="$dir/prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_LOGGING_LEVEL=WARNING \
    PREFECT_API_DATABASE_CONNECTION_URL="${pgbase/postgresql:/postgresql+asyncpg:}/prefect" \
    setsid "$PYTHON" -m prefect server start --host 127.0.0.1 --port "$port" --no-ui >"$dir/prefect.log" 2>&1 &
  echo $! >"$dir/prefect.pid"
  wait_for "$api/health" "$dir/prefect.pid" "$dir/prefect.log" "the Prefect server"

  cat "$dir/mlflow/env" >"$dir/env"
  cat >>"$dir/env" <<EOF
export PREFECT_API_URL=$api
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export AWS_DEFAULT_REGION=$AWS_DEFAULT_REGION
export TRANSFERLINE_S3_ENDPOINT=$s3
export TRANSFERLINE_S3_BUCKET=$bucket
EOF
  echo "PostgreSQL $pgbase (databases mlflow, prefect); S3 $s3 (bucket $bucket);"
  echo "MLflow $(sed -n 's/^export MLFLOW_TRACKING_URI=//p' "$dir/env") (artifacts s3://$bucket/mlartifacts); Prefect $api"
  echo "source $dir/env"
  trap - ERR
}

# stop_group PIDFILE: the process group a `setsid` started (a server and its workers).
stop_group() {
  [[ -f "$1" ]] || return 0
  local pid
  pid=$(cat "$1")
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$1"
}

stop() {
  dir=$(cd "$dir" 2>/dev/null && pwd) || return 0
  stop_group "$dir/prefect.pid"  # before PostgreSQL: it holds connections to it
  bash "$here/mlflow-postgres.sh" stop "$dir/mlflow"
  stop_group "$dir/s3.pid"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
