"""Output paths checked before any work: a bad one is a one-line ``ConfigError``, nothing made.

Every output option goes through ``output_location`` (the CLI's ``output_arg``): a plain path or
a ``file://`` URI is a local path, written atomically (``raymeta.fileio``); any other
``scheme://`` URI (``s3://``, ``gs://``, ``hdfs://``, ``abfs://``...) is refused with one line
naming the options that do take one, except where the caller can write through ``pyarrow.fs``
(``RemoteFile``: a temporary name, then a move), so ``s3://b/x`` never becomes a local
directory ``s3:``. The checks below also refuse such a path from the Python API.

``os.access`` is not enough (root passes it on a read-only mount), so writability is probed by
really creating a file: ``probe_writable`` makes and removes a named temporary file (the path a
run will write, its lock file beside it), ``check_output_dir`` / ``check_output_file`` an unnamed
one (``O_TMPFILE``), which leaves no entry behind even if killed. Shared by the CLI and the API.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from raymeta.errors import ConfigError
from raymeta.fileio import make_temp_file

# ``scheme://`` as typed, or ``scheme:/`` once ``Path`` has collapsed the slashes (a one-letter
# scheme would be a Windows drive, so two letters at least)
_URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):/")
URI_OPTIONS = (
    "object-store URIs are taken by --storage (meta-train, tune) and by the output of "
    "'raymeta data convert' and 'raymeta data make-sinusoid'"
)


def uri_scheme(path: str | os.PathLike[str]) -> str | None:
    """The lower-cased scheme of ``scheme://...`` (``file`` included), None for a plain path."""
    m = _URI.match(os.fspath(path))
    return m.group("scheme").lower() if m else None


def output_location(path: str | os.PathLike[str], flag: str, remote: bool = False) -> str:
    """``path`` as a local path string (``file://`` URIs decoded), or, where ``remote``, any
    other URI unchanged; a URI elsewhere is a one-line ``ConfigError`` naming where URIs go."""
    text = os.fspath(path)
    scheme = uri_scheme(text)
    if scheme is None:
        return text
    if scheme == "file":
        parts = urlsplit(text if "://" in text else "file://" + text[len("file:") :])
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ConfigError(f"{flag} {text}: a file:// URI names a local path, file:///PATH")
        return unquote(parts.path) or "/"
    if remote:
        return text
    raise ConfigError(
        f"{flag} {text}: {scheme}:// is not supported here, only a local path or file:// URI; "
        f"{URI_OPTIONS}"
    )


def output_arg(flag: str, remote: bool = False) -> Callable[[Any], str]:
    """``type=`` for an output option: ``output_location`` at parse time (flags and --config
    alike), so a URI an option cannot take is refused before any work."""

    def parse(text: Any) -> str:
        if not isinstance(text, str) or not text.strip() or "\x00" in text:
            raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
        try:
            return output_location(text, flag, remote=remote)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


URI_CHECK_S = 60.0  # an unreachable store (gcs retries for minutes) fails the check, not hangs


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()`` in a daemon thread, or ``TimeoutError`` after ``seconds`` (the thread is left
    behind: pyarrow's calls cannot be interrupted, and the command is about to exit 2)."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box.append((False, exc))

    t = threading.Thread(target=run, name="raymeta-uri-check", daemon=True)
    t.start()
    t.join(seconds)
    if not box:
        raise TimeoutError(seconds)
    ok, value = box[0]
    if not ok:
        raise value
    return value


@dataclass(frozen=True)
class RemoteFile:
    """One file on a ``pyarrow.fs`` filesystem (an object store), published whole: written to a
    hidden temporary name beside it and moved into place, so readers never see half a file
    (on S3 an object appears whole anyway; the move keeps every filesystem to one rule)."""

    fs: Any  # pyarrow.fs.FileSystem
    path: str
    uri: str

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def open(cls, uri: str, flag: str, force: bool) -> RemoteFile:
        """Resolve ``uri`` and check it before any work: reachable, not a directory, and not
        existing without ``force``."""
        import pyarrow.fs as pafs

        def resolve() -> tuple[Any, str, Any]:
            fs, path = pafs.FileSystem.from_uri(uri)
            return fs, path, fs.get_file_info(path)

        try:
            fs, path, info = _within(URI_CHECK_S, resolve)
        except TimeoutError:
            raise ConfigError(
                f"{flag} {uri}: no answer from the object store in {URI_CHECK_S:g} s "
                "(network, credentials?)"
            ) from None
        except Exception as exc:  # noqa: BLE001 - pyarrow raises OSError, ArrowInvalid, ...
            why = " ".join(str(exc).split())[:300]
            raise ConfigError(f"{flag} {uri}: cannot use this URI ({why})") from None
        if info.type == pafs.FileType.Directory:
            raise ConfigError(f"{flag} {uri} is a directory")
        if info.type != pafs.FileType.NotFound and not force:
            raise ConfigError(f"{uri} exists (pass --overwrite to replace it)")
        return cls(fs, path.rstrip("/"), uri)

    def publish(self, local: str | os.PathLike[str]) -> None:
        """Upload the finished local file ``local`` to a temporary name, then move it here."""
        import pyarrow.fs as pafs

        parent, _, name = self.path.rpartition("/")
        tmp = f"{parent + '/' if parent else ''}.{name}.{os.getpid()}-{os.urandom(4).hex()}.tmp"
        if parent:
            self.fs.create_dir(parent, recursive=True)
        try:
            pafs.copy_files(
                os.fspath(local), tmp, pafs.LocalFileSystem(), destination_filesystem=self.fs
            )
            self.fs.move(tmp, self.path)
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: the upload may not have begun
                self.fs.delete_file(tmp)
            raise


def _nearest_existing(p: Path) -> Path:
    for parent in (p, *p.parents):
        try:
            if parent.exists():
                return parent
        except (OSError, ValueError):
            break
    return Path(".")


def _probe(directory: Path, flag: str, path: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path} is not writable ({exc.strerror or exc})") from None


def _refuse_uri(path: str | os.PathLike[str], flag: str) -> Path:
    """``path`` as a local ``Path``; a URI is refused, also one that ``Path`` collapsed and made
    absolute (``/cwd/s3:/bucket/x``): a directory ``scheme:`` is never created."""
    p = Path(output_location(path, flag))
    base = _nearest_existing(p)
    new = p.parts[len(base.parts) :] if p.is_absolute() == base.is_absolute() else p.parts
    for part in new:
        if _URI.match(part + "/"):
            raise ConfigError(
                f"{flag} {path}: would create a local directory {part!r} (a {part}// URI "
                f"that lost a slash?); {URI_OPTIONS}"
            )
    return p


def check_output_dir(path: str | os.PathLike[str], flag: str) -> Path:
    """``path`` is (or can be created as) a directory this process can write into."""
    p = _refuse_uri(path, flag)
    if not str(path) or "\0" in str(path):
        raise ConfigError(f"{flag} must be a directory path, got {str(path)!r}")
    try:
        exists, is_dir = p.exists(), p.is_dir()
    except OSError as exc:
        raise ConfigError(f"{flag} {p}: {exc.strerror or exc}") from None
    if exists and not is_dir:
        raise ConfigError(f"{flag} {p} exists and is not a directory")
    base = p if exists else _nearest_existing(p)
    if not base.is_dir():
        raise ConfigError(f"{flag} {p}: {base} is not a directory")
    _probe(base, flag, p)
    return p


def check_output_file(path: str | os.PathLike[str], flag: str, force: bool) -> Path:
    """``path`` names a file that may be (re)written: not a directory, no device, FIFO or
    socket, not existing without ``force``, inside a writable directory (missing parents may
    be created)."""
    p = _refuse_uri(path, flag)
    if not str(path) or "\0" in str(path):
        raise ConfigError(f"{flag} must be a file path, got {str(path)!r}")
    try:
        exists, is_dir = p.exists(), p.is_dir()
    except OSError as exc:
        raise ConfigError(f"{flag} {p}: {exc.strerror or exc}") from None
    if is_dir:
        raise ConfigError(f"{flag} {p} is a directory")
    if exists and not p.is_file():
        # the output is written beside the path and renamed over it: as root, --out /dev/null
        # --overwrite replaced the machine's /dev/null by a Parquet file
        raise ConfigError(
            f"{flag} {p} exists and is not a regular file (a device, FIFO or socket: raymeta "
            "writes a file beside it and renames it into place, which would replace it); "
            "give a file path"
        )
    if exists and not force:
        raise ConfigError(f"{p} exists (pass --overwrite to replace it)")
    base = _nearest_existing(p.parent)
    if not base.is_dir():
        raise ConfigError(f"{flag} {p}: {base} is not a directory")
    _probe(base, flag, p)
    return p


def _resolved(path: str | os.PathLike[str]) -> Path | None:
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, an unreadable component
        return None


def check_apart(
    out: str | os.PathLike[str],
    source: str | os.PathLike[str],
    out_flag: str = "--out",
    source_flag: str = "--input",
) -> None:
    """Refuse an output file that is ``source`` itself or lies inside the ``source`` directory:
    it would replace the input, or join the input dataset (every ``*.parquet`` under a
    directory is read as part of it) and be read back by the next run."""
    o, src = _resolved(out), _resolved(source)
    if o is None or src is None:
        return
    if o == src:
        raise ConfigError(f"{out_flag} must differ from {source_flag}")
    if src in o.parents and src.is_dir():
        raise ConfigError(
            f"{out_flag} {out} lies inside the {source_flag} directory {source} (it would "
            "become part of that dataset); write it elsewhere"
        )


ARTIFACTS = ("meta-checkpoint", "tune run", "results dataset")
_RESULTS_MARKER = "_schema.json"  # raymeta.results.sink.SCHEMA_FILE (pyarrow-free here)
_MARKER_MAX_BYTES = 1 << 20


def _is_results_marker(marker: Path) -> bool:
    """Whether ``marker`` is a raymeta results dataset's ``_schema.json`` (a JSON object with
    a ``schema_version``), not another tool's file of that name."""
    import json

    try:
        with open(marker, "rb") as f:
            info = json.loads(f.read(_MARKER_MAX_BYTES))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and "schema_version" in info


def artifact_kind(directory: Path, kinds: tuple[str, ...] = ARTIFACTS) -> str | None:
    """Which of ``kinds`` of raymeta artifact ``directory`` is, or None: a meta-checkpoint
    (a ``meta.json`` of ours, ``core.checkpoint.is_meta_checkpoint``), a ``raymeta tune`` run
    (``run.json`` beside ``report.json`` or the run's ``.trust/`` state) or a results dataset
    (its ``_schema.json`` marker)."""
    try:
        if "meta-checkpoint" in kinds and (directory / "meta.json").is_file():
            from raymeta.core.checkpoint import is_meta_checkpoint  # torch: only when needed

            if is_meta_checkpoint(directory):
                return "meta-checkpoint"
        if (
            "tune run" in kinds
            and (directory / "run.json").is_file()
            and ((directory / "report.json").is_file() or (directory / ".trust").is_dir())
        ):
            return "tune run"
        marker = directory / _RESULTS_MARKER
        if "results dataset" in kinds and marker.is_file() and _is_results_marker(marker):
            return "results dataset"
    except OSError:
        return None
    return None


def check_outside_artifacts(
    out: str | os.PathLike[str], flag: str = "--out", kinds: tuple[str, ...] = ARTIFACTS
) -> None:
    """Refuse an output path that is, or lies inside, a meta-checkpoint, a tune run or a
    results dataset (``artifact_kind``): it would replace one of the artifact's files or sit
    among them (a checkpoint's ``--overwrite`` swaps the whole directory, a dataset reads every
    part under it). Symlinks are followed, so a link into an artifact is refused too."""
    try:
        here = Path(out).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, an unreadable component
        return
    for d in (here, *here.parents):
        what = artifact_kind(d, kinds)
        if what is not None:
            raise ConfigError(f"{flag} {out} lies inside the {what} {d}; pick a path outside it")


def probe_writable(out: Path, flag: str = "--out") -> None:
    """Refuse an ``out`` that cannot be created, before any work and without creating anything:
    its nearest existing ancestor must be a writable directory (probed with a temp file, which
    also works as root, where permission bits say nothing)."""
    _refuse_uri(out, flag)
    base = out.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ConfigError(f"cannot write {flag} {out}: {base} is not a directory")
    try:
        fd, tmp = make_temp_file(base, out.name)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ConfigError(f"cannot write {flag} {out}: {exc.strerror or exc}") from None


def check_output_target(path: str, flag: str, force: bool) -> Path | RemoteFile:
    """An output file that may live on an object store: a URI is resolved and checked
    (``RemoteFile.open``), a local path or ``file://`` URI as ``check_output_file`` does."""
    if uri_scheme(path) not in (None, "file"):
        return RemoteFile.open(path, flag, force)
    return check_output_file(path, flag, force)


@contextlib.contextmanager
def writing(target: Path | RemoteFile) -> Iterator[Path]:
    """The local path to write ``target`` at: ``target`` itself (the writer publishes it
    atomically), or a file in a private temporary directory that is published to the object
    store once the block succeeds (and dropped, publishing nothing, when it fails)."""
    if isinstance(target, Path):
        yield target
        return
    with tempfile.TemporaryDirectory(prefix="raymeta-upload-") as d:
        local = Path(d) / (target.path.rpartition("/")[2] or "out")
        yield local
        target.publish(local)
