#!/usr/bin/env bash
# Converge the GPU node's local model cache to the models bucket.
#
# Installed on every GPU node (SYNC_SCRIPT_PATH) and run by the sync systemd service:
# at boot, on every SSM model-sync command, and by the periodic reconcile timer. It can
# also be run by hand with the environment below.
#
# Environment:
#   MODELS_BUCKET       bucket holding the models (required)
#   MODELS_PATH         local directory that mirrors the bucket (required, absolute)
#   CACHE_MARKER_PATH   written atomically after every successful convergence (required,
#                       absolute, outside MODELS_PATH); the ComfyUI pod waits for it
#   CACHE_SKIPPED_PATH  the objects this node cannot store, one JSON object per line
#                       ({"key": ..., "reason": ...}), rewritten atomically by every run and
#                       removed when nothing is skipped (required, absolute, outside MODELS_PATH)
#   SYNC_REQUEST_FLAG   "a sync was requested" flag; the script loops while it reappears,
#                       so a request that lands during a sync is never lost (required)
#   MODEL_PREFIXES      optional space-separated top-level folders, each with its trailing
#                       '/' ("checkpoints/ loras/"); empty means the whole bucket
#   MODEL_PREFIX_PATTERN  what a MODEL_PREFIXES entry must match (required): the configuration's
#                       rule (core/rules.py MODEL_PREFIX_ERE), an extended regular expression
#   AWS_REGION          optional region of the bucket; AWS_ENDPOINT_URL etc. are read by
#                       the aws CLI itself
#
# Exit status is non-zero when the bucket could not be listed or an object could not be
# transferred (network, permissions); the marker is then left exactly as it was. Objects
# that can never be stored (below) are skipped and do not make a run fail.
#
# Why an ETag manifest: `aws s3 sync` decides whether to download an object from size and
# LastModified only. Without --exact-timestamps it never re-downloads a same-size object
# that was replaced in S3; with it, a replacement is still missed when both versions carry
# the same LastModified (S3 has one-second resolution). So every run first lists the
# bucket (ETag + size per key), sets the mtime of each local copy whose ETag differs from
# the previous run's listing to the epoch, records the new listing, and only then runs
# `aws s3 sync --delete --exact-timestamps`, which re-downloads those (to a temporary
# file, renamed over the old one: the old model stays readable until then).
#
# Objects a node cannot store. Each of these used to make every `aws s3 sync` exit 1 (or
# write somewhere else than its key says), so a node never wrote the marker and never
# served. They are found in the listing, logged, listed in CACHE_SKIPPED_PATH and excluded
# from the sync (`--exclude=<the key as an fnmatch pattern>`, '*', '?' and '[' bracketed);
# everything else converges:
#   - a key with an empty, '.' or '..' path segment, or starting with '/' ("a//b", "a/.",
#     "a/../b", "../x"): the CLI fails on some, writes others to another key's path;
#   - a name (path segment) the filesystem cannot hold: over 255 bytes, or, for the file
#     name, over 246 bytes unless its first 246 bytes are ASCII: the CLI downloads to
#     "<first 246 characters>.<8 random characters>" and renames;
#   - a key whose local path would exceed PATH_MAX (4096 bytes, with that temporary suffix);
#   - a folder marker ("dir/") with content; empty folder markers are ignored, as the CLI does;
#   - a key with a NUL byte (excluded with a bracket expression that matches only NUL);
#   - a GLACIER or DEEP_ARCHIVE object (the CLI skips those itself, with a warning);
#   - a file whose name is also a folder in the bucket ("loras/foo" and "loras/foo/x"):
#     the folder wins, deterministically, and the file is skipped.
# An excluded key's local copy, if there is one (a model archived to GLACIER after it was
# cached), is left as it is: neither updated nor deleted.
# A local entry in the way of a key (a stale folder where the bucket now has a file, a file
# where it now has a folder, a symbolic link) is removed before the sync. The exclusions
# travel on the CLI's command line: a bucket with so many unstorable keys that they exceed
# the kernel's argument limit (2 MiB) fails the run ("Argument list too long").
#
# With MODEL_PREFIXES, the bucket is still listed and synced in one call each (filters
# `--exclude=* --include=<prefix>*`): two CLI processes per run, however many prefixes,
# and one folder's failed object cannot keep the other folders from converging (the CLI
# transfers everything it can, then exits 1).
set -euo pipefail
shopt -s inherit_errexit

readonly PROG="comfyui-model-sync"
# Filesystem limits (XFS, Linux) and the CLI's temporary-file suffix (".xxxxxxxx").
readonly NAME_MAX=255 PATH_MAX=4096 TEMP_SUFFIX=9
# Skipped objects named in the journal per run; all of them are in CACHE_SKIPPED_PATH.
readonly MAX_LOGGED_SKIPS=20
# fnmatch bracket expression matching exactly one NUL: no other character from U+0001 to
# U+10FFFF (a NUL cannot be passed in an argument).
readonly NUL_PATTERN=$'[!\x01-\xf4\x8f\xbf\xbf]'

log() {
  printf '%s: %s\n' "$PROG" "$*" >&2
}

die() {
  log "ERROR: $*"
  exit 1
}

for required in MODELS_BUCKET MODELS_PATH CACHE_MARKER_PATH CACHE_SKIPPED_PATH SYNC_REQUEST_FLAG MODEL_PREFIX_PATTERN; do
  if [[ -z "${!required:-}" ]]; then
    die "required environment variable ${required} is not set"
  fi
done

# Normalise and sanity-check the paths: `--delete` and the clean-up below remove files
# under MODELS_PATH, so it must be a real, specific directory.
models_dir="${MODELS_PATH%/}"
marker="${CACHE_MARKER_PATH}"
skipped_report="${CACHE_SKIPPED_PATH}"
request_flag="${SYNC_REQUEST_FLAG}"
case "$models_dir" in
  *[][*?]*) die "MODELS_PATH must not contain '*', '?', '[' or ']' (got '${MODELS_PATH}'): the sync's filters are patterns" ;;
  /?*) ;;
  *) die "MODELS_PATH must be an absolute path other than / (got '${MODELS_PATH}')" ;;
esac
for output in "$marker" "$skipped_report"; do
  case "$output" in
    "$models_dir" | "$models_dir"/*)
      die "${output} must be outside MODELS_PATH (${models_dir}): sync --delete would remove it"
      ;;
    /?*) ;;
    *) die "CACHE_MARKER_PATH and CACHE_SKIPPED_PATH must be absolute paths (got '${output}')" ;;
  esac
done

# Whether $1 is a model prefix: one plain top-level folder with its trailing '/'. Matched in
# the C locale, where a range such as [A-Za-z] holds only ASCII letters.
is_model_prefix() {
  local LC_ALL=C
  [[ "$1" =~ $MODEL_PREFIX_PATTERN ]]
}

# Folder prefixes: word-split without globbing, each already in its canonical form.
read -r -a prefixes <<<"${MODEL_PREFIXES:-}"
declare -A in_scope=()
for p in "${prefixes[@]}"; do
  if ! is_model_prefix "$p"; then
    die "MODEL_PREFIXES entry '${p}' is not a single top-level folder (expected e.g. 'checkpoints/')"
  fi
  in_scope["$p"]=1
done

aws_global=()
if [[ -n "${AWS_REGION:-}" ]]; then
  aws_global+=(--region "$AWS_REGION")
fi

manifest="${marker}.etags"
lock_file="${marker}.lock"

mkdir -p -- "$models_dir" "$(dirname -- "$marker")" "$(dirname -- "$skipped_report")" "$(dirname -- "$request_flag")"

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
# %XX a byte). Result in the variable named by $2. A NUL (%00) would end the string: the
# caller replaces it first.
url_decode() {
  local encoded="${1//+/ }"
  encoded="${encoded//\\/\\\\}"
  printf -v "$2" '%b' "${encoded//%/\\x}"
}

# $1 as an fnmatch pattern (aws s3 sync --exclude/--include) matching exactly $1. Into $2.
glob_escape() {
  local s="${1//\[/[[]}"
  s="${s//\*/[*]}"
  printf -v "$2" '%s' "${s//\?/[?]}"
}

# $1 as the inside of a JSON string (quotes, backslashes, control characters escaped;
# other bytes as they are: keys are UTF-8). Into $2.
json_escape() {
  local LC_ALL=C s="$1" c u i
  s="${s//\\/\\\\}"
  s="${s//\"/\\\"}"
  for ((i = 1; i < 32; i++)); do
    printf -v c '\\x%02x' "$i"
    printf -v c '%b' "$c"
    printf -v u '\\u%04x' "$i"
    s="${s//"$c"/$u}"
  done
  printf -v "$2" '%s' "$s"
}

# Why the object ($1 storage class, $2 size, $3 decoded key) cannot be stored, in the
# global `reason`; empty when it can. Lengths are in bytes (C locale).
classify() {
  local LC_ALL=C class="$1" size="$2" key="$3" rest segment
  reason=""
  if [[ "$key" == */ ]]; then
    reason="folder marker with content (${size} bytes)"
    return 0
  fi
  case "/${key}/" in
    */../* | */./* | *//*)
      reason="empty, '.' or '..' path segment"
      return 0
      ;;
  esac
  if ((${#models_dir} + 1 + ${#key} + TEMP_SUFFIX >= PATH_MAX)); then
    reason="local path longer than PATH_MAX (${PATH_MAX} bytes)"
    return 0
  fi
  rest="$key"
  while [[ "$rest" == */* ]]; do
    segment="${rest%%/*}"
    rest="${rest#*/}"
    if ((${#segment} > NAME_MAX)); then
      reason="folder name longer than ${NAME_MAX} bytes"
      return 0
    fi
  done
  if ((${#rest} > NAME_MAX)) ||
    { ((${#rest} > NAME_MAX - TEMP_SUFFIX)) && [[ "${rest:0:NAME_MAX-TEMP_SUFFIX}" == *[![:ascii:]]* ]]; }; then
    reason="file name too long for the filesystem (${#rest} bytes)"
    return 0
  fi
  case "$class" in
    GLACIER | DEEP_ARCHIVE) reason="storage class ${class} (restore it to a retrievable class)" ;;
  esac
}

# Record a skipped object ($1 url-encoded key, $2 reason): report line, journal, exclusion.
skip() {
  local encoded="$1" reason="$2" decoded escaped pattern="" json="" i
  local -a chunks
  mapfile -t chunks <<<"${encoded//%00/$'\n'}"
  for i in "${!chunks[@]}"; do
    url_decode "${chunks[i]}" decoded
    if ((i > 0)); then
      pattern+="$NUL_PATTERN"
      json+='\u0000'
    fi
    glob_escape "$decoded" escaped
    pattern+="$escaped"
    json_escape "$decoded" escaped
    json+="$escaped"
  done
  if [[ "$pattern" == /* ]]; then
    pattern="[/]${pattern:1}"
  fi
  skipped_lines+=("{\"key\":\"${json}\",\"reason\":\"${reason}\"}")
  if ((${#skipped_lines[@]} <= MAX_LOGGED_SKIPS)); then
    log "WARNING: not caching s3://${MODELS_BUCKET}/ key \"${json}\": ${reason}"
  fi
  excludes+=("--exclude=${pattern}")
}

# Make room for the file key $1 (decoded): every folder on its way must be a real folder
# (checked top-down, so nothing is ever followed through a symbolic link), and the key's
# own path must not be a folder. $2/$3: the previous and current "ETag<TAB>size"; a local
# copy whose object changed is marked stale (mtime = epoch) so that sync downloads it.
prepare_path() {
  local rest="$1" path="$models_dir" segment json
  while [[ "$rest" == */* ]]; do
    segment="${rest%%/*}"
    rest="${rest#*/}"
    path+="/${segment}"
    if [[ -n "${checked["$path"]:-}" ]]; then
      continue
    fi
    checked["$path"]=1
    if [[ -L "$path" || (-e "$path" && ! -d "$path") ]]; then
      json_escape "${path#"$models_dir"/}" json
      log "removing \"${json}\": the bucket has a folder of that name"
      rm -f -- "$path"
    fi
  done
  path+="/${rest}"
  if [[ -L "$path" ]]; then
    rm -f -- "$path"
  elif [[ -d "$path" ]]; then
    json_escape "$1" json
    log "removing the folder \"${json}\": the bucket has a file of that name"
    rm -rf -- "$path"
  elif [[ -f "$path" && "$2" != "$3" ]]; then
    touch -m -d @0 -- "$path"
  fi
}

# List the bucket as lines "ETag<TAB>Size<TAB>StorageClass<TAB>url-encoded key" into $1.
list_bucket() {
  # An explicit --encoding-type url keeps keys with tabs/newlines on one line; the CLI
  # does not decode keys when the caller asked for the encoding itself.
  if ! aws "${aws_global[@]}" s3api list-objects-v2 --bucket "$MODELS_BUCKET" \
    --encoding-type url --query 'Contents[].[ETag,Size,StorageClass,Key]' --output text >"$1"; then
    die "listing s3://${MODELS_BUCKET}/ failed"
  fi
}

# Remove local top-level entries that are not one of the configured prefixes.
remove_unlisted_top_level() {
  local entry name
  while IFS= read -r -d '' entry; do
    name="${entry##*/}"
    if [[ -z "${in_scope["${name}/"]:-}" ]]; then
      log "removing ${entry} (outside MODEL_PREFIXES)"
      rm -rf -- "$entry"
    fi
  done < <(find "$models_dir" -mindepth 1 -maxdepth 1 -print0)
}

# The skipped objects of this run into CACHE_SKIPPED_PATH (atomically), or no file at all.
write_skipped_report() {
  local tmp
  if ((${#skipped_lines[@]} == 0)); then
    rm -f -- "$skipped_report"
    return 0
  fi
  log "WARNING: ${#skipped_lines[@]} object(s) cannot be stored on this node and are skipped (up to ${MAX_LOGGED_SKIPS} named above); all of them are in ${skipped_report}"
  tmp="$(mktemp "${skipped_report}.XXXXXX")"
  tmp_files+=("$tmp")
  printf '%s\n' "${skipped_lines[@]}" >"$tmp"
  chmod 0644 -- "$tmp"
  mv -f -- "$tmp" "$skipped_report"
}

converge_once() {
  local listing etag size class key decoded pattern i rc
  local -a keys=() decoded_keys=() versions=() filters=()
  local -A previous=() folders=() checked=()
  skipped_lines=()
  excludes=()

  listing="$(mktemp "${manifest}.XXXXXX")"
  tmp_files+=("$listing")
  list_bucket "$listing"

  if [[ -f "$manifest" ]]; then
    while IFS=$'\t' read -r etag size class key; do
      if [[ -n "$key" ]]; then
        previous["$key"]="${etag}"$'\t'"${size}"
      fi
    done <"$manifest"
  fi

  while IFS=$'\t' read -r etag size class key; do
    [[ "$size" =~ ^[0-9]+$ && -n "$key" ]] || continue
    url_decode "${key//%00/%01}" decoded
    if ((${#prefixes[@]} > 0)) && [[ "$decoded" != */* || -z "${in_scope["${decoded%%/*}/"]:-}" ]]; then
      continue
    fi
    # An empty folder marker ("dir/") is no file and makes no folder: the CLI ignores it.
    if [[ "$decoded" == */ && "$size" == 0 ]]; then
      continue
    fi
    if [[ "$key" == *%00* ]]; then
      reason="NUL byte in the key"
    else
      classify "$class" "$size" "$decoded"
    fi
    if [[ -n "$reason" ]]; then
      skip "$key" "$reason"
      continue
    fi
    keys+=("$key")
    decoded_keys+=("$decoded")
    versions+=("${etag}"$'\t'"${size}")
    while [[ "$decoded" == */* ]]; do
      decoded="${decoded%/*}"
      [[ -z "${folders["$decoded"]:-}" ]] || break
      folders["$decoded"]=1
    done
  done <"$listing"

  if ((${#prefixes[@]} > 0)); then
    remove_unlisted_top_level
  fi
  for i in "${!keys[@]}"; do
    if [[ -n "${folders["${decoded_keys[i]}"]:-}" ]]; then
      skip "${keys[i]}" "a folder of the same name is in the bucket (the folder wins)"
    else
      prepare_path "${decoded_keys[i]}" "${previous["${keys[i]}"]:-}" "${versions[i]}"
    fi
  done
  write_skipped_report
  # Recorded before the sync: from now on every local file either matches this listing
  # or is a newer download, and both are caught by the next comparison.
  mv -f -- "$listing" "$manifest"

  if ((${#prefixes[@]} > 0)); then
    filters=(--exclude='*')
    for i in "${prefixes[@]}"; do
      glob_escape "$i" pattern
      filters+=("--include=${pattern}*")
    done
  fi
  # Later filters win: the skipped objects are excluded even inside the prefixes.
  filters+=("${excludes[@]}")
  rc=0
  aws "${aws_global[@]}" s3 sync "s3://${MODELS_BUCKET}/" "${models_dir}/" "${filters[@]}" \
    --delete --exact-timestamps --no-progress --only-show-errors || rc=$?
  # `sync --delete` removes files, not the directories they were in.
  find "$models_dir" -mindepth 1 -type d -empty -delete
  case "$rc" in
    0) ;;
    # 2: the CLI skipped objects with a warning of its own; the rest synced.
    2) log "WARNING: aws s3 sync skipped some objects (see the CLI's warnings above); the rest converged" ;;
    *) die "aws s3 sync s3://${MODELS_BUCKET}/ -> ${models_dir}/ failed (exit ${rc}); ${marker} left as it was" ;;
  esac
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
