//! Parsing of request lines: the resource path (`/apis/{group}/{version}/namespaces/{ns}/
//! {resource}/{name}/{subresource}`), query parameters, and content negotiation headers.

use std::collections::HashMap;

/// A path that names a resource collection, object or subresource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourcePath {
    /// API group (empty for `/api/v1`).
    pub group: String,
    /// Version.
    pub version: String,
    /// Namespace from `/namespaces/{ns}/...`, if present.
    pub namespace: Option<String>,
    /// Plural resource name.
    pub plural: String,
    /// Object name, if the path names one.
    pub name: Option<String>,
    /// `status` or `scale`, if the path names a subresource.
    pub subresource: Option<String>,
}

/// What a request path addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/healthz`, `/livez`, `/readyz`.
    Health,
    /// `/version`.
    Version,
    /// `/api`.
    CoreVersions,
    /// `/apis`.
    Groups,
    /// `/apis/{group}`.
    Group(String),
    /// `/api/v1` or `/apis/{group}/{version}`.
    ResourceList(String, String),
    /// `/openapi/v2`.
    OpenApiV2,
    /// `/openapi/v3`.
    OpenApiV3Index,
    /// `/openapi/v3/apis/{group}/{version}` (or `/openapi/v3/api/v1`).
    OpenApiV3(String, String),
    /// A resource collection or object.
    Resource(ResourcePath),
    /// Nothing served here.
    Unknown,
}

/// Decode `%XX` escapes and `+` in a query component.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters (last value wins).
pub fn query_params(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Classify a request path.
pub fn route(path: &str) -> Route {
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["healthz" | "livez" | "readyz", ..] => Route::Health,
        ["version"] => Route::Version,
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["apis", group] => Route::Group((*group).to_owned()),
        ["api", version] => Route::ResourceList(String::new(), (*version).to_owned()),
        ["apis", group, version] => Route::ResourceList((*group).to_owned(), (*version).to_owned()),
        ["openapi", "v2"] => Route::OpenApiV2,
        ["openapi", "v3"] => Route::OpenApiV3Index,
        ["openapi", "v3", "apis", group, version] => {
            Route::OpenApiV3((*group).to_owned(), (*version).to_owned())
        }
        ["openapi", "v3", "api", version] => Route::OpenApiV3(String::new(), (*version).to_owned()),
        ["api", version, rest @ ..] => resource_route("", version, rest),
        ["apis", group, version, rest @ ..] => resource_route(group, version, rest),
        _ => Route::Unknown,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Route {
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] => (Some((*ns).to_owned()), {
            let mut v = vec![*plural];
            v.extend_from_slice(tail);
            v
        }),
        _ => (None, rest.to_vec()),
    };
    let (plural, name, subresource) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, sub] => (*plural, Some(*name), Some(*sub)),
        _ => return Route::Unknown,
    };
    Route::Resource(ResourcePath {
        group: group.to_owned(),
        version: version.to_owned(),
        namespace,
        plural: plural.to_owned(),
        name: name.map(str::to_owned),
        subresource: subresource.map(str::to_owned),
    })
}

/// What representation the client asked for in `Accept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Representation {
    /// Plain JSON objects.
    Json,
    /// YAML.
    Yaml,
    /// `meta.k8s.io/v1` `Table`.
    Table,
    /// `PartialObjectMetadata` / `PartialObjectMetadataList`.
    Metadata,
}

/// Negotiate the response representation; `None` when nothing acceptable can be produced.
pub fn representation(accept: Option<&str>) -> Option<Representation> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Some(Representation::Json);
    };
    for choice in accept.split(',') {
        let mut parts = choice.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let params: Vec<&str> = parts.collect();
        let as_ = params
            .iter()
            .find_map(|p| p.strip_prefix("as="))
            .unwrap_or("");
        match (media, as_) {
            ("application/json" | "*/*" | "application/*", "Table") => {
                return Some(Representation::Table);
            }
            ("application/json" | "*/*" | "application/*", "PartialObjectMetadata")
            | ("application/json" | "*/*" | "application/*", "PartialObjectMetadataList") => {
                return Some(Representation::Metadata);
            }
            (
                "application/json"
                | "*/*"
                | "application/*"
                | "application/json-patch+json"
                | "application/merge-patch+json",
                "",
            ) => return Some(Representation::Json),
            ("application/yaml", "") => return Some(Representation::Yaml),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_paths_parse() {
        assert_eq!(
            route("/apis/aigc.dev/v1alpha1/namespaces/ml/datasets/d1/status"),
            Route::Resource(ResourcePath {
                group: "aigc.dev".into(),
                version: "v1alpha1".into(),
                namespace: Some("ml".into()),
                plural: "datasets".into(),
                name: Some("d1".into()),
                subresource: Some("status".into()),
            })
        );
        assert_eq!(
            route("/api/v1/namespaces/ml"),
            Route::Resource(ResourcePath {
                group: String::new(),
                version: "v1".into(),
                namespace: None,
                plural: "namespaces".into(),
                name: Some("ml".into()),
                subresource: None,
            })
        );
        assert_eq!(route("/apis/x/v1/a/b/c/d"), Route::Unknown);
    }

    #[test]
    fn queries_decode_and_accept_negotiates() {
        let q = query_params(Some("labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1"));
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(
            representation(Some(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
            )),
            Some(Representation::Table)
        );
        assert_eq!(
            representation(Some("application/vnd.kubernetes.protobuf")),
            None
        );
    }
}
