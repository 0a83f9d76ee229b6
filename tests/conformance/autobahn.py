"""Run the Autobahn|Testsuite fuzzing server for client conformance tests.

Stdlib only, Python 3.11. The fuzzing server itself (PyPI
``autobahntestsuite`` 25.10.1) runs only on Python 2.7, so it lives in its own
virtualenv, ``.venv-autobahn/`` at the repository root, which
``scripts/autobahn-env.sh`` creates (idempotent, instant once built; see
:func:`ensure_env`). :func:`fuzzing_server` starts it through our launcher
``tests/conformance/fuzzingserver.py`` on ``127.0.0.1`` only, on a port picked
free at run time, and stops it again.

Client protocol of the fuzzing server
-------------------------------------
The WebSocket client under test drives everything; each step is a separate
WebSocket connection to ``server.url`` + path:

``GET /getCaseCount``
    The server sends one text message holding the number of cases selected
    by the spec (JSON integer, e.g. ``"301"``), then closes.
``GET /runCase?case=N&agent=NAME``
    Runs case number ``N``: a **1-based index** into the spec's selected
    case list (sorted, after ``exclude-cases``), *not* a case id like
    ``"5.1"``. ``casetuple=5.1`` may be given instead of ``case=N`` to pick a
    case by its id (it must be among the selected ones). For an echo client
    the server sends frames and the client echoes every text/binary message
    back verbatim, and answers the closing handshake; the server closes.
    ``NAME`` is the agent the result is stored under.
``GET /getCaseInfo?case=N``
    One text message: JSON ``{"id": "5.1", "description": "..."}``.
``GET /getCaseStatus?case=N&agent=NAME``
    One text message: JSON ``{"behavior": "OK"}`` once that case has run.
``GET /updateReports?agent=NAME``
    Writes the reports for **all** cases run so far (all agents) to the
    spec's ``outdir``: ``index.json`` (read it with :func:`read_results`),
    ``index.html`` and one ``<agent>_case_<id>.json/.html`` per case. The
    server closes the connection once written. Results are only kept in the
    server's memory until then.

Example::

    async with fuzzing_server(tmp_path, cases=["1.*", "5.*"]) as server:
        count = ...  # text message from server.case_count_url()
        for n in range(1, count + 1):
            ...      # echo client on server.case_url(n, "defi-ws")
        ...          # connect to server.update_reports_url("defi-ws")
    results = read_results(server.report_dir, "defi-ws")
    assert all(r.passed for r in results.values())

The server stays up (and keeps its results) for the whole ``async with``;
reports can be read after it exits, since they are files.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from typing import Any

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
AUTOBAHN_VENV = pathlib.Path(os.environ.get("AUTOBAHN_VENV", str(REPO_ROOT / ".venv-autobahn")))
AUTOBAHN_PYTHON = AUTOBAHN_VENV / "bin" / "python"
ENV_SCRIPT = REPO_ROOT / "scripts" / "autobahn-env.sh"
LAUNCHER = pathlib.Path(__file__).resolve().with_name("fuzzingserver.py")
HOST = "127.0.0.1"

DEFAULT_CASES: tuple[str, ...] = ("*",)
# 12.* / 13.* are permessage-deflate cases (hundreds of slow cases); a client
# that does not negotiate the extension gets them as UNIMPLEMENTED anyway.
DEFAULT_EXCLUDE_CASES: tuple[str, ...] = ("12.*", "13.*")

_env_ready = False


class AutobahnError(RuntimeError):
    """The fuzzing server environment could not be built or started."""


#: Set (to 1) by ``make conformance``: a missing Python 2.7 fails the run instead of
#: skipping it.
REQUIRE_ENV_VAR = "DEFI_WS_REQUIRE_AUTOBAHN"


def env_unavailable() -> str | None:
    """Why the fuzzing server cannot run here (one line), or None if it can.

    Asks ``scripts/autobahn-env.sh --check``, which builds nothing: the venv is ready,
    or a Python 2.7 to build it from is found.
    """
    env = dict(os.environ)
    env["AUTOBAHN_VENV"] = str(AUTOBAHN_VENV)
    proc = subprocess.run(
        ["bash", str(ENV_SCRIPT), "--check"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0:
        return None
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[-1] if lines else f"{ENV_SCRIPT} --check exited {proc.returncode}"


def ensure_env() -> None:
    """Build ``.venv-autobahn/`` if needed by running ``scripts/autobahn-env.sh``.

    Instant (a stamp file check) once the venv exists; the first build takes
    about half a minute and needs PyPI, gcc and a Python 2.7 (pyenv 2.7.18).
    Raises :class:`AutobahnError` with the script's output if it fails.
    """
    global _env_ready
    if _env_ready:
        return
    env = dict(os.environ)
    env["AUTOBAHN_VENV"] = str(AUTOBAHN_VENV)
    env.setdefault("AUTOBAHN_BOOTSTRAP_PYTHON", sys.executable)
    env.setdefault("AUTOBAHN_ENV_QUIET", "1")
    proc = subprocess.run(
        ["bash", str(ENV_SCRIPT)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-6000:]
        raise AutobahnError(f"{ENV_SCRIPT} failed with exit code {proc.returncode}:\n{output}")
    _env_ready = True


@dataclasses.dataclass(frozen=True)
class FuzzingServer:
    """A running fuzzing server (yielded by :func:`fuzzing_server`)."""

    url: str  # "ws://127.0.0.1:PORT"
    port: int
    report_dir: pathlib.Path  # the spec's outdir; index.json appears here
    spec_path: pathlib.Path
    log_path: pathlib.Path  # server stdout+stderr
    pid: int

    def case_count_url(self) -> str:
        return f"{self.url}/getCaseCount"

    def case_url(self, case: int, agent: str) -> str:
        """URL running case number ``case`` (1-based) for ``agent``."""
        return f"{self.url}/runCase?{urllib.parse.urlencode({'case': case, 'agent': agent})}"

    def case_info_url(self, case: int) -> str:
        return f"{self.url}/getCaseInfo?{urllib.parse.urlencode({'case': case})}"

    def update_reports_url(self, agent: str) -> str:
        return f"{self.url}/updateReports?{urllib.parse.urlencode({'agent': agent})}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: pathlib.Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "<no output>"
    return data[-limit:].decode("utf-8", "replace") or "<no output>"


async def _stop(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def _wait_listening(
    proc: asyncio.subprocess.Process,
    port: int,
    ready_file: pathlib.Path,
    timeout: float,
) -> bool:
    """True once ``proc`` reports it listens (``ready_file``) and HOST:port
    accepts a TCP connection; False if ``proc`` died first.

    The ready file matters: a connect alone would also succeed if some other
    process had grabbed the port between :func:`_free_port` and our bind.
    Raises :class:`TimeoutError` after ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if proc.returncode is not None:
            return False
        if ready_file.exists() and await _accepts(port):
            return proc.returncode is None
        if loop.time() >= deadline:
            raise TimeoutError
        await asyncio.sleep(0.05)


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1.0)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def fuzzing_server(
    tmp_dir: pathlib.Path,
    cases: Sequence[str] = DEFAULT_CASES,
    exclude_cases: Sequence[str] = DEFAULT_EXCLUDE_CASES,
    *,
    startup_timeout: float = 30.0,
    options: dict[str, Any] | None = None,
) -> AsyncIterator[FuzzingServer]:
    """Run a fuzzing server on 127.0.0.1:<free port> for the ``async with`` body.

    ``cases`` / ``exclude_cases`` are Autobahn case patterns (``"*"``,
    ``"5.*"``, ``"9.1.1"``). Spec, log and reports go under ``tmp_dir``
    (reports in ``tmp_dir / "reports"``). ``options`` is the spec's optional
    ``"options"`` dict (protocol options of the server factory). On exit the
    server is terminated (SIGTERM, then SIGKILL after 5 s).
    """
    await asyncio.to_thread(ensure_env)
    tmp_dir = pathlib.Path(tmp_dir).resolve()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    report_dir = tmp_dir / "reports"
    spec_path = tmp_dir / "fuzzingserver.json"
    log_path = tmp_dir / "fuzzingserver.log"
    ready_file = tmp_dir / "fuzzingserver.ready"

    attempts = 3  # the free port may be taken between probing and binding
    for attempt in range(1, attempts + 1):
        port = _free_port()
        spec: dict[str, Any] = {
            "url": f"ws://{HOST}:{port}",
            "outdir": str(report_dir),
            "cases": list(cases),
            "exclude-cases": list(exclude_cases),
            "exclude-agent-cases": {},
        }
        if options:
            spec["options"] = dict(options)
        spec_path.write_text(json.dumps(spec, indent=2))
        with contextlib.suppress(FileNotFoundError):
            ready_file.unlink()

        with open(log_path, "wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                str(AUTOBAHN_PYTHON),
                "-u",
                str(LAUNCHER),
                "--spec",
                str(spec_path),
                "--port",
                str(port),
                "--exit-with-parent",
                "--ready-file",
                str(ready_file),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=str(tmp_dir),
            )
        try:
            try:
                ready = await _wait_listening(proc, port, ready_file, startup_timeout)
            except TimeoutError:
                raise AutobahnError(
                    f"fuzzing server did not listen on {HOST}:{port} within "
                    f"{startup_timeout:.0f}s; output:\n{_tail(log_path)}"
                ) from None
            if not ready:
                await proc.wait()
                output = _tail(log_path)
                if "Address already in use" in output and attempt < attempts:
                    continue
                raise AutobahnError(
                    f"fuzzing server exited with code {proc.returncode} "
                    f"before listening on {HOST}:{port}; output:\n{output}"
                )
            yield FuzzingServer(
                url=f"ws://{HOST}:{port}",
                port=port,
                report_dir=report_dir,
                spec_path=spec_path,
                log_path=log_path,
                pid=proc.pid,
            )
            return
        finally:
            await _stop(proc)
    raise AssertionError("unreachable")


@dataclasses.dataclass(frozen=True)
class CaseResult:
    """One case's entry of ``index.json``."""

    case_id: str  # "5.1"
    behavior: str  # OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED
    behavior_close: str  # OK, INFORMATIONAL, FAILED, WRONG CODE, UNCLEAN, ...
    remote_close_code: int | None
    duration: int  # milliseconds
    reportfile: str  # "<agent>_case_5_1.json", relative to the report dir

    @property
    def passed(self) -> bool:
        """As Autobahn's own summary counts it: not FAILED / UNIMPLEMENTED
        / WRONG CODE / UNCLEAN / FAILED BY CLIENT."""
        return self.behavior in ("OK", "NON-STRICT", "INFORMATIONAL") and (
            self.behavior_close in ("OK", "INFORMATIONAL")
        )


def case_sort_key(case_id: str) -> tuple[int, ...]:
    """Sort "9.10.1" after "9.2.1" (``sorted(results, key=case_sort_key)``)."""
    return tuple(int(part) for part in case_id.split("."))


def read_results(report_dir: pathlib.Path | str, agent: str) -> dict[str, CaseResult]:
    """Parse ``report_dir/index.json`` into ``{case_id: CaseResult}`` for ``agent``.

    ``index.json`` exists only after a client opened ``/updateReports``.
    Raises ``FileNotFoundError`` / ``KeyError`` with a hint otherwise.
    """
    index = pathlib.Path(report_dir) / "index.json"
    if not index.is_file():
        raise FileNotFoundError(
            f"{index} does not exist: did the client open /updateReports?agent=..."
            " after running the cases?"
        )
    data = json.loads(index.read_text())
    if agent not in data:
        raise KeyError(f"agent {agent!r} not in {index}; agents: {sorted(data)}")
    results = {}
    for case_id in sorted(data[agent], key=case_sort_key):
        entry = data[agent][case_id]
        results[case_id] = CaseResult(
            case_id=case_id,
            behavior=entry["behavior"],
            behavior_close=entry["behaviorClose"],
            remote_close_code=entry.get("remoteCloseCode"),
            duration=int(entry["duration"]),
            reportfile=entry["reportfile"],
        )
    return results
