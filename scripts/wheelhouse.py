"""``make wheelhouse``: the wheels of everything the images install, for image builds without a package index.

The list is derived from the packages themselves, never written down here: each service under services/ (which
brings the shared library and its extras through its path reference) and the build backends their pyproject.toml
files name. Versions come from the lock (constraints.txt), so an offline build installs what ``make venv`` does.

Our own packages are not kept as wheels: a service's wheel records the absolute path of the library it was built
against, which exists only on the machine that built it; the Dockerfiles build them from the copied sources instead.

    python scripts/wheelhouse.py DIR [EXTRA_REQUIREMENT ...]
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
LIBRARY = ROOT / "libs" / "vecsync"


def services() -> list[Path]:
    return sorted(path.parent for path in (ROOT / "services").glob("*/pyproject.toml"))


def project_name(folder: Path) -> str:
    return str(tomllib.loads((folder / "pyproject.toml").read_text())["project"]["name"])


def build_requirements(folders: list[Path]) -> list[str]:
    found: list[str] = []
    for folder in folders:
        for requirement in tomllib.loads((folder / "pyproject.toml").read_text())["build-system"]["requires"]:
            if requirement not in found:
                found.append(requirement)
    return found


def wheel_prefix(name: str) -> str:
    # Wheel file names normalise the project name: vecsync-core -> vecsync_core-0.1.0-py3-none-any.whl.
    return name.replace("-", "_").replace(".", "_") + "-"


def main(argv: list[str]) -> int:
    if not argv:
        print("Usage: python scripts/wheelhouse.py DIR [EXTRA_REQUIREMENT ...]", file=sys.stderr)
        return 2
    target, extra = Path(argv[0]).resolve(), argv[1:]
    target.mkdir(parents=True, exist_ok=True)
    folders = [LIBRARY, *services()]
    with tempfile.TemporaryDirectory(prefix="wheelhouse-") as scratch:
        fresh = Path(scratch)
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--constraint", str(LOCK)]
        command += ["--wheel-dir", str(fresh), *build_requirements(folders)]
        command += [*(str(folder) for folder in services()), *extra]
        result = subprocess.run(command, check=False)
        if result.returncode != 0:
            print(f"Building the wheelhouse in {target} failed (pip exit status {result.returncode}; see above).")
            return result.returncode
        own = tuple(wheel_prefix(project_name(folder)) for folder in folders)
        wanted = {wheel.name: wheel for wheel in fresh.glob("*.whl") if not wheel.name.startswith(own)}
        # Exactly the current list, with the wheels that did not change left untouched: an image build copies the
        # folder, and a copy of files whose times changed misses the build cache.
        for present in target.glob("*.whl"):
            if present.name not in wanted or not filecmp.cmp(present, wanted[present.name], shallow=False):
                present.unlink()
        for name, wheel in wanted.items():
            if not (target / name).exists():
                shutil.move(wheel, target / name)
    print(f"Wheelhouse ready: {sum(1 for _ in target.glob('*.whl'))} wheels in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
