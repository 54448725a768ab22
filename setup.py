"""The library's dependencies and extras, read from the requirements files so that each version is pinned
in one place: requirements.txt, which a HuggingFace Space installs on its own before the rest of the
repository is copied in, and requirements-dev.txt. A line ``# [name]`` starts a section; pyproject.toml
declares the rest of the package."""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
LIBRARY = "library"  # the section `pip install .` installs; every other section is an extra of that name


def sections(*files: str) -> dict[str, list[str]]:
    """Requirement lines by section, comments and pip options (``-r``) left out."""
    found: dict[str, list[str]] = {}
    current = None
    for name in files:
        for line in (ROOT / name).read_text().splitlines():
            text = line.strip()
            if text.startswith("# [") and "]" in text:
                current = found.setdefault(text[3:text.index("]")], [])
            elif text and not text.startswith(("#", "-")) and current is not None:
                current.append(text.split(" #")[0].strip())
    return found


def extras(found: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each section as an extra; `app` and `dev` also take what they run on (the app loads the bundled GGUF
    and draws with viz; the tests run the app)."""
    extra = {name: lines for name, lines in found.items() if name != LIBRARY}
    extra["app"] = extra["gguf"] + extra["viz"] + extra["app"]
    extra["dev"] = extra["app"] + extra["dev"]
    return extra


if __name__ == "__main__":  # as the build backend runs it; tests import the functions above
    found = sections("requirements.txt", "requirements-dev.txt")
    setup(install_requires=found[LIBRARY], extras_require=extras(found))
