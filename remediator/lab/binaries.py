"""Finding and building the pinned upstream binaries: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok for the lab; kubectl, kustomize and helm for the deploy checks (optional,
built on demand by ``ensure_deploy_tools``).

The versions are pinned by the Go modules under ``tools/`` (their go.mod and go.sum are the single
source of truth). A binary is taken, in this order, from ``$KUBEBUILDER_ASSETS``, from ``PATH``, or
from the versioned cache under ``$XDG_CACHE_HOME/remediator/bin`` -- the first one whose ``--version``
reports the pinned version. When none fits, the binaries of that module are built once with the
machine's ``go`` from the Go module proxy and installed into the cache atomically.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from remediator.errors import BinaryBuildError

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO_ROOT / "tools"

#: Reports progress of a long step: one line of text, overwritten in place on a terminal.
Progress = Callable[[str], None]


@dataclass(frozen=True)
class GoTool:
    """One Go module under tools/ and the binaries it builds."""

    module_dir: str  # directory under tools/
    required_module: str  # the upstream module whose version is pinned
    packages: dict[str, str]  # binary name -> Go package path
    version_pattern: str  # regex matched against `<binary> --version`; group 1 is the version
    version_args: tuple[str, ...] = ("--version",)  # how the binary is asked for its version
    cache_name: str = ""  # name of the versioned cache dir; module_dir when empty
    version_ldflag: str = ""  # a Go variable stamped with the pinned version (-X), if the binary has one

    @property
    def go_mod(self) -> Path:
        return TOOLS_DIR / self.module_dir / "go.mod"

    def version(self) -> str:
        """The pinned version, read from the module's go.mod require line."""
        text = self.go_mod.read_text()
        match = re.search(rf"^\s*(?:require\s+)?{re.escape(self.required_module)}\s+(v\S+)", text, re.M)
        if not match:
            raise BinaryBuildError("binaries", f"{self.go_mod} does not pin {self.required_module}")
        return match.group(1)

    def ldflags(self) -> str:
        flags = ["-s", "-w"]
        if self.module_dir == "kube":
            version = self.version()
            major, minor = version.lstrip("v").split(".")[:2]
            build_date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
                flags += [
                    f"-X {pkg}.gitVersion={version}",
                    f"-X {pkg}.gitMajor={major}",
                    f"-X {pkg}.gitMinor={minor}",
                    f"-X {pkg}.gitTreeState=clean",
                    f"-X {pkg}.buildDate={build_date}",
                ]
        if self.version_ldflag:
            flags.append(f"-X {self.version_ldflag}={self.version()}")
        return " ".join(flags)


KUBE = GoTool(
    "kube",
    "k8s.io/kubernetes",
    {
        "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
        "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
        "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    },
    r"Kubernetes (v[0-9][^\s]*)",
)
ETCD = GoTool(
    "etcd", "go.etcd.io/etcd/server/v3", {"etcd": "go.etcd.io/etcd/server/v3"}, r"etcd Version: ([0-9.]+)"
)
KWOK = GoTool(
    "kwok", "sigs.k8s.io/kwok", {"kwok": "sigs.k8s.io/kwok/cmd/kwok"}, r"(v?[0-9]+\.[0-9]+\.[0-9]+)"
)

ALL_TOOLS = (ETCD, KUBE, KWOK)

# The deploy checks' tools: not needed by the lab, built only when asked for (ensure_deploy_tools).
# kubectl shares tools/kube (same k8s.io/kubernetes pin) but has its own cache dir, so that building
# it never replaces the control-plane binaries.
KUBECTL = GoTool(
    "kube",
    "k8s.io/kubernetes",
    {"kubectl": "k8s.io/kubernetes/cmd/kubectl"},
    r"Client Version: (v[0-9][^\s]*)",
    version_args=("version", "--client"),
    cache_name="kubectl",
)
KUSTOMIZE = GoTool(
    "kustomize",
    "sigs.k8s.io/kustomize/kustomize/v5",
    {"kustomize": "sigs.k8s.io/kustomize/kustomize/v5"},
    r"(v[0-9]+\.[0-9]+\.[0-9]+)",
    version_args=("version",),
)
HELM = GoTool(
    "helm",
    "helm.sh/helm/v4",
    {"helm": "helm.sh/helm/v4/cmd/helm"},
    r"(v[0-9]+\.[0-9]+\.[0-9]+)",
    version_args=("version", "--short"),
    version_ldflag="helm.sh/helm/v4/internal/version.version",
)

DEPLOY_TOOLS = (KUBECTL, KUSTOMIZE, HELM)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "remediator" / "bin"


def _cache_dir(tool: GoTool) -> Path:
    return cache_root() / f"{tool.cache_name or tool.module_dir}-{tool.version()}"


def _reported_version(binary: Path, tool: GoTool) -> str | None:
    try:
        out = subprocess.run(
            [str(binary), *tool.version_args], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(tool.version_pattern, out.stdout + out.stderr)
    return match.group(1) if match else None


def _version_matches(binary: Path, tool: GoTool) -> bool:
    reported = _reported_version(binary, tool)
    return reported is not None and reported.lstrip("v") == tool.version().lstrip("v")


def _candidates(name: str, tool: GoTool) -> Iterable[Path]:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        yield Path(assets) / name
    on_path = shutil.which(name)
    if on_path:
        yield Path(on_path)
    yield _cache_dir(tool) / name


def find_binary(name: str) -> Path | None:
    """The path of a binary of the pinned version, or None when it must be built."""
    tool = next(t for t in (*ALL_TOOLS, *DEPLOY_TOOLS) if name in t.packages)
    for candidate in _candidates(name, tool):
        if candidate.is_file() and os.access(candidate, os.X_OK) and _version_matches(candidate, tool):
            return candidate
    return None


def ensure_binaries(progress: Progress | None = None) -> dict[str, Path]:
    """Every binary the lab needs, building what is missing. Returns name -> path."""
    return _ensure(ALL_TOOLS, progress)


def ensure_deploy_tools(progress: Progress | None = None) -> dict[str, Path]:
    """kubectl, kustomize and helm for the deploy checks, building what is missing. Returns name -> path."""
    return _ensure(DEPLOY_TOOLS, progress)


def _ensure(tools: Iterable[GoTool], progress: Progress | None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for tool in tools:
        paths = {name: find_binary(name) for name in tool.packages}
        if any(p is None for p in paths.values()):
            build_tool(tool, progress)
            paths = {name: _cache_dir(tool) / name for name in tool.packages}
        found.update({name: p for name, p in paths.items() if p is not None})
    return found


def _go_binary_name(package: str) -> str:
    """The file name `go build -o DIR/` gives a package: its last element, skipping a /vN suffix."""
    parts = package.split("/")
    if re.fullmatch(r"v[0-9]+", parts[-1]) and len(parts) > 1:
        return parts[-2]
    return parts[-1]


def build_log_path() -> Path:
    return cache_root() / "build.log"


def build_tool(tool: GoTool, progress: Progress | None = None) -> Path:
    """Build every binary of ``tool`` into its versioned cache dir. Returns that dir."""
    say = progress or (lambda _line: None)
    go = shutil.which("go")
    if go is None:
        raise BinaryBuildError(
            f"build {tool.module_dir}", "`go` is not on PATH; install Go (>= the version in tools/*/go.mod)"
        )
    target = _cache_dir(tool)
    target.parent.mkdir(parents=True, exist_ok=True)
    log_path = build_log_path()
    names = ", ".join(tool.packages)
    label = tool.cache_name or tool.module_dir
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{label}-") as tmp:
        argv = [go, "build", "-v", "-trimpath", "-ldflags", tool.ldflags(), "-o", tmp + "/"]
        argv += list(tool.packages.values())
        env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=readonly")
        with log_path.open("a") as log:
            log.write(f"\n=== {time.ctime()} building {names} {tool.version()}\n")
            log.flush()
            proc = subprocess.Popen(
                argv,
                cwd=TOOLS_DIR / tool.module_dir,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            assert proc.stdout is not None
            compiled = 0
            for line in proc.stdout:
                log.write(line)
                if line.startswith("go: downloading"):
                    say(f"building {names} {tool.version()}: {line.strip()}")
                elif not line.startswith(("#", " ", "\t")):
                    compiled += 1
                    elapsed = time.monotonic() - started
                    say(f"building {names} {tool.version()}: {compiled} packages compiled ({elapsed:.0f}s)")
            rc = proc.wait()
        if rc != 0:
            raise BinaryBuildError(
                f"build {label}", f"`go build` of {names} failed (exit {rc})", str(log_path)
            )
        staged = Path(tmp)
        for name in tool.packages:
            built = staged / _go_binary_name(tool.packages[name])
            if built.name != name:
                built.rename(staged / name)
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
        # TemporaryDirectory's cleanup tolerates the directory having been moved away.
        Path(tmp).mkdir(exist_ok=True)
    say(f"built {names} {tool.version()} in {time.monotonic() - started:.0f}s")
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m remediator.lab.binaries [--deploy-tools]``: build (or find) every binary of the lab
    (with ``--deploy-tools``: also kubectl, kustomize and helm) and print where they are."""
    from remediator.progress import ProgressLine

    args = sys.argv[1:] if argv is None else argv
    progress = ProgressLine()

    def report(line: str) -> None:
        progress(line, keep=line.startswith("built"))

    try:
        paths = ensure_binaries(report)
        if "--deploy-tools" in args:
            paths.update(ensure_deploy_tools(report))
    except BinaryBuildError as exc:
        progress.done()
        print(f"remediator: error: {exc}", file=sys.stderr)
        return 1
    progress.done()
    for name, path in sorted(paths.items()):
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
