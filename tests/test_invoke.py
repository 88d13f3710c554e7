"""`comfyui-eks invoke` and its client against the fake ComfyUI (tests/fake_comfyui.py).

The CLI runs in-process through comfyui_eks.cli.main for speed; one test runs the installed
console script. The client's waits are shortened through invoke.CLIENT_OPTIONS.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyui_eks import cli, invoke
from comfyui_eks.comfy_client import (
    ComfyClient,
    ComfyHTTPError,
    ComfyUnavailable,
    PromptRejected,
    RetryPolicy,
    format_rejection,
)
from comfyui_eks.invoke import Display, RunOutcome, load_stats, percentile
from tests.fake_comfyui import FakeCluster, FakeComfyUI, png_bytes
from tests.helpers import REPO

SDXL = REPO / "workflows" / "sdxl.json"
Json = dict[str, Any]


@pytest.fixture(autouse=True)
def _fast_and_direct(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Short waits, loopback without a proxy, and ./outputs inside the test's directory."""
    monkeypatch.setattr(
        invoke,
        "CLIENT_OPTIONS",
        {"poll_interval": 0.02, "silence_check": 0.2, "retry": RetryPolicy(attempts=4, backoff=0.01)},
    )
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("COMFYUI_URL", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def fake() -> Iterator[FakeComfyUI]:
    with FakeComfyUI(step_delay=0.001) as server:
        yield server


class Result:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def json(self) -> Json:
        return dict(json.loads(self.out))


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> Result:
    code = cli.main(["invoke", *map(str, args)])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def history_prompts(fake: FakeComfyUI) -> list[Json]:
    """The prompts the fake ran, oldest first (from GET /history)."""
    with ComfyClient(fake.url) as client:
        return [client.history(i)["prompt"][2] for i in fake.history_ids()]  # type: ignore[index]


def img2img(tmp_path: Path, image: str = "cat.png") -> Path:
    """A small image-to-image workflow with a LoadImage node, written to tmp_path/wf/."""
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["2", 2]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["2", 1]}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "seed": 1, "steps": 4, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["4", 0], "negative": ["4", 0], "latent_image": ["3", 0], "denoise": 0.6}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["2", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "i2i"}},
    }  # fmt: skip
    folder = tmp_path / "wf"
    folder.mkdir(exist_ok=True)
    path = folder / "img2img.json"
    path.write_text(json.dumps(workflow))
    return path


# --------------------------------------------------------------------------------------------
# Success


def test_success_downloads_every_output(fake: FakeComfyUI, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, SDXL, "--url", fake.url)
    assert result.code == 0, result.err
    assert result.out.splitlines() == [os.path.join("outputs", "sdxl", "ComfyUI_00001_.png")]
    written = Path("outputs/sdxl/ComfyUI_00001_.png")
    assert written.read_bytes() == (fake.output_dir / "sdxl" / "ComfyUI_00001_.png").read_bytes()
    assert "running node 3 (KSampler)" in result.err and "node 3 (KSampler): step 25/25" in result.err
    assert "finished in" in result.err and "1 file in outputs" in result.err


def test_repeated_prompt_comes_from_the_cache_and_is_not_downloaded_twice(
    fake: FakeComfyUI, capsys: pytest.CaptureFixture[str]
) -> None:
    first = run(capsys, SDXL, "--url", fake.url)
    second = run(capsys, SDXL, "--url", fake.url)
    assert first.code == second.code == 0
    assert first.out == second.out  # ComfyUI answered from its cache with the same file
    assert [p.name for p in Path("outputs/sdxl").iterdir()] == ["ComfyUI_00001_.png"]


def test_websocket_refused_by_the_load_balancer(fake: FakeComfyUI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.fail_requests(1, 502, path="/ws")
    result = run(capsys, SDXL, "--url", fake.url)
    assert result.code == 0, result.err
    assert (
        "the websocket handshake was answered 502 Bad Gateway: no healthy ComfyUI pod?; following prompts by polling"
        in result.err
    )
    assert Path("outputs/sdxl/ComfyUI_00001_.png").is_file()


def test_unwritable_output_directory(fake: FakeComfyUI, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "out" / "sdxl"
    blocker.parent.mkdir()
    blocker.write_text("a file where the subfolder goes")
    result = run(capsys, SDXL, "--url", fake.url, "--out", tmp_path / "out")
    assert result.code == 1
    assert result.err.splitlines()[-1].startswith("comfyui-eks invoke: ")
    assert str(blocker) in result.err


def test_format_json(fake: FakeComfyUI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.previews = True  # binary preview frames on the websocket are skipped
    result = run(capsys, SDXL, "--url", fake.url + "/", "--format", "json", "--out", "out")
    assert result.code == 0, result.err
    document = result.json()
    assert set(document) == {"prompt_id", "ok", "seconds", "outputs"} and document["ok"] is True
    assert document["prompt_id"] == fake.history_ids()[0] and document["seconds"] > 0
    (output,) = document["outputs"]
    assert output == {"node_id": "9", "kind": "images", "filename": "ComfyUI_00001_.png", "subfolder": "sdxl",
                      "type": "output", "path": os.path.join("out", "sdxl", "ComfyUI_00001_.png")}  # fmt: skip


def test_input_images_are_uploaded(fake: FakeComfyUI, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workflow = img2img(tmp_path)
    beside = png_bytes(4, 4, (10, 20, 30))
    (workflow.parent / "cat.png").write_bytes(beside)
    assert run(capsys, workflow, "--url", fake.url).code == 0
    assert (fake.input_dir / "cat.png").read_bytes() == beside

    given = tmp_path / "dog.png"
    given.write_bytes(png_bytes(4, 4, (90, 80, 70)))
    assert run(capsys, workflow, "--url", fake.url, "--input", f"cat.png={given}").code == 0
    assert run(capsys, workflow, "--url", fake.url, "--input", f"1={given}").code == 0  # by node id
    assert [p["1"]["inputs"]["image"] for p in history_prompts(fake)] == ["cat.png", "dog.png", "dog.png"]
    assert (fake.input_dir / "dog.png").read_bytes() == given.read_bytes()


def test_missing_input_image_is_noted_and_rejected(
    fake: FakeComfyUI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(capsys, img2img(tmp_path, "nowhere.png"), "--url", fake.url)
    assert result.code == 1
    assert "note: input image 'nowhere.png' (node 1) is not next to the workflow" in result.err
    assert (
        "node 1 (LoadImage): Custom validation failed for node: image - Invalid image file: nowhere.png" in result.err
    )


def test_seed_fixed_and_random(fake: FakeComfyUI, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, SDXL, "--url", fake.url, "--seed", "42").code == 0
    first = run(capsys, SDXL, "--url", fake.url, "--seed", "random", "--format", "json").json()
    second = run(capsys, SDXL, "--url", fake.url, "--seed", "random", "--format", "json").json()
    seeds = [p["3"]["inputs"]["seed"] for p in history_prompts(fake)]
    assert seeds == [42, first["seed"], second["seed"]]
    assert first["seed"] != second["seed"] and all(0 <= s < 2**53 for s in seeds)


def test_queue_busy_with_a_browser_users_prompts(fake: FakeComfyUI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.hold()
    foreign = fake.add_foreign_prompts(2, steps=5)
    threading.Timer(0.3, fake.release).start()
    result = run(capsys, SDXL, "--url", fake.url)
    assert result.code == 0, result.err
    assert "queued behind 2 prompts" in result.err
    assert fake.history_ids()[:2] == foreign


# --------------------------------------------------------------------------------------------
# ComfyUI says no


def test_rejected_prompt_prints_the_node_errors(fake: FakeComfyUI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.models["checkpoints"] = ["other.safetensors"]
    result = run(capsys, SDXL, "--url", fake.url)
    assert result.code == 1
    assert result.err.splitlines() == [
        "comfyui-eks invoke: ComfyUI rejected the prompt: Prompt outputs failed validation",
        (
            "comfyui-eks invoke: node 4 (CheckpointLoaderSimple): Value not in list: "
            "ckpt_name: 'sd_xl_base_1.0.safetensors' not in ['other.safetensors']"
        ),
    ]
    assert not Path("outputs").exists()


def test_execution_error_exits_1_with_the_exception(fake: FakeComfyUI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.fail_node(class_type="KSampler", message="CUDA error: out of memory", exception_type="torch.OutOfMemoryError")
    result = run(capsys, SDXL, "--url", fake.url, "--format", "json")
    assert result.code == 1
    line = "node 3 (KSampler) failed: torch.OutOfMemoryError: CUDA error: out of memory"
    assert f"comfyui-eks invoke: {line}" in result.err
    assert result.json()["ok"] is False and result.json()["error"] == [line]


def test_timeout_is_clear_and_cancels_the_prompt(fake: FakeComfyUI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.hold()
    started = time.monotonic()
    result = run(capsys, SDXL, "--url", fake.url, "--timeout", "0.5")
    assert result.code == 1 and time.monotonic() - started < 5
    assert "did not finish within 0.5 s (last seen: queued, next in line)" in result.err
    assert "cancelled prompt" in result.err
    assert fake.queue_ids() == ([], [])


# --------------------------------------------------------------------------------------------
# The load balancer and the pods misbehave


def test_502_pages_on_gets_are_retried(fake: FakeComfyUI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.fail_requests(2, 502, method="GET")
    result = run(capsys, SDXL, "--url", fake.url)
    assert result.code == 0, result.err
    assert "the load balancer answered 502 Bad Gateway: no healthy ComfyUI pod?; retrying GET" in result.err


def test_502_on_submit_is_checked_then_sent_again_once(fake: FakeComfyUI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.fail_requests(1, 502, method="POST", path="/prompt")
    result = run(capsys, SDXL, "--url", fake.url)
    assert result.code == 0, result.err
    assert "ComfyUI did not queue prompt" in result.err and "submitting again" in result.err
    posts = [r for r in fake.request_log if r.path == "/prompt"]
    assert [r.faulted for r in posts] == [True, False]
    assert len(fake.history_ids()) == 1


def test_lost_answer_to_submit_does_not_run_it_twice(fake: FakeComfyUI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.fail_requests(1, 502, method="POST", path="/prompt", after=True)  # queued, then the answer is lost
    result = run(capsys, SDXL, "--url", fake.url, "--format", "json")
    assert result.code == 0, result.err
    assert "ComfyUI has prompt" in result.err and "all the same" in result.err
    assert len([r for r in fake.request_log if r.path == "/prompt"]) == 1
    assert fake.history_ids() == [result.json()["prompt_id"]]


def test_504_on_submit_is_not_sent_again(fake: FakeComfyUI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.fail_requests(1, 504, method="POST", path="/prompt")
    result = run(capsys, SDXL, "--url", fake.url)
    assert result.code == 1
    assert "the load balancer answered 504 Gateway Timeout" in result.err
    assert "not sent again to avoid running it twice" in result.err
    assert len([r for r in fake.request_log if r.path == "/prompt"]) == 1 and fake.history_ids() == []


def test_no_healthy_pod_fails_with_one_clear_line(fake: FakeComfyUI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.fail_requests(100, 502)
    result = run(capsys, SDXL, "--url", fake.url)
    assert result.code == 1
    assert result.err.splitlines()[-1] == (
        "comfyui-eks invoke: the load balancer answered 502 Bad Gateway: no healthy ComfyUI pod? "
        "(GET /queue, 4 attempts)"
    )


def test_unknown_host() -> None:
    with pytest.raises(
        ComfyUnavailable, match=r"^cannot resolve the host name nonexistent.invalid \(GET /queue, 1 attempt\)"
    ):
        ComfyClient("http://nonexistent.invalid", retry=RetryPolicy(attempts=1)).queue()


def test_connection_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeComfyUI() as gone:
        url = gone.url
    result = run(capsys, SDXL, "--url", url)
    assert result.code == 1
    assert f"cannot connect to {url.removeprefix('http://')}: connection refused" in result.err.splitlines()[-1]


def test_dropped_websocket_falls_back_to_polling(fake: FakeComfyUI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.drop_websockets_after(6)
    result = run(capsys, SDXL, "--url", fake.url)
    assert result.code == 0, result.err
    assert "the websocket closed" in result.err and "by polling /history" in result.err
    assert Path("outputs/sdxl/ComfyUI_00001_.png").is_file()


def test_pod_restart_that_lost_the_prompt(fake: FakeComfyUI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.hold()
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(cli.main(["invoke", str(SDXL), "--url", fake.url])))
    thread.start()
    deadline = time.monotonic() + 5
    while not fake.queue_ids()[1] and time.monotonic() < deadline:
        time.sleep(0.01)
    fake.restart()
    thread.join(10)
    assert codes == [1]
    err = capsys.readouterr().err
    assert "is neither queued nor in ComfyUI's history: the ComfyUI pod probably restarted" in err.splitlines()[-1]


def test_two_replicas_behind_the_sticky_alb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeCluster(replicas=2, step_delay=0.001) as cluster:
        first = run(capsys, SDXL, "--url", cluster.url, "--seed", "random", "--format", "json")
        assert first.code == 0, first.err
        used = [r for r in cluster.replicas if r.request_log]
        assert len(used) == 1, "every request of one invoke reaches the same replica"
        requested = {r.path for r in used[0].request_log}
        assert {"/queue", "/ws", "/prompt", "/history/" + first.json()["prompt_id"], "/view"} <= requested

        second = run(capsys, SDXL, "--url", cluster.url, "--seed", "random", "--format", "json")
        assert second.code == 0, second.err
        assert all(r.request_log for r in cluster.replicas), "a new session lands on the other replica"
        # Both replicas named their file ComfyUI_00001_.png: the second download is not overwritten.
        paths = [Path(d.json()["outputs"][0]["path"]) for d in (first, second)]
        assert [p.name for p in paths] == ["ComfyUI_00001_.png", "ComfyUI_00001_-1.png"]
        assert paths[0].read_bytes() != paths[1].read_bytes()

        load = run(capsys, SDXL, "--url", cluster.url, "--count", "4", "--concurrency", "2", "--format", "json")
        assert load.code == 0 and load.json()["succeeded"] == 4
        assert all(len(r.history_ids()) >= 3 for r in cluster.replicas), "load runs spread over the replicas"


def test_pod_draining_mid_prompt_keeps_the_websocket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rollout drains the pod: the ALB moves the sticky session, the websocket stays on the pod.

    Steps slower than the silence check make the client look at /queue and /history, which now
    answer from the other pod: that must not count as a lost prompt.
    """
    with FakeCluster(replicas=2, step_delay=0.3) as cluster:
        assert cluster.proxy is not None
        workflow = tmp_path / "slow.json"
        workflow.write_text(json.dumps(cluster.replicas[0].sample_prompt(steps=3)))
        codes: list[int] = []
        args = ["invoke", str(workflow), "--url", cluster.url]
        thread = threading.Thread(target=lambda: codes.append(cli.main(args)))
        thread.start()
        deadline = time.monotonic() + 5
        running: list[int] = []
        while not running and time.monotonic() < deadline:
            running = [i for i, r in enumerate(cluster.replicas) if r.queue_ids()[0]]
            time.sleep(0.005)
        cluster.proxy.drain(running[0])
        thread.join(10)
        err = capsys.readouterr().err
        assert codes == [1]
        assert "does not know prompt" in err and "following it over the websocket" in err
        assert "no history of prompt" in err and "using the outputs the websocket reported" in err
        assert "GET /view 404): was the pod restarted or drained? Outputs also go to the outputs bucket" in err
        assert "neither queued nor in ComfyUI's history" not in err
        assert cluster.replicas[running[0]].history_ids(), "the prompt finished on the draining pod"


# --------------------------------------------------------------------------------------------
# Load generator


def test_count_and_concurrency_statistics(fake: FakeComfyUI, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, SDXL, "--url", fake.url, "--count", "6", "--concurrency", "3", "--format", "json")
    assert result.code == 0, result.err
    stats = result.json()
    assert stats["count"] == 6 and stats["concurrency"] == 3 and stats["succeeded"] == 6 and stats["failed"] == 0
    assert 0 < stats["latency"]["p50"] <= stats["latency"]["p95"] <= stats["latency"]["max"]
    assert stats["images"] == 6 and stats["images_per_minute"] > 0 and stats["failures"] == []
    assert len({p["3"]["inputs"]["seed"] for p in history_prompts(fake)}) == 6, "a random seed per run"
    assert "each run gets a random seed" in result.err
    assert len(list(Path("outputs/sdxl").iterdir())) == 6


def test_load_with_a_failure_reports_it_and_exits_1(fake: FakeComfyUI, capsys: pytest.CaptureFixture[str]) -> None:
    fake.fail_node(class_type="KSampler", message="boom", exception_type="RuntimeError")
    result = run(capsys, SDXL, "--url", fake.url, "--count", "3", "--concurrency", "2", "--seed", "random")
    assert result.code == 1
    lines = result.out.splitlines()
    assert lines[0].startswith("3 runs, 2 at a time, in ") and lines[0].endswith(": 2 succeeded, 1 failed")
    assert lines[1].startswith("latency p50 ") and lines[2].startswith("images: 2 (")
    assert lines[3] == "failed 1x: node 3 (KSampler) failed: RuntimeError: boom"
    assert result.err.splitlines()[-1] == "comfyui-eks invoke: 1 of 3 runs failed"


def test_percentiles_and_stats() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 21)], 95) == 19.0
    outcomes = [RunOutcome(0, True, 1.0, files=[({}, Path("a"))]), RunOutcome(1, False, error="x")]
    stats = load_stats(outcomes, 30.0, 2)
    assert stats["images_per_minute"] == 2.0 and stats["failures"] == [{"error": "x", "count": 1}]


# --------------------------------------------------------------------------------------------
# Usage


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([SDXL], "--url is required (or set COMFYUI_URL)"),
        ([SDXL, "--url", "ftp://x"], "--url ftp://x: not an http(s) URL"),
        ([SDXL, "--url", "http://x", "--seed", "abc"], "--seed abc: give 'random' or a whole number from 0 to"),
        ([SDXL, "--url", "http://x", "--count", "0"], "--count 0: give the number of runs, 1 or more"),
        ([SDXL, "--url", "http://x", "--concurrency", "0"], "--concurrency 0: give how many runs"),
        ([SDXL, "--url", "http://x", "--timeout", "0"], "--timeout 0: give the seconds"),
        ([SDXL, "--url", "http://x", "--input", "cat.png"], "--input cat.png: expected NAME=PATH"),
        ([SDXL, "--url", "http://x", "--input", "cat.png=/nope.png"], "--input cat.png=/nope.png: no such file"),
        ([SDXL, "--url", "http://x", "--count", "x"], "argument --count: invalid int value: 'x'"),
        ([SDXL, "--url", "http://x", "--input", f"cat.png={SDXL}"], "--input cat.png=...: no LoadImage node uses"),
        ([REPO / "no-such.json", "--url", "http://x"], "no-such.json: no such file"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(
    args: list[str | Path], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(capsys, *args)
    assert result.code == 2
    assert message in result.err


def test_ui_format_workflow_exits_2_with_how_to_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"last_node_id": 2, "nodes": [], "links": [], "version": 0.4}))
    result = run(capsys, ui, "--url", "http://127.0.0.1:9")
    assert result.code == 2
    (line,) = result.err.splitlines()
    assert line.startswith(f"comfyui-eks invoke: {ui} is a workflow in ComfyUI's UI format") and "Export (API)" in line


def test_url_from_the_environment(
    fake: FakeComfyUI, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COMFYUI_URL", fake.url)
    assert run(capsys, SDXL).code == 0


# --------------------------------------------------------------------------------------------
# Client details the CLI relies on


class _Login(http.server.BaseHTTPRequestHandler):
    """A stand-in for an ALB with Cognito (302 to the login page) or a non-ComfyUI server."""

    def do_GET(self) -> None:
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "https://auth.example.com/login")
            self.end_headers()
            return
        body = b"<html><body><h1>Welcome to nginx!</h1></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_login_redirects_and_html_pages_are_explained() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Login)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        with pytest.raises(ComfyHTTPError, match="redirected to https://auth.example.com/login: a login page"):
            ComfyClient(base + "/redirect").queue()
        with pytest.raises(ComfyHTTPError, match=r"answered text/html instead of ComfyUI's JSON \(Welcome to nginx!\)"):
            ComfyClient(base).queue()
    finally:
        server.shutdown()
        server.server_close()


def test_rejection_lines_for_a_graph_error() -> None:
    error = {"type": "invalid_prompt", "message": "Cannot execute because node Nope does not exist.",
             "details": "Node ID '#3'", "extra_info": {}}  # fmt: skip
    assert PromptRejected(error, {}).lines == [
        "ComfyUI rejected the prompt: Cannot execute because node Nope does not exist (Node ID '#3')"
    ]
    assert format_rejection("old style", {}) == ["ComfyUI rejected the prompt: old style"]


def test_rich_progress_on_a_terminal() -> None:
    stream = io.StringIO()
    with Display({"3": {"class_type": "KSampler"}}, stream, force_terminal=True) as display:
        assert display.rich
        display.queued(2)
        display.started()
        display.executing("3")
        display.progress(5, 10, "3")
        display.note("something to know")
    assert "something to know" in stream.getvalue()


# --------------------------------------------------------------------------------------------
# The installed console script


def test_console_script(fake: FakeComfyUI, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "comfyui-eks"
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    command = [str(script), "invoke", str(SDXL), "--url", fake.url, "--out", str(tmp_path / "o"), "--format", "json"]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert Path(document["outputs"][0]["path"]).is_file()
