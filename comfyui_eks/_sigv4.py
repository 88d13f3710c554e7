"""SigV4 signatures for the job API, made by botocore with the caller's own AWS credentials.

The job API is an API Gateway HTTP API with IAM authorization: API Gateway recomputes a
Signature Version 4 over the method, path, query, signed headers and the body's SHA-256 and
refuses any request whose signature differs. The signature is botocore's (SigV4Auth on an
AWSRequest), never computed here: canonicalisation has enough corner cases (double-encoded
paths, header folding, session tokens) that only the implementation AWS maintains is safe.

Credentials come from botocore's standard chain (environment, AWS_PROFILE and the shared
files, SSO, credential_process, container and instance roles) and are frozen per request,
so refreshable credentials (SSO, assumed roles) renew during a long `--wait` instead of
expiring halfway through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comfyui_eks.cli import CommandFailed

SERVICE = "execute-api"
NO_CREDENTIALS = "no AWS credentials: run `aws sso login` or set AWS_PROFILE"


def _session() -> Any:
    import botocore.session  # type: ignore[import-untyped]

    return botocore.session.get_session()


def configured_region() -> str | None:
    """The region of the AWS configuration (AWS_REGION, AWS_DEFAULT_REGION, the profile)."""
    from botocore.exceptions import BotoCoreError  # type: ignore[import-untyped]

    try:
        region = _session().get_config_variable("region")
    except BotoCoreError:  # e.g. AWS_PROFILE names a profile that does not exist
        return None
    return str(region) if region else None


class Signer:
    """Signs job API requests for one region with credentials from botocore's chain."""

    def __init__(self, credentials: Any, region: str) -> None:
        self.credentials = credentials
        self.region = region

    @classmethod
    def from_environment(cls, region: str) -> Signer:
        """Resolve the caller's credentials now, so a missing or expired login is one clear
        error before anything is sent (and not a 403 that looks like a missing policy)."""
        from botocore.exceptions import BotoCoreError

        try:
            credentials = _session().get_credentials()
        except BotoCoreError as exc:  # an expired SSO token, an unknown profile, a broken file
            detail = " ".join(str(exc).split())
            raise CommandFailed(
                f"AWS credentials could not be loaded ({detail}): run `aws sso login` or set AWS_PROFILE"
            ) from None
        if credentials is None:
            raise CommandFailed(NO_CREDENTIALS)
        return cls(credentials, region)

    def sign(self, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> dict[str, str]:
        """The headers to send: `headers` plus X-Amz-Date, X-Amz-Security-Token (temporary
        credentials) and Authorization. Every header in `headers` is signed, so the caller
        must send exactly these values; the body must be sent byte for byte as given."""
        from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
        from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
        from botocore.exceptions import BotoCoreError

        try:
            frozen = self.credentials.get_frozen_credentials()
        except BotoCoreError as exc:  # a refresh failed (the SSO session ended during a wait)
            detail = " ".join(str(exc).split())
            raise CommandFailed(f"AWS credentials could not be refreshed ({detail}): run `aws sso login`") from None
        request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
        SigV4Auth(frozen, SERVICE, self.region).add_auth(request)
        return {name: str(value) for name, value in request.headers.items()}
