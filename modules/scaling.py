"""Scaling that follows demand: KEDA (chart) and a ScaledObject on the ComfyUI Deployment,
triggered by the job queue's depth and by a working-hours schedule.

Outside the schedule and with no jobs, replicas go to `scaling.min_replicas` (0 by default)
and Karpenter removes the empty GPU nodes. The ScaledObject and its TriggerAuthentication are
applied through the local manifests chart after KEDA's chart has installed their CRDs (a
kubernetes_manifest would need the CRDs at plan time; see modules/karpenter.py).
"""

from __future__ import annotations

from typing import Any

from cdktf_cdktf_provider_helm.release import Release
from constructs import Construct

from core import names
from core.config import ScalingConfig, ScheduleConfig
from modules.cluster import SYSTEM_NODE_LABEL
from modules.helm import chart_values, manifests_chart, to_yaml

KEDA_CHART_REPOSITORY = "https://kedacore.github.io/charts"
# 2.20.2: the version whose ScaledObject CRD the tests validate against (tests/data/crds).
KEDA_CHART_VERSION = "2.20.2"
TRIGGER_AUTHENTICATION = "comfyui-jobs-queue"
SCALED_OBJECT = "comfyui"
# cron's day-of-week numbers (0 = Sunday).
_CRON_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}


def cron(schedule: ScheduleConfig, clock: str) -> str:
    """A KEDA cron trigger's start or end: "MM HH * * <days>"."""
    hours, minutes = clock.split(":")
    days = ",".join(str(_CRON_DAYS[d]) for d in schedule.days)
    return f"{int(minutes)} {int(hours)} * * {days}"


def trigger_authentication() -> dict[str, Any]:
    """KEDA's operator authenticates to SQS with its own EKS Pod Identity credentials."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": TRIGGER_AUTHENTICATION, "namespace": names.COMFYUI_NAMESPACE},
        "spec": {"podIdentity": {"provider": "aws"}},
    }


def scaled_object(*, scaling: ScalingConfig, queue_url: str, region: str, deployment: str) -> dict[str, Any]:
    triggers: list[dict[str, Any]] = [
        {
            # Jobs waiting and running (in flight): a replica per `jobs_per_replica` of them.
            "type": "aws-sqs-queue",
            "authenticationRef": {"name": TRIGGER_AUTHENTICATION},
            "metadata": {
                "queueURL": queue_url,
                "queueLength": str(scaling.jobs_per_replica),
                "awsRegion": region,
                "scaleOnInFlight": "true",
            },
        }
    ]
    if scaling.schedule is not None:
        triggers.append(
            {
                # Warm replicas during working hours, for artists in the browser.
                "type": "cron",
                "metadata": {
                    "timezone": scaling.schedule.timezone,
                    "start": cron(scaling.schedule, scaling.schedule.start),
                    "end": cron(scaling.schedule, scaling.schedule.end),
                    "desiredReplicas": str(scaling.schedule.warm_replicas),
                },
            }
        )
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": SCALED_OBJECT, "namespace": names.COMFYUI_NAMESPACE},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "cooldownPeriod": scaling.cooldown_seconds,
            "pollingInterval": 15,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        # Scale down one pod at a time after a quiet period: the idle pods go
                        # first (the runner marks busy ones with a high deletion cost).
                        "scaleDown": {
                            "stabilizationWindowSeconds": scaling.cooldown_seconds,
                            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                        }
                    }
                }
            },
            "triggers": triggers,
        },
    }


def keda_values() -> dict[str, Any]:
    return chart_values("keda", {"nodeSelector": dict(SYSTEM_NODE_LABEL)})


class Scaling(Construct):
    """KEDA's chart, then (explicit ordering) the ScaledObject and its TriggerAuthentication."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        scaling: ScalingConfig,
        queue_url: str,
        region: str,
        deployment: str,
        depends_on: list[Any],
    ) -> None:
        super().__init__(scope, id_)
        self.keda = Release(
            self,
            "keda",
            name="keda",
            namespace=names.KEDA_NAMESPACE,
            create_namespace=True,
            repository=KEDA_CHART_REPOSITORY,
            chart="keda",
            version=KEDA_CHART_VERSION,
            values=[to_yaml(keda_values())],
            wait=True,
            atomic=True,
            cleanup_on_fail=True,
        )
        self.objects = Release(
            self,
            "scaled_object",
            name="comfyui-scaling",
            namespace=names.COMFYUI_NAMESPACE,
            chart=manifests_chart(self),
            values=[
                to_yaml(
                    {
                        "manifests": [
                            trigger_authentication(),
                            scaled_object(scaling=scaling, queue_url=queue_url, region=region, deployment=deployment),
                        ]
                    }
                )
            ],
            depends_on=[self.keda, *depends_on],
        )
