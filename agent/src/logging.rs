//! The agent's log output, text or JSON lines on stderr.
//!
//! Field values come from outside: process names (a workload picks its own comm), paths,
//! model names, error texts. In the text format every field value has its control characters
//! escaped, so a process named `a\nINFO forged` shows up as `comm=a\nINFO forged` on its own
//! line and cannot forge one: line breaks, tabs, ESC (terminal sequences), the other C0 and C1
//! controls, and the Unicode bidi and line/paragraph separator characters that reorder or
//! break what a reader sees. The JSON format escapes by itself (serde_json); bidi characters
//! stay inside their quoted string there.
use std::{
    fmt::{self, Write as _},
    io::{IsTerminal as _, Write as _},
};

use tracing::field::{Field, Visit};
use tracing_subscriber::{
    EnvFilter,
    field::RecordFields,
    fmt::{FormatFields, MakeWriter, format::Writer},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

static FORMAT: std::sync::OnceLock<Format> = std::sync::OnceLock::new();

/// The format `init` installed (text when it was not called, as in unit tests).
pub fn format() -> Format {
    FORMAT.get().copied().unwrap_or(Format::Text)
}

/// Installs the global subscriber: level from `SLUICE_LOG` (default `info`), to stderr.
pub fn init(format: Format) {
    let _ = FORMAT.set(format);
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: in a file or the journal, ANSI sequences are
    // noise, and a log whose own lines carry ESC hides the escaped ones among them.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(Stderr);
    match format {
        Format::Text => builder.fmt_fields(EscapedFields).init(),
        Format::Json => builder.json().flatten_event(true).init(),
    }
}

/// Writes whole log lines formatted elsewhere (the request records) to stderr in one
/// `write`: under load a write per line was a syscall per request.
pub fn write_lines(lines: &[u8]) {
    if !lines.is_empty() {
        // Logging has nowhere to report its own failure; stderr gone means no log at all.
        let _ = std::io::stderr().lock().write_all(lines);
    }
}

/// stderr, one line per write.
struct Stderr;

struct StderrLine;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = StderrLine;

    fn make_writer(&'a self) -> Self::Writer {
        StderrLine
    }
}

impl std::io::Write for StderrLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // One line per event: through the lock in one go, as `io::stderr` does.
        std::io::stderr().lock().write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The text-format subscriber writing to `writer`, without the global install: what `init`
/// builds, for tests.
pub fn text_subscriber<W>(writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .fmt_fields(EscapedFields)
        .finish()
}

/// Formats fields as tracing-subscriber's default does (`message` first and bare, then
/// `name=value`, strings quoted), with every value escaped.
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = Visitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct Visitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        // Records bridged from the `log` crate carry their metadata as `log.*` fields, which
        // the event line already shows.
        if name.starts_with("log.") {
            return;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = (|| {
            if !self.first {
                self.writer.write_char(' ')?;
            }
            self.first = false;
            if name != "message" {
                write!(self.writer, "{name}=")?;
            }
            write!(Escaper(&mut self.writer), "{value:?}")
        })();
    }
}

/// Passes text through, escaping what must not reach a log line raw.
struct Escaper<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaper<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut clean = 0;
        for (i, c) in s.char_indices() {
            if !must_escape(c) {
                continue;
            }
            self.0.write_str(&s[clean..i])?;
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            clean = i + c.len_utf8();
        }
        self.0.write_str(&s[clean..])
    }
}

/// C0, DEL and C1 controls (`char::is_control`), the bidi embedding, override, isolate and
/// mark characters, and the Unicode line and paragraph separators.
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// Writes `v` escaped as the text log escapes every field value.
pub fn write_escaped<W: fmt::Write>(w: &mut W, v: impl fmt::Display) -> fmt::Result {
    write!(Escaper(w), "{v}")
}

/// Escapes one value as the text log does.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    // Writing into a String cannot fail.
    let _ = Escaper(&mut out).write_str(s);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    pub(crate) fn logged(f: impl FnOnce()) -> String {
        let buf = Buffer::default();
        tracing::subscriber::with_default(text_subscriber(buf.clone()), f);
        let bytes = buf.0.lock().expect("buffer").clone();
        String::from_utf8(bytes).expect("utf-8 log")
    }

    const HOSTILE: &str = "a\nINFO forged\r\t\x1b[31m\x07\u{85}\u{9b}\u{202e}\u{2066}\u{2028}z";
    const ESCAPED: &str = r"a\nINFO forged\r\t\u{1b}[31m\u{7}\u{85}\u{9b}\u{202e}\u{2066}\u{2028}z";

    fn assert_clean(line: &str) {
        assert!(
            !line.chars().any(must_escape),
            "raw control character in {line:?}"
        );
    }

    #[test]
    fn display_debug_and_str_fields_and_messages_are_escaped() {
        let out = logged(|| {
            let err = std::io::Error::other(HOSTILE);
            tracing::info!(
                comm = %HOSTILE, path = ?HOSTILE, model = HOSTILE, error = %err,
                "request from {}", HOSTILE
            );
        });
        assert_eq!(out.matches('\n').count(), 1, "one event, one line: {out:?}");
        let line = out.trim_end_matches('\n');
        assert_clean(line);
        assert!(line.contains(" INFO "), "{line}");
        assert!(!line.contains("\nINFO forged"));
        assert!(line.contains(&format!("request from {ESCAPED} ")), "{line}");
        assert!(line.contains(&format!("comm={ESCAPED} ")), "{line}");
        assert!(line.contains(&format!("error={ESCAPED}")), "{line}");
        // Debug-formatted strings were already quoted and escaped by Rust; what Rust's Debug
        // leaves raw is escaped on top, so no raw control reaches the line either way.
        assert!(line.contains(r#"path="a\nINFO forged"#), "{line}");
        assert!(line.contains(r#"model="a\nINFO forged"#), "{line}");
    }

    #[test]
    fn span_fields_are_escaped() {
        let out = logged(|| {
            let span = tracing::info_span!("conn", comm = %HOSTILE);
            let _g = span.enter();
            tracing::info!("inside");
        });
        let line = out.trim_end_matches('\n');
        assert_eq!(out.matches('\n').count(), 1, "{out:?}");
        assert_clean(line);
        assert!(line.contains(&format!("conn{{comm={ESCAPED}}}")), "{line}");
    }

    #[test]
    fn plain_values_pass_unchanged() {
        let out = logged(|| tracing::info!(n = 3, ok = true, name = %"ollama", "plain é ✓"));
        assert!(
            out.trim_end()
                .ends_with("plain é ✓ n=3 ok=true name=ollama"),
            "{out}"
        );
    }

    #[test]
    fn escape_covers_c0_c1_del_and_bidi() {
        assert_eq!(escape("a\0b\x7f\u{80}\u{9f}"), r"a\u{0}b\u{7f}\u{80}\u{9f}");
        assert_eq!(
            escape("\u{61c}\u{200e}\u{200f}\u{202a}\u{2069}\u{2029}"),
            r"\u{61c}\u{200e}\u{200f}\u{202a}\u{2069}\u{2029}"
        );
        assert_eq!(
            escape("llama3:8b-q4_K_M /api/chat é"),
            "llama3:8b-q4_K_M /api/chat é"
        );
    }
}
