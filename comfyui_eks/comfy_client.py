"""A small synchronous client of ComfyUI's HTTP and websocket API, made for ComfyUI behind an ALB.

It depends only on the standard library, `requests` and `websocket-client`, because it also ships
into the ComfyUI pod for the job-runner sidecar.

Why it is shaped like this:

- Stickiness. The ALB pins a client to one pod with its target-group cookies (AWSALB,
  AWSALBCORS). Each ComfyClient keeps one `requests.Session`, makes a GET before anything else
  so the cookie exists, and sends the same cookies in the websocket handshake: the prompt, its
  websocket, its history and its files all live on the pod that queued it.
- Progress over the websocket (/ws?clientId=...), with a safety net: when the socket is silent
  the client pings it (the ALB closes idle connections) and looks at /queue and /history; when
  the socket fails or drops, it follows the prompt by polling instead.
- Retries only where they are safe. GETs, uploads (ComfyUI de-duplicates identical bytes under
  the same name), targeted interrupts and queue deletions are idempotent: they are retried with
  exponential backoff on connection failures, timeouts and 502/503/504 pages. POST /prompt is not
  idempotent, so it is never blindly repeated: the client chooses the prompt_id (ComfyUI v0.8.1
  honours a "prompt_id" in the body), and resubmits only when ComfyUI provably did not queue it:
  the request never reached a pod (connection refused, DNS failure, connect timeout, ALB 503
  "no healthy targets"), or the connection to the pod broke (502, reset) and neither /queue nor
  /history knows the prompt_id. After a 504 or a read timeout the pod may still be working on
  the request, so the client only looks for the prompt_id and otherwise stops with
  SubmitUncertain instead of risking a second run.
- Lost prompts. In ComfyUI a queued prompt is always either pending, running or in the
  history (PromptQueue moves it under one lock), so the client checks /queue first and then
  /history: a prompt found in neither, twice in a row, was lost (the pod restarted, or someone
  deleted it) and PromptLost says so instead of waiting for the timeout. One exception: while
  the websocket is up and carries the prompt's messages, the prompt's pod is alive and the ALB
  has moved this session to another pod (the prompt's pod drains during a rollout; the ALB
  keeps open connections on a draining target but routes new requests elsewhere). Then the
  client keeps following the websocket and takes the outputs the websocket reported.

Every error is a ComfyError whose message is one line per problem, ready for a CLI.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mimetypes
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Self
from urllib.parse import quote, urlsplit, urlunsplit

import requests
import websocket
from requests.utils import DEFAULT_CA_BUNDLE_PATH

Json = dict[str, Any]

LB_REASONS = {
    502: "502 Bad Gateway: no healthy ComfyUI pod?",
    503: "503 Service Unavailable: no healthy ComfyUI pod (starting, or scaled to zero)?",
    504: "504 Gateway Timeout: ComfyUI did not answer in time (pod busy or stuck?)",
}


# --------------------------------------------------------------------------------------------
# Errors


class ComfyError(Exception):
    """Any failure talking to ComfyUI; `lines` is the message, one line per problem."""

    def __init__(self, *lines: str):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


class ComfyUnavailable(ComfyError):
    """ComfyUI could not be reached or the load balancer had no answer from it (retryable).

    `reached` is False when the request certainly never reached a ComfyUI pod, and
    `broken` is True when the connection to the pod broke (a 502 or a reset): for both, a
    POST /prompt that ComfyUI does not know can be sent again.
    """

    def __init__(self, message: str, *, reached: bool = True, broken: bool = False):
        super().__init__(message)
        self.reached = reached
        self.broken = broken


class LoadBalancerError(ComfyUnavailable):
    """The load balancer answered with its own 502/503/504 page."""

    def __init__(self, status: int):
        reason = LB_REASONS.get(status, f"{status}")
        super().__init__(f"the load balancer answered {reason}", reached=status != 503, broken=status == 502)
        self.status = status


class ComfyHTTPError(ComfyError):
    """ComfyUI (or something in front of it) answered in a way the API does not."""


class PromptRejected(ComfyError):
    """POST /prompt was answered 400: ComfyUI's validation error and node errors."""

    def __init__(self, error: Any, node_errors: Json):
        super().__init__(*format_rejection(error, node_errors))
        self.error = error
        self.node_errors = node_errors


class SubmitUncertain(ComfyError):
    """POST /prompt may or may not have been queued; it was not resubmitted."""


class ExecutionFailed(ComfyError):
    """The prompt ran and a node raised (ComfyUI's execution_error)."""

    def __init__(self, prompt_id: str, data: Json):
        node = f"node {data.get('node_id')} ({data.get('node_type')})"
        message = [line.strip() for line in str(data.get("exception_message", "")).splitlines() if line.strip()]
        first = f"{data.get('exception_type', 'error')}: {message[0]}" if message else "no exception message"
        super().__init__(f"{node} failed: {first}", *message[1:])
        self.prompt_id = prompt_id
        self.data = data


class ExecutionInterrupted(ComfyError):
    """The prompt was interrupted (POST /interrupt) while it ran."""


class PromptLost(ComfyError):
    """The prompt is neither queued nor in the history: the pod restarted, or it was deleted."""


class WaitTimeout(ComfyError):
    """The prompt did not finish in time."""

    def __init__(self, *lines: str, prompt_id: str | None = None):
        super().__init__(*lines)
        self.prompt_id = prompt_id


def format_rejection(error: Any, node_errors: Json) -> list[str]:
    """ComfyUI's 400 answer to POST /prompt as lines: the error, then one line per node error."""
    if isinstance(error, dict):
        head = str(error.get("message", "invalid prompt")).rstrip(".")
        details = str(error.get("details", "")).strip()
        if details and not node_errors:
            head += f" ({details})"
    else:
        head = str(error or "invalid prompt")
    lines = [f"ComfyUI rejected the prompt: {head}"]
    for node_id in sorted(node_errors, key=_node_order):
        entry = node_errors[node_id] or {}
        for problem in entry.get("errors", []):
            text = problem.get("message", "error")
            if problem.get("details"):
                text += f": {problem['details']}"
            lines.append(f"node {node_id} ({entry.get('class_type', '?')}): {' '.join(text.split())}")
    return lines


def _node_order(node_id: str) -> tuple[int, int | str]:
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


# --------------------------------------------------------------------------------------------
# Results and callbacks


@dataclass(frozen=True)
class OutputFile:
    """One file a node wrote, as ComfyUI lists it ({filename, subfolder, type})."""

    node_id: str
    kind: str  # the UI output key: images, gifs, audio, ...
    filename: str
    subfolder: str
    type: str  # output, temp or input

    def as_dict(self) -> Json:
        return {
            "node_id": self.node_id,
            "kind": self.kind,
            "filename": self.filename,
            "subfolder": self.subfolder,
            "type": self.type,
        }


@dataclass(frozen=True)
class Submission:
    """ComfyUI's answer to POST /prompt."""

    prompt_id: str
    number: float | None
    node_errors: Json
    attempts: int = 1


@dataclass(frozen=True)
class PromptResult:
    """A finished prompt: its output files and its history entry."""

    prompt_id: str
    outputs: list[OutputFile]
    history: Json = field(repr=False)
    seconds: float = 0.0
    from_socket: bool = False  # no history entry was reachable: outputs as the websocket reported them


@dataclass(frozen=True)
class UploadedImage:
    """Where ComfyUI stored an upload; `reference` is what a LoadImage `image` input takes."""

    name: str
    subfolder: str
    type: str

    @property
    def reference(self) -> str:
        return f"{self.subfolder}/{self.name}" if self.subfolder else self.name


class Listener:
    """Callbacks while a prompt is followed; override what you need (all default to nothing)."""

    def queued(self, ahead: int) -> None:
        """The prompt waits; `ahead` prompts (running or pending) come first."""

    def started(self) -> None:
        """ComfyUI started executing the prompt."""

    def executing(self, node_id: str) -> None:
        """A node started."""

    def progress(self, value: int, maximum: int, node_id: str | None) -> None:
        """A step of a long node (a sampler) finished."""

    def executed(self, node_id: str, output: Json) -> None:
        """A node produced UI output (e.g. {"images": [...]})."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently idempotent requests are repeated."""

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0

    def delays(self) -> Iterator[float]:
        delay = self.backoff
        for _ in range(self.attempts - 1):
            yield delay
            delay = min(delay * 2, self.max_backoff)


class _SocketLost(Exception):
    """The websocket failed; the prompt is followed by polling instead."""


# --------------------------------------------------------------------------------------------
# The client


class ComfyClient:
    """ComfyUI's API over one HTTP session (one ALB stickiness cookie) and its websocket."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        poll_interval: float = 1.0,
        silence_check: float = 10.0,
        notice: Callable[[str], None] | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.base_url = normalize_url(url)
        self.client_id = client_id or uuid.uuid4().hex
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.poll_interval = poll_interval
        self.silence_check = silence_check
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", "comfyui-eks")
        self._notice = notice or (lambda message: None)
        self._sleep = sleep
        self.last_prompt_id: str | None = None  # the latest prompt submit() sent (or tried to)

    def fork(self) -> ComfyClient:
        """Another client on the same pod (a copy of the cookies), e.g. to cancel from another thread."""
        session = requests.Session()
        session.cookies.update(self.session.cookies)
        session.headers.update(self.session.headers)
        session.verify = self.session.verify
        return ComfyClient(
            self.base_url,
            client_id=self.client_id,
            timeout=self.timeout,
            retry=self.retry,
            poll_interval=self.poll_interval,
            silence_check=self.silence_check,
            notice=self._notice,
            session=session,
            sleep=self._sleep,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    @property
    def ws_url(self) -> str:
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path + "/ws", f"clientId={quote(self.client_id)}", ""))

    # -- HTTP ------------------------------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One HTTP request; transport failures and load-balancer pages become ComfyUnavailable."""
        what = f"{method} {path}"
        try:
            response = self.session.request(
                method,
                self.base_url + path,
                timeout=(min(10.0, self.timeout), self.timeout),
                allow_redirects=False,
                **kwargs,
            )
        except requests.exceptions.ConnectTimeout as exc:
            raise ComfyUnavailable(
                f"cannot connect to {self._host}: no answer within {self._seconds}", reached=False
            ) from exc
        except requests.exceptions.ReadTimeout as exc:
            raise ComfyUnavailable(f"ComfyUI at {self._host} did not answer {what} within {self._seconds}") from exc
        except requests.exceptions.SSLError as exc:
            raise ComfyError(f"TLS error talking to {self._host}: {_root_cause(exc)}") from exc
        except requests.exceptions.ConnectionError as exc:
            raise self._connection_error(exc, what) from exc
        if response.status_code in LB_REASONS:
            response.close()
            raise LoadBalancerError(response.status_code)
        if 300 <= response.status_code < 400:
            location = response.headers.get("Location", "?")
            raise ComfyHTTPError(
                f"{what} was redirected to {location}: a login page? With auth.mode cognito, scripts use the "
                "internal API endpoint (auth.internal_api_endpoint: true)"
            )
        return response

    @property
    def _host(self) -> str:
        return urlsplit(self.base_url).netloc

    @property
    def _seconds(self) -> str:
        return f"{self.timeout:g} s"

    def _connection_error(self, exc: Exception, what: str) -> ComfyUnavailable:
        cause = _root_cause(exc)
        text = f"{exc} {cause}"
        if "Name or service not known" in text or "NameResolution" in text or "Failed to resolve" in text:
            return ComfyUnavailable(f"cannot resolve the host name {urlsplit(self.base_url).hostname}", reached=False)
        if isinstance(cause, ConnectionRefusedError) or "Connection refused" in text:
            return ComfyUnavailable(
                f"cannot connect to {self._host}: connection refused (is the URL right and the ALB or "
                "port-forward up?)",
                reached=False,
            )
        if "NewConnectionError" in type(cause).__name__ or "NewConnectionError" in text:
            return ComfyUnavailable(f"cannot connect to {self._host}: {cause}", reached=False)
        return ComfyUnavailable(f"the connection to {self._host} broke during {what}: {cause}", broken=True)

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """An idempotent request, retried with backoff while ComfyUI is unavailable."""
        delays = self.retry.delays()
        attempt = 1
        while True:
            try:
                return self._send(method, path, **kwargs)
            except ComfyUnavailable as exc:
                delay = next(delays, None)
                if delay is None:
                    raise ComfyUnavailable(
                        f"{exc} ({method} {path}, {_attempts(attempt)})", reached=exc.reached
                    ) from exc
                self._notice(f"{exc}; retrying {method} {path} in {delay:g} s")
                self._sleep(delay)
                attempt += 1

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        return _decode(response, f"{method} {path}")

    # -- queries ---------------------------------------------------------------------------

    def system_stats(self) -> Json:
        return dict(self._json("GET", "/system_stats"))

    def object_info(self, node_class: str | None = None) -> Json:
        return dict(self._json("GET", "/object_info" + (f"/{quote(node_class)}" if node_class else "")))

    def queue(self) -> Json:
        """GET /queue: {"queue_running": [...], "queue_pending": [...]}."""
        return dict(self._json("GET", "/queue"))

    def queue_length(self) -> int:
        """Prompts running or waiting on this pod (anyone's: a browser user's count too)."""
        queue = self.queue()
        return len(queue.get("queue_running", [])) + len(queue.get("queue_pending", []))

    def history(self, prompt_id: str) -> Json | None:
        """The history entry of a prompt, or None while ComfyUI has none."""
        answer = self._json("GET", f"/history/{quote(prompt_id)}")
        entry = answer.get(prompt_id) if isinstance(answer, dict) else None
        return entry if isinstance(entry, dict) else None

    def state(self, prompt_id: str) -> tuple[str, Any]:
        """("running", 0) | ("queued", prompts ahead) | ("done", history entry) | ("lost", None).

        /queue is read before /history: ComfyUI moves a prompt from the queue to the history
        under one lock, so a prompt that left the queue is in the history by the second read.
        """
        queue = self.queue()
        running = queue.get("queue_running", [])
        if any(_item_id(item) == prompt_id for item in running):
            return "running", 0
        pending = sorted(queue.get("queue_pending", []), key=lambda item: item[0] if item else 0)
        for index, item in enumerate(pending):
            if _item_id(item) == prompt_id:
                return "queued", len(running) + index
        entry = self.history(prompt_id)
        return ("done", entry) if entry is not None else ("lost", None)

    # -- submit, follow, run ---------------------------------------------------------------

    def submit(self, prompt: Json, *, prompt_id: str | None = None, extra_data: Json | None = None) -> Submission:
        """POST /prompt; see the module docstring for when it is sent again."""
        prompt_id = prompt_id or str(uuid.uuid4())
        self.last_prompt_id = prompt_id
        body: Json = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id}
        if extra_data:
            body["extra_data"] = extra_data
        delays = self.retry.delays()
        attempt = 1
        while True:
            try:
                response = self._send("POST", "/prompt", json=body)
                return _submission(response, prompt_id, attempt)
            except ComfyUnavailable as exc:
                if exc.reached:
                    if self._known(prompt_id):
                        self._notice(f"{exc}; ComfyUI has prompt {prompt_id} all the same")
                        return Submission(prompt_id, None, {}, attempt)
                    if not exc.broken:
                        raise SubmitUncertain(
                            f"{exc} while submitting prompt {prompt_id}; ComfyUI does not know it (yet), and it "
                            "was not sent again to avoid running it twice: look at /queue and /history"
                        ) from exc
                delay = next(delays, None)
                if delay is None:
                    raise ComfyUnavailable(f"{exc} (POST /prompt, {_attempts(attempt)})", reached=exc.reached) from exc
                self._notice(f"{exc}; ComfyUI did not queue prompt {prompt_id}, submitting again in {delay:g} s")
                self._sleep(delay)
                attempt += 1

    def _known(self, prompt_id: str) -> bool:
        """Whether ComfyUI has the prompt (pending, running or done), looked up with retries."""
        self._sleep(self.retry.backoff)
        return self.state(prompt_id)[0] != "lost"

    def run(self, prompt: Json, *, timeout: float, listener: Listener | None = None) -> PromptResult:
        """Submit a prompt and follow it to its result (websocket first, polling as fallback).

        A GET comes first so the ALB cookie exists before the websocket and the submission,
        and the websocket is open before the prompt is queued so no message is missed.
        """
        listener = listener or Listener()
        started = time.monotonic()
        ahead = self.queue_length()
        if ahead:
            listener.queued(ahead)
        socket = self.connect_websocket()
        try:
            submission = self.submit(prompt)
            for problem in format_rejection(None, submission.node_errors)[1:]:
                self._notice(f"ComfyUI runs only the valid outputs; {problem}")
            if submission.attempts > 1 and socket is not None:
                # The ALB may have moved us to another pod: reconnect with the new cookie.
                _close_quietly(socket)
                socket = self.connect_websocket()
            result = self.follow(
                submission.prompt_id, timeout=timeout, listener=listener, socket=socket, started=started
            )
        finally:
            if socket is not None:
                _close_quietly(socket)
        return replace(result, seconds=time.monotonic() - started)

    def follow(
        self,
        prompt_id: str,
        *,
        timeout: float,
        listener: Listener | None = None,
        socket: websocket.WebSocket | None = None,
        started: float | None = None,
    ) -> PromptResult:
        """Wait for a submitted prompt: its result, or ExecutionFailed/PromptLost/WaitTimeout.

        The `timeout` counts from `started` (a time.monotonic() value; default: now).
        """
        listener = listener or Listener()
        tracker = _Tracker(prompt_id, (started or time.monotonic()) + timeout, timeout)
        if socket is not None:
            try:
                return self._follow_socket(socket, tracker, listener)
            except _SocketLost as lost:
                self._notice(f"the websocket closed ({lost}); following prompt {prompt_id} by polling /history")
        return self._follow_polling(tracker, listener)

    def connect_websocket(self) -> websocket.WebSocket | None:
        """The /ws websocket with this session's cookies, or None (then prompts are polled)."""
        cookie = self._cookie_header(self.base_url + "/ws")
        options: Json = {"timeout": self.timeout, "skip_utf8_validation": True}
        if cookie:
            options["cookie"] = cookie
        if self.ws_url.startswith("wss:"):
            options["sslopt"] = {"ca_certs": _ca_bundle(self.session)}
        try:
            return websocket.create_connection(self.ws_url, **options)
        except websocket.WebSocketBadStatusException as exc:
            reason = LB_REASONS.get(exc.status_code, str(exc.status_code))
            self._notice(f"the websocket handshake was answered {reason}; following prompts by polling")
        except (websocket.WebSocketException, OSError) as exc:
            self._notice(f"no websocket ({_describe(exc)}); following prompts by polling")
        return None

    def _cookie_header(self, url: str) -> str | None:
        """The Cookie header this session would send to `url` (the ALB cookies)."""
        http_url = url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
        return self.session.prepare_request(requests.Request("GET", http_url)).headers.get("Cookie")

    def _follow_socket(self, socket: websocket.WebSocket, tracker: _Tracker, listener: Listener) -> PromptResult:
        silent_since = time.monotonic()
        while True:
            remaining = tracker.remaining()
            try:
                socket.settimeout(max(0.01, min(self.silence_check, remaining)))
                frame = socket.recv()
            except websocket.WebSocketTimeoutException:
                if tracker.remaining() <= 0:
                    raise tracker.expired() from None
                if time.monotonic() - silent_since >= self.silence_check:
                    silent_since = time.monotonic()
                    self._ping(socket)
                    outcome = self._check(tracker, listener, socket_alive=True)
                    if outcome is not None:
                        return outcome
                continue
            except (websocket.WebSocketException, OSError) as exc:
                raise _SocketLost(_describe(exc)) from exc
            silent_since = time.monotonic()
            if isinstance(frame, bytes):
                continue  # a preview image
            if not frame:
                raise _SocketLost("closed by the server")
            try:
                message = json.loads(frame)
            except ValueError:
                continue
            if isinstance(message, dict) and _handle_message(message, tracker, listener):
                return self._finished(tracker, listener)

    def _ping(self, socket: websocket.WebSocket) -> None:
        try:
            socket.ping()
        except (websocket.WebSocketException, OSError) as exc:
            raise _SocketLost(_describe(exc)) from exc

    def _finished(self, tracker: _Tracker, listener: Listener) -> PromptResult:
        """The prompt ended (executing node=null); its history entry exists by now.

        If this session's requests now reach another pod (the prompt's pod is draining and the
        ALB moved the sticky session), the history is not there: the outputs the websocket
        reported are the result.
        """
        while True:
            entry = self.history(tracker.prompt_id)
            if entry is not None:
                return _result(tracker.prompt_id, entry)
            if tracker.succeeded_on_socket:
                self._notice(
                    f"this pod has no history of prompt {tracker.prompt_id} (the load balancer moved the session "
                    "to another pod); using the outputs the websocket reported"
                )
                return PromptResult(tracker.prompt_id, output_files(tracker.socket_outputs), {}, from_socket=True)
            outcome = self._check(tracker, listener, socket_alive=True)
            if outcome is not None:
                return outcome

    def _follow_polling(self, tracker: _Tracker, listener: Listener) -> PromptResult:
        while True:
            outcome = self._check(tracker, listener, socket_alive=False)
            if outcome is not None:
                return outcome

    def _check(self, tracker: _Tracker, listener: Listener, *, socket_alive: bool) -> PromptResult | None:
        """One look at /queue and /history: the result, None to keep waiting, or an error.

        "Lost" needs two looks in a row. While the websocket is up and carries this prompt's
        messages, a prompt missing from /queue and /history means the requests reach another
        pod (the ALB moved the session off a draining pod), not that the prompt is gone.
        """
        state, detail = self.state(tracker.prompt_id)
        if state == "done":
            return _result(tracker.prompt_id, detail)
        if state == "lost" and socket_alive and tracker.seen_on_socket:
            if not tracker.moved_noticed:
                tracker.moved_noticed = True
                self._notice(
                    f"the load balancer now sends this session to a pod that does not know prompt "
                    f"{tracker.prompt_id} (its pod is probably draining); following it over the websocket"
                )
        elif state == "lost":
            tracker.lost_looks += 1
            if tracker.lost_looks >= 2:
                raise PromptLost(
                    f"prompt {tracker.prompt_id} is neither queued nor in ComfyUI's history: the ComfyUI pod "
                    "probably restarted (or the prompt was deleted from the queue); submit it again"
                )
        else:
            tracker.lost_looks = 0
            tracker.last_state = "running" if state == "running" else queue_words(int(detail))
            if state == "queued":
                listener.queued(int(detail))
        if tracker.remaining() <= 0:
            raise tracker.expired()
        self._sleep(min(self.poll_interval, max(0.0, tracker.remaining())))
        return None

    # -- files -------------------------------------------------------------------------------

    def upload_image(
        self,
        data: bytes,
        filename: str,
        *,
        subfolder: str = "",
        image_type: str = "input",
        overwrite: bool = False,
    ) -> UploadedImage:
        """POST /upload/image. Retried safely: ComfyUI keeps one copy of identical bytes.

        Without `overwrite` a different image of the same name is stored as "name (1).png":
        use the returned `reference` in the workflow.
        """
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        form = {"type": image_type, "subfolder": subfolder}
        if overwrite:
            form["overwrite"] = "true"
        response = self._request("POST", "/upload/image", files={"image": (filename, data, content_type)}, data=form)
        answer = _decode(response, "POST /upload/image")
        return UploadedImage(str(answer["name"]), str(answer.get("subfolder", "")), str(answer.get("type", image_type)))

    def view(self, output: OutputFile) -> bytes:
        """The bytes of an output file (GET /view)."""
        response = self._request("GET", "/view", params=_view_params(output))
        _expect_file(response, output)
        return response.content

    def download(self, output: OutputFile, directory: Path) -> Path:
        """Save an output file under `directory` (its subfolder kept); never overwrites.

        A file of the same name and other content gets a "-N" suffix; identical content is
        not written twice. A download cut short is retried as a whole.
        """
        delays = self.retry.delays()
        while True:
            try:
                return self._download_once(output, directory)
            except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError) as exc:
                delay = next(delays, None)
                if delay is None:
                    raise ComfyUnavailable(f"downloading {output.filename} failed: {_root_cause(exc)}") from exc
                self._notice(f"downloading {output.filename} was cut short; retrying in {delay:g} s")
                self._sleep(delay)

    def _download_once(self, output: OutputFile, directory: Path) -> Path:
        response = self._request("GET", "/view", params=_view_params(output), stream=True)
        with response:
            _expect_file(response, output)
            target_dir = _safe_join(directory, output.subfolder)
            target_dir.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            # A hidden name next to the target, created with the umask's permissions like any file.
            partial = target_dir / f".{PurePosixPath(output.filename).name}.{uuid.uuid4().hex[:8]}.partial"
            try:
                with open(partial, "xb") as handle:
                    for chunk in response.iter_content(1 << 20):
                        handle.write(chunk)
                        digest.update(chunk)
                target = _free_name(target_dir / PurePosixPath(output.filename).name, digest.hexdigest())
                if target.exists():
                    partial.unlink()
                else:
                    os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
        return target

    # -- cancel ------------------------------------------------------------------------------

    def delete_queued(self, prompt_ids: Iterable[str]) -> None:
        """POST /queue {"delete": [...]}: drop pending prompts (running ones are not touched)."""
        _expect_ok(self._request("POST", "/queue", json={"delete": list(prompt_ids)}), "POST /queue")

    def clear_queue(self) -> None:
        """POST /queue {"clear": true}: drop every pending prompt, anyone's."""
        _expect_ok(self._request("POST", "/queue", json={"clear": True}), "POST /queue")

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt. With a prompt_id only that prompt, if it runs (safe to retry);
        without, whatever runs now, so it is sent once."""
        if prompt_id is None:
            _expect_ok(self._send("POST", "/interrupt", json={}), "POST /interrupt")
        else:
            _expect_ok(self._request("POST", "/interrupt", json={"prompt_id": prompt_id}), "POST /interrupt")

    def cancel(self, prompt_id: str) -> None:
        """Stop a prompt wherever it is: deleted if pending, then interrupted if it started.

        In this order a prompt that starts between the two calls is still interrupted.
        """
        self.delete_queued([prompt_id])
        self.interrupt(prompt_id)


# --------------------------------------------------------------------------------------------
# Helpers


@dataclass
class _Tracker:
    """What is known about the prompt being followed."""

    prompt_id: str
    deadline: float
    timeout: float
    last_state: str = "submitted"
    lost_looks: int = 0
    seen_on_socket: bool = False  # the websocket carried messages of this prompt
    succeeded_on_socket: bool = False
    socket_outputs: Json = field(default_factory=dict)  # node -> UI output, from "executed"
    moved_noticed: bool = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def expired(self) -> WaitTimeout:
        return WaitTimeout(
            f"prompt {self.prompt_id} did not finish within {self.timeout:g} s (last seen: {self.last_state})",
            prompt_id=self.prompt_id,
        )


def _attempts(count: int) -> str:
    return f"{count} attempt{'s' if count != 1 else ''}"


def queue_words(ahead: int) -> str:
    return "queued, next in line" if ahead == 0 else f"queued behind {ahead} prompt{'s' if ahead > 1 else ''}"


def _handle_message(message: Json, tracker: _Tracker, listener: Listener) -> bool:
    """Dispatch one websocket message; True when the prompt has finished executing."""
    kind = message.get("type")
    data = message.get("data") or {}
    if not isinstance(data, dict) or data.get("prompt_id", tracker.prompt_id) != tracker.prompt_id:
        return False  # "status" broadcasts carry no prompt_id; others may be for other prompts
    if "prompt_id" in data:
        tracker.seen_on_socket = True
    if kind == "execution_start":
        tracker.last_state = "started"
        listener.started()
    elif kind == "executing":
        node = data.get("node")
        if node is None:
            return "prompt_id" in data
        tracker.last_state = f"running node {node}"
        listener.executing(str(node))
    elif kind == "progress":
        tracker.last_state = f"node {data.get('node')} at step {data.get('value')}/{data.get('max')}"
        listener.progress(int(data.get("value", 0)), int(data.get("max", 0)), data.get("node"))
    elif kind == "executed":
        if data.get("output"):
            tracker.socket_outputs[str(data.get("node"))] = data["output"]
        listener.executed(str(data.get("node")), data.get("output") or {})
    elif kind == "execution_success":
        tracker.succeeded_on_socket = True
    elif kind == "execution_error":
        raise ExecutionFailed(tracker.prompt_id, data)
    elif kind == "execution_interrupted":
        raise ExecutionInterrupted(f"prompt {tracker.prompt_id} was interrupted at node {data.get('node_id')}")
    return False


def _result(prompt_id: str, entry: Json) -> PromptResult:
    """A history entry as a PromptResult, or the execution error it records."""
    status = entry.get("status") or {}
    if status.get("status_str") == "error" or status.get("completed") is False:
        for event, data in status.get("messages", []):
            if event == "execution_error":
                raise ExecutionFailed(prompt_id, data)
            if event == "execution_interrupted":
                raise ExecutionInterrupted(f"prompt {prompt_id} was interrupted at node {data.get('node_id')}")
        raise ExecutionFailed(prompt_id, {"node_id": "?", "node_type": "?", "exception_message": "status error"})
    return PromptResult(prompt_id, output_files(entry.get("outputs") or {}), entry)


def output_files(outputs: Json) -> list[OutputFile]:
    """Every file in a history entry's outputs ({node: {"images": [{filename, ...}], ...}})."""
    files = []
    for node_id in sorted(outputs, key=_node_order):
        for kind, items in (outputs[node_id] or {}).items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and item.get("filename"):
                    files.append(
                        OutputFile(
                            node_id,
                            kind,
                            str(item["filename"]),
                            str(item.get("subfolder") or ""),
                            str(item.get("type") or "output"),
                        )
                    )
    return files


def _submission(response: requests.Response, prompt_id: str, attempts: int) -> Submission:
    if response.status_code == 400:
        answer = _decode(response, "POST /prompt", accept=(400,))
        raise PromptRejected(answer.get("error"), answer.get("node_errors") or {})
    answer = _decode(response, "POST /prompt")
    return Submission(
        str(answer.get("prompt_id", prompt_id)), answer.get("number"), answer.get("node_errors") or {}, attempts
    )


def _decode(response: requests.Response, what: str, accept: tuple[int, ...] = (200,)) -> Any:
    """The JSON body of a response, or a one-line ComfyHTTPError saying what came instead."""
    if response.status_code not in accept:
        raise ComfyHTTPError(f"{what} answered HTTP {response.status_code} {response.reason}: {_excerpt(response)}")
    try:
        return response.json()
    except ValueError:
        kind = response.headers.get("Content-Type", "?")
        raise ComfyHTTPError(
            f"{what} answered {kind} instead of ComfyUI's JSON ({_excerpt(response)}): is the URL ComfyUI's?"
        ) from None


def _expect_ok(response: requests.Response, what: str) -> None:
    if response.status_code != 200:
        raise ComfyHTTPError(f"{what} answered HTTP {response.status_code} {response.reason}: {_excerpt(response)}")


def _expect_file(response: requests.Response, output: OutputFile) -> None:
    if response.status_code == 404:
        raise ComfyHTTPError(
            f"ComfyUI has no {output.type} file {output.subfolder + '/' if output.subfolder else ''}{output.filename} "
            "(GET /view 404): was the pod restarted or drained? Outputs also go to the outputs bucket under the "
            "pod's name"
        )
    _expect_ok(response, "GET /view")


def _excerpt(response: requests.Response) -> str:
    text = re.sub(r"<[^>]+>", " ", response.text)
    text = " ".join(text.split())
    return (text[:200] + "...") if len(text) > 200 else (text or "empty body")


def _view_params(output: OutputFile) -> dict[str, str]:
    return {"filename": output.filename, "subfolder": output.subfolder, "type": output.type}


def _item_id(item: Any) -> str | None:
    return str(item[1]) if isinstance(item, list | tuple) and len(item) > 1 else None


def _safe_join(directory: Path, subfolder: str) -> Path:
    """directory/subfolder, refusing anything that would leave `directory`."""
    parts = [p for p in PurePosixPath(subfolder.replace("\\", "/")).parts if p not in ("", ".", "/")]
    if any(p == ".." for p in parts):
        raise ComfyHTTPError(f"ComfyUI named an output subfolder outside the output directory: {subfolder!r}")
    return directory.joinpath(*parts)


def _free_name(path: Path, digest: str) -> Path:
    """`path`, or the existing file with the same content, or path-1, path-2, ... (never overwrite)."""
    candidate, counter = path, 0
    while candidate.exists():
        if hashlib.sha256(candidate.read_bytes()).hexdigest() == digest:
            return candidate
        counter += 1
        candidate = path.with_name(f"{path.stem}-{counter}{path.suffix}")
    return candidate


def normalize_url(url: str) -> str:
    """http(s)://host[:port][/prefix] without a trailing slash; ValueError when it is not one."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception (urllib3 wraps the socket error a few times)."""
    seen: set[int] = set()
    current: BaseException = exc
    while id(current) not in seen:
        seen.add(id(current))
        nested = getattr(current, "reason", None) or current.__cause__ or current.__context__
        if nested is None and current.args and isinstance(current.args[0], BaseException):
            nested = current.args[0]
        if not isinstance(nested, BaseException):
            break
        current = nested
    return current


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _close_quietly(socket: websocket.WebSocket) -> None:
    with contextlib.suppress(websocket.WebSocketException, OSError):
        socket.close(timeout=1)


def _ca_bundle(session: requests.Session) -> str:
    """The CA bundle requests verifies with, so https and wss trust the same certificates."""
    if isinstance(session.verify, str):
        return session.verify
    return os.environ.get("REQUESTS_CA_BUNDLE") or DEFAULT_CA_BUNDLE_PATH
