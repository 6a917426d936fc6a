//! Text transformations applied to a container's command, args and env before it starts:
//! `$(VAR)` expansion as Kubernetes does it, and the rewriting of volume mount paths (and the
//! termination message path) to the host directories behind them, since a local process
//! cannot see a mount namespace.

use std::collections::HashMap;

/// Expand `$(NAME)` references from `vars`; `$$` is a literal `$`; references to undefined
/// names and unterminated `$(` stay as written.
pub fn expand(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(reference) = after.strip_prefix('(') {
            match reference.find(')') {
                Some(close) => {
                    let name = &reference[..close];
                    match vars.get(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &reference[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = reference;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Path rewrites of one container: container path -> host path, longest container path first.
#[derive(Clone, Debug, Default)]
pub struct PathRewrites {
    rules: Vec<(String, String)>,
}

/// Characters that continue a path segment: a match must not be followed or preceded by one.
fn continues_segment(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '~')
}

impl PathRewrites {
    /// Rewrites from `(container path, host path)` pairs; trailing slashes are ignored.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut rules: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(from, to)| {
                let from = if from.len() > 1 {
                    from.trim_end_matches('/').to_owned()
                } else {
                    from
                };
                (from, to.trim_end_matches('/').to_owned())
            })
            .filter(|(from, _)| from.starts_with('/') && from.len() > 1)
            .collect();
        rules.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Self { rules }
    }

    /// `text` with every occurrence of a container path that stands on path-segment boundaries
    /// replaced by its host path, in one pass (a replacement is never rewritten again).
    pub fn rewrite(&self, text: &str) -> String {
        if self.rules.is_empty() {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        while i < text.len() {
            let preceded_ok = text[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !continues_segment(c));
            let matched = preceded_ok
                .then(|| {
                    self.rules.iter().find(|(from, _)| {
                        text[i..].starts_with(from.as_str())
                            && text[i + from.len()..]
                                .chars()
                                .next()
                                .is_none_or(|c| !continues_segment(c))
                    })
                })
                .flatten();
            match matched {
                Some((from, to)) => {
                    out.push_str(to);
                    i += from.len();
                }
                None => {
                    let width = text[i..].chars().next().map_or(1, char::len_utf8);
                    out.push_str(&text[i..i + width]);
                    i += width;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> HashMap<String, String> {
        [("POD_IP", "127.1.0.2"), ("PORT", "8080")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn references_expand_like_kubernetes() {
        let vars = vars();
        assert_eq!(
            expand("--listen $(POD_IP):$(PORT)", &vars),
            "--listen 127.1.0.2:8080"
        );
        assert_eq!(expand("$$(POD_IP)", &vars), "$(POD_IP)");
        assert_eq!(expand("$(MISSING)-x", &vars), "$(MISSING)-x");
        assert_eq!(expand("cost $5 $(", &vars), "cost $5 $(");
        assert_eq!(expand("a$$b$", &vars), "a$b$");
    }

    #[test]
    fn mount_paths_are_rewritten_on_segment_boundaries_longest_first() {
        let rewrites = PathRewrites::new([
            ("/data".to_owned(), "/host/vol-data".to_owned()),
            ("/data/models/".to_owned(), "/host/vol-models".to_owned()),
            ("/dev/termination-log".to_owned(), "/host/term".to_owned()),
        ]);
        assert_eq!(
            rewrites.rewrite("/data/models/x.gguf"),
            "/host/vol-models/x.gguf"
        );
        assert_eq!(
            rewrites.rewrite("--out=/data/train"),
            "--out=/host/vol-data/train"
        );
        assert_eq!(rewrites.rewrite("/data"), "/host/vol-data");
        assert_eq!(
            rewrites.rewrite("/database /mydata /x/data"),
            "/database /mydata /x/data"
        );
        assert_eq!(
            rewrites.rewrite("file:///data/a"),
            "file:///host/vol-data/a"
        );
        assert_eq!(
            rewrites.rewrite("a:/data,b:/dev/termination-log"),
            "a:/host/vol-data,b:/host/term"
        );
    }
}
