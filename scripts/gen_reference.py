"""Generate docs/reference.md, the reference of every config group, option and key, from conf/.

    .venv/bin/python scripts/gen_reference.py           # (re)write docs/reference.md
    .venv/bin/python scripts/gen_reference.py --check   # exit 1 if docs/reference.md is stale

Everything comes from the YAML files themselves: each file's header comment, every key with its
default and its comment. The YAML is read as text, line by line (no YAML library keeps
comments): `key: value  # comment`, continuation comments aligned under the first one, comment
lines standing alone (attached to the key after them), flow mappings (`model: {k: 1}`, also
over several lines) expanded into dotted keys, defaults lists and block scalars (`|`). The
output depends only on the files in conf/ (sorted), so it is deterministic.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
OUT = ROOT / "docs" / "reference.md"
EXCLUDE = {"hydra/job_logging"}  # Hydra internals: the console/log format, not an option
COMMAND = ".venv/bin/python scripts/gen_reference.py"


@dataclass
class Entry:
    key: str  # dotted path as written on the command line
    value: str  # default as written in the file ("" for a node)
    comment: list[str] = field(default_factory=list)


@dataclass
class Parsed:
    header: list[str]
    package_global: bool
    defaults: list[Entry]
    entries: list[Entry]


def split_comment(text: str) -> tuple[str, str | None, int]:
    """`value  # comment` -> (value, comment, column of '#'); quotes respected."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip(), text[i + 1 :].strip(), i
    return text.rstrip(), None, -1


def scan(text: str):
    """(character, bracket depth after it, whether it is inside quotes) for each character."""
    depth, quote = 0, None
    for ch in text:
        quoted = quote is not None
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        yield ch, depth, quoted


def balance(text: str) -> int:
    """Open brackets left at the end of `text` (quoted ones do not count)."""
    depth = 0
    for _, depth, _ in scan(text):
        pass
    return depth


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split a flow collection's body on top-level separators."""
    parts, cur = [], ""
    for ch, depth, quoted in scan(text):
        if ch == sep and depth == 0 and not quoted:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def expand(key: str, value: str) -> list[tuple[str, str]]:
    """A flow mapping `{a: 1, b: {c: 2}}` -> [(key.a, 1), (key.b.c, 2)]; else [(key, value)]."""
    value = value.strip()
    if value.startswith("{") and value.endswith("}") and value != "{}":
        out = []
        for part in split_top(value[1:-1]):
            k, _, v = part.partition(":")
            out += expand(f"{key}.{k.strip()}", v)
        return out
    return [(key, value)]


def parse(path: Path) -> Parsed:
    lines = path.read_text().splitlines()
    header, i, package_global = [], 0, False
    while i < len(lines) and lines[i].lstrip().startswith("#"):
        text = lines[i].strip()[1:].strip()
        if text.startswith("@package"):
            package_global = "_global_" in text
        else:
            header.append(text)
        i += 1
    defaults: list[Entry] = []
    entries: list[Entry] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the open nodes
    pending: list[str] = []  # comment lines standing alone, for the next key
    last: Entry | None = None  # the entry a continuation comment belongs to
    last_col = -1
    in_defaults = False
    block_indent = None  # inside a block scalar deeper than this
    while i < len(lines):
        line = lines[i]
        i += 1
        indent = len(line) - len(line.lstrip())
        stripped = line.strip()
        if block_indent is not None:
            if not stripped or indent > block_indent:
                continue
            block_indent = None
        if not stripped:
            last, pending = None, []
            continue
        if stripped.startswith("#"):
            text = stripped[1:].strip()
            if last is not None and indent == last_col:
                last.comment.append(text)
            else:
                pending.append(text)
                last = None
            continue
        body, comment, col = split_comment(line)
        while balance(body) > 0 and i < len(lines):  # a flow collection over several lines
            more, more_comment, _ = split_comment(lines[i])
            i += 1
            body += " " + more.strip()
            comment = comment or more_comment
        comment_lines = pending + ([comment] if comment else [])
        pending = []
        item = body.strip()
        if item.startswith("- "):  # a defaults-list entry (the only block lists in conf/)
            k, sep, v = item[2:].partition(":")
            entry = Entry(k.strip(), v.strip() if sep else "", comment_lines)
            if in_defaults:
                defaults.append(entry)
            last, last_col = entry, col
            continue
        key, _, value = item.partition(":")
        key, value = key.strip(), value.strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        in_defaults = key == "defaults" and not stack
        if in_defaults:
            last = None
            continue
        dotted = ".".join([k for _, k in stack] + [key])
        if value in ("|", "|-", ">", ">-"):
            block_indent = indent
            value = "(text)"
        if value == "":
            stack.append((indent, key))
        pairs = expand(dotted, value)
        for n, (k, v) in enumerate(pairs):
            entry = Entry(k, v, comment_lines if n == 0 else [])
            entries.append(entry)
        last, last_col = entries[-1], col
        if len(pairs) > 1:
            last = entries[-len(pairs)]
    return Parsed(header, package_global, defaults, entries)


def prose(text: str) -> str:
    """Escape < and > outside `code` spans, so `<run dir>` is not taken for an HTML tag."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def code(text: str) -> str:
    return f"`{cell(text)}`" if text else ""


def table(entries: list[Entry], prefix: str) -> list[str]:
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for e in entries:
        value = e.value if e.value else "(node)"
        rows.append(f"| {code(prefix + e.key)} | {code(value)} | {cell(prose(' '.join(e.comment)))} |")
    return rows


def groups() -> list[str]:
    """Config groups: every directory under conf/ holding YAML files, hydra internals excluded."""
    found = set()
    for path in CONF.rglob("*.yaml"):
        group = path.parent.relative_to(CONF).as_posix()
        if group != "." and group not in EXCLUDE:
            found.add(group)
    return sorted(found, key=lambda g: (g.startswith("hydra"), g))


def anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", text.lower()).replace(" ", "-")


def generate() -> str:
    main = parse(CONF / "config.yaml")
    chosen = {}
    for d in main.defaults:
        name = d.key.removeprefix("override ").strip("/")
        chosen[name] = d.value
    out = [
        "# Configuration reference",
        "",
        f"<!-- Generated from conf/ by scripts/gen_reference.py; do not edit. Regenerate: {COMMAND} -->",
        "",
        "Every config group, option and key, with its default and the comment it carries in",
        "`conf/`. Choose an option with `group=option`, change a key with `key=value`, add a",
        "preset with `+experiment=NAME` (see the [user guide](guide.md#config-groups)).",
        "`dlrun --cfg job` prints the composed config of any command.",
        "",
        "Contents: [conf/config.yaml](#confconfigyaml)",
    ]
    names = groups()
    out[-1] += "".join(f", [{g}](#{anchor(g)})" for g in names)
    out += ["", "## conf/config.yaml", ""]
    out += [prose(" ".join(main.header)), ""]
    out += ["Defaults list: the option each group starts with.", ""]
    out += ["| group | default | options |", "| --- | --- | --- |"]
    for d in main.defaults:
        if not d.value and d.key == "_self_":
            continue
        out.append(f"| {code(d.key)} | {code(d.value)} | {cell(prose(' '.join(d.comment)))} |")
    top = [e for e in main.entries if not e.key.startswith("hydra")]
    out += ["", "Keys of the primary config (`hydra.*`, the run directories, help text and the",
            "sweep-report callback, are in `conf/config.yaml` itself):", ""]
    out += table(top, "")
    for g in names:
        files = sorted((CONF / g).glob("*.yaml"))
        options = [p.stem for p in files]
        default = chosen.get(g)
        out += ["", f"## {g}", ""]
        how = "+experiment=NAME" if g == "experiment" else f"{g}=NAME"
        if g == "hparams_search":
            how = "-m hparams_search=NAME"
        if g.startswith("hydra/"):
            how = f"{g}=NAME"
        line = f"Options ({len(options)}): " + ", ".join(f"[`{o}`](#{anchor(g + '/' + o)})" for o in options)
        line += f". Select with `{how}`"
        if default is not None:
            line += f"; default `{default}`"
        out += [line + ".", ""]
        for p in files:
            parsed = parse(p)
            out += [f"### {g}/{p.stem}", ""]
            out += [f"`conf/{g}/{p.name}`" + (" (global package: keys are top-level)" if parsed.package_global else ""), ""]
            if parsed.header:
                out += [prose(" ".join(parsed.header)), ""]
            if parsed.defaults:
                out += ["Defaults: " + ", ".join(code(f"{d.key}: {d.value}" if d.value else d.key) for d in parsed.defaults), ""]
            prefix = ""
            if not parsed.package_global:
                prefix = g.replace("/", ".") + "."
            if parsed.entries:
                out += table(parsed.entries, prefix) + [""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = generate()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"docs/reference.md is stale: run {COMMAND}")
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
