"""The container image without a Docker engine.

The Dockerfile and .dockerignore are checked as text (multi-stage on one pinned slim base, non-root
numeric user, offline install without caches or compilers, the console script as entrypoint), and the
image's install steps are replayed on this machine: the build context .dockerignore lets through, `pip wheel`
of it, an offline install into a fresh venv, then the console script run from outside the repo with the
image's own CMD and HEALTHCHECK.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from exporter import __version__
from tests.realservers import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
NOT_IN_CONTEXT = (
    ".git/HEAD",
    ".venv/bin/python",
    "tests/test_cli.py",
    "tests/data/x.csv",
    "benchmarks/cycle.py",
    ".benchmarks/x.json",
    "docs/quality.md",
    "helm/anomaly-exporter/Chart.yaml",
    "dashboards/anomaly-exporter.json",
    "deploy/compose/rules.yaml",
    ".hypothesis/examples/x",
    ".pytest_cache/v",
    ".mypy_cache/x",
    ".ruff_cache/x",
    "build/lib/x.py",
    "dist/x.whl",
    "prometheus_anomaly_exporter.egg-info/PKG-INFO",
    "exporter/__pycache__/cli.cpython-311.pyc",
    "exporter/.cli.py.swp",
    "alerts.json",
)
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|cython|gfortran|python3?-dev)\b")


# --------------------------------------------------------------------------------------------------
# A small Dockerfile reader: enough for this file (no heredocs, no escape directive).


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # the rest, continuation lines joined with single spaces
    line: int  # where it starts (1-based)

    def exec_form(self) -> list[str]:
        """The JSON array form of CMD/ENTRYPOINT/HEALTHCHECK CMD; fails the test for the shell form."""
        text = self.args.split(" CMD ", 1)[-1].strip() if self.keyword == "HEALTHCHECK" else self.args
        assert text.startswith("["), f"line {self.line}: {self.keyword} should use the exec (JSON) form"
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value


def parse_dockerfile(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):  # comments may sit inside a continued instruction, too
            continue
        if not buf:
            start = number
        continued = line.endswith("\\")
        buf.append(line[:-1].strip() if continued else line)
        if not continued:
            keyword, _, args = " ".join(buf).partition(" ")
            out.append(Instruction(keyword.upper(), args.strip(), start))
            buf = []
    assert not buf, "the Dockerfile ends inside a continued instruction"
    return out


def substitute(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m[1] or m[2], m[0]), text)


@dataclass(frozen=True)
class Stage:
    image: str  # with global ARG defaults substituted
    name: str
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.image}: no {keyword}"
        return found[-1]


def stages(instructions: list[Instruction]) -> list[Stage]:
    global_args: dict[str, str] = {}
    result: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.args.split()
            image = substitute(words[0], global_args)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else ""
            result.append(Stage(image, name, []))
        elif not result:
            assert ins.keyword == "ARG", f"line {ins.line}: only ARG may come before the first FROM"
            key, _, default = ins.args.partition("=")
            global_args[key] = default.strip('"')
        else:
            result[-1].instructions.append(ins)
    return result


def run_command(ins: Instruction) -> str:
    """A RUN's shell command without its leading --mount/--network options."""
    words = ins.args.split(" ")
    while words and words[0].startswith("--"):
        words.pop(0)
    return " ".join(words)


def shell_commands(stage: Stage) -> list[str]:
    return [part.strip() for ins in stage.all("RUN") for part in re.split(r"&&|;|\|\|", run_command(ins))]


def build_stages() -> list[Stage]:
    return stages(parse_dockerfile((ROOT / "Dockerfile").read_text(encoding="utf-8")))


# --------------------------------------------------------------------------------------------------
# .dockerignore with Docker's matching rules (moby/patternmatcher): patterns are matched against a path and
# each of its parent directories; the last pattern that matches decides; `!` re-includes.


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out += "(.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(f"^{out}$")


def dockerignore_rules() -> list[tuple[bool, str, re.Pattern[str]]]:
    """(include, pattern, regex) in file order."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((include, pattern, _pattern_regex(pattern)))
    return rules


def is_excluded(path: str, rules: list[tuple[bool, str, re.Pattern[str]]]) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for include, _, regex in rules:
        if any(regex.match(c) for c in candidates):
            excluded = not include
    return excluded


def build_context() -> list[str]:
    """Repository files (relative, '/'-separated) that `docker build .` would send."""
    rules = dockerignore_rules()
    includes = [pattern for include, pattern, _ in rules if include]
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = Path(dirpath).relative_to(ROOT).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        # Don't descend into an excluded directory unless some `!` pattern could re-include something in it.
        dirnames[:] = [
            d
            for d in dirnames
            if not is_excluded(prefix + d, rules)
            or any(p.startswith(prefix + d + "/") or p.startswith("*") for p in includes)
        ]
        files += [prefix + f for f in filenames if not is_excluded(prefix + f, rules)]
    return sorted(files)


# --------------------------------------------------------------------------------------------------
# The Dockerfile as text


def test_dockerfile_is_multi_stage_on_one_pinned_slim_base() -> None:
    all_stages = build_stages()
    assert len(all_stages) >= 2, "expected a builder stage and a final stage"
    final = all_stages[-1]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", final.image), final.image
    assert all(s.image == final.image for s in all_stages), [s.image for s in all_stages]
    builder = all_stages[0]
    assert builder.name, "the builder stage should be named (FROM ... AS builder)"
    assert any(
        c.startswith("pip wheel") and "--wheel-dir /wheels" in c and c.endswith(" .")
        for c in shell_commands(builder)
    ), "the builder should build wheels of the project and its dependencies into /wheels"


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    final = build_stages()[-1]
    user = final.last("USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER {user}: needs a numeric, non-zero UID"
    assert not gid or (gid.isdigit() and int(gid) > 0), f"USER {user}: needs a numeric, non-zero GID"
    commands = shell_commands(final)
    assert any(c.startswith("useradd") and f"--uid {uid}" in c and "--system" in c for c in commands)
    assert any(c.startswith("groupadd") and f"--gid {gid or uid}" in c for c in commands)
    # The state directory --storage.path points at must belong to that user.
    assert any(
        c.startswith("install --directory")
        and f"--owner={uid}" in c
        and c.endswith("/var/lib/anomaly-exporter")
        for c in commands
    )


def test_final_stage_installs_offline_without_caches_or_compilers() -> None:
    final = build_stages()[-1]
    commands = shell_commands(final)
    for c in commands:
        if "apt-get install" in c or "apk add" in c:
            assert not COMPILERS.search(c), f"compiler installed in the final stage: {c}"
    installs = [c for c in commands if re.search(r"\bpip\b.*\binstall\b", c)]
    assert installs, "the final stage should pip install the wheels"
    env = " ".join(i.args for i in final.all("ENV"))
    for c in installs:
        assert "--no-index" in c and "--find-links=/wheels" in c, c
        assert "--no-cache-dir" in c or "PIP_NO_CACHE_DIR=1" in env, c
    assert "PIP_NO_CACHE_DIR=1" in env
    # The wheels never become part of a layer: bind-mounted from the builder for the install step only.
    wheel_runs = [i for i in final.all("RUN") if "/wheels" in i.args]
    assert all(
        "--mount=type=bind,from=builder,source=/wheels,target=/wheels" in i.args for i in wheel_runs
    ), "mount the wheels from the builder (a COPY would keep them in the image even after rm)"
    assert not [i for i in final.all("COPY") if "--from" in i.args and "/wheels" in i.args]


def test_final_stage_entrypoint_cmd_port_env_and_labels() -> None:
    final = build_stages()[-1]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert final.last("ENTRYPOINT").exec_form() == ["anomaly-exporter"]
    assert "anomaly-exporter" in scripts
    cmd = final.last("CMD").exec_form()
    assert "--config.file=/etc/anomaly-exporter/rules.yaml" in cmd
    assert "--storage.path=/var/lib/anomaly-exporter" in cmd
    copies = [i.args.split() for i in final.all("COPY") if "--from" not in i.args]
    assert ["rules.yaml", "/etc/anomaly-exporter/rules.yaml"] in copies
    assert "9866" in final.last("EXPOSE").args.split()
    env = " ".join(i.args for i in final.all("ENV"))
    for setting in ("PATH=/opt/venv/bin:$PATH", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"):
        assert setting in env.split(), setting
    assert final.last("WORKDIR").args.startswith("/")
    health = final.last("HEALTHCHECK").exec_form()
    assert health == ["anomaly-exporter", "healthcheck"]
    labels = " ".join(i.args for i in final.all("LABEL"))
    for key in ("title", "description", "licenses", "version", "revision", "created"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    version_arg = [i.args for i in final.all("ARG") if i.args.startswith("VERSION=")]
    assert version_arg == [f"VERSION={__version__}"], "keep the image version label in step with the package"


def test_dockerignore_sends_only_what_the_build_needs() -> None:
    rules = dockerignore_rules()
    for path in NOT_IN_CONTEXT:
        assert is_excluded(path, rules), f"{path} would be sent to the Docker daemon"
    context = build_context()
    assert not [f for f in context if f.startswith(("tests/", "benchmarks/", ".git/", ".venv/"))]
    assert not [f for f in context if "__pycache__" in f]
    # Every file the Dockerfile copies is in the context.
    for stage in build_stages():
        for ins in stage.all("COPY"):
            if "--from" in ins.args:
                continue
            *sources, _dest = [w for w in ins.args.split() if not w.startswith("--")]
            for src in sources:
                assert any(f == src or f.startswith(src.rstrip("/") + "/") for f in context), (
                    f"line {ins.line}: COPY {src} but .dockerignore leaves it out of the build context"
                )


# --------------------------------------------------------------------------------------------------
# The install steps, replayed


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float, what: str) -> str:
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{what} timed out after {timeout}s: {shlex.join(cmd)}\n{exc.stdout}\n{exc.stderr}")
    print(f"{what}: {time.monotonic() - started:.1f}s")
    if proc.returncode != 0:
        pytest.fail(
            f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
            f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}",
            pytrace=False,
        )
    return proc.stdout


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")
    return env


@pytest.mark.integration
def test_image_install_steps_work_in_a_fresh_venv(tmp_path: Path) -> None:
    """Builder: `pip wheel --wheel-dir /wheels .` on the build context. Final: `python -m venv --without-pip`,
    `pip --python <venv> install --no-index --find-links=/wheels`. Dependencies come from pip's configured
    index (cached wheels are fine). Then the console script, outside the repo: --version, check, and the
    image's CMD serving /-/healthy as probed by the image's HEALTHCHECK. Takes ~25 s, mostly pip."""
    env = _clean_env()
    context, wheels, venv, root = (tmp_path / d for d in ("context", "wheels", "venv", "root"))
    for rel in build_context():
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, context / rel)
    pip = [sys.executable, "-m", "pip"]
    _run(
        [*pip, "wheel", "--wheel-dir", str(wheels), "."], cwd=context, env=env, timeout=900, what="pip wheel"
    )
    _run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        cwd=tmp_path,
        env=env,
        timeout=120,
        what="venv",
    )
    _run(
        [
            *pip,
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-index",
            "--no-cache-dir",
            f"--find-links={wheels}",
            "prometheus-anomaly-exporter",
        ],
        cwd=tmp_path,
        env=env,
        timeout=900,
        what="pip install (offline, from the wheels)",
    )

    # The image's filesystem, under root/: the example rules where COPY puts them, the state directory.
    final = build_stages()[-1]
    for ins in final.all("COPY"):
        src, dest = ins.args.split()
        (root / dest.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(context / src, root / dest.lstrip("/"))
    (root / "var/lib/anomaly-exporter").mkdir(parents=True)
    workdir = root / final.last("WORKDIR").args.lstrip("/")
    exe = str(venv / "bin" / "anomaly-exporter")

    out = _run([exe, "--version"], cwd=workdir, env=env, timeout=60, what="--version")
    assert out.strip() == f"anomaly-exporter {__version__}"
    out = _run([exe, "check"], cwd=workdir, env=env, timeout=60, what="check (rules.yaml in WORKDIR)")
    assert ": OK, " in out

    # The code that runs is the installed package, not the source tree, and the package is just `exporter`.
    info = _run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import exporter, json, importlib.metadata as m; "
            "files = m.files('prometheus-anomaly-exporter'); "
            "print(json.dumps([exporter.__file__, [str(f) for f in files]]))",
        ],
        cwd=workdir,
        env=env,
        timeout=60,
        what="package contents",
    )
    location, files = json.loads(info)
    assert Path(location).is_relative_to(venv), location
    installed = {f.split("/")[0] for f in files if not f.startswith("..")}
    assert installed == {"exporter", f"prometheus_anomaly_exporter-{__version__}.dist-info"}, installed
    site_packages = Path(location).parents[1]
    assert not {"tests", "benchmarks", "docs"} & {p.name for p in site_packages.iterdir()}

    # The image's CMD (paths mapped under root/), on a free port; the HEALTHCHECK command must see it healthy.
    port = free_port()
    args = [a.replace("=/", f"={root}/") for a in final.last("CMD").exec_form()]
    probe = final.last("HEALTHCHECK").exec_form()
    probe = [str(venv / "bin" / probe[0]), *probe[1:]]
    log = tmp_path / "exporter.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [exe, *args, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:

        def healthy() -> bool:
            assert proc.poll() is None, f"exporter exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
            # the exporter is pid 1 in the container; the check reads the port from its command line
            check = [*probe, "--pid", str(proc.pid)]
            return subprocess.run(check, env=env, capture_output=True, timeout=10).returncode == 0

        wait_until(healthy, timeout=60, interval=0.3, what="HEALTHCHECK to pass")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, f"exporter did not stop cleanly on SIGTERM:\n{log.read_text()[-4000:]}"
    stopped = [*probe, "--pid", str(proc.pid), f"--web.listen-address=127.0.0.1:{port}"]
    assert subprocess.run(stopped, env=env, capture_output=True, timeout=10).returncode != 0, (
        "the HEALTHCHECK passes with nothing listening"
    )
