"""The storage root: one local folder or `s3://` / `gs://` URI under which every job writes.

Layout under the root:

    raw/<dataset>/                 landed source files (CSV, JSONL, Parquet) as they arrived
    curated/<dataset>/             rows that passed validation, as Parquet
    quarantine/<dataset>/          rows that failed, as Parquet with `_reason` and `_source`
    features/<feature_view>/       feature tables with event timestamps (Feast offline store)
    feature_repo/                  Feast registry (registry.db) and the SQLite online store
    predictions/<route>/date=.../  the Serve app's prediction log (slipway.predictions)
    monitoring/<name>/<run_id>/    monitor summaries and reports; alert state per monitor
    runs/<job>/<run_id>.json       one manifest per job run: config, code and data versions, metrics
    wandb/                         W&B run files (local roots only; remote roots use a temp dir)
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from slipway.conditional import ConditionalStore, conditional_store


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()


def local_cache(*parts: str) -> str:
    """A folder under `~/.cache/slipway/` for local copies of remote files (models, exports)."""
    return os.path.join(os.path.expanduser("~/.cache/slipway"), *parts)


class Storage:
    """Paths and small JSON documents under the configured root, on any pyarrow filesystem."""

    def __init__(self, root: str) -> None:
        self.is_local = "://" not in root or root.startswith("file://")
        self._store: ConditionalStore | None = None
        if self.is_local:
            base = os.path.abspath(root.removeprefix("file://"))
            self.fs: pafs.FileSystem = pafs.LocalFileSystem()
            self.root = base
            self._base = base
        else:
            self.fs, self._base = pafs.FileSystem.from_uri(root)
            self.root = root.rstrip("/")

    def uri(self, *parts: str) -> str:
        """Full path or URI of `parts` under the root, as Ray Data and Feast take it."""
        return "/".join([self.root, *parts])

    def _path(self, *parts: str) -> str:
        return "/".join([self._base.rstrip("/"), *parts])

    def exists(self, *parts: str) -> bool:
        """Whether a file or folder exists under the root."""
        return self.fs.get_file_info(self._path(*parts)).type != pafs.FileType.NotFound

    def makedirs(self, *parts: str) -> str:
        """Create a folder under the root (no-op on object stores) and return its URI."""
        self.fs.create_dir(self._path(*parts), recursive=True)
        return self.uri(*parts)

    def remove(self, *parts: str) -> None:
        """Delete a folder or file under the root if it exists."""
        info = self.fs.get_file_info(self._path(*parts))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self._path(*parts))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self._path(*parts))

    def open_output(self, *parts: str) -> pa.NativeFile:
        """A writable stream to the file `parts`, creating its folder."""
        if len(parts) > 1:
            self.makedirs(*parts[:-1])
        return self.fs.open_output_stream(self._path(*parts))

    def write_whole(self, data: bytes, *parts: str) -> str:
        """Write `data` to the file `parts` so that readers never see it half written (a
        hidden temporary file renamed into place on local disks; object stores publish an
        object only once its upload completes); return its URI."""
        if not self.is_local:
            with self.open_output(*parts) as out:
                out.write(data)
            return self.uri(*parts)
        temp = (*parts[:-1], f".{parts[-1]}.{uuid.uuid4().hex[:8]}.tmp")
        with self.open_output(*temp) as out:
            out.write(data)
        self.fs.move(self._path(*temp), self._path(*parts))
        return self.uri(*parts)

    def write_part(self, table: pa.Table, writer: str, *folder: str) -> str:
        """Add `table` to `folder` as a new Parquet file `<writer>-<millis>-<random>.parquet`,
        written whole (readers of the folder never see it half written); return its URI."""
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        name = f"{writer}-{int(time.time() * 1000)}-{uuid.uuid4().hex[:6]}.parquet"
        return self.write_whole(buffer.getvalue().to_pybytes(), *folder, name)

    def create_exclusive(self, data: bytes, *parts: str) -> bool:
        """Create the file `parts` holding `data` unless it exists: True if this call created
        it. Of many processes racing for one name exactly one wins: on a local disk the complete
        file is hard-linked into place, which fails when the name is taken; object stores get a
        conditional write (`slipway.conditional`)."""
        if not self.is_local:
            return self._conditional().create(self._path(*parts), data)
        temp = (*parts[:-1], f".{parts[-1]}.{uuid.uuid4().hex[:8]}.tmp")
        with self.open_output(*temp) as out:
            out.write(data)
        try:
            os.link(self._path(*temp), self._path(*parts))
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(self._path(*temp))

    def update_json(self, change: Callable[[Any], Any], default: Any, *parts: str) -> Any:
        """Read-modify-write the JSON document `parts` (`default` while it is missing) so that
        concurrent updates from several processes never lose one another: `change` gets the
        current document and returns the new one, which is written whole and returned. Local
        disks hold a lock file meanwhile; object stores write conditionally on the state read
        and call `change` again on the newer document when another writer came first."""
        if self.is_local:
            self.makedirs(*parts[:-1])
            lock = self._path(*parts[:-1], f".{parts[-1]}.lock")
            with open(lock, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    doc = self.read_json(*parts) if self.exists(*parts) else copy.deepcopy(default)
                    new = change(doc)
                    self.write_json(new, *parts)
                    return new
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        store = self._conditional()
        while True:
            current = store.read(self._path(*parts))
            doc = json.loads(current[0].decode()) if current else copy.deepcopy(default)
            new = change(doc)
            if store.replace(self._path(*parts), _json_bytes(new),
                             current[1] if current else None):
                return new

    def _conditional(self) -> ConditionalStore:
        if self._store is None:
            self._store = conditional_store(self.root.split("://", 1)[0])
        return self._store

    def write_json(self, obj: Any, *parts: str) -> str:
        """Write `obj` as indented JSON to `parts`, whole (see `write_whole`); return its URI."""
        return self.write_whole(_json_bytes(obj), *parts)

    def read_bytes(self, *parts: str) -> bytes:
        """The whole content of the file `parts`."""
        with self.fs.open_input_stream(self._path(*parts)) as inp:
            return inp.read()

    def read_json(self, *parts: str) -> Any:
        """Read a JSON document written by `write_json`."""
        return json.loads(self.read_bytes(*parts).decode())

    def list_files(self, *parts: str) -> list[str]:
        """URIs of all files below a folder (or the file itself), sorted; [] when missing."""
        kind = self.fs.get_file_info(self._path(*parts)).type
        if kind == pafs.FileType.NotFound:
            return []
        if kind == pafs.FileType.File:
            return [self.uri(*parts)]
        infos = self.fs.get_file_info(pafs.FileSelector(self._path(*parts), recursive=True))
        prefix = self._base.rstrip("/")
        return sorted(
            self.root + i.path[len(prefix):] for i in infos if i.type == pafs.FileType.File
        )

    def upload(self, local: str, *parts: str) -> str:
        """Copy the local folder `local` to the folder `parts`; return its URI."""
        for base, _, files in os.walk(local):
            for file in files:
                rel = os.path.relpath(os.path.join(base, file), local).split(os.sep)
                with open(os.path.join(base, file), "rb") as inp, \
                        self.open_output(*parts, *rel) as out:
                    out.write(inp.read())
        return self.uri(*parts)

    def download(self, local: str, *parts: str) -> str:
        """Copy the folder `parts` to the local folder `local` once (a `.complete` marker makes
        later calls free); return `local`."""
        if not os.path.exists(os.path.join(local, ".complete")):
            prefix = self.uri(*parts) + "/"
            for uri in self.list_files(*parts):
                rel = uri[len(prefix):].split("/")
                os.makedirs(os.path.join(local, *rel[:-1]), exist_ok=True)
                with open(os.path.join(local, *rel), "wb") as out:
                    out.write(self.read_bytes(*parts, *rel))
            open(os.path.join(local, ".complete"), "w").close()
        return local

    def version(self, *parts: str) -> str:
        """Content version of a file or folder: a hash of its files' names, sizes and mtimes."""
        digest = hashlib.sha256()
        base = self._path(*parts)
        info = self.fs.get_file_info(base)
        infos = [info] if info.type == pafs.FileType.File else []
        if info.type == pafs.FileType.Directory:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        for info in sorted(infos, key=lambda i: i.path):
            if info.type == pafs.FileType.File:
                stamp = info.mtime_ns if info.mtime_ns is not None else ""
                digest.update(f"{info.path[len(base):]}:{info.size}:{stamp}\n".encode())
        return digest.hexdigest()[:16]
