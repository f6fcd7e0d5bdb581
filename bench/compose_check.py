"""Static checks of ``compose.yaml`` and the ``Dockerfile`` against the code they run.

There is no Docker engine in CI, so neither file can be started there. These checks catch what
would otherwise only show up on ``docker compose up``: a command that runs a module that does
not exist, a ``VIGIL_*`` variable that is misspelt or has a value the flow rejects, a
``depends_on`` that names a missing service or a bad condition, a one-shot topic set-up that
creates other topics than the flow reads, colliding published ports, and an image that does not
install the packages ``pyproject.toml`` declares.

Every ``check_*`` function returns a list of problems (empty = fine), so a test can assert on
each and the command line can print them all at once::

    python -m bench.compose_check            # checks ./compose.yaml and ./Dockerfile

Compose ``${VAR:-default}`` interpolation is resolved with the defaults (an empty
environment) unless ``--environ`` is given, so the check covers what is committed.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fnmatch
import importlib
import importlib.util
import io
import json
import os
import re
import shlex
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from flows.settings import PREFIX, Settings, SettingsError, settings_table

ROOT = Path(__file__).resolve().parents[1]
CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_INTERPOLATION = re.compile(
    rf"\$(?:(?P<dollar>\$)|\{{(?P<braced>{_NAME})(?:(?P<op>:?[-?+])(?P<arg>[^}}]*))?\}}"
    rf"|(?P<bare>{_NAME})|(?P<bad>\{{))"
)
_PYTHON = re.compile(r"^python(?:3(?:\.\d+)?)?$")
_SHELLS = ("sh", "bash", "dash", "ash")
_METRICS_URL = re.compile(r"https?://(?:127\.0\.0\.1|localhost|0\.0\.0\.0):(\d+)/metrics")
# python options that take a value (`python -W error -m x`)
_PYTHON_VALUE_OPTS = ("-W", "-X", "--check-hash-based-pycs")
# bytewax.run options that take a value, from `python -m bytewax.run --help`
_BYTEWAX_VALUE_OPTS = {
    "-r": "recovery", "--recovery-directory": "recovery",
    "-s": "snapshot", "--snapshot-interval": "snapshot",
    "-b": "backup", "--backup-interval": "backup",
    "-w": "workers", "--workers-per-process": "workers",
    "-i": "process", "--process-id": "process",
    "-a": "addresses", "--addresses": "addresses",
}


# --- Compose interpolation ----------------------------------------------------------------------


class InterpolationError(ValueError):
    """A ``${VAR:?message}`` whose variable is unset, or a malformed ``${``."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Resolve Compose ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:?err}``, ``$$``."""

    def sub(m: re.Match[str]) -> str:
        if m["dollar"]:
            return "$"
        if m["bad"]:
            raise InterpolationError(f"invalid interpolation in {text!r}")
        name = m["braced"] or m["bare"]
        op, arg = m["op"], m["arg"] or ""
        value = env.get(name)
        is_set = value is not None
        filled = is_set and value != ""
        if op in (":-", "-"):
            return value if (filled if op == ":-" else is_set) else interpolate(arg, env)
        if op in (":?", "?"):
            if not (filled if op == ":?" else is_set):
                raise InterpolationError(f"${{{name}}} is required: {arg or 'not set'}")
            return value or ""
        if op in (":+", "+"):
            return interpolate(arg, env) if (filled if op == ":+" else is_set) else ""
        return value or ""

    return _INTERPOLATION.sub(sub, text)


def interpolation_variables(obj: Any) -> set[str]:
    """Names of every variable a Compose document interpolates, defaults included."""
    found: set[str] = set()
    for text in _strings(obj):
        for m in _INTERPOLATION.finditer(text):
            name = m["braced"] or m["bare"]
            if name:
                found.add(name)
                found |= interpolation_variables(m["arg"] or "")
    return found


def resolve(obj: Any, env: Mapping[str, str], problems: list[str] | None = None) -> Any:
    """A copy of a Compose document with every string value interpolated."""
    problems = [] if problems is None else problems
    if isinstance(obj, str):
        try:
            return interpolate(obj, env)
        except InterpolationError as exc:
            problems.append(str(exc))
            return obj
    if isinstance(obj, dict):
        return {k: resolve(v, env, problems) for k, v in obj.items()}
    if isinstance(obj, list):
        return [resolve(v, env, problems) for v in obj]
    return obj


def required_variables(obj: Any) -> set[str]:
    """Variables interpolated as ``${VAR:?message}``: the operator must set them."""
    found: set[str] = set()
    for text in _strings(obj):
        for m in _INTERPOLATION.finditer(text):
            if m["op"] in (":?", "?") and m["braced"]:
                found.add(m["braced"])
    return found


def defaults_env(compose: Any) -> dict[str, str]:
    """The environment the checks interpolate with by default: empty, except a placeholder
    for each required variable (checking must not need the operator's secrets)."""
    return {name: f"placeholder-{name.lower()}" for name in required_variables(compose)}


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def load_compose(path: Path) -> dict[str, Any]:
    """The Compose file as plain data (YAML anchors and ``<<`` merges applied)."""
    import yaml  # from the dev extra; imported here so `--help` works without it

    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a Compose mapping")
    return data


# --- Dockerfile ---------------------------------------------------------------------------------


@dataclass
class Stage:
    """One ``FROM`` stage of a Dockerfile: its base, name and instructions in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        """Arguments of every instruction ``keyword`` (upper case) in this stage."""
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    """A parsed Dockerfile; the last stage is the image that runs."""

    stages: list[Stage]

    @property
    def runtime(self) -> Stage:
        """The final stage: what ``docker build`` tags."""
        return self.stages[-1]

    def env(self) -> dict[str, str]:
        """``ENV`` values of the final stage (later ones win)."""
        out: dict[str, str] = {}
        for args in self.runtime.all("ENV"):
            out.update(_parse_env(args))
        return out

    def cmd(self) -> list[str] | None:
        """The final stage's ``CMD`` as an argv (shell form becomes ``/bin/sh -c``)."""
        cmds = self.runtime.all("CMD")
        return _exec_or_shell(cmds[-1]) if cmds else None

    def entrypoint(self) -> list[str] | None:
        """The final stage's ``ENTRYPOINT`` as an argv, if it has one."""
        eps = self.runtime.all("ENTRYPOINT")
        return _exec_or_shell(eps[-1]) if eps else None

    def healthcheck(self) -> list[str] | None:
        """The final stage's ``HEALTHCHECK`` test as a Compose-style ``["CMD", ...]`` list."""
        checks = self.runtime.all("HEALTHCHECK")
        if not checks or checks[-1].strip().upper() == "NONE":
            return None
        words = checks[-1].split(None, 1)
        while words and words[0].startswith("--"):
            words = words[1].split(None, 1) if len(words) > 1 else []
        if not words or words[0].upper() != "CMD" or len(words) < 2:
            return None
        rest = words[1].strip()
        if rest.startswith("["):
            return ["CMD", *json.loads(rest)]
        return ["CMD-SHELL", rest]

    def user(self) -> str | None:
        """The user the final stage runs as (``None``: never set, i.e. root)."""
        users = self.runtime.all("USER")
        return users[-1].strip() if users else None


def parse_dockerfile(text: str) -> Dockerfile:
    """Parse instructions (comments dropped, ``\\`` continuations joined) into stages."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and pending):
            continue  # comments (also inside continuations) and blank continuation lines
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        if line or pending:
            logical.append((pending + line).strip())
        pending = ""
    if pending.strip():
        logical.append(pending.strip())
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0] if words else "", name))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return Dockerfile(stages)


def _parse_env(args: str) -> dict[str, str]:
    words = shlex.split(args)
    if words and "=" not in words[0]:  # legacy `ENV KEY value with spaces`
        return {words[0]: args.split(None, 1)[1].strip() if len(words) > 1 else ""}
    return dict(w.split("=", 1) for w in words if "=" in w)


def _exec_or_shell(args: str) -> list[str]:
    args = args.strip()
    if args.startswith("["):
        with contextlib.suppress(ValueError):
            return [str(a) for a in json.loads(args)]
    return ["/bin/sh", "-c", args]


def _copy_args(args: str) -> tuple[dict[str, str], list[str], str]:
    """(``--flag=value`` options, sources, destination) of a COPY/ADD instruction."""
    words = shlex.split(args) if not args.lstrip().startswith("[") else json.loads(args)
    flags: dict[str, str] = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    if len(words) < 2:
        return flags, [], words[0] if words else ""
    return flags, words[:-1], words[-1]


# --- Project layout -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Project:
    """What ``pyproject.toml`` says is installed, and the repository it lives in."""

    root: Path
    packages: tuple[str, ...]  # top-level package folders, e.g. ("api", "bench", ...)
    readme: str | None
    requires_python: str

    @classmethod
    def load(cls, root: Path = ROOT) -> Project:
        """Read ``root/pyproject.toml``."""
        data = tomllib.loads((root / "pyproject.toml").read_text())
        find = data.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
        include = find.get("include", ["*"])
        exclude = find.get("exclude", [])
        packages = sorted(
            p.name
            for p in root.iterdir()
            if (p / "__init__.py").is_file()
            and any(fnmatch.fnmatchcase(p.name, pat) for pat in include)
            and not any(fnmatch.fnmatchcase(p.name, pat) for pat in exclude)
        )
        readme = data.get("project", {}).get("readme")
        if isinstance(readme, dict):
            readme = readme.get("file")
        return cls(
            root, tuple(packages), readme, data.get("project", {}).get("requires-python", "")
        )


# --- Commands: which Python modules a service runs ----------------------------------------------


@dataclass
class PythonCall:
    """One ``python -m MODULE ARGS`` or ``python -c CODE`` found in a command."""

    where: str
    module: str | None = None
    code: str | None = None
    args: list[str] = field(default_factory=list)


def _shell_commands(script: str) -> list[list[str]]:
    """Split a shell script into simple commands (argv lists), good enough for scanning."""
    lex = shlex.shlex(script, posix=True, punctuation_chars=";&|()<>\n")
    lex.whitespace = " \t\r"
    lex.whitespace_split = True
    lex.commenters = ""
    commands: list[list[str]] = [[]]
    try:
        for token in lex:
            if token and set(token) <= set(";&|()<>\n"):
                commands.append([])
            else:
                commands[-1].append(token)
    except ValueError:  # unbalanced quotes: scan what was read
        pass
    return [c for c in commands if c]


def _argv_commands(argv: list[str]) -> list[list[str]]:
    """Simple commands run by an argv; ``sh -c SCRIPT`` is looked into."""
    if len(argv) >= 3 and PurePosixPath(argv[0]).name in _SHELLS and argv[1] == "-c":
        return _shell_commands(argv[2])
    return [argv]


def python_calls(argv: list[str], where: str) -> list[PythonCall]:
    """Every ``python -m``/``python -c`` invocation in ``argv`` (or in its ``sh -c`` script)."""
    calls = []
    for words in _argv_commands(argv):
        for i, word in enumerate(words):
            if not _PYTHON.match(PurePosixPath(word).name):
                continue
            j = i + 1
            while j < len(words) and words[j].startswith("-") and words[j] not in ("-m", "-c"):
                j += 2 if words[j] in _PYTHON_VALUE_OPTS else 1
            if j + 1 < len(words) and words[j] == "-m":
                calls.append(PythonCall(where, module=words[j + 1], args=words[j + 2:]))
            elif j + 1 < len(words) and words[j] == "-c":
                calls.append(PythonCall(where, code=words[j + 1], args=words[j + 2:]))
            break
    return calls


def module_problem(module: str) -> str | None:
    """Why ``python -m module`` would fail to start, or None if the module is runnable."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return f"module {module!r} does not exist"
    if spec.submodule_search_locations is not None:
        main = f"{module}.__main__"
        with contextlib.suppress(ImportError, ValueError):
            if importlib.util.find_spec(main) is not None:
                return None
        return f"{module!r} is a package without __main__, so `python -m {module}` cannot run"
    return None


def _module_source(module: str) -> str | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin).read_text()


def dataflow_problem(import_str: str) -> str | None:
    """Why ``python -m bytewax.run IMPORT_STR`` would not find its dataflow (None if it would).

    Checked by reading the module's source for the attribute, not by importing it: importing a
    dataflow module builds the flow from the current environment.
    """
    module, _, attr = import_str.partition(":")
    attr = re.split(r"[(\s]", attr, maxsplit=1)[0] or "flow"
    if problem := module_problem(module):
        return f"dataflow {import_str!r}: {problem}"
    source = _module_source(module)
    if source is None:
        return None  # compiled module: nothing to read
    defined = re.compile(rf"^(?:{re.escape(attr)}\s*(?::[^=\n]+)?=|def {re.escape(attr)}\s*\()")
    if not any(defined.match(line) for line in source.splitlines()):
        return f"dataflow {import_str!r}: module {module!r} defines no top-level {attr!r}"
    return None


def _bytewax_run_args(args: list[str]) -> tuple[str | None, dict[str, str]]:
    """(import string, {option: value}) of ``python -m bytewax.run`` arguments."""
    import_str, opts, i = None, {}, 0
    while i < len(args):
        word = args[i]
        key, eq, inline = word.partition("=")
        if key in _BYTEWAX_VALUE_OPTS:
            value = inline if eq else (args[i + 1] if i + 1 < len(args) else "")
            opts[_BYTEWAX_VALUE_OPTS[key]] = value
            i += 1 if eq else 2
            continue
        if import_str is None and not word.startswith("-"):
            import_str = word
        i += 1
    return import_str, opts


def cli_args_problem(module: str, args: list[str]) -> str | None:
    """For a project CLI with a ``_parser()`` (argparse), whether it accepts ``args``."""
    source = _module_source(module)
    if source is None or "def _parser(" not in source or "__main__" not in source:
        return None
    parser = importlib.import_module(module)._parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as exc:
        if exc.code:
            last = err.getvalue().strip().splitlines()
            return f"`python -m {module} {shlex.join(args)}`: {last[-1] if last else exc}"
    return None


def code_problem(code: str) -> str | None:
    """Whether a ``python -c`` snippet parses and its imports exist."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return f"`python -c {code!r}` is not valid Python: {exc.msg}"
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        for name in names:
            try:
                missing = importlib.util.find_spec(name) is None
            except (ImportError, ValueError):
                missing = True
            if missing:
                return f"`python -c {code!r}` imports {name!r}, which does not exist"
    return None


# --- Services -----------------------------------------------------------------------------------


@dataclass
class Service:
    """One Compose service with what it effectively runs (image defaults applied)."""

    name: str
    spec: dict[str, Any]
    project_image: bool
    argv: list[str] | None
    env: dict[str, str]
    healthcheck: list[str] | None

    def health_argv(self) -> list[str] | None:
        """The healthcheck test as an argv."""
        return _test_argv(self.healthcheck)

    def python_calls(self) -> list[PythonCall]:
        """``python -m``/``-c`` calls in the command and in the healthcheck."""
        calls = python_calls(self.argv, f"{self.name}: command") if self.argv else []
        if health := self.health_argv():
            calls += python_calls(health, f"{self.name}: healthcheck")
        return calls


def _test_argv(test: list[str] | None) -> list[str] | None:
    if not test:
        return None
    if test[0] == "CMD":
        return list(test[1:])
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(test[1:])]
    return None


def _as_argv(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def _environment(spec: dict[str, Any]) -> dict[str, str]:
    raw = spec.get("environment") or {}
    out: dict[str, str] = {}
    items = raw.items() if isinstance(raw, dict) else (
        (e.partition("=")[0], e.partition("=")[2] if "=" in e else None) for e in raw
    )
    for key, value in items:
        if isinstance(value, bool):
            value = str(value).lower()  # what Compose v2 passes for a YAML true/false
        if value is None:
            continue  # taken from the shell running compose: nothing to check
        out[str(key)] = str(value)
    return out


def project_image_names(services: Mapping[str, Any]) -> set[str]:
    """Image names of services built from this repository's Dockerfile."""
    return {
        str(spec["image"])
        for spec in services.values()
        if isinstance(spec, dict) and _builds_here(spec) and spec.get("image")
    }


def _builds_here(spec: dict[str, Any]) -> bool:
    build = spec.get("build")
    if build is None:
        return False
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    return str(context).rstrip("/") in (".", "./", "") and dockerfile == "Dockerfile"


def services_of(compose: dict[str, Any], image: Dockerfile | None) -> list[Service]:
    """Every service with its effective command, environment and healthcheck."""
    specs = compose.get("services") or {}
    ours = project_image_names(specs)
    out = []
    for name, spec in specs.items():
        spec = spec if isinstance(spec, dict) else {}
        project = _builds_here(spec) or spec.get("image") in ours
        # Compose semantics: `entrypoint` replaces the image's and drops its CMD; `command`
        # replaces only the CMD.
        entrypoint = _as_argv(spec.get("entrypoint"))
        command = _as_argv(spec.get("command"))
        if project and image is not None:
            if command is None and entrypoint is None:
                command = image.cmd()
            if entrypoint is None:
                entrypoint = image.entrypoint()
        argv = (entrypoint or []) + (command or []) or None
        env = _environment(spec)
        if project and image is not None:
            env = {**image.env(), **env}
        health = spec.get("healthcheck")
        if isinstance(health, dict) and health.get("disable"):
            test = None
        elif isinstance(health, dict) and health.get("test"):
            raw = health["test"]
            test = ["CMD-SHELL", raw] if isinstance(raw, str) else [str(t) for t in raw]
            test = None if test[0] == "NONE" else test
        else:
            test = image.healthcheck() if project and image is not None else None
        out.append(Service(name, spec, project, argv, env, test))
    return out


def one_shot_services(compose: dict[str, Any]) -> set[str]:
    """Services something waits on with ``service_completed_successfully``: they exit."""
    out = set()
    for spec in (compose.get("services") or {}).values():
        for target, cond in _depends_on(spec if isinstance(spec, dict) else {}).items():
            if cond == "service_completed_successfully":
                out.add(target)
    return out


def _depends_on(spec: dict[str, Any]) -> dict[str, str]:
    deps = spec.get("depends_on") or {}
    if isinstance(deps, list):
        return {str(d): "service_started" for d in deps}
    return {
        str(k): str((v or {}).get("condition", "service_started")) if isinstance(v, dict)
        else "service_started"
        for k, v in deps.items()
    }


# --- The checks ---------------------------------------------------------------------------------


def check_images(compose: dict[str, Any]) -> list[str]:
    """Every service names an image to pull or a build context."""
    return [
        f"{name}: has neither `image` nor `build`"
        for name, spec in (compose.get("services") or {}).items()
        if not isinstance(spec, dict) or not (spec.get("image") or spec.get("build"))
    ]


def check_depends_on(compose: dict[str, Any], image: Dockerfile | None = None) -> list[str]:
    """depends_on targets exist, conditions are valid, healthy-waits have healthchecks."""
    specs = compose.get("services") or {}
    health = {s.name: s.healthcheck for s in services_of(compose, image)}
    problems = []
    for name, spec in specs.items():
        spec = spec if isinstance(spec, dict) else {}
        for target, cond in _depends_on(spec).items():
            if target not in specs:
                problems.append(f"{name}: depends_on undefined service {target!r}")
                continue
            if cond not in CONDITIONS:
                problems.append(
                    f"{name}: depends_on {target!r} with invalid condition {cond!r} "
                    f"(valid: {', '.join(CONDITIONS)})"
                )
            if cond == "service_healthy" and not health.get(target):
                problems.append(
                    f"{name}: waits for {target!r} to be healthy but it has no healthcheck"
                )
            target_spec = specs[target] if isinstance(specs[target], dict) else {}
            if target_spec.get("profiles") and not spec.get("profiles"):
                problems.append(
                    f"{name}: depends_on {target!r}, which only runs with profile(s) "
                    f"{target_spec['profiles']}"
                )
    problems += _cycles(specs)
    return problems


def _cycles(specs: Mapping[str, Any]) -> list[str]:
    graph = {n: [t for t in _depends_on(s if isinstance(s, dict) else {}) if t in specs]
             for n, s in specs.items()}
    state: dict[str, int] = {}
    found: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                found.append("depends_on cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    return found


def check_python_commands(compose: dict[str, Any], image: Dockerfile | None = None) -> list[str]:
    """Modules run with ``python -m`` exist, dataflows are defined, CLI args parse, -c compiles."""
    problems = []
    for service in services_of(compose, image):
        recovery_dirs = []
        for call in service.python_calls():
            problems += [f"{call.where}: {p}" for p in _call_problems(call)]
            if call.module == "bytewax.run":
                recovery_dirs.append(_bytewax_run_args(call.args)[1].get("recovery"))
        mounts = {_mount_target(v) for v in service.spec.get("volumes") or []}
        for path in filter(None, recovery_dirs):
            if path not in mounts:
                problems.append(
                    f"{service.name}: bytewax recovery directory {path!r} is not a volume, so "
                    "state is lost when the container is recreated"
                )
    return problems


def _call_problems(call: PythonCall) -> list[str]:
    if call.code is not None:
        return [p] if (p := code_problem(call.code)) else []
    assert call.module is not None
    if problem := module_problem(call.module):
        return [problem]
    if call.module == "bytewax.run":
        import_str, opts = _bytewax_run_args(call.args)
        if import_str is None:
            return ["`python -m bytewax.run` without a dataflow import string"]
        problems = [p] if (p := dataflow_problem(import_str)) else []
        if "recovery" in opts and not ("snapshot" in opts and "backup" in opts):
            problems.append("bytewax.run with -r also needs -s and -b")
        return problems
    return [p] if (p := cli_args_problem(call.module, call.args)) else []


def _mount_target(volume: Any) -> str | None:
    if isinstance(volume, dict):
        return volume.get("target")
    parts = str(volume).split(":")
    return parts[1] if len(parts) >= 2 else parts[0]


def known_settings() -> set[str]:
    """Every ``VIGIL_*`` variable ``flows.settings`` knows.

    (When the API gets settings of its own, add them here so its service can be checked.)
    """
    return {var for var, _, _ in settings_table()}


def check_vigil_environment(
    compose: dict[str, Any], image: Dockerfile | None = None, raw: dict[str, Any] | None = None
) -> list[str]:
    """VIGIL_* variables are real settings and every service's values pass Settings.from_env.

    ``raw`` is the document before interpolation: a ``${VIGIL_X}`` read from the shell that
    runs compose must also be a real setting, or that shell could not run Vigil itself.
    """
    known = known_settings()
    problems: list[str] = []
    if raw is not None:
        for var in sorted(interpolation_variables(raw)):
            if var.startswith(PREFIX) and var not in known:
                problems.append(
                    f"compose interpolates ${{{var}}}, which is not a Vigil setting (a shell "
                    "exporting it could not run Vigil); use a name without the VIGIL_ prefix"
                )
    for service in services_of(compose, image):
        vigil = {k: v for k, v in service.env.items() if k.startswith(PREFIX)}
        problems += [
            f"{service.name}: {var} is not a Vigil setting (see docs/configuration.md)"
            for var in sorted(vigil) if var not in known
        ]
        if not vigil and not service.project_image:
            continue
        try:
            Settings.from_env({k: v for k, v in vigil.items() if k in known})
        except SettingsError as exc:
            problems += [f"{service.name}: {p}" for p in exc.problems]
    return problems


def check_brokers(compose: dict[str, Any], image: Dockerfile | None = None) -> list[str]:
    """Every VIGIL_BROKERS host is a service of this file: inside a container, localhost is
    the container itself."""
    specs = compose.get("services") or {}
    problems = []
    for service in services_of(compose, image):
        if service.spec.get("network_mode") == "host":
            continue
        for broker in filter(None, service.env.get("VIGIL_BROKERS", "").split(",")):
            host = broker.strip().rsplit(":", 1)[0]
            if host not in specs:
                problems.append(f"{service.name}: VIGIL_BROKERS host {host!r} is not a service")
    return problems


def check_healthchecks(compose: dict[str, Any], image: Dockerfile | None = None) -> list[str]:
    """Long-running services have a healthcheck; a /metrics probe hits the flow's metrics port."""
    one_shot = one_shot_services(compose)
    problems = []
    for service in services_of(compose, image):
        if service.name not in one_shot and not service.healthcheck:
            problems.append(f"{service.name}: long-running service without a healthcheck")
        health = service.health_argv()
        if not health:
            continue
        for port in _METRICS_URL.findall(" ".join(health)):
            calls = [c for c in service.python_calls() if c.module == "bytewax.run"]
            metrics = service.env.get("VIGIL_METRICS_PORT", "0")
            if not calls:
                problems.append(
                    f"{service.name}: healthcheck probes /metrics on {port} but the service "
                    "runs no Vigil flow"
                )
            elif metrics != port:
                problems.append(
                    f"{service.name}: healthcheck probes port {port} but VIGIL_METRICS_PORT "
                    f"is {metrics!r}"
                )
    return problems


def published_ports(spec: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(host ip, host port, protocol) for every port a service publishes on the host."""
    out = []
    for entry in spec.get("ports") or []:
        if isinstance(entry, dict):
            ip = str(entry.get("host_ip") or "")
            published = str(entry.get("published") or "")
            proto = str(entry.get("protocol") or "tcp")
        else:
            text, _, proto = str(entry).partition("/")
            parts = text.rsplit(":", 2)
            if len(parts) == 1:
                continue  # container port only: the engine picks a free host port
            ip, published = (parts[0] if len(parts) == 3 else ""), parts[-2]
        if not published:
            continue
        first, _, last = published.partition("-")
        out += [(ip, port, proto or "tcp") for port in range(int(first), int(last or first) + 1)]
    return out


def check_ports(compose: dict[str, Any]) -> list[str]:
    """No two services publish the same host port (profiles included: they can run together)."""
    seen: list[tuple[str, int, str, str]] = []
    problems = []
    for name, spec in (compose.get("services") or {}).items():
        for ip, port, proto in published_ports(spec if isinstance(spec, dict) else {}):
            for other_ip, other_port, other_proto, other in seen:
                wildcard = {ip, other_ip} & {"", "0.0.0.0", "::", "[::]"}
                if (port, proto) == (other_port, other_proto) and (ip == other_ip or wildcard):
                    problems.append(f"{name}: host port {port}/{proto} is already published by "
                                    f"{other!r}")
                    break
            seen.append((ip, port, proto, name))
    return problems


@dataclass(frozen=True)
class TopicSpec:
    """One topic the set-up service creates."""

    name: str
    partitions: int
    retention_ms: int


def created_topics(compose: dict[str, Any]) -> tuple[str | None, list[TopicSpec], list[str]]:
    """(service, topics, problems) of the service that runs ``rpk topic create``.

    Its ``TOPICS`` variable lists ``name:partitions:retention_ms`` entries, space-separated.
    """
    for name, spec in (compose.get("services") or {}).items():
        spec = spec if isinstance(spec, dict) else {}
        text = " ".join(_as_argv(spec.get("entrypoint")) or []) + " " + " ".join(
            _as_argv(spec.get("command")) or []
        )
        if "rpk topic create" not in text:
            continue
        env = _environment(spec)
        topics, problems = [], []
        for entry in env.get("TOPICS", "").split():
            parts = entry.split(":")
            try:
                topic, partitions, retention = parts[0], int(parts[1]), int(parts[2])
                if len(parts) != 3 or not topic or partitions < 1 or retention < -1:
                    raise ValueError
            except (ValueError, IndexError):
                problems.append(
                    f"{name}: TOPICS entry {entry!r} is not name:partitions:retention_ms"
                )
                continue
            topics.append(TopicSpec(topic, partitions, retention))
        if not topics:
            problems.append(f"{name}: runs `rpk topic create` but TOPICS lists no topics")
        return name, topics, problems
    return None, [], ["no service creates the topics (`rpk topic create`)"]


def check_topics(compose: dict[str, Any], image: Dockerfile | None = None) -> list[str]:
    """The set-up creates exactly the default topics, and every Vigil service uses those."""
    from bench.broker import default_topics

    where, topics, problems = created_topics(compose)
    if where is None:
        return problems
    created = {t.name: t.partitions for t in topics}
    expected = default_topics(Settings())
    if set(created) != set(expected):
        problems.append(
            f"{where}: creates topics {sorted(created)} but the Settings defaults are "
            f"{sorted(expected)}"
        )
    for topic, count in expected.items():
        if topic in created and created[topic] != count:
            problems.append(
                f"{where}: {topic!r} gets {created[topic]} partitions; the demo and "
                f"bench.broker.default_topics() use {count}"
            )
    for service in services_of(compose, image):
        vigil = {k: v for k, v in service.env.items() if k.startswith(PREFIX)}
        if not vigil.get("VIGIL_BROKERS"):
            continue
        try:
            s = Settings.from_env(vigil)
        except SettingsError:
            continue  # reported by check_vigil_environment
        for var, topic in (
            ("VIGIL_READINGS_TOPIC", s.readings_topic),
            ("VIGIL_ALERTS_TOPIC", s.alerts_topic),
            ("VIGIL_SCORES_TOPIC", s.scores_topic),
            ("VIGIL_DEAD_LETTER_TOPIC", s.dead_letter_topic),
        ):
            if topic not in created:
                problems.append(f"{service.name}: {var}={topic!r} is not created by {where}")
    return problems


def check_volumes(compose: dict[str, Any]) -> list[str]:
    """Named volumes that services mount are declared at the top level."""
    declared = set((compose.get("volumes") or {}).keys())
    problems = []
    for name, spec in (compose.get("services") or {}).items():
        for volume in (spec if isinstance(spec, dict) else {}).get("volumes") or []:
            source = volume.get("source") if isinstance(volume, dict) else (
                str(volume).split(":")[0] if ":" in str(volume) else None
            )
            if source and not source.startswith((".", "/", "~", "$")) and source not in declared:
                problems.append(f"{name}: mounts volume {source!r}, which is not declared")
    return problems


def check_dockerfile(image: Dockerfile, project: Project) -> list[str]:
    """The image installs the project as pyproject defines it and runs as a non-root user."""
    problems: list[str] = []
    if len(image.stages) < 2:
        return ["Dockerfile: expected a builder stage and a runtime stage"]
    runtime = image.runtime
    builders = image.stages[:-1]
    installs = [s for s in builders if any(_is_project_install(a) for a in s.all("RUN"))]
    if not installs:
        problems.append("Dockerfile: no builder stage runs `pip install .`")
    builder = installs[-1] if installs else builders[-1]
    if runtime.base != builder.base:
        problems.append(
            f"Dockerfile: runtime base {runtime.base!r} differs from builder base "
            f"{builder.base!r}; the copied venv's python links into the builder's image"
        )
    copied = {
        PurePosixPath(src.rstrip("/")).as_posix()
        for args in builder.all("COPY")
        for src in _copy_args(args)[1]
    }
    needed = ["pyproject.toml", *([project.readme] if project.readme else []), *project.packages]
    for path in needed:
        if path not in copied and "." not in copied:
            problems.append(f"Dockerfile: the builder does not COPY {path} before `pip install .`")
    if any(_is_project_install(a, editable=True) for a in builder.all("RUN")):
        problems.append("Dockerfile: an editable install (-e) needs the source at run time")
    froms = [_copy_args(a)[0].get("from") for a in runtime.all("COPY")]
    if builder.name not in froms:
        problems.append(f"Dockerfile: the runtime stage does not COPY --from={builder.name}")
    if any("pip install" in a for a in runtime.all("RUN")):
        problems.append("Dockerfile: the runtime stage installs packages; it should only copy")
    user = image.user()
    if user is None or user.split(":")[0] in ("root", "0"):
        problems.append("Dockerfile: the runtime stage runs as root (add a USER)")
    env = image.env()
    if env.get("PYTHONUNBUFFERED") != "1":
        problems.append("Dockerfile: ENV PYTHONUNBUFFERED=1 missing (logs would be buffered)")
    if not runtime.all("WORKDIR"):
        problems.append("Dockerfile: no WORKDIR in the runtime stage")
    m = re.match(r"^(?:docker\.io/)?(?:library/)?python:(\d+)\.(\d+)", runtime.base)
    floor = re.search(r">=\s*(\d+)\.(\d+)", project.requires_python)
    if m and floor and (int(m[1]), int(m[2])) < (int(floor[1]), int(floor[2])):
        problems.append(
            f"Dockerfile: {runtime.base} is older than requires-python {project.requires_python}"
        )
    cmd = image.cmd()
    if not cmd:
        problems.append("Dockerfile: no CMD")
    if image.healthcheck() is None:
        problems.append("Dockerfile: no HEALTHCHECK")
    for where, argv in (("CMD", cmd), ("HEALTHCHECK", _test_argv(image.healthcheck()))):
        for call in python_calls(argv or [], f"Dockerfile {where}"):
            problems += [f"{call.where}: {p}" for p in _call_problems(call)]
    exposed = {int(p.split("/")[0]) for a in runtime.all("EXPOSE") for p in a.split()
               if p.split("/")[0].isdigit()}
    try:
        image_settings = Settings.from_env({k: v for k, v in env.items() if k.startswith(PREFIX)})
        served = {image_settings.api_port} | (
            {image_settings.metrics_port} if image_settings.metrics_port else set()
        )
    except SettingsError:
        served = set()
    for port in sorted(served - exposed):
        problems.append(
            f"Dockerfile: EXPOSE lacks {port}, a port the image serves (API or flow metrics)"
        )
    for var in env:
        if var.startswith(PREFIX) and var not in known_settings():
            problems.append(f"Dockerfile: ENV {var} is not a Vigil setting")
    try:
        Settings.from_env({k: v for k, v in env.items() if k.startswith(PREFIX)})
    except SettingsError as exc:
        problems += [f"Dockerfile: {p}" for p in exc.problems]
    return problems


def _is_project_install(run: str, editable: bool = False) -> bool:
    for words in _shell_commands(run):
        if "pip" in [PurePosixPath(w).name for w in words] and "install" in words:
            after = words[words.index("install") + 1:]
            if editable and any(w in ("-e", "--editable") for w in after):
                return True
            if not editable and "." in after:
                return True
    return False


def check_dockerignore(image: Dockerfile, root: Path) -> list[str]:
    """``.dockerignore`` does not exclude anything the Dockerfile copies from the context."""
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    patterns = [
        line.strip() for line in path.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    problems = []
    for stage in image.stages:
        for args in stage.all("COPY"):
            flags, sources, _ = _copy_args(args)
            if "from" in flags:
                continue
            for src in sources:
                src = src.rstrip("/")
                if _ignored(src, patterns):
                    problems.append(f".dockerignore excludes {src!r}, which the Dockerfile copies")
    return problems


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        pat = pat[3:] if pat.startswith("**/") else pat
        if fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(PurePosixPath(path).name, pat):
            ignored = not negate
    return ignored


# --- Ports, URLs between services, mounted files, Prometheus and Grafana -------------------------

# Ports that images we do not build listen on by default (their command may add more).
IMAGE_PORTS = {
    "docker.redpanda.com/redpandadata/redpanda": {9644},
    "docker.redpanda.com/redpandadata/console": {8080},
    "prom/prometheus": {9090},
    "grafana/grafana": {3000},
}
_LISTEN = re.compile(r"(?:0\.0\.0\.0|\[::\]):(\d{1,5})\b")
_URL = re.compile(r"^(?P<scheme>https?)://(?P<host>[^/:\s]+)(?::(?P<port>\d+))?(?P<path>/\S*)?$")
_LOCAL_URL = re.compile(r"https?://(?:127\.0\.0\.1|localhost|0\.0\.0\.0):(\d+)(/[^\s'\"]*)?")


def _image_name(spec: dict[str, Any]) -> str:
    return str(spec.get("image") or "").rsplit(":", 1)[0] if "@" not in str(
        spec.get("image") or ""
    ) else str(spec.get("image")).split("@")[0]


def _vigil_settings(service: Service) -> Settings | None:
    vigil = {k: v for k, v in service.env.items() if k.startswith(PREFIX)}
    try:
        return Settings.from_env({k: v for k, v in vigil.items() if k in known_settings()})
    except SettingsError:
        return None  # reported by check_vigil_environment


def listening_ports(service: Service) -> set[int] | None:
    """Ports the service's processes listen on inside the network (None: cannot tell).

    Vigil services: the API's port (``VIGIL_API_PORT`` or ``--port``) and the flow's
    ``VIGIL_METRICS_PORT``. Other images: their known defaults plus every ``0.0.0.0:PORT``
    in their command (Redpanda's listeners).
    """
    if service.project_image:
        settings = _vigil_settings(service)
        if settings is None:
            return None
        ports: set[int] = set()
        for call in service.python_calls():
            if call.where.endswith("healthcheck"):
                continue
            if call.module == "api":
                port = settings.api_port
                if "--port" in call.args[:-1]:
                    with contextlib.suppress(ValueError):
                        port = int(call.args[call.args.index("--port") + 1])
                ports.add(port)
            elif call.module == "bytewax.run" and settings.metrics_port:
                ports.add(settings.metrics_port)
        return ports
    known = IMAGE_PORTS.get(_image_name(service.spec))
    if known is None:
        return None
    command = " ".join(_as_argv(service.spec.get("command")) or [])
    return set(known) | {int(p) for p in _LISTEN.findall(command)}


def _container_ports(spec: dict[str, Any]) -> list[int]:
    out = []
    for entry in spec.get("ports") or []:
        if isinstance(entry, dict):
            target = str(entry.get("target") or "")
        else:
            target = str(entry).partition("/")[0].rsplit(":", 1)[-1]
        first, _, last = target.partition("-")
        if first.isdigit():
            out += list(range(int(first), int(last or first) + 1))
    return out


def check_listen_ports(compose: dict[str, Any], image: Dockerfile | None = None) -> list[str]:
    """Published ports and healthcheck URLs point at ports the service listens on, and the
    API listens on all interfaces (127.0.0.1 inside a container is unreachable from others)."""
    problems = []
    for service in services_of(compose, image):
        ports = listening_ports(service)
        if service.project_image and any(c.module == "api" for c in service.python_calls()):
            settings = _vigil_settings(service)
            calls = [c for c in service.python_calls() if c.module == "api"]
            host = settings.api_host if settings else "0.0.0.0"
            for c in calls:
                if "--host" in c.args[:-1]:
                    host = c.args[c.args.index("--host") + 1]
            if host not in ("0.0.0.0", "::", "[::]"):
                problems.append(
                    f"{service.name}: the API listens on {host}, which other containers and "
                    "published ports cannot reach; set VIGIL_API_HOST: 0.0.0.0"
                )
        if ports is None:
            continue
        for port in _container_ports(service.spec):
            if port not in ports:
                problems.append(
                    f"{service.name}: publishes container port {port}, but the service listens "
                    f"on {sorted(ports) or 'no port'}"
                )
        for port, _path in _LOCAL_URL.findall(" ".join(service.health_argv() or [])):
            if int(port) not in ports:
                problems.append(
                    f"{service.name}: healthcheck probes port {port}, but the service listens "
                    f"on {sorted(ports) or 'no port'}"
                )
    return problems


def _service_url_problem(
    where: str, url: str, services: dict[str, Service], ports: Mapping[str, set[int] | None]
) -> str | None:
    m = _URL.match(url.strip())
    if not m:
        return f"{where}: {url!r} is not an http(s) URL"
    host = m["host"]
    port = int(m["port"] or (443 if m["scheme"] == "https" else 80))
    if host in ("localhost", "127.0.0.1"):
        return (f"{where}: {url} points at the container itself; use the service name "
                "instead of localhost")
    if host not in services:
        return f"{where}: {url} names host {host!r}, which is not a service of compose.yaml"
    known = ports.get(host)
    if known is not None and port not in known:
        return (f"{where}: {url}: service {host!r} listens on {sorted(known) or 'no port'}, "
                f"not {port}")
    return None


def check_service_urls(compose: dict[str, Any], image: Dockerfile | None = None) -> list[str]:
    """``VIGIL_API_URL`` names a service and a port that service's API listens on."""
    services = {s.name: s for s in services_of(compose, image)}
    ports = {name: listening_ports(s) for name, s in services.items()}
    problems = []
    for service in services.values():
        url = service.env.get("VIGIL_API_URL")
        if url and service.spec.get("network_mode") != "host" and (
            p := _service_url_problem(f"{service.name}: VIGIL_API_URL", url, services, ports)
        ):
            problems.append(p)
    return problems


@dataclass(frozen=True)
class Mount:
    """A bind mount of a repository path into a service."""

    service: str
    source: Path  # on the host, resolved against the compose folder
    target: str  # in the container


def bind_mounts(compose: dict[str, Any], root: Path) -> list[Mount]:
    """Every bind mount with a relative or absolute host path (named volumes excluded)."""
    out = []
    for name, spec in (compose.get("services") or {}).items():
        for volume in (spec if isinstance(spec, dict) else {}).get("volumes") or []:
            if isinstance(volume, dict):
                if volume.get("type", "bind") != "bind":
                    continue
                source, target = str(volume.get("source") or ""), str(volume.get("target") or "")
            else:
                parts = str(volume).split(":")
                if len(parts) < 2:
                    continue
                source, target = parts[0], parts[1]
            if source.startswith((".", "/")):
                out.append(Mount(name, (root / source).resolve(), target))
    return out


def host_path(mounts: list[Mount], service: str, container_path: str) -> Path | None:
    """Where ``container_path`` of ``service`` comes from on the host (None: not mounted)."""
    best: Mount | None = None
    for m in mounts:
        if m.service != service:
            continue
        t = m.target.rstrip("/")
        if (container_path == t or container_path.startswith(t + "/")) and (
            best is None or len(t) > len(best.target.rstrip("/"))
        ):
            best = m
    if best is None:
        return None
    rest = container_path[len(best.target.rstrip("/")):].lstrip("/")
    return best.source / rest if rest else best.source


def check_mounts(compose: dict[str, Any], root: Path) -> list[str]:
    """Every bind-mounted host path exists (a missing one would be created as an empty dir)."""
    base = root.resolve()
    return [
        f"{m.service}: mounts "
        f"{m.source.relative_to(base) if m.source.is_relative_to(base) else m.source}, "
        "which does not exist"
        for m in bind_mounts(compose, root)
        if not m.source.exists()
    ]


def exported_metrics() -> set[str]:
    """Every sample name Vigil's flow and API can expose (``_total``, ``_bucket`` included)."""
    from prometheus_client import REGISTRY

    from api._metrics import ApiMetrics, SensorScoreCollector

    for module in ("flows.metrics", "flows.api_client"):  # they register at import
        importlib.import_module(module)
    families = list(REGISTRY.collect()) + list(ApiMetrics().registry.collect())
    families += list(SensorScoreCollector(None, 0).describe())  # type: ignore[arg-type]
    names: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"), "info": ("_info",), "gauge": ("",),
    }
    for f in families:
        if f.name.startswith("vigil_"):
            names |= {f.name + s for s in suffixes.get(f.type, ("",))}
    return names


_METRIC_REF = re.compile(r"\b(vigil_[a-zA-Z0-9_]+)\b")


def promql_problems(where: str, expr: str, known: set[str]) -> list[str]:
    """Names in a PromQL expression that Vigil does not export (only ``vigil_*`` are checked)."""
    text = re.sub(r'"[^"]*"', '""', expr)  # label values may contain anything
    return [
        f"{where}: uses metric {name!r}, which neither the flow nor the API exports"
        for name in sorted(set(_METRIC_REF.findall(text))) if name not in known
    ]


def _yaml_file(path: Path, where: str, problems: list[str]) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        problems.append(f"{where}: cannot read {path.name}: {exc}")
        return None


def _service_with_image(services: list[Service], prefix: str) -> Service | None:
    return next((s for s in services if _image_name(s.spec).startswith(prefix)), None)


def check_prometheus(
    compose: dict[str, Any], root: Path, image: Dockerfile | None = None
) -> list[str]:
    """The Prometheus config scrapes services on ports they serve /metrics on, and its rule
    files exist, parse and use only metrics Vigil exports."""
    services = services_of(compose, image)
    prom = _service_with_image(services, "prom/prometheus")
    if prom is None:
        return ["compose: no Prometheus service (image prom/prometheus)"]
    args = _as_argv(prom.spec.get("command")) or []
    config_in = next((a.split("=", 1)[1] for a in args if a.startswith("--config.file=")),
                     "/etc/prometheus/prometheus.yml")
    mounts = bind_mounts(compose, root)
    config = host_path(mounts, prom.name, config_in)
    if config is None or not config.is_file():
        return [f"{prom.name}: config {config_in} is not a mounted file of this repository"]
    problems: list[str] = []
    data = _yaml_file(config, prom.name, problems) or {}
    by_name = {s.name: s for s in services}
    ports = {s.name: listening_ports(s) for s in services}
    metrics_ports = {}
    for s in services:
        settings = _vigil_settings(s) if s.project_image else None
        calls = {c.module for c in s.python_calls() if not c.where.endswith("healthcheck")}
        if settings is not None:
            metrics_ports[s.name] = (
                ({settings.metrics_port} if "bytewax.run" in calls and settings.metrics_port
                 else set()) | ({settings.api_port} if "api" in calls else set())
            )
    jobs = data.get("scrape_configs") or []
    if not jobs:
        problems.append(f"{prom.name}: {config.name} has no scrape_configs")
    for job in jobs:
        name = job.get("job_name", "?")
        path = job.get("metrics_path", "/metrics")
        for sc in job.get("static_configs") or []:
            for target in sc.get("targets") or []:
                host, _, port_text = str(target).rpartition(":")
                if host in ("localhost", "127.0.0.1") and int(port_text or 0) in (
                    ports.get(prom.name) or set()
                ):
                    continue  # Prometheus scraping itself
                url = f"http://{target}{path}"
                if p := _service_url_problem(f"{prom.name}: job {name!r}", url, by_name, ports):
                    problems.append(p)
                    continue
                if host in metrics_ports and (
                    int(port_text) not in metrics_ports[host] or path != "/metrics"
                ):
                    problems.append(
                        f"{prom.name}: job {name!r} scrapes {url}, but {host!r} serves /metrics "
                        f"on {sorted(metrics_ports[host]) or 'no port (VIGIL_METRICS_PORT=0)'}"
                    )
    known = exported_metrics()
    rule_files = data.get("rule_files") or []
    if not rule_files:
        problems.append(f"{prom.name}: {config.name} loads no rule_files")
    for rule_file in rule_files:
        local = host_path(mounts, prom.name, str(rule_file))
        if local is None or not local.is_file():
            problems.append(f"{prom.name}: rule file {rule_file} is not a mounted file")
            continue
        problems += check_rules(local, known)
    return problems


def check_rules(path: Path, known: set[str] | None = None) -> list[str]:
    """A Prometheus rules file parses, every rule has a name and expr, alerts have a summary,
    and the expressions use only exported metrics."""
    known = exported_metrics() if known is None else known
    problems: list[str] = []
    data = _yaml_file(path, "rules", problems)
    if data is None:
        return problems
    groups = data.get("groups") if isinstance(data, dict) else None
    if not groups:
        return [f"rules {path.name}: no rule groups"]
    for group in groups:
        for rule in group.get("rules") or []:
            name = rule.get("alert") or rule.get("record")
            where = f"rules {path.name}: {name or '(unnamed rule)'}"
            if not name or not rule.get("expr"):
                problems.append(f"{where}: needs `alert` (or `record`) and `expr`")
                continue
            if rule.get("alert") and not (rule.get("annotations") or {}).get("summary"):
                problems.append(f"{where}: no summary annotation")
            problems += promql_problems(where, str(rule["expr"]), known)
    return problems


def check_grafana(
    compose: dict[str, Any], root: Path, image: Dockerfile | None = None
) -> list[str]:
    """Grafana's provisioned datasource points at the Prometheus service, its dashboard folder
    is mounted, and every dashboard panel queries that datasource with exported metrics."""
    services = services_of(compose, image)
    graf = _service_with_image(services, "grafana/grafana")
    if graf is None:
        return ["compose: no Grafana service (image grafana/grafana)"]
    mounts = bind_mounts(compose, root)
    prov = host_path(mounts, graf.name, "/etc/grafana/provisioning")
    if prov is None or not prov.is_dir():
        return [f"{graf.name}: /etc/grafana/provisioning is not a mounted folder of this repo"]
    problems: list[str] = []
    by_name = {s.name: s for s in services}
    ports = {s.name: listening_ports(s) for s in services}
    uids = set()
    for f in sorted((prov / "datasources").glob("*.y*ml")):
        for ds in (_yaml_file(f, graf.name, problems) or {}).get("datasources") or []:
            uids.add(ds.get("uid"))
            if p := _service_url_problem(
                f"{graf.name}: datasource {ds.get('name')!r}", str(ds.get("url", "")),
                by_name, ports,
            ):
                problems.append(p)
    if not uids:
        problems.append(f"{graf.name}: no datasource provisioned in {prov / 'datasources'}")
    dashboards: list[Path] = []
    for f in sorted((prov / "dashboards").glob("*.y*ml")):
        for provider in (_yaml_file(f, graf.name, problems) or {}).get("providers") or []:
            path = str((provider.get("options") or {}).get("path", ""))
            local = host_path(mounts, graf.name, path)
            if local is None or not local.is_dir():
                problems.append(
                    f"{graf.name}: dashboard provider path {path!r} is not a mounted folder"
                )
                continue
            dashboards += sorted(local.glob("*.json"))
    if not dashboards:
        problems.append(f"{graf.name}: no dashboard JSON is provisioned")
    known = exported_metrics()
    for d in dashboards:
        problems += check_dashboard(d, uids, known)
    return problems


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(panel title, datasource, expr) of every panel target and query variable."""
    for panel in dashboard.get("panels") or []:
        for sub in [panel, *(panel.get("panels") or [])]:
            for target in sub.get("targets") or []:
                ds = target.get("datasource") or sub.get("datasource") or {}
                yield str(sub.get("title")), ds, str(target.get("expr", ""))
    for var in (dashboard.get("templating") or {}).get("list") or []:
        if var.get("type") == "query":
            query = var.get("query")
            expr = query.get("query", "") if isinstance(query, dict) else str(query or "")
            yield f"variable ${var.get('name')}", var.get("datasource") or {}, expr


def check_dashboard(path: Path, uids: set[Any], known: set[str] | None = None) -> list[str]:
    """A dashboard JSON parses, has a uid and title, queries only provisioned datasources and
    only metrics Vigil exports."""
    known = exported_metrics() if known is None else known
    try:
        dashboard = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return [f"dashboard {path.name}: not valid JSON ({exc})"]
    problems = []
    if not dashboard.get("uid") or not dashboard.get("title"):
        problems.append(f"dashboard {path.name}: needs a uid and a title")
    queries = list(dashboard_queries(dashboard))
    if not queries:
        problems.append(f"dashboard {path.name}: no panel queries anything")
    for title, ds, expr in queries:
        where = f"dashboard {path.name}: {title}"
        if not expr.strip():
            problems.append(f"{where}: empty query")
        if isinstance(ds, dict) and ds.get("uid") not in uids:
            problems.append(f"{where}: datasource uid {ds.get('uid')!r} is not provisioned")
        problems += promql_problems(where, expr, known)
    return problems


# --- Everything at once -------------------------------------------------------------------------


def check_compose(
    compose: dict[str, Any], image: Dockerfile | None = None, env: Mapping[str, str] | None = None,
    root: Path | None = None,
) -> list[str]:
    """Every compose check on a raw (uninterpolated) Compose document.

    With ``root`` (the folder compose.yaml is in) the bind-mounted files and the Prometheus and
    Grafana configurations in them are checked too.
    """
    problems: list[str] = []
    if "version" in compose:
        problems.append("compose: the top-level `version` key is obsolete in the Compose spec")
    resolved = resolve(compose, defaults_env(compose) if env is None else env, problems)
    problems += check_images(resolved)
    problems += check_depends_on(resolved, image)
    problems += check_python_commands(resolved, image)
    problems += check_vigil_environment(resolved, image, raw=compose)
    problems += check_brokers(resolved, image)
    problems += check_healthchecks(resolved, image)
    problems += check_ports(resolved)
    problems += check_topics(resolved, image)
    problems += check_volumes(resolved)
    problems += check_listen_ports(resolved, image)
    problems += check_service_urls(resolved, image)
    if root is not None:
        problems += check_mounts(resolved, root)
        problems += check_prometheus(resolved, root, image)
        problems += check_grafana(resolved, root, image)
    return problems


def check_all(root: Path = ROOT, env: Mapping[str, str] | None = None) -> list[str]:
    """Check ``root``'s compose.yaml, Dockerfile, .dockerignore and the ops/ configs together."""
    image = parse_dockerfile((root / "Dockerfile").read_text())
    return [
        *check_dockerfile(image, Project.load(root)),
        *check_dockerignore(image, root),
        *check_compose(load_compose(root / "compose.yaml"), image, env, root=root),
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.compose_check``: print every problem; exit 1 if there is one."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.compose_check",
        description=(
            "Check compose.yaml, the Dockerfile and .dockerignore without Docker: modules the "
            "commands run exist, VIGIL_* variables are real settings with valid values, "
            "depends_on targets and conditions, healthchecks, topics, ports, and that the image "
            "installs the packages pyproject.toml declares."
        ),
    )
    parser.add_argument(
        "--root", type=Path, default=Path.cwd(), help="repository root (default: current folder)"
    )
    parser.add_argument(
        "--environ", action="store_true",
        help="interpolate ${VAR:-default} with the current environment instead of the defaults",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.root.resolve()))
    problems = check_all(args.root, dict(os.environ) if args.environ else None)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("compose.yaml and Dockerfile: no problems found")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
