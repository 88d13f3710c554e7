"""<project>-edge: CloudFront in front of the ALB (only with edge.cloudfront: true).

Deployed after the workload stack: the ALB it fronts is created by the load balancer
controller from the workload's Ingress and found by tag at plan time.
"""

from __future__ import annotations

from cdktf import TerraformOutput
from constructs import Construct

from core import names
from core.config import Config
from modules.edge import Edge
from stacks.base import ProjectStack
from stacks.workload import WorkloadStack


class EdgeStack(ProjectStack):
    cycle = names.EDGE_CYCLE

    def __init__(self, scope: Construct, *, config: Config, workload: WorkloadStack) -> None:
        super().__init__(scope, config=config)
        self.add_dependency(workload)
        assert config.auth.domain and config.edge.certificate_arn  # guaranteed by Config validation
        edge = Edge(
            self,
            "edge",
            project=config.project,
            account_id=config.account_id,
            partition=config.partition,
            alb_tag_value=config.alb_tag_value,
            domain=config.auth.domain,
            certificate_arn=config.edge.certificate_arn,
            alb_has_https=config.auth.certificate_arn is not None,
            price_class=config.edge.price_class,
            origin_read_timeout_seconds=config.edge.origin_read_timeout_seconds,
            rate_limit_per_5_min=config.edge.rate_limit_per_5_min,
        )
        TerraformOutput(self, "distribution_domain_name", value=edge.distribution_domain_name)
        TerraformOutput(self, "comfyui_url", value=f"https://{config.auth.domain}")
