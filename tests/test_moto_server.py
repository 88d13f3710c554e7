"""The tests' moto server (tests/moto_server.py) applies a DynamoDB conditional write to an item
atomically, as DynamoDB does: of runners claiming one job at the same moment, one wins."""

from __future__ import annotations

import threading
import uuid

from botocore.exceptions import ClientError

from lambda_src.jobs import contract
from tests.helpers import create_jobs_table, moto_client

RUNNERS = 8
JOBS = 15


def claim_at_once(clients: list, table: str, job_id: str) -> list[str]:
    """The contract's claim of `job_id` from one thread per client, released together; the
    runners whose claim succeeded."""
    start = threading.Barrier(len(clients))
    won: list[str] = []

    def claim(client, runner: str) -> None:
        start.wait()
        try:
            client.update_item(
                TableName=table,
                Key={contract.JOB_ID: {"S": job_id}},
                **contract.claim_update(runner=runner, at=contract.now()),
            )
            won.append(runner)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ConditionalCheckFailedException", exc

    threads = [threading.Thread(target=claim, args=(c, f"runner-{i}")) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return won


def test_concurrent_claims_of_one_job_give_one_claim(moto_server):
    """Each job is claimed by RUNNERS threads at once (the contract's claim, each thread with a
    client of its own); exactly one claim succeeds and the item counts one attempt. Without the
    server's lock, 15 jobs of 8 runners gave several double claims in every run tried."""
    ddb = moto_client("dynamodb", moto_server)
    table = f"jobs-{uuid.uuid4().hex[:12]}"
    create_jobs_table(ddb, table)
    clients = [moto_client("dynamodb", moto_server) for _ in range(RUNNERS)]
    doubles = {}
    for _ in range(JOBS):
        job_id = uuid.uuid4().hex
        item = {
            contract.JOB_ID: {"S": job_id},
            contract.STATUS: {"S": contract.QUEUED},
            contract.CREATED_AT: {"N": str(contract.now())},
        }
        ddb.put_item(TableName=table, Item=item)
        won = claim_at_once(clients, table, job_id)
        attempts = ddb.get_item(TableName=table, Key={contract.JOB_ID: {"S": job_id}})["Item"][contract.ATTEMPTS]["N"]
        if len(won) != 1 or attempts != "1":
            doubles[job_id] = (won, attempts)
    assert not doubles, f"claims that were not one (winners, attempts): {doubles}"
