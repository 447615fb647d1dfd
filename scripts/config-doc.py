#!/usr/bin/env python3
"""Writes the flag tables of docs/CONFIGURATION.md from the binaries' own `--help`.

Each table stands between two marker comments, `<!-- BEGIN <name>-flags -->` and
`<!-- END <name>-flags -->`, for `gateway` (imgfetch-gateway --help), `resolver`
(imgfetch-resolver --help) and `cli` (imgfetch get --help). Everything outside the markers is
left as it is, so the script can be run again whenever a flag, its help or its default changes:

    cargo build -p imgfetch-gateway -p imgfetch-resolver -p imgfetch-cli
    scripts/config-doc.py                 # rewrites the tables
    scripts/config-doc.py --check         # exit 1, naming the tables, when they are out of date

`tests/tests/config_doc.rs` fails when the tables and `--help` disagree, and says to run this.

A row is one flag: the flag, its `IMGFETCH_*` variable, its key in the TOML file (the flag's
name with `_` for `-`; the CLI has no file), its default (clap's `[default: ...]`, or the one the
help text names the same way) and its meaning (the help text, with the possible values of a
choice). The binaries run with an empty environment, so that no variable set in the caller's
shell shows up as a value in `[env: ...]`.
"""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "CONFIGURATION.md"

# name of the table -> (binary, arguments before --help, whether it reads a TOML file)
TABLES = {
    "gateway": ("imgfetch-gateway", [], True),
    "resolver": ("imgfetch-resolver", [], True),
    "cli": ("imgfetch", ["get"], False),
}

# Flags whose TOML key is not the flag's name with `_` for `-`: None when there is none.
TOML_KEYS = {
    "config": None,
    "check-config": None,
    "install-nats-identity": None,
    "network": "`[networks.NAME]` table",
    "no-provision": "`provision = false`",
    "provision-only": None,
    "no-dead-letter-collector": "`dead_letter_collector = false`",
}

# Flags every clap binary has; they are not settings.
SKIP = {"help", "version"}


def help_text(bin_dir, binary, args):
    """The long help of `binary args --help`, run with only PATH in its environment."""
    path = Path(bin_dir) / binary
    if not path.is_file():
        sys.exit(
            f"config-doc: {path} is missing; build the binaries first "
            "(cargo build -p imgfetch-gateway -p imgfetch-resolver -p imgfetch-cli) "
            "or give --bin-dir"
        )
    env = {"PATH": os.environ.get("PATH", "")}
    out = subprocess.run(
        [str(path), *args, "--help"], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout


def parse_help(text):
    """The options of a clap help, in order: dicts with short, long, env, default, meaning.

    clap writes each option as a line `  -o, --output <DIR>` (at most 6 spaces in). In the long
    form its help follows, indented by 10 spaces; in the short form (when no flag has help of
    more than one paragraph) it stands on the same line after two or more spaces. Either way
    the help ends in `[env: NAME=]`, `[default: X]` and `[possible values: a, b]` (on lines of
    their own in the long form), or a `Possible values:` list of `- name: help` lines.
    """
    options = []
    current = None
    in_options = False
    for line in text.splitlines():
        if line.rstrip() in ("Options:", "Arguments:"):
            in_options = line.rstrip() == "Options:"
            current = None
            continue
        if not in_options:
            continue
        head = re.match(r"^ {2,6}(?:(-\w), )?--([a-z0-9-]+)(.*)$", line)
        if head:
            current = {"short": head.group(1), "long": head.group(2), "body": []}
            # The short form: the help after the value name, past two or more spaces.
            inline = re.search(r" {2,}(.*)$", head.group(3))
            if inline:
                current["body"].append(inline.group(1).strip())
            options.append(current)
        elif current is not None:
            current["body"].append(line.strip())
    result = []
    for opt in options:
        if opt["long"] in SKIP:
            continue
        specs = {}

        def spec(match):
            kind, value = match.group(1), match.group(2)
            if kind == "possible values":
                return f"One of: {value}."
            # clap's own `[default: X]` and one the help text names the same way: the first.
            specs.setdefault(kind, value)
            return ""

        text = " ".join(possible_values([line for line in opt["body"] if line]))
        meaning = re.sub(r"\[(env|default|possible values): ([^\]]*)\]", spec, text)
        result.append(
            {
                "short": opt["short"],
                "long": opt["long"],
                "env": specs["env"].split("=", 1)[0] if "env" in specs else None,
                "default": " ".join(specs["default"].split()) if "default" in specs else None,
                # No space is left before punctuation where a `[default: ...]` stood.
                "meaning": re.sub(r" ([.,;])", r"\1", " ".join(meaning.split())),
            }
        )
    return result


def possible_values(lines):
    """`lines` with a `Possible values:` list of `- name: help` lines made one sentence:
    "Possible values: `text` (help), `json` (help)." (the same words, so the test agrees)."""
    if "Possible values:" not in lines:
        return lines
    at = lines.index("Possible values:")
    end = at + 1
    while end < len(lines) and re.match(r"- ([^:]+): ", lines[end]):
        end += 1
    items = [re.match(r"- ([^:]+): (.*)", line) for line in lines[at + 1 : end]]
    # The help before the list may end in its `[default: ...]`: the sentence ends after it.
    before = " ".join(lines[:at]).rstrip(".")
    listed = ", ".join(f"`{m.group(1)}` ({m.group(2)})" for m in items)
    return [f"{before}. Possible values: {listed}.", *lines[end:]]


def cell(text):
    """A table cell: one line, with `|` escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def code(text):
    """A literal value in backticks; prose (with spaces) as it is."""
    return f"`{text}`" if text and " " not in text else text


def table(options, toml):
    """The markdown table of one binary's options."""
    if toml:
        rows = ["| flag | variable | TOML key | default | meaning |", "| --- | --- | --- | --- | --- |"]
    else:
        rows = ["| flag | variable | default | meaning |", "| --- | --- | --- | --- |"]
    for opt in options:
        flag = f"`--{opt['long']}`"
        if opt["short"]:
            flag = f"`{opt['short']}`, {flag}"
        env = f"`{opt['env']}`" if opt["env"] else "—"
        default = cell(code(opt["default"])) if opt["default"] else "—"
        cells = [flag, env]
        if toml:
            key = TOML_KEYS.get(opt["long"], f"`{opt['long'].replace('-', '_')}`")
            cells.append(key or "—")
        cells += [default, cell(opt["meaning"])]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def rewrite(doc, name, body):
    """`doc` with the text between the markers of table `name` replaced by `body`."""
    begin, end = f"<!-- BEGIN {name}-flags -->", f"<!-- END {name}-flags -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        sys.exit(f"config-doc: {DOC} has no {begin} ... {end}")
    generated = (
        f"{begin}\n<!-- generated by scripts/config-doc.py from --help; do not edit -->\n"
        f"{body}\n{end}"
    )
    return pattern.sub(lambda _: generated, doc, count=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bin-dir",
        default=str(ROOT / "target" / "debug"),
        help="where the three binaries are (default: target/debug)",
    )
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a table is out of date"
    )
    args = parser.parse_args()
    doc = DOC.read_text()
    new = doc
    for name, (binary, before, toml) in TABLES.items():
        options = parse_help(help_text(args.bin_dir, binary, before))
        if not options:
            sys.exit(f"config-doc: found no options in {binary} {' '.join(before)} --help")
        new = rewrite(new, name, table(options, toml))
    if args.check:
        if new != doc:
            sys.exit(f"config-doc: {DOC.relative_to(ROOT)} is out of date; run scripts/config-doc.py")
        print("config-doc: up to date")
    elif new != doc:
        DOC.write_text(new)
        print(f"config-doc: rewrote the tables of {DOC.relative_to(ROOT)}")
    else:
        print("config-doc: already up to date")


if __name__ == "__main__":
    main()
