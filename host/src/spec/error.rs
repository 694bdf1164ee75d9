//! Errors in pipeline files: always the key, always the reason.

/// A pipeline file is malformed or inconsistent. The spec's author is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The text is not a valid pipeline (syntax, unknown key, wrong type).
    #[error("{origin}: {location}: {}{message}", if key.is_empty() { String::new() } else { format!("`{key}`: ") })]
    Parse {
        /// The file or source of the text.
        origin: String,
        /// The key path, e.g. `stage[0].wasm.limits.fuel`.
        key: String,
        /// Line and column.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// The pipeline parses but does not make sense (a dangling input, a cycle).
    #[error("`{key}`: {message}")]
    Invalid {
        /// The key path of the offending value.
        key: String,
        /// What is wrong, and how to fix it.
        message: String,
    },
}

impl SpecError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    pub(super) fn from_toml(origin: &str, text: &str, path: &str, e: &toml::de::Error) -> Self {
        let location = match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line} column {column}")
            }
            None => "at top level".to_owned(),
        };
        // serde_path_to_error reports `.` for the root.
        let key = if path == "." {
            String::new()
        } else {
            path.to_owned()
        };
        Self::Parse {
            origin: origin.to_owned(),
            key,
            location,
            message: e.message().trim().to_owned(),
        }
    }
}

/// The closest of `candidates` to `name`, for "did you mean" hints.
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, c)| *d <= (c.len().max(name.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
