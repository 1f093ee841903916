//! What can go wrong between a source's bytes and a `ServiceTable`.
//!
//! [`ObjectError`] names one bad object and the field in it; the table builder returns a
//! list of them so that a long-running source (the Kubernetes watch) can skip a bad object
//! with a warning. [`SourceError`] is what a whole source load fails with; the file source
//! treats any `ObjectError` as fatal and wraps it with the file's name.

use std::fmt;

/// One object that cannot be used, with the field that makes it so.
///
/// Displays as `Service shop/web: spec.ports[1].port: 70000 is not a valid port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectError {
    /// `Service`, `EndpointSlice`, or the kind the document claimed.
    pub kind: String,
    /// `namespace/name`, or where the object sits in the file (`document 3`, `items[4]`)
    /// when it has no usable name.
    pub object: String,
    /// Field path inside the object, e.g. `spec.ports[1].port`; empty for the object itself.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ObjectError {
    pub fn new(
        kind: impl Into<String>,
        object: impl Into<String>,
        field: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        ObjectError {
            kind: kind.into(),
            object: object.into(),
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.kind, self.object)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.problem)
    }
}

impl std::error::Error for ObjectError {}

/// Why a source could not produce a table. Every variant names the file (or other source
/// label) it came from.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be read at all. The cause is in the message, so it is not also
    /// `source()`: an error chain (`{:#}`) would print it twice.
    #[error("{file}: cannot read: {error}")]
    Read { file: String, error: std::io::Error },
    /// Not valid YAML/JSON.
    #[error("{file}: line {line}, column {column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A document that is not a Kubernetes object at all (no `kind`, not a mapping...).
    #[error("{file}: {document}: {problem}")]
    Document {
        file: String,
        /// `document 2`, `items[5]`.
        document: String,
        problem: String,
    },
    /// A Service or EndpointSlice with a bad field. `more` counts further bad objects
    /// that were found in the same load (the first is reported in full).
    #[error("{file}: {error}{}", more_suffix(*more))]
    Object {
        file: String,
        /// Boxed: keeps `Result<_, SourceError>` small on the happy path.
        error: Box<ObjectError>,
        more: usize,
    },
}

fn more_suffix(more: usize) -> String {
    match more {
        0 => String::new(),
        1 => " (and 1 more bad object)".to_string(),
        n => format!(" (and {n} more bad objects)"),
    }
}

impl SourceError {
    /// Short failure-mode label for metrics and structured logs.
    pub fn label(&self) -> &'static str {
        match self {
            SourceError::Read { .. } => "read",
            SourceError::Syntax { .. } => "syntax",
            SourceError::Document { .. } => "document",
            SourceError::Object { .. } => "object",
        }
    }

    /// Wraps the first of `errors` (if any) with the file label.
    pub fn from_object_errors(file: &str, errors: Vec<ObjectError>) -> Option<SourceError> {
        let more = errors.len().saturating_sub(1);
        errors.into_iter().next().map(|error| SourceError::Object {
            file: file.to_string(),
            error: Box::new(error),
            more,
        })
    }
}
