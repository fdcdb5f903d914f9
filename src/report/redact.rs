//! Masks secret values in everything a reporter sees.
//!
//! Commands already show secrets as `[REDACTED]` ([`crate::shell::Cmd::display`]),
//! but a remote command can still print one (`echo $TOKEN`, a failing tool
//! dumping its environment), and its output reaches `-v`, error messages and
//! JSON. [`Redact`] sits in front of the reporters and replaces every
//! occurrence of a secret value in event texts, like CI systems mask theirs.

use std::borrow::Cow;

use super::{Event, Reporter};
use crate::shell::REDACTED;

pub struct Redact<'a> {
    inner: &'a dyn Reporter,
    /// Longest first, so a secret that contains another is masked whole.
    secrets: Vec<String>,
}

impl<'a> Redact<'a> {
    pub fn new(inner: &'a dyn Reporter, secrets: impl IntoIterator<Item = String>) -> Self {
        let mut all: Vec<String> = Vec::new();
        for secret in secrets {
            // Output arrives line by line: a multi-line secret is masked
            // line by line too.
            if secret.contains('\n') {
                all.extend(
                    secret
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string),
                );
            }
            all.push(secret);
        }
        all.retain(|s| !s.is_empty());
        all.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        all.dedup();
        Redact {
            inner,
            secrets: all,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    pub fn mask<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), REDACTED));
            }
        }
        out
    }
}

impl Reporter for Redact<'_> {
    fn event(&self, event: &Event) {
        if self.secrets.is_empty() {
            self.inner.event(event);
        } else {
            self.inner
                .event(&event.map_text(&|s| self.mask(s).into_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Recording;

    #[test]
    fn masks_longest_first_and_multiline_secrets_by_line() {
        let rec = Recording::default();
        let r = Redact::new(
            &rec,
            [
                "abc".to_string(),
                "abcdef".to_string(),
                String::new(),
                "line one\nline two".to_string(),
            ],
        );
        assert_eq!(r.mask("x abcdef y abc"), "x [REDACTED] y [REDACTED]");
        assert_eq!(r.mask("nothing here"), "nothing here");
        r.event(&Event::Note {
            host: None,
            message: "got line two".into(),
        });
        let Event::Note { message, .. } = &rec.events()[0] else {
            panic!()
        };
        assert_eq!(message, "got [REDACTED]");
    }
}
