#!/usr/bin/env bash
# Replace a GPU node whose model cache did not complete in time.
#
# Installed on every GPU node (CACHE_DEADLINE_SCRIPT_PATH) and run once by
# CACHE_DEADLINE_SERVICE_NAME, which CACHE_DEADLINE_TIMER_NAME starts CACHE_DEADLINE_SECONDS
# after boot (both installed by gpu-node-setup.sh). When the cache marker exists it does
# nothing. Otherwise the node holds a GPU it cannot serve with (the bucket cannot be read,
# a transfer keeps failing, or the download is slower than the deadline): it logs why,
# reports METRICS_NAMESPACE/CACHE_DEADLINE_METRIC = 1 with the dimension
# METRIC_CLUSTER_DIMENSION=CLUSTER_NAME (an alarm watches it) and powers the node off.
# Karpenter's interruption queue receives the EC2 state-change event and replaces the
# node. The metric is best effort: the node powers off even when the call fails or hangs
# (it is given DEADLINE_METRIC_TIMEOUT seconds, 60 by default). put-metric-data's
# --dimensions takes "Name=Value" pairs separated by commas: the cluster name (an EKS name:
# letters, digits, '-', '_') cannot break it.
#
# Environment: CACHE_MARKER_PATH, CLUSTER_NAME, METRICS_NAMESPACE, CACHE_DEADLINE_METRIC,
# METRIC_CLUSTER_DIMENSION (required); CACHE_DEADLINE_SECONDS, SYNC_SERVICE_NAME and
# AWS_REGION (optional: the log, the sync service's state in it, the CLI's region).
set -euo pipefail
shopt -s inherit_errexit

readonly PROG="comfyui-model-cache-deadline"

log() {
  printf '%s: %s\n' "$PROG" "$*" >&2
}

for required in CACHE_MARKER_PATH CLUSTER_NAME METRICS_NAMESPACE CACHE_DEADLINE_METRIC METRIC_CLUSTER_DIMENSION; do
  if [[ -z "${!required:-}" ]]; then
    log "ERROR: required environment variable ${required} is not set"
    exit 1
  fi
done

if [[ -e "$CACHE_MARKER_PATH" ]]; then
  log "the model cache is complete (${CACHE_MARKER_PATH}); nothing to do"
  exit 0
fi

sync_state=""
if [[ -n "${SYNC_SERVICE_NAME:-}" ]]; then
  sync_state="$(systemctl show --property=ActiveState,Result,NRestarts -- "$SYNC_SERVICE_NAME" 2>/dev/null || true)"
  sync_state="; ${SYNC_SERVICE_NAME}: ${sync_state//$'\n'/ } (journalctl -u ${SYNC_SERVICE_NAME})"
fi
log "the model cache is not complete ${CACHE_DEADLINE_SECONDS:-?} s after boot (no ${CACHE_MARKER_PATH}${sync_state}); reporting ${METRICS_NAMESPACE}/${CACHE_DEADLINE_METRIC} and powering off so that Karpenter replaces this node"

aws_global=()
if [[ -n "${AWS_REGION:-}" ]]; then
  aws_global+=(--region "$AWS_REGION")
fi
if ! timeout "${DEADLINE_METRIC_TIMEOUT:-60}" aws "${aws_global[@]}" cloudwatch put-metric-data \
  --namespace "$METRICS_NAMESPACE" --metric-name "$CACHE_DEADLINE_METRIC" --value 1 --unit Count \
  --dimensions "${METRIC_CLUSTER_DIMENSION}=${CLUSTER_NAME}"; then
  log "WARNING: could not report the metric; powering off anyway"
fi
systemctl poweroff
