"""Names that cross components, defined once.

Every value here is used by more than one of: the synthesized Terraform, the GPU node
scripts (rendered with these values), the model-sync Lambda (through its environment),
and the Kubernetes workload. Change a name here and every consumer follows.
"""

from __future__ import annotations

from core import rules

# The domain of this product's own tag and label keys (EC2 and ALB tags, Kubernetes node
# labels). The configuration refuses user tags under it (a user tag could steer SSM targeting).
KEY_PREFIX = "comfyui.io/"

# --- Stacks ----------------------------------------------------------------------------
# The deployment cycles, in deployment order (destroy goes the other way): one stack each,
# named <project>-<cycle> (Config.stack_name). The state stack keeps its own state in a local
# file (Config.local_state_file); the others keep theirs in its bucket.
STATE_CYCLE = "state"
PLATFORM_CYCLE = "platform"
WORKLOAD_CYCLE = "workload"
EDGE_CYCLE = "edge"
CYCLES = (STATE_CYCLE, PLATFORM_CYCLE, WORKLOAD_CYCLE, EDGE_CYCLE)

# --- GPU node local model cache -------------------------------------------------------
# Mount point of the NVMe instance store (RAID0 of all instance-store disks).
NODE_CACHE_ROOT = "/mnt/comfyui-cache"
# Models live in a sub-directory so that `aws s3 sync --delete` into it can never
# delete the marker below (sync --delete removes every local file absent from S3).
MODELS_PATH = f"{NODE_CACHE_ROOT}/models"
# Written (atomically) once the models path has fully converged to the bucket at least
# once. The ComfyUI pod's init container waits for it before ComfyUI starts.
CACHE_MARKER_PATH = f"{NODE_CACHE_ROOT}/.models-cache-complete"
# Touched by the model-sync SSM command; the sync service loops while it exists, so an
# update that lands while a sync is already running is never lost.
SYNC_REQUEST_FLAG = "/run/comfyui/model-sync.requested"
# Installed on every GPU node by the user-data.
SYNC_SCRIPT_PATH = "/usr/local/sbin/comfyui-model-sync"
SYNC_SERVICE_NAME = "comfyui-model-sync.service"
SYNC_TIMER_NAME = "comfyui-model-sync.timer"
# Starts the service whenever the request flag exists, and (systemd re-checks a path unit's
# paths when the service it triggered stops) again if the flag appeared as a sync was
# finishing, after its last check: a request is never left to the reconcile timer.
SYNC_PATH_UNIT_NAME = "comfyui-model-sync.path"
# Periodic reconcile, so a node that missed an SSM command still converges.
SYNC_RECONCILE_INTERVAL = "15min"
# Objects the node cannot store (a file where the cache holds a folder of that name, a name
# longer than the filesystem allows, a folder marker with content, ...) are skipped, listed
# here (one JSON object per line) and logged; everything else converges.
CACHE_SKIPPED_PATH = f"{NODE_CACHE_ROOT}/.models-cache-skipped"
# A node whose cache has not completed this long after boot reports the metric below and
# powers itself off, so Karpenter replaces it instead of a GPU idling behind a wedged sync.
CACHE_DEADLINE_SCRIPT_PATH = "/usr/local/sbin/comfyui-model-cache-deadline"
CACHE_DEADLINE_SERVICE_NAME = "comfyui-model-cache-deadline.service"
CACHE_DEADLINE_TIMER_NAME = "comfyui-model-cache-deadline.timer"
# CloudWatch: the namespace the GPU nodes may write to (their IAM policy is conditioned on
# it) and the metric an alarm watches, with the cluster name as its one dimension.
METRICS_NAMESPACE = "ComfyUIonEKS"
CACHE_DEADLINE_METRIC = "ModelCacheDeadlineMissed"
METRIC_CLUSTER_DIMENSION = "ClusterName"

# --- Tags on GPU instances (set by the Karpenter EC2NodeClass) ------------------------
# The model-sync Lambda targets instances by these tags when the command runs, and its
# IAM policy only allows ssm:SendCommand on instances carrying the cluster tag.
NODE_CLUSTER_TAG_KEY = f"{KEY_PREFIX}cluster"
# Also the Kubernetes node label that tells GPU nodes from the system node group's nodes
# (where the controllers run).
NODE_ROLE_TAG_KEY = f"{KEY_PREFIX}node-role"
NODE_ROLE_GPU = "gpu"
NODE_ROLE_SYSTEM = "system"
# Karpenter's EC2NodeClass finds the GPU nodes' subnets and security group by this tag (value:
# the cluster name), which the network and the cluster set on them.
KARPENTER_DISCOVERY_TAG_KEY = "karpenter.sh/discovery"

# --- Kubernetes ------------------------------------------------------------------------
GPU_NODEPOOL_NAME = "gpu"
GPU_NODECLASS_NAME = "gpu"
GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_RESOURCE = "nvidia.com/gpu"
COMFYUI_NAMESPACE = "comfyui"
# The ComfyUI pods' labels (their selector; the CLI finds the pods by them).
APP_LABELS = {"app.kubernetes.io/name": "comfyui", "app.kubernetes.io/part-of": "comfyui"}
COMFYUI_SERVICE_ACCOUNT = "comfyui"
# A dedicated high ID (the image's runtime user): no host or system account shares it.
COMFYUI_UID = 10001
COMFYUI_GID = 10001
COMFYUI_PORT = 8188
# Where the cluster's controllers run (Karpenter, the load balancer controller, the Mountpoint
# S3 CSI driver).
SYSTEM_NAMESPACE = "kube-system"
KARPENTER_NAMESPACE = SYSTEM_NAMESPACE
KARPENTER_SERVICE_ACCOUNT = "karpenter"
# KEDA (chart kedacore/keda): its operator reads the job queue through EKS Pod Identity.
KEDA_NAMESPACE = "keda"
KEDA_OPERATOR_SERVICE_ACCOUNT = "keda-operator"

# --- Edge ------------------------------------------------------------------------------
# The ingress sets this tag on the ALB; the edge stack finds the ALB by it.
ALB_TAG_KEY = f"{KEY_PREFIX}alb"

# --- Model sync ------------------------------------------------------------------------
# Environment variable names shared by the Lambda's Terraform and its code.
ENV_CLUSTER_NAME = "CLUSTER_NAME"
# The Lambda acts only on records of this bucket (a notification configured by hand on
# another bucket cannot trigger a sync).
ENV_MODELS_BUCKET = "MODELS_BUCKET"
ENV_SSM_DOCUMENT = "SSM_DOCUMENT_NAME"
ENV_MODEL_PREFIXES = "MODEL_PREFIXES"
ENV_NODE_CLUSTER_TAG_KEY = "NODE_CLUSTER_TAG_KEY"
ENV_NODE_ROLE_TAG_KEY = "NODE_ROLE_TAG_KEY"
ENV_NODE_ROLE_VALUE = "NODE_ROLE_VALUE"


def script_variables(*, models_bucket: str, region: str) -> dict[str, str]:
    """The variables the GPU node scripts read, in one place (rendered into user-data)."""
    return {
        "MODELS_BUCKET": models_bucket,
        "AWS_REGION": region,
        "NODE_CACHE_ROOT": NODE_CACHE_ROOT,
        "MODELS_PATH": MODELS_PATH,
        "CACHE_MARKER_PATH": CACHE_MARKER_PATH,
        "SYNC_REQUEST_FLAG": SYNC_REQUEST_FLAG,
        "SYNC_SCRIPT_PATH": SYNC_SCRIPT_PATH,
        "SYNC_SERVICE_NAME": SYNC_SERVICE_NAME,
        "SYNC_TIMER_NAME": SYNC_TIMER_NAME,
        "SYNC_PATH_UNIT_NAME": SYNC_PATH_UNIT_NAME,
        "SYNC_RECONCILE_INTERVAL": SYNC_RECONCILE_INTERVAL,
        "CACHE_SKIPPED_PATH": CACHE_SKIPPED_PATH,
        "CACHE_DEADLINE_SCRIPT_PATH": CACHE_DEADLINE_SCRIPT_PATH,
        "CACHE_DEADLINE_SERVICE_NAME": CACHE_DEADLINE_SERVICE_NAME,
        "CACHE_DEADLINE_TIMER_NAME": CACHE_DEADLINE_TIMER_NAME,
        "METRICS_NAMESPACE": METRICS_NAMESPACE,
        "CACHE_DEADLINE_METRIC": CACHE_DEADLINE_METRIC,
        "METRIC_CLUSTER_DIMENSION": METRIC_CLUSTER_DIMENSION,
        # The sync script checks every MODEL_PREFIXES entry against the configuration's rule.
        "MODEL_PREFIX_PATTERN": rules.MODEL_PREFIX_ERE,
    }
