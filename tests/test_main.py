"""main.py / synthesis mechanics: atomic output, summary, the cdktf CLI's CDKTF_OUTDIR."""

from __future__ import annotations

import json

import pytest

import stacks.app as app_module
from core.config import load_config


def test_failed_synthesis_keeps_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "cdktf.out"
    out.mkdir()
    (out / "manifest.json").write_text('{"previous": true}')

    def broken(config, *, outdir):
        (outdir / "stacks").mkdir(parents=True)
        (outdir / "stacks" / "half-written.json").write_text("{")
        raise RuntimeError("synthesis failed half-way")

    monkeypatch.setattr(app_module, "build_app", broken)
    with pytest.raises(RuntimeError):
        app_module.synth_atomically(load_config(), outdir=out)
    assert json.loads((out / "manifest.json").read_text()) == {"previous": True}
    assert not (out / "stacks").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cdktf.out"], "the half-written directory is removed"


def test_summary_lists_stacks_in_deployment_order(synth):
    text = app_module.summarize(synth.outdir)
    lines = text.splitlines()[1:-1]
    names = [line.split()[0] for line in lines]
    project = synth.config.project
    assert names == [f"{project}-state", f"{project}-platform", f"{project}-workload"]
    for line in lines:
        count = int(line.split()[1])
        assert count > 0
        assert line.split()[2].endswith("cdk.tf.json")


def test_count_resources_counts_resources_and_modules():
    assert app_module.count_resources({"resource": {"a": {"x": {}, "y": {}}, "b": {"z": {}}}, "module": {"m": {}}}) == 4


def test_main_honours_cdktf_outdir(tmp_path, monkeypatch):
    import main

    calls = {}

    def fake_synth(config, *, outdir):
        calls["outdir"] = outdir
        outdir.mkdir(parents=True)
        (outdir / "manifest.json").write_text(json.dumps({"stacks": {}}))

    monkeypatch.setenv("CDKTF_OUTDIR", str(tmp_path / "from-cli"))
    monkeypatch.setattr(app_module, "synth_atomically", fake_synth)
    assert main.main([]) == 0
    assert calls["outdir"] == tmp_path / "from-cli"
