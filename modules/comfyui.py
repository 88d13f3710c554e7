"""ComfyUI on Kubernetes, as plain manifests (validated in tests with kubernetes-validate,
applied with kubernetes_manifest): service account, uploader script, Deployment, Service,
Ingress (ALB), PodDisruptionBudget and NetworkPolicy.

Readiness design (GPU node model cache): a node joins the cluster before its multi-GB model
download finishes; the pod's first init container waits for the node's cache-complete
marker, so ComfyUI never starts (and the pod is never Ready) on a half-filled cache.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any, Sequence

from core import names
from modules.karpenter import GPU_NODE_LABEL

APP_LABELS = {"app.kubernetes.io/name": "comfyui", "app.kubernetes.io/part-of": "comfyui"}
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
# First fill of a node's model cache: multi-GB downloads at instance-store speed.
MODEL_CACHE_WAIT_SECONDS = 3600
# A running generation may take minutes: the pod gets this long to finish it on shutdown.
TERMINATION_GRACE_SECONDS = 900
# Model loading on first start: startup probe budget = period x failures.
STARTUP_PERIOD_SECONDS = 10
STARTUP_FAILURES = 90
# ALB idle timeout: ComfyUI's websocket is idle between progress messages; the ALB default
# (60 s) drops it every minute.
ALB_IDLE_TIMEOUT_SECONDS = 3600
STICKY_SECONDS = 86400

UPLOADER_SCRIPT = '''\
"""Copy finished ComfyUI outputs from local scratch to the S3 mount, never overwriting.

Mountpoint for S3 supports only sequential writes of new files, so ComfyUI writes locally
(seek/rename work) and this copies each file once it has been quiet for QUIET seconds to
DST/PREFIX/<same relative path> (PREFIX: the pod name, so pods and restarts never collide).
ComfyUI numbers files from what is in its local folder, so local copies are kept for RETAIN
seconds (its /view keeps working) and a name that still exists in S3 gets a -N suffix
instead of replacing the earlier object. On SIGTERM (after ComfyUI exited: native sidecar)
it copies everything that is left.
"""
import os, signal, sys, time

SRC, DST, QUIET, RETAIN, PREFIX = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
stopping = False
done = {}  # local path -> (mtime_ns, size) when it was copied


def stop(*_):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, stop)


def create_new(path):
    """Open a file that does not exist yet (exclusive create): name, name-1, name-2, ..."""
    base, ext = os.path.splitext(path)
    n = 0
    while True:
        candidate = path if n == 0 else f"{base}-{n}{ext}"
        try:
            return candidate, open(candidate, "xb")
        except FileExistsError:
            n += 1


def sweep(quiet):
    now = time.time()
    for root, _, files in os.walk(SRC):
        for name in files:
            src = os.path.join(root, name)
            try:
                st = os.stat(src)
                stamp = (st.st_mtime_ns, st.st_size)
                if done.get(src) == stamp:
                    if now - st.st_mtime > RETAIN:
                        os.remove(src)
                        del done[src]
                    continue
                if now - st.st_mtime < quiet:
                    continue
                dst = os.path.join(DST, PREFIX, os.path.relpath(src, SRC))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                with open(src, "rb") as reader:
                    written, writer = create_new(dst)
                    with writer:
                        while chunk := reader.read(8 << 20):
                            writer.write(chunk)
                done[src] = stamp
                print("uploaded", repr(os.path.relpath(written, DST)), flush=True)
            except OSError as exc:
                print("retrying later:", repr(src), exc, file=sys.stderr, flush=True)


while not stopping:
    sweep(QUIET)
    time.sleep(5)
sweep(0)
'''

PRESTOP_SCRIPT = (
    "import json, time, urllib.request\n"
    "deadline = time.time() + {budget}\n"
    "while time.time() < deadline:\n"
    "    try:\n"
    "        q = json.load(urllib.request.urlopen('http://127.0.0.1:{port}/queue', timeout=5))\n"
    "    except Exception:\n"
    "        break\n"
    "    if not q.get('queue_running') and not q.get('queue_pending'):\n"
    "        break\n"
    "    time.sleep(5)\n"
)


@dataclass(frozen=True)
class IngressSettings:
    """How ComfyUI is exposed (decided by the auth configuration)."""

    scheme: str  # "internal" | "internet-facing"
    alb_tag_value: str
    source_cidrs: Sequence[str]  # subnets the ALB lives in (NetworkPolicy ingress sources)
    inbound_cidrs: Sequence[str]  # who may reach the ALB (its security group)
    name: str  # the Ingress; each Ingress gets its own ALB
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


def uploader_config_map() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta("comfyui-uploader"),
        "data": {"uploader.py": UPLOADER_SCRIPT},
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def deployment(*, image: str, replicas: int) -> dict[str, Any]:
    marker = posixpath.join(CACHE_MOUNT, posixpath.relpath(names.CACHE_MARKER_PATH, names.NODE_CACHE_ROOT))
    http_probe = {"httpGet": {"path": HEALTH_PATH, "port": "http"}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta("comfyui"),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(APP_LABELS)},
            # One GPU per pod and GPUs are scarce: replace pods one at a time, never surge.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "template": {
                "metadata": {
                    "labels": dict(APP_LABELS),
                    # Karpenter never voluntarily disrupts (consolidates, drifts) a node running this pod.
                    "annotations": {"karpenter.sh/do-not-disrupt": "true"},
                },
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
                            "image": image,
                            # A deadline, so a node whose sync keeps failing shows up as an
                            # init error on the pod instead of waiting silently forever.
                            "command": [
                                "/bin/sh",
                                "-c",
                                'deadline=$(( $(date +%s) + TIMEOUT )); until [ -f "$MARKER" ]; do '
                                'if [ "$(date +%s)" -ge "$deadline" ]; then echo "model cache not complete after ${TIMEOUT}s: '
                                f'check journalctl -u {names.SYNC_SERVICE_NAME} on the node" >&2; exit 1; fi; '
                                'echo "waiting for the node model cache ($MARKER)"; sleep 10; done',
                            ],
                            "env": [
                                {"name": "MARKER", "value": marker},
                                {"name": "TIMEOUT", "value": str(MODEL_CACHE_WAIT_SECONDS)},
                            ],
                            "securityContext": _container_security(),
                            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
                            "volumeMounts": [{"name": "node-cache", "mountPath": CACHE_MOUNT, "readOnly": True}],
                        },
                        {
                            # Native sidecar (restartPolicy Always): outlives ComfyUI on shutdown,
                            # so outputs written during the grace period still reach S3.
                            "name": "outputs-uploader",
                            "image": image,
                            "restartPolicy": "Always",
                            "command": [
                                "python",
                                "/opt/uploader/uploader.py",
                                LOCAL_OUTPUTS,
                                S3_OUTPUTS,
                                str(UPLOAD_QUIET_SECONDS),
                                str(LOCAL_OUTPUT_RETAIN_SECONDS),
                                "$(POD_NAME)",
                            ],
                            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                            "securityContext": _container_security(),
                            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                            "volumeMounts": [
                                {"name": "local-outputs", "mountPath": LOCAL_OUTPUTS},
                                {"name": "s3-outputs", "mountPath": S3_OUTPUTS},
                                {"name": "uploader", "mountPath": "/opt/uploader", "readOnly": True},
                            ],
                        },
                    ],
                    "containers": [
                        {
                            "name": "comfyui",
                            "image": image,
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
                            "readinessProbe": {**http_probe, "periodSeconds": 10, "failureThreshold": 3, "timeoutSeconds": 5},
                            # Generous: a long generation keeps the event loop busy, not dead.
                            "livenessProbe": {**http_probe, "periodSeconds": 30, "failureThreshold": 10, "timeoutSeconds": 10},
                            "lifecycle": {
                                "preStop": {
                                    "exec": {
                                        "command": [
                                            "python",
                                            "-c",
                                            PRESTOP_SCRIPT.format(budget=TERMINATION_GRACE_SECONDS - 60, port=names.COMFYUI_PORT),
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
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "models", "hostPath": {"path": names.MODELS_PATH, "type": "Directory"}},
                        {"name": "node-cache", "hostPath": {"path": names.NODE_CACHE_ROOT, "type": "DirectoryOrCreate"}},
                        {"name": "local-outputs", "emptyDir": {"sizeLimit": "50Gi"}},
                        {"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "5Gi"}},
                        {"name": "inputs", "persistentVolumeClaim": {"claimName": "inputs"}},
                        {"name": "s3-outputs", "persistentVolumeClaim": {"claimName": "outputs"}},
                        {"name": "uploader", "configMap": {"name": "comfyui-uploader", "defaultMode": 0o444}},
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
        "alb.ingress.kubernetes.io/load-balancer-attributes": f"idle_timeout.timeout_seconds={ALB_IDLE_TIMEOUT_SECONDS}",
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
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "comfyui", "port": {"name": "http"}}}}
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
    *, image: str, replicas: int, settings: IngressSettings, api_settings: IngressSettings | None = None
) -> list[dict[str, Any]]:
    """`api_settings`: a second, internal Ingress (its own ALB) for machine callers beside a
    Cognito-protected one; both reach the same Service."""
    exposures = [settings] if api_settings is None else [settings, api_settings]
    return [
        service_account(),
        uploader_config_map(),
        deployment(image=image, replicas=replicas),
        service(),
        *(ingress(e) for e in exposures),
        pod_disruption_budget(),
        network_policy(*exposures),
    ]
