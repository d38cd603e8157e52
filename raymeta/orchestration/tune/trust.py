"""The trust boundary of a ``raymeta tune`` run directory: Ray never unpickles unsigned state.

Why: ``Tuner.restore`` deserialises pickles from the experiment directory, so anyone who can
write ``--out/ray_results/<name>/`` (or the ``--storage`` store) could otherwise run code as the
user on a rerun. What Ray 2.60 unpickles from an experiment directory (read from its source):

* ``tuner.pkl``: ``TunerInternal._restore_from_path_or_uri`` (``cloudpickle.loads``), on
  ``Tuner.restore``. ``Tuner.can_restore`` only tests that the file exists (no load).
* ``experiment_state-<session>.json``, the newest by name: its ``CLOUDPICKLE_FALLBACK`` blobs
  (``_loads_with_cloudpickle``; trial states via ``Trial.from_json_state``) are decoded by
  ``ExperimentAnalysis`` (inside ``Tuner.restore``, and for the ``ResultGrid`` after ``fit``)
  and by ``TuneController.resume``.
* every other top-level ``*.json`` / ``*.pkl``: ``sync_down_experiment_state`` copies them all
  to the driver staging directory, where ``_load_newest_checkpoint`` unpickles
  ``basic-variant-state-*.json`` (a pickle despite its name; raymeta's search algorithm),
  ``search_gen_state-*.json`` / ``searcher-state-*.pkl`` (Searchers) and
  ``callback-states-*.pkl`` (stateful callbacks; raymeta's callbacks have no state).
* ``<trial>/error.pkl`` (``Trial.get_pickled_error`` for the ``ResultGrid``) and, for class
  trainables only, ``dict_checkpoint.pkl`` in a checkpoint. ``params.pkl`` (Tune's JSON logger;
  raymeta's, ``_history.JsonLogger``, does not write it) is never read back. So every ``*.pkl`` at any depth is covered.

Not unpickled: trial checkpoints (``state.pt`` is loaded ``weights_only``, ``trial.json`` and
Ray's ``.metadata.json`` are JSON), ``result.json``/``progress.csv`` (JSON/CSV), and scheduler
state (Tune 2.60 does not save it: the PBT object is rebuilt from ``tuner.pkl``).

What is signed: a manifest ``{relative path: sha256}`` of those files, bound to the run (the
experiment path and a digest of the run's fingerprint), with HMAC-SHA256 under a per-user key
kept outside ``--out`` (``$RAYMETA_KEY_FILE``, else ``$XDG_CONFIG_HOME/raymeta/run-key`` or
``~/.config/raymeta/run-key``; 0600, refused when group/world-accessible or not the user's).
Next to the manifest (``--out/.trust/``) is a copy of every signed file (``state-N/``).

When: ``tuner.pkl`` right after Tune writes it (``sign_initial``); the state files each time
the driver snapshots its experiment state (``sign_snapshot``, called from the search
algorithm's ``save_to_dir``). Tune writes a snapshot into its local staging directory
(experiment state, then search algorithm, then callbacks) and only *then* uploads the staging
directory to the experiment directory (in a background thread). Signing from the staging copy
inside that sequence means a file is signed before it can appear in the experiment directory,
so a SIGKILL at any instant leaves the experiment directory holding, per file, the signed
version, an older signed version, a prefix of the signed version (upload cut short) or nothing
(first upload never ran). ``verify`` accepts exactly those and puts the signed copy in place
(the resume starts from the signed snapshot, at most one snapshot older than the live one);
anything else (a changed ``tuner.pkl``, which Tune never rewrites, an unknown restorable file,
other content) is refused before Ray reads a byte. A kill between Tune writing ``tuner.pkl``
and ``sign_initial`` (no trial has started yet) leaves an unsigned directory: refused too.

Outside the boundary: Ray's session directory (``/tmp/ray/session_*``, the driver staging
directory, owned by whoever started Ray) and someone writing into ``--out`` *while* the run is
live. A ``--storage`` store is read and repaired through pyarrow's filesystem like a local one.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raymeta.errors import ConfigError
from raymeta.fileio import atomic_write_bytes

TRUST_DIR = ".trust"
MANIFEST = "manifest.json"
TUNER_PKL = "tuner.pkl"
SEEN_PER_FILE = 8  # older signed versions a stale (killed-upload) file may still hold
# test hook: once the file this names exists, SIGKILL the driver right after it signs a
# snapshot, before Tune uploads it
KILL_AFTER_SIGN_ENV = "RAYMETA_TEST_KILL_AFTER_SIGN"


def key_file() -> Path:
    env = os.environ.get("RAYMETA_KEY_FILE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "raymeta" / "run-key"


def load_key() -> bytes:
    """The user's run-signing key, created (0600, parent 0700) on first use. A key file that
    cannot serve (not a regular file, someone else's, readable by others, not hex text) is a
    one-line ``ConfigError``; ``raymeta tune`` reads it before Ray starts."""
    p = key_file()
    if not p.exists():
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, p)  # atomic create-if-absent: a concurrent first use keeps one key
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    st = p.stat()
    if not stat.S_ISREG(st.st_mode):  # a directory was an IsADirectoryError, a FIFO a hang
        raise ConfigError(
            f"raymeta key file {p} is not a regular file; remove it or fix RAYMETA_KEY_FILE"
        )
    if st.st_uid != os.getuid():
        raise ConfigError(f"raymeta key file {p} is owned by uid {st.st_uid}, not you; remove it")
    if st.st_mode & 0o077:
        raise ConfigError(
            f"raymeta key file {p} is accessible by others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"chmod 600 {p}"
        )
    try:  # bytes that are not text (UnicodeDecodeError, a ValueError) are a damaged key too
        key = bytes.fromhex(p.read_bytes().decode("ascii").strip())
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ConfigError(f"raymeta key file {p} is damaged; remove it (signed runs then restart)")
    return key


def run_digest(fingerprint: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()


def restorable(rel: str) -> bool:
    """A file Ray may deserialise on restore: top-level ``*.json``/``*.pkl``, ``*.pkl`` below."""
    if fnmatch.fnmatch(rel, "*.pkl"):
        return True
    return "/" not in rel and rel.endswith(".json")


class Store:
    """An experiment directory on a pyarrow filesystem (local disk or a ``--storage`` URI)."""

    def __init__(self, path: str):
        import pyarrow.fs as pafs

        if "://" in path:
            self.fs, self.root = pafs.FileSystem.from_uri(path)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(path)
        self.root = self.root.rstrip("/")

    def files(self) -> list[str]:
        import pyarrow.fs as pafs

        if self.fs.get_file_info(self.root).type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True))
        n = len(self.root) + 1
        return sorted(i.path[n:] for i in infos if i.type == pafs.FileType.File)

    def read(self, rel: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(f"{self.root}/{rel}") as f:
                return bytes(f.read())
        except (FileNotFoundError, OSError):
            return None

    def write(self, rel: str, data: bytes) -> None:
        """Replace ``rel`` whole (temp file + move: a rename on local disk)."""
        tmp = f"{self.root}/{rel}.raymeta-tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, f"{self.root}/{rel}")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _mac(key: bytes, body: Mapping[str, Any]) -> str:
    return hmac.new(key, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()


@dataclass
class StateSigner:
    """Signs one run's restorable state. Picklable and key-free: Tune keeps it (in ``tuner.pkl``
    and the search algorithm's state), so it holds paths only and reads the key when it signs."""

    out: str  # --out (shown in messages)
    trust_dir: str  # --out/.trust: manifest + signed copies
    experiment: str  # experiment path (local dir or URI)
    run: str  # run_digest(fingerprint)

    # manifest -----------------------------------------------------------------------------
    def _manifest_path(self) -> Path:
        return Path(self.trust_dir) / MANIFEST

    def _read_manifest(self, key: bytes) -> dict[str, Any] | None:
        """The manifest, or None when absent; raises ``_Refused`` when not ours for this run."""
        p = self._manifest_path()
        if not p.is_file():
            return None
        try:
            m = json.loads(p.read_text())
            mac = m.pop("mac")
        except (ValueError, KeyError, AttributeError, TypeError):
            raise _Refused("its signature file is unreadable") from None
        if not hmac.compare_digest(str(mac), _mac(key, m)):
            raise _Refused("signed with another key, or changed")
        if m.get("experiment") != self.experiment or m.get("run") != self.run:
            raise _Refused("signed for another run")
        return dict(m)

    def _write(
        self,
        key: bytes,
        files: dict[str, str],
        seen: dict[str, list[str]],
        blobs: dict[str, bytes],
        prev: dict[str, Any] | None,
    ) -> None:
        """New ``state-N`` copy (unchanged files hard-linked), then the manifest, atomically."""
        td = Path(self.trust_dir)
        n = int(prev["n"]) + 1 if prev else 0
        state = td / f"state-{n}"
        if state.exists():
            shutil.rmtree(state)  # left by a writer killed before its manifest
        for rel in files:
            dst = state / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if rel in blobs:
                dst.write_bytes(blobs[rel])
            else:
                assert prev is not None
                src = td / f"state-{prev['n']}" / rel
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copyfile(src, dst)
        body = {"version": 1, "experiment": self.experiment, "run": self.run, "n": n}
        body |= {"files": files, "seen": seen}
        atomic_write_bytes(
            self._manifest_path(), json.dumps({**body, "mac": _mac(key, body)}).encode()
        )
        for old in td.glob("state-*"):
            if old.name != state.name:
                shutil.rmtree(old, ignore_errors=True)

    # signing ------------------------------------------------------------------------------
    def sign_initial(self) -> None:
        """Sign the ``tuner.pkl`` a fresh ``Tuner`` just wrote (it is never rewritten)."""
        key = load_key()
        data = Store(self.experiment).read(TUNER_PKL)
        if data is None:
            raise ConfigError(f"Ray Tune wrote no {TUNER_PKL} under {self.experiment}")
        Path(self.trust_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        for old in Path(self.trust_dir).glob("state-*"):
            shutil.rmtree(old, ignore_errors=True)
        self._manifest_path().unlink(missing_ok=True)
        h = _sha(data)
        self._write(key, {TUNER_PKL: h}, {TUNER_PKL: [h]}, {TUNER_PKL: data}, None)

    def sign_snapshot(self, staging_dir: str) -> None:
        """Sign the snapshot Tune just wrote to ``staging_dir``, before Tune uploads it.

        ``tuner.pkl`` keeps its first signature (a resume copies it into staging; never re-sign
        it from there). Cheap when nothing changed: no new copy, no manifest write."""
        key = load_key()
        try:
            prev = self._read_manifest(key)
        except _Refused as e:
            raise ConfigError(f"{self._manifest_path()} changed during the run ({e})") from None
        if prev is None:
            raise ConfigError(f"{self._manifest_path()} vanished during the run")
        files, seen = dict(prev["files"]), {k: list(v) for k, v in prev["seen"].items()}
        blobs: dict[str, bytes] = {}
        root = Path(staging_dir)
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if not p.is_file() or not restorable(rel) or rel == TUNER_PKL:
                continue
            data = p.read_bytes()
            h = _sha(data)
            if files.get(rel) != h:
                files[rel], blobs[rel] = h, data
                seen[rel] = [*seen.get(rel, [])[-(SEEN_PER_FILE - 1) :], h]
        if blobs:
            self._write(key, files, seen, blobs, prev)
            _kill_hook()

    # verification -------------------------------------------------------------------------
    def verify(self, store: Store | None = None) -> list[str]:
        """Check the experiment directory before anything restores from it.

        Returns the files put back from the signed copy (stale after a driver kill); raises a
        one-line ``ConfigError`` when any restorable file is not raymeta's for this run."""
        store = store or Store(self.experiment)
        live = [r for r in store.files() if restorable(r)]
        try:
            return self._verify(store, live)
        except _Refused as e:
            if "://" in self.experiment:
                where, fix = f"--storage holds Ray Tune state at {self.experiment}", self.experiment
            else:
                where = f"--out {self.out} holds Ray Tune state"
                fix = str(Path(self.experiment).parent)
            raise ConfigError(
                f"{where} that raymeta did not sign for this run ({e}); it will not be loaded: "
                f"remove {fix} or pick another --out to start fresh"
            ) from None

    def _verify(self, store: Store, live: list[str]) -> list[str]:
        if not live:
            return []
        key = load_key()
        m = self._read_manifest(key)
        if m is None:
            raise _Refused("no signature")
        files: dict[str, str] = m["files"]
        seen: dict[str, list[str]] = m["seen"]
        extra = [r for r in live if r not in files]
        if extra:
            raise _Refused(f"{extra[0]} is not signed")
        state = Path(self.trust_dir) / f"state-{m['n']}"
        stale = []
        for rel, h in files.items():
            copy = (state / rel).read_bytes() if (state / rel).is_file() else b""
            if _sha(copy) != h:
                raise _Refused(f"the signed copy of {rel} is damaged")
            data = store.read(rel)
            if data is not None and _sha(data) == h:
                continue
            if rel == TUNER_PKL:
                raise _Refused(f"{TUNER_PKL} {'is missing' if data is None else 'changed'}")
            # what a driver killed mid-upload leaves: nothing, an older signed version, a prefix
            if data is None or _sha(data) in seen.get(rel, []) or copy.startswith(data):
                stale.append((rel, copy))
                continue
            raise _Refused(f"{rel} changed")
        for rel, copy in stale:
            store.write(rel, copy)
        return [rel for rel, _ in stale]


def _kill_hook() -> None:
    trigger = os.environ.get(KILL_AFTER_SIGN_ENV)
    if trigger and os.path.exists(trigger):
        os.kill(os.getpid(), signal.SIGKILL)


class _Refused(Exception):
    """Why a directory is not trusted (becomes part of the one-line ConfigError)."""
