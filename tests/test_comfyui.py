"""ComfyUI workload and edge: Kubernetes objects (strictly valid), probes, shutdown,
exposure and authentication per configuration, CloudFront, and the uploader/preStop code."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from core import names
from core.config import parse_config
from modules import comfyui
from modules.load_balancer import LBC_NAMESPACE, LBC_SERVICE_ACCOUNT
from stacks.ingress import api_ingress_settings, ingress_settings
from tests.helpers import REPO, default_config_data, tool
from tests.k8s import k8s_version, resolve_tokens, terraform_literal, validate_strict

POD_PROGRAMS = REPO / "modules" / "pod"


def _manifests(synth) -> dict[str, dict]:
    """The Kubernetes objects as the cluster receives them (Terraform's escapes undone)."""
    out = {}
    for res in synth.resources("workload", "kubernetes_manifest").values():
        m = terraform_literal(res["manifest"])
        out[f"{m['kind']}/{m['metadata']['name']}"] = m
    return out


def _deployment(synth) -> dict:
    return _manifests(synth)["Deployment/comfyui"]


def _ingress(synth) -> dict:
    return _manifests(synth)["Ingress/comfyui"]


def test_every_kubernetes_object_is_strictly_valid(synth_variants):
    for variant, synth in synth_variants.items():
        manifests = _manifests(synth)
        assert {
            "Namespace/comfyui",
            "Deployment/comfyui",
            "Service/comfyui",
            "Ingress/comfyui",
            "PodDisruptionBudget/comfyui",
            "NetworkPolicy/comfyui",
            "ServiceAccount/comfyui",
            "ConfigMap/comfyui-programs",
            "PersistentVolumeClaim/inputs",
            "PersistentVolumeClaim/outputs",
        } <= set(manifests)
        for key, manifest in manifests.items():
            try:
                validate_strict(resolve_tokens(manifest), k8s_version(synth.config))
            # kubernetes_validate.ValidationError carries the path; any other refusal fails too
            except Exception as exc:  # noqa: BLE001 - reported with the manifest's key
                pytest.fail(f"{variant}: {key} is invalid: {exc}")


def test_invalid_deployment_is_caught(synth):
    import kubernetes_validate

    bad = resolve_tokens(_deployment(synth))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbee"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_strict(bad, k8s_version(synth.config))


def test_gpu_scheduling_and_model_cache(synth):
    spec = _deployment(synth)["spec"]["template"]["spec"]
    main = spec["containers"][0]
    assert main["resources"]["limits"][names.GPU_RESOURCE] == "1"
    assert {"key": names.GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"] == {names.NODE_ROLE_TAG_KEY: names.NODE_ROLE_GPU}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"]["hostPath"]["path"] == names.MODELS_PATH
    models_mount = next(m for m in main["volumeMounts"] if m["name"] == "models")
    assert models_mount["readOnly"] is True
    assert volumes["inputs"]["persistentVolumeClaim"]["claimName"] == "inputs"
    assert volumes["s3-outputs"]["persistentVolumeClaim"]["claimName"] == "outputs"
    # the init container waits for exactly the marker the node's sync writes
    wait = spec["initContainers"][0]
    assert wait["name"] == "wait-for-model-cache"
    marker = next(e["value"] for e in wait["env"] if e["name"] == "MARKER")
    cache_mount = next(m for m in wait["volumeMounts"] if m["name"] == "node-cache")
    assert volumes["node-cache"]["hostPath"]["path"] == names.NODE_CACHE_ROOT
    assert marker == names.CACHE_MARKER_PATH.replace(names.NODE_CACHE_ROOT, cache_mount["mountPath"], 1)
    assert cache_mount["readOnly"] is True


def test_pod_security(synth):
    spec = _deployment(synth)["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == names.COMFYUI_UID
    assert spec["automountServiceAccountToken"] is False
    for c in spec["containers"] + spec["initContainers"]:
        sc = c["securityContext"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, c["name"]


def test_probes_and_graceful_shutdown(synth):
    template = _deployment(synth)["spec"]["template"]
    spec = template["spec"]
    main = spec["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["httpGet"] == {"path": comfyui.HEALTH_PATH, "port": "http"}
    startup_budget = main["startupProbe"]["periodSeconds"] * main["startupProbe"]["failureThreshold"]
    assert startup_budget >= 600, "model loading needs a startup budget of at least 10 minutes"
    assert spec["terminationGracePeriodSeconds"] == comfyui.TERMINATION_GRACE_SECONDS
    assert "preStop" in main["lifecycle"]
    # Idle pods carry no do-not-disrupt: the job runner sets it only while work runs.
    assert "karpenter.sh/do-not-disrupt" not in template["metadata"].get("annotations", {})
    uploader = next(c for c in spec["initContainers"] if c["name"] == "outputs-uploader")
    assert uploader["restartPolicy"] == "Always", "native sidecar: outlives ComfyUI and flushes outputs"


def test_ingress_alb_settings(synth_variants):
    for synth in synth_variants.values():
        a = _ingress(synth)["metadata"]["annotations"]
        assert a["alb.ingress.kubernetes.io/load-balancer-attributes"] == "idle_timeout.timeout_seconds=3600"
        assert "stickiness.enabled=true" in a["alb.ingress.kubernetes.io/target-group-attributes"]
        assert a["alb.ingress.kubernetes.io/healthcheck-path"] == comfyui.HEALTH_PATH
        assert a["alb.ingress.kubernetes.io/tags"] == f"{names.ALB_TAG_KEY}={synth.config.alb_tag_value}"


def test_default_is_internal_only(synth):
    a = _ingress(synth)["metadata"]["annotations"]
    assert synth.config.auth.mode == "internal"
    assert a["alb.ingress.kubernetes.io/scheme"] == "internal"
    assert a["alb.ingress.kubernetes.io/inbound-cidrs"] == synth.config.network.vpc_cidr
    assert "alb.ingress.kubernetes.io/auth-type" not in a
    assert "comfyui-edge" not in synth.stacks


def test_cloudfront_with_cognito(synth_variants):
    synth = synth_variants["edge-cognito"]
    a = _ingress(synth)["metadata"]["annotations"]
    # CloudFront reaches an internal ALB through a VPC origin; Cognito still guards it.
    assert a["alb.ingress.kubernetes.io/scheme"] == "internal"
    assert a["alb.ingress.kubernetes.io/auth-type"] == "cognito"
    cognito = json.loads(a["alb.ingress.kubernetes.io/auth-idp-cognito"])
    assert set(cognito) == {"userPoolARN", "userPoolClientID", "userPoolDomain"}
    assert all(v.startswith("${data.terraform_remote_state.") for v in cognito.values())
    assert a["alb.ingress.kubernetes.io/certificate-arn"] == synth.config.auth.certificate_arn
    assert a["alb.ingress.kubernetes.io/ssl-redirect"] == "443"
    pool = next(iter(synth.resources("platform", "aws_cognito_user_pool").values()))
    assert pool["admin_create_user_config"]["allow_admin_create_user_only"] is True
    client = next(iter(synth.resources("platform", "aws_cognito_user_pool_client").values()))
    assert client["callback_urls"] == [f"https://{synth.config.auth.domain}/oauth2/idpresponse"]


def test_unauthenticated_public_needs_acknowledgement_and_warns(synth_variants, tmp_path, monkeypatch, capsys):
    """main.py refuses the configuration without the acknowledgement before anything is
    written, and with it warns, then synthesizes: the same configuration the session
    synthesized (`synth_variants`), so main's synthesis call is recorded here, not repeated."""
    import main
    from stacks import app

    synth = synth_variants["public-unauthenticated"]
    a = _ingress(synth)["metadata"]["annotations"]
    assert a["alb.ingress.kubernetes.io/scheme"] == "internet-facing"
    assert "alb.ingress.kubernetes.io/auth-type" not in a
    synthesized = []
    monkeypatch.setattr(app, "synth_atomically", lambda config, *, outdir: synthesized.append((config, outdir)))
    monkeypatch.setattr(app, "summarize", lambda outdir: f"summary of {outdir}")
    data = synth.config.model_dump(mode="json")
    data["auth"]["acknowledge_public_unauthenticated"] = False
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    assert main.main(["--config", str(path), "--outdir", str(out)]) == 2
    refused = capsys.readouterr()
    assert "acknowledge_public_unauthenticated" in refused.err and not synthesized and not out.exists()
    data["auth"]["acknowledge_public_unauthenticated"] = True
    path.write_text(yaml.safe_dump(data))
    assert main.main(["--config", str(path), "--outdir", str(out)]) == 0
    accepted = capsys.readouterr()
    assert "WARNING" in accepted.err and "WITHOUT authentication" in accepted.err
    assert synthesized == [(synth.config, out)] and accepted.out == f"summary of {out}\n"


@pytest.mark.parametrize(
    ("auth", "edge", "scheme"),
    [
        ({"mode": "internal"}, {}, "internal"),
        (
            {
                "mode": "cognito",
                "domain": "a.example.com",
                "certificate_arn": "arn:aws:acm:us-west-2:111122223333:certificate/abc-1",
            },
            {},
            "internet-facing",
        ),
        ({"mode": "none", "acknowledge_public_unauthenticated": True}, {}, "internet-facing"),
    ],
)
def test_exposure_matrix(auth, edge, scheme):
    base = default_config_data()
    base["auth"] = auth
    config = parse_config(base)
    settings = ingress_settings(config, cognito={"userPoolARN": "x", "userPoolClientID": "y", "userPoolDomain": "z"})
    assert settings.scheme == scheme
    ing = comfyui.ingress(settings)
    net = comfyui.network_policy(settings)
    cidrs = [b["ipBlock"]["cidr"] for b in net["spec"]["ingress"][0]["from"]]
    from modules.network import subnet_plan

    plan = subnet_plan(config.network.vpc_cidr, config.network.az_count)
    assert cidrs == (plan.internal_alb if scheme == "internal" else plan.public)
    assert ("alb.ingress.kubernetes.io/auth-type" in ing["metadata"]["annotations"]) == (auth["mode"] == "cognito")


def test_network_policy_admits_only_alb_subnets_on_comfyui_port(synth):
    net = _manifests(synth)["NetworkPolicy/comfyui"]
    rule = net["spec"]["ingress"][0]
    assert rule["ports"] == [{"protocol": "TCP", "port": names.COMFYUI_PORT}]
    assert net["spec"]["policyTypes"] == ["Ingress"]


def test_load_balancer_controller(synth):
    release = next(
        r for r in synth.resources("workload", "helm_release").values() if r["name"] == "aws-load-balancer-controller"
    )
    values = yaml.safe_load(release["values"][0])
    assert values["region"] == synth.config.region and values["vpcId"].startswith("${data.terraform_remote_state.")
    # The project's tags on the ALBs, target groups and security groups the controller creates.
    assert values["defaultTags"] == synth.config.tags and synth.config.tags
    assoc = [
        a
        for a in synth.resources("platform", "aws_eks_pod_identity_association").values()
        if a["service_account"] == LBC_SERVICE_ACCOUNT
    ]
    assert assoc and assoc[0]["namespace"] == LBC_NAMESPACE


def test_ecr_repository(synth):
    repo = next(iter(synth.resources("platform", "aws_ecr_repository").values()))
    assert repo["image_scanning_configuration"]["scan_on_push"] is True
    assert repo["image_tag_mutability"] == synth.config.comfyui.ecr_image_tag_mutability
    assert repo["encryption_configuration"][0]["encryption_type"] == "KMS"
    policy = json.loads(next(iter(synth.resources("platform", "aws_ecr_lifecycle_policy").values()))["policy"])
    assert policy["rules"][-1]["selection"] == {
        "tagStatus": "any",
        "countType": "imageCountMoreThan",
        "countNumber": synth.config.comfyui.ecr_keep_images,
    }
    assert policy["rules"][0]["selection"]["tagPatternList"] == [synth.config.comfyui.image_tag]
    image = _deployment(synth)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert f":{synth.config.comfyui.image_tag}@" in image and image.startswith("${data.terraform_remote_state.")


def _ecr_expired(policy: dict, images: list[tuple[str, ...]]) -> set[int]:
    """Which images (index = push order, oldest first; each a tuple of tags) a lifecycle policy
    expires, per the ECR user guide's evaluation rules: every rule selects its images; an image
    selected by a higher-priority rule is never expired by a lower-priority one; with
    imageCountMoreThan, the images beyond the count, youngest first, are expired."""
    import fnmatch

    claimed: set[int] = set()
    expired: set[int] = set()
    for rule in sorted(policy["rules"], key=lambda r: r["rulePriority"]):
        sel = rule["selection"]
        if sel["tagStatus"] == "any":
            matching = list(range(len(images)))
        else:
            matching = [
                i
                for i, tags in enumerate(images)
                if tags and all(any(fnmatch.fnmatchcase(t, p) for t in tags) for p in sel["tagPatternList"])
            ]
        youngest_first = sorted(matching, reverse=True)
        expired |= {i for i in youngest_first[sel["countNumber"] :] if i not in claimed}
        claimed |= set(matching)
    return expired


def test_ecr_lifecycle_never_expires_the_deployed_image():
    from modules.ecr import lifecycle_policy

    images = [(f"v{i}",) for i in range(50)]  # v3 deployed, 46 newer images pushed since
    policy = json.loads(lifecycle_policy(keep_images=20, deployed_tag="v3"))
    expired = _ecr_expired(policy, images)
    assert 3 not in expired
    assert expired == set(range(30)) - {3}, "everything else beyond the last 20 still expires"
    # The evaluator is not trivially kind: a keep-last-N rule alone expires the deployed image.
    assert 3 in _ecr_expired({"rules": [policy["rules"][-1]]}, images)


def test_edge_distribution(synth_variants):
    synth = synth_variants["edge-cognito"]
    dist = next(iter(synth.resources("edge", "aws_cloudfront_distribution").values()))
    behavior = dist["default_cache_behavior"]
    assert sorted(behavior["allowed_methods"]) == sorted(["GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"])
    assert behavior["viewer_protocol_policy"] == "redirect-to-https"
    assert behavior["cache_policy_id"] == "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"  # CachingDisabled
    assert (
        behavior["origin_request_policy_id"] == "216adef6-5c7f-47e4-b989-5492eafa07d3"
    )  # AllViewer (websockets, Host)
    origin = dist["origin"][0]
    assert origin["vpc_origin_config"]["origin_read_timeout"] == synth.config.edge.origin_read_timeout_seconds
    assert dist["aliases"] == [synth.config.auth.domain]
    assert dist["viewer_certificate"]["minimum_protocol_version"] == "TLSv1.2_2021"
    lb = next(iter(synth.stack("edge")["data"]["aws_lb"].values()))
    assert lb["tags"] == {names.ALB_TAG_KEY: synth.config.alb_tag_value}
    vpc_origin = next(iter(synth.resources("edge", "aws_cloudfront_vpc_origin").values()))
    assert vpc_origin["vpc_origin_endpoint_config"][0]["arn"].startswith("${data.aws_lb.")
    waf = next(iter(synth.resources("edge", "aws_wafv2_web_acl").values()))
    rules = {r["Name"]: r for r in json.loads(waf["rule_json"])}
    assert {"AWSManagedRulesCommonRuleSet", "AWSManagedRulesKnownBadInputsRuleSet", "rate-limit-per-ip"} <= set(rules)
    assert (
        rules["rate-limit-per-ip"]["Statement"]["RateBasedStatement"]["Limit"]
        == synth.config.edge.rate_limit_per_5_min
        == 5000
    )
    # Body inspection that misfires on uploads and workflow JSON only counts; the rest blocks.
    overrides = rules["AWSManagedRulesCommonRuleSet"]["Statement"]["ManagedRuleGroupStatement"]["RuleActionOverrides"]
    assert {o["Name"] for o in overrides} == {
        "SizeRestrictions_BODY",
        "CrossSiteScripting_BODY",
        "GenericLFI_BODY",
        "GenericRFI_BODY",
    }
    assert all(o["ActionToUse"] == {"Count": {}} for o in overrides)
    assert all(r.get("OverrideAction", {"None": {}}) == {"None": {}} for r in rules.values()), (
        "no rule group counted wholesale"
    )
    assert waf["scope"] == "CLOUDFRONT" and waf["region"] == "us-east-1"
    assert dist["web_acl_id"].startswith("${aws_wafv2_web_acl.")
    logging = next(iter(synth.resources("edge", "aws_wafv2_web_acl_logging_configuration").values()))
    assert logging["log_destination_configs"][0].startswith("${aws_cloudwatch_log_group.")


# --- the programs the pod runs (modules/pod/) ---------------------------------------------


def test_programs_ship_verbatim_and_escaped_for_terraform(synth):
    """The ConfigMap carries each program byte for byte as the cluster receives it, and the
    synthesized JSON holds it Terraform-escaped (a raw `${VAR}` is an invalid reference)."""
    configmap = _manifests(synth)["ConfigMap/comfyui-programs"]
    assert set(configmap["data"]) == set(comfyui.POD_PROGRAMS)
    for name, text in configmap["data"].items():
        assert text == comfyui.POD_PROGRAM_FILES[name].read_text(), name
    raw = synth.resources("workload", "kubernetes_manifest")["comfyui_configmap"]["manifest"]["data"]
    assert "$${MARKER" in raw["wait-for-model-cache.sh"]
    assert "${MARKER" not in raw["wait-for-model-cache.sh"].replace("$${", "")


def test_every_container_runs_a_shipped_program(synth):
    spec = _deployment(synth)["spec"]["template"]["spec"]
    mounts = {
        c["name"]: {m["mountPath"] for m in c["volumeMounts"]} for c in spec["containers"] + spec["initContainers"]
    }
    commands = [c["command"] for c in spec["initContainers"]] + [
        spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    ]
    for command in commands:
        program = next(arg for arg in command if arg.startswith(comfyui.PROGRAMS_MOUNT))
        assert program.rsplit("/", 1)[1] in comfyui.POD_PROGRAMS
    assert all(comfyui.PROGRAMS_MOUNT in paths for paths in mounts.values()), mounts


@pytest.mark.parametrize("script", sorted(POD_PROGRAMS.glob("*.sh")), ids=lambda p: p.name)
def test_pod_shell_programs_are_shellcheck_clean(script):
    # POSIX sh: the init container runs /bin/sh of the ComfyUI image.
    result = subprocess.run(
        [tool("shellcheck"), "--shell=sh", "--severity=style", str(script)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def _start_uploader(tmp_path, *, quiet: str, retain: str):
    src, dst = tmp_path / "local", tmp_path / "s3"
    src.mkdir(exist_ok=True)
    dst.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(POD_PROGRAMS / "outputs_uploader.py"),
            str(src),
            str(dst),
            "--prefix=comfyui-abc-123",
            f"--quiet={quiet}",
            f"--retain={retain}",
            "--interval=0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, src, dst / "comfyui-abc-123"


def _wait_for(path, content=None, seconds=20):
    """Wait until `path` exists (and holds `content`): the uploader creates a file before
    it writes it, so existence alone does not mean the copy is complete."""

    def ready():
        return path.exists() and (content is None or path.read_bytes() == content)

    deadline = time.monotonic() + seconds
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    return ready()


def _place(path, data: bytes, *, age: float, staging_dir) -> None:
    """Make `path` appear at once with an mtime `age` seconds old: written in `staging_dir`
    (outside the watched tree, same filesystem) and renamed in, so the uploader never sees
    it fresh and then again old (two copies)."""
    staging = staging_dir / f".staging-{path.name}"
    staging.write_bytes(data)
    os.utime(staging, (time.time() - age, time.time() - age))
    os.rename(staging, path)


def test_uploader_copies_quiet_files_under_the_pod_prefix_and_flushes_on_sigterm(tmp_path):
    proc, src, dst = _start_uploader(tmp_path, quiet="60", retain="3600")
    try:
        (src / "video").mkdir()
        old = src / "video" / "clip $(x).mp4"
        _place(old, b"finished", age=120, staging_dir=tmp_path)
        fresh = src / "image.png"
        fresh.write_bytes(b"still being written")
        assert _wait_for(dst / "video" / "clip $(x).mp4", b"finished")
        assert old.exists(), "local copies stay for the retention window (ComfyUI /view, numbering)"
        assert not (dst / "image.png").exists(), "a file still being written must wait"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert (dst / "image.png").read_bytes() == b"still being written", "SIGTERM copies everything left"


def test_uploader_never_overwrites_an_earlier_output(tmp_path):
    """ComfyUI restarts its numbering (new pod, emptied folder): the same name must not
    replace the earlier object in S3."""
    (tmp_path / "s3" / "comfyui-abc-123").mkdir(parents=True)
    earlier = tmp_path / "s3" / "comfyui-abc-123" / "ComfyUI_00001_.png"
    earlier.write_bytes(b"yesterday")
    proc, src, dst = _start_uploader(tmp_path, quiet="0", retain="3600")
    try:
        _place(src / "ComfyUI_00001_.png", b"today", age=0, staging_dir=tmp_path)
        assert _wait_for(dst / "ComfyUI_00001_-1.png", b"today")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert earlier.read_bytes() == b"yesterday"
    assert (dst / "ComfyUI_00001_-1.png").read_bytes() == b"today"


def test_uploader_removes_local_copies_after_retention_only_once_uploaded(tmp_path):
    proc, src, dst = _start_uploader(tmp_path, quiet="0", retain="1")
    try:
        out = src / "a.png"
        _place(out, b"x", age=10, staging_dir=tmp_path)
        assert _wait_for(dst / "a.png", b"x")
        deadline = time.monotonic() + 20
        while out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not out.exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert (dst / "a.png").read_bytes() == b"x"
    assert not (dst / "a-1.png").exists(), "an uploaded file is copied once"


class _Queue(http.server.BaseHTTPRequestHandler):
    states: list = []

    def do_GET(self):
        body = json.dumps(self.states.pop(0) if len(self.states) > 1 else self.states[0]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _prestop(port: int, budget: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(POD_PROGRAMS / "prestop_drain.py"),
            f"--port={port}",
            f"--budget={budget}",
            "--interval=0.05",
        ],
        check=True,
        timeout=30,
        capture_output=True,
        text=True,
    )


def test_prestop_waits_for_running_generation():
    busy = {"queue_running": [["1", "prompt"]], "queue_pending": []}
    idle = {"queue_running": [], "queue_pending": []}
    _Queue.states = [busy, busy, idle]
    server = http.server.HTTPServer(("127.0.0.1", 0), _Queue)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        start = time.monotonic()
        _prestop(server.server_port, 60)
        assert _Queue.states == [idle], "preStop returned before the queue drained"
        assert time.monotonic() - start < 10
        # Still busy when the budget runs out: it gives up (SIGTERM follows) and says so.
        _Queue.states = [busy]
        assert "still busy" in _prestop(server.server_port, 0.3).stdout
    finally:
        server.shutdown()


def test_prestop_returns_at_once_when_comfyui_is_gone():
    with socket_free_port() as port:
        start = time.monotonic()
        _prestop(port, 60)
        assert time.monotonic() - start < 10


class socket_free_port:
    """A loopback port nothing listens on (bound, then closed, while the test runs)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        return None


@pytest.mark.parametrize("marker_present", [True, False])
def test_wait_for_model_cache_init_container(synth, tmp_path, marker_present):
    """Run the init container's own command and environment (the program from the repo): it
    returns once the marker exists, and gives up with a message naming the sync service when
    the deadline passes."""
    wait = _deployment(synth)["spec"]["template"]["spec"]["initContainers"][0]
    command = [
        str(POD_PROGRAMS / a.rsplit("/", 1)[1]) if a.startswith(comfyui.PROGRAMS_MOUNT) else a for a in wait["command"]
    ]
    env = {e["name"]: e["value"] for e in wait["env"]}
    assert int(env["TIMEOUT_SECONDS"]) > synth.config.gpu.model_cache_deadline_seconds, "the node gives up first"
    marker = tmp_path / "marker"
    if marker_present:
        marker.write_text("done")
    env.update(PATH="/usr/bin:/bin", MARKER=str(marker), TIMEOUT_SECONDS="1", INTERVAL_SECONDS="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    if marker_present:
        assert result.returncode == 0
    else:
        assert result.returncode == 1
        assert names.SYNC_SERVICE_NAME in result.stderr


def test_wait_for_model_cache_refuses_bad_timings(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "MARKER": str(tmp_path / "m"), "TIMEOUT_SECONDS": "1h"}
    result = subprocess.run(
        ["/bin/sh", str(POD_PROGRAMS / "wait-for-model-cache.sh")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2 and "whole seconds" in result.stderr


def test_internal_alb_admits_configured_vpn_and_peering_ranges():
    base = default_config_data()
    config = parse_config(base)
    assert ingress_settings(config, cognito=None).inbound_cidrs == [config.network.vpc_cidr]
    # Added to the VPC, never instead of it (in-VPC clients, CloudFront VPC origins); no repeats.
    base["network"]["internal_alb_cidrs"] = ["10.99.0.0/16", config.network.vpc_cidr, "192.168.8.0/24"]
    settings = ingress_settings(parse_config(base), cognito=None)
    annotations = comfyui.ingress(settings)["metadata"]["annotations"]
    assert (
        annotations["alb.ingress.kubernetes.io/inbound-cidrs"]
        == f"{config.network.vpc_cidr},10.99.0.0/16,192.168.8.0/24"
    )


def test_ingress_apply_waits_for_its_alb(synth_variants):
    """An Ingress is applied when the controller has published its ALB's DNS name, so the edge
    stack's lookup of the ALB never runs ahead of it."""
    from stacks.workload import INGRESS_READY_FIELD

    for variant, synth in synth_variants.items():
        resources = synth.resources("workload", "kubernetes_manifest").values()
        ingresses = [r for r in resources if r["manifest"]["kind"] == "Ingress"]
        assert ingresses, variant
        for r in ingresses:
            assert INGRESS_READY_FIELD == "status.loadBalancer.ingress[0].hostname"
            assert r["wait"] == {"fields": {INGRESS_READY_FIELD: ".+"}}, variant
            assert r["timeouts"]["create"] == r["timeouts"]["update"] == "15m"
        assert all("wait" not in r for r in resources if r["manifest"]["kind"] != "Ingress")


def test_internal_api_endpoint_beside_cognito(synth_variants):
    """auth.internal_api_endpoint: a second, internal ALB without the login for machine
    callers; the Cognito ALB and the edge stack's lookup of it are unchanged."""
    synth = synth_variants["edge-cognito"]
    assert synth.config.auth.internal_api_endpoint
    manifests = _manifests(synth)
    api = manifests["Ingress/comfyui-api"]["metadata"]["annotations"]
    assert api["alb.ingress.kubernetes.io/scheme"] == "internal"
    assert not any(k.startswith("alb.ingress.kubernetes.io/auth-") for k in api), "no login on the API endpoint"
    assert api["alb.ingress.kubernetes.io/inbound-cidrs"] == synth.config.network.vpc_cidr
    assert api["alb.ingress.kubernetes.io/load-balancer-attributes"] == "idle_timeout.timeout_seconds=3600"
    # Only the main ALB carries the tag value the edge stack looks up.
    tags = {
        k: m["metadata"]["annotations"]["alb.ingress.kubernetes.io/tags"]
        for k, m in manifests.items()
        if k.startswith("Ingress/")
    }
    assert tags == {
        "Ingress/comfyui": f"{names.ALB_TAG_KEY}={synth.config.alb_tag_value}",
        "Ingress/comfyui-api": f"{names.ALB_TAG_KEY}={synth.config.api_alb_tag_value}",
    }
    edge_lb = next(iter(synth.stack("edge")["data"]["aws_lb"].values()))
    assert edge_lb["tags"] == {names.ALB_TAG_KEY: synth.config.alb_tag_value}
    backends = {
        k: m["spec"]["rules"][0]["http"]["paths"][0]["backend"]
        for k, m in manifests.items()
        if k.startswith("Ingress/")
    }
    assert backends["Ingress/comfyui-api"] == backends["Ingress/comfyui"]
    # Off by default: one Ingress only.
    assert [k for k in _manifests(synth_variants["default"]) if k.startswith("Ingress/")] == ["Ingress/comfyui"]


def test_network_policy_admits_the_subnets_of_both_albs():
    """An internet-facing Cognito ALB lives in the public subnets, the API ALB in the internal
    ALB subnets: the NetworkPolicy admits both, and nothing else."""
    base = default_config_data()
    base["auth"] = {
        "mode": "cognito",
        "domain": "a.example.com",
        "internal_api_endpoint": True,
        "certificate_arn": "arn:aws:acm:us-west-2:111122223333:certificate/abc-1",
    }
    config = parse_config(base)
    main = ingress_settings(config, cognito={"userPoolARN": "x", "userPoolClientID": "y", "userPoolDomain": "z"})
    api = api_ingress_settings(config)
    assert main.scheme == "internet-facing" and api is not None and api.scheme == "internal"
    from modules.network import subnet_plan

    plan = subnet_plan(config.network.vpc_cidr, config.network.az_count)
    objects = comfyui.comfyui_manifests(
        image="repo:tag",
        model_cache_wait_seconds=60,
        runner=comfyui.JobRunnerSettings(
            table="t", queue_url="q", inputs_bucket="i", outputs_bucket="o", region="us-west-2", timeout_seconds=60
        ),
        settings=main,
        api_settings=api,
    ).values()
    net = next(o for o in objects if o["kind"] == "NetworkPolicy")
    assert [b["ipBlock"]["cidr"] for b in net["spec"]["ingress"][0]["from"]] == plan.public + plan.internal_alb
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "Ingress"] == ["comfyui", "comfyui-api"]
    assert (
        api_ingress_settings(parse_config({**base, "auth": {**base["auth"], "internal_api_endpoint": False}})) is None
    )
