#!/bin/sh
# Init container of the ComfyUI pod: wait until the GPU node's model cache is complete.
#
# A GPU node joins the cluster before its multi-GB model download has finished; ComfyUI must
# not start on a half-filled cache (a missing model fails a prompt; a half-written one
# crashes the loader). The node's sync service writes the marker once the cache has fully
# converged to the models bucket (core/names.py CACHE_MARKER_PATH). The deadline turns a node
# whose sync never completes into a visible init error on the pod instead of a silent wait.
#
# Environment:
#   MARKER            the cache-complete marker, as mounted into this container (required)
#   TIMEOUT_SECONDS   give up after this many seconds (required)
#   INTERVAL_SECONDS  how often to look (default 10)
#   SYNC_SERVICE      the node's sync service, named in the error (default: the sync service)
set -eu

marker="${MARKER:?MARKER must name the cache-complete marker}"
timeout="${TIMEOUT_SECONDS:?TIMEOUT_SECONDS must be set}"
interval="${INTERVAL_SECONDS:-10}"
service="${SYNC_SERVICE:-the model sync service}"

case "$timeout$interval" in
  *[!0-9]*)
    echo "TIMEOUT_SECONDS and INTERVAL_SECONDS must be whole seconds (got '$timeout', '$interval')" >&2
    exit 2
    ;;
esac

deadline=$(($(date +%s) + timeout))
until [ -f "$marker" ]; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "model cache not complete after ${timeout}s: check journalctl -u $service on the node" >&2
    exit 1
  fi
  echo "waiting for the node model cache ($marker)"
  sleep "$interval"
done
echo "node model cache complete ($marker)"
