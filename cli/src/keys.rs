//! The keys of a run: those on the command line, then those of `--from-file`.

use std::path::{Path, PathBuf};

/// The keys could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// `--from-file` cannot be read.
    #[error("cannot read keys from {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Neither the command line nor the file named a key.
    #[error("no keys to fetch: give KEY arguments or --from-file")]
    None,
}

/// The command line's keys followed by the file's, in order.
pub fn gather(args: &[String], file: Option<&Path>) -> Result<Vec<String>, KeysError> {
    let mut keys = args.to_vec();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| KeysError::Read {
            path: path.to_owned(),
            source,
        })?;
        keys.extend(parse(&text));
    }
    if keys.is_empty() {
        return Err(KeysError::None);
    }
    Ok(keys)
}

/// One key a line, trimmed; blank lines and `#` comments are skipped.
pub fn parse(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines_and_comments_are_skipped() {
        let text = "# harbor, 2024\n\nquay-east.jpg\r\n  dir/a b.png  \n   # indented comment\nx";
        let keys: Vec<String> = parse(text).collect();
        assert_eq!(keys, ["quay-east.jpg", "dir/a b.png", "x"]);
    }

    #[test]
    fn no_keys_at_all_is_an_error() {
        assert!(matches!(gather(&[], None), Err(KeysError::None)));
    }
}
