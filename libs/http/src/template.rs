//! Path templates of `google.api.http` rules: literal segments, variables
//! bound to a (possibly nested) request field, and an optional `:verb`.
//!
//! The subset the shop's contracts use, refused at start otherwise:
//! `{field}` and `{field=*}` match one segment; `**` and multi-segment
//! variable patterns are not supported.

use std::fmt;

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches exactly this text.
    Literal(String),
    /// Matches one non-empty segment, bound to the field path.
    Variable(Vec<String>),
}

/// A parsed template, `/api/orders/{order_id}:cancel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The segments between slashes.
    pub segments: Vec<Segment>,
    /// The custom verb after the last segment, without its colon.
    pub verb: Option<String>,
}

/// Why a template is not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("path template {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: &'static str,
}

impl Template {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let fail = |reason| TemplateError {
            template: text.to_string(),
            reason,
        };
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| fail("must start with /"))?;
        // The verb follows the last segment, outside any variable.
        let (path, verb) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('}') && !rest[i..].contains('/') => {
                (&rest[..i], Some(rest[i + 1..].to_string()))
            }
            _ => (rest, None),
        };
        if verb.as_deref() == Some("") {
            return Err(fail("empty verb"));
        }
        let mut segments = Vec::new();
        for part in path.split('/') {
            if part.is_empty() {
                return Err(fail("empty segment"));
            }
            if let Some(inner) = part.strip_prefix('{') {
                let inner = inner.strip_suffix('}').ok_or_else(|| fail("unclosed {"))?;
                let field = match inner.split_once('=') {
                    Some((field, "*")) => field,
                    Some(_) => return Err(fail("only {field} and {field=*} are supported")),
                    None => inner,
                };
                if field.is_empty() {
                    return Err(fail("empty variable"));
                }
                segments.push(Segment::Variable(
                    field.split('.').map(str::to_string).collect(),
                ));
            } else if part.contains(['{', '}', '*']) {
                return Err(fail("wildcards outside variables are not supported"));
            } else {
                segments.push(Segment::Literal(part.to_string()));
            }
        }
        Ok(Template { segments, verb })
    }

    /// The variables' values if `path` (percent-encoded, without query)
    /// matches, in template order, decoded.
    pub fn matches(&self, path: &str) -> Option<Vec<(&[String], String)>> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            Some(verb) => rest.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => rest,
        };
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut bound = Vec::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(text) if text == part => {}
                Segment::Literal(_) => return None,
                Segment::Variable(field) => {
                    if part.is_empty() {
                        return None;
                    }
                    let value = percent_encoding::percent_decode_str(part)
                        .decode_utf8()
                        .ok()?
                        .into_owned();
                    bound.push((field.as_slice(), value));
                }
            }
        }
        Some(bound)
    }

    /// The field paths the template binds.
    pub fn variables(&self) -> impl Iterator<Item = &[String]> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Variable(field) => Some(field.as_slice()),
            Segment::Literal(_) => None,
        })
    }
}

impl fmt::Display for Template {
    /// The OpenAPI form: `/api/orders/{order_id}:cancel`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => write!(f, "/{text}")?,
                Segment::Variable(field) => write!(f, "/{{{}}}", field.join("."))?,
            }
        }
        if let Some(verb) = &self.verb {
            write!(f, ":{verb}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_variables_and_verbs() {
        let t = Template::parse("/api/orders/{order_id}:cancel").unwrap();
        assert_eq!(t.to_string(), "/api/orders/{order_id}:cancel");
        let bound = t.matches("/api/orders/a%20b:cancel").unwrap();
        assert_eq!(
            bound,
            vec![(&["order_id".to_string()][..], "a b".to_string())]
        );
        assert!(t.matches("/api/orders/x").is_none());
        assert!(t.matches("/api/orders/:cancel").is_none());

        let details = Template::parse("/api/orders/{order_id}/details").unwrap();
        assert!(details.matches("/api/orders/1/details").is_some());
        assert!(details.matches("/api/orders/1/2/details").is_none());
        assert!(details.matches("/api/orders/1").is_none());

        let list = Template::parse("/api/orders").unwrap();
        assert!(list.matches("/api/orders").is_some());
        assert!(list.matches("/api/orders/").is_none());
        assert_eq!(
            Template::parse("/v1/{a.b=*}").unwrap().variables().next(),
            Some(&["a".to_string(), "b".to_string()][..])
        );
    }

    #[test]
    fn unsupported_forms_are_refused() {
        for bad in ["api", "/a//b", "/a/{x=**}", "/a/*", "/a/{x", "/a:"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
