"""Where a run's artifacts live: a directory, or an fsspec URI (s3://, gs://, file://, ...) that every node reaches.

A directory (the default, OUT/artifacts, or a shared file system) is written in place through `artifact.staging`, so a
crash never leaves half an artifact. A URI is written from a node-local copy: every file first, `manifest.json` last,
so an artifact without its manifest is unfinished and is never read. Every load verifies the manifest's hashes, so a
node never runs an artifact that changed or arrived incomplete.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from .artifact import Artifact
from .errors import ConfigError, InputError

MANIFEST = "manifest.json"


def _is_uri(root: str) -> bool:
    return "://" in root


class Storage:
    def __init__(self, root: str | Path):
        self.root = str(root)
        self.remote = _is_uri(self.root)
        if self.remote:
            try:
                import fsspec
            except ImportError:
                raise ConfigError(f"storage {self.root} is a URI, which needs fsspec: pip install qdeploy[ray]") \
                    from None
            try:
                self._fs, self._base = fsspec.core.url_to_fs(self.root)
            except (ImportError, ValueError) as exc:
                raise ConfigError(f"storage {self.root}: {exc}") from None
            self._base = self._base.rstrip("/")
            digest = hashlib.sha256(self.root.encode()).hexdigest()[:16]
            cache = Path(os.environ.get("QDEPLOY_CACHE", Path.home() / ".cache" / "qdeploy"))
            self.cache = cache / "storage" / digest  # this node's copies of the remote artifacts
        else:
            self.cache = Path(self.root)

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    def __reduce__(self):  # a Storage travels to workers as its root; each node opens its own file system
        return (Storage, (self.root,))

    def local_path(self, name: str) -> Path:
        return self.cache / name

    def existing(self, name: str) -> Artifact | None:
        """The finished artifact `name` (verified by hash), or None when it was never finished."""
        if self.remote:
            if not self._fs.exists(f"{self._base}/{name}/{MANIFEST}"):
                return None
            return self.fetch(name)
        if (self.cache / name / MANIFEST).is_file():
            return Artifact.load(self.cache / name, verify=True)
        return None

    def build_path(self, name: str) -> Path:
        """Where a builder writes artifact `name` (through its own staging); then `publish(name)`."""
        target = self.local_path(name)
        if self.remote and target.exists() and not self._fs.exists(f"{self._base}/{name}/{MANIFEST}"):
            shutil.rmtree(target)  # a node-local copy that never reached the storage: build it again
        return target

    def publish(self, name: str) -> None:
        if self.remote:
            self._upload(self.local_path(name), name)

    def _upload(self, local: Path, name: str) -> None:
        remote = f"{self._base}/{name}"
        files = sorted(p for p in local.rglob("*") if p.is_file())
        for path in files:  # the manifest last: its presence is what marks the artifact finished
            if path.name != MANIFEST:
                self._put(path, f"{remote}/{path.relative_to(local).as_posix()}")
        self._put(local / MANIFEST, f"{remote}/{MANIFEST}")

    def _put(self, path: Path, remote: str) -> None:
        self._fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
        self._fs.put_file(str(path), remote)

    def fetch(self, name: str) -> Artifact:
        """This node's verified copy of artifact `name`."""
        if not self.remote:
            if not (self.cache / name / MANIFEST).is_file():
                raise InputError(f"artifact {name} is not in storage {self.root}")
            return Artifact.load(self.cache / name, verify=True)
        target = self.local_path(name)
        if (target / MANIFEST).is_file():
            try:
                return Artifact.load(target, verify=True)
            except InputError:
                shutil.rmtree(target)  # a stale or damaged copy: fetch it again
        remote = f"{self._base}/{name}"
        if not self._fs.exists(f"{remote}/{MANIFEST}"):
            raise InputError(f"artifact {name} is not in storage {self.root} (no {MANIFEST})")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=target.parent))
        try:
            for path in self._fs.find(remote):
                relative = path[len(remote) + 1:]
                local = (tmp / relative).resolve()
                if not local.is_relative_to(tmp.resolve()):
                    raise InputError(f"storage {self.root}: {path} would land outside {name}")
                local.parent.mkdir(parents=True, exist_ok=True)
                self._fs.get_file(path, str(local))
            Artifact.load(tmp, verify=True)  # a corrupt or half-uploaded copy fails here, before anything runs it
            try:
                os.replace(tmp, target)
            except OSError:
                if not (target / MANIFEST).is_file():
                    raise  # not another task of this node that fetched the same artifact first
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return Artifact.load(target)
