#!/usr/bin/env bash
# Build the ComfyUI image from docker/Dockerfile and push it to Amazon ECR.
set -euo pipefail

PROG="${0##*/}"
SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
DOCKERFILE="${SCRIPT_DIR}/Dockerfile"

usage() {
    cat << USAGE
Usage: docker/${PROG} --repository-url <ecr-url> [--tag TAG] [--comfyui-commit SHA] [--platform PLATFORM]

Builds docker/Dockerfile (build context: docker/) and pushes it to an Amazon ECR repository.

  --repository-url URL   <12-digit account>.dkr.ecr.<region>.amazonaws.com/<name>, without a tag
                         (env: ECR_REPOSITORY_URL). Required.
  --tag TAG              image tag (env: IMAGE_TAG). Default: <first 12 characters of the ComfyUI
                         commit>-<first 12 hex of a SHA-256 over the files in docker/ that go into
                         the image, and the platform>, so the same inputs always give the same tag
                         and any change gives a new one. "latest" is refused.
  --comfyui-commit SHA   full 40-hex ComfyUI commit (env: COMFYUI_COMMIT). Default: the
                         COMFYUI_COMMIT build argument's default in docker/Dockerfile.
  --platform PLATFORM    linux/amd64 (default) or linux/arm64 (env: IMAGE_PLATFORM).
  -h, --help             show this help.

Tags are never overwritten: if the tag already exists in the repository (ECR repositories may
be IMMUTABLE), the script stops before building. It needs docker (with a running daemon) and
the AWS CLI v2 with credentials allowed to push to the repository.

On success the only line on stdout is the pushed image: <repository-url>:<tag>@sha256:<digest>.
USAGE
}

die() {
    printf '%s: error: %s\n' "${PROG}" "$*" >&2
    exit 1
}

usage_error() {
    printf '%s: error: %s\n' "${PROG}" "$*" >&2
    printf 'Run docker/%s --help for usage.\n' "${PROG}" >&2
    exit 2
}

info() {
    printf '%s: %s\n' "${PROG}" "$*" >&2
}

repository_url="${ECR_REPOSITORY_URL:-}"
tag="${IMAGE_TAG:-}"
comfyui_commit="${COMFYUI_COMMIT:-}"
platform="${IMAGE_PLATFORM:-linux/amd64}"

while (($#)); do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --repository-url | --tag | --comfyui-commit | --platform)
            (($# >= 2)) || usage_error "$1 needs a value"
            case "$1" in
                --repository-url) repository_url=$2 ;;
                --tag) tag=$2 ;;
                --comfyui-commit) comfyui_commit=$2 ;;
                --platform) platform=$2 ;;
            esac
            shift 2
            ;;
        --repository-url=*) repository_url=${1#*=} && shift ;;
        --tag=*) tag=${1#*=} && shift ;;
        --comfyui-commit=*) comfyui_commit=${1#*=} && shift ;;
        --platform=*) platform=${1#*=} && shift ;;
        *) usage_error "unknown argument: $1" ;;
    esac
done

# --- Inputs (checked before anything is run) ----------------------------------------------
[[ -n "${repository_url}" ]] \
    || usage_error "the ECR repository URL is missing: pass --repository-url <account>.dkr.ecr.<region>.amazonaws.com/<name> (or set ECR_REPOSITORY_URL)"

ecr_name_re='([a-z0-9]+([._-][a-z0-9]+)*/)*[a-z0-9]+([._-][a-z0-9]+)*'
ecr_url_re="^([0-9]{12})\.dkr\.ecr\.([a-z]{2}(-[a-z]+)+-[0-9]+)\.amazonaws\.com/(${ecr_name_re})$"
if ! [[ "${repository_url}" =~ ${ecr_url_re} ]]; then
    hint="expected <12-digit account>.dkr.ecr.<region>.amazonaws.com/<name>, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/comfyui"
    case "${repository_url}" in
        *://*) hint="drop the scheme; ${hint}" ;;
        *.amazonaws.com/*:* | *@*) hint="pass the repository without a tag or digest (use --tag); ${hint}" ;;
    esac
    usage_error "malformed repository URL '${repository_url}': ${hint}"
fi
account=${BASH_REMATCH[1]}
region=${BASH_REMATCH[2]}
repository_name=${BASH_REMATCH[4]}
registry=${repository_url%%/*}

[[ "${platform}" =~ ^linux/(amd64|arm64)$ ]] \
    || usage_error "unsupported platform '${platform}': use linux/amd64 or linux/arm64"

[[ -f "${DOCKERFILE}" ]] || die "${DOCKERFILE} not found"
if [[ -z "${comfyui_commit}" ]]; then
    comfyui_commit=$(sed -n 's/^ARG COMFYUI_COMMIT=//p' "${DOCKERFILE}" | head -n 1)
    [[ -n "${comfyui_commit}" ]] || die "no 'ARG COMFYUI_COMMIT=<sha>' default in ${DOCKERFILE}; pass --comfyui-commit"
fi
[[ "${comfyui_commit}" =~ ^[0-9a-f]{40}$ ]] \
    || usage_error "ComfyUI commit '${comfyui_commit}' is not a full 40-hex lowercase SHA (branches, tags and short SHAs are not pinned)"

sha256() {
    if command -v sha256sum > /dev/null 2>&1; then
        sha256sum | cut -d ' ' -f 1
    elif command -v shasum > /dev/null 2>&1; then
        shasum -a 256 | cut -d ' ' -f 1
    else
        die "neither sha256sum nor shasum is on PATH (needed for the default tag); pass --tag"
    fi
}

# Hash of what goes into the image: every file in docker/ except docs and this script, by
# relative path and content, plus the platform.
image_inputs_hash() {
    local file
    {
        printf 'platform=%s\n' "${platform}"
        while IFS= read -r -d '' file; do
            printf '%s %s\n' "$(sha256 < "${SCRIPT_DIR}/${file}")" "${file#./}"
        done < <(cd -- "${SCRIPT_DIR}" && find . -type f ! -name '*.md' ! -name "${PROG}" -print0 | LC_ALL=C sort -z)
    } | sha256
}

if [[ -z "${tag}" ]]; then
    inputs_hash=$(image_inputs_hash)
    tag="${comfyui_commit:0:12}-${inputs_hash:0:12}"
fi
[[ "${tag}" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] \
    || usage_error "malformed tag '${tag}': use 1-128 of A-Z a-z 0-9 _ . - (not starting with . or -)"
[[ "${tag}" != "latest" ]] \
    || usage_error "refusing the tag 'latest': the cluster pins image tags; use a unique tag (or omit --tag)"

image="${repository_url}:${tag}"

# --- Tools, daemon, credentials ------------------------------------------------------------
command -v docker > /dev/null 2>&1 \
    || die "'docker' is not on PATH: install Docker (Docker Engine or Docker Desktop) and make sure the docker CLI is on PATH"
command -v aws > /dev/null 2>&1 \
    || die "'aws' is not on PATH: install the AWS CLI v2 and make sure 'aws' is on PATH"

if ! docker_error=$(docker info 2>&1 > /dev/null); then
    die "cannot reach the Docker daemon ('docker info' failed): start Docker, or check DOCKER_HOST / DOCKER_CONTEXT and your permission on the Docker socket. docker said: ${docker_error}"
fi

if ! caller=$(aws sts get-caller-identity --region "${region}" --query Arn --output text 2>&1); then
    die "no usable AWS credentials ('aws sts get-caller-identity' failed): configure credentials (aws configure / aws sso login / AWS_PROFILE) for account ${account}. aws said: ${caller}"
fi
info "AWS identity: ${caller}"
case "${caller}" in
    "arn:aws:"*":${account}:"*) ;;
    *) info "warning: the identity is not in account ${account}; the push works only if the repository policy allows it" ;;
esac

# --- Refuse to overwrite an existing tag ---------------------------------------------------
if existing=$(aws ecr describe-images --region "${region}" --repository-name "${repository_name}" \
    --image-ids "imageTag=${tag}" --output json 2>&1); then
    die "tag '${tag}' already exists in ${repository_url}; tags are never overwritten (the repository may be IMMUTABLE). Use a new --tag, or change the inputs to get a new default tag."
fi
case "${existing}" in
    *ImageNotFoundException*) ;;
    *RepositoryNotFoundException*)
        die "ECR repository '${repository_name}' does not exist in ${region} (account ${account}); create it (deploy the stack that owns it) or fix --repository-url. aws said: ${existing}"
        ;;
    *) die "cannot check whether tag '${tag}' exists in ${repository_url}: ${existing}" ;;
esac

# --- Login, build, push --------------------------------------------------------------------
info "logging in to ${registry}"
if ! aws ecr get-login-password --region "${region}" \
    | docker login --username AWS --password-stdin "${registry}" >&2; then
    die "docker login to ${registry} failed (does the identity have ecr:GetAuthorizationToken?)"
fi

info "building ${image} (platform ${platform}, ComfyUI ${comfyui_commit})"
docker build \
    --platform "${platform}" \
    --build-arg "COMFYUI_COMMIT=${comfyui_commit}" \
    --tag "${image}" \
    --file "${DOCKERFILE}" \
    "${SCRIPT_DIR}" >&2 \
    || die "docker build failed"

info "pushing ${image}"
docker push "${image}" >&2 || die "docker push of ${image} failed"

digest=$(aws ecr describe-images --region "${region}" --repository-name "${repository_name}" \
    --image-ids "imageTag=${tag}" --query 'imageDetails[0].imageDigest' --output text) \
    || die "pushed ${image}, but could not read its digest from ECR"
[[ "${digest}" =~ ^sha256:[0-9a-f]{64}$ ]] \
    || die "pushed ${image}, but ECR returned an unexpected digest '${digest}'"

info "pushed ${image} (${digest})"
printf '%s@%s\n' "${image}" "${digest}"
