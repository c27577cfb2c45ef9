"""Ships the systemd unit, the example config and the docs inside the wheel (``watcher/_data/``), so that
``flora-watcher install-unit`` and ``flora-watcher man`` work from any install, not only from a checkout.
The files stay where they are in the repository (one copy each); the build copies them. Everything else is in
pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# source (relative to the repository) -> name inside watcher/_data/ (watcher/resources.py reads the same map)
DATA_FILES = {
    "systemd/flora-watcher.service": "flora-watcher.service",
    "systemd/flora-watcher.env.example": "flora-watcher.env.example",
    "config/flora-watcher.example.toml": "flora-watcher.example.toml",
    "README.md": "docs/README.md",
    **{f"docs/{p.name}": f"docs/{p.name}" for p in sorted((HERE / "docs").glob("*.md"))},
}


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "watcher" / "_data"
        for source, name in DATA_FILES.items():
            path = HERE / source
            if path.is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                (target / name).write_bytes(path.read_bytes())


setup(cmdclass={"build_py": BuildPyWithData})
