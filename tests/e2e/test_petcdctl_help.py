"""petcdctl's help, `check datascale` and `completion` against the installed etcdctl 3.4.

Help texts are compared byte for byte for every command both tools have (the many help screens
are rendered in-process for petcdctl; a few go through `python -m petcd.ctl` end to end).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys

import pytest
from harness import ETCD, ETCDCTL, ServerProcess, ctl_env

pytestmark = pytest.mark.e2e

PETCDCTL = [sys.executable, "-m", "petcd.ctl"]


def etcdctl(*args: str) -> tuple[int, bytes, bytes]:
    r = subprocess.run([ETCDCTL, *args], capture_output=True, env=ctl_env(), timeout=30)
    return r.returncode, r.stdout, r.stderr


def petcdctl_proc(*args: str, env: dict[str, str] | None = None) -> tuple[int, bytes, bytes]:
    r = subprocess.run([*PETCDCTL, *args], capture_output=True, env=env or ctl_env(), timeout=60)
    return r.returncode, r.stdout, r.stderr


def petcdctl(*args: str) -> tuple[int, bytes, bytes]:
    """petcdctl in this process (help needs no server): run() with stdout/stderr captured."""
    from petcd.ctl.main import run

    o, e = io.BytesIO(), io.BytesIO()
    so, se = io.TextIOWrapper(o, write_through=True), io.TextIOWrapper(e, write_through=True)
    saved = {k: v for k, v in os.environ.items() if k.startswith("ETCDCTL_")}
    for k in saved:
        del os.environ[k]
    try:
        with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
            code = run(list(args))
            sys.stdout.flush()
    finally:
        os.environ.update(saved)
    return code, o.getvalue(), e.getvalue()


@pytest.fixture(scope="module", autouse=True)
def _need_etcdctl():
    if not (os.path.exists(ETCDCTL) or shutil.which(ETCDCTL)):
        pytest.skip("etcdctl not installed (Debian package etcd-client)")


def _listing(text: bytes) -> dict[str, bytes]:
    """The root help's COMMANDS lines, by command path."""
    lines = text.split(b"\n")
    start = lines.index(b"COMMANDS:") + 1
    res = {}
    for line in lines[start:]:
        if not line:
            break
        res[line.strip(b"\t").split(b"\t")[0].decode()] = line
    return res


def _sections(text: bytes) -> list[bytes]:
    return [line for line in text.split(b"\n") if re.fullmatch(rb"[A-Z][A-Z ]+:", line)]


def _petcd_paths() -> set[str]:
    from petcd.ctl.main import ROOT, _load_extra_commands

    _load_extra_commands()
    paths = set()

    def walk(c) -> None:
        for s in c.subs:
            if s.run is not None:
                paths.add(s.path())
            walk(s)

    walk(ROOT)
    return paths


@pytest.fixture(scope="module")
def common() -> list[str]:
    """Command paths (groups and runnable commands) that both etcdctl and petcdctl have."""
    real = set(_listing(etcdctl("--help")[1]))
    ours = _petcd_paths()
    both = sorted(real & ours)
    # a group's own help lists its subcommands: compare groups whose subcommands agree
    groups = {p.split(" ")[0] for p in both if " " in p}
    same = [g for g in groups if {p for p in real if p.startswith(g + " ")} == {p for p in ours if p.startswith(g + " ")}]  # fmt: skip
    return sorted(same) + both


def test_root_help_layout_and_listing():
    a = etcdctl("--help")
    b = petcdctl_proc("--help")
    assert b[0] == a[0] == 0 and b[2] == a[2] == b""
    assert _sections(b[1]) == _sections(a[1])
    la, lb = _listing(a[1]), _listing(b[1])
    # exactly petcdctl's own commands are listed, flat (`alarm disarm`, not `alarm`)
    assert set(lb) == _petcd_paths()
    assert "alarm disarm" in lb and "alarm" not in lb and "help" in lb
    for path in set(la) & set(lb):
        assert lb[path] == la[path], path
    # everything outside the listing (NAME, USAGE, VERSION, API VERSION, OPTIONS) is identical
    strip = re.compile(rb"(?s)COMMANDS:\n.*?\n\n")
    assert strip.sub(b"", b[1]) == strip.sub(b"", a[1])
    # the bare command and `help` print the same
    assert petcdctl()[:2] == (0, b[1])
    assert petcdctl("help") == (0, b[1], b"")


def test_every_command_help_matches(common):
    assert len(common) > 40
    bad = []
    for path in common:
        words = path.split(" ")
        for args in ([*words, "--help"], ["help", *words], [*words, "-h"]):
            if etcdctl(*args) != petcdctl(*args):
                bad.append(" ".join(args))
    assert not bad


@pytest.mark.parametrize(
    "args",
    [
        ["help", "get"],
        ["lease", "keep-alive", "--help"],
        ["help", "endpoint", "status"],
        ["help", "nosuch"],
        ["help", "nosuch", "other"],
        ["help", "lease", "nosuch"],
        ["help", "get", "extra"],
        ["help", "-w", "json", "put"],
        ["help", "--bogus"],
        ["lease"],
        ["lease", "nosuch"],
        ["get", "--bogus"],
        ["completion"],
        ["completion", "bash", "extra"],
        ["check", "datascale", "--help"],
    ],
)
def test_help_end_to_end(args):
    a, b = etcdctl(*args), petcdctl_proc(*args)
    assert (b[0], b[2]) == (a[0], a[2]), args
    assert _without_lone_commands(b[1], a[1]) == _without_lone_commands(a[1], b[1]), args


def _without_lone_commands(text: bytes, other: bytes) -> bytes:
    """`text` without the command lines (root help listing, root completions) of commands that
    only one of the tools has (etcdctl's `migrate`, petcdctl's `auth status`)."""
    paths = set(_listing(other)) if b"COMMANDS:" in other else None
    comps = {line.split(b"\t")[0] for line in other.split(b"\n")}
    keep = []
    for line in text.split(b"\n"):
        if paths is not None and line.startswith(b"\t") and b"\t" in line.strip(b"\t"):
            path = line.strip(b"\t").split(b"\t")[0].decode()
            if path not in paths and line.split(b"\t")[1][:1].isalpha():
                continue
        if paths is None and b"\t" in line and line.split(b"\t")[0] not in comps:
            continue
        keep.append(line)
    return b"\n".join(keep)


def test_help_of_petcd_only_commands_render():
    # not in etcdctl 3.4, yet listed and described the same way
    code, out, _ = petcdctl("auth", "--help")
    assert code == 0 and b"\tstatus\t" in out


def test_tabwriter_matches_go():
    from petcd.ctl.help import tabwrite

    assert tabwrite("a\tb\nccccccccc\td\n\nx\ty\n") == "a\t\tb\nccccccccc\td\n\nx\ty\n"
    assert tabwrite("\t\tsrc\n\t\n\tz\n") == "\t\tsrc\n\t\n\tz\n"


# ---------------------------------------------------------------------------------------------
# completion


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish", "powershell"])
def test_completion_scripts(shell):
    code, out, err = petcdctl_proc("completion", shell)
    assert code == 0 and err == b""
    real = etcdctl("completion", shell)[1]
    # cobra's script, for petcdctl's name
    assert out == real.replace(b"ETCDCTL", b"PETCDCTL").replace(b"etcdctl", b"petcdctl")
    nodesc = petcdctl_proc("completion", shell, "--no-descriptions")[1]
    assert b"__completeNoDesc" in nodesc and b"__complete " not in nodesc


@pytest.mark.parametrize(
    "words",
    [
        ["lease", ""],
        ["lease", "k"],
        ["get", "--w"],
        ["get", "-"],
        [""],
        ["--endpoints", "x", ""],
        ["get", ""],
        ["get", "--write-out", ""],
        ["help", "lea"],
        ["completion", ""],
        ["nosuch", ""],
        ["member", "l"],
    ],
)
def test_complete_requests(words):
    for req in ("__complete", "__completeNoDesc"):
        real, ours = etcdctl(req, *words), petcdctl(req, *words)
        assert (ours[0], ours[2]) == (real[0], real[2]), words
        if req == "__completeNoDesc" and words[-1] == "" and len(words) <= 3:
            continue  # root command names without descriptions: the command sets differ
        assert _without_lone_commands(ours[1], real[1]) == _without_lone_commands(real[1], ours[1])


def test_bash_completion_sources_and_completes(tmp_path):
    if not shutil.which("bash"):
        pytest.skip("bash not installed: the completion script is checked by sourcing it in bash")
    wrapper = tmp_path / "petcdctl"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m petcd.ctl "$@"\n')
    wrapper.chmod(0o755)
    # bash-completion's _get_comp_words_by_ref is not installed here: a minimal stand-in.
    shim = (
        "_get_comp_words_by_ref() { cur=${COMP_WORDS[COMP_CWORD]}; "
        'prev=${COMP_WORDS[COMP_CWORD-1]}; words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD; }\n'
    )
    script = (
        "COLUMNS=80\n"
        + shim
        + "source <(petcdctl completion bash) || exit 9\n"
        + "complete -p petcdctl || exit 8\n"
        + "COMP_WORDS=(petcdctl lea); COMP_CWORD=1; COMP_TYPE=9; __start_petcdctl\n"
        + 'echo "R1:${COMPREPLY[*]}"\n'
        + "COMP_WORDS=(petcdctl lease ''); COMP_CWORD=2; __start_petcdctl\n"
        + 'echo "R2:${COMPREPLY[*]}"\n'
    )
    env = ctl_env(PATH=f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    r = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        capture_output=True,
        env=env,
        timeout=60,
        text=True,
    )
    assert r.returncode == 0, r
    # outside a real completion, bash refuses compopt; nothing else may complain
    assert [x for x in r.stderr.splitlines() if "compopt" not in x] == [], r.stderr
    assert "R1:lease" in r.stdout
    r2 = [line for line in r.stdout.splitlines() if line.startswith("R2:")][0]
    for name in ("grant", "keep-alive", "list", "revoke", "timetolive"):
        assert name in r2[3:].split(), r2  # shown with descriptions: "grant (Creates leases)"


# ---------------------------------------------------------------------------------------------
# check datascale


@pytest.fixture
def etcd():
    if not (os.path.exists(ETCD) or shutil.which(ETCD)):
        pytest.skip("etcd not installed (Debian package etcd-server)")
    s = ServerProcess(cmd=[ETCD]).start()
    yield s
    s.cleanup()


def _ds_norm(out: bytes) -> bytes:
    # the bar's redraws and the memory figure vary from run to run
    out = re.sub(rb"\r[^\r\n]*(?=\r)", b"", out)
    out = re.sub(rb"% \d+(?:h\d+)?(?:m\d+)?s\n", b"% T\n", out)
    return re.sub(rb"used : -?[0-9.]+ MB", b"used : N MB", out)


def test_check_datascale_against_etcd(etcd):
    ep = f"--endpoints={etcd.endpoint}"
    env = ctl_env(PETCDCTL_CHECK_DATASCALE_LIMIT="200")
    code, out, err = petcdctl_proc(ep, "check", "datascale", "--auto-compact", "--auto-defrag", env=env)  # fmt: skip
    assert (code, err) == (0, b""), (out, err)
    q = f'"{etcd.endpoint}"'.encode()
    lines = _ds_norm(out).split(b"\n")
    assert lines[0] == (
        b"Start data scale check for work load [200 key-value pairs, 1024 bytes per key-value, "
        b"50 concurrent clients]."
    )
    assert lines[1] == b"\r 200 / 200  100.00% T"
    assert lines[2].startswith(b"Compacting with revision ")
    assert lines[3].startswith(b"Compacted with revision ")
    assert lines[4:] == [b"Defragmenting " + q, b"Defragmented " + q, b"PASS: Approximate system memory used : N MB.", b""]  # fmt: skip
    # the keys are gone again
    assert petcdctl_proc(ep, "get", "--prefix", "/etcdctl-check-datascale/")[1] == b""
    # refusals: unknown load, keys under the prefix (same as etcdctl, before any load)
    for args in (["--load", "huge"], ["--prefix", "/taken/"]):
        if "/taken/" in args:
            assert etcdctl(ep, "put", "/taken/k", "v")[0] == 0
        assert petcdctl_proc(ep, "check", "datascale", *args) == etcdctl(ep, "check", "datascale", *args)  # fmt: skip


def test_check_datascale_against_petcd(shared_petcd):
    """petcd serves /metrics on its client port (HTTP/1.1 next to gRPC), so both checks work."""
    ep = f"--endpoints={shared_petcd.endpoint}"
    a = etcdctl(ep, "check", "datascale")
    b = petcdctl_proc(ep, "check", "datascale")
    for code, out, err in (a, b):
        assert (code, err) == (0, b""), (out, err)
        lines = _ds_norm(out).split(b"\n")
        assert lines[0] == (
            b"Start data scale check for work load [10000 key-value pairs, 1024 bytes per "
            b"key-value, 50 concurrent clients]."
        )
        assert lines[-2:] == [b"PASS: Approximate system memory used : N MB.", b""]
    assert etcdctl(ep, "get", "--prefix", "/etcdctl-check-datascale/")[1] == b""


def test_check_datascale_against_grpc_only_port_explains(monkeypatch):
    """A client port that speaks HTTP/2 only (petcd on grpc.aio) fails as etcdctl does, plus
    a hint on stderr."""
    monkeypatch.setenv("PETCD_GRPC_SERVER", "grpcio")
    s = ServerProcess().start()
    try:
        ep = f"--endpoints={s.endpoint}"
        a = etcdctl(ep, "check", "datascale")
        b = petcdctl_proc(ep, "check", "datascale")
        assert a[0] == b[0] == 1
        assert b[1] == a[1]  # fetch error: ... malformed HTTP response ... / FAIL: Could not read ...
        assert b"FAIL: Could not read process_resident_memory_bytes before the put operations." in b[1]
        assert b"no /metrics" in b[2]
    finally:
        s.stop()
        s.cleanup()
