#!/usr/bin/env bash
# Prepare a GPU node's local model cache. Runs as root from the node's cloud-init
# user-data (rendered by modules/gpu_user_data.py) before the node joins the cluster, and
# is safe to run again (reboot, manual re-run).
#
#  1. Finds the NVMe instance-store disks (never EBS volumes): one disk is used directly,
#     several are striped into a RAID0 array. The result is formatted as XFS (only when it
#     carries no filesystem yet) and mounted at NODE_CACHE_ROOT. Without instance store
#     the cache lives in a directory on the root volume.
#  2. Installs the model sync script and a systemd service + timer + path unit (on the
#     request flag) that run it, and starts
#     the first sync without waiting for it: a multi-GB download must not delay the node's
#     registration (Karpenter gives a node about 15 minutes to register).
#  3. Installs the cache deadline: a timer that fires once, CACHE_DEADLINE_SECONDS after
#     boot, and runs the deadline script (model-cache-deadline.sh): a node whose cache is
#     not complete by then reports a metric and powers itself off, so Karpenter replaces it.
#
# Environment (see core/names.py script_variables()): MODELS_BUCKET, AWS_REGION,
# NODE_CACHE_ROOT, MODELS_PATH, CACHE_MARKER_PATH, CACHE_SKIPPED_PATH, SYNC_REQUEST_FLAG,
# SYNC_SCRIPT_PATH, SYNC_SERVICE_NAME, SYNC_TIMER_NAME, SYNC_PATH_UNIT_NAME,
# SYNC_RECONCILE_INTERVAL, CACHE_DEADLINE_SCRIPT_PATH, CACHE_DEADLINE_SERVICE_NAME,
# CACHE_DEADLINE_TIMER_NAME, METRICS_NAMESPACE, CACHE_DEADLINE_METRIC,
# METRIC_CLUSTER_DIMENSION, MODEL_PREFIX_PATTERN; from the deployment
# (modules/gpu_user_data.py): CLUSTER_NAME, CACHE_DEADLINE_SECONDS (whole seconds), and
# MODEL_PREFIXES (optional, space-separated folders; empty means the whole bucket).
#
# Overridable for tests (defaults are the real locations): SYSTEMD_DIR, SYNC_CONFIG_DIR,
# FSTAB, MD_DEVICE, SYNC_SCRIPT_SOURCE, DEADLINE_SCRIPT_SOURCE. Every external command
# (lsblk, blkid, mdadm, mkfs.xfs, mount, mountpoint, systemctl) is looked up on PATH.
set -euo pipefail
shopt -s inherit_errexit

readonly PROG="gpu-node-setup"
readonly INSTANCE_STORE_MODEL="Amazon EC2 NVMe Instance Storage"
# XFS labels are at most 12 characters.
readonly FS_LABEL="comfyuicache"
readonly MD_NAME="comfyui-cache"

log() {
  printf '%s: %s\n' "$PROG" "$*" >&2
}

die() {
  log "ERROR: $*"
  exit 1
}

# The variables the services read (written to their environment file below).
service_variables=(MODELS_BUCKET AWS_REGION NODE_CACHE_ROOT MODELS_PATH CACHE_MARKER_PATH
  CACHE_SKIPPED_PATH SYNC_REQUEST_FLAG SYNC_SERVICE_NAME CLUSTER_NAME CACHE_DEADLINE_SECONDS
  METRICS_NAMESPACE CACHE_DEADLINE_METRIC METRIC_CLUSTER_DIMENSION MODEL_PREFIX_PATTERN)
for required in "${service_variables[@]}" SYNC_SCRIPT_PATH SYNC_TIMER_NAME SYNC_PATH_UNIT_NAME \
  SYNC_RECONCILE_INTERVAL CACHE_DEADLINE_SCRIPT_PATH CACHE_DEADLINE_SERVICE_NAME CACHE_DEADLINE_TIMER_NAME; do
  if [[ -z "${!required:-}" ]]; then
    die "required environment variable ${required} is not set"
  fi
done
if [[ ! "$CACHE_DEADLINE_SECONDS" =~ ^[1-9][0-9]*$ ]]; then
  die "CACHE_DEADLINE_SECONDS must be a whole number of seconds (got '${CACHE_DEADLINE_SECONDS}')"
fi
MODEL_PREFIXES="${MODEL_PREFIXES:-}"

systemd_dir="${SYSTEMD_DIR:-/etc/systemd/system}"
config_dir="${SYNC_CONFIG_DIR:-/etc/comfyui}"
fstab="${FSTAB:-/etc/fstab}"
md_device="${MD_DEVICE:-/dev/md0}"
cache_root="${NODE_CACHE_ROOT%/}"
case "$cache_root" in
  /?*) ;;
  *) die "NODE_CACHE_ROOT must be an absolute path other than / (got '${NODE_CACHE_ROOT}')" ;;
esac

# --- 1. the instance store ---------------------------------------------------------------

# Prints the instance-store NVMe disks, one per line, sorted. EBS volumes report the
# model "Amazon Elastic Block Store" and are never listed.
find_instance_store_disks() {
  local name type model listing
  listing="$(lsblk --nodeps --noheadings --paths --output NAME,TYPE,MODEL)" ||
    die "lsblk failed; cannot look for NVMe instance-store disks"
  while read -r name type model; do
    if [[ "$type" == "disk" && "$model" == "$INSTANCE_STORE_MODEL" ]]; then
      printf '%s\n' "$name"
    fi
  done <<<"$listing" | LC_ALL=C sort
}

# Prints the filesystem/superblock type found on a device ("" when it is blank).
probe_type() {
  blkid --probe --match-tag TYPE --output value -- "$1" 2>/dev/null || true
}

probe_label() {
  blkid --probe --match-tag LABEL --output value -- "$1" 2>/dev/null || true
}

# Prints the active RAID array built on top of a disk, if any (after a reboot udev may
# already have assembled it, possibly under another name such as /dev/md127).
active_array_of() {
  local name type
  while read -r name type; do
    if [[ "$type" == raid* ]]; then
      printf '%s\n' "$name"
      return 0
    fi
  done < <(lsblk --noheadings --paths --raw --output NAME,TYPE -- "$1" 2>/dev/null || true)
}

# Formats $1 as XFS unless it already carries our filesystem (reboot). Anything else on
# it is left alone: the script refuses to destroy data it did not create.
ensure_filesystem() {
  local device="$1" fstype label output
  fstype="$(probe_type "$device")"
  case "$fstype" in
    "")
      log "formatting ${device} as XFS"
      # -K: no TRIM (instance store is trimmed; TBs can outlast node registration)
      if ! output="$(mkfs.xfs -K -L "$FS_LABEL" -l su=8b -- "$device" 2>&1)"; then
        printf '%s\n' "$output" >&2
        die "mkfs.xfs failed on ${device}: ${output##*$'\n'}"
      fi
      ;;
    xfs)
      label="$(probe_label "$device")"
      if [[ "$label" != "$FS_LABEL" ]]; then
        die "${device} already holds an XFS filesystem labelled '${label}', not '${FS_LABEL}'; is the instance store used by something else (EC2NodeClass instanceStorePolicy)?"
      fi
      log "${device} already holds the cache filesystem (reboot); not formatting"
      ;;
    *)
      die "${device} already holds '${fstype}'; refusing to format it"
      ;;
  esac
}

# Prints the block device to mount: the single disk, or the RAID0 array over all disks.
prepare_device() {
  local -a disks=("$@")
  local disk array member_type
  if ((${#disks[@]} == 1)); then
    printf '%s\n' "${disks[0]}"
    return 0
  fi

  array="$(active_array_of "${disks[0]}")"
  if [[ -n "$array" ]]; then
    log "RAID array ${array} over the instance store is already assembled (reboot)"
    printf '%s\n' "$array"
    return 0
  fi

  member_type="$(probe_type "${disks[0]}")"
  if [[ "$member_type" == "linux_raid_member" ]]; then
    log "assembling the existing RAID0 array ${md_device} from ${disks[*]} (reboot)"
    mdadm --assemble "$md_device" "${disks[@]}" >&2 ||
      die "mdadm --assemble ${md_device} from ${disks[*]} failed"
    printf '%s\n' "$md_device"
    return 0
  fi

  for disk in "${disks[@]}"; do
    member_type="$(probe_type "$disk")"
    if [[ -n "$member_type" ]]; then
      die "instance-store disk ${disk} already holds '${member_type}'; refusing to build a RAID0 array over it"
    fi
  done
  log "creating RAID0 array ${md_device} from ${#disks[@]} disks: ${disks[*]}"
  mdadm --create "$md_device" --run --level=0 --raid-devices="${#disks[@]}" \
    --name="$MD_NAME" "${disks[@]}" >&2 ||
    die "mdadm --create ${md_device} (RAID0 of ${disks[*]}) failed"
  printf '%s\n' "$md_device"
}

# Adds the mount to fstab (by filesystem UUID, nofail) so it comes back after a reboot.
persist_mount() {
  local device="$1" uuid line
  uuid="$(blkid --probe --match-tag UUID --output value -- "$device" 2>/dev/null || true)"
  if [[ -z "$uuid" ]]; then
    log "WARNING: no filesystem UUID on ${device}; not adding it to ${fstab}"
    return 0
  fi
  line="UUID=${uuid} ${cache_root} xfs defaults,noatime,nofail,x-systemd.device-timeout=30s 0 2"
  if [[ -f "$fstab" ]] && grep -qF -- " ${cache_root} " "$fstab"; then
    return 0
  fi
  printf '%s\n' "$line" >>"$fstab"
}

disk_list="$(find_instance_store_disks)"
disks=()
if [[ -n "$disk_list" ]]; then
  mapfile -t disks <<<"$disk_list"
fi
mkdir -p -- "$cache_root"
if ((${#disks[@]} == 0)); then
  log "no NVMe instance store found; falling back to the root volume at ${cache_root}"
elif mountpoint -q -- "$cache_root"; then
  log "${cache_root} is already mounted"
else
  log "found ${#disks[@]} NVMe instance-store disk(s): ${disks[*]}"
  device="$(prepare_device "${disks[@]}")"
  ensure_filesystem "$device"
  mount -t xfs -o defaults,noatime -- "$device" "$cache_root" ||
    die "mounting ${device} at ${cache_root} failed"
  persist_mount "$device"
  log "mounted ${device} at ${cache_root}"
fi
mkdir -p -- "$MODELS_PATH"
chmod 0755 -- "$cache_root" "$MODELS_PATH"

# --- 2. the sync service -----------------------------------------------------------------

# The user-data writes the sync and deadline scripts to their paths before running this
# script; standalone (tests, manual runs) each is copied from its *_SOURCE variable or from
# next to this file. Arguments: installed path, source override, file name next to this one.
install_script() {
  local sibling
  sibling="$(dirname -- "${BASH_SOURCE[0]}")/$3"
  if [[ -n "$2" ]]; then
    install -D -m 0755 -- "$2" "$1"
  elif [[ -s "$1" ]]; then
    chmod 0755 -- "$1"
  elif [[ -f "$sibling" ]]; then
    install -D -m 0755 -- "$sibling" "$1"
  else
    die "${1} is missing and there is no ${3} to install it from"
  fi
}
install_script "$SYNC_SCRIPT_PATH" "${SYNC_SCRIPT_SOURCE:-}" model-cache-sync.sh
install_script "$CACHE_DEADLINE_SCRIPT_PATH" "${DEADLINE_SCRIPT_SOURCE:-}" model-cache-deadline.sh
mkdir -p -- "$(dirname -- "$SYNC_REQUEST_FLAG")"

env_file="${config_dir}/model-sync.env"
aws_config="${config_dir}/aws-config"
mkdir -p -- "$config_dir" "$systemd_dir"

# The CRT transfer client gives much higher S3 throughput for large model files. A
# dedicated config file keeps root's own AWS CLI configuration untouched.
cat >"$aws_config" <<'EOF'
[default]
s3 =
    preferred_transfer_client = crt
EOF

# systemd EnvironmentFile: single-quoted values are taken literally.
write_env_line() {
  local name="$1" value="$2"
  if [[ "$value" == *"'"* || "$value" == *$'\n'* ]]; then
    die "${name} contains a single quote or a newline, which the systemd environment file cannot hold"
  fi
  printf "%s='%s'\n" "$name" "$value"
}
{
  printf '# Written by %s; read by %s and %s.\n' "$PROG" "$SYNC_SERVICE_NAME" "$CACHE_DEADLINE_SERVICE_NAME"
  for name in "${service_variables[@]}" MODEL_PREFIXES; do
    write_env_line "$name" "${!name}"
  done
  write_env_line AWS_CONFIG_FILE "$aws_config"
} >"${env_file}.tmp"
mv -f -- "${env_file}.tmp" "$env_file"

cat >"${systemd_dir}/${SYNC_SERVICE_NAME}" <<EOF
[Unit]
Description=Converge the ComfyUI model cache ${MODELS_PATH} to s3://${MODELS_BUCKET}
Wants=network-online.target
After=network-online.target
RequiresMountsFor=${cache_root}

[Service]
Type=oneshot
EnvironmentFile=${env_file}
ExecStart=${SYNC_SCRIPT_PATH}
Restart=on-failure
RestartSec=30s
Nice=10
EOF

cat >"${systemd_dir}/${SYNC_TIMER_NAME}" <<EOF
[Unit]
Description=Periodic reconcile of the ComfyUI model cache with s3://${MODELS_BUCKET}

[Timer]
OnBootSec=${SYNC_RECONCILE_INTERVAL}
OnUnitActiveSec=${SYNC_RECONCILE_INTERVAL}
Unit=${SYNC_SERVICE_NAME}

[Install]
WantedBy=timers.target
EOF

# systemd checks a path unit's paths again when the service it started stops: a request
# that lands after the sync's last look at the flag still starts the next run.
cat >"${systemd_dir}/${SYNC_PATH_UNIT_NAME}" <<EOF
[Unit]
Description=Converge the ComfyUI model cache when a sync is requested

[Path]
PathExists=${SYNC_REQUEST_FLAG}
Unit=${SYNC_SERVICE_NAME}

[Install]
WantedBy=multi-user.target
EOF

# The deadline: once, CACHE_DEADLINE_SECONDS after boot (after a reboot the marker is
# normally there and the service does nothing).
cat >"${systemd_dir}/${CACHE_DEADLINE_SERVICE_NAME}" <<EOF
[Unit]
Description=Replace this node unless its ComfyUI model cache is complete ${CACHE_DEADLINE_SECONDS}s after boot

[Service]
Type=oneshot
EnvironmentFile=${env_file}
ExecStart=${CACHE_DEADLINE_SCRIPT_PATH}
EOF

cat >"${systemd_dir}/${CACHE_DEADLINE_TIMER_NAME}" <<EOF
[Unit]
Description=ComfyUI model cache deadline (${CACHE_DEADLINE_SECONDS}s after boot)

[Timer]
OnBootSec=${CACHE_DEADLINE_SECONDS}s
Unit=${CACHE_DEADLINE_SERVICE_NAME}

[Install]
WantedBy=timers.target
EOF

systemctl daemon-reload
systemctl enable --now "$SYNC_TIMER_NAME" "$SYNC_PATH_UNIT_NAME" "$CACHE_DEADLINE_TIMER_NAME"
# --no-block: the node registers with the cluster while the models download.
systemctl start --no-block "$SYNC_SERVICE_NAME"
log "started ${SYNC_SERVICE_NAME}; the ComfyUI pod waits for ${CACHE_MARKER_PATH}"
