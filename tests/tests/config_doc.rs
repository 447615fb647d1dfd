//! docs/CONFIGURATION.md against the binaries: every flag in the `--help` of `imgfetch-gateway`,
//! `imgfetch-resolver` and `imgfetch get` has its row in the doc's table, with the same
//! variable, default and meaning, and the tables name no flag the help does not. The tables are
//! written by `scripts/config-doc.py`; when this fails, rebuild the binaries and run it.
//!
//! The binaries are the ones `cargo test` builds beside this test (`target/<profile>`), as the
//! bench crate's tests find them: `cargo test --workspace` builds them first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One flag as the help or the doc states it.
#[derive(Debug, PartialEq)]
struct Flag {
    short: Option<String>,
    variable: Option<String>,
    default: Option<String>,
    /// The words of its meaning, so that punctuation and backticks do not count.
    words: Vec<String>,
}

/// Where `cargo test` puts the workspace's binaries: one level above this test's `deps/`.
fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .expect("the test binary's path")
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// `bin args --help`, with only PATH in the environment (so no `[env: NAME=value]` shows a
/// value from the caller's shell).
fn help(bin: &str, args: &[&str]) -> String {
    let path = bin_dir().join(bin);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first \
         (cargo build -p imgfetch-gateway -p imgfetch-resolver -p imgfetch-cli)",
        path.display()
    );
    let out = Command::new(&path)
        .args(args)
        .arg("--help")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{} --help failed: {out:?}",
        path.display()
    );
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The options of a clap help by their long name, less `--help` and `--version`. Each option is
/// a line at most 6 spaces in; its help follows on lines indented further (the long form) or on
/// the same line past two or more spaces (the short form), and holds `[env: …]`,
/// `[default: …]` and `[possible values: …]`. A `[default: …]` the help text itself names (the
/// binaries' doc comments name their defaults that way) counts as the default.
fn parse_help(text: &str) -> BTreeMap<String, Flag> {
    let mut options: Vec<(Option<String>, String, Vec<String>)> = Vec::new();
    let mut in_options = false;
    for line in text.lines() {
        match line.trim_end() {
            "Options:" => {
                in_options = true;
                continue;
            }
            "Arguments:" => {
                in_options = false;
                continue;
            }
            _ if !in_options => continue,
            _ => {}
        }
        let rest = line.trim_start();
        let indent = line.len() - rest.len();
        let head = rest.split_once("--").filter(|(before, _)| {
            (2..=6).contains(&indent) && (before.is_empty() || before.ends_with(", "))
        });
        let Some((before, after)) = head else {
            if let Some(last) = options.last_mut() {
                last.2.push(line.trim().to_owned());
            }
            continue;
        };
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        // The short form: the help after the value name, past two or more spaces.
        let inline = after[name.len()..]
            .find("  ")
            .map(|at| after[name.len() + at..].trim().to_owned());
        let short = before.strip_suffix(", ").map(str::to_owned);
        options.push((short, name, inline.into_iter().collect()));
    }
    let mut flags = BTreeMap::new();
    for (short, long, body) in options {
        if long == "help" || long == "version" {
            continue;
        }
        let mut text = body
            .iter()
            .filter(|l| !l.is_empty())
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        let (mut variable, mut default) = (None, None);
        for kind in ["[env: ", "[default: ", "[possible values: "] {
            while let Some(start) = text.find(kind) {
                let end = start + text[start..].find(']').expect("a closed [...]");
                let value = text[start + kind.len()..end].to_owned();
                let replacement = match kind {
                    "[env: " => {
                        variable.get_or_insert(value.split('=').next().unwrap_or("").to_owned());
                        String::new()
                    }
                    "[default: " => {
                        default.get_or_insert(one_line(&value));
                        String::new()
                    }
                    _ => format!("One of: {value}."),
                };
                text.replace_range(start..=end, &replacement);
            }
        }
        flags.insert(
            long,
            Flag {
                short,
                variable,
                default,
                words: words(&text),
            },
        );
    }
    flags
}

/// The rows of the table between `<!-- BEGIN name-flags -->` and `<!-- END name-flags -->`:
/// flag, variable, (TOML key,) default, meaning; `—` is "none".
fn parse_table(doc: &str, name: &str) -> BTreeMap<String, Flag> {
    let begin = format!("<!-- BEGIN {name}-flags -->");
    let end = format!("<!-- END {name}-flags -->");
    let start = doc
        .find(&begin)
        .unwrap_or_else(|| panic!("no {begin} in the doc"));
    let stop = doc
        .find(&end)
        .unwrap_or_else(|| panic!("no {end} in the doc"));
    let mut rows = BTreeMap::new();
    for line in doc[start..stop].lines().filter(|l| l.starts_with("| `")) {
        // Split on `|` that is not escaped as `\|`.
        let cells: Vec<String> = line
            .replace("\\|", "\u{0}")
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().replace('\u{0}', "|"))
            .collect();
        let none = |cell: &str| {
            let value = one_line(&cell.replace('`', ""));
            (value != "—").then_some(value)
        };
        let flags: Vec<&str> = cells[0].split(", ").map(|f| f.trim_matches('`')).collect();
        let long = flags
            .iter()
            .find_map(|f| f.strip_prefix("--"))
            .unwrap_or_else(|| panic!("a row without a long flag: {line}"));
        let short = flags
            .iter()
            .find(|f| !f.starts_with("--"))
            .map(|f| f.to_string());
        let (default, meaning) = (&cells[cells.len() - 2], &cells[cells.len() - 1]);
        rows.insert(
            long.to_owned(),
            Flag {
                short,
                variable: none(&cells[1]),
                default: none(default),
                words: words(meaning),
            },
        );
    }
    rows
}

/// What differs between `--help` and the doc's table, one line each.
fn differences(help: &BTreeMap<String, Flag>, doc: &BTreeMap<String, Flag>) -> Vec<String> {
    let mut out = Vec::new();
    for (name, flag) in help {
        match doc.get(name) {
            None => out.push(format!("--{name} is in --help but not in the table")),
            Some(row) if row != flag => out.push(format!(
                "--{name}: the table says {row:?}, --help says {flag:?}"
            )),
            Some(_) => {}
        }
    }
    for name in doc.keys().filter(|name| !help.contains_key(*name)) {
        out.push(format!("--{name} is in the table but not in --help"));
    }
    out
}

#[test]
fn the_configuration_tables_say_what_help_says() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CONFIGURATION.md");
    let doc = std::fs::read_to_string(&path).expect("docs/CONFIGURATION.md");
    let mut problems = Vec::new();
    for (table, bin, args) in [
        ("gateway", "imgfetch-gateway", &[][..]),
        ("resolver", "imgfetch-resolver", &[][..]),
        ("cli", "imgfetch", &["get"][..]),
    ] {
        let help = parse_help(&help(bin, args));
        assert!(
            !help.is_empty(),
            "no options found in {bin} {args:?} --help"
        );
        for problem in differences(&help, &parse_table(&doc, table)) {
            problems.push(format!("{table}: {problem}"));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/CONFIGURATION.md is out of date with --help:\n  {}\n\
         Rebuild the binaries and run scripts/config-doc.py to rewrite its tables.",
        problems.join("\n  ")
    );
}

#[test]
fn the_help_parser_reads_both_forms_of_clap_help() {
    let long = "Usage: x [OPTIONS]\n\nArguments:\n  [KEY]...\n          Keys\n\nOptions:\n      \
                --grace <GRACE>\n          How long [default: 30s]\n          \n          \
                [env: IMGFETCH_GRACE=]\n\n  -o, --output <DIR>\n          Where\n          \n          \
                [env: IMGFETCH_OUTPUT=]\n          [default: .]\n\n      --log-format <LOG_FORMAT>\n          \
                Log format\n          \n          [env: IMGFETCH_LOG_FORMAT=]\n          \n          \
                Possible values:\n          - text: Lines\n          - json: Objects\n\n  -h, --help\n          \
                Print help\n";
    let short = "Options:\n      --grace <GRACE>   How long [default: 30s] [env: IMGFETCH_GRACE=]\n  \
                 -o, --output <DIR>    Where [env: IMGFETCH_OUTPUT=] [default: .]\n      \
                 --log-format <FORMAT>  Log format [env: IMGFETCH_LOG_FORMAT=] [possible values: text, json]\n  \
                 -h, --help            Print help\n";
    for (form, text, choices) in [
        (
            "long",
            long,
            &["Possible", "values", "text", "Lines", "json", "Objects"][..],
        ),
        ("short", short, &["One", "of", "text", "json"][..]),
    ] {
        let flags = parse_help(text);
        assert_eq!(
            flags.keys().collect::<Vec<_>>(),
            ["grace", "log-format", "output"],
            "{form}"
        );
        assert_eq!(flags["grace"].default.as_deref(), Some("30s"), "{form}");
        assert_eq!(flags["grace"].words, ["How", "long"], "{form}");
        assert_eq!(flags["output"].short.as_deref(), Some("-o"), "{form}");
        assert_eq!(flags["output"].default.as_deref(), Some("."), "{form}");
        let log = &flags["log-format"];
        assert_eq!(
            log.variable.as_deref(),
            Some("IMGFETCH_LOG_FORMAT"),
            "{form}"
        );
        assert_eq!(log.words[..2], ["Log", "format"], "{form}");
        assert_eq!(log.words[2..], *choices, "{form}");
    }
}
