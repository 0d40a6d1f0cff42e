"""The documentation stays true to the repository: docs/reference.md is what
scripts/gen_reference.py generates from conf/ now, and every relative link and image in the
README and docs/ points at a file (and section) that exists."""
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "docs" / "howto").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "scripts" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_reference_is_current():
    generated = load_generator().generate()
    current = (ROOT / "docs" / "reference.md").read_text()
    assert current == generated, "docs/reference.md is stale: run .venv/bin/python scripts/gen_reference.py"


def test_reference_covers_every_option_file():
    text = (ROOT / "docs" / "reference.md").read_text()
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        rel = path.relative_to(ROOT / "conf").as_posix()
        if rel == "config.yaml" or rel.startswith("hydra/job_logging/"):
            continue
        assert f"`conf/{rel}`" in text, rel


def prose(path):
    return re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code blocks hold no links


def links(path):
    return LINK.findall(prose(path))


def anchors(path):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -N for repeats."""
    seen, out = {}, set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", prose(path), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return out


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_at_existing_files(path):
    missing = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # a URL (https:, mailto:)
        if target.startswith("#"):
            target = path.name + target  # a section of the same page
        file, _, anchor = target.partition("#")
        dest = path.parent / file
        if not dest.exists():
            missing.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            missing.append(target)  # a section that is not (or no longer) there
    assert not missing, f"{path.relative_to(ROOT)}: links to missing files or sections: {missing}"


def readme_commands() -> list[list[str]]:
    """The overrides of every single-run `dlrun ...` line in the README's code blocks."""
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    commands = []
    for line in "\n".join(blocks).splitlines():
        words = line.split("#")[0].split()
        if words and words[0].endswith("/dlrun") and not {"-m", "--help", "--cfg"} & set(words[1:]):
            commands.append(words[1:])
    return commands


def test_the_readmes_commands_compose():
    """Every `dlrun` command the README shows composes into a valid config (Hydra's compose
    API, then dlrun's own validation), so the front page never shows a command that fails."""
    from _config import compose
    from dlrun.train import build_setup
    commands = readme_commands()
    assert len(commands) >= 4, commands
    for overrides in commands:
        build_setup(compose(*overrides))
