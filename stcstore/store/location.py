"""Where a store lives: a local folder or any fsspec URL (s3://, gs://, memory://, ...).

A `Location` is one place inside a store (the store's root, a run, a progress record) and
offers the few operations the store needs, the same way on a local disk and on object storage:
read, atomic write, exclusive create, list, remove, and zarr's own store object for the root.
Local folders keep what they always had: temp file + rename for atomic writes, zarr's
LocalStore, and (see lock.py) flock. On object storage a single PUT is atomic, so every small
record is one object; there is no rename and no advisory lock.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping, Optional, Sequence

from ..errors import ConfigError, MissingDependencyError, StoreError

__all__ = ["Location", "open_location", "parse_storage_options", "precondition_failed"]

# object stores whose fsspec listing cache would hide what other processes (ranks, a resumed
# job) wrote since this process first listed a prefix: we always want a fresh listing
_FRESH_LISTINGS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "oss"}
# the packages that bring each common protocol, for a one-line "install X" message
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
             "abfss": "adlfs", "adl": "adlfs", "hf": "huggingface_hub", "sftp": "paramiko", "ssh": "paramiko"}


def parse_storage_options(items: Optional[Sequence[str]]) -> dict[str, Any]:
    """`KEY=VALUE` strings -> a dict; values parse as JSON where they can (true, 3, {...}), else stay strings."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--storage-option {item!r} is not KEY=VALUE: write e.g. --storage-option anon=true")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _nested(options: dict[str, Any]) -> dict[str, Any]:
    """`client_kwargs.region_name=x` -> {"client_kwargs": {"region_name": "x"}} (s3fs's nested options)."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        parts = key.split(".")
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ConfigError(f"--storage-option {key}: {p!r} is given both as a value and as a group")
        d[parts[-1]] = value
    return out


@dataclass(frozen=True)
class Location:
    """One place in a store: a local path, or a path on an fsspec filesystem."""

    fs: Any                              # fsspec filesystem (LocalFileSystem for local stores)
    path: str                            # path inside fs (absolute POSIX path for local stores)
    is_local: bool
    url: str                             # how messages name it (the user's URL, or the local path)
    protocol: str = "file"
    storage_options: Mapping[str, Any] = field(default_factory=dict, compare=False)

    # -- naming ---------------------------------------------------------------------------
    def __truediv__(self, name: str) -> "Location":
        """The location `name` below this one."""
        name = str(name).strip("/")
        return Location(self.fs, posixpath.join(self.path, name), self.is_local,
                        f"{self.url.rstrip('/')}/{name}", self.protocol, self.storage_options)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def parent(self) -> "Location":
        url = self.url.rstrip("/").rsplit("/", 1)[0]
        return Location(self.fs, posixpath.dirname(self.path.rstrip("/")), self.is_local, url, self.protocol,
                        self.storage_options)

    @property
    def local_path(self) -> Path:
        """This location as a local Path (local stores only)."""
        if not self.is_local:
            raise StoreError(f"{self.url} is on object storage, not a local folder")
        return Path(self.path)

    def bucket(self) -> Optional["Location"]:
        """The bucket (container) holding this location on object storage; None elsewhere."""
        if self.is_local or self.protocol not in _FRESH_LISTINGS:
            return None
        name = self.path.strip("/").split("/", 1)[0]
        return Location(self.fs, name, False, f"{self.protocol}://{name}", self.protocol, self.storage_options)

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:
        # lets a local Location stand where a path is expected (open(), Path(), shutil)
        if not self.is_local:
            raise TypeError(f"{self.url} is not a local path")
        return self.path

    # -- reading --------------------------------------------------------------------------
    def exists(self) -> bool:
        """True when a file or folder (prefix) is here."""
        return self._test(os.path.exists, "exists")

    def is_file(self) -> bool:
        return self._test(os.path.isfile, "isfile")

    def is_dir(self) -> bool:
        return self._test(os.path.isdir, "isdir")

    def _test(self, local: Any, method: str) -> bool:
        """One existence test: os.path's locally, the filesystem's (on a fresh listing) elsewhere."""
        with _errors(self):
            if self.is_local:
                return local(self.path)
            self._fresh()
            return getattr(self.fs, method)(self.path)

    def read_bytes(self) -> bytes:
        with _errors(self):
            if self.is_local:
                return Path(self.path).read_bytes()
            return self.fs.cat_file(self.path)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def children(self) -> list[str]:
        """Names of the entries directly below this location (none when it does not exist)."""
        with _errors(self):
            if self.is_local:
                return sorted(os.listdir(self.path)) if os.path.isdir(self.path) else []
            self._fresh()
            try:
                entries = self.fs.ls(self.path, detail=False)
            except FileNotFoundError:
                return []
            base = self.path.rstrip("/")
            names = [posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != base]
            return sorted(n for n in names if n)

    def files(self) -> dict[str, int]:
        """Every file below this location: '/'-joined path relative to it -> size in bytes."""
        with _errors(self):
            if self.is_local:
                out = {}
                for dirpath, _, names in os.walk(self.path):
                    rel = os.path.relpath(dirpath, self.path)
                    prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
                    for n in names:
                        try:
                            out[prefix + n] = os.stat(os.path.join(dirpath, n)).st_size
                        except FileNotFoundError:  # removed while we walked
                            pass
                return out
            self._fresh()
            try:
                found = self.fs.find(self.path, detail=True)
            except FileNotFoundError:
                return {}
            base = self.path.rstrip("/") + "/"
            return {k[len(base):]: int(v.get("size") or 0) for k, v in found.items()
                    if k.startswith(base) and v.get("type", "file") == "file"}

    # -- writing --------------------------------------------------------------------------
    def write_bytes(self, data: bytes) -> None:
        """Write so readers see the old content or the new, never a torn one."""
        with _errors(self):
            if self.is_local:
                p = Path(self.path)
                p.parent.mkdir(parents=True, exist_ok=True)
                tmp = p.with_name(f".{p.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, p)
                return
            # one PUT: object stores make a whole object visible at once
            self.fs.pipe_file(self.path, data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        """Atomic write of a text file (see write_bytes)."""
        self.write_bytes(text.encode(encoding))

    def create_exclusive(self, data: bytes) -> Any:
        """Write only if nothing is here yet (If-None-Match: * on S3); FileExistsError otherwise.

        Returns what the file system's PUT returned (on S3 the response, with the new ETag).
        """
        with _errors(self):
            if self.is_local:
                p = Path(self.path)
                p.parent.mkdir(parents=True, exist_ok=True)
                with open(p, "xb") as fh:
                    fh.write(data)
                return None
            if self.protocol in ("s3", "s3a"):
                # the header itself, not s3fs's mode="create" (newer s3fs only): the server decides
                try:
                    return self.fs.pipe_file(self.path, data, IfNoneMatch="*")
                except OSError as exc:
                    if isinstance(exc, FileExistsError) or precondition_failed(exc):
                        raise FileExistsError(self.url) from exc
                    raise
            import inspect

            if "mode" in inspect.signature(self.fs.pipe_file).parameters:
                return self.fs.pipe_file(self.path, data, mode="create")
            # fsspec before 2024.12 has no create mode (and ignores one given): look, then write
            self._fresh()
            if self.fs.exists(self.path):
                raise FileExistsError(self.url)
            return self.fs.pipe_file(self.path, data)

    def replace_if_unchanged(self, data: bytes, etag: Optional[str]) -> Any:
        """Overwrite only if the object still has this ETag (S3 If-Match); FileExistsError when it changed."""
        with _errors(self):
            try:
                return self.fs.pipe_file(self.path, data, IfMatch=etag)
            except FileNotFoundError:
                raise
            except OSError as exc:
                if precondition_failed(exc):
                    raise FileExistsError(self.url) from exc
                raise

    def mkdir(self) -> None:
        """Make this folder (object stores have none: a no-op there)."""
        if self.is_local:
            with _errors(self):
                Path(self.path).mkdir(parents=True, exist_ok=True)

    def remove(self) -> bool:
        """Delete the file here; False when there was none."""
        with _errors(self):
            try:
                if self.is_local:
                    os.unlink(self.path)
                else:
                    self.fs.rm_file(self.path)
                    self._fresh()
            except FileNotFoundError:
                return False
            return True

    def remove_tree(self, keep: Collection[str] = ()) -> None:
        """Delete everything at and below this location, except files named in `keep` (held locks)."""
        with _errors(self):
            if self.is_local:
                import shutil

                if not keep:
                    if os.path.isdir(self.path):
                        shutil.rmtree(self.path)
                    elif os.path.exists(self.path):
                        os.unlink(self.path)
                    return
                for dirpath, dirnames, names in os.walk(self.path, topdown=False):
                    for n in names:
                        if n not in keep:
                            os.unlink(os.path.join(dirpath, n))
                    if not os.listdir(dirpath):
                        os.rmdir(dirpath)
                return
            doomed = [posixpath.join(self.path, k) for k in self.files() if posixpath.basename(k) not in keep]
            if self.is_file() and self.name not in keep:
                doomed.append(self.path)
            if doomed:
                self.fs.rm(doomed)  # batched deletes (S3: up to 1,000 keys a request)
            self._fresh()

    # -- zarr -----------------------------------------------------------------------------
    def zarr_store(self, read_only: bool = False) -> Any:
        """zarr's store for this location: a path string locally, else zarr's FsspecStore."""
        if self.is_local:
            return self.path
        from zarr.storage import FsspecStore

        with _errors(self):
            try:
                return FsspecStore.from_url(self.url, storage_options=dict(self.storage_options), read_only=read_only)
            except ImportError as exc:  # zarr wraps synchronous file systems (memory://) with fsspec >= 2024.12
                raise MissingDependencyError(
                    f"--store {self.url}: zarr needs a newer fsspec for {self.protocol}:// ({_first_line(exc)}): "
                    f"pip install -U fsspec") from exc

    # -- internals ------------------------------------------------------------------------
    def _fresh(self) -> None:
        # other processes write here: never answer from a listing cached earlier
        try:
            self.fs.invalidate_cache(self.path)
        except Exception:  # filesystems without a cache
            pass


@contextmanager
def _errors(loc: Location) -> Iterator[None]:
    """Turn what object stores raise for missing credentials, buckets or endpoints into one-line StoreErrors."""
    try:
        yield
    except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError):
        raise
    except StoreError:
        raise
    except PermissionError as exc:
        raise StoreError(f"access to {loc.url} denied ({_first_line(exc)}): check the credentials "
                         f"(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or --storage-option key=... secret=...)") from exc
    except Exception as exc:
        name = type(exc).__name__
        if loc.is_local and isinstance(exc, OSError):
            raise
        if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
            raise StoreError(f"no credentials for {loc.url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                             f"(or AWS_PROFILE), or pass --storage-option key=... --storage-option secret=...") from exc
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                    "ServerDisconnectedError", "ConnectionClosedError") or isinstance(exc, ConnectionError):
            raise StoreError(f"cannot reach the storage service for {loc.url} ({_first_line(exc)}): check "
                             f"AWS_ENDPOINT_URL / --storage-option endpoint_url=... and the network") from exc
        raise


def precondition_failed(exc: BaseException) -> bool:
    """True for an S3 "412 Precondition Failed" as s3fs raises it (a conditional write that lost)."""
    import errno

    text = str(exc)
    return getattr(exc, "errno", None) == errno.EINVAL or "PreconditionFailed" in text or "412" in text \
        or "Precondition" in text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def _protocol_fs(protocol: str, options: dict[str, Any], url: str) -> Any:
    """The (synchronous) fsspec filesystem of a protocol, with one-line errors for unknown or uninstalled ones."""
    import fsspec
    from fsspec.registry import known_implementations, registry

    if protocol not in registry and protocol not in known_implementations:
        common = "s3, gs, az, memory, file"
        raise ConfigError(f"--store {url}: unknown protocol {protocol!r}: use a folder or a URL such as "
                          f"s3://bucket/path ({common}, or any fsspec protocol)")
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        pkg = _PACKAGES.get(protocol, "the fsspec package for it")
        raise MissingDependencyError(f"--store {url} needs {pkg} for {protocol}://: pip install {pkg}") from exc
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"--storage-option for {protocol}://: {_first_line(exc)}: check the option names") from exc


def open_location(store: "str | os.PathLike | Location", storage_options: Optional[Mapping[str, Any]] = None) -> Location:
    """The root Location of a store given as a folder, a file:// URL or any fsspec URL."""
    if isinstance(store, Location):
        return store
    text = os.fspath(store) if not isinstance(store, str) else store
    if text.startswith("file://"):
        text = text[len("file://"):]
    if "://" not in text:
        p = Path(text).expanduser()
        return Location(_local_fs(), p.absolute().as_posix(), True, str(p))
    protocol, _, rest = text.partition("://")
    protocol = protocol.lower()
    if not protocol.replace("+", "").replace("-", "").isalnum():
        raise ConfigError(f"--store {text!r} is not a folder or a URL such as s3://bucket/path")
    options = _nested(dict(storage_options or {}))
    if protocol in _FRESH_LISTINGS:
        options.setdefault("use_listings_cache", False)
    fs = _protocol_fs(protocol, options, text)
    path = fs._strip_protocol(text)
    if not str(path).strip("/"):
        raise ConfigError(f"--store {text}: name a path inside the bucket, e.g. {protocol}://bucket/store.zarr")
    return Location(fs, str(path).rstrip("/"), False, text.rstrip("/"), protocol, options)


def _local_fs() -> Any:
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem()
