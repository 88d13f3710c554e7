"""<project>-state: the bootstrap. Deployed first, with a local state file."""

from __future__ import annotations

from cdktf import LocalBackend, TerraformOutput
from constructs import Construct

from core import names
from core.config import Config
from modules.state import TerraformState
from stacks.base import ProjectStack


class StateStack(ProjectStack):
    cycle = names.STATE_CYCLE

    def __init__(self, scope: Construct, *, config: Config) -> None:
        super().__init__(scope, config=config, remote_state=False)
        # Relative to cdktf.out/stacks/<stack>/, i.e. the repository root: the path stays out
        # of the synthesized JSON's machine-specific parts and survives re-synthesis (which
        # rewrites cdktf.out/). Keep this file safe, or migrate it into the bucket afterwards.
        LocalBackend(self, path=f"../../../{config.local_state_file}")
        self.state = TerraformState(
            self,
            "state",
            bucket_name=config.state_bucket,
            log_bucket_name=config.state_log_bucket,
            key_alias=config.state_kms_alias,
            project=config.project,
            account_id=config.account_id,
            partition=config.partition,
            region=config.region,
            prevent_destroy=config.data_protection.prevent_destroy,
        )
        TerraformOutput(self, "state_bucket_name", value=self.state.bucket_name)
        TerraformOutput(self, "state_kms_key_arn", value=self.state.kms_key_arn)
