"""Authentication in front of ComfyUI: a Cognito user pool the ALB's HTTPS listener uses
(`auth-type: cognito` on the Ingress). Users are created by an administrator only."""

from __future__ import annotations

from cdktf_cdktf_provider_aws.cognito_user_pool import (
    CognitoUserPool,
    CognitoUserPoolAdminCreateUserConfig,
    CognitoUserPoolPasswordPolicy,
    CognitoUserPoolSoftwareTokenMfaConfiguration,
)
from cdktf_cdktf_provider_aws.cognito_user_pool_client import CognitoUserPoolClient
from cdktf_cdktf_provider_aws.cognito_user_pool_domain import CognitoUserPoolDomain
from constructs import Construct


class CognitoAuth(Construct):
    def __init__(self, scope: Construct, id_: str, *, project: str, account_id: str, domain: str) -> None:
        super().__init__(scope, id_)
        pool = CognitoUserPool(
            self,
            "pool",
            name=f"{project}-comfyui",
            # No self sign-up: an administrator invites every user.
            admin_create_user_config=CognitoUserPoolAdminCreateUserConfig(allow_admin_create_user_only=True),
            username_attributes=["email"],
            auto_verified_attributes=["email"],
            mfa_configuration="OPTIONAL",
            software_token_mfa_configuration=CognitoUserPoolSoftwareTokenMfaConfiguration(enabled=True),
            password_policy=CognitoUserPoolPasswordPolicy(
                minimum_length=14,
                require_lowercase=True,
                require_uppercase=True,
                require_numbers=True,
                require_symbols=True,
                temporary_password_validity_days=3,
            ),
            deletion_protection="ACTIVE",
        )
        client = CognitoUserPoolClient(
            self,
            "client",
            name=f"{project}-comfyui-alb",
            user_pool_id=pool.id,
            # The ALB authenticates with the authorization-code flow and needs a client secret.
            generate_secret=True,
            allowed_oauth_flows=["code"],
            allowed_oauth_flows_user_pool_client=True,
            allowed_oauth_scopes=["openid", "email"],
            supported_identity_providers=["COGNITO"],
            callback_urls=[f"https://{domain}/oauth2/idpresponse"],
            prevent_user_existence_errors="ENABLED",
            enable_token_revocation=True,
        )
        hosted = CognitoUserPoolDomain(self, "domain", domain=f"{project}-{account_id}", user_pool_id=pool.id)
        self.cognito_user_pool_arn = pool.arn
        self.cognito_client_id = client.id
        self.cognito_domain = hosted.domain
