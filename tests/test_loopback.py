"""Every server the project starts binds loopback: infra/, tests/, mugv/, flows/, bench/, docs, the Makefile and the
README hold no all-interfaces address (tests may name it, to look for it), every host option (`--host`, `-H`, `--address`, `--bind`, ...) names 127.0.0.1,
localhost or ::1, Python binds and `host=` literals too, and compose publishes ports on 127.0.0.1 only. A failure
lists file:line."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.support.paths import ROOT

SCANNED = ("infra", "tests", "mugv", "flows", "bench", "docs", "Makefile", "README.md", "dvc.yaml", "pyproject.toml")
TEXT_SUFFIXES = {".py", ".sh", ".yaml", ".yml", ".json", ".toml", ".md", ".cfg", ".ini", ".txt", ".j2", ""}
EVERY_INTERFACE = (".".join("0" * 4), "[" + "::" + "]", "::/0")  # spelt out so this file holds none of them
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
HOST_FLAGS = ("--host", "--bind", "--address", "--console-address", "--dashboard-host", "--listen", "-H")
FLAG = re.compile(r"(?:^|(?<=[\s\"'\[(,]))(" + "|".join(re.escape(f) for f in HOST_FLAGS) + r")(?=[\s\"'=,])")
VALUE_END = re.compile(r"[\s\"',)\]]")
LITERALS = [
    re.compile(r"\b(?:host|dashboard_host|bind_address)\s*=\s*[\"']([^\"']*)[\"']"),  # host="..." in Python calls
    re.compile(r"(?:\.bind|Server)\(\(\s*[\"']([^\"']*)[\"']"),  # sock.bind(("...", port)), HTTPServer(("...", port))
]
THIS_FILE = Path(__file__).resolve()  # its planted examples are not the project's
PORT_ENTRY = re.compile(r"^\s*-\s*[\"']?([^\"'\s#]+)")


def _is_loopback(value: str) -> bool:
    host = value.rsplit(":", 1)[0] if value.count(":") == 1 or value.startswith("[") and "]:" in value else value
    return host in LOOPBACK


def _flag_value(rest: str) -> str:
    rest = rest.lstrip(" \t\"'=,")
    end = VALUE_END.search(rest)
    return rest[: end.start()] if end else rest


def findings(text: str, compose: bool = False, a_test: bool = False) -> list[tuple[int, str]]:
    """(line, what) for each place in one file's text that would bind beyond loopback. In a test (`a_test`) the
    all-interfaces address may be named (tests look for it); binding to it is still found."""
    found = []
    in_ports = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not a_test:
            found += [(number, f"{address} (bind 127.0.0.1)") for address in EVERY_INTERFACE if address in line]
        for match in FLAG.finditer(line):
            value = _flag_value(line[match.end():])
            if value and not _is_loopback(value):
                found.append((number, f"{match.group(1)} {value} (not loopback)"))
        for pattern in LITERALS:
            found += [(number, f"binds {m.group(1)!r} (not loopback)") for m in pattern.finditer(line)
                      if not _is_loopback(m.group(1))]
        if compose:  # published ports: `- "8080:8080"` binds every interface, `- "127.0.0.1:8080:8080"` does not
            stripped = line.strip()
            if stripped.startswith("ports:"):
                in_ports = True
                inline = stripped[len("ports:"):].strip(" []")
                entries = [e.strip(" \"'") for e in inline.split(",") if e.strip()]
                found += [(number, f"port {e} published on every interface") for e in entries
                          if not e.startswith("127.0.0.1:")]
            elif in_ports and (entry := PORT_ENTRY.match(line)):
                if not entry.group(1).startswith("127.0.0.1:"):
                    found.append((number, f"port {entry.group(1)} published on every interface"))
            elif stripped:
                in_ports = False
    return sorted(set(found))


def _files(root: Path, scanned=SCANNED):
    for name in scanned:
        path = root.resolve() / name
        paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        for file in paths:
            if file.suffix in TEXT_SUFFIXES and "__pycache__" not in file.parts and file != THIS_FILE:
                yield file


def scan(root: Path, scanned=SCANNED) -> list[str]:
    report = []
    for path in _files(root, scanned):
        text = path.read_text(errors="replace")
        compose, a_test = "compose" in path.name, path.relative_to(root.resolve()).parts[0] == "tests"
        report += [f"{path.relative_to(root.resolve())}:{line}: {what}"
                   for line, what in findings(text, compose, a_test)]
    return report


def test_every_server_binds_loopback():
    report = scan(ROOT)
    assert not report, "binds beyond loopback:\n" + "\n".join(report)


def test_the_scan_finds_each_exposure(tmp_path):
    every = EVERY_INTERFACE[0]
    (tmp_path / "infra").mkdir()
    (tmp_path / "infra" / "compose.yaml").write_text(
        "services:\n"
        "  a:\n"
        "    command: mlflow server --host 127.0.0.1 --port 5000\n"
        f"  b:\n    command: prefect server start --host {every}\n"
        "    ports:\n"
        "      - \"4200:4200\"\n"
        "      - \"127.0.0.1:5000:5000\"\n"
        "  c:\n"
        "    command: minio server /data --address :9000\n"
        "    ports: [\"9000:9000\"]\n"
    )
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "serve.py").write_text(
        "import socket, subprocess\n"
        "subprocess.Popen(['moto_server', '-H', '127.0.0.1', '-p', '5000'])\n"
        "subprocess.Popen(['mlflow', 'server', '--host', 'example.org'])\n"
        "socket.socket().bind(('', 0))\n"
        "socket.socket().bind(('127.0.0.1', 0))\n"
        "uvicorn.run(app, host='10.0.0.5')\n"
        "http.server.ThreadingHTTPServer(('', 8000), Handler)\n"
        "tag = dict(host=socket.gethostname())\n"
        "subprocess.run(['curl', '--header', 'x'])\n"
        f"assert '{every}' not in text  # a test may look for it\n"
        f"subprocess.Popen(['prefect', 'server', 'start', '--host', '{every}'])\n"
    )
    lines = {":".join(entry.split(":")[:2]) for entry in scan(tmp_path, ("infra", "tests"))}
    assert lines == {"infra/compose.yaml:5", "infra/compose.yaml:7", "infra/compose.yaml:10", "infra/compose.yaml:11",
                     "tests/serve.py:3", "tests/serve.py:4", "tests/serve.py:6", "tests/serve.py:7", "tests/serve.py:11"}



LISTENING_ADDRESSES = """
import os, psutil
from mugv.training.distributed import init_parallel
init_parallel()
print(sorted({c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid == os.getpid()}))
"""


def test_a_training_world_of_one_listens_on_loopback_only():
    """A single-process pretrain, sft or convert: torch.distributed's TCP store listened on every interface
    whatever address it was given; gloo's own listener must stay on loopback."""
    import ast
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", LISTENING_ADDRESSES], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    addresses = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert addresses and set(addresses) <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}, addresses
