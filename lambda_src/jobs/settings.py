"""Each Lambda's configuration, read from the environment Terraform sets (names in
`contract`). A missing or malformed variable is a deployment bug: it raises, loudly, on the
first invocation instead of running half-configured."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

try:  # imported as the package lambda_src.jobs (tests)
    from . import contract
except ImportError:  # packaged flat: every module at the root of the zip
    import contract  # type: ignore[no-redef]


class ConfigError(RuntimeError):
    """The Lambda's environment is incomplete or malformed."""


def _required(env: Mapping[str, str], *names: str) -> dict[str, str]:
    values = {name: (env.get(name) or "").strip() for name in names}
    missing = sorted(name for name, value in values.items() if not value)
    if missing:
        raise ConfigError(f"missing environment variables: {', '.join(missing)}")
    return values


@dataclass(frozen=True)
class ApiSettings:
    table: str
    queue_url: str
    inputs_bucket: str
    outputs_bucket: str
    retention_days: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ApiSettings:
        v = _required(
            env,
            contract.TABLE_ENV,
            contract.QUEUE_ENV,
            contract.INPUTS_BUCKET_ENV,
            contract.OUTPUTS_BUCKET_ENV,
            contract.RETENTION_DAYS_ENV,
        )
        raw_days = v[contract.RETENTION_DAYS_ENV]
        if not raw_days.isdigit() or not 1 <= int(raw_days) <= 3650:
            raise ConfigError(
                f"{contract.RETENTION_DAYS_ENV} must be a whole number of days (1..3650), not {raw_days!r}"
            )
        return cls(
            table=v[contract.TABLE_ENV],
            queue_url=v[contract.QUEUE_ENV],
            inputs_bucket=v[contract.INPUTS_BUCKET_ENV],
            outputs_bucket=v[contract.OUTPUTS_BUCKET_ENV],
            retention_days=int(raw_days),
        )


@dataclass(frozen=True)
class DeadLetterSettings:
    table: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DeadLetterSettings:
        return cls(table=_required(env, contract.TABLE_ENV)[contract.TABLE_ENV])


@dataclass(frozen=True)
class WebhookSettings:
    outputs_bucket: str
    secret_arn: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WebhookSettings:
        v = _required(env, contract.OUTPUTS_BUCKET_ENV, contract.WEBHOOK_SECRET_ENV)
        return cls(outputs_bucket=v[contract.OUTPUTS_BUCKET_ENV], secret_arn=v[contract.WEBHOOK_SECRET_ENV])
