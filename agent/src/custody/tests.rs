use super::*;

fn settings(yaml: &str) -> Settings {
    serde_norway::from_str(yaml).expect("settings")
}

fn tmp(tag: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("sluice-keeper-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// Writes a key file as operators must: readable by its owner only.
fn write_private(p: &std::path::Path, content: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(p, content).expect("write");
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// Writes a new version the way operators should: a new file renamed into place.
fn rotate(p: &std::path::Path, content: &str) {
    let new = p.with_extension("new");
    write_private(&new, content);
    std::fs::rename(&new, p).expect("rename");
}

#[test]
fn the_key_replaces_every_client_credential() {
    let p = tmp("apply");
    write_private(&p, "sk-real-0123456789\n");
    let k = Keeper::load("openai", &settings(&format!("file: {}", p.display()))).expect("load");
    let (mut parts, ()) = http::Request::builder()
        .uri("/v1/chat/completions?api_key=sk-client&stream=1")
        .header("authorization", "Bearer sk-client")
        .header("x-api-key", "sk-client")
        .header("content-type", "application/json")
        .body(())
        .expect("request")
        .into_parts();
    let key = k.current();
    key.apply(&mut parts, &[]);
    assert_eq!(parts.uri, "/v1/chat/completions?stream=1");
    let auth: Vec<_> = parts.headers.get_all("authorization").iter().collect();
    assert_eq!(auth, ["Bearer sk-real-0123456789"]);
    assert!(auth[0].is_sensitive());
    assert!(!parts.headers.contains_key("x-api-key"));
    assert!(parts.headers.contains_key("content-type"));
    let shown = format!("{key:?} {:?}", parts.headers);
    assert!(!shown.contains("sk-real"), "{shown}");
    std::fs::remove_file(&p).expect("rm");
}

#[test]
fn an_anthropic_style_key_goes_in_x_api_key_without_a_scheme() {
    let p = tmp("anthropic");
    write_private(&p, "sk-ant-0123456789");
    let k = Keeper::load(
        "anthropic",
        &settings(&format!("header: x-api-key\nfile: {}", p.display())),
    )
    .expect("load");
    let (mut parts, ()) = http::Request::builder()
        .uri("/v1/messages")
        .header("x-api-key", "sk-ant-client")
        .header("authorization", "Bearer eyJtoken")
        .body(())
        .expect("request")
        .into_parts();
    k.current().apply(&mut parts, &[]);
    assert_eq!(
        parts.headers.get("x-api-key").map(|v| v.as_bytes()),
        Some(&b"sk-ant-0123456789"[..])
    );
    assert!(!parts.headers.contains_key("authorization"));
    std::fs::remove_file(&p).expect("rm");
}

#[test]
fn a_rotated_file_is_used_and_a_broken_one_keeps_the_previous_key() {
    let p = tmp("rotate");
    write_private(&p, "sk-first-00000000");
    let k = Keeper::load("t", &settings(&format!("file: {}", p.display()))).expect("load");
    let held = k.current();
    assert_eq!(k.refresh(), Refreshed::Unchanged);
    rotate(&p, "sk-second-0000000\n");
    assert_eq!(k.refresh(), Refreshed::Rotated);
    assert_eq!(k.current().secret().expose(), b"sk-second-0000000");
    // A request that took the old key keeps it to its end.
    assert_eq!(held.secret().expose(), b"sk-first-00000000");
    assert_eq!(k.refresh(), Refreshed::Unchanged);

    rotate(&p, "\n");
    assert_eq!(k.refresh(), Refreshed::Kept);
    assert_eq!(k.current().secret().expose(), b"sk-second-0000000");
    std::fs::remove_file(&p).expect("rm");
    assert_eq!(k.refresh(), Refreshed::Kept);
    assert_eq!(k.refresh(), Refreshed::Unchanged, "one warning per change");
    rotate(&p, "sk-third-00000000");
    assert_eq!(k.refresh(), Refreshed::Rotated);
    assert_eq!(k.current().secret().expose(), b"sk-third-00000000");
    // Touched but the same key: nothing to swap.
    rotate(&p, "sk-third-00000000\n");
    assert_eq!(k.refresh(), Refreshed::Unchanged);
    std::fs::remove_file(&p).expect("rm");
}

#[test]
fn a_missing_key_stops_the_start_with_the_target_and_source_named() {
    let e = Keeper::load("openai", &settings("file: /nonexistent/sluice/key"))
        .err()
        .expect("missing")
        .to_string();
    assert!(
        e.starts_with("target openai: credential: cannot read the file /nonexistent/sluice/key"),
        "{e}"
    );
}

#[test]
fn a_command_key_is_run_again_when_its_refresh_is_due() {
    let p = tmp("command");
    write_private(&p, "sk-first-00000000");
    let k = Keeper::load(
        "t",
        &settings(&format!(
            "command: [cat, {}]\nrefresh_secs: 60",
            p.display()
        )),
    )
    .expect("load");
    let backdate = |k: &Keeper| {
        let mut ran = k.ran.lock().expect("lock");
        *ran = ran
            .checked_sub(std::time::Duration::from_secs(61))
            .expect("an instant a minute ago");
    };
    rotate(&p, "sk-second-0000000\n");
    assert_eq!(k.refresh(), Refreshed::Unchanged, "not due yet");
    assert_eq!(k.current().secret().expose(), b"sk-first-00000000");
    backdate(&k);
    assert_eq!(k.refresh(), Refreshed::Rotated);
    assert_eq!(k.current().secret().expose(), b"sk-second-0000000");
    // A failing run keeps the key in use.
    std::fs::remove_file(&p).expect("rm");
    backdate(&k);
    assert_eq!(k.refresh(), Refreshed::Kept);
    assert_eq!(k.current().secret().expose(), b"sk-second-0000000");
    // Without refresh_secs a command runs once.
    write_private(&p, "sk-first-00000000");
    let once =
        Keeper::load("t", &settings(&format!("command: [cat, {}]", p.display()))).expect("load");
    rotate(&p, "sk-second-0000000\n");
    backdate(&once);
    assert_eq!(once.refresh(), Refreshed::Unchanged);
    std::fs::remove_file(&p).expect("rm");
}
