"""`comfyui-eks invoke`: run an API-format workflow on ComfyUI and download what it produced.

    comfyui-eks invoke WORKFLOW.json --url URL [--out DIR] [--seed random|N] [--timeout S]
                       [--count N --concurrency C] [--input NAME=PATH ...] [--format text|json]

See DESCRIPTION for what a run does. Each run has its own HTTP session (its own ALB cookie):
every request of a run reaches the pod that queued its prompt, and the ALB spreads the runs of
a load test over the pods as it would spread independent pipelines.

Exit codes: 0 every run succeeded, 1 a run failed (rejected prompt, execution error, lost
prompt, timeout, unreachable ComfyUI), 2 bad arguments or a workflow that is not API format.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Self, TextIO

from comfyui_eks.cli import CommandFailed, UsageError
from comfyui_eks.comfy_client import (
    ComfyClient,
    ComfyError,
    Listener,
    PromptResult,
    WaitTimeout,
    normalize_url,
    queue_words,
)
from comfyui_eks.workflows import (
    SEED_MAX,
    ImageInput,
    WorkflowError,
    apply_seed,
    find_input_images,
    load_workflow,
    random_seed,
    seed_inputs,
    set_input,
)

Json = dict[str, Any]
DEFAULT_TIMEOUT = 600.0
URL_ENV = "COMFYUI_URL"
DESCRIPTION = (
    "Run a workflow in API format on ComfyUI: upload the images its LoadImage nodes name (found next to "
    "the workflow or given with --input), submit it, follow its progress (stderr), download every output "
    "into DIR and print the paths (or JSON). With --count N --concurrency C it is a load generator that "
    "reports p50/p95 latency, failures and images per minute."
)
URL_EXAMPLE = "http://internal-k8s-comfyui-0123456789.eu-west-1.elb.amazonaws.com"
# Extra ComfyClient arguments for every run (tests shorten the poll interval and the backoff).
CLIENT_OPTIONS: dict[str, Any] = {}


def register(subparsers: Any, name: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help="run a workflow (API format) on ComfyUI and download its outputs",
        description=DESCRIPTION,
        epilog="Exit codes: 0 ok, 1 a run failed, 2 bad arguments or workflow.",
    )
    parser.add_argument("workflow", metavar="WORKFLOW.json", type=Path, help="workflow in API format (Export (API))")
    parser.add_argument("--url", default=os.environ.get(URL_ENV), help=f"ComfyUI's address (default: ${URL_ENV})")
    parser.add_argument("--out", type=Path, default=Path("outputs"), metavar="DIR", help="where outputs go (./outputs)")
    parser.add_argument("--seed", metavar="random|N", help="set every seed/noise_seed input (random: new per run)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S", help="seconds per run (600)")
    parser.add_argument("--count", type=int, default=1, metavar="N", help="runs to make (load generator)")
    parser.add_argument("--concurrency", type=int, default=1, metavar="C", help="runs in flight at once")
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="image for a LoadImage node (NAME: its image name or node id); repeatable",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format (text)")
    parser.set_defaults(func=run)
    return parser


# --------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class Options:
    workflow: Path
    url: str
    out: Path
    seed: int | str | None  # None: leave the workflow's seeds; "random"; or a fixed seed
    timeout: float
    count: int
    concurrency: int
    inputs: dict[str, Path]
    json: bool


def parse_options(args: argparse.Namespace) -> Options:
    """Check the arguments; every problem is one UsageError line naming the option and the fix."""
    problems: list[str] = []
    url = _check_url(args.url, problems)
    seed = _check_seed(args.seed, problems)
    if not args.timeout > 0:
        problems.append(f"--timeout {args.timeout:g}: give the seconds to wait for each run, more than 0")
    if args.count < 1:
        problems.append(f"--count {args.count}: give the number of runs, 1 or more")
    if args.concurrency < 1:
        problems.append(f"--concurrency {args.concurrency}: give how many runs may be in flight, 1 or more")
    if args.out.exists() and not args.out.is_dir():
        problems.append(f"--out {args.out}: this is a file; give a directory (it is created if missing)")
    inputs = _check_inputs(args.input, problems)
    if problems:
        raise UsageError(*problems)
    return Options(
        workflow=args.workflow,
        url=url,
        out=args.out,
        seed=seed,
        timeout=args.timeout,
        count=args.count,
        concurrency=min(args.concurrency, args.count),
        inputs=inputs,
        json=args.format == "json",
    )


def _check_url(url: str | None, problems: list[str]) -> str:
    if not url:
        problems.append(f"--url is required (or set {URL_ENV}): ComfyUI's address, e.g. {URL_EXAMPLE}")
        return ""
    try:
        return normalize_url(url)
    except ValueError:
        problems.append(f"--url {url}: not an http(s) URL; give ComfyUI's address, e.g. {URL_EXAMPLE}")
        return ""


def _check_seed(seed: str | None, problems: list[str]) -> int | str | None:
    if seed is None or seed == "random":
        return seed
    if seed.isdigit() and int(seed) <= SEED_MAX:
        return int(seed)
    problems.append(f"--seed {seed}: give 'random' or a whole number from 0 to {SEED_MAX}")
    return None


def _check_inputs(values: Sequence[str], problems: list[str]) -> dict[str, Path]:
    inputs: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            problems.append(f"--input {value}: expected NAME=PATH, e.g. --input photo.png=./photo.png")
        elif not Path(path).is_file():
            problems.append(f"--input {value}: no such file {path}")
        else:
            inputs[name] = Path(path)
    return inputs


# --------------------------------------------------------------------------------------------
# Input images


@dataclass(frozen=True)
class Upload:
    """A local image to upload for a LoadImage node before each run."""

    image: ImageInput
    path: Path

    @property
    def subfolder(self) -> str:
        """The workflow's sub-directory of the input directory ("" for none), kept on upload."""
        parent = str(PurePosixPath(self.image.filename).parent)
        return "" if parent == "." else parent


def plan_uploads(workflow: Json, options: Options, note: Callable[[str], None]) -> list[Upload]:
    """Which images to upload: given with --input, or found next to the workflow file."""
    images = find_input_images(workflow)
    for name in options.inputs:
        if not any(name in (image.node_id, image.filename, image.value) for image in images):
            uses = ", ".join(f"{image.filename} (node {image.node_id})" for image in images) or "none"
            raise UsageError(
                f"--input {name}=...: no LoadImage node uses {name!r}; the workflow's input images: {uses}"
            )
    uploads = []
    for image in images:
        given = (
            options.inputs.get(image.node_id) or options.inputs.get(image.value) or options.inputs.get(image.filename)
        )
        beside = options.workflow.parent / image.filename
        if given is not None:
            uploads.append(Upload(image, given))
        elif beside.is_file():
            uploads.append(Upload(image, beside))
        else:
            note(
                f"input image {image.filename!r} (node {image.node_id}) is not next to the workflow and not given "
                "with --input: ComfyUI must have it already"
            )
    return uploads


# --------------------------------------------------------------------------------------------
# Progress display


class Display(Listener):
    """Progress on stderr: a rich progress bar on a terminal, a few plain lines otherwise."""

    def __init__(self, workflow: Json, stream: TextIO | None = None, *, force_terminal: bool | None = None):
        from rich.console import Console

        self.workflow = workflow
        self.console = Console(file=stream or sys.stderr, force_terminal=force_terminal, highlight=False)
        self.rich = self.console.is_terminal
        self._progress: Any = None
        self._task: Any = None
        self.lock = threading.Lock()
        self._printed: tuple[str | None, int] = (None, 0)  # plain mode: (node, quarter) last printed

    def __enter__(self) -> Self:
        if self.rich:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:.0f}/{task.total:.0f}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("connecting", total=1, completed=0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def note(self, message: str) -> None:
        with self.lock:
            self.console.print(f"note: {message}", markup=False, soft_wrap=True)

    def _describe(self, node_id: str | None) -> str:
        node = self.workflow.get(node_id or "", {})
        return f"node {node_id} ({node.get('class_type', '?')})" if node_id else "running"

    def update(self, description: str, completed: float = 0, total: float = 1) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=description, completed=completed, total=total)

    def plain(self, message: str) -> None:
        if not self.rich:
            self.console.print(message, markup=False, soft_wrap=True)

    def queued(self, ahead: int) -> None:
        self.update(queue_words(ahead))
        if self._printed != ("queued", ahead):
            self._printed = ("queued", ahead)
            self.plain(queue_words(ahead))

    def started(self) -> None:
        self.update("started")
        self.plain("started")

    def executing(self, node_id: str) -> None:
        self.update(self._describe(node_id))
        self.plain(f"running {self._describe(node_id)}")

    def progress(self, value: int, maximum: int, node_id: str | None) -> None:
        self.update(self._describe(node_id), value, max(maximum, 1))
        quarter = 4 * value // max(maximum, 1)  # plain mode prints at 25, 50, 75 and 100 %
        if quarter > 0 and (node_id, quarter) != self._printed:
            self._printed = (node_id, quarter)
            self.plain(f"{self._describe(node_id)}: step {value}/{maximum}")


class LoadDisplay:
    """Progress of a load run: runs done / failed."""

    def __init__(self, total: int, stream: TextIO | None = None):
        self.single = Display({}, stream)
        self.total = total
        self.done = 0
        self.failed = 0

    def __enter__(self) -> Self:
        self.single.__enter__()
        self.single.update("runs", 0, self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        self.single.__exit__(*exc)

    def note(self, message: str) -> None:
        self.single.note(message)

    def finished(self, outcome: RunOutcome) -> None:
        with self.single.lock:
            self.done += 1
            self.failed += 0 if outcome.ok else 1
            self.single.update(f"runs ({self.failed} failed)", self.done, self.total)
            state = f"{outcome.seconds:.2f} s" if outcome.ok else f"failed: {outcome.error}"
            self.single.plain(f"run {outcome.index + 1}: {state} ({self.done}/{self.total} done)")


# --------------------------------------------------------------------------------------------
# Runs


@dataclass
class RunOutcome:
    """What one run produced (or why it failed)."""

    index: int
    ok: bool
    seconds: float = 0.0
    prompt_id: str | None = None
    seed: int | None = None
    files: list[tuple[Json, Path]] = field(default_factory=list)
    error: str = ""
    error_lines: list[str] = field(default_factory=list)

    @property
    def images(self) -> int:
        return len(self.files)


class Runner:
    """Runs the workflow once per call, each on its own ComfyClient (own ALB cookie)."""

    def __init__(self, options: Options, workflow: Json, uploads: list[Upload], note: Callable[[str], None]):
        self.options = options
        self.workflow = workflow
        self.uploads = uploads
        self.note = note
        self._active: dict[int, tuple[ComfyClient, str]] = {}
        self.lock = threading.Lock()

    def seed_for_run(self) -> int | None:
        """The seed of the next run: fixed, random, or None (leave the workflow's own)."""
        if self.options.seed == "random" or (self.options.seed is None and self.options.count > 1):
            return random_seed()
        return self.options.seed if isinstance(self.options.seed, int) else None

    def client(self) -> ComfyClient:
        options = {"timeout": min(30.0, self.options.timeout), "notice": self.note, **CLIENT_OPTIONS}
        return ComfyClient(self.options.url, **options)

    def run(self, index: int, listener: Listener | None = None) -> RunOutcome:
        seed = self.seed_for_run()
        prompt = apply_seed(self.workflow, seed) if seed is not None else self.workflow
        with self.client() as client:
            try:
                for upload in self.uploads:
                    stored = client.upload_image(upload.path.read_bytes(), upload.path.name, subfolder=upload.subfolder)
                    prompt = set_input(prompt, upload.image.node_id, upload.image.input_name, stored.reference)
                result = self._follow(index, client, prompt, listener)
                files = [(o.as_dict(), client.download(o, self.options.out)) for o in result.outputs]
            except ComfyError as exc:
                lines = exc.lines
            except OSError as exc:  # reading an input image or writing an output
                lines = [f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)]
            else:
                return RunOutcome(index, True, result.seconds, result.prompt_id, seed, files)
        return RunOutcome(index, False, prompt_id=client.last_prompt_id, seed=seed, error=lines[0], error_lines=lines)

    def _follow(self, index: int, client: ComfyClient, prompt: Json, listener: Listener | None) -> PromptResult:
        with self.lock:
            self._active[index] = (client, "")
        try:
            return client.run(prompt, timeout=self.options.timeout, listener=listener)
        except KeyboardInterrupt:
            self._cancel(client, client.last_prompt_id)
            raise
        except WaitTimeout as exc:
            self._cancel(client, exc.prompt_id)
            raise WaitTimeout(
                *exc.lines,
                f"cancelled prompt {exc.prompt_id} (deleted from the queue or interrupted)",
                prompt_id=exc.prompt_id,
            ) from exc
        finally:
            with self.lock:
                self._active.pop(index, None)

    def _cancel(self, client: ComfyClient, prompt_id: str | None) -> None:
        if prompt_id is None:
            return
        try:
            client.fork().cancel(prompt_id)
        except ComfyError as exc:
            self.note(f"could not cancel prompt {prompt_id}: {exc.lines[0]}")

    def cancel_all(self) -> None:
        """Ctrl-C during a load run: cancel the prompts still in flight (best effort; each run
        then ends with its interrupted or lost prompt)."""
        with self.lock:
            active = [client for client, _ in self._active.values()]
        for client in active:
            self._cancel(client, client.last_prompt_id)


def run(args: argparse.Namespace) -> int:
    options = parse_options(args)
    try:
        workflow = load_workflow(options.workflow)
    except WorkflowError as exc:
        raise UsageError(*exc.lines) from None
    if options.count == 1:
        return _single(options, workflow)
    return _load(options, workflow)


def _check_seed_inputs(workflow: Json, options: Options, note: Callable[[str], None]) -> None:
    if options.seed is not None and not seed_inputs(workflow):
        note("--seed: the workflow has no seed or noise_seed input; nothing to set")
    if options.count > 1 and isinstance(options.seed, int):
        note("--seed N with --count: every run is the same prompt, and ComfyUI answers repeats from its cache")
    if options.count > 1 and options.seed is None and seed_inputs(workflow):
        note("--count without --seed: each run gets a random seed (identical prompts come from ComfyUI's cache)")


def _single(options: Options, workflow: Json) -> int:
    with Display(workflow) as display:
        _check_seed_inputs(workflow, options, display.note)
        uploads = plan_uploads(workflow, options, display.note)
        outcome = Runner(options, workflow, uploads, display.note).run(0, display)
    if options.json:
        print(json.dumps(_single_json(outcome), indent=2))
    if not outcome.ok:
        raise CommandFailed(*outcome.error_lines)
    if not options.json:
        for _, path in outcome.files:
            print(path)
        files = f"{outcome.images} file{'s' if outcome.images != 1 else ''}"
        print(
            f"prompt {outcome.prompt_id} finished in {outcome.seconds:.1f} s: {files} in {options.out}", file=sys.stderr
        )
    return 0


def _single_json(outcome: RunOutcome) -> Json:
    document: Json = {"prompt_id": outcome.prompt_id, "ok": outcome.ok, "seconds": round(outcome.seconds, 3)}
    if outcome.seed is not None:
        document["seed"] = outcome.seed
    document["outputs"] = [{**meta, "path": str(path)} for meta, path in outcome.files]
    if not outcome.ok:
        document["error"] = outcome.error_lines
    return document


def _load(options: Options, workflow: Json) -> int:
    with LoadDisplay(options.count) as display:
        _check_seed_inputs(workflow, options, display.note)
        uploads = plan_uploads(workflow, options, display.note)
        runner = Runner(options, workflow, uploads, display.note)
        started = time.monotonic()
        outcomes: list[RunOutcome] = []
        pool = ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="invoke")
        try:
            futures = [pool.submit(runner.run, index) for index in range(options.count)]
            for future in as_completed(futures):
                outcomes.append(future.result())
                display.finished(outcomes[-1])
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            runner.cancel_all()
            raise
        pool.shutdown()
        wall = time.monotonic() - started
    stats = load_stats(outcomes, wall, options.concurrency)
    if options.json:
        print(json.dumps(stats, indent=2))
    else:
        print("\n".join(_stats_lines(stats)))
    if stats["failed"]:
        raise CommandFailed(f"{stats['failed']} of {stats['count']} runs failed")
    return 0


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (what load testers usually report); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def load_stats(outcomes: Sequence[RunOutcome], wall: float, concurrency: int) -> Json:
    latencies = [o.seconds for o in outcomes if o.ok]
    images = sum(o.images for o in outcomes)
    failures = Counter(o.error for o in outcomes if not o.ok)
    return {
        "count": len(outcomes),
        "concurrency": concurrency,
        "succeeded": len(latencies),
        "failed": len(outcomes) - len(latencies),
        "seconds": round(wall, 3),
        "latency": {
            "p50": round(percentile(latencies, 50), 3),
            "p95": round(percentile(latencies, 95), 3),
            "min": round(min(latencies, default=0.0), 3),
            "max": round(max(latencies, default=0.0), 3),
            "mean": round(sum(latencies) / len(latencies), 3) if latencies else 0.0,
        },
        "images": images,
        "images_per_minute": round(images * 60 / wall, 2) if wall > 0 else 0.0,
        "failures": [{"error": error, "count": count} for error, count in failures.most_common()],
    }


def _stats_lines(stats: Json) -> list[str]:
    latency = stats["latency"]
    summary = f"{stats['count']} runs, {stats['concurrency']} at a time, in {stats['seconds']:.1f} s"
    lines = [
        f"{summary}: {stats['succeeded']} succeeded, {stats['failed']} failed",
        (
            f"latency p50 {latency['p50']:.2f} s, p95 {latency['p95']:.2f} s "
            f"(min {latency['min']:.2f} s, max {latency['max']:.2f} s, mean {latency['mean']:.2f} s)"
        ),
        f"images: {stats['images']} ({stats['images_per_minute']:.1f} per minute)",
    ]
    lines += [f"failed {failure['count']}x: {failure['error']}" for failure in stats["failures"]]
    return lines
