"""The Mountpoint S3 CSI driver (Helm) and static PV/PVC pairs for the inputs and outputs
buckets, mounted by ComfyUI. Mountpoint writes new files sequentially only (no seek, no
rename, no append): ComfyUI writes to local scratch and an uploader copies finished files."""

from __future__ import annotations

from typing import Any

from cdktf_cdktf_provider_helm.release import Release
from cdktf_cdktf_provider_kubernetes.manifest import Manifest, ManifestTimeouts
from constructs import Construct

from core import names
from modules.helm import chart_values, to_yaml
from modules.literal import escape_literals
from modules.model_store import CSI_NAMESPACE, CSI_NODE_SERVICE_ACCOUNT

CSI_CHART_REPOSITORY = "https://awslabs.github.io/mountpoint-s3-csi-driver"
CSI_CHART_VERSION = "2.2.2"
CSI_DRIVER = "s3.csi.aws.com"


def csi_values() -> dict[str, Any]:
    # The Pod Identity association (platform stack) is bound to this service account name.
    return chart_values(
        "aws-mountpoint-s3-csi-driver", {"node": {"serviceAccount": {"name": CSI_NODE_SERVICE_ACCOUNT}}}
    )


def s3_volume(
    *, name: str, bucket: str, region: str, read_only: bool, allow_overwrite: bool, storage: str = "1200Gi"
) -> list[dict[str, Any]]:
    """A static PersistentVolume bound to one PersistentVolumeClaim in the ComfyUI namespace."""
    options = [
        f"region {region}",
        f"uid={names.COMFYUI_UID}",
        f"gid={names.COMFYUI_GID}",
        # The mount is made by a root-owned Mountpoint pod; other users need allow-other.
        "allow-other",
    ]
    if read_only:
        # Mountpoint then mounts with the kernel's read-only flag: no write of any kind.
        options.append("read-only")
    else:
        options.append("allow-delete")
        # Without allow-overwrite Mountpoint still creates new files; it only refuses to
        # replace an existing object.
        if allow_overwrite:
            options.append("allow-overwrite")
    pv_name = f"{names.COMFYUI_NAMESPACE}-{name}"
    mode = "ReadOnlyMany" if read_only else "ReadWriteMany"
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name},
        "spec": {
            "capacity": {"storage": storage},  # ignored by the driver, required by the API
            "accessModes": [mode],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "claimRef": {"namespace": names.COMFYUI_NAMESPACE, "name": name},
            "mountOptions": options,
            "csi": {
                "driver": CSI_DRIVER,
                # Must be unique per volume: Kubernetes handles a volume handle only once.
                "volumeHandle": f"s3-{pv_name}",
                "volumeAttributes": {"bucketName": bucket},
            },
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": names.COMFYUI_NAMESPACE},
        "spec": {
            "accessModes": [mode],
            "storageClassName": "",
            "resources": {"requests": {"storage": storage}},
            "volumeName": pv_name,
        },
    }
    return [pv, pvc]


def namespace_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": names.COMFYUI_NAMESPACE, "labels": {"app.kubernetes.io/part-of": "comfyui"}},
    }


def volume_manifests(*, inputs_bucket: str, outputs_bucket: str, region: str) -> list[dict[str, Any]]:
    return [
        # ComfyUI's upload API replaces a same-named input when asked to (overwrite=true).
        *s3_volume(name="inputs", bucket=inputs_bucket, region=region, read_only=False, allow_overwrite=True),
        # Outputs are never replaced: the uploader creates new names, and a collision fails
        # loudly instead of silently overwriting an earlier generation.
        *s3_volume(name="outputs", bucket=outputs_bucket, region=region, read_only=False, allow_overwrite=False),
    ]


class S3Volumes(Construct):
    """The CSI driver chart, the ComfyUI namespace, and the inputs/outputs PV/PVC pairs.

    `pod_stop_seconds`: how long the pods using the volumes may take to stop. On destroy the
    PVCs (pvc-protection finalizer) and the namespace exist until those pods are gone, and
    the kubernetes provider waits for that only 10 minutes by default, so a destroy during
    a running generation would fail half-way.
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        inputs_bucket: str,
        outputs_bucket: str,
        region: str,
        pod_stop_seconds: int,
    ) -> None:
        super().__init__(scope, id_)
        timeouts = ManifestTimeouts(delete=f"{pod_stop_seconds + 600}s")
        self.driver = Release(
            self,
            "csi_driver",
            name="aws-mountpoint-s3-csi-driver",
            namespace=CSI_NAMESPACE,
            repository=CSI_CHART_REPOSITORY,
            chart="aws-mountpoint-s3-csi-driver",
            version=CSI_CHART_VERSION,
            values=[to_yaml(csi_values())],
            wait=True,
        )
        self.namespace = Manifest(self, "namespace", manifest=escape_literals(namespace_manifest()), timeouts=timeouts)
        self.volumes = [
            Manifest(
                self,
                f"{m['kind'].lower()}_{m['metadata']['name']}",
                manifest=escape_literals(m),
                depends_on=[self.namespace, self.driver],
                timeouts=timeouts,
            )
            for m in volume_manifests(inputs_bucket=inputs_bucket, outputs_bucket=outputs_bucket, region=region)
        ]
