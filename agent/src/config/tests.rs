use super::*;

fn parse(yaml: &str) -> Result<Config, Error> {
    Config::parse(yaml, "test.yaml")
}

#[test]
fn builtin_default_is_valid() {
    let cfg = Config::builtin().expect("built-in config parses");
    assert!(
        cfg.targets
            .iter()
            .any(|t| t.matches.to_string() == "local:11434" && t.matches.host == HostSpec::Local)
    );
    // Every shipped target covers the whole host, and keeps its protocol.
    assert!(
        cfg.targets
            .iter()
            .all(|t| t.matches.host == HostSpec::Local)
    );
    let protocols: Vec<(&str, Protocol)> = cfg
        .targets
        .iter()
        .map(|t| (t.name.as_str(), t.protocol))
        .collect();
    assert_eq!(
        protocols,
        [
            ("ollama", Protocol::Http),
            ("vllm-tgi-triton", Protocol::Tcp),
            ("llama-cpp", Protocol::Tcp)
        ]
    );
    assert_eq!(cfg.fail_mode, FailMode::Closed);
    let policy = crate::policy::load_paths(&cfg.policies).expect("built-in packs load");
    assert!(policy.packs.contains(&"ollama-safe".to_string()));
}

#[test]
fn issue_example_parses() {
    let cfg = parse(
        "listen: 127.0.0.1:15001\ncgroup: /\ntargets:\n  - name: local-llama\n    match: 127.0.0.5:8000\n    upstream: 127.0.0.3:18080\n    protocol: tcp\n",
    )
    .expect("valid");
    assert_eq!(
        cfg.targets[0].upstream,
        vec![Endpoint::Addr("127.0.0.3:18080".parse().expect("addr"))]
    );
}

#[test]
fn upstream_list_and_hostnames() {
    let cfg = parse(
        "listen: 127.0.0.1:15001\ntargets:\n  - name: a\n    match: models.internal:443\n    upstream: [\"127.0.0.1:1\", \"localhost:2\", \"[::1]:3\"]\n",
    )
    .expect("valid");
    assert_eq!(cfg.targets[0].upstream.len(), 3);
    assert_eq!(
        cfg.targets[0].matches.host,
        HostSpec::Name("models.internal".into())
    );
}

#[test]
fn unknown_field_reports_line_and_column() {
    let err = parse("listen: 127.0.0.1:15001\ntargets:\n  - name: a\n    match: 127.0.0.1:80\n    upstreem: 127.0.0.1:81\n")
        .expect_err("typo must be rejected");
    let msg = err.to_string();
    assert!(msg.starts_with("test.yaml:5:5: "), "{msg}");
    assert!(msg.contains("unknown field `upstreem`"), "{msg}");
    assert!(msg.contains("expected one of"), "{msg}");
}

#[test]
fn bad_match_reports_location_and_grammar() {
    let err = parse("listen: 127.0.0.1:15001\ntargets:\n  - name: a\n    match: 127.0.0.1\n")
        .expect_err("missing port");
    let msg = err.to_string();
    // serde reports conversion errors at the enclosing item, with its path.
    assert!(
        msg.starts_with("test.yaml:3:5: targets[0]: \"127.0.0.1\": "),
        "{msg}"
    );
    assert!(msg.contains("expected \"host:port\""), "{msg}");

    for (bad, want) in [
        ("10.0.0.1/8:80", "host bits set"),
        ("::1:80", "IPv6 addresses go in brackets"),
        ("127.0.0.1:0", "starts at 0"),
        ("127.0.0.1:9-1", "empty"),
        ("127.0.0.1:1-5000", "spans more than"),
        ("bad_host!:80", "not an IP address"),
    ] {
        let err = parse(&format!(
            "listen: 127.0.0.1:15001\ntargets:\n  - name: a\n    match: \"{bad}\"\n"
        ))
        .expect_err(bad);
        assert!(err.to_string().contains(want), "{bad}: {err}");
    }
}

#[test]
fn rejects_target_covering_the_listener_and_non_loopback_listen() {
    let err =
        parse("listen: 127.0.0.1:15001\ntargets:\n  - name: a\n    match: 127.0.0.0/8:15001\n")
            .expect_err("covers listener");
    assert!(
        err.to_string().contains("covers the agent's own listener"),
        "{err}"
    );
    let err = parse("listen: 0.0.0.0:15001\ntargets:\n  - name: a\n    match: 127.0.0.1:80\n")
        .expect_err("not loopback");
    assert!(err.to_string().contains("not a loopback address"), "{err}");
}

#[test]
fn syntax_error_has_location() {
    let err = parse("listen: [\n").expect_err("broken yaml");
    assert!(
        matches!(
            err,
            Error::Syntax { line: 2, .. } | Error::Syntax { line: 1, .. }
        ),
        "{err}"
    );
}

#[test]
fn local_match_covers_loopback_and_the_unspecified_address() {
    let cfg = parse("listen: 127.0.0.1:15001\ntargets:\n  - name: a\n    match: local:8000-8001\n")
        .expect("valid");
    let m = &cfg.targets[0].matches;
    assert_eq!(m.host, HostSpec::Local);
    assert_eq!(m.to_string(), "local:8000-8001");
    for covered in [
        "127.0.0.1:8000",
        "127.9.9.9:8001",
        "[::1]:8000",
        "0.0.0.0:8000",
        "[::]:8001",
        "[::ffff:127.0.0.1]:8000",
    ] {
        assert!(m.covers(covered.parse().expect("addr")), "{covered}");
    }
    for not in ["127.0.0.1:8002", "10.0.0.1:8000", "[fd00::1]:8000"] {
        assert!(!m.covers(not.parse().expect("addr")), "{not}");
    }
    // Two loopback networks per port are known from the config alone.
    assert_eq!(static_entry_count([m]), 4);
    // `local` on the listener's port covers the listener.
    let err = parse("listen: 127.0.0.1:15001\ntargets:\n  - name: a\n    match: local:15001\n")
        .expect_err("covers listener");
    assert!(
        err.to_string().contains("covers the agent's own listener"),
        "{err}"
    );
}

#[test]
fn the_target_map_capacity_counts_entries_not_targets() {
    // One target of 64 ports on 64 addresses would be 4096 entries; 65 such targets do not
    // fit, whatever the number of targets.
    let targets = |n: usize| -> String {
        (0..n)
            .map(|i| {
                format!(
                    "  - name: t{i}\n    match: \"[fd00::{:x}]:1000-1063\"\n",
                    i + 1
                )
            })
            .collect()
    };
    parse(&format!(
        "listen: 127.0.0.1:15001\ntargets:\n{}",
        targets(64)
    ))
    .expect("4096 entries fit");
    let err = parse(&format!(
        "listen: 127.0.0.1:15001\ntargets:\n{}",
        targets(65)
    ))
    .expect_err("4160 entries do not fit");
    let msg = err.to_string();
    assert!(
        msg.contains("holds 4096 entries") && msg.contains("need 4160"),
        "{msg}"
    );
    // Targets sharing a network and port share the entry.
    let dup = "listen: 127.0.0.1:15001\ntargets:\n  - name: a\n    match: local:80\n  - name: b\n    match: 127.0.0.0/8:80\n";
    let cfg = parse(dup).expect("valid");
    assert_eq!(
        static_entry_count(cfg.targets.iter().map(|t| &t.matches)),
        2
    );
}

#[test]
fn the_body_budget_must_hold_one_largest_body() {
    let err = Config::parse(
        "listen: 127.0.0.1:15001\nmax_request_body_bytes: 2000\nmax_buffered_body_bytes: 1000\ntargets:\n  - name: a\n    match: 127.0.0.5:8000\n",
        "t.yaml",
    )
    .expect_err("budget smaller than one body");
    assert!(err.to_string().contains("max_buffered_body_bytes"), "{err}");
}

#[test]
fn metrics_are_off_by_default_and_only_served_on_loopback() {
    let base = "listen: 127.0.0.1:15001\ntargets: [{name: a, match: 10.0.0.1:80}]\n";
    let cfg = parse(base).expect("valid");
    assert_eq!((cfg.metrics_listen, cfg.overhead_header), (None, false));
    let on = parse(&format!(
        "{base}metrics_listen: 127.0.0.1:9464\noverhead_header: true\n"
    ))
    .expect("loopback metrics");
    assert_eq!(
        on.metrics_listen,
        Some("127.0.0.1:9464".parse().expect("addr"))
    );
    assert!(on.overhead_header);
    let e = parse(&format!("{base}metrics_listen: 0.0.0.0:9464\n"))
        .expect_err("all interfaces refused")
        .to_string();
    assert!(
        e.contains("metrics_listen") && e.contains("loopback"),
        "{e}"
    );
    let e = parse(&format!("{base}metrics_listen: 127.0.0.1:15001\n"))
        .expect_err("the intercept listener refused")
        .to_string();
    assert!(e.contains("intercept listener"), "{e}");
}

#[test]
fn runtimes_default_to_per_core_and_shared_is_spelled_out() {
    let base = "listen: 127.0.0.1:15001\ntargets: [{name: a, match: 10.0.0.1:80}]\n";
    assert_eq!(parse(base).expect("valid").runtime, Runtime::PerCore);
    let shared = parse(&format!("{base}runtime: shared\n")).expect("shared");
    assert_eq!(shared.runtime, Runtime::Shared);
    let e = parse(&format!("{base}runtime: per-thread\n"))
        .expect_err("unknown runtime")
        .to_string();
    assert!(e.contains("per-core") && e.contains("shared"), "{e}");
}

#[test]
fn upstream_timeouts_default_to_five_minutes_and_zero_is_refused_by_name() {
    let base = "listen: 127.0.0.1:15001\ntargets: [{name: a, match: 10.0.0.1:80}]\n";
    let cfg = parse(base).expect("valid");
    assert_eq!(
        (cfg.upstream_head_timeout, cfg.upstream_idle_timeout),
        (Duration::from_secs(300), Duration::from_secs(300))
    );
    let set = parse(&format!(
        "{base}upstream_head_timeout_ms: 250\nupstream_idle_timeout_ms: 750\n"
    ))
    .expect("set");
    assert_eq!(
        (set.upstream_head_timeout, set.upstream_idle_timeout),
        (Duration::from_millis(250), Duration::from_millis(750))
    );
    for name in ["upstream_head_timeout_ms", "upstream_idle_timeout_ms"] {
        let e = parse(&format!("{base}{name}: 0\n"))
            .expect_err("0 refused")
            .to_string();
        assert!(e.contains(name) && e.contains("at least 1"), "{e}");
    }
}

#[test]
fn max_namespaces_defaults_and_is_bounded_by_the_kernel_maps() {
    let base = "listen: 127.0.0.1:15001\ntargets:\n  - name: a\n    match: 127.0.0.5:8000\n";
    assert_eq!(parse(base).expect("valid").max_namespaces, 256);
    let zero = parse(&format!("max_namespaces: 0\n{base}")).expect("0 serves none");
    assert_eq!(zero.max_namespaces, 0);
    let over = parse(&format!("max_namespaces: 4097\n{base}"));
    assert!(
        over.is_err_and(|e| e.to_string().contains("max_namespaces")),
        "4097 is more than the maps hold"
    );
}

#[test]
fn identity_settings_parse_and_errors_name_the_setting() {
    let base = "listen: 127.0.0.1:15001\nidentity:\n  issuers:\n    - issuer: http://127.0.0.1:9000\n      audiences: [sluice]\n";
    let http = "targets:\n  - name: a\n    match: 127.0.0.1:80\n    protocol: http\n    identity: required\n";
    let cfg = parse(&format!("{base}{http}")).expect("valid");
    assert_eq!(cfg.identity.issuers.len(), 1);
    assert_eq!(
        cfg.targets[0].identity,
        crate::identity::Requirement::Required
    );
    // A typo inside an issuer is placed by line and column.
    let err = parse(&format!("{base}      audience: [x]\n{http}")).expect_err("typo");
    let msg = err.to_string();
    assert!(msg.starts_with("test.yaml:6:7: "), "{msg}");
    assert!(msg.contains("unknown field `audience`"), "{msg}");
    // `required` needs an issuer and an HTTP target.
    let err = parse(&format!("listen: 127.0.0.1:15001\n{http}")).expect_err("no issuer");
    assert!(
        err.to_string()
            .contains("needs at least one identity.issuers"),
        "{err}"
    );
    let tcp = http.replace("protocol: http", "protocol: tcp");
    let err = parse(&format!("{base}{tcp}")).expect_err("tcp target");
    assert!(err.to_string().contains("needs protocol: http"), "{err}");
    let err = parse(&format!(
        "{}{http}",
        base.replace("[sluice]", "[sluice]\n      algorithms: [none]")
    ))
    .expect_err("alg none");
    assert!(
        err.to_string()
            .contains("identity.issuers[0].algorithms: \"none\" is never accepted"),
        "{err}"
    );
}

#[test]
fn a_credential_is_read_per_http_target_and_its_mistakes_are_placed() {
    let base = "listen: 127.0.0.1:15001\ntargets:\n  - name: openai\n    match: 127.0.0.1:80\n    upstream: 127.0.0.1:8080\n    protocol: http\n";
    let cfg = parse(&format!(
        "{base}    credential: {{file: /run/sluice/openai.key}}\n"
    ))
    .expect("credential");
    let c = cfg.targets[0].credential.as_ref().expect("set");
    assert_eq!(c.header, http::header::AUTHORIZATION);
    assert_eq!(c.scheme.as_deref(), Some("Bearer"));
    assert_eq!(
        c.source,
        crate::custody::Source::File("/run/sluice/openai.key".into())
    );

    let err = parse(&format!(
        "{base}    credential:\n      header: x-api-key\n      file: /a\n      env: B\n"
    ))
    .expect_err("two sources")
    .to_string();
    // Like every conversion error, placed at the enclosing item, with the setting's path.
    assert!(
        err.starts_with("test.yaml:3:5: targets[0]: credential: "),
        "{err}"
    );
    assert!(err.contains("exactly one of file, env or command"), "{err}");
    let err = parse(&format!("{base}    credential:\n      fiel: /a\n"))
        .expect_err("typo")
        .to_string();
    assert!(err.starts_with("test.yaml:8:7: "), "{err}");
    assert!(err.contains("unknown field `fiel`"), "{err}");

    let err = parse(&format!(
        "{}    credential: {{env: KEY}}\n",
        base.replace("protocol: http", "protocol: tcp")
    ))
    .expect_err("tcp")
    .to_string();
    assert!(err.contains("credential needs protocol: http"), "{err}");

    // Without an upstream the key would follow the client to any address it dialled.
    let err = parse(&format!(
        "{}    credential: {{env: KEY}}\n",
        base.replace("    upstream: 127.0.0.1:8080\n", "")
    ))
    .expect_err("no upstream")
    .to_string();
    assert!(err.contains("credential needs upstream"), "{err}");
}

#[test]
fn keys_per_caller_need_a_when_and_the_default_key_has_none() {
    let base = "listen: 127.0.0.1:15001\ntargets:\n  - name: openai\n    match: 127.0.0.1:80\n    upstream: 127.0.0.1:8080\n    protocol: http\n";
    let cfg = parse(&format!(
        "{base}    credentials:\n      - {{when: {{groups: [a]}}, file: /a}}\n      - {{when: {{units: [b.service]}}, header: x-api-key, file: /b}}\n    credential: {{file: /c}}\n"
    ))
    .expect("keys per caller");
    let files: Vec<String> = cfg.targets[0]
        .keys()
        .map(|k| k.source.to_string())
        .collect();
    assert_eq!(files, ["file /a", "file /b", "file /c"]);
    for (yaml, want) in [
        (
            "    credentials:\n      - {file: /a}\n",
            "credentials[0]: needs when",
        ),
        (
            "    credential: {file: /a, when: {groups: [x]}}\n",
            "credential.when: the target's credential is for every caller",
        ),
        (
            "    credentials:\n      - {when: {}, file: /a}\n",
            "name at least one of issuers, groups",
        ),
        (
            "    credentials:\n      - {when: {group: [x]}, file: /a}\n",
            "unknown field `group`",
        ),
    ] {
        let err = parse(&format!("{base}{yaml}")).expect_err(yaml).to_string();
        assert!(err.contains(want), "{yaml}: {err}");
    }
}

#[test]
fn with_several_issuers_keys_by_group_or_subject_name_their_issuer() {
    let two = "listen: 127.0.0.1:15001\nidentity:\n  issuers:\n    - {issuer: \"http://127.0.0.1:9000\", audiences: [sluice]}\n    - {issuer: \"http://127.0.0.1:9001\", audiences: [sluice]}\n";
    let target = |when: &str| {
        format!(
            "{two}targets:\n  - name: t\n    match: 127.0.0.1:80\n    upstream: 127.0.0.1:8080\n    protocol: http\n    credentials:\n      - {{when: {when}, file: /a}}\n"
        )
    };
    let err = parse(&target("{groups: [team-a]}"))
        .expect_err("any issuer")
        .to_string();
    assert!(err.contains("groups and subjects need issuers"), "{err}");
    parse(&target(
        "{issuers: [\"http://127.0.0.1:9000\"], groups: [team-a]}",
    ))
    .expect("issuer named");
    parse(&target("{units: [jobs.service]}")).expect("no token names");
}

#[test]
fn a_relative_key_file_is_found_next_to_the_config() {
    let dir = std::env::temp_dir().join(format!("sluice-cred-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("sluice.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:15001\ntargets:\n  - name: t\n    match: 127.0.0.1:80\n    upstream: 127.0.0.1:8080\n    protocol: http\n    credential: {file: keys/t}\n",
    )
    .expect("write");
    let cfg = Config::load(&path).expect("load");
    assert_eq!(
        cfg.targets[0].credential.as_ref().map(|c| c.source.clone()),
        Some(crate::custody::Source::File(dir.join("keys/t")))
    );
    std::fs::remove_dir_all(&dir).expect("rm");
}

#[test]
fn tls_is_read_per_http_target_and_its_mistakes_are_placed() {
    let base = "listen: 127.0.0.1:15001\ntargets:\n  - name: openai\n    match: 127.0.0.1:80\n    upstream: api.example.test:443\n    protocol: http\n";
    let cfg = parse(base).expect("no tls");
    assert_eq!(
        cfg.targets[0].tls, None,
        "without tls: cleartext, as before"
    );
    let cfg = parse(&format!("{base}    tls: {{}}\n")).expect("system roots");
    assert_eq!(cfg.targets[0].tls, Some(crate::tls::Settings::default()));
    let cfg = parse(&format!(
        "{base}    tls:\n      ca_file: /etc/sluice/ca.pem\n      server_name: models.internal\n      client_cert: /etc/sluice/c.pem\n      client_key: /etc/sluice/k.pem\n"
    ))
    .expect("all of it");
    let t = cfg.targets[0].tls.as_ref().expect("set");
    assert_eq!(t.ca_file.as_deref(), Some(Path::new("/etc/sluice/ca.pem")));
    assert_eq!(t.server_name.as_deref(), Some("models.internal"));

    let err = parse(&format!("{base}    tls:\n      ca_fiel: /a\n"))
        .expect_err("typo")
        .to_string();
    assert!(err.starts_with("test.yaml:8:7: "), "{err}");
    assert!(err.contains("unknown field `ca_fiel`"), "{err}");
    let err = parse(&format!("{base}    tls: {{client_cert: /c.pem}}\n"))
        .expect_err("half")
        .to_string();
    assert!(
        err.contains("targets[0] (openai): tls.client_cert needs client_key"),
        "{err}"
    );
    let err = parse(&format!(
        "{}    tls: {{}}\n",
        base.replace("protocol: http", "protocol: tcp")
    ))
    .expect_err("tcp")
    .to_string();
    assert!(err.contains("tls needs protocol: http"), "{err}");
}
