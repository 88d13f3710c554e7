#!/usr/bin/env python3
"""Benchmark: N jobs through M job runners (modules/pod/job_runner.py), with random runner kills.

    python benchmarks/jobs_bench.py --jobs 40 --runners 4 --generation 2 --kill-every 6

Starts its own moto server on 127.0.0.1 (SQS with a dead-letter queue, DynamoDB, S3) and M
"pods": each an in-process fake ComfyUI (tests/fake_comfyui.py, generation time --generation
seconds) and the REAL runner program in a subprocess, shipped like in the pod (a directory
with job_runner.py, contract.py and comfy_client.py). It enqueues N jobs the way the API does
(item `queued`, then the contract's message) and waits until every job is succeeded or
dead-lettered. With --kill-every S, every S seconds a random pod is lost: its runner gets
SIGKILL and its ComfyUI stops (a Spot node gone without notice), and a new pod replaces it at
once (a real replacement takes minutes: a node has to boot; that is not what is measured).

Prints:
- throughput (jobs/min) against the ideal M x 60 / generation;
- per-job overhead beyond generation time (p50/p95, target p95 < 1 s) of jobs run once: the
  result recorded minus the moment the job and a runner were both ready, minus the seconds
  ComfyUI executed it (from its history); split into pick-up (ready -> claimed) and
  processing (claimed -> recorded, minus generation);
- correctness under kills, checked from the table, the runners' logs and every fake's
  execution history (fakes of killed pods included): lost jobs (neither succeeded nor
  dead-lettered; target 0), duplicate results (a job recorded more than once, or recorded
  with outputs that are not the bytes of the run it names; target 0), re-runs (executions a
  kill threw away) and objects left under a job prefix by a killed attempt.

Runners short-poll SQS (--poll-wait 0, every --idle-interval s) by default: moto's long poll
notices a message that becomes visible again (after a kill or a release) only once a second,
which real SQS does not, and that would be measured as overhead.
Needs the project's dev environment (moto[server], boto3, aiohttp, requests, websocket-client).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "lambda_src" / "jobs"))

# The job contract and the repository's test fakes, from the paths added above.
import boto3  # noqa: E402
import contract as c  # noqa: E402
from boto3.dynamodb.types import TypeDeserializer  # noqa: E402

from tests.fake_comfyui import FakeComfyUI  # noqa: E402
from tests.helpers import create_jobs_table, start_moto_server  # noqa: E402

REGION = "us-west-2"
PROGRAMS = {
    "job_runner.py": REPO / "modules" / "pod" / "job_runner.py",
    "contract.py": REPO / "lambda_src" / "jobs" / "contract.py",
    "comfy_client.py": REPO / "comfyui_eks" / "comfy_client.py",
}
STEPS = 20  # sampler steps per job: the fake's step delay is generation / STEPS


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    try:
        return start_moto_server()
    except RuntimeError as exc:
        sys.exit(str(exc))


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Pod:
    """One ComfyUI pod: a fake ComfyUI in this process and the real runner program."""

    name: str
    fake: FakeComfyUI
    proc: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, Any] = field(default_factory=dict)  # the fake's executions, kept after it stops
    killed: bool = False
    reader: threading.Thread | None = None

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.events.append({"event": "raw", "text": line.rstrip()})

    def snapshot(self) -> None:
        """ComfyUI's whole history (GET /history): the execution log of this pod."""
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(self.fake.url + "/history") as r:
                self.history = json.load(r)
        except OSError:
            pass


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = Path(tempfile.mkdtemp(prefix="jobs-bench-"))
        self.programs = self.work / "programs"
        self.programs.mkdir()
        for name, source in PROGRAMS.items():
            shutil.copy(source, self.programs / name)
        self.pods: list[Pod] = []
        self.enqueued: dict[str, float] = {}
        self.kills = 0
        self.moto: subprocess.Popen[bytes] | None = None

    # -- set-up ------------------------------------------------------------------------------

    def setup(self) -> None:
        self.moto, url = start_moto()
        os.environ.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_REGION=REGION,
            AWS_DEFAULT_REGION=REGION,
            AWS_ENDPOINT_URL=url,
            AWS_CONFIG_FILE=str(self.work / "aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.work / "aws-credentials"),
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )
        os.environ.pop("AWS_PROFILE", None)
        self.ddb, self.sqs, self.s3 = boto3.client("dynamodb"), boto3.client("sqs"), boto3.client("s3")
        suffix = uuid.uuid4().hex[:8]
        self.table = f"bench-jobs-{suffix}"
        create_jobs_table(self.ddb, self.table)
        self.dlq = self.sqs.create_queue(QueueName=f"bench-dlq-{suffix}")["QueueUrl"]
        dlq_arn = self.sqs.get_queue_attributes(QueueUrl=self.dlq, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(self.args.max_receives)}
        visibility = self.args.lease + 2
        self.queue = self.sqs.create_queue(
            QueueName=f"bench-jobs-{suffix}",
            Attributes={"VisibilityTimeout": str(visibility), "RedrivePolicy": json.dumps(redrive)},
        )["QueueUrl"]
        self.inputs, self.outputs = f"bench-inputs-{suffix}", f"bench-outputs-{suffix}"
        for bucket in (self.inputs, self.outputs):
            self.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})

    def start_pod(self) -> Pod:
        name = f"comfyui-bench-{len(self.pods):03d}"
        data = self.work / name
        fake = FakeComfyUI(data, name=name, step_delay=self.args.generation / STEPS)
        fake.start()
        env = dict(
            os.environ,
            JOBS_TABLE=self.table,
            JOBS_QUEUE_URL=self.queue,
            INPUTS_BUCKET=self.inputs,
            OUTPUTS_BUCKET=self.outputs,
            POD_NAME=name,
            COMFYUI_URL=fake.url,
            JOBS_TIMEOUT_SECONDS=str(max(60.0, self.args.generation * 10)),
        )
        command = [
            sys.executable,
            str(self.programs / "job_runner.py"),
            f"--lease-seconds={self.args.lease}",
            f"--poll-wait={self.args.poll_wait}",
            f"--idle-interval={self.args.idle_interval}",
            "--progress-step=0",
            f"--scratch-dir={self.work}",
            f"--service-account-dir={self.work / 'no-service-account'}",
        ]
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        pod = Pod(name, fake, proc)
        pod.reader = threading.Thread(target=pod.read, daemon=True)
        pod.reader.start()
        self.pods.append(pod)
        return pod

    def enqueue(self, index: int) -> None:
        job_id = uuid.uuid4().hex
        at = c.now()
        workflow = self.pods[0].fake.sample_prompt(steps=STEPS, seed=index, prefix=f"bench/{index:04d}")
        item = {
            c.JOB_ID: {"S": job_id},
            c.STATUS: {"S": c.QUEUED},
            c.CREATED_AT: {"N": str(at)},
            c.UPDATED_AT: {"N": str(at)},
            c.EXPIRES_AT: {"N": str(at + 86400)},
        }
        self.ddb.put_item(TableName=self.table, Item=item)
        self.sqs.send_message(QueueUrl=self.queue, MessageBody=c.message_body(job_id, workflow))
        self.enqueued[job_id] = time.time()

    # -- run ---------------------------------------------------------------------------------

    def wait_ready(self) -> None:
        """Until every runner program has started and seen its ComfyUI idle (imports take a moment)."""
        deadline = time.monotonic() + 60
        while not all(any(e.get("state") == "idle" for e in list(pod.events)) for pod in self.pods):
            if time.monotonic() > deadline:
                sys.exit("the runners did not start: " + json.dumps([pod.events[-3:] for pod in self.pods]))
            time.sleep(0.05)

    def live(self) -> list[Pod]:
        return [pod for pod in self.pods if not pod.killed]

    def kill_one(self) -> None:
        pod = self.rng.choice(self.live())
        pod.proc.kill()
        pod.proc.wait(10)
        pod.snapshot()
        pod.fake.stop()
        pod.killed = True
        self.kills += 1
        self.start_pod()

    def items(self) -> dict[str, dict[str, Any]]:
        deserializer = TypeDeserializer()
        out: dict[str, dict[str, Any]] = {}
        kwargs: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        while True:
            page = self.ddb.scan(**kwargs)
            for raw in page.get("Items", []):
                item = {k: deserializer.deserialize(v) for k, v in raw.items()}
                out[item[c.JOB_ID]] = item
            if "LastEvaluatedKey" not in page:
                return out
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def dead_lettered(self) -> set[str]:
        """Job ids in the DLQ (read, not deleted: hidden for the rest of the run)."""
        found: set[str] = set()
        while True:
            page = self.sqs.receive_message(QueueUrl=self.dlq, MaxNumberOfMessages=10, VisibilityTimeout=3600)
            messages = page.get("Messages", [])
            if not messages:
                return found
            found |= {c.parse_message(m["Body"])[0] for m in messages}

    def run(self) -> dict[str, Any]:
        for _ in range(self.args.runners):
            self.start_pod()
        self.wait_ready()
        started = time.time()
        for index in range(self.args.jobs):
            self.enqueue(index)
        deadline = time.monotonic() + self.args.timeout
        next_kill = time.monotonic() + self.args.kill_every if self.args.kill_every else float("inf")
        dlq: set[str] = set()
        while time.monotonic() < deadline:
            items = self.items()
            dlq |= self.dead_lettered()
            done = {j for j, item in items.items() if item.get(c.STATUS) == c.SUCCEEDED} | dlq
            if len(done) >= self.args.jobs:
                break
            if time.monotonic() >= next_kill:
                self.kill_one()
                next_kill = time.monotonic() + self.args.kill_every
            time.sleep(0.2)
        ended = time.time()
        self.stop()
        return {"started": started, "ended": ended, "items": self.items(), "dlq": dlq | self.dead_lettered()}

    def stop(self) -> None:
        for pod in self.live():
            pod.proc.send_signal(signal.SIGTERM)
        for pod in self.live():
            try:
                pod.proc.wait(30)
            except subprocess.TimeoutExpired:
                pod.proc.kill()
            pod.snapshot()
            pod.fake.stop()
        for pod in self.pods:
            if pod.reader is not None:
                pod.reader.join(5)

    def close(self) -> None:
        if self.moto is not None:
            self.moto.terminate()
            self.moto.wait(10)
        shutil.rmtree(self.work, ignore_errors=True)

    # -- analysis ----------------------------------------------------------------------------

    def analyse(self, outcome: dict[str, Any]) -> dict[str, Any]:
        items: dict[str, dict[str, Any]] = outcome["items"]
        succeeded = {j for j, item in items.items() if item.get(c.STATUS) == c.SUCCEEDED}
        lost = set(self.enqueued) - succeeded - outcome["dlq"]
        events = [(pod, e) for pod in self.pods for e in pod.events]
        recorded = Counter(
            e["job_id"] for _, e in events if e["event"] == "finished" and e.get("status") == c.SUCCEEDED
        )
        runs: Counter[str] = Counter()
        executions: dict[str, tuple[Pod, dict[str, Any]]] = {}
        for pod in self.pods:
            for prompt_id, entry in pod.history.items():
                if entry.get("status", {}).get("status_str") == "success" and prompt_id[:32] in self.enqueued:
                    runs[prompt_id[:32]] += 1
                    executions[prompt_id] = (pod, entry)
        duplicates = {j for j, n in recorded.items() if n > 1}
        mismatched, orphans = self.check_outputs(items, succeeded, executions)
        overheads = self.overheads(items, succeeded, executions)
        span = (
            (max(epoch(e["time"]) for _, e in events if e["event"] == "finished") - outcome["started"])
            if recorded
            else 0
        )
        return {
            "succeeded": len(succeeded),
            "dead_lettered": len(outcome["dlq"]),
            "lost": len(lost),
            "duplicates": len(duplicates | mismatched),
            "reruns": sum(n - 1 for n in runs.values() if n > 1),
            "retried_jobs": sum(1 for j in succeeded if int(items[j].get(c.ATTEMPTS, 1)) > 1),
            "orphans": orphans,
            "kills": self.kills,
            "throughput": len(succeeded) / span * 60 if span else 0.0,
            "ideal": self.args.runners * 60 / self.args.generation,
            "wall": outcome["ended"] - outcome["started"],
            **overheads,
        }

    def check_outputs(
        self, items: dict[str, dict[str, Any]], succeeded: set[str], executions: dict[str, tuple[Pod, dict[str, Any]]]
    ) -> tuple[set[str], int]:
        """Jobs whose recorded outputs are not exactly the files of the run they name; and
        objects under job prefixes that no result names (left by killed attempts)."""
        mismatched: set[str] = set()
        orphans = 0
        for job_id in succeeded:
            item = items[job_id]
            execution = executions.get(str(item.get(c.PROMPT_ID)))
            keys = list(item.get(c.OUTPUTS) or [])
            if execution is None or not keys:
                mismatched.add(job_id)
                continue
            pod, entry = execution
            files = {}
            for node in entry["outputs"].values():
                for image in node.get("images", []):
                    path = pod.fake.output_dir / image["subfolder"] / image["filename"]
                    files[
                        c.output_prefix(job_id) + "/".join(p for p in (image["subfolder"], image["filename"]) if p)
                    ] = path
            if sorted(files) != sorted(keys):
                mismatched.add(job_id)
                continue
            for key, path in files.items():
                body = self.s3.get_object(Bucket=self.outputs, Key=key)["Body"].read()
                if body != path.read_bytes():
                    mismatched.add(job_id)
            listing = self.s3.list_objects_v2(Bucket=self.outputs, Prefix=c.output_prefix(job_id))
            orphans += len({o["Key"] for o in listing.get("Contents", [])} - set(keys))
        return mismatched, orphans

    def overheads(
        self, items: dict[str, dict[str, Any]], succeeded: set[str], executions: dict[str, tuple[Pod, dict[str, Any]]]
    ) -> dict[str, Any]:
        """Per job run once: recorded - ready - generation, ready = max(enqueued, runner free)."""
        total, pickup, processing, generation = [], [], [], []
        for pod in self.pods:
            free = None
            for event in pod.events:
                name, stamp = event.get("event"), epoch(event["time"]) if "time" in event else None
                if name == "runner_started" or (name in ("finished", "released", "not_recorded", "claim_lost")):
                    free = stamp
                if name != "claimed" or event.get("attempt") != 1:
                    continue
                job_id = event["job_id"]
                finish = next(
                    (
                        epoch(e["time"])
                        for e in pod.events
                        if e.get("event") == "finished" and e.get("job_id") == job_id
                    ),
                    None,
                )
                execution = executions.get(f"{job_id}-1")
                if job_id not in succeeded or finish is None or execution is None or free is None:
                    continue
                if int(items[job_id].get(c.ATTEMPTS, 1)) != 1:
                    continue
                messages = dict(execution[1]["status"]["messages"])
                gen = (messages["execution_success"]["timestamp"] - messages["execution_start"]["timestamp"]) / 1000
                ready = max(self.enqueued[job_id], free)
                claimed = epoch(event["time"])
                total.append(finish - ready - gen)
                pickup.append(claimed - ready)
                processing.append(finish - claimed - gen)
                generation.append(gen)
        return {
            "measured": len(total),
            "overhead_p50": percentile(total, 0.5),
            "overhead_p95": percentile(total, 0.95),
            "pickup_p50": percentile(pickup, 0.5),
            "pickup_p95": percentile(pickup, 0.95),
            "processing_p50": percentile(processing, 0.5),
            "processing_p95": percentile(processing, 0.95),
            "generation_mean": statistics.fmean(generation) if generation else float("nan"),
        }


def report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    kills = f"every {args.kill_every:g} s" if args.kill_every else "off"
    print(
        f"\n{args.jobs} jobs, {args.runners} runners, generation {args.generation:g} s, lease {args.lease} s, "
        f"kills {kills} ({r['kills']} pods lost), max receives {args.max_receives}, wall {r['wall']:.1f} s\n"
    )
    print("| measure | value |")
    print("|---|---:|")
    rows = [
        ("throughput (jobs/min)", f"{r['throughput']:.1f} (ideal {r['ideal']:.1f})"),
        ("overhead beyond generation p50 / p95 (s)", f"{r['overhead_p50']:.3f} / {r['overhead_p95']:.3f}"),
        ("  pick-up (ready -> claimed) p50 / p95 (s)", f"{r['pickup_p50']:.3f} / {r['pickup_p95']:.3f}"),
        ("  processing (claimed -> recorded - generation) p50 / p95 (s)",
         f"{r['processing_p50']:.3f} / {r['processing_p95']:.3f}"),
        ("jobs measured (run once) / mean generation (s)", f"{r['measured']} / {r['generation_mean']:.3f}"),
        ("succeeded", str(r["succeeded"])),
        ("dead-lettered (runner killed max-receives times)", str(r["dead_lettered"])),
        ("lost (neither succeeded nor dead-lettered)", str(r["lost"])),
        ("duplicate or inconsistent results", str(r["duplicates"])),
        ("jobs that ran again after a kill", str(r["retried_jobs"])),
        ("executions thrown away by kills (re-runs)", str(r["reruns"])),
        ("objects left under a job prefix by killed attempts", str(r["orphans"])),
    ]  # fmt: skip
    for name, value in rows:
        print(f"| {name} | {value} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40, help="jobs to enqueue (default 40)")
    parser.add_argument("--runners", type=int, default=4, help="pods, each a fake ComfyUI + a runner (default 4)")
    parser.add_argument("--generation", type=float, default=2.0, help="seconds ComfyUI takes per job (default 2)")
    parser.add_argument("--kill-every", type=float, default=0.0, help="lose a random pod every S seconds (0: never)")
    parser.add_argument("--lease", type=int, default=6, help="the runners' lease seconds (default 6; production 120)")
    parser.add_argument("--max-receives", type=int, default=3, help="the queue's maxReceiveCount (default 3)")
    parser.add_argument("--poll-wait", type=int, default=0, help="runners' SQS long-poll seconds (default 0)")
    parser.add_argument("--idle-interval", type=float, default=0.1, help="runners' idle poll interval (default 0.1)")
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many seconds (default 600)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the kills (default 1)")
    args = parser.parse_args(argv)
    bench = Bench(args)
    try:
        bench.setup()
        outcome = bench.run()
        result = bench.analyse(outcome)
    finally:
        for pod in bench.pods:
            if pod.proc.poll() is None:
                pod.proc.kill()
        bench.close()
    report(args, result)
    ok = result["lost"] == 0 and result["duplicates"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
