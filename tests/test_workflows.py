"""The example workflows (workflows/*.json) and comfyui_eks/workflows.py.

EXPECTED below is ComfyUI v0.8.1's node interface for the classes the examples use, copied by
hand from ComfyUI's source (each entry names its file): the examples are checked against it,
and so is the fake server's /object_info, so neither can drift from ComfyUI unnoticed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from comfyui_eks import cli, invoke
from comfyui_eks.comfy_client import RetryPolicy
from comfyui_eks.workflows import (
    BUCKET_FOLDERS,
    MODEL_LOADERS,
    WorkflowError,
    apply_seed,
    find_input_images,
    links,
    load_workflow,
    required_models,
    seed_inputs,
    set_input,
    validate,
)
from tests.fake_comfyui import FakeComfyUI
from tests.helpers import REPO

WORKFLOWS = REPO / "workflows"
EXAMPLES = ["sdxl", "sd35", "flux-dev", "flux-schnell"]
Json = dict[str, Any]


@dataclass(frozen=True)
class Node:
    """A node class's inputs (name -> type; COMBO for a list of options) and output types."""

    required: dict[str, str]
    outputs: tuple[str, ...]
    optional: dict[str, str] = field(default_factory=dict)
    output_node: bool = False


# fmt: off
EXPECTED: dict[str, Node] = {
    # nodes.py CheckpointLoaderSimple
    "CheckpointLoaderSimple": Node({"ckpt_name": "COMBO"}, ("MODEL", "CLIP", "VAE")),
    # nodes.py CLIPTextEncode
    "CLIPTextEncode": Node({"text": "STRING", "clip": "CLIP"}, ("CONDITIONING",)),
    # nodes.py EmptyLatentImage
    "EmptyLatentImage": Node({"width": "INT", "height": "INT", "batch_size": "INT"}, ("LATENT",)),
    # nodes.py KSampler
    "KSampler": Node({"model": "MODEL", "seed": "INT", "steps": "INT", "cfg": "FLOAT", "sampler_name": "COMBO",
                      "scheduler": "COMBO", "positive": "CONDITIONING", "negative": "CONDITIONING",
                      "latent_image": "LATENT", "denoise": "FLOAT"}, ("LATENT",)),
    # nodes.py VAEDecode / VAEEncode
    "VAEDecode": Node({"samples": "LATENT", "vae": "VAE"}, ("IMAGE",)),
    "VAEEncode": Node({"pixels": "IMAGE", "vae": "VAE"}, ("LATENT",)),
    # nodes.py SaveImage (OUTPUT_NODE = True; hidden prompt/extra_pnginfo are not inputs)
    "SaveImage": Node({"images": "IMAGE", "filename_prefix": "STRING"}, (), output_node=True),
    # nodes.py LoadImage (RETURN_TYPES = ("IMAGE", "MASK"))
    "LoadImage": Node({"image": "COMBO"}, ("IMAGE", "MASK")),
    # nodes.py VAELoader
    "VAELoader": Node({"vae_name": "COMBO"}, ("VAE",)),
    # nodes.py UNETLoader
    "UNETLoader": Node({"unet_name": "COMBO", "weight_dtype": "COMBO"}, ("MODEL",)),
    # nodes.py DualCLIPLoader (optional "device")
    "DualCLIPLoader": Node({"clip_name1": "COMBO", "clip_name2": "COMBO", "type": "COMBO"}, ("CLIP",),
                           {"device": "COMBO"}),
    # comfy_extras/nodes_sd3.py TripleCLIPLoader (v3 schema: io.Combo inputs, io.Clip output)
    "TripleCLIPLoader": Node({"clip_name1": "COMBO", "clip_name2": "COMBO", "clip_name3": "COMBO"}, ("CLIP",)),
    # comfy_extras/nodes_sd3.py EmptySD3LatentImage
    "EmptySD3LatentImage": Node({"width": "INT", "height": "INT", "batch_size": "INT"}, ("LATENT",)),
    # comfy_extras/nodes_flux.py FluxGuidance
    "FluxGuidance": Node({"conditioning": "CONDITIONING", "guidance": "FLOAT"}, ("CONDITIONING",)),
    # comfy_extras/nodes_model_advanced.py ModelSamplingFlux
    "ModelSamplingFlux": Node({"model": "MODEL", "max_shift": "FLOAT", "base_shift": "FLOAT", "width": "INT",
                               "height": "INT"}, ("MODEL",)),
    # comfy_extras/nodes_custom_sampler.py KSamplerSelect, BasicScheduler, BasicGuider, RandomNoise,
    # SamplerCustomAdvanced (outputs "output" and "denoised_output", both LATENT)
    "KSamplerSelect": Node({"sampler_name": "COMBO"}, ("SAMPLER",)),
    "BasicScheduler": Node({"model": "MODEL", "scheduler": "COMBO", "steps": "INT", "denoise": "FLOAT"}, ("SIGMAS",)),
    "BasicGuider": Node({"model": "MODEL", "conditioning": "CONDITIONING"}, ("GUIDER",)),
    "RandomNoise": Node({"noise_seed": "INT"}, ("NOISE",)),
    "SamplerCustomAdvanced": Node({"noise": "NOISE", "guider": "GUIDER", "sampler": "SAMPLER", "sigmas": "SIGMAS",
                                   "latent_image": "LATENT"}, ("LATENT", "LATENT")),
}
# folder_paths.py folder_names_and_paths keys (the folders a loader may read from)
COMFYUI_FOLDERS = {
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision", "style_models",
    "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models", "latent_upscale_models",
    "custom_nodes", "hypernetworks", "photomaker", "classifiers", "model_patches", "audio_encoders",
}
# fmt: on

REQUIRED_MODELS = {
    "sdxl": ["checkpoints/sd_xl_base_1.0.safetensors"],
    "sd35": [
        "checkpoints/sd3.5_large.safetensors",
        "text_encoders/clip_g.safetensors",
        "text_encoders/clip_l.safetensors",
        "text_encoders/t5xxl_fp16.safetensors",
    ],
    "flux-dev": [
        "diffusion_models/flux1-dev.safetensors",
        "text_encoders/clip_l.safetensors",
        "text_encoders/t5xxl_fp16.safetensors",
        "vae/ae.safetensors",
    ],
    "flux-schnell": [
        "diffusion_models/flux1-schnell.safetensors",
        "text_encoders/clip_l.safetensors",
        "text_encoders/t5xxl_fp16.safetensors",
        "vae/ae.safetensors",
    ],
}


@pytest.fixture(autouse=True)
def _direct_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeComfyUI]:
    with FakeComfyUI(step_delay=0.0005) as server:
        yield server


def example(name: str) -> Json:
    return load_workflow(WORKFLOWS / f"{name}.json")


def test_the_examples_are_there() -> None:
    assert sorted(p.stem for p in WORKFLOWS.glob("*.json")) == sorted(EXAMPLES)
    readme = (WORKFLOWS / "README.md").read_text()
    for name in EXAMPLES:
        assert f"`{name}.json`" in readme
        for key in REQUIRED_MODELS[name]:
            assert f"`{key}`" in readme, (name, key)


# --------------------------------------------------------------------------------------------
# The examples against ComfyUI's interfaces


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_is_valid_api_format_with_comfyui_classes_and_inputs(name: str) -> None:
    workflow = example(name)
    assert validate(workflow) == []
    for node_id, node in workflow.items():
        spec = EXPECTED.get(node["class_type"])
        assert spec is not None, f"{name} node {node_id}: {node['class_type']} is not in the table"
        given = set(node["inputs"])
        assert set(spec.required) <= given, f"{name} node {node_id}: missing {set(spec.required) - given}"
        assert given <= set(spec.required) | set(spec.optional), f"{name} node {node_id}: unknown inputs"
        for input_name, value in node["inputs"].items():
            kind = {**spec.required, **spec.optional}[input_name]
            if isinstance(value, list):
                continue
            expected: dict[str, type | tuple[type, ...]] = {
                "INT": int,
                "FLOAT": (int, float),
                "STRING": str,
                "COMBO": str,
            }
            assert kind in expected, f"{name} node {node_id} {input_name}: a {kind} must be linked"
            assert isinstance(value, expected[kind]), f"{name} node {node_id} {input_name}: {value!r} is not {kind}"


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_links_point_at_compatible_outputs(name: str) -> None:
    workflow = example(name)
    for node_id, input_name, source, index in links(workflow):
        source_spec = EXPECTED[workflow[source]["class_type"]]
        assert index < len(source_spec.outputs), f"{name}: {node_id}.{input_name} -> {source}[{index}]"
        expected = EXPECTED[workflow[node_id]["class_type"]].required[input_name]
        assert source_spec.outputs[index] == expected, f"{name}: {node_id}.{input_name} gets a {expected}"


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_has_an_output_and_a_seed(name: str) -> None:
    workflow = example(name)
    assert [n for n in workflow.values() if EXPECTED[n["class_type"]].output_node] != []
    assert len(seed_inputs(workflow)) == 1


@pytest.mark.parametrize("name", EXAMPLES)
def test_required_models_of_the_examples(name: str) -> None:
    assert [ref.key for ref in required_models(example(name))] == REQUIRED_MODELS[name]
    assert all(ref.in_bucket_layout for ref in required_models(example(name)))


def test_the_fake_server_agrees_with_the_table(fake: FakeComfyUI) -> None:
    info = requests.get(f"{fake.url}/object_info", timeout=5).json()

    def kind(spec: list[Any]) -> str:
        return "COMBO" if isinstance(spec[0], list) else str(spec[0])

    for class_type, spec in EXPECTED.items():
        entry = info[class_type]
        assert {k: kind(v) for k, v in entry["input"]["required"].items()} == spec.required, class_type
        assert {k: kind(v) for k, v in entry["input"].get("optional", {}).items()} == spec.optional, class_type
        assert tuple(entry["output"]) == spec.outputs, class_type
        assert entry["output_node"] is spec.output_node, class_type


@pytest.mark.parametrize("name", EXAMPLES)
def test_invoke_runs_each_example_on_the_fake(
    name: str, fake: FakeComfyUI, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(invoke, "CLIENT_OPTIONS", {"poll_interval": 0.02, "retry": RetryPolicy(backoff=0.01)})
    args = ["invoke", str(WORKFLOWS / f"{name}.json"), "--url", fake.url, "--out", str(tmp_path), "--format", "json"]
    assert cli.main(args) == 0, capsys.readouterr().err
    document = json.loads(capsys.readouterr().out)
    (output,) = document["outputs"]
    assert output["subfolder"] == name and Path(output["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# The model layout


def test_bucket_folders_are_the_model_paths_comfyui_reads() -> None:
    config = yaml.safe_load((REPO / "docker" / "extra_model_paths.yaml").read_text())
    (section,) = config.values()
    assert set(BUCKET_FOLDERS) == set(section) - {"base_path", "is_default"}


def test_model_loaders_read_folders_comfyui_has() -> None:
    for class_type, inputs in MODEL_LOADERS.items():
        assert set(inputs.values()) <= COMFYUI_FOLDERS, class_type
    for class_type in ("CheckpointLoaderSimple", "UNETLoader", "DualCLIPLoader", "TripleCLIPLoader", "VAELoader"):
        model_inputs = set(MODEL_LOADERS[class_type])
        assert model_inputs <= set(EXPECTED[class_type].required), class_type


def test_required_models_aliases_builtins_and_duplicates() -> None:
    workflow = {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": "flux\\flux1-dev.safetensors", "weight_dtype": "default"},
        },
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "t5xxl_fp16.safetensors", "type": "sd3"}},
        "3": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl_fp16.safetensors",
                                                         "clip_name2": ["9", 0], "type": "flux"}},
        "4": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
        "5": {"class_type": "VAELoader", "inputs": {"vae_name": "taef1"}},
        "6": {"class_type": "LoraLoader", "inputs": {"lora_name": "style.safetensors"}},
        "7": {"class_type": "StyleModelLoader", "inputs": {"style_model_name": "redux.safetensors"}},
        "8": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x.pth"}},
        "9": {"class_type": "SomeCustomNode", "inputs": {"ckpt_name": "ignored.safetensors"}},
        "10": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "canny.safetensors"}},
    }  # fmt: skip
    refs = {ref.key: ref for ref in required_models(workflow)}
    assert list(refs) == [
        "controlnet/canny.safetensors",
        "diffusion_models/flux/flux1-dev.safetensors",
        "loras/style.safetensors",
        "style_models/redux.safetensors",
        "text_encoders/t5xxl_fp16.safetensors",
        "upscale_models/4x.pth",
    ]
    unet = refs["diffusion_models/flux/flux1-dev.safetensors"]
    assert unet.candidate_keys == ("diffusion_models/flux/flux1-dev.safetensors", "unet/flux/flux1-dev.safetensors")
    t5 = refs["text_encoders/t5xxl_fp16.safetensors"]
    assert t5.nodes == ("2", "3") and t5.candidate_keys[1] == "clip/t5xxl_fp16.safetensors"
    assert refs["style_models/redux.safetensors"].in_bucket_layout is False


# --------------------------------------------------------------------------------------------
# Loading, validating and editing


def write(tmp_path: Path, data: Any, name: str = "wf.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_ui_format_is_refused_with_how_to_export(tmp_path: Path) -> None:
    ui = {"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}], "links": [[1, 4, 0, 3, 0, "MODEL"]]}
    with pytest.raises(WorkflowError) as raised:
        load_workflow(write(tmp_path, ui))
    (line,) = raised.value.lines
    assert "UI format" in line and "Export (API)" in line


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("{", "not JSON (line 1"),
        ([], "expected a JSON object of nodes"),
        ({}, "expected a JSON object of nodes"),
        ({"1": "x"}, "node 1: expected an object"),
        ({"1": {"inputs": {}}}, "node 1: no class_type"),
        ({"1": {"class_type": "A"}}, "node 1: no inputs object"),
        ({"1": {"class_type": "A", "inputs": {"x": [1, 0]}}}, "node ids are strings"),
        ({"1": {"class_type": "A", "inputs": {"x": ["2", 0]}}}, "link to node 2, which is not in the workflow"),
        ({"1": {"class_type": "A", "inputs": {"x": ["1", -1]}}}, "a link must be [node id, output index]"),
        ({"1": {"class_type": "A", "inputs": {"x": ["1"]}}}, "a link must be [node id, output index]"),
    ],
)
def test_invalid_workflows_say_what_is_wrong(tmp_path: Path, data: Any, problem: str) -> None:
    with pytest.raises(WorkflowError) as raised:
        load_workflow(write(tmp_path, data))
    assert problem in raised.value.lines[0] and str(tmp_path) in raised.value.lines[0]


def test_missing_file_and_prompt_body_wrapper(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError, match="no such file"):
        load_workflow(tmp_path / "nope.json")
    body = {"prompt": example("sdxl"), "client_id": "x"}
    assert load_workflow(write(tmp_path, body)) == example("sdxl")


def test_seeds_inputs_and_edits_copy() -> None:
    workflow = example("flux-dev")
    seeded = apply_seed(workflow, 7)
    assert seeded["25"]["inputs"]["noise_seed"] == 7 and workflow["25"]["inputs"]["noise_seed"] != 7
    with pytest.raises(ValueError, match="outside"):
        apply_seed(workflow, 2**64)
    edited = set_input(workflow, "6", "text", "a fox")
    assert edited["6"]["inputs"]["text"] == "a fox" and workflow["6"]["inputs"]["text"] != "a fox"
    images = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "shots/cat.png [input]"}},
        "2": {"class_type": "LoadImageMask", "inputs": {"image": "mask.png", "channel": "alpha"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": ["9", 0]}},
    }
    assert [(i.node_id, i.filename) for i in find_input_images(images)] == [("1", "shots/cat.png"), ("2", "mask.png")]
