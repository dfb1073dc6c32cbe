#!/usr/bin/env bash
# Submit `ftscale train CONFIG [KEY=VALUE ...]` to a Ray cluster as a Ray job.
#
#   cluster/submit.sh configs/train_8b_full_zero2.yaml                      # returns once submitted
#   FOLLOW=1 cluster/submit.sh configs/train_8b_full_zero2.yaml max_steps=500   # and streams the logs
#
# Environment:
#   RAY_ADDRESS          the cluster's dashboard / Jobs API, default http://127.0.0.1:8265
#                        (what `ray dashboard cluster/cluster.yaml` or
#                        `kubectl port-forward svc/<cluster>-head-svc 8265` forwards to).
#                        Inside the job Ray sets RAY_ADDRESS itself, to the GCS; `ftscale train`
#                        joins that cluster instead of starting a local one.
#   RAY_AUTH_MODE        token (default here): send the cluster's auth token. Ray 2.52+ clusters
#                        started with RAY_AUTH_MODE=token reject requests without it (HTTP 401).
#   RAY_AUTH_TOKEN       the token itself, or
#   RAY_AUTH_TOKEN_PATH  a file holding it; if neither is set, ~/.ray/auth_token.
#                        Ray's order of precedence is exactly this one.
#   SUBMISSION_ID        job id (default: ftscale-<config name>-<UTC time>)
#   FOLLOW=1             wait and stream the logs (Ctrl-C stops following, not the job)
#
# Run it from anywhere: it submits the repository root as the job's working_dir with the
# excludes and env vars of cluster/runtime_env.yaml. Resume a run by submitting the same
# config again (same run_name and storage_path).
set -euo pipefail

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  [[ $# -lt 1 ]] && exit 2 || exit 0
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
config="$1"
shift

export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

if [[ "$RAY_AUTH_MODE" == token && -z "${RAY_AUTH_TOKEN:-}" ]]; then
  token_file="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
  if [[ ! -s "$token_file" ]]; then
    echo "submit.sh: no auth token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, or put the cluster's token in $token_file" >&2
    exit 2
  fi
fi

if [[ ! -f "$repo/$config" && ! -f "$config" ]]; then
  echo "submit.sh: config not found: $config" >&2
  exit 2
fi
# The job runs in the uploaded repository root: pass the config relative to it.
if [[ -f "$config" && "$config" != /* ]]; then
  config="$(cd "$(dirname "$config")" && pwd)/$(basename "$config")"
fi
config="${config#"$repo"/}"

name="$(basename "$config")"
id="${SUBMISSION_ID:-ftscale-${name%.*}-$(date -u +%Y%m%d-%H%M%S)}"

cd "$repo"
ray job submit \
  --address "$RAY_ADDRESS" \
  --runtime-env cluster/runtime_env.yaml \
  --submission-id "$id" \
  --no-wait \
  -- ftscale train "$config" "$@"

echo "job: $id"
echo "  status: ray job status $id    logs: ray job logs -f $id    stop: ray job stop $id"
if [[ "${FOLLOW:-0}" == 1 ]]; then
  exec ray job logs --address "$RAY_ADDRESS" --follow "$id"
fi
