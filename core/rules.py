"""Format rules, each written once: the configuration validates with them, the renderers
re-check with them, and the node scripts receive values already in the canonical form below.

Every pattern is matched in full (`fullmatch`) and in ASCII mode: `$` would accept a trailing
newline, and `\\d` or `\\w` would accept digits and letters of other scripts, which AWS
refuses at apply time.
"""

from __future__ import annotations

import re

# AWS region codes: us-west-2, eu-central-1, us-gov-west-1, cn-north-1, us-iso-east-1, ...
REGION = re.compile(r"[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-[1-9][0-9]?", re.ASCII)
# The longest region code the derived names leave room for (ap-southeast-4).
LONGEST_REGION = 14
ACCOUNT_ID = re.compile(r"[0-9]{12}", re.ASCII)


def is_region(name: str) -> bool:
    return bool(REGION.fullmatch(name)) and len(name) <= LONGEST_REGION


# S3 bucket names (general purpose buckets): 3-63 of a-z, 0-9, '.', '-', letter or digit at
# both ends, no '..', not an IP address, none of the reserved prefixes and suffixes.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", re.ASCII)
_BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def is_bucket_name(name: str) -> bool:
    return bool(
        _BUCKET.fullmatch(name)
        and ".." not in name
        and not re.fullmatch(r"[0-9.]+", name)
        and not name.startswith(_BUCKET_RESERVED_PREFIXES)
        and not name.endswith(_BUCKET_RESERVED_SUFFIXES)
    )


# A model prefix is ONE top-level folder of the models bucket, written with its trailing
# slash ("checkpoints/"): the S3 notification filters, the Lambda's key filter and the node
# scripts all use this canonical form. The folder name: letters, digits, '_', '.', '-', not
# starting with '.' or '-' (so never '.', '..' or an option-looking word).
MODEL_PREFIX = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}/", re.ASCII)
# The same rule for the node scripts, rendered into their environment (MODEL_PREFIX_PATTERN):
# anchored, as a POSIX extended regular expression that bash's `[[ =~ ]]` matches in the C
# locale. MODEL_PREFIX uses only syntax both dialects read alike: tests/test_rules.py runs the
# sync script's own check against this rule on random strings. The model-sync Lambda keeps a
# copy of MODEL_PREFIX (its package cannot import core); tests/test_model_sync_lambda.py keeps
# the two equal.
MODEL_PREFIX_ERE = f"^{MODEL_PREFIX.pattern}$"


def is_model_prefix(prefix: str) -> bool:
    return bool(MODEL_PREFIX.fullmatch(prefix))


# EC2 instance types (family.size, e.g. g6e.2xlarge).
INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9]+", re.ASCII)

# Go/Kubernetes durations as Karpenter takes them, restricted to whole h/m/s parts.
DURATION = re.compile(r"(?:([0-9]{1,6})h)?(?:([0-9]{1,6})m)?(?:([0-9]{1,6})s)?", re.ASCII)


def duration_seconds(text: str) -> int | None:
    """Seconds of "1h30m", "90s", ...; None when `text` is not such a duration."""
    match = DURATION.fullmatch(text)
    if not text or match is None:
        return None
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


# AWS's tag alphabet (letters, digits, spaces and _ . : / = + - @). It also keeps Terraform's
# `${` and `%{` out of every tag.
TAG_TEXT = re.compile(r"[A-Za-z0-9 _.:/=+\-@]+", re.ASCII)
# AWS allows 50 tags per resource. The stacks add 3 (Project, Stack, ManagedBy), the GPU node
# class 3, Karpenter 5 (nodepool, nodeclaim, ec2nodeclass, eks-cluster-name, cluster) and the
# load balancer controller 4 (cluster, stack, resource, ALB tag): 35 are left for the user.
MAX_USER_TAGS = 35
