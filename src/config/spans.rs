//! Where in the file a problem is: TOML spans turned into keys and lines, and the
//! collector every section's rules report to.
//!
//! Owned by [`super::Config::parse`]. Each section is deserialized on its own
//! ([`Doc::section`]); a key that fails to deserialize is reported, dropped and the section
//! tried again, so one bad value neither hides the problems of the other sections nor those
//! of its own section's other keys. The sections' rules then report through a [`Checker`],
//! which finds the key's line by its dotted path.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::Problem;

/// The file's text and the problems found so far.
pub(super) struct Doc<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

impl<'t> Doc<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        Doc {
            text,
            problems: Vec::new(),
        }
    }

    pub(super) fn into_problems(self) -> Vec<Problem> {
        self.problems
    }

    pub(super) fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    pub(super) fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// Records a problem, unless `key` has one already: a value that failed to parse was
    /// replaced by its default, and a rule tripping over that default would only confuse.
    pub(super) fn problem(&mut self, key: &str, span: Range<usize>, message: impl Into<String>) {
        if !key.is_empty() && self.problems.iter().any(|p| p.key == key) {
            return;
        }
        let line = (span != (0..0)).then(|| self.line_of(span.start));
        self.problems.push(Problem {
            key: key.to_owned(),
            line,
            message: message.into(),
        });
    }

    /// Deserializes one section on its own. A key that fails is reported and left out (its
    /// default applies), and the rest is tried again; `None` only when the section as a
    /// whole is unusable (not a table, a required key missing).
    pub(super) fn section<T: DeserializeOwned>(
        &mut self,
        key: &str,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let mut value = value.clone();
        loop {
            let de = ValueDeserializer::from(value.clone());
            let e = match T::deserialize(de) {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            let span = e.span().unwrap_or_else(|| value.span());
            let sub = sub_key(&value, &span);
            let full = match &sub {
                Some(sub) => format!("{key}.{sub}"),
                None => key.to_owned(),
            };
            self.problem(&full, span, e.message());
            // Each round removes one key, so this ends.
            match (sub, value.get_mut()) {
                (Some(sub), DeValue::Table(t)) => {
                    let before = t.len();
                    *t = std::mem::take(t)
                        .into_iter()
                        .filter(|(k, _)| k.get_ref() != sub.as_str())
                        .collect();
                    if t.len() == before {
                        return None;
                    }
                }
                _ => return None,
            }
        }
    }
}

/// The key inside `table` whose key or value span holds `span`.
fn sub_key(table: &Spanned<DeValue<'_>>, span: &Range<usize>) -> Option<String> {
    let DeValue::Table(t) = table.get_ref() else {
        return None;
    };
    t.iter()
        .find(|(k, v)| {
            let (ks, vs) = (k.span(), v.span());
            (ks.start <= span.start && span.start < ks.end.max(ks.start + 1))
                || (vs.start <= span.start && span.start < vs.end.max(vs.start + 1))
        })
        .map(|(k, _)| k.get_ref().to_string())
}

/// The span of the value at `path` (`["appliance", "2", "id"]`), or an empty span.
pub(super) fn find_span(root: &DeTable<'_>, path: &[&str]) -> Range<usize> {
    let Some((first, rest)) = path.split_first() else {
        return 0..0;
    };
    let Some((key, mut value)) = root.iter().find(|(k, _)| k.get_ref() == *first) else {
        return 0..0;
    };
    let mut span = if rest.is_empty() {
        key.span()
    } else {
        value.span()
    };
    for (i, part) in rest.iter().enumerate() {
        let last = i + 1 == rest.len();
        match value.get_ref() {
            DeValue::Table(t) => match t.iter().find(|(k, _)| k.get_ref() == *part) {
                Some((k, v)) => {
                    span = if last { k.span() } else { v.span() };
                    value = v;
                }
                None => return span,
            },
            DeValue::Array(a) => match part.parse::<usize>().ok().and_then(|n| a.get(n)) {
                Some(v) => {
                    span = v.span();
                    value = v;
                }
                None => return span,
            },
            _ => return span,
        }
    }
    span
}

/// `["appliance", "2", "id"]` as the user reads it: `appliance[2].id`.
pub(super) fn display_key(path: &[&str]) -> String {
    let mut out = String::new();
    for part in path {
        if part.parse::<usize>().is_ok() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// What the sections' rules report to: a problem by dotted path, placed on its line.
pub struct Checker<'a, 't> {
    pub(super) doc: &'a mut Doc<'t>,
    pub(super) root: &'a DeTable<'t>,
}

impl Checker<'_, '_> {
    pub fn err(&mut self, path: &[&str], message: impl Into<String>) {
        let key = display_key(path);
        let span = find_span(self.root, path);
        self.doc.problem(&key, span, message);
    }

    /// `section.key` must be at most `max` (`label` is how the message says it). Every
    /// duration has such a bound: beyond it a value is a typo, and some are added to the
    /// clock (`Instant + Duration`), where an absurd one would overflow it.
    pub fn at_most(
        &mut self,
        section: &str,
        key: &str,
        value: std::time::Duration,
        max: std::time::Duration,
        label: &str,
    ) {
        if value > max {
            self.err(&[section, key], format!("must be at most {label}"));
        }
    }

    pub fn above_zero(&mut self, section: &str, key: &str, value: std::time::Duration) {
        if value.is_zero() {
            self.err(&[section, key], "must be greater than 0");
        }
    }

    pub fn at_least_one(&mut self, section: &str, key: &str, value: u64) {
        if value == 0 {
            self.err(&[section, key], "must be at least 1");
        }
    }
}

pub const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
pub const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);
