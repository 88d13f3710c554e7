"""ComfyUI on Kubernetes, as plain manifests (validated in tests with kubernetes-validate,
applied with kubernetes_manifest): service account, the pod's programs, Deployment, Service,
Ingress (ALB), PodDisruptionBudget and NetworkPolicy.

Readiness design (GPU node model cache): a node joins the cluster before its multi-GB model
download finishes; the pod's first init container waits for the node's cache-complete
marker, so ComfyUI never starts (and the pod is never Ready) on a half-filled cache.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import names
from modules.karpenter import GPU_NODE_LABEL

APP_LABELS = names.APP_LABELS
# Container paths (the image's entrypoint reads COMFYUI_* variables for them).
MODELS_MOUNT = "/models"
CACHE_MOUNT = "/node-cache"
LOCAL_OUTPUTS = "/outputs"  # local scratch: ComfyUI may seek/rename here (video encoders do)
S3_OUTPUTS = "/s3-outputs"  # Mountpoint S3: sequential writes of new files only
INPUTS = "/inputs"
SCRATCH = "/scratch"
HEALTH_PATH = "/system_stats"
# Outputs: copied to S3 after this many quiet seconds; local copies kept this long so
# ComfyUI's /view and its file numbering keep working.
UPLOAD_QUIET_SECONDS = 30
LOCAL_OUTPUT_RETAIN_SECONDS = 6 * 3600
# A running generation may take minutes: the pod gets this long to finish it on shutdown.
TERMINATION_GRACE_SECONDS = 900
# Model loading on first start: startup probe budget = period x failures.
STARTUP_PERIOD_SECONDS = 10
STARTUP_FAILURES = 90
# ALB idle timeout: ComfyUI's websocket is idle between progress messages; the ALB default
# (60 s) drops it every minute.
ALB_IDLE_TIMEOUT_SECONDS = 3600
STICKY_SECONDS = 86400

# The programs the pod runs besides ComfyUI, shipped in one ConfigMap and mounted read-only:
# linted and tested as the files they are. The job runner imports the job contract and the
# ComfyUI client as sibling modules, so they travel with it from where they live.
_REPO = Path(__file__).resolve().parent.parent
POD_PROGRAMS_DIR = _REPO / "modules" / "pod"
POD_PROGRAM_FILES = {
    "wait-for-model-cache.sh": POD_PROGRAMS_DIR / "wait-for-model-cache.sh",
    "outputs_uploader.py": POD_PROGRAMS_DIR / "outputs_uploader.py",
    "prestop_drain.py": POD_PROGRAMS_DIR / "prestop_drain.py",
    "job_runner.py": POD_PROGRAMS_DIR / "job_runner.py",
    "contract.py": _REPO / "lambda_src" / "jobs" / "contract.py",
    "comfy_client.py": _REPO / "comfyui_eks" / "comfy_client.py",
}
POD_PROGRAMS = tuple(POD_PROGRAM_FILES)
PROGRAMS_CONFIG_MAP = "comfyui-programs"
PROGRAMS_MOUNT = "/opt/comfyui-programs"
# The preStop hook leaves the uploader this long of the grace period for the last outputs.
PRESTOP_RESERVE_SECONDS = 60


@dataclass(frozen=True)
class JobRunnerSettings:
    """Where the job runner sidecar finds the job API's table, queue and buckets (references
    into the platform stack), and how long a job may run."""

    table: str
    queue_url: str
    inputs_bucket: str
    outputs_bucket: str
    region: str
    timeout_seconds: int


# The runner patches only its own Pod's annotations (do-not-disrupt, deletion cost); Roles
# cannot name a Pod whose name is not known in advance, so the Role covers the namespace's pods.
RUNNER_ROLE = "comfyui-job-runner"
SERVICE_ACCOUNT_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
RUNNER_HEARTBEAT = "/tmp/job-runner.heartbeat"


@dataclass(frozen=True)
class IngressSettings:
    """How ComfyUI is exposed (decided by the auth configuration)."""

    scheme: str  # "internal" | "internet-facing"
    alb_tag_value: str
    source_cidrs: Sequence[str]  # subnets the ALB lives in (NetworkPolicy ingress sources)
    inbound_cidrs: Sequence[str]  # who may reach the ALB (its security group)
    name: str  # the Ingress; each Ingress gets its own ALB
    subnet_ids: str | None = None  # comma-separated; None: the controller discovers them by tag
    domain: str | None = None
    certificate_arn: str | None = None
    cognito: dict[str, str] | None = None  # userPoolARN, userPoolClientID, userPoolDomain


def _meta(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": names.COMFYUI_NAMESPACE, "labels": dict(APP_LABELS), **extra}


def service_account() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(names.COMFYUI_SERVICE_ACCOUNT),
        # ComfyUI never talks to the Kubernetes API.
        "automountServiceAccountToken": False,
    }


def programs_config_map() -> dict[str, Any]:
    """The pod's programs, verbatim (Terraform-escaped where the stack places them)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(PROGRAMS_CONFIG_MAP),
        "data": {name: path.read_text(encoding="utf-8") for name, path in POD_PROGRAM_FILES.items()},
    }


def _image(image: str) -> dict[str, str]:
    """`image` is pinned by digest (resolved at plan time); Always then costs one manifest
    lookup per container start and never runs a stale or tampered local copy."""
    return {"image": image, "imagePullPolicy": "Always"}


def _program(name: str) -> str:
    return posixpath.join(PROGRAMS_MOUNT, name)


def _programs_mount() -> dict[str, Any]:
    return {"name": "programs", "mountPath": PROGRAMS_MOUNT, "readOnly": True}


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def job_runner_container(*, image: str, runner: JobRunnerSettings) -> dict[str, Any]:
    """A regular container (not a native sidecar): it receives SIGTERM while ComfyUI's preStop
    still drains, so it can hand a running job back to the queue within its grace."""
    return {
        "name": "job-runner",
        **_image(image),
        "command": ["python", _program("job_runner.py")],
        "env": [
            {"name": "JOBS_TABLE", "value": runner.table},
            {"name": "JOBS_QUEUE_URL", "value": runner.queue_url},
            {"name": "INPUTS_BUCKET", "value": runner.inputs_bucket},
            {"name": "OUTPUTS_BUCKET", "value": runner.outputs_bucket},
            {"name": "JOBS_TIMEOUT_SECONDS", "value": str(runner.timeout_seconds)},
            {"name": "AWS_REGION", "value": runner.region},
            {"name": "COMFYUI_URL", "value": f"http://127.0.0.1:{names.COMFYUI_PORT}"},
            {"name": "JOB_RUNNER_SCRATCH_DIR", "value": "/tmp"},
            {"name": "JOB_RUNNER_HEARTBEAT_FILE", "value": RUNNER_HEARTBEAT},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        # Restarted when its loop stops beating (a wedged call, a deadlock). The loop beats at
        # least every long poll (20 s) and, during a job, every lease-keeper tick.
        "livenessProbe": {
            "exec": {"command": ["/bin/sh", "-c", f'test -n "$(find {RUNNER_HEARTBEAT} -mmin -5)"']},
            "initialDelaySeconds": 60,
            "periodSeconds": 60,
            "failureThreshold": 3,
            "timeoutSeconds": 10,
        },
        "securityContext": _container_security(),
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "volumeMounts": [
            _programs_mount(),
            {"name": "runner-tmp", "mountPath": "/tmp"},
            # The Kubernetes API token, for this container only (ComfyUI never gets one).
            {"name": "runner-api-token", "mountPath": SERVICE_ACCOUNT_TOKEN_PATH, "readOnly": True},
        ],
    }


def runner_api_token_volume() -> dict[str, Any]:
    """What automountServiceAccountToken would mount, projected for the runner alone."""
    return {
        "name": "runner-api-token",
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ],
        },
    }


def runner_role() -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(RUNNER_ROLE),
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}],
    }


def runner_role_binding() -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(RUNNER_ROLE),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": RUNNER_ROLE},
        "subjects": [
            {"kind": "ServiceAccount", "name": names.COMFYUI_SERVICE_ACCOUNT, "namespace": names.COMFYUI_NAMESPACE}
        ],
    }


def deployment(*, image: str, model_cache_wait_seconds: int, runner: JobRunnerSettings) -> dict[str, Any]:
    """`model_cache_wait_seconds`: how long the init container waits for the node's model
    cache before the pod fails visibly (longer than the node's own deadline, after which the
    node replaces itself)."""
    marker = posixpath.join(CACHE_MOUNT, posixpath.relpath(names.CACHE_MARKER_PATH, names.NODE_CACHE_ROOT))
    http_probe = {"httpGet": {"path": HEALTH_PATH, "port": "http"}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta("comfyui"),
        "spec": {
            # No `replicas`: KEDA owns the count (scaling.*); Terraform must not fight it.
            "selector": {"matchLabels": dict(APP_LABELS)},
            # One GPU per pod and GPUs are scarce: replace pods one at a time, never surge.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "template": {
                # No static karpenter.sh/do-not-disrupt: the job runner annotates the pod (and
                # raises its deletion cost) only while it runs a job or an artist's prompt, so
                # drift, expiry and scale-down take idle pods first.
                "metadata": {"labels": dict(APP_LABELS)},
                "spec": {
                    "serviceAccountName": names.COMFYUI_SERVICE_ACCOUNT,
                    "automountServiceAccountToken": False,
                    "nodeSelector": dict(GPU_NODE_LABEL),
                    "tolerations": [{"key": names.GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": names.COMFYUI_UID,
                        "runAsGroup": names.COMFYUI_GID,
                        "fsGroup": names.COMFYUI_GID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "initContainers": [
                        {
                            "name": "wait-for-model-cache",
                            **_image(image),
                            "command": ["/bin/sh", _program("wait-for-model-cache.sh")],
                            "env": [
                                {"name": "MARKER", "value": marker},
                                {"name": "TIMEOUT_SECONDS", "value": str(model_cache_wait_seconds)},
                                {"name": "SYNC_SERVICE", "value": names.SYNC_SERVICE_NAME},
                            ],
                            "securityContext": _container_security(),
                            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
                            "volumeMounts": [
                                {"name": "node-cache", "mountPath": CACHE_MOUNT, "readOnly": True},
                                _programs_mount(),
                            ],
                        },
                        {
                            # Native sidecar (restartPolicy Always): outlives ComfyUI on shutdown,
                            # so outputs written during the grace period still reach S3.
                            "name": "outputs-uploader",
                            **_image(image),
                            "restartPolicy": "Always",
                            "command": [
                                "python",
                                _program("outputs_uploader.py"),
                                LOCAL_OUTPUTS,
                                S3_OUTPUTS,
                                "--prefix=$(POD_NAME)",
                                f"--quiet={UPLOAD_QUIET_SECONDS}",
                                f"--retain={LOCAL_OUTPUT_RETAIN_SECONDS}",
                            ],
                            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                            "securityContext": _container_security(),
                            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                            "volumeMounts": [
                                {"name": "local-outputs", "mountPath": LOCAL_OUTPUTS},
                                {"name": "s3-outputs", "mountPath": S3_OUTPUTS},
                                _programs_mount(),
                            ],
                        },
                    ],
                    "containers": [
                        {
                            "name": "comfyui",
                            **_image(image),
                            "ports": [{"name": "http", "containerPort": names.COMFYUI_PORT, "protocol": "TCP"}],
                            "env": [
                                {"name": "COMFYUI_PORT", "value": str(names.COMFYUI_PORT)},
                                {"name": "COMFYUI_OUTPUT_DIR", "value": LOCAL_OUTPUTS},
                                {"name": "COMFYUI_INPUT_DIR", "value": INPUTS},
                                {"name": "COMFYUI_SCRATCH_DIR", "value": SCRATCH},
                                # The root filesystem is read-only: libraries that cache under
                                # $HOME (torch, triton, huggingface) write to scratch instead.
                                {"name": "HOME", "value": f"{SCRATCH}/home"},
                                {"name": "XDG_CACHE_HOME", "value": f"{SCRATCH}/cache"},
                            ],
                            "resources": {
                                "requests": {"cpu": "2", "memory": "12Gi", names.GPU_RESOURCE: "1"},
                                "limits": {"memory": "24Gi", names.GPU_RESOURCE: "1"},
                            },
                            "startupProbe": {
                                **http_probe,
                                "periodSeconds": STARTUP_PERIOD_SECONDS,
                                "failureThreshold": STARTUP_FAILURES,
                                "timeoutSeconds": 5,
                            },
                            "readinessProbe": {
                                **http_probe,
                                "periodSeconds": 10,
                                "failureThreshold": 3,
                                "timeoutSeconds": 5,
                            },
                            # Generous: a long generation keeps the event loop busy, not dead.
                            "livenessProbe": {
                                **http_probe,
                                "periodSeconds": 30,
                                "failureThreshold": 10,
                                "timeoutSeconds": 10,
                            },
                            "lifecycle": {
                                "preStop": {
                                    "exec": {
                                        "command": [
                                            "python",
                                            _program("prestop_drain.py"),
                                            f"--port={names.COMFYUI_PORT}",
                                            f"--budget={TERMINATION_GRACE_SECONDS - PRESTOP_RESERVE_SECONDS}",
                                        ]
                                    }
                                }
                            },
                            "securityContext": _container_security(),
                            "volumeMounts": [
                                {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True},
                                {"name": "local-outputs", "mountPath": LOCAL_OUTPUTS},
                                {"name": "inputs", "mountPath": INPUTS},
                                {"name": "scratch", "mountPath": SCRATCH},
                                {"name": "tmp", "mountPath": "/tmp"},
                                _programs_mount(),
                            ],
                        },
                        job_runner_container(image=image, runner=runner),
                    ],
                    "volumes": [
                        {"name": "models", "hostPath": {"path": names.MODELS_PATH, "type": "Directory"}},
                        {
                            "name": "node-cache",
                            "hostPath": {"path": names.NODE_CACHE_ROOT, "type": "DirectoryOrCreate"},
                        },
                        {"name": "local-outputs", "emptyDir": {"sizeLimit": "50Gi"}},
                        {"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "5Gi"}},
                        {"name": "inputs", "persistentVolumeClaim": {"claimName": "inputs"}},
                        {"name": "s3-outputs", "persistentVolumeClaim": {"claimName": "outputs"}},
                        {"name": "programs", "configMap": {"name": PROGRAMS_CONFIG_MAP, "defaultMode": 0o444}},
                        # The runner stages one output file at a time here (read-only root).
                        {"name": "runner-tmp", "emptyDir": {"sizeLimit": "10Gi"}},
                        runner_api_token_volume(),
                    ],
                },
            },
        },
    }


def service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta("comfyui"),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(APP_LABELS),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def ingress(settings: IngressSettings) -> dict[str, Any]:
    annotations = {
        "alb.ingress.kubernetes.io/scheme": settings.scheme,
        "alb.ingress.kubernetes.io/target-type": "ip",
        "alb.ingress.kubernetes.io/healthcheck-path": HEALTH_PATH,
        "alb.ingress.kubernetes.io/load-balancer-attributes": (
            f"idle_timeout.timeout_seconds={ALB_IDLE_TIMEOUT_SECONDS}"
        ),
        "alb.ingress.kubernetes.io/target-group-attributes": (
            f"stickiness.enabled=true,stickiness.lb_cookie.duration_seconds={STICKY_SECONDS}"
        ),
        # The edge stack finds this ALB by this tag, never by a rebuilt name.
        "alb.ingress.kubernetes.io/tags": f"{names.ALB_TAG_KEY}={settings.alb_tag_value}",
    }
    if settings.certificate_arn:
        annotations.update(
            {
                "alb.ingress.kubernetes.io/listen-ports": json.dumps([{"HTTP": 80}, {"HTTPS": 443}]),
                "alb.ingress.kubernetes.io/ssl-redirect": "443",
                "alb.ingress.kubernetes.io/certificate-arn": settings.certificate_arn,
                "alb.ingress.kubernetes.io/ssl-policy": "ELBSecurityPolicy-TLS13-1-2-2021-06",
            }
        )
    else:
        annotations["alb.ingress.kubernetes.io/listen-ports"] = json.dumps([{"HTTP": 80}])
    annotations["alb.ingress.kubernetes.io/inbound-cidrs"] = ",".join(settings.inbound_cidrs)
    if settings.subnet_ids:
        # Exactly the subnets the NetworkPolicy admits (never a node or pod subnet).
        annotations["alb.ingress.kubernetes.io/subnets"] = settings.subnet_ids
    if settings.cognito:
        annotations.update(
            {
                "alb.ingress.kubernetes.io/auth-type": "cognito",
                "alb.ingress.kubernetes.io/auth-idp-cognito": json.dumps(settings.cognito, sort_keys=True),
                "alb.ingress.kubernetes.io/auth-on-unauthenticated-request": "authenticate",
                "alb.ingress.kubernetes.io/auth-scope": "openid email",
                "alb.ingress.kubernetes.io/auth-session-timeout": "43200",
            }
        )
    rule: dict[str, Any] = {
        "http": {
            "paths": [
                {
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": "comfyui", "port": {"name": "http"}}},
                }
            ]
        }
    }
    if settings.domain:
        rule["host"] = settings.domain
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _meta(settings.name, annotations=annotations),
        "spec": {"ingressClassName": "alb", "rules": [rule]},
    }


def pod_disruption_budget() -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta("comfyui"),
        # Evictions (node drains) take one pod at a time; the preStop hook lets it finish.
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(APP_LABELS)}},
    }


def network_policy(*exposures: IngressSettings) -> dict[str, Any]:
    sources: list[str] = []
    for settings in exposures:
        sources += [cidr for cidr in settings.source_cidrs if cidr not in sources]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta("comfyui"),
        "spec": {
            "podSelector": {"matchLabels": dict(APP_LABELS)},
            "policyTypes": ["Ingress"],
            # Only the ALBs (target-type ip: traffic comes from their ENIs in their subnets).
            "ingress": [
                {
                    "from": [{"ipBlock": {"cidr": cidr}} for cidr in sources],
                    "ports": [{"protocol": "TCP", "port": names.COMFYUI_PORT}],
                }
            ],
        },
    }


def comfyui_manifests(
    *,
    image: str,
    model_cache_wait_seconds: int,
    runner: JobRunnerSettings,
    settings: IngressSettings,
    api_settings: IngressSettings | None = None,
) -> dict[str, dict[str, Any]]:
    """Every object, keyed by its Terraform resource id. The ids are explicit and never
    derived from order or position: renaming one would make Terraform destroy and recreate a
    live object. `api_settings`: a second, internal Ingress (its own ALB) for machine callers
    beside a Cognito-protected one; both reach the same Service."""
    objects = {
        "comfyui_serviceaccount": service_account(),
        "comfyui_configmap": programs_config_map(),
        "comfyui_job_runner_role": runner_role(),
        "comfyui_job_runner_role_binding": runner_role_binding(),
        "comfyui_deployment": deployment(image=image, model_cache_wait_seconds=model_cache_wait_seconds, runner=runner),
        "comfyui_service": service(),
        "comfyui_ingress": ingress(settings),
        "comfyui_poddisruptionbudget": pod_disruption_budget(),
        "comfyui_networkpolicy": network_policy(*([settings] if api_settings is None else [settings, api_settings])),
    }
    if api_settings is not None:
        objects["comfyui_ingress_comfyui_api"] = ingress(api_settings)
    return objects
