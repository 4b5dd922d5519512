//! A reader over TOML's spanned document that collects every error with its position.
//!
//! serde stops at the first error; a person fixing a scenario wants all of them at once, each
//! with file:line:column, the field's path and what was expected. So the typed scenario is built
//! by walking the spanned tree by hand, recording errors as it goes.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::units;

/// One problem in a scenario file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ScenarioError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (characters).
    pub column: usize,
    /// The file, as given.
    pub file: String,
    /// The field's dotted path (`agents.calls`, `site[1].share`), empty for syntax errors.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// The source being read and the errors found so far.
pub(crate) struct Source<'s> {
    file: String,
    text: &'s str,
    pub(crate) errors: Vec<ScenarioError>,
}

pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

impl<'s> Source<'s> {
    pub(crate) fn new(file: &str, text: &'s str) -> Self {
        Self {
            file: file.to_owned(),
            text,
            errors: Vec::new(),
        }
    }

    pub(crate) fn error(&mut self, span: Range<usize>, field: &str, message: impl Into<String>) {
        let (line, column) = self.position(span.start);
        self.errors.push(ScenarioError {
            line,
            column,
            file: self.file.clone(),
            field: field.to_owned(),
            message: message.into(),
        });
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }
}

/// Reads the fields of one table, remembering which were read so the rest can be reported as
/// unknown.
pub(crate) struct Table<'t, 'i> {
    table: &'t DeTable<'i>,
    span: Range<usize>,
    path: String,
    read: BTreeSet<&'static str>,
}

impl<'t, 'i> Table<'t, 'i> {
    pub(crate) fn new(table: &'t DeTable<'i>, span: Range<usize>, path: impl Into<String>) -> Self {
        Self {
            table,
            span,
            path: path.into(),
            read: BTreeSet::new(),
        }
    }

    /// Reads the value `key` as a table, or reports what it is instead.
    pub(crate) fn from_value(
        src: &mut Source<'_>,
        v: &'t Value<'i>,
        path: impl Into<String>,
    ) -> Option<Self> {
        let path = path.into();
        match v.get_ref() {
            DeValue::Table(t) => Some(Self::new(t, v.span(), path)),
            other => {
                src.error(
                    v.span(),
                    &path,
                    format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    pub(crate) fn path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(crate) fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// The raw value of `key`, marking it read.
    pub(crate) fn get(&mut self, key: &'static str) -> Option<&'t Value<'i>> {
        self.read.insert(key);
        self.table.get(key)
    }

    /// Reports a missing required field.
    pub(crate) fn missing(&self, src: &mut Source<'_>, key: &str, expected: &str) {
        src.error(
            self.span.clone(),
            &self.path(key),
            format!("missing field `{key}`: {expected}"),
        );
    }

    /// Every entry, for tables whose keys are names (e.g. `[segment.NAME]`).
    pub(crate) fn entries(&self) -> Vec<(String, &'t Value<'i>)> {
        self.table
            .iter()
            .map(|(k, v)| (k.get_ref().to_string(), v))
            .collect()
    }

    /// Reports every key not read, listing the known ones.
    pub(crate) fn finish(self, src: &mut Source<'_>) {
        for (key, value) in self.table.iter() {
            let name = key.get_ref().as_ref();
            if !self.read.contains(name) {
                let known: Vec<&str> = self.read.iter().copied().collect();
                let hint = match closest(name, &known) {
                    Some(k) => format!(" (did you mean `{k}`?)"),
                    None => String::new(),
                };
                src.error(
                    key.span().start..value.span().end,
                    &self.path(name),
                    format!(
                        "unknown field `{name}`{hint}; expected one of: {}",
                        known.join(", ")
                    ),
                );
            }
        }
    }

    /// A string field.
    pub(crate) fn string(
        &mut self,
        src: &mut Source<'_>,
        key: &'static str,
    ) -> Option<(String, Range<usize>)> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.to_string(), v.span())),
            other => {
                src.error(
                    v.span(),
                    &self.path(key),
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// An integer field within `range`.
    pub(crate) fn integer(
        &mut self,
        src: &mut Source<'_>,
        key: &'static str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Option<i64> {
        let v = self.get(key)?;
        let path = self.path(key);
        integer_value(src, v, &path, range)
    }

    /// A float field within `range` (integers accepted).
    pub(crate) fn number(
        &mut self,
        src: &mut Source<'_>,
        key: &'static str,
        range: std::ops::RangeInclusive<f64>,
    ) -> Option<f64> {
        let v = self.get(key)?;
        let path = self.path(key);
        number_value(src, v, &path, range)
    }

    /// A boolean field.
    pub(crate) fn boolean(&mut self, src: &mut Source<'_>, key: &'static str) -> Option<bool> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                src.error(
                    v.span(),
                    &self.path(key),
                    format!("expected true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// A string field parsed by `parse` (durations, rates …).
    pub(crate) fn parsed<T>(
        &mut self,
        src: &mut Source<'_>,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let (s, span) = self.string(src, key)?;
        match parse(&s) {
            Ok(v) => Some(v),
            Err(e) => {
                src.error(span, &self.path(key), e);
                None
            }
        }
    }

    /// A duration within `range`.
    pub(crate) fn duration(
        &mut self,
        src: &mut Source<'_>,
        key: &'static str,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let (s, span) = self.string(src, key)?;
        let d = match units::duration(&s) {
            Ok(d) => d,
            Err(e) => {
                src.error(span, &self.path(key), e);
                return None;
            }
        };
        if d < min || d > max {
            src.error(
                span,
                &self.path(key),
                format!("expected a duration from {min:?} to {max:?}, found \"{s}\""),
            );
            return None;
        }
        Some(d)
    }
}

pub(crate) fn integer_value(
    src: &mut Source<'_>,
    v: &Value<'_>,
    path: &str,
    range: std::ops::RangeInclusive<i64>,
) -> Option<i64> {
    let expected = format!(
        "expected an integer from {} to {}",
        range.start(),
        range.end()
    );
    let DeValue::Integer(i) = v.get_ref() else {
        src.error(
            v.span(),
            path,
            format!("{expected}, found {}", v.get_ref().type_str()),
        );
        return None;
    };
    let digits = i.as_str().replace('_', "");
    let digits = digits
        .trim_start_matches("0x")
        .trim_start_matches("0o")
        .trim_start_matches("0b");
    let parsed = i64::from_str_radix(digits, i.radix())
        .ok()
        .filter(|n| range.contains(n));
    if parsed.is_none() {
        src.error(v.span(), path, format!("{expected}, found {}", i.as_str()));
    }
    parsed
}

pub(crate) fn number_value(
    src: &mut Source<'_>,
    v: &Value<'_>,
    path: &str,
    range: std::ops::RangeInclusive<f64>,
) -> Option<f64> {
    let text = match v.get_ref() {
        DeValue::Float(f) => f.as_str().replace('_', ""),
        DeValue::Integer(i) if i.radix() == 10 => i.as_str().replace('_', ""),
        other => {
            src.error(
                v.span(),
                path,
                format!(
                    "expected a number from {} to {}, found {}",
                    range.start(),
                    range.end(),
                    other.type_str()
                ),
            );
            return None;
        }
    };
    match text.parse::<f64>() {
        Ok(n) if range.contains(&n) => Some(n),
        _ => {
            src.error(
                v.span(),
                path,
                format!(
                    "expected a number from {} to {}, found {text}",
                    range.start(),
                    range.end()
                ),
            );
            None
        }
    }
}

/// The known name closest to `name` by edit distance, if close enough to be a typo.
pub(crate) fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
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
