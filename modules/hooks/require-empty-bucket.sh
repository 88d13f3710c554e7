#!/usr/bin/env bash
# Destroy-time guard of one S3 bucket, run by Terraform (a destroy provisioner of the bucket's
# guard resource, modules/storage.py) BEFORE it removes anything that protects the bucket.
#
# Terraform destroys dependents first: a bucket's policy (TLS only), public access block,
# encryption and versioning configurations would all be gone by the time the bucket's own
# deletion fails on a non-empty bucket, leaving a surviving bucket stripped of every
# protection. This guard runs first and stops the destroy while the bucket still holds any
# object version or delete marker, so a failed destroy leaves the bucket exactly as it was.
#
# Environment: BUCKET (required), AWS_REGION (required). Uses the `aws` CLI with the caller's
# credentials, as Terraform's own process has them. Exit 0: empty or already gone.
set -euo pipefail

bucket="${BUCKET:?BUCKET must name the bucket}"
region="${AWS_REGION:?AWS_REGION must be set}"

# One page is enough: any version or delete marker at all means "not empty". (The backticks
# are JMESPath literals, not shell.)
# shellcheck disable=SC2016
if ! output="$(aws s3api list-object-versions --bucket "$bucket" --region "$region" --max-items 1 \
  --query '[length(Versions || `[]`), length(DeleteMarkers || `[]`)]' --output text 2>&1)"; then
  if [[ "$output" == *NoSuchBucket* ]]; then
    exit 0
  fi
  printf 'cannot check that s3://%s is empty before destroying it: %s\n' "$bucket" "$output" >&2
  exit 1
fi
if [[ "$output" != $'0\t0' ]]; then
  printf '%s\n' \
    "s3://${bucket} still holds objects (or older versions of them); nothing of it was destroyed." \
    "fix: keep the data (leave data_protection.prevent_destroy on), or empty it deliberately:" \
    "  aws s3api delete-objects for every version and delete marker (see README, Tear down), then destroy again" >&2
  exit 1
fi
