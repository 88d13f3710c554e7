"""The job API's infrastructure (issue 10): IAM (SigV4) on every route, the Lambdas wired to
the contract's names, the queue's dead-letter policy from the config, the table's index, TTL,
stream and encryption, and a caller policy that grants exactly the API's routes."""

from __future__ import annotations

import json

from modules.jobs import contract


def _one(synth, rtype: str) -> dict:
    (resource,) = synth.resources("platform", rtype).values()
    return resource


def test_every_route_requires_sigv4(synth_variants):
    for synth in synth_variants.values():
        routes = synth.resources("platform", "aws_apigatewayv2_route").values()
        assert sorted(r["route_key"] for r in routes) == [
            "DELETE /jobs/{id}",
            "GET /jobs",
            "GET /jobs/{id}",
            "POST /jobs",
        ]
        assert all(r["authorization_type"] == "AWS_IAM" for r in routes)
        stage = _one(synth, "aws_apigatewayv2_stage")
        assert stage["name"] == "$default" and stage["access_log_settings"]["destination_arn"].startswith(
            "${aws_cloudwatch_log_group."
        )


def test_functions_read_the_contracts_names(synth):
    functions = {f["handler"]: f for f in synth.resources("platform", "aws_lambda_function").values()}
    for handler in ("api.handler", "dead_letters.handler", "webhooks.handler"):
        variables = functions[handler]["environment"]["variables"]
        assert {contract.TABLE_ENV, contract.QUEUE_ENV, contract.OUTPUTS_BUCKET_ENV} <= set(variables)
        assert variables[contract.MAX_ATTEMPTS_ENV] == str(synth.config.jobs.max_attempts)
    assert functions["api.handler"]["timeout"] < 30, "API Gateway's HTTP API waits 30 s at most"


def test_queue_gives_up_after_the_configured_attempts(synth_variants):
    for synth in synth_variants.values():
        queues = {q["name"]: q for q in synth.resources("platform", "aws_sqs_queue").values()}
        jobs = queues[f"{synth.config.project}-jobs"]
        assert json.loads(jobs["redrive_policy"])["maxReceiveCount"] == synth.config.jobs.max_attempts
        assert jobs["visibility_timeout_seconds"] == contract.LEASE_SECONDS
        assert jobs["kms_master_key_id"].startswith("${aws_kms_key.")


def test_table_schema_follows_the_contract(synth_variants):
    for synth in synth_variants.values():
        table = _one(synth, "aws_dynamodb_table")
        assert table["hash_key"] == contract.JOB_ID
        (index,) = table["global_secondary_index"]
        assert (index["name"], index["hash_key"], index["range_key"]) == (
            contract.STATUS_INDEX,
            contract.STATUS,
            contract.CREATED_AT,
        )
        assert table["ttl"] == {"attribute_name": contract.EXPIRES_AT, "enabled": True}
        assert table["stream_view_type"] == "NEW_AND_OLD_IMAGES"
        assert table["server_side_encryption"]["kms_key_arn"].startswith("${aws_kms_key.")
        assert table["point_in_time_recovery"]["enabled"] is True
        protect = synth.config.data_protection.prevent_destroy
        assert table.get("lifecycle", {}).get("prevent_destroy", False) is protect
        assert table["deletion_protection_enabled"] is protect


def test_webhooks_fire_only_on_transitions_into_a_terminal_status(synth):
    mapping = next(
        m for m in synth.resources("platform", "aws_lambda_event_source_mapping").values() if "filter_criteria" in m
    )
    (pattern,) = [json.loads(f["pattern"]) for f in mapping["filter_criteria"]["filter"]]
    assert pattern["dynamodb"]["NewImage"][contract.STATUS]["S"] == list(contract.TERMINAL)
    assert pattern["dynamodb"]["OldImage"][contract.STATUS]["S"] == [{"anything-but": list(contract.TERMINAL)}]
    assert mapping["batch_size"] == 1


def test_caller_policy_grants_the_routes_and_nothing_else(synth):
    documents = synth.stack("platform")["data"]["aws_iam_policy_document"]
    caller = next(d for k, d in documents.items() if k.startswith("jobs_api_caller_document"))
    (statement,) = caller["statement"]
    assert statement["actions"] == ["execute-api:Invoke"]
    assert sorted(r.split("}", 1)[1] for r in statement["resources"]) == [
        "/$default/DELETE/jobs/*",
        "/$default/GET/jobs",
        "/$default/GET/jobs/*",
        "/$default/POST/jobs",
    ]


def test_job_inputs_expire_with_their_records(synth):
    inputs = synth.config.inputs_bucket
    buckets = {
        f"${{aws_s3_bucket.{k}.id}}": b["bucket"] for k, b in synth.resources("platform", "aws_s3_bucket").items()
    }
    lifecycle = next(
        config
        for config in synth.resources("platform", "aws_s3_bucket_lifecycle_configuration").values()
        if buckets[config["bucket"]] == inputs
    )
    rule = next(r for r in lifecycle["rule"] if r["id"] == "expire-jobs")
    assert (
        rule["filter"][0]["prefix"] == "jobs/" and rule["expiration"][0]["days"] == synth.config.jobs.retention_days + 1
    )
