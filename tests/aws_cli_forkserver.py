"""A fork server for the AWS CLI, so that each call in the tests costs a fork instead of the
CLI's imports.

Why: the node scripts are tested with the real AWS CLI v2 (Debian's package, what the GPU nodes
run), and about 0.6 s of each of its ~130 calls in the suite is importing `awscli` and
`botocore`, the same work every time. Here those imports happen once, in a server running under
the CLI's own interpreter (the one its script's shebang names); each call is a fork of that
server which runs the CLI's script as `__main__` (`runpy`), with the caller's arguments,
environment, working directory and standard input, output and error (passed as descriptors
over a Unix socket). The code that runs is the installed CLI's, unchanged; only the process
that runs it was started earlier, and the data files most calls read (service models,
endpoints) were already loaded into the data loader their botocore session gets
(:func:`_share_data_loader`). `tests/test_aws_cli_forkserver.py` checks that a call through
the server and a plain call of the CLI give the same output and exit status.

    server:  PYTHON aws_cli_forkserver.py serve SOCKET SCRIPT       (PYTHON: SCRIPT's interpreter)
    call:    PYTHON -I -S aws_cli_forkserver.py call SOCKET [ARG ...]  (what a wrapper execs)

A call behaves like the program as a process: it exits with the program's status, or dies of
the signal the program died of; SIGTERM, SIGINT, SIGHUP and SIGQUIT sent to the caller reach the
program; if the caller is killed outright (SIGKILL) the program is killed too.

What a forked program cannot redo is what its interpreter and imports did with the environment
at start-up; the server refuses to serve where that would differ:

- the interpreter's start-up reads the locale and PYTHON* variables: a caller whose values differ
  from the server's is refused (status 125, with a message);
- of the CLI's imports, only `awscli/__init__.py` changes the environment: it sets AWS_DATA_PATH
  to the caller's entries followed by its own data folder. The server checks at start-up that
  this is the only change and applies the same rule to each caller's environment.

Standard library only: the server runs under the system interpreter, the caller under any.
"""

from __future__ import annotations

# The caller starts once per CLI call (~165 per test run), so this file's top level imports only
# modules that cost nothing to import (compiled in, or one small file): a call starts about as
# fast as a bare `python -I -S`. `socket`, `signal` and `json` would bring enum, selectors and re
# along, ~35 ms more per call. The server's functions import what else they need, once.
import _signal
import _socket
import marshal
import os
import struct
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

FORWARDED = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGQUIT)
# The request's length, then the request: a dict of str, list and str, as marshal data, format 4
# (which every Python 3 since 3.4 reads: the caller's and the server's interpreters may differ).
# marshal trusts its input; the socket lives in a directory only this user can open.
_HEADER = struct.Struct("!I")
_MARSHAL_FORMAT = 4
_STATUS = struct.Struct("!ii")  # (0, exit status) or (1, signal number)
# What AWS CLI v2's package sets on import (awscli/__init__.py), from the caller's value.
DATA_PATH = "AWS_DATA_PATH"


def startup_environment(env: dict[str, str]) -> dict[str, str]:
    """The variables an interpreter reads once, at start-up."""
    return {k: v for k, v in env.items() if k in ("LANG", "LANGUAGE") or k.startswith(("LC_", "PYTHON"))}


def _recv_exactly(conn: _socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the caller went away")
        data += chunk
    return data


# --- the server ---------------------------------------------------------------------------------


def serve(socket_path: str, script: str) -> None:
    import gc
    import importlib
    import runpy
    import signal
    import socket

    # As when the script runs as a program: its directory first on the path, not this file's.
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    if DATA_PATH in os.environ:
        sys.exit(f"aws_cli_forkserver: start the server without {DATA_PATH}")
    before = dict(os.environ)
    # Import what the script imports at its top level (everything but running it): the CLI's
    # script is `import ...; def main(): ...; if __name__ == '__main__': sys.exit(main())`.
    namespace = runpy.run_path(script, run_name="aws_cli_forkserver_warmup")
    # The driver imports its built-in plugins on every call (awscli/plugin.py): import them too.
    plugins = sys.modules["awscli.plugin"].BUILTIN_PLUGINS.values()
    for module in plugins:
        importlib.import_module(module)
    del namespace
    changed = {k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}
    if changed != {DATA_PATH}:
        sys.exit(f"aws_cli_forkserver: the CLI's imports changed {sorted(changed)}, not just {DATA_PATH}")
    builtin_data = os.environ[DATA_PATH]
    _share_data_loader(builtin_data)
    _find_distribution()
    # Keep the imported objects out of every fork's garbage collections: a collection in a
    # fork would otherwise visit (and so copy) every page the server's objects live on.
    gc.freeze()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    print("ready", flush=True)
    # A server whose parent (the test process) died without stopping it stops by itself.
    parent = os.getppid()
    listener.settimeout(2)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            if os.getppid() != parent:
                sys.exit(0)
            continue
        conn.settimeout(None)
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _handle(conn, script, startup_environment(before), builtin_data)  # never returns
        conn.close()


# The services whose data the server loads once for every call: those the tests' scripts call
# (the node scripts: s3 and cloudwatch; the image push and the destroy guard: ecr, sts, s3).
# Any other service's data loads during the call, as in the CLI alone.
WARM_SERVICES = ("s3", "cloudwatch", "ecr", "sts")
_WARM_MODELS = ("service-2", "endpoint-rule-set-1", "paginators-1", "waiters-2")
_WARM_DATA = ("endpoints", "partitions", "_retry", "sdk-default-configuration", "cli")


def _share_data_loader(search_path: str) -> None:
    """Each call's botocore session gets a data loader whose caches already hold the data the
    calls read (the list of services, the services' models, the endpoints): about 60 ms of
    each call's ~130 ms of CPU was listing ~400 service folders and parsing the same JSON.

    botocore creates one loader per session (`botocore.session.create_loader`, given the
    AWS_DATA_PATH value) and caches what it loads in that object, for the session's life. Here
    `create_loader` returns the loader the server created for the same value, loaded up front;
    a call with a data path of its own gets a new one, as before. A call sees the same
    objects that botocore's own cache would hand out on a second load within one session, read
    from the same files; each call is a fork, so nothing one call does to them reaches another.
    """
    import contextlib

    session = sys.modules["botocore.session"]
    not_found = sys.modules["botocore.exceptions"].DataNotFoundError
    create = session.create_loader
    loaders: dict = {}

    def create_loader(search_path_string=None):  # the signature of botocore's
        if search_path_string not in loaders:
            loaders[search_path_string] = create(search_path_string)
        return loaders[search_path_string]

    session.create_loader = create_loader
    loader = create_loader(search_path)
    # As botocore's session asks: its instance_cache keys a keyword argument apart from the same
    # value passed by position (a positional warm-up here left every call to list ~400 folders).
    loader.list_available_services(type_name="service-2")
    for name in _WARM_DATA:
        with contextlib.suppress(not_found):  # not every CLI has every file
            loader.load_data(name)
    for service in WARM_SERVICES:
        for type_name in _WARM_MODELS:
            with contextlib.suppress(not_found):
                loader.load_service_model(service, type_name)


def _find_distribution() -> None:
    """AWS CLI v2 names the Linux distribution in its user agent (`_get_distribution` in
    awscli/clidriver.py), through the `distro` package, whose module-level instance runs
    `lsb_release -a` the first time a process asks and keeps the answer: ~20 ms of each call's
    ~95 ms of CPU, with the child. Asked here once, every call finds the answer that a second
    question within one CLI process would find. What the forks cannot see is a caller's own
    PATH leading to another `lsb_release`: the answer is the server's, and only the user agent
    header carries it. AWS CLI v1 has no such function: nothing to do."""
    find = getattr(sys.modules.get("awscli.clidriver"), "_get_distribution", None)
    if find is not None:
        find()


def _handle(conn: _socket.socket, script: str, startup: dict[str, str], builtin_data: str) -> None:
    """One call, in a fork of the server: fork the program, relay signals, report its end."""
    import contextlib
    import select
    import signal
    import socket

    try:
        header, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 3)
        if len(header) < _HEADER.size or len(fds) != 3:
            os._exit(2)
        request = marshal.loads(_recv_exactly(conn, _HEADER.unpack(header)[0]))
    except (OSError, ValueError, EOFError, TypeError):
        os._exit(2)
    if startup_environment(request["env"]) != startup:
        message = (
            "aws_cli_forkserver: the caller's locale or PYTHON* variables differ from the server's "
            f"({startup_environment(request['env'])} != {startup}): run the CLI itself\n"
        )
        os.write(fds[2], message.encode())
        conn.sendall(_STATUS.pack(0, 125))
        os._exit(0)
    program = os.fork()
    if program == 0:
        conn.close()
        _run(script, request, fds, builtin_data)  # never returns
    for fd in fds:
        os.close(fd)
    ended = os.pidfd_open(program)
    watching = [conn, ended]
    while True:
        readable, _, _ = select.select(watching, [], [])
        if ended in readable:
            _, status = os.waitpid(program, 0)
            break
        try:
            data = conn.recv(64)
        except OSError:
            data = b""
        if not data:  # the caller is gone (killed): so is the program
            os.kill(program, signal.SIGKILL)
            watching = [ended]
        for signum in data:
            os.kill(program, signum)
    if os.WIFSIGNALED(status):
        reply = _STATUS.pack(1, os.WTERMSIG(status))
    else:
        reply = _STATUS.pack(0, os.waitstatus_to_exitcode(status))
    with contextlib.suppress(OSError):
        conn.sendall(reply)
    os._exit(0)


def _run(script: str, request: dict, fds: list[int], builtin_data: str) -> None:
    """The program: the caller's descriptors, directory, environment and arguments, then the
    script as `__main__`. Its SystemExit ends this process as the interpreter would end it
    (:func:`_exit`); an uncaught exception ends it through the interpreter itself."""
    import runpy
    import signal

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for signum in FORWARDED:
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    # What awscli/__init__.py does on import, with the caller's environment.
    entries = [os.path.expanduser(os.path.expandvars(p)) for p in os.environ.get(DATA_PATH, "").split(os.pathsep)]
    os.environ[DATA_PATH] = os.pathsep.join([*(entries if DATA_PATH in os.environ else []), builtin_data])
    sys.argv = [script, *request["argv"]]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as end:
        _exit(end.code)
    _exit(None)


def _exit(code: object) -> NoReturn:
    """End the program as the interpreter does, as far as a program can tell: `sys.exit(code)`'s
    status (a code neither None nor an int is printed to stderr, status 1), its non-daemon
    threads joined, its atexit handlers run, standard output and error flushed (status 120 if
    that fails). Then os._exit: what it skips is tearing down the modules the server imported,
    which only a fork pays for (it writes to every page they live on, copying each: ~50 ms of a
    call's ~250) and no program sees."""
    import atexit
    import threading

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx does first; no public API
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = status or 120
    os._exit(status & 0xFF)


# --- the caller ---------------------------------------------------------------------------------


def call(socket_path: str, argv: list[str]) -> None:
    """Run the program through the server at `socket_path`; exit as it ended."""
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    conn.connect(socket_path)
    request = marshal.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}, _MARSHAL_FORMAT)

    def forward(signum: int, _frame: object) -> None:
        try:
            conn.send(bytes([signum]))
        except OSError:  # the server's end of the call is gone: its status follows, or nothing
            return

    for signum in FORWARDED:
        _signal.signal(signum, forward)
    # The request's length, with the caller's standard input, output and error (SCM_RIGHTS):
    # what socket.send_fds does.
    descriptors = struct.pack("3i", 0, 1, 2)
    conn.sendmsg([_HEADER.pack(len(request))], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, descriptors)])
    conn.sendall(request)
    try:
        kind, value = _STATUS.unpack(_recv_exactly(conn, _STATUS.size))
    except ConnectionError:
        sys.exit(255)
    if kind == 1:
        _signal.signal(value, _signal.SIG_DFL)
        os.kill(os.getpid(), value)
        sys.exit(128 + value)
    sys.exit(value)


def main() -> None:
    if len(sys.argv) >= 4 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 3 and sys.argv[1] == "call":
        call(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(f"usage: {sys.argv[0]} serve SOCKET SCRIPT | call SOCKET [ARG ...]")


if __name__ == "__main__":
    main()
