"""CloudFront in front of the ComfyUI ALB.

The ALB stays internal; CloudFront reaches it through a CloudFront VPC origin, so the only
way in from the internet is CloudFront (plus the WAF below), and authentication (Cognito on
the ALB's HTTPS listener) still applies. The ALB is found by the tag the Ingress sets from
`core.names.ALB_TAG_KEY`, never by a rebuilt name.
"""

from __future__ import annotations

import json
from typing import Any

from cdktf_cdktf_provider_aws.cloudfront_distribution import (
    CloudfrontDistribution,
    CloudfrontDistributionDefaultCacheBehavior,
    CloudfrontDistributionOrigin,
    CloudfrontDistributionOriginVpcOriginConfig,
    CloudfrontDistributionRestrictions,
    CloudfrontDistributionRestrictionsGeoRestriction,
    CloudfrontDistributionViewerCertificate,
)
from cdktf_cdktf_provider_aws.cloudfront_response_headers_policy import (
    CloudfrontResponseHeadersPolicy,
    CloudfrontResponseHeadersPolicySecurityHeadersConfig,
    CloudfrontResponseHeadersPolicySecurityHeadersConfigContentTypeOptions,
    CloudfrontResponseHeadersPolicySecurityHeadersConfigFrameOptions,
    CloudfrontResponseHeadersPolicySecurityHeadersConfigReferrerPolicy,
    CloudfrontResponseHeadersPolicySecurityHeadersConfigStrictTransportSecurity,
)
from cdktf_cdktf_provider_aws.cloudfront_vpc_origin import (
    CloudfrontVpcOrigin,
    CloudfrontVpcOriginVpcOriginEndpointConfig,
    CloudfrontVpcOriginVpcOriginEndpointConfigOriginSslProtocols,
)
from cdktf_cdktf_provider_aws.cloudwatch_log_group import CloudwatchLogGroup
from cdktf_cdktf_provider_aws.data_aws_lb import DataAwsLb
from cdktf_cdktf_provider_aws.wafv2_web_acl import (
    Wafv2WebAcl,
    Wafv2WebAclDefaultAction,
    Wafv2WebAclDefaultActionAllow,
    Wafv2WebAclVisibilityConfig,
)
from cdktf_cdktf_provider_aws.wafv2_web_acl_logging_configuration import (
    Wafv2WebAclLoggingConfiguration,
    Wafv2WebAclLoggingConfigurationRedactedFields,
    Wafv2WebAclLoggingConfigurationRedactedFieldsSingleHeader,
)
from constructs import Construct

from core import names
from modules.kms import EncryptionKey

# AWS managed policies (ids are global constants, documented in the CloudFront developer guide).
CACHING_DISABLED_POLICY_ID = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"  # Managed-CachingDisabled
ALL_VIEWER_ORIGIN_REQUEST_POLICY_ID = "216adef6-5c7f-47e4-b989-5492eafa07d3"  # Managed-AllViewer
ALL_METHODS = ["GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"]
ORIGIN_ID = "comfyui-alb"


def _managed_rule(name: str, priority: int, *, count_rules: tuple[str, ...] = ()) -> dict[str, Any]:
    statement: dict[str, Any] = {"ManagedRuleGroupStatement": {"VendorName": "AWS", "Name": name}}
    if count_rules:
        statement["ManagedRuleGroupStatement"]["RuleActionOverrides"] = [
            {"Name": r, "ActionToUse": {"Count": {}}} for r in count_rules
        ]
    return {
        "Name": name,
        "Priority": priority,
        "Statement": statement,
        "OverrideAction": {"None": {}},
        "VisibilityConfig": {"SampledRequestsEnabled": True, "CloudWatchMetricsEnabled": True, "MetricName": name},
    }


WAF_COUNTED_BODY_RULES = ("SizeRestrictions_BODY", "CrossSiteScripting_BODY", "GenericLFI_BODY", "GenericRFI_BODY")


def waf_rules(rate_limit_per_5_min: int) -> str:
    rules = [
        # Counted, not blocking, on bodies: workflow JSON and image uploads exceed the 8 KB
        # size limit, and the XSS/LFI/RFI body patterns match random bytes of uploaded images
        # (ComfyUI's PNGs carry their workflow JSON in the first chunks, which WAF inspects).
        # A managed-group copy scoped to /upload/* alone would exceed the 1,500 WCU limit.
        # https://repost.aws/knowledge-center/waf-upload-blocked-files
        _managed_rule("AWSManagedRulesCommonRuleSet", 10, count_rules=WAF_COUNTED_BODY_RULES),
        _managed_rule("AWSManagedRulesKnownBadInputsRuleSet", 20),
        _managed_rule("AWSManagedRulesAmazonIpReputationList", 30),
        {
            "Name": "rate-limit-per-ip",
            "Priority": 40,
            "Statement": {"RateBasedStatement": {"Limit": rate_limit_per_5_min, "AggregateKeyType": "IP"}},
            "Action": {"Block": {}},
            "VisibilityConfig": {
                "SampledRequestsEnabled": True,
                "CloudWatchMetricsEnabled": True,
                "MetricName": "rate-limit-per-ip",
            },
        },
    ]
    return json.dumps(rules, sort_keys=True)


# Headers the WAF log never stores: the Cognito session cookie (AWSELBAuthSessionCookie-*,
# valid for the whole session) and bearer tokens would otherwise sit in the log for a year.
# Lower case: the API returns header names in lower case (terraform-provider-aws).
WAF_REDACTED_HEADERS = ("cookie", "authorization")
# CLOUDFRONT-scoped web ACLs and their logs live in us-east-1 (per-resource region, aws provider 6).
CLOUDFRONT_REGION = "us-east-1"


class EdgeWebAcl(Construct):
    """The WAF in front of CloudFront and its request log. Every request CloudFront forwards
    passes the web ACL, so its log is the edge's request log (CloudFront's legacy standard
    logging needs ACL-enabled buckets, which this product forbids)."""

    def __init__(
        self, scope: Construct, id_: str, *, project: str, account_id: str, partition: str, rate_limit_per_5_min: int
    ) -> None:
        super().__init__(scope, id_)
        self.web_acl = Wafv2WebAcl(
            self,
            "waf",
            name=f"{project}-comfyui-edge",
            region=CLOUDFRONT_REGION,
            scope="CLOUDFRONT",
            default_action=Wafv2WebAclDefaultAction(allow=Wafv2WebAclDefaultActionAllow()),
            rule_json=waf_rules(rate_limit_per_5_min),
            visibility_config=Wafv2WebAclVisibilityConfig(
                cloudwatch_metrics_enabled=True, metric_name=f"{project}-comfyui-edge", sampled_requests_enabled=True
            ),
        )
        # WAF log groups must be named aws-waf-logs-* and live in the web ACL's region.
        key = EncryptionKey(
            self,
            "logs_key",
            alias=f"{project}-edge-logs",
            description=f"{project}: CloudFront WAF logs",
            account_id=account_id,
            partition=partition,
            logs_regions=[CLOUDFRONT_REGION],
            region=CLOUDFRONT_REGION,
        )
        waf_logs = CloudwatchLogGroup(
            self,
            "waf_logs",
            name=f"aws-waf-logs-{project}-comfyui-edge",
            region=CLOUDFRONT_REGION,
            retention_in_days=365,
            kms_key_id=key.key_arn,
        )
        Wafv2WebAclLoggingConfiguration(
            self,
            "waf_logging",
            region=CLOUDFRONT_REGION,
            resource_arn=self.web_acl.arn,
            log_destination_configs=[waf_logs.arn],
            redacted_fields=[
                Wafv2WebAclLoggingConfigurationRedactedFields(
                    single_header=Wafv2WebAclLoggingConfigurationRedactedFieldsSingleHeader(name=header)
                )
                for header in WAF_REDACTED_HEADERS
            ],
        )
        self.arn = self.web_acl.arn


class Edge(Construct):
    """CloudFront (through a VPC origin to the internal ALB), its security headers and WAF."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        project: str,
        account_id: str,
        partition: str,
        alb_tag_value: str,
        domain: str,
        certificate_arn: str,
        alb_has_https: bool,
        price_class: str,
        origin_read_timeout_seconds: int,
        rate_limit_per_5_min: int,
    ) -> None:
        super().__init__(scope, id_)
        alb = DataAwsLb(self, "alb", tags={names.ALB_TAG_KEY: alb_tag_value})
        origin = CloudfrontVpcOrigin(
            self,
            "vpc_origin",
            vpc_origin_endpoint_config=[
                CloudfrontVpcOriginVpcOriginEndpointConfig(
                    name=f"{project}-comfyui",
                    arn=alb.arn,
                    http_port=80,
                    https_port=443,
                    origin_protocol_policy="https-only" if alb_has_https else "http-only",
                    origin_ssl_protocols=[
                        CloudfrontVpcOriginVpcOriginEndpointConfigOriginSslProtocols(items=["TLSv1.2"], quantity=1)
                    ],
                )
            ],
        )
        waf = EdgeWebAcl(
            self,
            "web_acl",
            project=project,
            account_id=account_id,
            partition=partition,
            rate_limit_per_5_min=rate_limit_per_5_min,
        )
        headers = CloudfrontResponseHeadersPolicy(
            self,
            "security_headers",
            name=f"{project}-comfyui-security-headers",
            security_headers_config=CloudfrontResponseHeadersPolicySecurityHeadersConfig(
                strict_transport_security=CloudfrontResponseHeadersPolicySecurityHeadersConfigStrictTransportSecurity(
                    access_control_max_age_sec=31536000, include_subdomains=True, preload=True, override=True
                ),
                content_type_options=CloudfrontResponseHeadersPolicySecurityHeadersConfigContentTypeOptions(
                    override=True
                ),
                frame_options=CloudfrontResponseHeadersPolicySecurityHeadersConfigFrameOptions(
                    frame_option="SAMEORIGIN", override=True
                ),
                referrer_policy=CloudfrontResponseHeadersPolicySecurityHeadersConfigReferrerPolicy(
                    referrer_policy="strict-origin-when-cross-origin", override=True
                ),
            ),
        )
        distribution = CloudfrontDistribution(
            self,
            "distribution",
            enabled=True,
            comment=f"{project}: ComfyUI",
            aliases=[domain],
            price_class=price_class,
            http_version="http2and3",
            is_ipv6_enabled=True,
            web_acl_id=waf.arn,
            origin=[
                CloudfrontDistributionOrigin(
                    origin_id=ORIGIN_ID,
                    domain_name=alb.dns_name,
                    vpc_origin_config=CloudfrontDistributionOriginVpcOriginConfig(
                        vpc_origin_id=origin.id,
                        origin_read_timeout=origin_read_timeout_seconds,
                        origin_keepalive_timeout=60,
                    ),
                )
            ],
            default_cache_behavior=CloudfrontDistributionDefaultCacheBehavior(
                target_origin_id=ORIGIN_ID,
                allowed_methods=ALL_METHODS,
                cached_methods=["GET", "HEAD"],
                viewer_protocol_policy="redirect-to-https",
                # The API is never cached; every header (Host for the ALB's certificate and
                # Cognito redirect, the websocket upgrade), cookie and query string reaches it.
                cache_policy_id=CACHING_DISABLED_POLICY_ID,
                origin_request_policy_id=ALL_VIEWER_ORIGIN_REQUEST_POLICY_ID,
                response_headers_policy_id=headers.id,
                compress=True,
            ),
            restrictions=CloudfrontDistributionRestrictions(
                geo_restriction=CloudfrontDistributionRestrictionsGeoRestriction(restriction_type="none")
            ),
            viewer_certificate=CloudfrontDistributionViewerCertificate(
                acm_certificate_arn=certificate_arn,
                ssl_support_method="sni-only",
                minimum_protocol_version="TLSv1.2_2021",
            ),
        )
        self.distribution_domain_name = distribution.domain_name
        self.distribution_id = distribution.id
