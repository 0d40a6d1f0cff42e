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
        while words and re.match(r"^[A-Z_]+=", words[0]):  # PYTHONPATH=examples .venv/bin/dlrun ...
            words = words[1:]
        if words and words[0].endswith("/dlrun") and not {"-m", "--help", "--cfg"} & set(words[1:]):
            commands.append(words[1:])
    return commands


def test_the_readmes_commands_compose(tmp_path, monkeypatch):
    """Every `dlrun` command the README shows composes into a valid config (Hydra's compose
    API, then dlrun's own validation), so the front page never shows a command that fails.
    They run from the repository root, where examples/make_arrays.py wrote my_arrays.npz and
    examples/make_reviews.py the folder my_reviews/."""
    import subprocess

    from _config import compose
    from dlrun.train import build_setup
    subprocess.run([sys.executable, ROOT / "examples" / "make_arrays.py", tmp_path / "my_arrays.npz"],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, ROOT / "examples" / "make_reviews.py", tmp_path / "my_reviews",
                    "--train", "40", "--test", "20"], check=True, capture_output=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    commands = readme_commands()
    assert len(commands) >= 4, commands
    assert any("dataset=npz" in c for c in commands) and any("model=custom" in c for c in commands)
    for overrides in commands:
        build_setup(compose(*overrides))


@pytest.mark.slow
def test_the_your_data_page_runs(tmp_path):
    """Every command of docs/your-data.md's "Try it" block, in order, from a directory laid out
    like the repository (examples/, .venv/): each exits 0 and writes what the next one reads."""
    import subprocess

    from conftest import dlrun_env
    page = (ROOT / "docs" / "your-data.md").read_text()
    block = re.search(r"## Try it\n.*?```sh\n(.*?)```", page, flags=re.S).group(1)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) >= 6
    for line in lines:
        proc = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=dlrun_env(tmp_path),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}"
    assert (tmp_path / "runs" / "arrays" / "export" / "model.jax_export").is_file()
    assert (tmp_path / "runs" / "predictions.csv").read_text().startswith("input,label,class")
    summary = (tmp_path / "runs" / "streamed" / "summary.json").read_text()
    assert "host (streamed)" in summary
