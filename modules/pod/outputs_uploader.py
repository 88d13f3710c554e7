"""Native sidecar of the ComfyUI pod: copy finished outputs to the S3 mount, never overwriting.

Mountpoint for S3 supports only sequential writes of new files, so ComfyUI writes to local
scratch (seek and rename work there: video encoders need them) and this copies each file,
once it has been quiet for --quiet seconds, to DST/PREFIX/<same relative path>. PREFIX is the
pod name, so pods and restarts never collide. ComfyUI numbers its files from what is in its
local folder, so local copies are kept for --retain seconds (its /view keeps working) and a
name that already exists in S3 gets a -N suffix instead of replacing the earlier object. On
SIGTERM (sent after ComfyUI has exited: a native sidecar stops last) it copies everything
that is left, quiet or not.

    python outputs_uploader.py SRC DST --prefix POD_NAME [--quiet 30] [--retain 21600] [--interval 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import BinaryIO

CHUNK = 8 << 20


class Uploader:
    def __init__(self, *, src: str, dst: str, prefix: str, quiet: float, retain: float) -> None:
        self.src, self.dst, self.prefix = src, dst, prefix
        self.quiet, self.retain = quiet, retain
        self.done: dict[str, tuple[int, int]] = {}  # local path -> (mtime_ns, size) when copied
        self.stopping = False

    def stop(self, *_: object) -> None:
        self.stopping = True

    @staticmethod
    def create_new(path: str) -> tuple[str, BinaryIO]:
        """Open a file that does not exist yet (exclusive create): name, name-1, name-2, ..."""
        base, ext = os.path.splitext(path)
        n = 0
        while True:
            candidate = path if n == 0 else f"{base}-{n}{ext}"
            try:
                return candidate, open(candidate, "xb")
            except FileExistsError:
                n += 1

    def copy(self, src: str) -> str:
        dst = os.path.join(self.dst, self.prefix, os.path.relpath(src, self.src))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(src, "rb") as reader:
            written, writer = self.create_new(dst)
            with writer:
                while chunk := reader.read(CHUNK):
                    writer.write(chunk)
        return written

    def sweep(self, quiet: float) -> None:
        now = time.time()
        for root, _, files in os.walk(self.src):
            for name in files:
                src = os.path.join(root, name)
                try:
                    st = os.stat(src)
                    stamp = (st.st_mtime_ns, st.st_size)
                    if self.done.get(src) == stamp:
                        if now - st.st_mtime > self.retain:
                            os.remove(src)
                            del self.done[src]
                        continue
                    if now - st.st_mtime < quiet:
                        continue
                    written = self.copy(src)
                    self.done[src] = stamp
                    print("uploaded", repr(os.path.relpath(written, self.dst)), flush=True)
                except OSError as exc:
                    print("retrying later:", repr(src), exc, file=sys.stderr, flush=True)

    def run(self, interval: float) -> None:
        while not self.stopping:
            self.sweep(self.quiet)
            time.sleep(interval)
        self.sweep(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="local outputs folder ComfyUI writes to")
    parser.add_argument("dst", help="the outputs bucket's Mountpoint S3 mount")
    parser.add_argument("--prefix", required=True, help="folder under DST for this pod (its name)")
    parser.add_argument(
        "--quiet", type=float, default=30.0, help="seconds a file must be unchanged before it is copied"
    )
    parser.add_argument("--retain", type=float, default=6 * 3600.0, help="seconds local copies are kept after upload")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between sweeps")
    args = parser.parse_args(argv)
    uploader = Uploader(src=args.src, dst=args.dst, prefix=args.prefix, quiet=args.quiet, retain=args.retain)
    signal.signal(signal.SIGTERM, uploader.stop)
    uploader.run(args.interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
