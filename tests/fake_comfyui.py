"""A fake ComfyUI for tests: ComfyUI's HTTP and websocket API, in-process, on 127.0.0.1.

Why a fake: the client (comfyui_eks/comfy_client.py), `comfyui-eks invoke` and the job-runner
sidecar must be tested against ComfyUI's real protocol, including the ways it fails behind an
ALB (502 pages, dropped websockets, pods that restart and forget their queue), without a GPU.
tests/test_fake_comfyui.py pins the shapes below so the fake cannot silently drift.

Faithful to ComfyUI v0.8.1 (server.py, execution.py, main.py, folder_paths.py):

- POST /prompt: body {"prompt": {...}, "client_id"?, "extra_data"?, "prompt_id"?, "number"?,
  "front"?, "partial_execution_targets"?}. A client-chosen "prompt_id" is honoured (ComfyUI does
  `str(json_data.get("prompt_id", uuid4()))`). The graph is validated like
  execution.validate_prompt: missing class_type / unknown class_type / no output node ->
  400 {"error": {type, message, details, extra_info}, "node_errors": {}}; per-node problems
  (required_input_missing, bad_linked_input, return_type_mismatch, invalid_input_type,
  value_smaller_than_min, value_bigger_than_max, value_not_in_list, custom_validation_failed,
  and a link to a missing node or output index as exception_during_(inner_)validation) ->
  400 {"error": {"type": "prompt_outputs_failed_validation", ...}, "node_errors": {id:
  {"errors": [...], "dependent_outputs": [...], "class_type": ...}}}. Success ->
  {"prompt_id", "number", "node_errors"}. A body that is not JSON -> 500, as aiohttp answers.
- GET /prompt, GET /queue ({"queue_running": [...], "queue_pending": [...]}, items are
  [number, prompt_id, prompt, extra_data, outputs_to_execute]), POST /queue ({"delete": [...]},
  {"clear": true}), POST /interrupt (optional {"prompt_id"}: only that prompt, if running),
  GET /history[?max_items=&offset=], GET /history/{prompt_id} ({} when unknown), POST /history,
  GET /view?filename=&subfolder=&type=, POST /upload/image (multipart image, overwrite,
  subfolder, type; same-name uploads are renamed "name (1).png" unless identical bytes),
  GET /system_stats, GET /features, GET /object_info[/{class}] (the node classes below, input
  specs shaped as ComfyUI renders them: combos as [options, {...}] for classic nodes and
  ["COMBO", {"options": [...]}] for v3 nodes). Every route is also served under /api.
- GET /ws?clientId=...: first {"type": "status", "data": {"status": {"exec_info":
  {"queue_remaining": n}}, "sid": ...}}; then, for prompts submitted with that client_id:
  execution_start, execution_cached, executing {node, display_node, prompt_id},
  progress_state, progress {value, max, prompt_id, node}, executed {node, display_node,
  output: {"images": [{filename, subfolder, type}]}, prompt_id}, execution_success |
  execution_error {prompt_id, node_id, node_type, executed, exception_message, exception_type,
  traceback, current_inputs, current_outputs} | execution_interrupted, and finally executing
  {"node": null, "prompt_id"} once the history entry exists. "status" is broadcast on every
  queue change. With `previews=True` each sampler step also sends a binary preview frame
  (>I event 1, >I image type 2 = PNG, PNG bytes).
- One worker executes the queue in `number` order, one prompt at a time. Samplers (KSampler,
  KSamplerAdvanced, SamplerCustomAdvanced) take steps x `step_delay` seconds. SaveImage and
  PreviewImage write real PNG files (1/8 of the latent's width and height, i.e. the latent's
  own size) named like ComfyUI ("ComfyUI_00001_.png", counters continue from the files on
  disk). Node outputs are cached between prompts like ComfyUI: an identical prompt completes
  at once and reports the earlier files. History entries: {"prompt": [...], "outputs":
  {node: {"images": [...]}}, "status": {"status_str", "completed", "messages": [[event,
  data], ...]}, "meta": {...}}.

Knobs (thread-safe methods and attributes of FakeComfyUI):

- step_delay: seconds per sampler step; previews: send binary preview frames.
- models: the files each model folder "has" (the loaders' combo options).
- fail_requests(n, status=502, method=None, path=None, after=False): answer the next n
  matching HTTP requests with the ALB's HTML error page (502/503/504), as a load balancer
  would; with after=True ComfyUI handles the request first and only the answer is lost.
- fail_node(class_type=None, node_id=None, message=..., exception_type=...): the next
  execution of a matching node raises: execution_error over the websocket, status "error".
- drop_websockets_after(n): close every websocket abruptly after it has sent n more messages.
- restart(): the pod restarted: queue, running prompt and history are forgotten, websockets
  are closed (the files on disk stay, as on the pod's volumes).
- add_foreign_prompts(n, client_id="browser-user", steps=...): prompts from another client
  (an artist in the browser) queued ahead of yours.
- hold() / release(): stop / resume taking prompts off the queue (to test pending prompts).
- request_log: every HTTP request that reached this replica (method, path, query, cookies).

StickyProxy is a small ALB stand-in in front of several replicas: target-group cookie
stickiness (no AWSALB cookie -> next replica round-robin, Set-Cookie AWSALB and AWSALBCORS; a
known cookie -> the same replica), websocket upgrades proxied too, an unreachable replica
answered with the ALB 502 page, the same fail_requests knob, and drain(i): replica i is
deregistered (its sticky sessions move to another replica, its open websockets stay).

Usage:

    with FakeComfyUI() as fake:            # fake.url is http://127.0.0.1:<port>
        ...
    with FakeCluster(replicas=2) as cluster:   # cluster.url is the proxy; cluster.replicas
        ...
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import heapq
import json
import mimetypes
import os
import secrets
import shutil
import struct
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any, Self, TypeVar

import aiohttp
from aiohttp import web

T = TypeVar("T")
Json = dict[str, Any]

COMFYUI_VERSION = "0.8.1"
MAX_RESOLUTION = 16384  # nodes.py
SEED_MAX = 0xFFFFFFFFFFFFFFFF  # KSampler.seed max in nodes.py

# fmt: off
# comfy/samplers.py at v0.8.1: SAMPLER_NAMES = KSAMPLER_NAMES + ["ddim", "uni_pc", "uni_pc_bh2"]
SAMPLER_NAMES = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "exp_heun_2_x0",
    "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu",
    "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp",
    "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "gradient_estimation",
    "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim",
    "uni_pc", "uni_pc_bh2",
]
# comfy/samplers.py SCHEDULER_HANDLERS keys
SCHEDULER_NAMES = [
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
]
# nodes.py CLIPLoader and DualCLIPLoader `type` options
CLIP_TYPES = [
    "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos", "lumina2",
    "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2", "ovis",
]
DUAL_CLIP_TYPES = [
    "sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15", "kandinsky5",
    "kandinsky5_image", "ltxv", "newbie",
]
# fmt: on

DEFAULT_MODELS: dict[str, list[str]] = {
    "checkpoints": ["sd_xl_base_1.0.safetensors", "sd3.5_large.safetensors", "v1-5-pruned-emaonly.safetensors"],
    "diffusion_models": ["flux1-dev.safetensors", "flux1-schnell.safetensors"],
    "text_encoders": ["clip_g.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"],
    "vae": ["ae.safetensors", "sdxl_vae.safetensors"],
    "loras": ["example_lora.safetensors"],
    "controlnet": ["control_v11p_sd15_canny.safetensors"],
    "upscale_models": ["RealESRGAN_x4plus.pth"],
}

ALB_PAGES = {
    502: "502 Bad Gateway",
    503: "503 Service Temporarily Unavailable",
    504: "504 Gateway Time-out",
}


def alb_error_page(status: int) -> web.Response:
    """The HTML page an AWS ALB answers with when it has no (healthy) answer from a target."""
    title = ALB_PAGES.get(status, f"{status} Error")
    body = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n</body>\r\n</html>\r\n"
    )
    return web.Response(status=status, text=body, content_type="text/html", headers={"Server": "awselb/2.0"})


def png_bytes(width: int, height: int, rgb: tuple[int, int, int], text: dict[str, str] | None = None) -> bytes:
    """A valid RGB PNG of one colour, written with zlib and struct (no Pillow)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    for key, value in (text or {}).items():
        out += chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1", "replace"))
    return out + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b"")


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, or None when `data` is not one."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24:
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# --------------------------------------------------------------------------------------------
# Node catalogue


@dataclass(frozen=True)
class InputSpec:
    """One input: a type name ("INT", "MODEL", ...) or "COMBO" with its options."""

    type: str
    extra: Json = field(default_factory=dict)
    options: tuple[Any, ...] = ()

    @property
    def is_combo(self) -> bool:
        return self.type == "COMBO"


@dataclass(frozen=True)
class NodeSpec:
    """A node class as /object_info describes it, plus how the fake executes it."""

    name: str
    required: dict[str, InputSpec]
    outputs: tuple[str, ...]
    category: str
    optional: dict[str, InputSpec] = field(default_factory=dict)
    hidden: dict[str, str] = field(default_factory=dict)
    output_names: tuple[str, ...] | None = None
    output_node: bool = False
    v3: bool = False  # ComfyUI's v3 schema nodes render combos as ["COMBO", {"options": [...]}]
    python_module: str = "nodes"
    display_name: str | None = None
    description: str = ""
    validate_inputs: tuple[str, ...] = ()  # inputs a VALIDATE_INPUTS function checks instead

    def input(self, name: str) -> InputSpec | None:
        return self.required.get(name) or self.optional.get(name)

    def info(self) -> Json:
        """This class's entry in GET /object_info (server.py node_info / Schema.get_v1_info)."""

        def render(spec: InputSpec) -> list[Any]:
            if spec.is_combo and not self.v3:
                return [list(spec.options), dict(spec.extra)]
            if spec.is_combo:
                return ["COMBO", {"options": list(spec.options), **spec.extra}]
            return [spec.type, dict(spec.extra)]

        inputs: Json = {"required": {k: render(v) for k, v in self.required.items()}}
        if self.optional:
            inputs["optional"] = {k: render(v) for k, v in self.optional.items()}
        if self.hidden:
            inputs["hidden"] = dict(self.hidden)
        info: Json = {
            "input": inputs,
            "input_order": {key: list(value) for key, value in inputs.items()},
            "output": list(self.outputs),
            "output_is_list": [False] * len(self.outputs),
            "output_name": list(self.output_names or self.outputs),
            "name": self.name,
            "display_name": self.display_name or self.name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        }
        if self.v3:
            info.update(output_tooltips=[None] * len(self.outputs), deprecated=False, experimental=False)
            info["api_node"] = False
        return info


def _t(type_: str, **extra: Any) -> InputSpec:
    return InputSpec(type_, extra)


def _combo(options: Iterable[Any], **extra: Any) -> InputSpec:
    return InputSpec("COMBO", extra, tuple(options))


def _int(default: int, lo: int, hi: int, **extra: Any) -> InputSpec:
    return InputSpec("INT", {"default": default, "min": lo, "max": hi, **extra})


def _float(default: float, lo: float, hi: float, **extra: Any) -> InputSpec:
    return InputSpec("FLOAT", {"default": default, "min": lo, "max": hi, **extra})


def build_catalogue(models: dict[str, list[str]], input_files: list[str]) -> dict[str, NodeSpec]:
    """The node classes the fake knows, inputs as at ComfyUI v0.8.1 (file named per class)."""

    def files(folder: str) -> list[str]:
        return sorted(models.get(folder, []))

    text_encoders = files("text_encoders")
    seed = _int(0, 0, SEED_MAX, control_after_generate=True)
    steps = _int(20, 1, 10000)
    cfg = _float(8.0, 0.0, 100.0, step=0.1, round=0.01)
    size = _int(512, 16, MAX_RESOLUTION, step=8)
    size16 = _int(1024, 16, MAX_RESOLUTION, step=16)
    batch = _int(1, 1, 4096)
    device = {"device": _combo(["default", "cpu"], advanced=True)}
    mod_extra = "comfy_extras.nodes_"
    # fmt: off
    specs = [
        # nodes.py
        NodeSpec(
            "CheckpointLoaderSimple", {"ckpt_name": _combo(files("checkpoints"))}, ("MODEL", "CLIP", "VAE"), "loaders"
        ),
        NodeSpec("CLIPTextEncode", {"text": _t("STRING", multiline=True, dynamicPrompts=True), "clip": _t("CLIP")},
                 ("CONDITIONING",), "conditioning"),
        NodeSpec(
            "ConditioningZeroOut", {"conditioning": _t("CONDITIONING")}, ("CONDITIONING",), "advanced/conditioning"
        ),
        NodeSpec("EmptyLatentImage", {"width": size, "height": size, "batch_size": batch}, ("LATENT",), "latent"),
        NodeSpec("KSampler", {"model": _t("MODEL"), "seed": seed, "steps": steps, "cfg": cfg,
                              "sampler_name": _combo(SAMPLER_NAMES), "scheduler": _combo(SCHEDULER_NAMES),
                              "positive": _t("CONDITIONING"), "negative": _t("CONDITIONING"),
                              "latent_image": _t("LATENT"), "denoise": _float(1.0, 0.0, 1.0, step=0.01)},
                 ("LATENT",), "sampling"),
        NodeSpec("KSamplerAdvanced", {"model": _t("MODEL"), "add_noise": _combo(["enable", "disable"]),
                                      "noise_seed": seed, "steps": steps, "cfg": cfg,
                                      "sampler_name": _combo(SAMPLER_NAMES), "scheduler": _combo(SCHEDULER_NAMES),
                                      "positive": _t("CONDITIONING"), "negative": _t("CONDITIONING"),
                                      "latent_image": _t("LATENT"), "start_at_step": _int(0, 0, 10000),
                                      "end_at_step": _int(10000, 0, 10000),
                                      "return_with_leftover_noise": _combo(["disable", "enable"])},
                 ("LATENT",), "sampling"),
        NodeSpec("VAEDecode", {"samples": _t("LATENT"), "vae": _t("VAE")}, ("IMAGE",), "latent"),
        NodeSpec("VAEEncode", {"pixels": _t("IMAGE"), "vae": _t("VAE")}, ("LATENT",), "latent"),
        NodeSpec("VAELoader", {"vae_name": _combo([*files("vae"), "pixel_space"])}, ("VAE",), "loaders"),
        NodeSpec("LoraLoader", {"model": _t("MODEL"), "clip": _t("CLIP"), "lora_name": _combo(files("loras")),
                                "strength_model": _float(1.0, -100.0, 100.0, step=0.01),
                                "strength_clip": _float(1.0, -100.0, 100.0, step=0.01)},
                 ("MODEL", "CLIP"), "loaders"),
        NodeSpec("LoraLoaderModelOnly", {"model": _t("MODEL"), "lora_name": _combo(files("loras")),
                                         "strength_model": _float(1.0, -100.0, 100.0, step=0.01)},
                 ("MODEL",), "loaders"),
        NodeSpec("UNETLoader", {"unet_name": _combo(files("diffusion_models")),
                                "weight_dtype": _combo(["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"])},
                 ("MODEL",), "advanced/loaders"),
        NodeSpec("CLIPLoader", {"clip_name": _combo(text_encoders),
                                "type": _combo(CLIP_TYPES)},
                 ("CLIP",), "advanced/loaders", optional=device),
        NodeSpec("DualCLIPLoader", {"clip_name1": _combo(text_encoders), "clip_name2": _combo(text_encoders),
                                    "type": _combo(DUAL_CLIP_TYPES)},
                 ("CLIP",), "advanced/loaders", optional=device),
        NodeSpec("ControlNetLoader", {"control_net_name": _combo(files("controlnet"))}, ("CONTROL_NET",), "loaders"),
        NodeSpec("SaveImage", {"images": _t("IMAGE"), "filename_prefix": _t("STRING", default="ComfyUI")}, (),
                 "image", hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}, output_node=True),
        NodeSpec("PreviewImage", {"images": _t("IMAGE")}, (), "image",
                 hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}, output_node=True),
        NodeSpec("LoadImage", {"image": _combo(sorted(input_files), image_upload=True)}, ("IMAGE", "MASK"), "image",
                 validate_inputs=("image",)),
        # comfy_extras/nodes_model_advanced.py (classic nodes)
        NodeSpec("ModelSamplingFlux", {"model": _t("MODEL"), "max_shift": _float(1.15, 0.0, 100.0, step=0.01),
                                       "base_shift": _float(0.5, 0.0, 100.0, step=0.01),
                                       "width": _int(1024, 16, MAX_RESOLUTION, step=8),
                                       "height": _int(1024, 16, MAX_RESOLUTION, step=8)},
                 ("MODEL",), "advanced/model", python_module=mod_extra + "model_advanced"),
        NodeSpec("ModelSamplingSD3", {"model": _t("MODEL"), "shift": _float(3.0, 0.0, 100.0, step=0.01)},
                 ("MODEL",), "advanced/model", python_module=mod_extra + "model_advanced"),
        # comfy_extras/nodes_sd3.py (v3)
        NodeSpec("TripleCLIPLoader", {"clip_name1": _combo(text_encoders), "clip_name2": _combo(text_encoders),
                                      "clip_name3": _combo(text_encoders)},
                 ("CLIP",), "advanced/loaders", v3=True, python_module=mod_extra + "sd3"),
        NodeSpec("EmptySD3LatentImage", {"width": size16, "height": size16, "batch_size": batch}, ("LATENT",),
                 "latent/sd3", v3=True, python_module=mod_extra + "sd3"),
        # comfy_extras/nodes_flux.py (v3)
        NodeSpec("FluxGuidance", {"conditioning": _t("CONDITIONING"), "guidance": _float(3.5, 0.0, 100.0, step=0.1)},
                 ("CONDITIONING",), "advanced/conditioning/flux", v3=True, python_module=mod_extra + "flux"),
        # comfy_extras/nodes_custom_sampler.py (v3)
        NodeSpec("KSamplerSelect", {"sampler_name": _combo(SAMPLER_NAMES)}, ("SAMPLER",),
                 "sampling/custom_sampling/samplers", v3=True, python_module=mod_extra + "custom_sampler"),
        NodeSpec("BasicScheduler", {"model": _t("MODEL"), "scheduler": _combo(SCHEDULER_NAMES), "steps": steps,
                                    "denoise": _float(1.0, 0.0, 1.0, step=0.01)},
                 ("SIGMAS",), "sampling/custom_sampling/schedulers", v3=True,
                 python_module=mod_extra + "custom_sampler"),
        NodeSpec("BasicGuider", {"model": _t("MODEL"), "conditioning": _t("CONDITIONING")}, ("GUIDER",),
                 "sampling/custom_sampling/guiders", v3=True, python_module=mod_extra + "custom_sampler"),
        NodeSpec("CFGGuider", {"model": _t("MODEL"), "positive": _t("CONDITIONING"),
                               "negative": _t("CONDITIONING"), "cfg": cfg},
                 ("GUIDER",), "sampling/custom_sampling/guiders", v3=True, python_module=mod_extra + "custom_sampler"),
        NodeSpec("RandomNoise", {"noise_seed": seed}, ("NOISE",), "sampling/custom_sampling/noise", v3=True,
                 python_module=mod_extra + "custom_sampler"),
        NodeSpec("SamplerCustomAdvanced", {"noise": _t("NOISE"), "guider": _t("GUIDER"), "sampler": _t("SAMPLER"),
                                           "sigmas": _t("SIGMAS"), "latent_image": _t("LATENT")},
                 ("LATENT", "LATENT"), "sampling/custom_sampling", v3=True, output_names=("output", "denoised_output"),
                 python_module=mod_extra + "custom_sampler"),
        # comfy_extras/nodes_upscale_model.py (v3)
        NodeSpec("UpscaleModelLoader", {"model_name": _combo(files("upscale_models"))}, ("UPSCALE_MODEL",),
                 "loaders", v3=True, display_name="Load Upscale Model", python_module=mod_extra + "upscale_model"),
        NodeSpec("ImageUpscaleWithModel", {"upscale_model": _t("UPSCALE_MODEL"), "image": _t("IMAGE")}, ("IMAGE",),
                 "image/upscaling", v3=True, display_name="Upscale Image (using Model)",
                 python_module=mod_extra + "upscale_model"),
    ]
    # fmt: on
    return {spec.name: spec for spec in specs}


SAMPLERS = {"KSampler", "KSamplerAdvanced", "SamplerCustomAdvanced"}
IMAGE_SAVERS = {"SaveImage": "output", "PreviewImage": "temp"}


# --------------------------------------------------------------------------------------------
# Validation (execution.validate_prompt / validate_inputs)


def _is_link(value: Any) -> bool:
    return isinstance(value, list)


def _error(type_: str, message: str, details: str, **extra_info: Any) -> Json:
    return {"type": type_, "message": message, "details": details, "extra_info": extra_info}


class _Validator:
    """Validates a prompt the way execution.validate_prompt does, with the same error shapes."""

    def __init__(self, prompt: Json, catalogue: dict[str, NodeSpec], input_dir: Path):
        self.prompt = prompt
        self.catalogue = catalogue
        self.input_dir = input_dir
        self.validated: dict[str, tuple[bool, list[Json]]] = {}

    def run(self, partial: list[str] | None) -> tuple[bool, Json | None, list[str], Json]:
        outputs: list[str] = []
        for node_id, node in self.prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                msg = "Cannot execute because a node is missing the class_type property."
                return False, _error("invalid_prompt", msg, f"Node ID '#{node_id}'"), [], {}
            spec = self.catalogue.get(node["class_type"])
            if spec is None:
                msg = f"Cannot execute because node {node['class_type']} does not exist."
                return False, _error("invalid_prompt", msg, f"Node ID '#{node_id}'"), [], {}
            if spec.output_node and (partial is None or node_id in partial):
                outputs.append(node_id)
        if not outputs:
            return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}

        good: list[str] = []
        failed: list[tuple[str, list[Json]]] = []
        node_errors: Json = {}
        for out in outputs:
            try:
                ok, reasons = self.validate(out)
            except (KeyError, IndexError, TypeError) as ex:
                ok, reasons = False, [_error("exception_during_validation", "Exception when validating node", str(ex))]
                self.validated[out] = (False, reasons)
            if ok:
                good.append(out)
                continue
            failed.append((out, reasons))
            for node_id, (valid, node_reasons) in self.validated.items():
                if valid or not node_reasons:
                    continue
                entry = node_errors.setdefault(
                    node_id,
                    {"errors": node_reasons, "dependent_outputs": [], "class_type": self.prompt[node_id]["class_type"]},
                )
                entry["dependent_outputs"].append(out)
        if not good:
            details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in failed for e in reasons)
            error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
            return False, error, [], node_errors
        return True, None, good, node_errors

    def validate(self, node_id: str) -> tuple[bool, list[Json]]:
        if node_id in self.validated:
            return self.validated[node_id]
        node = self.prompt[node_id]
        spec = self.catalogue[node["class_type"]]
        inputs = node.get("inputs", {})
        errors: list[Json] = []
        valid = True
        for name in [*spec.required, *spec.optional]:
            input_spec = spec.input(name)
            assert input_spec is not None
            if name not in inputs:
                if name in spec.required:
                    errors.append(_error("required_input_missing", "Required input is missing", name, input_name=name))
                continue
            value = inputs[name]
            if _is_link(value):
                problem, upstream_ok = self._check_link(name, value, input_spec)
                if problem is not None:
                    errors.append(problem)
                valid = valid and upstream_ok
                continue
            problem = self._check_value(spec, node, name, value, input_spec)
            if problem is not None:
                errors.append(problem)
        result = (not errors and valid, errors)
        self.validated[node_id] = result
        return result

    def _check_link(self, name: str, value: list[Any], spec: InputSpec) -> tuple[Json | None, bool]:
        if len(value) != 2:
            msg = "Bad linked input, must be a length-2 list of [node_id, slot_index]"
            return _error("bad_linked_input", msg, name, input_name=name, received_value=value), True
        source_id, slot = value
        # A missing node or output index raises here, as in ComfyUI (caught by the caller).
        source_spec = self.catalogue[self.prompt[source_id]["class_type"]]
        received = source_spec.outputs[slot]
        if spec.type not in ("*", received) and not (spec.is_combo and received == "COMBO"):
            details = f"{name}, received_type({received}) mismatch input_type({spec.type})"
            return _error(
                "return_type_mismatch",
                "Return type mismatch between linked nodes",
                details,
                input_name=name,
                received_type=received,
                linked_node=value,
            ), True
        try:
            ok, _ = self.validate(source_id)
        except (KeyError, IndexError, TypeError) as ex:
            reasons = [
                _error(
                    "exception_during_inner_validation",
                    "Exception when validating inner node",
                    str(ex),
                    input_name=name,
                    exception_message=str(ex),
                    linked_node=value,
                )
            ]
            self.validated[source_id] = (False, reasons)
            return None, False
        return None, ok

    def _check_value(self, spec: NodeSpec, node: Json, name: str, value: Any, input_spec: InputSpec) -> Json | None:
        if isinstance(value, dict) and "__value__" in value:
            value = node["inputs"][name] = value["__value__"]
        convert = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}.get(input_spec.type)
        if convert is not None:
            try:
                value = node["inputs"][name] = convert(value)
            except (TypeError, ValueError) as ex:
                return _error(
                    "invalid_input_type",
                    f"Failed to convert an input value to a {input_spec.type} value",
                    f"{name}, {value}, {ex}",
                    input_name=name,
                    received_value=value,
                    exception_message=str(ex),
                )
        if name in spec.validate_inputs:
            return self._custom_validation(spec, name, value)
        extra = input_spec.extra
        if "min" in extra and value < extra["min"]:
            return _error(
                "value_smaller_than_min",
                f"Value {value} smaller than min of {extra['min']}",
                name,
                input_name=name,
                received_value=value,
            )
        if "max" in extra and value > extra["max"]:
            return _error(
                "value_bigger_than_max",
                f"Value {value} bigger than max of {extra['max']}",
                name,
                input_name=name,
                received_value=value,
            )
        if input_spec.is_combo and value not in input_spec.options:
            options = list(input_spec.options)
            listing = f"(list of length {len(options)})" if len(options) > 20 else str(options)
            return _error(
                "value_not_in_list",
                "Value not in list",
                f"{name}: '{value}' not in {listing}",
                input_name=name,
                received_value=value,
            )
        return None

    def _custom_validation(self, spec: NodeSpec, name: str, value: Any) -> Json | None:
        # LoadImage.VALIDATE_INPUTS: the file must exist in the input directory.
        if spec.name == "LoadImage" and not _input_path(self.input_dir, str(value)).is_file():
            details = f"{name} - Invalid image file: {value}"
            return _error("custom_validation_failed", "Custom validation failed for node", details, input_name=name)
        return None


def _input_path(input_dir: Path, name: str) -> Path:
    for suffix in (" [input]", "[input]"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return input_dir / name


# --------------------------------------------------------------------------------------------
# Event loop thread


class _LoopThread:
    """An asyncio event loop running in a daemon thread; callers block on its results."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Awaitable[T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def call(self, fn: Callable[[], T]) -> T:
        async def wrapper() -> T:
            return fn()

        return self.run(wrapper())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class _Server:
    """An aiohttp application served on 127.0.0.1:<free port> from its own loop thread."""

    def __init__(self, name: str):
        self.name = name
        self._thread: _LoopThread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._http_faults: list[_HttpFault] = []

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_requests(
        self,
        count: int,
        status: int = 502,
        *,
        method: str | None = None,
        path: str | None = None,
        after: bool = False,
    ) -> None:
        """Answer the next `count` matching requests with the ALB's HTML error page.

        With `after`, the request is handled first (by ComfyUI, or by the replica the proxy
        forwards it to) and only the answer is lost (a connection reset between the ALB and
        the pod after the work was done).
        """
        fault = _HttpFault(count, status, method, path, after)
        self.thread.call(lambda: self._http_faults.append(fault))

    def _take_fault(self, request: web.Request) -> _HttpFault | None:
        """The first armed fault matching `request`, one use of it spent (in the loop thread)."""
        for fault in self._http_faults:
            if fault.remaining > 0 and fault.matches(request):
                fault.remaining -= 1
                self._http_faults = [f for f in self._http_faults if f.remaining > 0]
                return fault
        return None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def thread(self) -> _LoopThread:
        assert self._thread is not None, f"{self.name} is not started"
        return self._thread

    def _make_app(self) -> web.Application:
        raise NotImplementedError

    async def _on_start(self) -> None:
        """Runs in the loop after the site is up."""

    async def _on_stop(self) -> None:
        """Runs in the loop before the site goes down (close websockets, cancel tasks)."""

    def start(self) -> None:
        self._thread = _LoopThread(self.name)

        async def up() -> int:
            self._runner = web.AppRunner(self._make_app(), access_log=None, handle_signals=False, shutdown_timeout=0.5)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            await self._on_start()
            return int(self._runner.addresses[0][1])

        self.port = self._thread.run(up())

    def stop(self) -> None:
        if self._thread is None:
            return

        async def down() -> None:
            await self._on_stop()
            if self._runner is not None:
                await self._runner.cleanup()

        try:
            self._thread.run(down())
        finally:
            self._thread.stop()
            self._thread = None


# --------------------------------------------------------------------------------------------
# The fake ComfyUI


@dataclass
class RequestRecord:
    """One HTTP request as it reached a replica (or the proxy)."""

    method: str
    path: str
    query: str
    cookies: dict[str, str]
    faulted: bool = False  # answered by fail_requests instead of ComfyUI


RECORD = web.RequestKey("record", RequestRecord)


@dataclass
class _Socket:
    ws: web.WebSocketResponse
    request: web.Request
    sent: int = 0


@dataclass
class _HttpFault:
    remaining: int
    status: int
    method: str | None
    path: str | None
    after: bool = False  # ComfyUI handles the request, then the answer is lost

    def matches(self, request: web.Request) -> bool:
        if self.method is not None and request.method != self.method:
            return False
        return self.path is None or request.path in (self.path, "/api" + self.path)


@dataclass
class _NodeFault:
    class_type: str | None
    node_id: str | None
    message: str
    exception_type: str


class _Interrupted(Exception):
    def __init__(self, node_id: str):
        super().__init__(node_id)
        self.node_id = node_id


class _NodeFailed(Exception):
    def __init__(self, node_id: str, fault: _NodeFault, inputs: Json):
        super().__init__(fault.message)
        self.node_id = node_id
        self.fault = fault
        self.inputs = inputs


class FakeComfyUI(_Server):
    """One fake ComfyUI replica (see the module docstring for the API and the knobs)."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        name: str = "comfyui",
        step_delay: float = 0.002,
        previews: bool = False,
        models: dict[str, list[str]] | None = None,
    ):
        super().__init__(name)
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="fake-comfyui-"))
        self.input_dir = self.data_dir / "input"
        self.output_dir = self.data_dir / "output"
        self.temp_dir = self.data_dir / "temp"
        for folder in (self.input_dir, self.output_dir, self.temp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.step_delay = step_delay
        self.previews = previews
        self.models = copy.deepcopy(models if models is not None else DEFAULT_MODELS)
        self.request_log: list[RequestRecord] = []
        self._reset_state()
        self._node_faults: list[_NodeFault] = []
        self._drop_after: int | None = None
        self._sockets: dict[str, _Socket] = {}
        self._held = False
        self._worker: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None

    def _reset_state(self) -> None:
        """A fresh process: no queue, nothing running, no history, no cache, counter at 0."""
        self._queue: list[tuple[Any, ...]] = []
        self._running: dict[int, tuple[Any, ...]] = {}
        self._history: dict[str, Json] = {}
        self._cache: dict[str, Json | None] = {}
        self._number = 0
        self._task_counter = 0
        self._interrupt = False
        self._client_id: str | None = None
        self._last_node_id: str | None = None

    # -- context manager -----------------------------------------------------------------

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- knobs (call from any thread) ----------------------------------------------------

    def fail_node(
        self,
        class_type: str | None = None,
        node_id: str | None = None,
        message: str = "Allocation on device 0 would exceed allowed memory. (out of memory)",
        exception_type: str = "torch.OutOfMemoryError",
    ) -> None:
        """The next execution of a matching node raises (one shot)."""
        fault = _NodeFault(class_type, node_id, message, exception_type)
        self.thread.call(lambda: self._node_faults.append(fault))

    def drop_websockets_after(self, messages: int) -> None:
        """Close every websocket abruptly once it has sent `messages` more messages (one shot)."""

        def arm() -> None:
            self._drop_after = messages
            for sock in self._sockets.values():
                sock.sent = 0

        self.thread.call(arm)

    def restart(self) -> None:
        """The pod restarted: queue, running prompt, history and websockets are gone."""
        self.thread.run(self._restart())

    def hold(self) -> None:
        """Stop taking prompts off the queue (they stay pending)."""
        self.thread.call(lambda: setattr(self, "_held", True))

    def release(self) -> None:
        """Resume the worker after hold()."""

        def go() -> None:
            self._held = False
            self._wake()

        self.thread.call(go)

    def add_foreign_prompts(self, count: int, *, client_id: str = "browser-user", steps: int = 20) -> list[str]:
        """Queue `count` prompts from another client (an artist in the browser); their ids."""

        def add() -> list[str]:
            ids = []
            for i in range(count):
                prompt = self.sample_prompt(steps=steps, seed=i)
                number, self._number = self._number, self._number + 1
                ids.append(self._enqueue(number, str(uuid.uuid4()), prompt, {"client_id": client_id}, ["9"]))
            return ids

        return self.thread.call(add)

    def sample_prompt(self, *, steps: int = 20, seed: int = 0, prefix: str = "ComfyUI") -> Json:
        """A small valid API-format prompt for this fake (checkpoint -> KSampler -> SaveImage)."""
        ckpt = min(self.models.get("checkpoints", ["model.safetensors"]))
        return {
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["4", 1]}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
            "3": {
                "class_type": "KSampler",
                "inputs": {
                    "seed": seed,
                    "steps": steps,
                    "cfg": 7.0,
                    "sampler_name": "euler",
                    "scheduler": "normal",
                    "denoise": 1.0,
                    "model": ["4", 0],
                    "positive": ["6", 0],
                    "negative": ["7", 0],
                    "latent_image": ["5", 0],
                },
            },
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
        }

    # -- inspection (call from any thread) -----------------------------------------------

    def history_ids(self) -> list[str]:
        return self.thread.call(lambda: list(self._history))

    def queue_ids(self) -> tuple[list[str], list[str]]:
        """(running prompt ids, pending prompt ids)."""
        return self.thread.call(lambda: ([i[1] for i in self._running.values()], [i[1] for i in sorted(self._queue)]))

    def connected_clients(self) -> list[str]:
        return self.thread.call(lambda: list(self._sockets))

    # -- server lifecycle ----------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._log_middleware, self._fault_middleware], client_max_size=100 * 2**20)
        routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
            ("GET", "/ws", self._ws),
            ("GET", "/prompt", self._get_prompt),
            ("POST", "/prompt", self._post_prompt),
            ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue),
            ("POST", "/interrupt", self._post_interrupt),
            ("GET", "/history", self._get_history),
            ("GET", "/history/{prompt_id}", self._get_history_item),
            ("POST", "/history", self._post_history),
            ("GET", "/view", self._view),
            ("POST", "/upload/image", self._upload_image),
            ("GET", "/system_stats", self._system_stats),
            ("GET", "/features", self._features),
            ("GET", "/object_info", self._object_info),
            ("GET", "/object_info/{node_class}", self._object_info_node),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            app.router.add_route(method, "/api" + path, handler)
        return app

    async def _on_start(self) -> None:
        self._wakeup = asyncio.Event()
        self._worker = asyncio.create_task(self._work())

    async def _on_stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        await self._close_sockets()

    async def _restart(self) -> None:
        await self._on_stop()
        self._reset_state()
        self._held = False
        await self._on_start()

    async def _close_sockets(self) -> None:
        sockets = list(self._sockets.values())
        self._sockets.clear()
        for sock in sockets:
            self._abort(sock)

    @staticmethod
    def _abort(sock: _Socket) -> None:
        """Drop the TCP connection under a websocket (what a dying pod or a proxy timeout does)."""
        transport = sock.request.transport
        if transport is not None:
            transport.abort()

    # -- middlewares ---------------------------------------------------------------------

    @web.middleware
    async def _log_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        record = RequestRecord(request.method, request.path, request.query_string, dict(request.cookies))
        self.request_log.append(record)
        request[RECORD] = record
        return await handler(request)

    @web.middleware
    async def _fault_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        fault = self._take_fault(request)
        if fault is None:
            return await handler(request)
        request[RECORD].faulted = True
        if fault.after:
            await handler(request)
        return alb_error_page(fault.status)

    # -- queue and worker ----------------------------------------------------------------

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _queue_remaining(self) -> int:
        return len(self._queue) + len(self._running)

    def _queue_updated(self) -> None:
        asyncio.get_running_loop().create_task(
            self._send("status", {"status": {"exec_info": {"queue_remaining": self._queue_remaining()}}})
        )

    def _enqueue(self, number: float, prompt_id: str, prompt: Json, extra_data: Json, outputs: list[str]) -> str:
        extra = dict(extra_data, create_time=int(time.time() * 1000))
        heapq.heappush(self._queue, (number, prompt_id, prompt, extra, outputs))
        self._queue_updated()
        self._wake()
        return prompt_id

    async def _work(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._queue or self._held:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            item = heapq.heappop(self._queue)
            item_id = self._task_counter
            self._task_counter += 1
            self._running[item_id] = copy.deepcopy(item)
            self._queue_updated()
            await self._execute(item_id, item)

    def catalogue(self) -> dict[str, NodeSpec]:
        files = sorted(p.name for p in self.input_dir.iterdir() if p.is_file())
        return build_catalogue(self.models, files)

    # -- execution -----------------------------------------------------------------------

    async def _execute(self, item_id: int, item: tuple[Any, ...]) -> None:
        number, prompt_id, prompt, extra_data, outputs = item
        client_id = extra_data.get("client_id")
        self._client_id = client_id
        self._interrupt = False
        messages: list[list[Any]] = []

        async def add_message(event: str, data: Json, broadcast: bool) -> None:
            data = {**data, "timestamp": int(time.time() * 1000)}
            messages.append([event, data])
            if client_id is not None or broadcast:
                await self._send(event, data, client_id)

        await add_message("execution_start", {"prompt_id": prompt_id}, False)
        catalogue = self.catalogue()
        order = _execution_order(prompt, outputs)
        signatures = {n: _signature(prompt, n, self.input_dir) for n in prompt if prompt[n]["class_type"] in catalogue}
        cached = [n for n in prompt if n in signatures and signatures[n] in self._cache]
        await add_message("execution_cached", {"nodes": cached, "prompt_id": prompt_id}, False)
        ui_outputs: Json = {}
        meta: Json = {}
        executed: list[str] = []
        success = False
        try:
            for node_id in order:
                ui = await self._run_node(prompt_id, prompt, node_id, client_id, cached, signatures, executed)
                if ui is not None:
                    ui_outputs[node_id] = ui
                    meta[node_id] = {
                        "node_id": node_id,
                        "display_node": node_id,
                        "parent_node": None,
                        "real_node_id": node_id,
                    }
            await add_message("execution_success", {"prompt_id": prompt_id}, False)
            success = True
        except _Interrupted as stop:
            data = {
                "prompt_id": prompt_id,
                "node_id": stop.node_id,
                "node_type": prompt[stop.node_id]["class_type"],
                "executed": executed,
            }
            await add_message("execution_interrupted", data, True)
        except _NodeFailed as failure:
            data = {
                "prompt_id": prompt_id,
                "node_id": failure.node_id,
                "node_type": prompt[failure.node_id]["class_type"],
                "executed": executed,
                "exception_message": f"{failure.fault.message}\n",
                "exception_type": failure.fault.exception_type,
                "traceback": ['  File "/opt/ComfyUI/execution.py", line 510, in execute\n', "    ...\n"],
                "current_inputs": {k: [str(v)] for k, v in failure.inputs.items()},
                "current_outputs": list(prompt),
            }
            await add_message("execution_error", data, False)
        self._last_node_id = None
        self._running.pop(item_id, None)
        self._history[prompt_id] = {
            "prompt": [number, prompt_id, prompt, extra_data, outputs],
            "outputs": ui_outputs,
            "status": {"status_str": "success" if success else "error", "completed": success, "messages": messages},
            "meta": meta,
        }
        self._queue_updated()
        if client_id is not None:
            await self._send("executing", {"node": None, "prompt_id": prompt_id}, client_id)

    async def _run_node(
        self,
        prompt_id: str,
        prompt: Json,
        node_id: str,
        client_id: str | None,
        cached: list[str],
        signatures: dict[str, str],
        executed: list[str],
    ) -> Json | None:
        """Execute one node; its UI output ({"images": [...]}) or None."""
        node = prompt[node_id]
        if node_id in cached:
            cached_ui = self._cache[signatures[node_id]]
            if client_id is not None:
                data = {"node": node_id, "display_node": node_id, "output": cached_ui, "prompt_id": prompt_id}
                await self._send("executed", data, client_id)
            return cached_ui
        if self._interrupt:
            raise _Interrupted(node_id)
        self._last_node_id = node_id
        if client_id is not None:
            await self._send("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}, client_id)
            await self._progress_state(prompt_id, node_id, 0, 1, "running", client_id)
        fault = self._take_node_fault(node_id, node["class_type"])
        if fault is not None:
            raise _NodeFailed(node_id, fault, {k: v for k, v in node["inputs"].items() if not _is_link(v)})
        ui: Json | None = None
        if node["class_type"] in SAMPLERS:
            await self._sample(prompt_id, prompt, node_id, client_id)
        elif node["class_type"] in IMAGE_SAVERS:
            ui = {"images": self._save_images(prompt, node_id)}
            if client_id is not None:
                data = {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": prompt_id}
                await self._send("executed", data, client_id)
        self._cache[signatures[node_id]] = ui
        executed.append(node_id)
        if client_id is not None:
            await self._progress_state(prompt_id, node_id, 1, 1, "finished", client_id)
        return ui

    def _take_node_fault(self, node_id: str, class_type: str) -> _NodeFault | None:
        for fault in self._node_faults:
            if (fault.node_id is None or fault.node_id == node_id) and (
                fault.class_type is None or fault.class_type == class_type
            ):
                self._node_faults.remove(fault)
                return fault
        return None

    async def _progress_state(self, prompt_id: str, node_id: str, value: int, max_: int, state: str, sid: str) -> None:
        entry = {
            "value": value,
            "max": max_,
            "state": state,
            "node_id": node_id,
            "prompt_id": prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
        }
        await self._send("progress_state", {"prompt_id": prompt_id, "nodes": {node_id: entry}}, sid)

    async def _sample(self, prompt_id: str, prompt: Json, node_id: str, client_id: str | None) -> None:
        steps = _sampler_steps(prompt, node_id)
        preview = png_bytes(8, 8, (128, 128, 128))
        for step in range(1, steps + 1):
            await asyncio.sleep(self.step_delay)
            if self._interrupt:
                raise _Interrupted(node_id)
            if client_id is None:
                continue
            progress = {"value": step, "max": steps, "prompt_id": prompt_id, "node": node_id}
            await self._send("progress", progress, client_id)
            if self.previews:
                await self._send_bytes(struct.pack(">I", 1) + struct.pack(">I", 2) + preview, client_id)

    def _save_images(self, prompt: Json, node_id: str) -> list[Json]:
        """Write the node's images like SaveImage (output/) or PreviewImage (temp/)."""
        class_type = prompt[node_id]["class_type"]
        folder_type = IMAGE_SAVERS[class_type]
        base = self.output_dir if folder_type == "output" else self.temp_dir
        prefix = str(prompt[node_id]["inputs"].get("filename_prefix", "ComfyUI"))
        if class_type == "PreviewImage":
            prefix = "ComfyUI_temp_" + "".join(secrets.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        subfolder = os.path.dirname(os.path.normpath(prefix))
        name = os.path.basename(os.path.normpath(prefix))
        folder = base / subfolder
        folder.mkdir(parents=True, exist_ok=True)
        counter = _next_counter(folder, name)
        width, height, batch = _image_shape(prompt, node_id, self.input_dir)
        colour = hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).digest()
        results = []
        for index in range(batch):
            filename = f"{name}_{counter + index:05}_.png"
            rgb = (colour[0], colour[1], (colour[2] + index * 40) % 256)
            data = png_bytes(max(1, width // 8), max(1, height // 8), rgb, {"prompt": json.dumps(prompt)})
            (folder / filename).write_bytes(data)
            results.append({"filename": filename, "subfolder": subfolder, "type": folder_type})
        return results

    # -- websocket -----------------------------------------------------------------------

    async def _send(self, event: str, data: Json, sid: str | None = None) -> None:
        message = {"type": event, "data": data}
        targets = list(self._sockets.values()) if sid is None else [s for k, s in self._sockets.items() if k == sid]
        for sock in targets:
            await self._deliver(sock, lambda ws: ws.send_json(message))

    async def _send_bytes(self, payload: bytes, sid: str | None) -> None:
        targets = list(self._sockets.values()) if sid is None else [s for k, s in self._sockets.items() if k == sid]
        for sock in targets:
            await self._deliver(sock, lambda ws: ws.send_bytes(payload))

    async def _deliver(self, sock: _Socket, send: Callable[[web.WebSocketResponse], Awaitable[None]]) -> None:
        if sock.ws.closed:
            return
        try:
            await send(sock.ws)
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            return
        sock.sent += 1
        if self._drop_after is not None and sock.sent >= self._drop_after:
            self._drop_after = None
            for key, value in list(self._sockets.items()):
                if value is sock:
                    del self._sockets[key]
            self._abort(sock)

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId", "") or uuid.uuid4().hex
        old = self._sockets.pop(sid, None)
        if old is not None:
            await old.ws.close()
        sock = _Socket(ws, request)
        self._sockets[sid] = sock
        try:
            await self._send(
                "status", {"status": {"exec_info": {"queue_remaining": self._queue_remaining()}}, "sid": sid}, sid
            )
            if self._client_id == sid and self._last_node_id is not None:
                await self._send("executing", {"node": self._last_node_id}, sid)
            first = True
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT and first:
                    data = json.loads(msg.data)
                    if isinstance(data, dict) and data.get("type") == "feature_flags":
                        await self._send("feature_flags", _server_features(), sid)
                first = False
        finally:
            if self._sockets.get(sid) is sock:
                del self._sockets[sid]
        return ws

    # -- HTTP handlers -------------------------------------------------------------------

    async def _get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self._queue_remaining()}})

    async def _post_prompt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble")
        if "number" in body:
            number = float(body["number"])
        else:
            number = -self._number if body.get("front") else self._number
            self._number += 1
        if "prompt" not in body:
            no_prompt = _error("no_prompt", "No prompt provided", "No prompt provided")
            return web.json_response({"error": no_prompt, "node_errors": {}}, status=400)
        prompt = body["prompt"]
        if not isinstance(prompt, dict):
            return web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble")
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        validator = _Validator(prompt, self.catalogue(), self.input_dir)
        ok, error, outputs, node_errors = validator.run(body.get("partial_execution_targets"))
        if not ok:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        extra_data = dict(body.get("extra_data", {}))
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        self._enqueue(number, prompt_id, prompt, extra_data, outputs)
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def _get_queue(self, request: web.Request) -> web.Response:
        running = [list(item) for item in self._running.values()]
        pending = [list(item) for item in self._queue]
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def _post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self._queue = []
            self._queue_updated()
        for prompt_id in body.get("delete", []):
            for index, item in enumerate(self._queue):
                if item[1] == prompt_id:
                    self._queue.pop(index)
                    heapq.heapify(self._queue)
                    self._queue_updated()
                    break
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if not prompt_id or any(item[1] == prompt_id for item in self._running.values()):
            self._interrupt = True
        return web.Response(status=200)

    async def _get_history(self, request: web.Request) -> web.Response:
        max_items = int(request.query["max_items"]) if "max_items" in request.query else None
        offset = int(request.query.get("offset", -1))
        if offset < 0 and max_items is not None:
            offset = len(self._history) - max_items
        out: Json = {}
        for index, (key, value) in enumerate(self._history.items()):
            if index >= offset:
                out[key] = value
                if max_items is not None and len(out) >= max_items:
                    break
        return web.json_response(out)

    async def _get_history_item(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self._history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def _post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self._history = {}
        for prompt_id in body.get("delete", []):
            self._history.pop(prompt_id, None)
        return web.Response(status=200)

    def _dir_for_type(self, type_: str | None) -> Path | None:
        return {"input": self.input_dir, "output": self.output_dir, "temp": self.temp_dir}.get(type_ or "")

    async def _view(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        if "filename" not in query:
            return web.Response(status=404)
        filename = query["filename"]
        base: Path | None = None
        for annotation in ("output", "input", "temp"):
            if filename.endswith(f"[{annotation}]"):
                filename, base = filename[: -len(annotation) - 3], self._dir_for_type(annotation)
        if not filename or filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        base = base or self._dir_for_type(query.get("type", "output"))
        if base is None:
            return web.Response(status=400)
        if "subfolder" in query:
            folder = (base / query["subfolder"]).resolve()
            if os.path.commonpath((folder, base.resolve())) != str(base.resolve()):
                return web.Response(status=403)
            base = folder
        path = base / os.path.basename(filename)
        if not path.is_file():
            return web.Response(status=404)
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = {"Content-Disposition": f'filename="{path.name}"', "Content-Type": content_type}
        return web.FileResponse(path, headers=headers)

    async def _upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        upload_type = str(post.get("type") or "input")
        base = self._dir_for_type(upload_type)
        if base is None:
            return web.Response(status=400)
        subfolder = str(post.get("subfolder", ""))
        folder = (base / os.path.normpath(subfolder)).resolve()
        path = folder / image.filename
        if os.path.commonpath((base.resolve(), path.resolve())) != str(base.resolve()):
            return web.Response(status=400)
        folder.mkdir(parents=True, exist_ok=True)
        data = image.file.read()
        filename = image.filename
        if str(post.get("overwrite")) not in ("true", "1"):
            stem, ext = os.path.splitext(filename)
            counter = 1
            while path.exists() and path.read_bytes() != data:
                filename = f"{stem} ({counter}){ext}"
                path = folder / filename
                counter += 1
        path.write_bytes(data)
        return web.json_response({"name": filename, "subfolder": subfolder, "type": upload_type})

    async def _system_stats(self, request: web.Request) -> web.Response:
        gib = 2**30
        return web.json_response(
            {
                "system": {
                    "os": sys.platform,
                    "ram_total": 64 * gib,
                    "ram_free": 48 * gib,
                    "comfyui_version": COMFYUI_VERSION,
                    "required_frontend_version": "1.35.9",
                    "installed_templates_version": "0.7.69",
                    "required_templates_version": "0.7.69",
                    "python_version": sys.version,
                    "pytorch_version": "2.9.1+cu128",
                    "embedded_python": False,
                    "argv": ["main.py", "--listen", "0.0.0.0", "--port", "8188"],
                },
                "devices": [
                    {
                        "name": "cuda:0 NVIDIA L4 : cudaMallocAsync",
                        "type": "cuda",
                        "index": 0,
                        "vram_total": 22 * gib,
                        "vram_free": 21 * gib,
                        "torch_vram_total": 0,
                        "torch_vram_free": 0,
                    }
                ],
            }
        )

    async def _features(self, request: web.Request) -> web.Response:
        return web.json_response(_server_features())

    async def _object_info(self, request: web.Request) -> web.Response:
        return web.json_response({name: spec.info() for name, spec in self.catalogue().items()})

    async def _object_info_node(self, request: web.Request) -> web.Response:
        spec = self.catalogue().get(request.match_info["node_class"])
        return web.json_response({spec.name: spec.info()} if spec is not None else {})


def _server_features() -> Json:
    return {
        "supports_preview_metadata": True,
        "max_upload_size": 100 * 2**20,
        "extension": {"manager": {"supports_v4": True}},
    }


def _execution_order(prompt: Json, outputs: Sequence[str]) -> list[str]:
    """Dependencies first, each node once, starting from the output nodes (as ComfyUI does)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in seen:
            return
        seen.add(node_id)
        for value in prompt[node_id]["inputs"].values():
            if _is_link(value) and value[0] in prompt:
                visit(value[0])
        order.append(node_id)

    for out in sorted(outputs, key=lambda k: (len(k), k)):
        visit(out)
    return order


def _signature(prompt: Json, node_id: str, input_dir: Path, seen: frozenset[str] = frozenset()) -> str:
    """A cache key: the node's class and inputs, links replaced by the upstream keys."""
    node = prompt[node_id]
    parts: Json = {"class_type": node["class_type"]}
    for name, value in sorted(node.get("inputs", {}).items()):
        if _is_link(value) and len(value) == 2 and value[0] in prompt and value[0] not in seen:
            parts[name] = [_signature(prompt, value[0], input_dir, seen | {node_id}), value[1]]
        else:
            parts[name] = value
    if node["class_type"] == "LoadImage":  # IS_CHANGED: the file's hash
        path = _input_path(input_dir, str(node["inputs"].get("image", "")))
        parts["__file__"] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _sampler_steps(prompt: Json, node_id: str) -> int:
    inputs = prompt[node_id]["inputs"]
    if prompt[node_id]["class_type"] == "SamplerCustomAdvanced":
        sigmas = inputs.get("sigmas")
        if _is_link(sigmas) and sigmas[0] in prompt:
            return int(prompt[sigmas[0]]["inputs"].get("steps", 1))
        return 1
    steps = int(inputs.get("steps", 1))
    if prompt[node_id]["class_type"] == "KSamplerAdvanced":
        start = int(inputs.get("start_at_step", 0))
        end = min(int(inputs.get("end_at_step", steps)), steps)
        return max(1, end - start)
    return steps


def _image_shape(prompt: Json, node_id: str, input_dir: Path) -> tuple[int, int, int]:
    """(width, height, batch) of the images reaching a node: the latent's or the loaded image's."""
    stack, seen = [node_id], set()
    while stack:
        current = stack.pop()
        if current in seen or current not in prompt:
            continue
        seen.add(current)
        inputs = prompt[current]["inputs"]
        if all(isinstance(inputs.get(k), int) for k in ("width", "height", "batch_size")):
            return inputs["width"], inputs["height"], inputs["batch_size"]
        if prompt[current]["class_type"] == "LoadImage":
            path = _input_path(input_dir, str(inputs.get("image", "")))
            size = png_size(path.read_bytes()) if path.is_file() else None
            return (size[0] * 8, size[1] * 8, 1) if size else (512, 512, 1)
        stack.extend(v[0] for v in inputs.values() if _is_link(v))
    return 512, 512, 1


def _next_counter(folder: Path, name: str) -> int:
    """The next file counter, from the files already there (folder_paths.get_save_image_path)."""
    best = 0
    for entry in folder.iterdir():
        if entry.name[: len(name) + 1] != name + "_":
            continue
        digits = entry.name[len(name) + 1 :].split("_")[0]
        if digits.isdigit():
            best = max(best, int(digits))
    return best + 1


# --------------------------------------------------------------------------------------------
# The ALB stand-in

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
STICKY_COOKIE = "AWSALB"
STICKY_CORS_COOKIE = "AWSALBCORS"


class StickyProxy(_Server):
    """An ALB stand-in: lb_cookie stickiness (AWSALB/AWSALBCORS) over several replicas."""

    def __init__(self, upstreams: Sequence[str], *, name: str = "alb"):
        super().__init__(name)
        self.upstreams = list(upstreams)
        self._tokens = [secrets.token_urlsafe(24) for _ in self.upstreams]
        self._next = 0
        self._session: aiohttp.ClientSession | None = None
        self._open: set[web.WebSocketResponse] = set()
        self._draining: set[int] = set()
        self.routing_log: list[tuple[int, str, str]] = []  # (replica index, method, path)

    def drain(self, index: int) -> None:
        """Deregister a replica, as during a pod's graceful shutdown: new requests (its sticky
        sessions included) go to the other replicas, open websockets stay where they are."""
        self.thread.call(lambda: self._draining.add(index))

    def replica_for_cookie(self, token: str) -> int | None:
        return self._tokens.index(token) if token in self._tokens else None

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=100 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _on_start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def _on_stop(self) -> None:
        for ws in list(self._open):
            await ws.close()
        if self._session is not None:
            await self._session.close()

    def _route(self, request: web.Request) -> int:
        for cookie in (STICKY_COOKIE, STICKY_CORS_COOKIE):
            token = request.cookies.get(cookie)
            if token in self._tokens and self._tokens.index(token) not in self._draining:
                return self._tokens.index(token)
        healthy = [i for i in range(len(self.upstreams)) if i not in self._draining] or list(range(len(self.upstreams)))
        index = healthy[self._next % len(healthy)]
        self._next += 1
        return index

    def _stick(self, response: web.StreamResponse, index: int) -> None:
        expires = formatdate(time.time() + 7 * 86400, usegmt=True)
        token = self._tokens[index]
        response.set_cookie(STICKY_COOKIE, token, expires=expires, path="/")
        response.set_cookie(STICKY_CORS_COOKIE, token, expires=expires, path="/", samesite="None", secure=True)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault = self._take_fault(request)
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        # A websocket's answer cannot be lost after the fact: it fails at the upgrade either way.
        if fault is not None and (websocket or not fault.after):
            return alb_error_page(fault.status)
        index = self._route(request)
        self.routing_log.append((index, request.method, request.path))
        if websocket:
            return await self._proxy_ws(request, index)
        response = await self._proxy_http(request, index)
        return response if fault is None else alb_error_page(fault.status)

    def _forward_headers(self, request: web.Request) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        peer = request.remote or "127.0.0.1"
        headers.update({"X-Forwarded-For": peer, "X-Forwarded-Proto": "http", "X-Forwarded-Port": str(self.port)})
        return headers

    async def _proxy_http(self, request: web.Request, index: int) -> web.StreamResponse:
        assert self._session is not None
        url = self.upstreams[index] + request.path_qs
        body = await request.read()
        try:
            async with self._session.request(
                request.method, url, headers=self._forward_headers(request), data=body, allow_redirects=False
            ) as upstream:
                payload = await upstream.read()
                response = web.Response(status=upstream.status, body=payload)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        response.headers.add(key, value)
        except aiohttp.ClientError:
            return alb_error_page(502)
        self._stick(response, index)
        return response

    async def _proxy_ws(self, request: web.Request, index: int) -> web.StreamResponse:
        assert self._session is not None
        url = self.upstreams[index].replace("http://", "ws://", 1) + request.path_qs
        headers = {"Cookie": request.headers["Cookie"]} if "Cookie" in request.headers else {}
        try:
            upstream = await self._session.ws_connect(url, headers=headers, autoping=True)
        except (aiohttp.ClientError, aiohttp.WSServerHandshakeError):
            return alb_error_page(502)
        client = web.WebSocketResponse()
        self._stick(client, index)
        await client.prepare(request)
        self._open.add(client)
        try:
            await _pump_both(client, upstream)
        finally:
            self._open.discard(client)
            await upstream.close()
            await client.close()
        return client


async def _pump_both(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Relay frames both ways until either side closes; then close the other (as the ALB does)."""

    async def relay(source: Any, sink: Any) -> None:
        async for msg in source:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await sink.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
            else:
                break

    tasks = [asyncio.create_task(relay(client, upstream)), asyncio.create_task(relay(upstream, client))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class FakeCluster:
    """N fake ComfyUI replicas behind a StickyProxy: `url` is the "ALB"."""

    def __init__(self, replicas: int = 2, **fake_options: Any):
        self.replicas = [FakeComfyUI(name=f"replica-{i}", **fake_options) for i in range(replicas)]
        self.proxy: StickyProxy | None = None

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    def __enter__(self) -> Self:
        for replica in self.replicas:
            replica.__enter__()
        self.proxy = StickyProxy([r.url for r in self.replicas])
        self.proxy.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for replica in self.replicas:
            replica.__exit__(*exc)
