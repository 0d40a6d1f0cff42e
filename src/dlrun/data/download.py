"""Downloading a dataset file: try each mirror, keep the bytes only if their SHA-256 is one of
the accepted digests, and write them into the cache atomically (dlrun.runs.atomic), so the cache never
holds a bad or partial file. Used by dlrun.data.sources.locate_files when a file is not found
locally and dataset.download is true (never with an explicit dataset.data_dir).
"""
from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from pathlib import Path

from dlrun import errors
from dlrun.errors import DataError
from dlrun.runs.atomic import atomic_write_bytes

# A download larger than this is refused (the largest real file is 26 MB).
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024


def short(digest: str) -> str:
    return digest[:12] + "..."


def one_line(e: BaseException | str) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        e = e.reason  # "Connection refused" rather than "<urlopen error [Errno 111] ...>"
    return errors.one_line(e)


def fetch(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "dlrun"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = response.read(MAX_DOWNLOAD_BYTES + 1)
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise ValueError(f"larger than {MAX_DOWNLOAD_BYTES} bytes")
    return data


def download(name: str, fname: str, accepted: tuple[str, ...], mirrors: list[str],
             dest_dir: Path, timeout: float) -> tuple[Path | None, list[str]]:
    """Try each mirror; return (cached path or None, one reason per failed mirror)."""
    failures: list[str] = []
    for mirror in mirrors:
        url = mirror if mirror.endswith("/") else mirror + "/"
        url += fname
        try:
            data = fetch(url, timeout)
        except (OSError, http.client.HTTPException, ValueError) as e:
            failures.append(f"{url}: {one_line(e)}")
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest not in accepted:
            failures.append(f"{url}: SHA-256 {short(digest)} does not match the expected "
                            f"{' or '.join(short(d) for d in accepted)}, not cached")
            continue
        dest = dest_dir / fname
        try:
            atomic_write_bytes(dest, data)
        except OSError as e:
            raise DataError(f"{name}: cannot write {dest} ({one_line(e)}); set DLRUN_CACHE_DIR "
                            "to a writable directory") from e
        return dest, failures
    return None, failures
