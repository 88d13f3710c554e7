"""A simulated GPU host for testing modules/scripts/gpu-node-setup.sh without root.

Every stub command (lsblk, blkid, mdadm, mkfs.xfs, mount, mountpoint, systemctl, udevadm)
is a tiny wrapper on PATH that runs this file with the command's name first. The host's
block devices and mounts live in a JSON state file ($FAKEHOST_STATE) that the commands
read and change like the real ones would (mdadm --create makes an array, mkfs.xfs puts a
filesystem on a device, ...), so a second run of the script sees what the first one did,
as after a reboot. Every call is appended to $FAKEHOST_LOG as one JSON line
{"cmd": ..., "args": [...]}, for the tests to assert on.

State file layout:
    {"devices": {"/dev/nvme0n1": {"type": "disk", "model": "...", "fstype": "xfs",
                                  "label": "", "uuid": "..."},
                 "/dev/md0": {"type": "raid0", "members": [...], "active": true, ...}},
     "mounts": {"/": "/dev/nvme0n1p1"},
     "fail": {"mkfs.xfs": "error text"}}      # make a command fail with that message
"""

from __future__ import annotations

# A stub runs once per command the script calls (~150 times per test run), under `python -I -S`:
# it imports only what it needs (json), not pathlib or hashlib (~10 ms more per call).
import json
import os
import sys


def _load() -> dict:
    with open(os.environ["FAKEHOST_STATE"], encoding="utf-8") as fh:
        return json.load(fh)


def _save(state: dict) -> None:
    path = os.environ["FAKEHOST_STATE"]
    tmp = os.path.splitext(path)[0] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _log(cmd: str, args: list[str]) -> None:
    with open(os.environ["FAKEHOST_LOG"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"cmd": cmd, "args": args}) + "\n")


def _fail(message: str, code: int = 1) -> int:
    print(message, file=sys.stderr)
    return code


def _visible(state: dict) -> dict[str, dict]:
    """Block devices the kernel shows: disks, and arrays only while they are assembled."""
    return {
        name: dev for name, dev in state["devices"].items() if not dev["type"].startswith("raid") or dev.get("active")
    }


def _options(args: list[str], with_value: set[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Split argv into options (long or short, `--x=v`, `--x v`) and positional arguments."""
    opts: dict[str, list[str]] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            positional.extend(args[i + 1 :])
            break
        if arg.startswith("-") and len(arg) > 1:
            name, eq, value = arg.partition("=")
            if not eq and name in with_value:
                i += 1
                value = args[i]
            opts.setdefault(name, []).append(value)
        else:
            positional.append(arg)
        i += 1
    return opts, positional


def lsblk(state: dict, args: list[str]) -> int:
    opts, devices = _options(args, {"-o", "--output"})
    columns = (opts.get("--output") or opts.get("-o") or ["NAME,TYPE,MODEL"])[-1].split(",")
    raw = "--raw" in opts or "-r" in opts
    visible = _visible(state)
    if devices:
        rows = []
        for device in devices:
            if device not in visible:
                return _fail(f"lsblk: {device}: not a block device", 32)
            rows.append(device)
            # Children: arrays assembled on top of the device.
            rows.extend(name for name, dev in visible.items() if device in dev.get("members", []))
        if "--nodeps" in opts or "-d" in opts:
            rows = devices
    else:
        rows = sorted(visible)
    mounted = {dev: target for target, dev in state["mounts"].items()}
    table = []
    for name in rows:
        dev = visible[name]
        values = {
            "NAME": name,
            "TYPE": dev["type"],
            "MODEL": dev.get("model", ""),
            "FSTYPE": dev.get("fstype", ""),
            "MOUNTPOINT": mounted.get(name, ""),
        }
        table.append([values[c] for c in columns])
    if raw:
        for row in table:
            print(" ".join(v.replace(" ", "\\x20") for v in row))
    else:
        # Like the real lsblk: columns padded to a common width.
        widths = [max([len(r[i]) for r in table] + [1]) for i in range(len(columns))]
        for row in table:
            print(" ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def blkid(state: dict, args: list[str]) -> int:
    opts, devices = _options(args, {"-s", "--match-tag", "-o", "--output"})
    tags = opts.get("--match-tag", []) + opts.get("-s", [])
    found = False
    for device in devices:
        dev = state["devices"].get(device)
        if dev is None or (dev["type"].startswith("raid") and not dev.get("active")):
            return _fail(f"blkid: {device}: No such file or directory", 2)
        values = {"TYPE": dev.get("fstype", ""), "LABEL": dev.get("label", ""), "UUID": dev.get("uuid", "")}
        for tag in tags or ["TYPE"]:
            if values.get(tag):
                print(values[tag])
                found = True
    return 0 if found else 2


def mdadm(state: dict, args: list[str]) -> int:
    opts, positional = _options(args, {"--level", "--raid-devices", "--name", "-l", "-n"})
    if "--create" in opts:
        array, members = positional[0], positional[1:]
        if len(members) != int(opts["--raid-devices"][-1]):
            return _fail("mdadm: wrong number of devices")
        for member in members:
            dev = state["devices"].get(member)
            if dev is None or dev["type"] != "disk":
                return _fail(f"mdadm: cannot open {member}: No such file or directory")
            dev.update(fstype="linux_raid_member", label="", uuid="")
        state["devices"][array] = {
            "type": f"raid{opts['--level'][-1]}",
            "members": members,
            "active": True,
            "fstype": "",
        }
        print(f"mdadm: array {array} started.", file=sys.stderr)
        return 0
    if "--assemble" in opts:
        array, members = positional[0], positional[1:]
        for name, dev in state["devices"].items():
            if dev.get("members") and sorted(dev["members"]) == sorted(members):
                if dev.get("active"):
                    return _fail(f"mdadm: {members[0]} is busy - skipping")
                dev["active"] = True
                state["devices"][array] = state["devices"].pop(name)
                print(f"mdadm: {array} has been started with {len(members)} drives.", file=sys.stderr)
                return 0
        return _fail(f"mdadm: no RAID superblock on {members[0]}")
    return _fail(f"mdadm (stub): unsupported call {args}")


def mkfs_xfs(state: dict, args: list[str]) -> int:
    opts, positional = _options(args, {"-L", "-l", "-d"})
    device = positional[-1]
    dev = state["devices"].get(device)
    if dev is None:
        return _fail(f"mkfs.xfs: cannot open {device}: No such file or directory")
    if dev.get("fstype") and "-f" not in opts:
        return _fail(f"mkfs.xfs: {device} appears to contain an existing filesystem ({dev['fstype']}).")
    import hashlib  # only here: see the imports

    dev.update(
        fstype="xfs",
        label=(opts.get("-L") or [""])[-1],
        uuid=hashlib.sha1(device.encode()).hexdigest()[:8] + "-0000-4000-8000-000000000000",
    )
    return 0


def mount(state: dict, args: list[str]) -> int:
    opts, positional = _options(args, {"-t", "-o"})
    device, target = positional
    dev = _visible(state).get(device)
    if dev is None:
        return _fail(f"mount: {target}: special device {device} does not exist.", 32)
    if dev.get("fstype") != (opts.get("-t") or ["xfs"])[-1]:
        return _fail(f"mount: {target}: wrong fs type, bad option, bad superblock on {device}.", 32)
    state["mounts"][target] = device
    return 0


def mountpoint(state: dict, args: list[str]) -> int:
    _, positional = _options(args, set())
    return 0 if positional[0] in state["mounts"] else 1


def main(argv: list[str]) -> int:
    cmd, args = os.path.basename(argv[1]), argv[2:]
    _log(cmd, args)
    state = _load()
    failure = state.get("fail", {}).get(cmd)
    if failure:
        return _fail(failure)
    handler = {
        "lsblk": lsblk,
        "blkid": blkid,
        "mdadm": mdadm,
        "mkfs.xfs": mkfs_xfs,
        "mount": mount,
        "mountpoint": mountpoint,
    }.get(cmd)
    if handler is None:  # systemctl, udevadm, ...: recorded only
        return 0
    code = handler(state, args)
    _save(state)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
