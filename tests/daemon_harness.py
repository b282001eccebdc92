"""Real processes for the end-to-end tests: the simulator, the daemon and a fake systemd socket.

Everything here starts a real subprocess (the installed ``akeeba-backupd`` console script) or
binds a real socket, waits for it by polling in small steps up to a bound, and cleans up in
``stop()``/``close()`` even when the test failed: SIGTERM first, SIGKILL when that is not enough.
Waits are event-driven (a metric value, a datagram, a line of output), never fixed sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import yaml
from prometheus_client.parser import text_string_to_metric_families

SIM_SECRET = "demo-secret"  # the secret `akeeba-backupd simulate` gives its sites by default
SECRET_VARIABLE = "AKEEBA_E2E_SECRET"
POLL_SECONDS = 0.05
WAIT_SECONDS = 20.0
STOP_SECONDS = 10.0

T = TypeVar("T")


# --- small helpers -----------------------------------------------------------------------------


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago (the kernel picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def console_command() -> list[str]:
    """Return the command that runs the installed ``akeeba-backupd`` console script."""
    script = Path(sys.executable).with_name("akeeba-backupd")
    if script.exists():
        return [str(script)]
    return [
        sys.executable,
        "-c",
        "import sys; from akeeba_backupd.cli import main; sys.exit(main())",
    ]


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return this process's environment without systemd's variables, plus ``extra``."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if key
        not in (
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "JOURNAL_STREAM",
            "STATE_DIRECTORY",
            "CREDENTIALS_DIRECTORY",
            "AKEEBA_BACKUPD_CONFIG",
            "AKEEBA_BACKUPD_LOG_LEVEL",
        )
    }
    environ["PYTHONUNBUFFERED"] = "1"
    environ.update(extra or {})
    return environ


def wait_until(
    predicate: Callable[[], T | None],
    what: str,
    *,
    timeout: float = WAIT_SECONDS,
    context: Callable[[], str] | None = None,
) -> T:
    """Return the first truthy value of ``predicate()``, polled every 50 ms.

    Raise AssertionError naming ``what`` (and ``context()``, e.g. a log tail) after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f"\n{context()}" if context is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(POLL_SECONDS)


@dataclass
class Reply:
    """An HTTP answer: status, headers and body."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """Return the body parsed as JSON."""
        return json.loads(self.body)

    @property
    def text(self) -> str:
        """Return the body as UTF-8 text."""
        return self.body.decode("utf-8")


def http(
    method: str,
    url: str,
    body: Any = None,
    *,
    token: str | None = None,
    timeout: float = 5.0,
) -> Reply:
    """Send one request (``body`` as JSON when given) and return the reply, errors included.

    Raise OSError when nothing answers (connection refused, reset, timeout).
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.read(), dict(error.headers))


def try_http(method: str, url: str, **kwargs: Any) -> Reply | None:
    """Return :func:`http`'s reply, or None when nothing answers yet."""
    try:
        return http(method, url, **kwargs)
    except OSError:
        return None


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Return every sample of a Prometheus text exposition: (name, labels) → value."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return samples


def series(
    samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> dict[frozenset[tuple[str, str]], float]:
    """Return the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return {
        sample_labels: value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and wanted <= sample_labels
    }


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no {path.name})"
    return f"--- last lines of {path.name} ---\n" + "\n".join(text.splitlines()[-lines:])


class ChildProcess:
    """A subprocess whose stdout and stderr go to files, stopped for sure by :meth:`stop`."""

    def __init__(
        self, args: Sequence[str], env: Mapping[str, str], log_dir: Path, name: str
    ) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / f"{name}.stdout"
        self.stderr_path = log_dir / f"{name}.stderr"
        self._stdout: IO[bytes] = self.stdout_path.open("wb")
        self._stderr: IO[bytes] = self.stderr_path.open("wb")
        try:
            self.process = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=self._stdout,
                stderr=self._stderr,
                env=dict(env),
            )
        except BaseException:
            self._close_files()
            raise

    @property
    def pid(self) -> int:
        """Return the process id."""
        return self.process.pid

    def alive(self) -> bool:
        """Return True while the process has not exited."""
        return self.process.poll() is None

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the process."""
        self.process.send_signal(signum)

    def wait(self, timeout: float = STOP_SECONDS) -> int:
        """Return the exit code, waiting at most ``timeout``; raise AssertionError after it."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"process {self.pid} still running after {timeout:.0f} s\n{self.logs()}"
            ) from None

    def logs(self) -> str:
        """Return the last lines of stdout and stderr (for failure messages)."""
        return f"{_tail(self.stdout_path)}\n{_tail(self.stderr_path)}"

    def stderr(self) -> str:
        """Return everything written to stderr so far."""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """Stop the process: SIGTERM, then SIGKILL if it has not exited within 10 s."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(STOP_SECONDS)
        finally:
            self._close_files()

    def _close_files(self) -> None:
        self._stdout.close()
        self._stderr.close()


# --- the simulator -----------------------------------------------------------------------------


class SimulatorProcess:
    """``akeeba-backupd simulate`` in a subprocess, driven through its control API."""

    def __init__(self, child: ChildProcess, port: int, count: int) -> None:
        self.child = child
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.count = count
        self._next = 1

    @classmethod
    def start(
        cls,
        log_dir: Path,
        *,
        sites: int,
        steps: int = 5,
        step_seconds: float = 0.0,
        api: str = "v2",
        secret: str = SIM_SECRET,
    ) -> SimulatorProcess:
        """Start a fleet of ``sites`` sites on a port the simulator picks; return once it serves."""
        args = [
            *console_command(),
            "simulate",
            "--sites",
            str(sites),
            "--port",
            "0",
            "--steps",
            str(steps),
            "--step-seconds",
            str(step_seconds),
            "--api",
            api,
            "--secret",
            secret,
        ]
        child = ChildProcess(args, child_environment(), log_dir, "simulator")
        try:

            def announced_port() -> int | None:
                match = re.search(r"on http://127\.0\.0\.1:(\d+)/", child.stdout_path.read_text())
                if match is None:
                    if not child.alive():
                        raise AssertionError(f"the simulator exited\n{child.logs()}")
                    return None
                return int(match.group(1))

            port = wait_until(announced_port, "the simulator's port", context=child.logs)
            simulator = cls(child, port, sites)
            wait_until(
                lambda: try_http("GET", f"{simulator.base}/_sim/sites/site-0001"),
                "the simulator's control API",
                context=child.logs,
            )
        except BaseException:
            child.stop()
            raise
        return simulator

    def take(self) -> str:
        """Return the name of a site no test has used yet (site-0001, site-0002, ...)."""
        if self._next > self.count:
            raise AssertionError(f"the simulator has only {self.count} sites; start more")
        name = f"site-{self._next:04d}"
        self._next += 1
        return name

    def site_url(self, name: str) -> str:
        """Return the base URL of simulated site ``name``."""
        return f"{self.base}/{name}/"

    def summary(self, name: str) -> dict[str, Any]:
        """Return the control API's view of site ``name`` (start_count, records, ...)."""
        reply = http("GET", f"{self.base}/_sim/sites/{name}")
        assert reply.status == 200, reply.text
        result: dict[str, Any] = reply.json()
        return result

    def set_faults(self, name: str, **faults: Any) -> None:
        """Change the faults of site ``name``."""
        reply = http("POST", f"{self.base}/_sim/sites/{name}/faults", faults)
        assert reply.status == 200, reply.text

    def set_settings(self, name: str, **settings: Any) -> None:
        """Change settings (steps, step_seconds, warnings, ...) of site ``name``."""
        reply = http("POST", f"{self.base}/_sim/sites/{name}/settings", settings)
        assert reply.status == 200, reply.text

    def stop(self) -> None:
        """Stop the simulator process."""
        self.child.stop()


# --- configuration ---------------------------------------------------------------------------


@dataclass
class SiteEntry:
    """One site of a generated config: a daemon-side name, the simulated site it talks to."""

    name: str
    url: str
    schedules: Sequence[tuple[str, str]] = (("nightly", "0 3 * * *"),)
    """(name, cron) pairs."""


def config_document(
    port: int,
    sites: Sequence[SiteEntry],
    *,
    defaults: Mapping[str, Any] | None = None,
    token_file: Path | None = None,
) -> dict[str, Any]:
    """Return a daemon configuration (as a mapping) listening on 127.0.0.1:``port``."""
    document: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "defaults": {"retry_backoff": "0s", "request_timeout": "10s", **(defaults or {})},
        "sites": [
            {
                "name": site.name,
                "url": site.url,
                "platform": "joomla",
                "api": "v2",
                "secret_env": SECRET_VARIABLE,
                "schedules": [{"name": name, "cron": cron} for name, cron in site.schedules],
            }
            for site in sites
        ],
    }
    if token_file is not None:
        document["api_token_file"] = str(token_file)
    return document


def write_config(path: Path, document: Mapping[str, Any]) -> Path:
    """Write ``document`` as YAML to ``path`` and return ``path``."""
    path.write_text(yaml.safe_dump(dict(document), sort_keys=False, width=200), encoding="utf-8")
    return path


# --- the daemon --------------------------------------------------------------------------------


class DaemonProcess:
    """``akeeba-backupd run`` in a subprocess, reached over HTTP."""

    def __init__(self, child: ChildProcess, port: int, config_path: Path) -> None:
        self.child = child
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.config_path = config_path

    @classmethod
    def start(
        cls,
        config_path: Path,
        port: int,
        state_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        wrapper: Sequence[str] = (),
        wait_ready: bool = True,
    ) -> DaemonProcess:
        """Start the daemon on ``config_path`` (which listens on ``port``); return once /readyz
        answers 200 (unless ``wait_ready`` is False). ``wrapper`` is prefixed to the command."""
        environ = child_environment(
            {SECRET_VARIABLE: SIM_SECRET, "STATE_DIRECTORY": str(state_dir), **(env or {})}
        )
        args = [
            *wrapper,
            *console_command(),
            "--log-level",
            "debug",
            "run",
            "--config",
            str(config_path),
            *extra_args,
        ]
        child = ChildProcess(args, environ, state_dir / "logs", f"daemon-{port}")
        daemon = cls(child, port, config_path)
        if wait_ready:
            try:
                daemon.wait_ready()
            except BaseException:
                child.stop()
                raise
        return daemon

    @property
    def pid(self) -> int:
        """Return the daemon's process id."""
        return self.child.pid

    def wait_ready(self) -> None:
        """Wait until /readyz answers 200; raise AssertionError if the daemon exits first."""

        def ready() -> bool:
            if not self.child.alive():
                raise AssertionError(f"the daemon exited early\n{self.child.logs()}")
            reply = try_http("GET", f"{self.base}/readyz")
            return reply is not None and reply.status == 200

        wait_until(ready, "/readyz to answer 200", context=self.child.logs)

    def get(self, path: str) -> Reply:
        """GET ``path`` from the daemon."""
        return http("GET", self.base + path)

    def get_json(self, path: str) -> Any:
        """GET ``path`` and return the JSON body of its 200 answer."""
        reply = self.get(path)
        assert reply.status == 200, f"GET {path}: {reply.status} {reply.text}"
        return reply.json()

    def post(self, path: str, *, token: str | None = None) -> Reply:
        """POST to ``path`` (with a bearer token when given)."""
        return http("POST", self.base + path, token=token)

    def trigger(self, site: str, schedule: str, *, token: str | None = None) -> Any:
        """Run ``site``/``schedule`` now through the API; return the schedule's JSON."""
        reply = self.post(f"/api/v1/schedules/{site}/{schedule}/run", token=token)
        assert reply.status == 202, f"run now: {reply.status} {reply.text}"
        return reply.json()

    def metrics_text(self) -> str:
        """Return the /metrics body (Prometheus text format)."""
        reply = self.get("/metrics")
        assert reply.status == 200, reply.text
        return reply.text

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Return every sample of /metrics."""
        return metric_samples(self.metrics_text())

    def sample(self, name: str, **labels: str) -> float | None:
        """Return the value of the sample ``name`` with exactly ``labels``, or None."""
        return self.samples().get((name, frozenset(labels.items())))

    def wait_for_sample(self, name: str, value: float, **labels: str) -> None:
        """Wait until /metrics has ``name{labels}`` equal to ``value``."""
        wait_until(
            lambda: self.sample(name, **labels) == value,
            f"{name}{labels} == {value}",
            context=self.child.logs,
        )

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the daemon."""
        self.child.send_signal(signum)

    def wait(self, timeout: float = STOP_SECONDS) -> int:
        """Return the daemon's exit code, waiting at most ``timeout``."""
        return self.child.wait(timeout)

    def logs(self) -> str:
        """Return the tail of the daemon's output."""
        return self.child.logs()

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL)."""
        self.child.stop()


@contextlib.contextmanager
def running_daemon(
    config_path: Path, port: int, state_dir: Path, **kwargs: Any
) -> Iterator[DaemonProcess]:
    """Run a daemon for the duration of the ``with`` block; stop it for sure afterwards."""
    daemon = DaemonProcess.start(config_path, port, state_dir, **kwargs)
    try:
        yield daemon
    finally:
        daemon.stop()


def run_cli(
    args: Sequence[str], *, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``akeeba-backupd ARGS`` to completion (at most 20 s) and return what it did."""
    return subprocess.run(
        [*console_command(), *args],
        env=child_environment({SECRET_VARIABLE: SIM_SECRET, **(env or {})}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
        check=False,
    )


# --- a fake systemd notify socket --------------------------------------------------------------


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's ``NOTIFY_SOCKET``.

    A thread receives every datagram (decoded as ASCII, which sd_notify text must be) into
    :attr:`messages`, each with the CLOCK_MONOTONIC time it arrived in microseconds.
    """

    def __init__(self, directory: Path) -> None:
        path = directory / "notify.sock"
        self._scratch: str | None = None
        if len(str(path).encode()) > 100:  # sun_path holds 108 bytes
            self._scratch = tempfile.mkdtemp(prefix="abd-notify-")
            path = Path(self._scratch) / "notify.sock"
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.05)
        self._lock = threading.Condition()
        self._messages: list[tuple[int, str]] = []
        self._errors: list[str] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-socket", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """Return the NOTIFY_SOCKET value that points here."""
        return str(self.path)

    def _receive(self) -> None:
        while not self._closing.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            arrived = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            try:
                text = data.decode("ascii")
            except UnicodeDecodeError:
                with self._lock:
                    self._errors.append(repr(data))
                text = data.decode("ascii", errors="replace")
            with self._lock:
                self._messages.append((arrived, text))
                self._lock.notify_all()

    @property
    def messages(self) -> list[str]:
        """Return every datagram received so far, in order."""
        with self._lock:
            return [text for _, text in self._messages]

    @property
    def non_ascii(self) -> list[str]:
        """Return the datagrams that were not ASCII (there must be none)."""
        with self._lock:
            return list(self._errors)

    def wait_for(self, predicate: Callable[[str], bool], what: str, *, start: int = 0) -> int:
        """Return the index of the first message from ``start`` on that satisfies ``predicate``."""

        def find() -> int | None:
            for index, text in enumerate(self.messages[start:], start):
                if predicate(text):
                    return index + 1  # truthy even for the first message
            return None

        return wait_until(find, what, context=lambda: f"received so far: {self.messages!r}") - 1

    def close(self) -> None:
        """Stop the receiver thread and remove the socket."""
        self._closing.set()
        self._thread.join(5)
        self._sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
        if self._scratch is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._scratch)


def fields(datagram: str) -> dict[str, str]:
    """Return the ``KEY=value`` lines of one sd_notify datagram as a mapping."""
    return dict(line.split("=", 1) for line in datagram.splitlines() if "=" in line)
