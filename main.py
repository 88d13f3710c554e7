"""Synthesize every stack of ComfyUI on EKS. Wiring only: load config, build stacks, synth.

    python main.py [--config FILE]        (or COMFYUI_EKS_CONFIG=FILE)

Exit codes: 0 synthesized, 2 invalid configuration (nothing written).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    from core.config import CONFIG_ENV_VAR, ConfigError, load_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"YAML configuration (default: ${CONFIG_ENV_VAR} or config/default.yaml)")
    # The cdktf CLI tells the app where to write through CDKTF_OUTDIR.
    default_outdir = os.environ.get("CDKTF_OUTDIR", "cdktf.out")
    parser.add_argument("--outdir", default=default_outdir, help=f"output directory (default: {default_outdir})")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config or os.environ.get(CONFIG_ENV_VAR))
    except ConfigError as exc:
        for line in exc.errors:
            print(f"config error: {line}", file=sys.stderr)
        return 2

    from stacks.app import check_renderable, summarize, synth_atomically, warnings_for

    try:
        check_renderable(config)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"config error: {line}", file=sys.stderr)
        return 2
    for warning in warnings_for(config):
        print(f"WARNING: {warning}", file=sys.stderr)
    outdir = Path(args.outdir)
    synth_atomically(config, outdir=outdir)
    print(summarize(outdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
