"""One mirror: an fsspec filesystem and a root (s3://bucket/prefix, gs://, az://, file:///mnt/x).

Credentials and endpoints come the way each library reads them (for S3, botocore's: AWS_PROFILE,
AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL_S3, ...). Every call here is one store operation; retrying is
the caller's (uploader.py). An upload is checked: on S3, botocore sends a CRC32 of every request's
body and the store refuses one that does not match (its own checksum, at upload; where that is off,
the ETag, an MD5 of the bytes or of their parts, is compared after), then its size; a store with no
checksum of its own is read back.
"""

from __future__ import annotations

import hashlib
import os

import xxhash

from itertrain.core import failpoints, manifest
from itertrain.core.errors import UsageError

# S3: fail fast, we retry ourselves (a store that hangs must not hold a stop past its grace).
OPTIONS = {"s3": {"config_kwargs": {"connect_timeout": 10, "read_timeout": 120, "retries": {"max_attempts": 2}}},
           "file": {"auto_mkdir": True}, "local": {"auto_mkdir": True}}
PROBE = ".itertrain-probe"


def open_store(url: str, write: bool = True) -> Store:
    """The store behind --mirror_to, checked: reachable, its bucket there, our credentials allowed to
    write (`write`; else to list). UsageError (one line, exit 2) otherwise."""
    import fsspec

    if "://" not in url:
        raise UsageError(f"--mirror_to {url}: not a URL; give s3://bucket/prefix, gs://..., az://... or "
                         "file:///path")
    protocol = url.split("://", 1)[0]
    try:
        fs, root = fsspec.core.url_to_fs(url, **OPTIONS.get(protocol, {}))
    except ImportError as e:
        group = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure"}.get(protocol, "...")
        raise UsageError(f"--mirror_to {url}: {protocol}:// needs its fsspec package (pip install "
                         f"'itertrain[{group}]'): {str(e).splitlines()[0]}") from None
    except (ValueError, TypeError) as e:
        raise UsageError(f"--mirror_to {url}: {str(e).splitlines()[0]}") from None
    store = Store(url, fs, root.rstrip("/"))
    store.check(write)
    return store


class Store:
    def __init__(self, url: str, fs, root: str):
        self.url, self.fs, self.root = url.rstrip("/"), fs, root
        self.protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
        self.events = 0  # store writes so far (failpoint mirror.event)
        self.read_bytes = 0  # bytes read from the store so far (a resume on a fresh machine reports them)
        self.written_bytes = 0  # bytes uploaded so far

    def path(self, rel: str = "") -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def check(self, write: bool = True) -> None:
        where, local = f"--mirror_to {self.url}", self.protocol in ("file", "local")
        if local and write:
            parent = os.path.dirname(self.root.rstrip("/")) or "/"
            if not os.path.isdir(self.root) and not os.path.isdir(parent):
                raise UsageError(f"{where}: neither it nor its parent directory {parent} exists")
            try:
                os.makedirs(self.root, exist_ok=True)
            except OSError as e:
                raise UsageError(f"{where}: cannot create it ({e.strerror})") from None
        try:
            self.fs.invalidate_cache()
            self.fs.ls(self.root if local else self.root.split("/")[0])  # the directory, or the bucket (container)
            if write:
                self.fs.pipe_file(self.path(PROBE), b"itertrain")
                self.fs.rm(self.path(PROBE))
        except FileNotFoundError:
            raise UsageError(f"{where}: the bucket or directory {self.root.split('/')[0]!r} does not exist") from None
        except PermissionError as e:
            raise UsageError(f"{where}: the store refused our credentials ({_first(e)})") from None
        except Exception as e:  # noqa: BLE001 - any failure to reach the store is this one line
            raise UsageError(f"{where}: cannot reach the store ({type(e).__name__}: {_first(e)})") from None

    def listing(self) -> dict[str, int]:
        """{path relative to the root: size} of every object under the root, as the store says now."""
        self.fs.invalidate_cache()
        if not self.fs.exists(self.root):
            return {}
        found = self.fs.find(self.root, detail=True)
        base = self.fs._strip_protocol(self.root).rstrip("/") + "/"
        out = {}
        for path, info in found.items():
            path = self.fs._strip_protocol(path)
            if path.startswith(base) and info.get("type", "file") == "file":
                out[path[len(base):]] = int(info["size"])
        return out

    def cat(self, rel: str) -> bytes | None:
        try:
            data = self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            return None
        self.read_bytes += len(data)
        return data

    def _event(self, what: str, rel: str) -> None:
        self.events += 1
        failpoints.mirror_event(self.events, what, rel)

    def put(self, local: str, rel: str) -> None:
        """Upload one file and check it landed whole; OSError saying what differs otherwise."""
        self._event("put", rel)
        self.fs.put_file(local, self.path(rel))
        if why := self._landed(local, rel):
            raise OSError(f"{rel} on the mirror: {why}")
        self.written_bytes += os.path.getsize(local)

    def put_bytes(self, rel: str, data: bytes) -> None:
        self._event("put", rel)
        self.fs.pipe_file(self.path(rel), data)
        if self.fs.cat_file(self.path(rel)) != data:
            raise OSError(f"{rel} on the mirror differs from what was written")
        self.written_bytes += len(data)

    def get(self, rel: str, local: str) -> None:
        self.fs.get_file(self.path(rel), local)
        self.read_bytes += os.path.getsize(local)

    def copy(self, src: str, dst: str) -> None:
        self._event("copy", dst)
        self.fs.copy(self.path(src), self.path(dst))

    def remove(self, rel: str) -> None:
        self._event("remove", rel)
        try:
            self.fs.rm(self.path(rel), recursive=True)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache()

    def _landed(self, local: str, rel: str) -> str | None:
        self.fs.invalidate_cache(self.path(rel))
        info = self.fs.info(self.path(rel))
        size = os.path.getsize(local)
        if int(info["size"]) != size:
            return f"{info['size']} bytes, {size} here"
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        if self.protocol in ("s3", "s3a") and self._store_checks():
            return None  # the store checked each request's CRC32 as it arrived
        if self.protocol in ("s3", "s3a") and etag:
            expected = _s3_etag(local, size, parts=etag.count("-") > 0)
            if expected is not None:
                return None if expected == etag else f"ETag {etag}, the file here hashes to {expected}"
        with self.fs.open(self.path(rel), "rb") as f:  # no checksum of its own: read it back
            h = xxhash.xxh3_64()
            while chunk := f.read(8 << 20):
                h.update(chunk)
        return None if h.hexdigest() == manifest.file_digest(local) else "its bytes differ from the file here"


    def _store_checks(self) -> bool:
        """S3 through botocore with its request checksums on (the default, when_supported)."""
        client = getattr(self.fs, "s3", None)
        return getattr(getattr(getattr(client, "meta", None), "config", None), "request_checksum_calculation",
                       None) == "when_supported"


def _s3_etag(local: str, size: int, parts: bool) -> str | None:
    """S3's ETag of this file as s3fs uploads it: the MD5 of its bytes, or of its parts' MD5s; None
    where the part size cannot be known."""
    with open(local, "rb") as f:
        if not parts:
            return hashlib.file_digest(f, "md5").hexdigest()
        try:
            from s3fs.core import calculate_chunksize
        except ImportError:
            return None
        chunk, digests = calculate_chunksize(size), []
        while block := f.read(chunk):
            digests.append(hashlib.md5(block).digest())
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def _first(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
