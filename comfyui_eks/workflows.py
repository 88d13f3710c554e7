"""ComfyUI workflows in API format: load, validate, set seeds, find input images and models.

API format is what POST /prompt takes: {"<node id>": {"class_type": ..., "inputs": {...}}},
where an input is either a literal or a link [source node id, output index]. The UI format
(what "Save" writes: "nodes" and "links" arrays) cannot be submitted; ComfyUI's
"Export (API)" writes the API format.

Only the standard library: the job-runner sidecar reuses this in the ComfyUI pod.
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Json = dict[str, Any]

SEED_INPUTS = ("seed", "noise_seed")
SEED_MAX = 0xFFFFFFFFFFFFFFFF  # the max of KSampler.seed / RandomNoise.noise_seed (nodes.py)
# Random seeds stay below 2**53 so that the browser (JavaScript numbers) shows them exactly.
RANDOM_SEED_BOUND = 2**53

# Nodes whose `image` input names a file in ComfyUI's input directory (nodes.py).
IMAGE_LOADERS = ("LoadImage", "LoadImageMask")

# Model folders ComfyUI reads from the models bucket: the keys of docker/extra_model_paths.yaml.
BUCKET_FOLDERS = (
    "checkpoints", "loras", "vae", "clip", "unet", "controlnet", "upscale_models", "embeddings",
    "clip_vision", "diffusion_models", "text_encoders",
)  # fmt: skip

# ComfyUI folder name -> the bucket folders it searches, canonical first. folder_paths.py maps
# the legacy names onto the new ones: "unet" -> diffusion_models, "clip" -> text_encoders.
FOLDER_SEARCH = {
    "diffusion_models": ("diffusion_models", "unet"),
    "text_encoders": ("text_encoders", "clip"),
}

# class_type -> {input name: ComfyUI model folder}, as at ComfyUI v0.8.1.
MODEL_LOADERS: dict[str, dict[str, str]] = {
    # nodes.py
    "CheckpointLoaderSimple": {"ckpt_name": "checkpoints"},
    "CheckpointLoader": {"ckpt_name": "checkpoints"},
    "unCLIPCheckpointLoader": {"ckpt_name": "checkpoints"},
    "VAELoader": {"vae_name": "vae"},
    "LoraLoader": {"lora_name": "loras"},
    "LoraLoaderModelOnly": {"lora_name": "loras"},
    "UNETLoader": {"unet_name": "diffusion_models"},
    "CLIPLoader": {"clip_name": "text_encoders"},
    "DualCLIPLoader": {"clip_name1": "text_encoders", "clip_name2": "text_encoders"},
    "CLIPVisionLoader": {"clip_name": "clip_vision"},
    "ControlNetLoader": {"control_net_name": "controlnet"},
    "DiffControlNetLoader": {"control_net_name": "controlnet"},
    "StyleModelLoader": {"style_model_name": "style_models"},
    "GLIGENLoader": {"gligen_name": "gligen"},
    # comfy_extras/nodes_sd3.py
    "TripleCLIPLoader": {"clip_name1": "text_encoders", "clip_name2": "text_encoders", "clip_name3": "text_encoders"},
    # comfy_extras/nodes_hidream.py
    "QuadrupleCLIPLoader": {f"clip_name{i}": "text_encoders" for i in range(1, 5)},
    # comfy_extras/nodes_upscale_model.py
    "UpscaleModelLoader": {"model_name": "upscale_models"},
    # comfy_extras/nodes_video_model.py
    "ImageOnlyCheckpointLoader": {"ckpt_name": "checkpoints"},
    # comfy_extras/nodes_hypernetwork.py
    "HypernetworkLoader": {"hypernetwork_name": "hypernetworks"},
    # comfy_extras/nodes_photomaker.py
    "PhotoMakerLoader": {"photomaker_model_name": "photomaker"},
    # comfy_extras/nodes_model_patch.py
    "ModelPatchLoader": {"name": "model_patches"},
    # comfy_extras/nodes_audio_encoder.py
    "AudioEncoderLoader": {"audio_encoder_name": "audio_encoders"},
    # comfy_extras/nodes_hunyuan.py
    "LatentUpscaleModelLoader": {"model_name": "latent_upscale_models"},
}

# VAELoader options that are not files in the vae folder (nodes.py VAELoader.vae_list).
VAE_BUILTINS = ("pixel_space", "taesd", "taesdxl", "taesd3", "taef1")
VAE_APPROX_PREFIXES = ("taehv", "lighttaew2_2", "lighttaew2_1", "lighttaehy1_5")


class WorkflowError(Exception):
    """A workflow that cannot be submitted; `lines` says why, one line per problem."""

    def __init__(self, *lines: str):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


@dataclass(frozen=True)
class ImageInput:
    """A node input that names an image in ComfyUI's input directory."""

    node_id: str
    class_type: str
    input_name: str
    value: str

    @property
    def filename(self) -> str:
        """The file name without ComfyUI's " [input]" annotation."""
        return strip_annotation(self.value)


@dataclass(frozen=True)
class ModelRef:
    """A model file the workflow's loaders need, and where it lives in the models bucket."""

    folder: str  # ComfyUI's folder name (folder_paths.py), e.g. diffusion_models
    filename: str  # as the loader names it; may contain sub-directories
    nodes: tuple[str, ...]  # the nodes that load it

    @property
    def key(self) -> str:
        """The canonical S3 key in the models bucket."""
        return self.candidate_keys[0]

    @property
    def candidate_keys(self) -> tuple[str, ...]:
        """Every bucket key ComfyUI would find this file under (unet/ and clip/ count too)."""
        name = self.filename.replace("\\", "/")
        return tuple(f"{folder}/{name}" for folder in FOLDER_SEARCH.get(self.folder, (self.folder,)))

    @property
    def in_bucket_layout(self) -> bool:
        """False for folders the pod does not read from the bucket (e.g. style_models)."""
        return any(key.split("/", 1)[0] in BUCKET_FOLDERS for key in self.candidate_keys)


# --------------------------------------------------------------------------------------------
# Load and validate


def load_workflow(path: Path) -> Json:
    """The API-format workflow in `path`, validated; WorkflowError says what is wrong.

    A POST /prompt body ({"prompt": {...}, ...}) is accepted too: its "prompt" is used.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkflowError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowError(f"{path}: cannot read it ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"{path}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if is_ui_format(data):
        raise WorkflowError(
            f'{path} is a workflow in ComfyUI\'s UI format (it has "nodes" and "links" arrays), not the API format '
            "that the API takes: open it in ComfyUI and use Workflow > Export (API) (older versions: enable the "
            'dev mode options in the settings, then "Save (API Format)")'
        )
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "class_type" not in data["prompt"]:
        data = data["prompt"]
    problems = validate(data)
    if problems:
        raise WorkflowError(*(f"{path}: {problem}" for problem in problems))
    return dict(data)


def is_ui_format(data: Any) -> bool:
    """Whether `data` is a UI-format workflow (what ComfyUI's "Save" writes)."""
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and isinstance(data.get("links"), list)


def validate(workflow: Any) -> list[str]:
    """Problems that make `workflow` invalid API format (empty when it is fine).

    Checked: an object of nodes; each node an object with a class_type string and an inputs
    object; every link a [node id string, output index >= 0] to a node that exists. Whether
    the class exists and its inputs fit is ComfyUI's to say (custom nodes vary per image).
    """
    if not isinstance(workflow, dict) or not workflow:
        return ['not an API-format workflow: expected a JSON object of nodes, like {"3": {"class_type": ...}}']
    problems = []
    for node_id, node in workflow.items():
        if not isinstance(node, dict):
            problems.append(f"node {node_id}: expected an object with class_type and inputs")
            continue
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            problems.append(f"node {node_id}: no class_type")
        if not isinstance(node.get("inputs"), dict):
            problems.append(f"node {node_id}: no inputs object")
            continue
        for name, value in node["inputs"].items():
            problem = _link_problem(workflow, value)
            if problem:
                problems.append(f"node {node_id} input {name!r}: {problem}")
    return problems


def _link_problem(workflow: Json, value: Any) -> str | None:
    if not isinstance(value, list):
        return None  # a literal (lists of literals are written {"__value__": [...]} in API format)
    if len(value) != 2 or not isinstance(value[1], int) or isinstance(value[1], bool) or value[1] < 0:
        return f"a link must be [node id, output index], got {json.dumps(value)}"
    if not isinstance(value[0], str):
        return f'link {json.dumps(value)}: node ids are strings in API format, e.g. ["{value[0]}", {value[1]}]'
    if value[0] not in workflow:
        return f"link to node {value[0]}, which is not in the workflow"
    return None


def links(workflow: Json) -> Iterator[tuple[str, str, str, int]]:
    """Every link as (node id, input name, source node id, source output index)."""
    for node_id, node in workflow.items():
        for name, value in node.get("inputs", {}).items():
            if isinstance(value, list) and len(value) == 2:
                yield node_id, name, str(value[0]), int(value[1])


# --------------------------------------------------------------------------------------------
# Seeds and inputs


def random_seed() -> int:
    return secrets.randbelow(RANDOM_SEED_BOUND)


def seed_inputs(workflow: Json) -> list[tuple[str, str]]:
    """(node id, input name) of every literal `seed` / `noise_seed` input."""
    found = []
    for node_id, node in workflow.items():
        for name in SEED_INPUTS:
            value = node.get("inputs", {}).get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                found.append((node_id, name))
    return found


def apply_seed(workflow: Json, seed: int) -> Json:
    """A copy of `workflow` with every literal seed / noise_seed input set to `seed`."""
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed {seed} is outside 0..{SEED_MAX}")
    result = copy.deepcopy(workflow)
    for node_id, name in seed_inputs(result):
        result[node_id]["inputs"][name] = seed
    return result


def find_input_images(workflow: Json) -> list[ImageInput]:
    """The LoadImage / LoadImageMask inputs naming a file (links are not files)."""
    found = []
    for node_id, node in workflow.items():
        if node.get("class_type") not in IMAGE_LOADERS:
            continue
        value = node.get("inputs", {}).get("image")
        if isinstance(value, str) and value:
            found.append(ImageInput(node_id, node["class_type"], "image", value))
    return found


def set_input(workflow: Json, node_id: str, name: str, value: Any) -> Json:
    """A copy of `workflow` with one input changed."""
    result = copy.deepcopy(workflow)
    result[node_id]["inputs"][name] = value
    return result


def strip_annotation(name: str) -> str:
    """ "photo.png [input]" -> "photo.png" (folder_paths.annotated_filepath)."""
    for annotation in ("[input]", "[output]", "[temp]"):
        if name.endswith(annotation):
            return name[: -len(annotation)].rstrip()
    return name


# --------------------------------------------------------------------------------------------
# Models


def required_models(workflow: Json) -> list[ModelRef]:
    """The model files the workflow's loaders reference, one per file, sorted by bucket key.

    Only literal inputs of known loader classes count (a linked name is decided at run time).
    """
    found: dict[tuple[str, str], list[str]] = {}
    for node_id, node in workflow.items():
        for name, folder in MODEL_LOADERS.get(node.get("class_type", ""), {}).items():
            value = node.get("inputs", {}).get(name)
            if not isinstance(value, str) or not value:
                continue
            resolved = _model_folder(node["class_type"], folder, value)
            if resolved is not None:
                found.setdefault((resolved, value), []).append(node_id)
    refs = [ModelRef(folder, filename, tuple(nodes)) for (folder, filename), nodes in found.items()]
    return sorted(refs, key=lambda ref: ref.key)


def _model_folder(class_type: str, folder: str, value: str) -> str | None:
    """The folder a loader reads `value` from; None when it is not a file (VAELoader built-ins)."""
    if class_type == "VAELoader":
        if value in VAE_BUILTINS:
            return None
        if value.startswith(VAE_APPROX_PREFIXES):
            return "vae_approx"
    return folder
