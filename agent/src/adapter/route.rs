//! Route tables: a method set, a path pattern, and where the model and the streaming flag
//! live. Patterns are `/`-separated; `*` matches one segment, `**` the rest of the path.
//! Hand-written because the tables are static and tiny, and a router crate would add
//! allocation and a second notion of path normalisation to the hot path.
use super::{OpClass, Operation, Server, field};

#[derive(Debug, Clone, Copy)]
pub enum ModelFrom {
    None,
    /// A top-level JSON body field.
    Body(&'static str),
    /// The first field that is a non-empty string (Ollama's `cmp.Or(req.Model, req.Name)`:
    /// the deprecated `name` still counts when `model` is empty).
    BodyOr(&'static str, &'static str),
    /// The n-th `*` of the pattern.
    Segment(usize),
}

#[derive(Debug, Clone, Copy)]
pub enum StreamFrom {
    Never,
    Always,
    /// A boolean body field, with its default when absent.
    Body(&'static str, bool),
}

/// What the route's server makes of the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// JSON, whatever the `Content-Type` says: the servers decode these bodies as JSON
    /// without looking at it (an `application/octet-stream` body to Ollama's `/api/chat`
    /// is still a chat request).
    Json,
    /// Not JSON (multipart uploads, raw blobs): Sluice does not parse it.
    Raw,
}

#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub id: &'static str,
    pub methods: &'static [&'static str],
    pub path: &'static str,
    pub class: OpClass,
    pub model: ModelFrom,
    pub stream: StreamFrom,
    pub body: BodyKind,
}

impl Route {
    /// Segments captured by `*`, when method and path match.
    pub fn matches<'p>(&self, method: &str, path: &'p str) -> Option<Vec<&'p str>> {
        if !self.methods.contains(&method) {
            return None;
        }
        let (want, have) = (
            self.path.trim_start_matches('/'),
            path.trim_start_matches('/'),
        );
        // Every request is tried against a server's routes in turn (twice: classify, and
        // the body's own checks): the literal part of a route settles most of them without
        // splitting either path into segments.
        match want.find('*') {
            None => return (want == have).then(Vec::new),
            // Without the slash: `v1/images/**` matches `v1/images` too.
            Some(i) if !have.starts_with(want[..i].trim_end_matches('/')) => return None,
            Some(_) => {}
        }
        let mut caps = Vec::new();
        let (mut want, mut have) = (want.split('/'), have.split('/'));
        loop {
            match (want.next(), have.next()) {
                (Some("**"), _) => return Some(caps),
                (Some("*"), Some(seg)) if !seg.is_empty() => caps.push(seg),
                (Some(w), Some(h)) if w == h => {}
                (None, None) => return Some(caps),
                _ => return None,
            }
        }
    }

    /// Whether the route's model is named in its body (a JSON field, or a form field of a
    /// multipart body).
    pub fn model_in_body(&self) -> bool {
        matches!(self.model, ModelFrom::Body(_) | ModelFrom::BodyOr(..))
    }

    /// A route whose body is not JSON (see [`BodyKind::Raw`]).
    pub const fn raw_body(self) -> Route {
        Route {
            body: BodyKind::Raw,
            ..self
        }
    }

    pub fn operation(
        &self,
        server: Server,
        segments: &[&str],
        body: Option<&serde_json::Value>,
    ) -> Operation {
        let text = |name: &str| {
            body.and_then(|b| field(server, b, name))
                .and_then(|v| v.as_str())
        };
        let model = match self.model {
            ModelFrom::None => None,
            ModelFrom::Body(name) => text(name).map(str::to_string),
            ModelFrom::BodyOr(first, second) => text(first)
                .filter(|m| !m.is_empty())
                .or_else(|| text(second))
                .map(str::to_string),
            ModelFrom::Segment(i) => segments.get(i).map(|s| s.to_string()),
        };
        let streaming = match self.stream {
            StreamFrom::Never => false,
            StreamFrom::Always => true,
            StreamFrom::Body(name, default) => body
                .and_then(|b| field(server, b, name))
                .and_then(|v| v.as_bool())
                .unwrap_or(default),
        };
        Operation {
            class: self.class,
            route: self.id,
            model,
            streaming,
        }
    }
}

/// Shorthand for the route tables.
pub const fn r(
    id: &'static str,
    methods: &'static [&'static str],
    path: &'static str,
    class: OpClass,
    model: ModelFrom,
    stream: StreamFrom,
) -> Route {
    Route {
        id,
        methods,
        path,
        class,
        model,
        stream,
        body: BodyKind::Json,
    }
}

pub const GET: &[&str] = &["GET", "HEAD"];
pub const POST: &[&str] = &["POST"];
pub const DELETE: &[&str] = &["DELETE"];
pub const ANY: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"];
