"""The fake ComfyUI (tests/fake_comfyui.py) against ComfyUI v0.8.1's API shapes.

These tests talk to the fake with plain requests and websocket-client, not with the project's
client, so the fake cannot drift to whatever the client happens to expect. Each expectation
comes from ComfyUI's server.py, execution.py or main.py at v0.8.1.
"""

from __future__ import annotations

import json
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import websocket

from tests.fake_comfyui import FakeCluster, FakeComfyUI, StickyProxy, png_bytes, png_size

Json = dict[str, Any]


@pytest.fixture(autouse=True)
def _direct_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever proxy the runner sets, 127.0.0.1 is reached directly."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def fake() -> Iterator[FakeComfyUI]:
    with FakeComfyUI(step_delay=0.001) as server:
        yield server


def connect(url: str, client_id: str, cookie: str | None = None) -> websocket.WebSocket:
    ws_url = url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
    options: dict[str, Any] = {"cookie": cookie} if cookie else {}
    return websocket.create_connection(ws_url, timeout=5, **options)


def receive_until_done(ws: websocket.WebSocket, prompt_id: str) -> tuple[list[Json], int]:
    """JSON messages up to `executing` with node null for the prompt; and the binary frame count."""
    messages: list[Json] = []
    binary = 0
    while True:
        frame = ws.recv()
        if isinstance(frame, bytes):
            binary += 1
            assert struct.unpack(">II", frame[:8]) == (1, 2)  # PREVIEW_IMAGE, PNG
            assert png_size(frame[8:]) is not None
            continue
        message = json.loads(frame)
        messages.append(message)
        data = message["data"]
        if message["type"] == "executing" and data["node"] is None and data.get("prompt_id") == prompt_id:
            return messages, binary
        if message["type"] in ("execution_error", "execution_interrupted"):
            continue


def submit(url: str, prompt: Json, **body: Any) -> requests.Response:
    return requests.post(url + "/prompt", json={"prompt": prompt, **body}, timeout=5)


# --------------------------------------------------------------------------------------------
# The happy path


def test_prompt_messages_history_and_view(fake: FakeComfyUI) -> None:
    fake.previews = True
    ws = connect(fake.url, "me")
    first = json.loads(ws.recv())
    assert first == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "me"}}
    answer = submit(fake.url, fake.sample_prompt(steps=4), client_id="me")
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"prompt_id", "number", "node_errors"} and body["node_errors"] == {}
    prompt_id = body["prompt_id"]
    messages, previews = receive_until_done(ws, prompt_id)
    ws.close()

    kinds = [m["type"] for m in messages if m["type"] not in ("status", "progress_state")]
    assert kinds[:2] == ["execution_start", "execution_cached"]
    assert kinds[-2:] == ["execution_success", "executing"]
    assert previews == 4
    progress = [m["data"] for m in messages if m["type"] == "progress"]
    assert progress == [{"value": i, "max": 4, "prompt_id": prompt_id, "node": "3"} for i in range(1, 5)]
    executing = [m["data"] for m in messages if m["type"] == "executing"]
    assert executing[0] == {"node": executing[0]["node"], "display_node": executing[0]["node"], "prompt_id": prompt_id}
    assert executing[-1] == {"node": None, "prompt_id": prompt_id}
    (executed,) = [m["data"] for m in messages if m["type"] == "executed"]
    assert executed["node"] == "9" and executed["prompt_id"] == prompt_id
    (image,) = executed["output"]["images"]
    assert image == {"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}
    assert any(m["type"] == "status" and "sid" not in m["data"] for m in messages)  # broadcast on queue changes

    history = requests.get(f"{fake.url}/history/{prompt_id}", timeout=5).json()
    entry = history[prompt_id]
    assert set(entry) == {"prompt", "outputs", "status", "meta"}
    _number, item_id, _prompt, extra_data, outputs = entry["prompt"]
    assert item_id == prompt_id and outputs == ["9"] and extra_data["client_id"] == "me" and "create_time" in extra_data
    assert entry["outputs"] == {"9": {"images": [image]}}
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [event for event, _ in entry["status"]["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_success",
    ]
    assert entry["meta"]["9"]["node_id"] == "9"
    assert requests.get(f"{fake.url}/history", timeout=5).json() == history
    assert requests.get(f"{fake.url}/history/nope", timeout=5).json() == {}

    view = requests.get(f"{fake.url}/view", params=image, timeout=5)
    assert view.status_code == 200 and view.headers["Content-Type"] == "image/png"
    assert view.headers["Content-Disposition"] == 'filename="ComfyUI_00001_.png"'
    assert png_size(view.content) == (64, 64)  # 512 x 512 / 8


def test_identical_prompt_is_answered_from_the_cache(fake: FakeComfyUI) -> None:
    prompt = fake.sample_prompt(steps=2)
    ws = connect(fake.url, "me")
    first = submit(fake.url, prompt, client_id="me").json()["prompt_id"]
    receive_until_done(ws, first)
    second = submit(fake.url, prompt, client_id="me").json()["prompt_id"]
    messages, _ = receive_until_done(ws, second)
    ws.close()
    cached = next(m["data"]["nodes"] for m in messages if m["type"] == "execution_cached")
    assert sorted(cached) == sorted(prompt)
    assert not [m for m in messages if m["type"] == "progress"]
    # ComfyUI sends "executed" for every cached node; only SaveImage has output: the earlier file.
    executed = {m["data"]["node"]: m["data"]["output"] for m in messages if m["type"] == "executed"}
    assert set(executed) == set(prompt)
    assert executed.pop("9")["images"][0]["filename"] == "ComfyUI_00001_.png"
    assert set(map(str, executed.values())) == {"None"}


def test_client_chosen_prompt_id_number_and_api_prefix(fake: FakeComfyUI) -> None:
    chosen = str(uuid.uuid4())
    fake.hold()
    body = requests.post(
        f"{fake.url}/api/prompt", json={"prompt": fake.sample_prompt(), "prompt_id": chosen}, timeout=5
    ).json()
    assert body["prompt_id"] == chosen and body["number"] == 0
    front = submit(fake.url, fake.sample_prompt(seed=1), front=True).json()
    assert front["number"] == -1
    assert requests.get(f"{fake.url}/prompt", timeout=5).json() == {"exec_info": {"queue_remaining": 2}}


# --------------------------------------------------------------------------------------------
# Validation (execution.validate_prompt)


def test_unknown_class_missing_class_type_and_no_outputs(fake: FakeComfyUI) -> None:
    prompt = fake.sample_prompt()
    prompt["3"]["class_type"] = "NoSuchNode"
    answer = submit(fake.url, prompt)
    assert answer.status_code == 400
    assert answer.json() == {
        "error": {
            "type": "invalid_prompt",
            "message": "Cannot execute because node NoSuchNode does not exist.",
            "details": "Node ID '#3'",
            "extra_info": {},
        },
        "node_errors": {},
    }
    prompt = fake.sample_prompt()
    del prompt["4"]["class_type"]
    assert submit(fake.url, prompt).json()["error"]["message"].endswith("missing the class_type property.")
    prompt = fake.sample_prompt()
    del prompt["9"]
    assert submit(fake.url, prompt).json()["error"]["type"] == "prompt_no_outputs"
    no_prompt = requests.post(f"{fake.url}/prompt", json={"client_id": "x"}, timeout=5)
    assert no_prompt.status_code == 400 and no_prompt.json()["error"]["type"] == "no_prompt"
    not_json = requests.post(f"{fake.url}/prompt", data=b"{", timeout=5)
    assert not_json.status_code == 500


def test_node_errors_shape(fake: FakeComfyUI) -> None:
    prompt = fake.sample_prompt()
    del prompt["3"]["inputs"]["steps"]
    prompt["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    prompt["5"]["inputs"]["width"] = 8
    answer = submit(fake.url, prompt)
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["error"]["message"] == "Prompt outputs failed validation"
    errors = body["node_errors"]
    assert set(errors) == {"3", "4", "5"}
    assert errors["3"] == {
        "errors": [
            {
                "type": "required_input_missing",
                "message": "Required input is missing",
                "details": "steps",
                "extra_info": {"input_name": "steps"},
            }
        ],
        "dependent_outputs": ["9"],
        "class_type": "KSampler",
    }
    (missing,) = errors["4"]["errors"]
    assert missing["type"] == "value_not_in_list" and missing["message"] == "Value not in list"
    assert missing["details"].startswith("ckpt_name: 'missing.safetensors' not in ['")
    (small,) = errors["5"]["errors"]
    assert small["type"] == "value_smaller_than_min" and small["message"] == "Value 8 smaller than min of 16"


@pytest.mark.parametrize(
    ("node", "name", "value", "kind"),
    [
        ("9", "images", ["99", 0], "exception_during_validation"),  # the output node itself
        ("8", "samples", ["99", 0], "exception_during_inner_validation"),  # a node upstream of it
        ("8", "samples", ["3", 5], "exception_during_inner_validation"),  # no such output index
        ("8", "samples", ["4", 0], "return_type_mismatch"),  # MODEL into LATENT
        ("8", "samples", ["3"], "bad_linked_input"),
        ("3", "steps", "many", "invalid_input_type"),
    ],
)
def test_bad_links_and_values(fake: FakeComfyUI, node: str, name: str, value: Any, kind: str) -> None:
    prompt = fake.sample_prompt()
    prompt[node]["inputs"][name] = value
    answer = submit(fake.url, prompt)
    assert answer.status_code == 400
    kinds = [e["type"] for entry in answer.json()["node_errors"].values() for e in entry["errors"]]
    assert kind in kinds


def test_load_image_needs_the_file(fake: FakeComfyUI) -> None:
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    body = submit(fake.url, prompt).json()
    (error,) = body["node_errors"]["1"]["errors"]
    assert error["type"] == "custom_validation_failed"
    assert error["details"] == "image - Invalid image file: nope.png"


# --------------------------------------------------------------------------------------------
# Queue, interrupt, uploads, catalogue


def test_queue_delete_clear_and_interrupt(fake: FakeComfyUI) -> None:
    fake.hold()
    ids = [submit(fake.url, fake.sample_prompt(seed=i), client_id="me").json()["prompt_id"] for i in range(3)]
    queue = requests.get(f"{fake.url}/queue", timeout=5).json()
    assert queue["queue_running"] == []
    assert [item[1] for item in queue["queue_pending"]] == ids
    number, prompt_id, prompt, extra_data, outputs = queue["queue_pending"][0]
    assert number == 0 and outputs == ["9"] and extra_data["client_id"] == "me" and prompt["3"]["class_type"]
    assert requests.post(f"{fake.url}/queue", json={"delete": [ids[1]]}, timeout=5).status_code == 200
    assert fake.queue_ids() == ([], [ids[0], ids[2]])
    requests.post(f"{fake.url}/queue", json={"clear": True}, timeout=5)
    assert fake.queue_ids() == ([], [])

    fake.step_delay = 0.05
    ws = connect(fake.url, "me")
    prompt_id = submit(fake.url, fake.sample_prompt(steps=200, seed=9), client_id="me").json()["prompt_id"]
    fake.release()
    while json.loads(ws.recv())["type"] != "progress":
        pass
    assert requests.post(f"{fake.url}/interrupt", json={"prompt_id": "someone-else"}, timeout=5).status_code == 200
    requests.post(f"{fake.url}/interrupt", json={"prompt_id": prompt_id}, timeout=5)
    messages, _ = receive_until_done(ws, prompt_id)
    ws.close()
    (stopped,) = [m["data"] for m in messages if m["type"] == "execution_interrupted"]
    assert stopped["prompt_id"] == prompt_id and stopped["node_id"] == "3" and stopped["node_type"] == "KSampler"
    status = requests.get(f"{fake.url}/history/{prompt_id}", timeout=5).json()[prompt_id]["status"]
    assert status["status_str"] == "error" and status["completed"] is False
    assert status["messages"][-1][0] == "execution_interrupted"


def test_upload_image_names_and_view(fake: FakeComfyUI) -> None:
    def upload(data: bytes, **form: str) -> Json:
        files = {"image": ("photo.png", data, "image/png")}
        answer = requests.post(f"{fake.url}/upload/image", files=files, data=form, timeout=5)
        assert answer.status_code == 200
        return dict(answer.json())

    red, blue = png_bytes(2, 2, (255, 0, 0)), png_bytes(2, 2, (0, 0, 255))
    assert upload(red) == {"name": "photo.png", "subfolder": "", "type": "input"}
    assert upload(red)["name"] == "photo.png"  # identical bytes: the same file
    assert upload(blue)["name"] == "photo (1).png"
    assert upload(blue, overwrite="true")["name"] == "photo.png"
    assert upload(red, subfolder="shots") == {"name": "photo.png", "subfolder": "shots", "type": "input"}
    view = requests.get(f"{fake.url}/view", params={"filename": "photo.png", "type": "input"}, timeout=5)
    assert view.content == blue
    assert requests.post(f"{fake.url}/upload/image", data={"type": "input"}, timeout=5).status_code == 400
    for params, status in [
        ({}, 404),
        ({"filename": "nope.png"}, 404),
        ({"filename": "../etc/passwd"}, 400),
        ({"filename": "x.png", "type": "nope"}, 400),
        ({"filename": "x.png", "subfolder": "../.."}, 403),
    ]:
        assert requests.get(f"{fake.url}/view", params=params, timeout=5).status_code == status


def test_system_stats_and_object_info_shapes(fake: FakeComfyUI) -> None:
    stats = requests.get(f"{fake.url}/system_stats", timeout=5).json()
    assert set(stats["system"]) >= {"os", "ram_total", "ram_free", "comfyui_version", "python_version", "argv"}
    assert stats["system"]["comfyui_version"] == "0.8.1"
    assert set(stats["devices"][0]) == {
        "name",
        "type",
        "index",
        "vram_total",
        "vram_free",
        "torch_vram_total",
        "torch_vram_free",
    }
    info = requests.get(f"{fake.url}/object_info", timeout=5).json()
    ckpt = info["CheckpointLoaderSimple"]
    assert set(ckpt) >= {"input", "input_order", "output", "output_is_list", "output_name", "name", "display_name",
                         "description", "python_module", "category", "output_node"}  # fmt: skip
    options, extra = ckpt["input"]["required"]["ckpt_name"]  # a classic node: [options, {...}]
    assert "sd_xl_base_1.0.safetensors" in options and extra == {}
    assert ckpt["output"] == ["MODEL", "CLIP", "VAE"] and ckpt["output_node"] is False
    kind, extra = info["KSamplerSelect"]["input"]["required"]["sampler_name"]  # a v3 node: ["COMBO", {options}]
    assert kind == "COMBO" and "euler" in extra["options"]
    assert info["SaveImage"]["output_node"] is True
    assert info["SaveImage"]["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert info["KSampler"]["input"]["required"]["seed"] == [
        "INT",
        {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True},
    ]
    assert requests.get(f"{fake.url}/object_info/KSampler", timeout=5).json() == {"KSampler": info["KSampler"]}
    assert requests.get(f"{fake.url}/object_info/Nope", timeout=5).json() == {}


# --------------------------------------------------------------------------------------------
# Fault knobs


def test_fail_requests_answers_like_an_alb(fake: FakeComfyUI) -> None:
    fake.fail_requests(2, 502, method="GET", path="/queue")
    for _ in range(2):
        answer = requests.get(f"{fake.url}/queue", timeout=5)
        assert answer.status_code == 502 and answer.headers["Server"] == "awselb/2.0"
        assert "<title>502 Bad Gateway</title>" in answer.text
    assert requests.get(f"{fake.url}/queue", timeout=5).status_code == 200
    fake.fail_requests(1, 504)
    assert "504 Gateway Time-out" in requests.get(f"{fake.url}/history", timeout=5).text
    assert [r.faulted for r in fake.request_log] == [True, True, False, True]


def test_fail_node_sends_execution_error(fake: FakeComfyUI) -> None:
    fake.fail_node(class_type="VAEDecode", message="boom", exception_type="RuntimeError")
    ws = connect(fake.url, "me")
    prompt_id = submit(fake.url, fake.sample_prompt(steps=1), client_id="me").json()["prompt_id"]
    messages, _ = receive_until_done(ws, prompt_id)
    ws.close()
    (error,) = [m["data"] for m in messages if m["type"] == "execution_error"]
    assert set(error) >= {"prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type",
                          "traceback", "current_inputs", "current_outputs"}  # fmt: skip
    assert (error["node_id"], error["node_type"], error["exception_type"]) == ("8", "VAEDecode", "RuntimeError")
    assert error["exception_message"].startswith("boom") and isinstance(error["traceback"], list)
    entry = requests.get(f"{fake.url}/history/{prompt_id}", timeout=5).json()[prompt_id]
    assert entry["status"]["status_str"] == "error" and entry["status"]["messages"][-1][0] == "execution_error"


def assert_closed(ws: websocket.WebSocket) -> int:
    """The server closed the socket (a close frame or a broken connection); frames read before."""
    frames = 0
    try:
        while ws.recv() != "":
            frames += 1
    except websocket.WebSocketTimeoutException:
        pytest.fail("the websocket is still open")
    except (websocket.WebSocketException, OSError):
        pass
    return frames


def test_dropped_websocket_restart_and_foreign_prompts(fake: FakeComfyUI) -> None:
    ws = connect(fake.url, "me")
    ws.recv()
    fake.drop_websockets_after(3)
    submit(fake.url, fake.sample_prompt(steps=20), client_id="me")
    assert assert_closed(ws) == 3

    fake.hold()
    foreign = fake.add_foreign_prompts(2)
    queue = requests.get(f"{fake.url}/queue", timeout=5).json()
    assert {item[1]: item[3]["client_id"] for item in queue["queue_pending"]} == dict.fromkeys(foreign, "browser-user")
    ws = connect(fake.url, "me")
    ws.recv()
    fake.restart()
    assert_closed(ws)
    assert fake.history_ids() == [] and fake.queue_ids() == ([], [])
    assert requests.get(f"{fake.url}/queue", timeout=5).json() == {"queue_running": [], "queue_pending": []}


def test_png_writer() -> None:
    data = png_bytes(3, 2, (1, 2, 3), {"prompt": "{}"})
    assert png_size(data) == (3, 2)
    position, chunks = 8, []
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        tag, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF
        chunks.append((tag, body))
        position += 12 + length
    assert [tag for tag, _ in chunks] == [b"IHDR", b"tEXt", b"IDAT", b"IEND"]
    assert zlib.decompress(chunks[2][1]) == (b"\x00" + bytes([1, 2, 3]) * 3) * 2


# --------------------------------------------------------------------------------------------
# The sticky proxy


def test_sticky_proxy_routes_by_cookie_and_proxies_websockets() -> None:
    with FakeCluster(replicas=2, step_delay=0.001) as cluster:
        assert cluster.proxy is not None
        first, second = requests.Session(), requests.Session()
        first.get(f"{cluster.url}/queue", timeout=5)
        second.get(f"{cluster.url}/queue", timeout=5)
        token = first.cookies["AWSALB"]
        assert cluster.proxy.replica_for_cookie(token) == 0
        assert cluster.proxy.replica_for_cookie(second.cookies["AWSALB"]) == 1  # round-robin without a cookie
        for _ in range(3):
            first.get(f"{cluster.url}/system_stats", timeout=5)
        ws = connect(cluster.url, "me", cookie=f"AWSALB={token}")
        assert json.loads(ws.recv())["type"] == "status"
        prompt_id = first.post(
            f"{cluster.url}/prompt", json={"prompt": cluster.replicas[0].sample_prompt(), "client_id": "me"}, timeout=5
        ).json()["prompt_id"]
        receive_until_done(ws, prompt_id)
        ws.close()
        paths = [(r.method, r.path) for r in cluster.replicas[0].request_log]
        assert paths == [("GET", "/queue")] + [("GET", "/system_stats")] * 3 + [("GET", "/ws"), ("POST", "/prompt")]
        assert [(r.method, r.path) for r in cluster.replicas[1].request_log] == [("GET", "/queue")]
        assert cluster.replicas[0].history_ids() == [prompt_id]
        answer = requests.get(f"{cluster.url}/queue", timeout=5)
        set_cookie = answer.headers["Set-Cookie"]
        assert "AWSALB=" in set_cookie and "Path=/" in set_cookie
        assert any("SameSite=None" in c and "Secure" in c for c in answer.raw.headers.getlist("Set-Cookie"))


def test_sticky_proxy_answers_502_for_a_dead_replica() -> None:
    with FakeComfyUI() as gone:
        dead_url = gone.url
    with StickyProxy([dead_url]) as proxy:
        answer = requests.get(f"{proxy.url}/queue", timeout=5)
        assert answer.status_code == 502 and "502 Bad Gateway" in answer.text
        proxy.fail_requests(1, 503)
        assert requests.get(f"{proxy.url}/queue", timeout=5).status_code == 503


def test_sticky_proxy_loses_the_answer_after_the_replica_queued_the_prompt() -> None:
    """fail_requests(after=True) on the proxy: the replica gets the prompt, the caller a 502."""
    with FakeCluster(replicas=1, step_delay=0.001) as cluster:
        assert cluster.proxy is not None
        cluster.proxy.fail_requests(1, 502, method="POST", path="/prompt", after=True)
        chosen = "0f6a3b52-7c1e-4c39-9a51-2d1a4e0b9c11"
        body = {"prompt": cluster.replicas[0].sample_prompt(), "prompt_id": chosen}
        answer = requests.post(f"{cluster.url}/prompt", json=body, timeout=5)
        assert answer.status_code == 502 and "502 Bad Gateway" in answer.text
        assert ("POST", "/prompt") in [(r.method, r.path) for r in cluster.replicas[0].request_log]
        deadline = time.monotonic() + 10
        while chosen not in cluster.replicas[0].history_ids():
            assert time.monotonic() < deadline, "the replica never ran the prompt whose answer was lost"
            time.sleep(0.02)
        assert requests.post(f"{cluster.url}/prompt", json=body, timeout=5).status_code != 502  # spent
