//! Where a YAML error is, for the `file:line:column` that the config and policy loaders
//! promise. serde_norway knows the position of most errors but not of those about the
//! whole stream (a second document, an empty file): those are placed here, at the second
//! document's `---`, at the end of the text, or at 1:1.

/// 1-based line and column of `e` in `text`.
pub fn location(text: &str, e: &serde_norway::Error) -> (usize, usize) {
    if let Some(l) = e.location() {
        return (l.line().max(1), l.column().max(1));
    }
    second_document(text).map_or((1, 1), |line| (line, 1))
}

/// The message without serde_norway's own " at line L column C" suffix: the location is
/// printed first.
pub fn message(e: &serde_norway::Error) -> String {
    let msg = e.to_string();
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    }
}

/// The line of the `---` that starts a second document, if any.
fn second_document(text: &str) -> Option<usize> {
    let mut content = false;
    for (i, line) in text.lines().enumerate() {
        let marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if marker && content {
            return Some(i + 1);
        }
        let trimmed = line.trim_start();
        // A document's own leading `---`, directives and comments are not content.
        if !marker && !trimmed.is_empty() && !trimmed.starts_with('#') && !line.starts_with('%') {
            content = true;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> serde_norway::Error {
        serde_norway::from_str::<serde_norway::Value>(text).expect_err("invalid YAML")
    }

    #[test]
    fn places_a_second_document_at_its_marker() {
        let text = "---\na: 1\n# c\n---\nb: 2\n";
        let e = err(text);
        assert_eq!(location(text, &e), (4, 1), "{e}");
        assert!(message(&e).contains("more than one document"), "{e}");
    }

    #[test]
    fn keeps_the_parser_location() {
        let text = "a: 1\nb: [\n";
        let e = err(text);
        let l = e.location().expect("parser knows");
        assert_eq!(location(text, &e), (l.line(), l.column()));
        assert!(!message(&e).contains(" at line "), "{}", message(&e));
    }
}
