#!/usr/bin/env bash
# Converge the GPU node's local model cache to the models bucket.
#
# Installed on every GPU node (SYNC_SCRIPT_PATH) and run by the sync systemd service:
# at boot, on every SSM model-sync command, and by the periodic reconcile timer. It can
# also be run by hand with the environment below.
#
# Environment:
#   MODELS_BUCKET      bucket holding the models (required)
#   MODELS_PATH        local directory that mirrors the bucket (required, absolute)
#   CACHE_MARKER_PATH  written atomically after every successful convergence (required,
#                      absolute, outside MODELS_PATH); the ComfyUI pod waits for it
#   SYNC_REQUEST_FLAG  "a sync was requested" flag; the script loops while it reappears,
#                      so a request that lands during a sync is never lost (required)
#   MODEL_PREFIXES     optional space-separated top-level folders ("checkpoints/ loras/");
#                      empty means the whole bucket
#   AWS_REGION         optional region of the bucket; AWS_ENDPOINT_URL etc. are read by
#                      the aws CLI itself
#
# Exit status is non-zero when the bucket could not be listed or synced; the marker is
# then left exactly as it was.
#
# Why an ETag manifest: `aws s3 sync` decides whether to download an object from size and
# LastModified only. Without --exact-timestamps it never re-downloads a same-size object
# that was replaced in S3; with it, a replacement is still missed when both versions carry
# the same LastModified (S3 has one-second resolution). So every run first lists the
# bucket (ETag + size per key), sets the mtime of each local copy whose ETag differs from
# the previous run's listing to the epoch, records the new listing, and only then runs
# `aws s3 sync --delete --exact-timestamps`, which re-downloads those (to a temporary
# file, renamed over the old one: the old model stays readable until then).
set -euo pipefail
shopt -s inherit_errexit

readonly PROG="comfyui-model-sync"

log() {
  printf '%s: %s\n' "$PROG" "$*" >&2
}

die() {
  log "ERROR: $*"
  exit 1
}

for required in MODELS_BUCKET MODELS_PATH CACHE_MARKER_PATH SYNC_REQUEST_FLAG; do
  if [[ -z "${!required:-}" ]]; then
    die "required environment variable ${required} is not set"
  fi
done

# Normalise and sanity-check the paths: `--delete` and the clean-up below remove files
# under MODELS_PATH, so it must be a real, specific directory.
models_dir="${MODELS_PATH%/}"
marker="${CACHE_MARKER_PATH}"
request_flag="${SYNC_REQUEST_FLAG}"
case "$models_dir" in
  /?*) ;;
  *) die "MODELS_PATH must be an absolute path other than / (got '${MODELS_PATH}')" ;;
esac
case "$marker" in
  /?*) ;;
  *) die "CACHE_MARKER_PATH must be an absolute path (got '${CACHE_MARKER_PATH}')" ;;
esac
case "$marker" in
  "$models_dir" | "$models_dir"/*)
    die "CACHE_MARKER_PATH (${marker}) must be outside MODELS_PATH (${models_dir}): sync --delete would remove it"
    ;;
esac

# Folder prefixes: word-split without globbing; each must be one plain top-level folder.
read -r -a raw_prefixes <<<"${MODEL_PREFIXES:-}"
prefixes=()
for p in "${raw_prefixes[@]}"; do
  p="${p#/}"
  p="${p%/}"
  if [[ -z "$p" || "$p" == "." || "$p" == ".." || "$p" == */* ]]; then
    die "MODEL_PREFIXES entry '${p}' is not a single top-level folder (expected e.g. 'checkpoints/')"
  fi
  prefixes+=("${p}/")
done

aws_global=()
if [[ -n "${AWS_REGION:-}" ]]; then
  aws_global+=(--region "$AWS_REGION")
fi

manifest="${marker}.etags"
lock_file="${marker}.lock"

mkdir -p -- "$models_dir" "$(dirname -- "$marker")" "$(dirname -- "$request_flag")"

# One run at a time: a second run waits for the first, then converges again itself.
exec 9>>"$lock_file"
if ! flock 9; then
  die "could not lock ${lock_file}"
fi

tmp_files=()
cleanup() {
  if ((${#tmp_files[@]} > 0)); then
    rm -f -- "${tmp_files[@]}"
  fi
}
trap cleanup EXIT

# Decode a key from a ListObjectsV2 response made with EncodingType=url ('+' is a space,
# %XX a byte). Result in the variable named by $2.
url_decode() {
  local encoded="${1//+/ }"
  encoded="${encoded//\\/\\\\}"
  printf -v "$2" '%b' "${encoded//%/\\x}"
}

# A key we may map to a local path: relative, no empty, '.' or '..' segments, not a
# folder placeholder ("dir/").
safe_relative_key() {
  local key="$1"
  [[ -n "$key" && "$key" != /* && "$key" != */ ]] || return 1
  case "/${key}/" in
    */../* | */./* | *//*) return 1 ;;
  esac
  return 0
}

# List the bucket (or each prefix) as lines "ETag<TAB>Size<TAB>url-encoded key" into $1.
list_bucket() {
  local out="$1" prefix
  : >"$out"
  local -a scopes=("")
  if ((${#prefixes[@]} > 0)); then
    scopes=("${prefixes[@]}")
  fi
  for prefix in "${scopes[@]}"; do
    local -a prefix_args=()
    if [[ -n "$prefix" ]]; then
      prefix_args=(--prefix "$prefix")
    fi
    # An explicit --encoding-type url keeps keys with tabs/newlines on one line; the
    # CLI does not decode keys when the caller asked for the encoding itself.
    if ! aws "${aws_global[@]}" s3api list-objects-v2 \
      --bucket "$MODELS_BUCKET" "${prefix_args[@]}" \
      --encoding-type url \
      --query 'Contents[].[ETag,Size,Key]' --output text >>"$out"; then
      die "listing s3://${MODELS_BUCKET}/${prefix} failed"
    fi
  done
}

# Mark the local copy of every listed key whose ETag/size differ from the manifest of the
# previous run as stale (mtime = epoch), so that sync downloads it again (see the header).
invalidate_changed() {
  local listing="$1" etag size key decoded path
  local -A previous=()
  if [[ -f "$manifest" ]]; then
    while IFS=$'\t' read -r etag size key; do
      if [[ -n "$key" ]]; then
        previous["$key"]="${etag}"$'\t'"${size}"
      fi
    done <"$manifest"
  fi
  while IFS=$'\t' read -r etag size key; do
    [[ "$size" =~ ^[0-9]+$ && -n "$key" ]] || continue
    if [[ "${previous["$key"]:-}" == "${etag}"$'\t'"${size}" ]]; then
      continue
    fi
    url_decode "$key" decoded
    safe_relative_key "$decoded" || continue
    path="${models_dir}/${decoded}"
    if [[ -L "$path" ]]; then
      rm -f -- "$path"
    elif [[ -f "$path" ]]; then
      touch -m -d @0 -- "$path"
    fi
  done <"$listing"
}

# Remove local top-level entries that are not one of the configured prefixes.
remove_unlisted_top_level() {
  local entry name p keep
  while IFS= read -r -d '' entry; do
    name="${entry##*/}"
    keep=false
    for p in "${prefixes[@]}"; do
      if [[ "${name}/" == "$p" ]]; then
        keep=true
      fi
    done
    if [[ "$keep" == false ]]; then
      log "removing ${entry} (outside MODEL_PREFIXES)"
      rm -rf -- "$entry"
    fi
  done < <(find "$models_dir" -mindepth 1 -maxdepth 1 -print0)
}

converge_once() {
  local listing
  listing="$(mktemp "${manifest}.XXXXXX")"
  tmp_files+=("$listing")

  list_bucket "$listing"
  invalidate_changed "$listing"
  # Recorded before the sync: from now on every local file either matches this listing
  # or is a newer download, and both are caught by the next comparison.
  mv -f -- "$listing" "$manifest"

  local -a pairs=()
  if ((${#prefixes[@]} == 0)); then
    pairs=("" "${models_dir}/")
  else
    remove_unlisted_top_level
    local p
    for p in "${prefixes[@]}"; do
      pairs+=("$p" "${models_dir}/${p}")
    done
  fi

  local i source dest rc
  for ((i = 0; i < ${#pairs[@]}; i += 2)); do
    source="s3://${MODELS_BUCKET}/${pairs[i]}"
    dest="${pairs[i + 1]}"
    mkdir -p -- "$dest"
    rc=0
    aws "${aws_global[@]}" s3 sync "$source" "$dest" \
      --delete --exact-timestamps --no-progress --only-show-errors || rc=$?
    case "$rc" in
      0) ;;
      # 2: objects skipped with a warning (GLACIER, keys climbing out); the rest synced
      2) log "WARNING: aws s3 sync ${source} skipped some objects (see the CLI's warnings above); the rest converged" ;;
      *) die "aws s3 sync ${source} -> ${dest} failed (exit ${rc}); ${marker} left as it was" ;;
    esac
    # `sync --delete` removes files, not the directories they were in.
    find "$dest" -mindepth 1 -type d -empty -delete
  done
}

write_marker() {
  local tmp
  tmp="$(mktemp "${marker}.XXXXXX")"
  tmp_files+=("$tmp")
  printf 'bucket=s3://%s\nprefixes=%s\nconverged_at=%s\n' \
    "$MODELS_BUCKET" "${prefixes[*]}" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$tmp"
  chmod 0644 -- "$tmp"
  mv -f -- "$tmp" "$marker"
}

while true; do
  rm -f -- "$request_flag"
  log "converging ${models_dir} to s3://${MODELS_BUCKET}/ (prefixes: ${prefixes[*]:-whole bucket})"
  converge_once
  write_marker
  log "converged; wrote ${marker}"
  if [[ ! -e "$request_flag" ]]; then
    break
  fi
  log "a sync was requested while syncing; converging again"
done
