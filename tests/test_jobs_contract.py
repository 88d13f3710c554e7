"""The job contract (lambda_src/jobs/contract.py): key layout, messages, and every conditional
update applied to a real table shape in moto's DynamoDB.

Moto behaviours relied on (moto 5.2.5): condition expressions with NOT/IN/attribute_exists
and comparisons against a missing attribute (false) are evaluated like DynamoDB; a failed
condition raises ConditionalCheckFailedException and never creates the item.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from lambda_src.jobs import contract
from tests.helpers import create_jobs_table

REGION = "us-west-2"
TABLE = "comfy-jobs"
T0 = 1_700_000_000
LEASE = contract.LEASE_SECONDS


def queued_item(job_id: str, created_at: int = T0, **extra: dict[str, Any]) -> dict[str, Any]:
    """A job item as POST /jobs writes it (typed attribute values)."""
    return {
        contract.JOB_ID: {"S": job_id},
        contract.STATUS: {"S": contract.QUEUED},
        contract.CREATED_AT: {"N": str(created_at)},
        contract.UPDATED_AT: {"N": str(created_at)},
        contract.EXPIRES_AT: {"N": str(created_at + 30 * 86400)},
        contract.ATTEMPTS: {"N": "0"},
        contract.INPUTS: {"M": {}},
        **extra,
    }


@pytest.fixture(scope="module")
def ddb(tmp_path_factory):
    """One mocked account and table for the module (moto calls cost ~10 ms each here, setting
    up an account much more); every test works on jobs of its own."""
    none = str(tmp_path_factory.mktemp("aws") / "none")
    with pytest.MonkeyPatch.context() as patch:
        for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
            patch.delenv(key, raising=False)
        patch.setenv("AWS_CONFIG_FILE", none)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", none)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        with mock_aws():
            client = boto3.client("dynamodb", region_name=REGION)
            create_jobs_table(client, TABLE)
            yield client


class Jobs:
    """Apply contract updates to one table: the new item, or None if the condition failed."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def new(self, **extra: dict[str, Any]) -> str:
        job_id = uuid.uuid4().hex
        self.client.put_item(TableName=TABLE, Item=queued_item(job_id, **extra))
        return job_id

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self.client.get_item(TableName=TABLE, Key={contract.JOB_ID: {"S": job_id}}, ConsistentRead=True).get(
            "Item"
        )

    def apply(self, job_id: str, update: dict[str, Any]) -> dict[str, Any] | None:
        try:
            response = self.client.update_item(TableName=TABLE, Key={contract.JOB_ID: {"S": job_id}}, **update)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ConditionalCheckFailedException", exc
            return None
        return response.get("Attributes", {})


@pytest.fixture
def jobs(ddb):
    return Jobs(ddb)


def s(item: dict[str, Any] | None, attr: str) -> Any:
    """A plain value of a typed item attribute (None when absent)."""
    if not item or attr not in item:
        return None
    ((kind, value),) = item[attr].items()
    return int(value) if kind == "N" else value


# --- keys, messages, names --------------------------------------------------------------------


def test_s3_key_layout():
    job = "0123456789abcdef0123456789abcdef"
    assert contract.workflow_key(job) == f"jobs/{job}/workflow.json"
    assert contract.input_key(job, "cat.png") == f"jobs/{job}/inputs/cat.png"
    assert contract.output_prefix(job) == f"jobs/{job}/"
    assert contract.comfyui_subfolder(job) == f"jobs/{job}/comfyui"
    # Never a prefix of what the API writes into the same bucket (ComfyUI's input folder).
    assert not contract.input_key(job, "x.png").startswith(contract.comfyui_subfolder(job) + "/")
    assert not contract.workflow_key(job).startswith(contract.comfyui_subfolder(job) + "/")
    # Inputs and the workflow live under the job's own prefix (the runner reads only jobs/*).
    assert contract.input_key(job, "x").startswith(contract.output_prefix(job))


def test_message_round_trip_and_refusals():
    job = uuid.uuid4().hex
    assert contract.parse_message(contract.message_body(job, None)) == (job, None)
    workflow = {"3": {"class_type": "KSampler", "inputs": {"seed": 1}}}
    body = contract.message_body(job, workflow)
    assert contract.parse_message(body) == (job, workflow)
    assert body == contract.message_body(job, dict(reversed(list(workflow.items()))))  # canonical
    for bad in (
        '{"job_id": "x"}',
        "[1]",
        '{"job_id": 5}',
        f'{{"job_id": "{job.upper()}"}}',
        f'{{"job_id": "{job}", "workflow": 1}}',
    ):
        with pytest.raises(ValueError):
            contract.parse_message(bad)
    with pytest.raises(ValueError):
        contract.parse_message("not json")


def test_client_token_keys_are_scoped_per_caller_and_never_job_ids():
    a = contract.client_token_key("arn:aws:sts::123456789012:assumed-role/A", "t-1")
    assert a == contract.client_token_key("arn:aws:sts::123456789012:assumed-role/A", "t-1")
    assert a != contract.client_token_key("arn:aws:sts::123456789012:assumed-role/B", "t-1")
    assert a != contract.client_token_key("arn:aws:sts::123456789012:assumed-role/A", "t-2")
    # "A\nt" + "-1" vs "A" + "\nt-1" cannot be confused: the separator is not in ARNs.
    assert a.startswith(contract.CLIENT_TOKEN_KEY_PREFIX)
    assert not contract.JOB_ID_PATTERN.fullmatch(a)
    assert "t-1" not in a and "assumed-role" not in a


def test_names_are_stable():
    """The runner and the Terraform depend on these exact strings."""
    assert (contract.TABLE_ENV, contract.QUEUE_ENV, contract.INPUTS_BUCKET_ENV, contract.OUTPUTS_BUCKET_ENV) == (
        "JOBS_TABLE",
        "JOBS_QUEUE_URL",
        "INPUTS_BUCKET",
        "OUTPUTS_BUCKET",
    )
    assert contract.WEBHOOK_SECRET_ENV == "WEBHOOK_SECRET_ARN"
    assert contract.STATUSES == ("queued", "running", "succeeded", "failed", "cancelled")
    assert set(contract.TERMINAL) == {"succeeded", "failed", "cancelled"}
    assert contract.STATUS_INDEX == "status-created_at"
    assert contract.INPUT_NAME_PATTERN.fullmatch("cat_01.png")
    for bad in (".hidden", "a/b.png", "-x", "", "a" * 129, "ü.png", "a b.png"):
        assert not contract.INPUT_NAME_PATTERN.fullmatch(bad), bad
    assert re.fullmatch(r"[0-9a-f]{32}", uuid.uuid4().hex)
    assert contract.JOB_ID_PATTERN.fullmatch(uuid.uuid4().hex)


# --- claim ----------------------------------------------------------------------------------


def test_claim_takes_a_queued_job(jobs):
    job = jobs.new()
    item = jobs.apply(job, contract.claim_update(runner="pod-a", at=T0 + 5))
    assert s(item, contract.STATUS) == contract.RUNNING
    assert s(item, contract.RUNNER) == "pod-a"
    assert s(item, contract.LEASE_UNTIL) == T0 + 5 + LEASE
    assert s(item, contract.ATTEMPTS) == 1
    assert s(item, contract.STARTED_AT) == T0 + 5


def test_claim_twice_one_wins(jobs):
    job = jobs.new()
    assert jobs.apply(job, contract.claim_update(runner="pod-a", at=T0)) is not None
    assert jobs.apply(job, contract.claim_update(runner="pod-b", at=T0 + 1)) is None
    assert jobs.apply(job, contract.claim_update(runner="pod-a", at=T0 + 1)) is None  # not even its owner
    assert s(jobs.get(job), contract.RUNNER) == "pod-a"
    assert s(jobs.get(job), contract.ATTEMPTS) == 1


def test_expired_lease_is_claimed_again(jobs):
    job = jobs.new()
    jobs.apply(job, contract.claim_update(runner="pod-a", at=T0))
    jobs.apply(job, contract.renew_update(runner="pod-a", at=T0 + 10, prompt_id="p-1"))
    lease = T0 + 10 + LEASE
    assert jobs.apply(job, contract.claim_update(runner="pod-b", at=lease)) is None  # not yet expired
    item = jobs.apply(job, contract.claim_update(runner="pod-b", at=lease + 1))
    assert s(item, contract.RUNNER) == "pod-b"
    assert s(item, contract.ATTEMPTS) == 2
    assert s(item, contract.STARTED_AT) == T0  # the first start stays
    assert contract.PROMPT_ID not in item  # the dead runner's ComfyUI run is not this one
    # The dead runner can no longer act on it.
    assert jobs.apply(job, contract.renew_update(runner="pod-a", at=lease + 2)) is None
    assert jobs.apply(job, contract.finish_update(runner="pod-a", at=lease + 2, status=contract.SUCCEEDED)) is None


def test_claim_refuses_missing_cancelled_and_cancel_requested_jobs(jobs):
    missing = uuid.uuid4().hex
    assert jobs.apply(missing, contract.claim_update(runner="pod-a", at=T0)) is None
    assert jobs.get(missing) is None  # a failed condition creates nothing
    job = jobs.new()
    jobs.apply(job, contract.cancel_queued_update(at=T0))
    assert jobs.apply(job, contract.claim_update(runner="pod-a", at=T0 + 1)) is None
    requested = jobs.new(**{contract.CANCEL_REQUESTED: {"BOOL": True}})
    assert jobs.apply(requested, contract.claim_update(runner="pod-a", at=T0)) is None


# --- renew, finish, release -------------------------------------------------------------------


def test_renew_only_by_owner_and_it_shows_a_cancel_request(jobs):
    job = jobs.new()
    jobs.apply(job, contract.claim_update(runner="pod-a", at=T0))
    assert jobs.apply(job, contract.renew_update(runner="pod-b", at=T0 + 40)) is None
    item = jobs.apply(job, contract.renew_update(runner="pod-a", at=T0 + 40, prompt_id="p-9"))
    assert s(item, contract.LEASE_UNTIL) == T0 + 40 + LEASE
    assert s(item, contract.PROMPT_ID) == "p-9"
    assert contract.CANCEL_REQUESTED not in item
    jobs.apply(job, contract.request_cancel_update(at=T0 + 50))
    item = jobs.apply(job, contract.renew_update(runner="pod-a", at=T0 + 80))
    assert item[contract.CANCEL_REQUESTED] == {"BOOL": True}
    assert s(item, contract.PROMPT_ID) == "p-9"  # kept when not given


def test_finish_only_by_owner_and_only_once(jobs):
    job = jobs.new()
    jobs.apply(job, contract.claim_update(runner="pod-a", at=T0))
    assert jobs.apply(job, contract.finish_update(runner="pod-b", at=T0 + 5, status=contract.SUCCEEDED)) is None
    outputs = [f"jobs/{job}/ComfyUI_00001_.png"]
    item = jobs.apply(
        job, contract.finish_update(runner="pod-a", at=T0 + 9, status=contract.SUCCEEDED, outputs=outputs)
    )
    assert s(item, contract.STATUS) == contract.SUCCEEDED
    assert s(item, contract.FINISHED_AT) == T0 + 9
    assert item[contract.OUTPUTS] == {"L": [{"S": outputs[0]}]}
    assert contract.LEASE_UNTIL not in item
    again = contract.finish_update(runner="pod-a", at=T0 + 10, status=contract.FAILED, error="late")
    assert jobs.apply(job, again) is None
    assert s(jobs.get(job), contract.STATUS) == contract.SUCCEEDED


def test_finish_records_errors_truncated_and_refuses_non_terminal_statuses(jobs):
    job = jobs.new()
    jobs.apply(job, contract.claim_update(runner="pod-a", at=T0))
    item = jobs.apply(job, contract.finish_update(runner="pod-a", at=T0 + 1, status=contract.FAILED, error="x" * 9000))
    assert s(item, contract.ERROR) == "x" * 4000
    for status in (contract.QUEUED, contract.RUNNING, "done"):
        with pytest.raises(ValueError, match="not a terminal status"):
            contract.finish_update(runner="pod-a", at=T0, status=status)


def test_release_gives_the_job_back(jobs):
    job = jobs.new()
    jobs.apply(job, contract.claim_update(runner="pod-a", at=T0))
    jobs.apply(job, contract.renew_update(runner="pod-a", at=T0 + 1, prompt_id="p"))
    assert jobs.apply(job, contract.release_update(runner="pod-b", at=T0 + 2)) is None
    assert jobs.apply(job, contract.release_update(runner="pod-a", at=T0 + 2)) is not None
    item = jobs.get(job)
    assert s(item, contract.STATUS) == contract.QUEUED
    assert not {contract.RUNNER, contract.LEASE_UNTIL, contract.PROMPT_ID} & item.keys()
    claimed = jobs.apply(job, contract.claim_update(runner="pod-b", at=T0 + 3))
    assert s(claimed, contract.ATTEMPTS) == 2  # the released attempt counts


# --- cancel -----------------------------------------------------------------------------------


def test_cancel_queued(jobs):
    job = jobs.new()
    item = jobs.apply(job, contract.cancel_queued_update(at=T0 + 3))
    assert s(item, contract.STATUS) == contract.CANCELLED
    assert item[contract.CANCEL_REQUESTED] == {"BOOL": True}
    assert s(item, contract.FINISHED_AT) == T0 + 3
    running = jobs.new()
    jobs.apply(running, contract.claim_update(runner="pod-a", at=T0))
    assert jobs.apply(running, contract.cancel_queued_update(at=T0 + 1)) is None
    assert jobs.apply(uuid.uuid4().hex, contract.cancel_queued_update(at=T0)) is None


def test_request_cancel_of_running_job_then_runner_records_cancelled(jobs):
    job = jobs.new()
    assert jobs.apply(job, contract.request_cancel_update(at=T0)) is None  # queued: cancel_queued is the way
    jobs.apply(job, contract.claim_update(runner="pod-a", at=T0))
    item = jobs.apply(job, contract.request_cancel_update(at=T0 + 1))
    assert s(item, contract.STATUS) == contract.RUNNING
    assert item[contract.CANCEL_REQUESTED] == {"BOOL": True}
    assert jobs.apply(job, contract.request_cancel_update(at=T0 + 2)) is not None  # repeatable
    done = jobs.apply(job, contract.finish_update(runner="pod-a", at=T0 + 3, status=contract.CANCELLED))
    assert s(done, contract.STATUS) == contract.CANCELLED
    assert jobs.apply(job, contract.request_cancel_update(at=T0 + 4)) is None


def test_cancel_abandoned(jobs):
    job = jobs.new()
    jobs.apply(job, contract.claim_update(runner="pod-a", at=T0))
    assert jobs.apply(job, contract.cancel_abandoned_update(at=T0 + 1)) is None  # not requested
    jobs.apply(job, contract.request_cancel_update(at=T0 + 1))
    assert jobs.apply(job, contract.cancel_abandoned_update(at=T0 + 2)) is None  # lease still live
    item = jobs.apply(job, contract.cancel_abandoned_update(at=T0 + LEASE + 1))
    assert s(item, contract.STATUS) == contract.CANCELLED
    assert not {contract.RUNNER, contract.LEASE_UNTIL} & item.keys()
    # Released after the request (SIGTERM): queued with the flag, never claimable, cancellable.
    released = jobs.new()
    jobs.apply(released, contract.claim_update(runner="pod-a", at=T0))
    jobs.apply(released, contract.request_cancel_update(at=T0 + 1))
    jobs.apply(released, contract.release_update(runner="pod-a", at=T0 + 2))
    assert jobs.apply(released, contract.claim_update(runner="pod-b", at=T0 + 3)) is None
    assert s(jobs.apply(released, contract.cancel_abandoned_update(at=T0 + 3)), contract.STATUS) == contract.CANCELLED


# --- give up, unsent --------------------------------------------------------------------------


def test_give_up(jobs):
    queued = jobs.new()
    item = jobs.apply(queued, contract.give_up_update(at=T0, error="gave up"))
    assert (s(item, contract.STATUS), s(item, contract.ERROR), s(item, contract.FINISHED_AT)) == (
        contract.FAILED,
        "gave up",
        T0,
    )
    running = jobs.new()
    jobs.apply(running, contract.claim_update(runner="pod-a", at=T0))
    item = jobs.apply(running, contract.give_up_update(at=T0 + 1, error="x"))  # default: even under a live lease
    assert s(item, contract.STATUS) == contract.FAILED
    assert not {contract.RUNNER, contract.LEASE_UNTIL} & item.keys()
    assert jobs.apply(running, contract.give_up_update(at=T0 + 2, error="again")) is None  # ended
    assert jobs.apply(uuid.uuid4().hex, contract.give_up_update(at=T0, error="x")) is None  # missing


def test_give_up_can_spare_a_live_lease(jobs):
    job = jobs.new()
    jobs.apply(job, contract.claim_update(runner="pod-a", at=T0))
    spare = {"error": "x", "spare_live_lease": True}
    assert jobs.apply(job, contract.give_up_update(at=T0 + LEASE, **spare)) is None  # lease_until == at: live
    assert s(jobs.apply(job, contract.give_up_update(at=T0 + LEASE + 1, **spare)), contract.STATUS) == contract.FAILED
    queued = jobs.new()
    assert jobs.apply(queued, contract.give_up_update(at=T0, **spare)) is not None


def test_fail_unsent(jobs):
    job = jobs.new()
    item = jobs.apply(job, contract.fail_unsent_update(at=T0, error="could not queue"))
    assert (s(item, contract.STATUS), s(item, contract.ERROR)) == (contract.FAILED, "could not queue")
    running = jobs.new()
    jobs.apply(running, contract.claim_update(runner="pod-a", at=T0))
    assert jobs.apply(running, contract.fail_unsent_update(at=T0, error="x")) is None


ALL_UPDATES = {
    "claim": lambda at: contract.claim_update(runner="pod-a", at=at),
    "renew": lambda at: contract.renew_update(runner="pod-a", at=at),
    "finish": lambda at: contract.finish_update(runner="pod-a", at=at, status=contract.FAILED),
    "release": lambda at: contract.release_update(runner="pod-a", at=at),
    "cancel_queued": lambda at: contract.cancel_queued_update(at=at),
    "request_cancel": lambda at: contract.request_cancel_update(at=at),
    "give_up": lambda at: contract.give_up_update(at=at, error="x"),
    "give_up_spare": lambda at: contract.give_up_update(at=at, error="x", spare_live_lease=True),
    "cancel_abandoned": lambda at: contract.cancel_abandoned_update(at=at),
    "fail_unsent": lambda at: contract.fail_unsent_update(at=at, error="x"),
}


@pytest.mark.parametrize("terminal", contract.TERMINAL)
def test_terminal_is_final_for_every_update(jobs, terminal):
    """What the webhook Lambda relies on: nothing ever writes a terminal job again."""
    job = jobs.new()
    jobs.apply(job, contract.claim_update(runner="pod-a", at=T0))
    jobs.apply(job, contract.request_cancel_update(at=T0))
    jobs.apply(job, contract.finish_update(runner="pod-a", at=T0 + 1, status=terminal))
    before = jobs.get(job)
    for name, update in ALL_UPDATES.items():
        assert jobs.apply(job, update(T0 + 10 * LEASE)) is None, name
    assert jobs.get(job) == before


def test_no_update_matches_an_idempotency_item(jobs, ddb):
    key = contract.client_token_key("arn:aws:iam::123456789012:user/u", "t")
    token = {
        contract.JOB_ID: {"S": key},
        contract.TOKEN_JOB_ID: {"S": uuid.uuid4().hex},
        contract.EXPIRES_AT: {"N": "1"},
    }
    ddb.put_item(TableName=TABLE, Item=token)
    for name, update in ALL_UPDATES.items():
        assert jobs.apply(key, update(T0)) is None, name
    assert ddb.get_item(TableName=TABLE, Key={contract.JOB_ID: {"S": key}})["Item"] == token


# --- property: two runners can never both finish a job --------------------------------------

RUNNERS = ("pod-a", "pod-b")
# Runner operations dominate: the API's and the dead-letter Lambda's writes end a job at once,
# and drawn as often they would end most sequences before the runners race.
WEIGHTED = ["claim"] * 6 + ["renew"] * 4 + ["finish"] * 4 + ["release"] * 2 + ["request_cancel"] * 2
WEIGHTED += ["cancel_queued", "give_up", "cancel_abandoned"]
OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(WEIGHTED),
        st.sampled_from(RUNNERS),
        st.sampled_from([0, 1, LEASE // 3, LEASE, LEASE + 1, LEASE + 30]),  # time before the operation
        st.sampled_from(contract.TERMINAL),
    ),
    min_size=4,
    max_size=12,
)


def _update(op: str, runner: str, at: int, status: str) -> dict[str, Any]:
    return {
        "claim": lambda: contract.claim_update(runner=runner, at=at),
        "renew": lambda: contract.renew_update(runner=runner, at=at),
        "finish": lambda: contract.finish_update(runner=runner, at=at, status=status),
        "release": lambda: contract.release_update(runner=runner, at=at),
        "cancel_queued": lambda: contract.cancel_queued_update(at=at),
        "request_cancel": lambda: contract.request_cancel_update(at=at),
        "give_up": lambda: contract.give_up_update(at=at, error="gave up", spare_live_lease=True),
        "cancel_abandoned": lambda: contract.cancel_abandoned_update(at=at),
    }[op]()


def test_two_runners_never_both_finish_a_job(jobs):
    """Random interleavings of both runners and the API/dead-letter writes: at most one terminal
    write ever succeeds; a runner finishes only a job it holds; terminal is final; a live lease
    is never overridden; the attempt count is the number of successful claims."""

    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(operations=OPERATIONS)
    def run(operations):
        job = jobs.new()
        item = queued_item(job)  # the last state a successful write returned
        at = T0
        holder: str | None = None  # who holds the job under a lease, per the model
        lease_until = 0
        terminal_writes = claims = 0
        for op, runner, elapsed, status in operations:
            at += elapsed
            update = {**_update(op, runner, at, status), "ReturnValues": "ALL_NEW"}
            new = jobs.apply(job, update)
            if new is None:
                continue
            assert s(item, contract.STATUS) not in contract.TERMINAL, f"{op} changed a terminal job"
            if s(new, contract.STATUS) in contract.TERMINAL:
                terminal_writes += 1
            if op == "claim":
                assert holder is None or at > lease_until, "a live lease was taken over"
                claims += 1
                holder, lease_until = runner, at + LEASE
            elif op == "renew":
                assert runner == holder
                lease_until = at + LEASE
            elif op in ("finish", "release"):
                assert runner == s(item, contract.RUNNER) == holder, "only the owner finishes or releases"
                holder = None
            elif op in ("give_up", "cancel_abandoned"):
                assert holder is None or at > lease_until, "a live lease was overridden"
            item = new
        assert terminal_writes <= 1
        assert s(item, contract.ATTEMPTS) == claims

    run()
