//! Policy validation: every error at once, each with the path of the offending value.

use georouter::config::{Config, FromTomlError};

const REGION: &str = "[[regions]]\nname = \"a\"\nendpoints = [{ url = \"http://127.0.0.1:1\" }]\n";
const LISTENER: &str = "[[listeners]]\naddress = \"127.0.0.1:0\"\n";

/// The paths of the validation errors for `toml`, or a parse error's text.
fn errors(toml: &str) -> Vec<String> {
    match Config::from_toml(toml) {
        Ok(_) => vec![],
        Err(FromTomlError::Invalid(inv)) => inv.0.into_iter().map(|e| e.path).collect(),
        Err(FromTomlError::Parse(e)) => vec![format!("parse: {e}")],
    }
}

#[test]
fn a_minimal_policy_is_valid() {
    assert_eq!(errors(&format!("{LISTENER}{REGION}")), Vec::<String>::new());
}

#[test]
fn every_error_is_reported_with_its_path() {
    let cases: &[(&str, String, &[&str])] = &[
        ("no listener", REGION.to_string(), &["listeners"]),
        ("no region", LISTENER.to_string(), &["regions", "routes[0].regions"]),
        (
            "bad listener address",
            format!("[[listeners]]\naddress = \"localhost\"\n{REGION}"),
            &["listeners[0].address"],
        ),
        (
            "duplicate listener address",
            format!("{LISTENER}[[listeners]]\nname = \"b\"\naddress = \"127.0.0.1:0\"\n{REGION}"),
            &["listeners[1].address"],
        ),
        (
            "bad region name and endpoint",
            format!("{LISTENER}[[regions]]\nname = \"EU West\"\nendpoints = [{{ url = \"ftp://x\" }}, {{ url = \"http://h:1/path\" }}]\n"),
            &["regions[0].name", "regions[0].endpoints[0].url", "regions[0].endpoints[1].url"],
        ),
        (
            "duplicate region",
            format!("{LISTENER}{REGION}{REGION}"),
            &["regions[1].name"],
        ),
        (
            "unknown protocol",
            format!("{LISTENER}[[regions]]\nname = \"a\"\nendpoints = [{{ url = \"http://h:1\", protocol = \"h3\" }}]\n"),
            &["regions[0].endpoints[0].protocol"],
        ),
        (
            "latitude out of range",
            format!("{LISTENER}[[regions]]\nname = \"a\"\nlocation = {{ lat = 91.0, lon = 0.0 }}\nendpoints = [{{ url = \"http://h:1\" }}]\n"),
            &["regions[0].location.lat"],
        ),
        (
            "client cert without key",
            format!("{LISTENER}{REGION}[regions.tls]\nclient_cert = \"c.pem\"\n"),
            &["regions[0].tls"],
        ),
        (
            "route to an unknown region, listed twice",
            format!("{LISTENER}{REGION}[[routes]]\nregions = [\"a\", \"nowhere\", \"a\"]\n"),
            &["routes[0].regions[1]", "routes[0].regions[2]"],
        ),
        (
            "route without regions, bad prefix",
            format!("{LISTENER}{REGION}[[routes]]\npath_prefix = \"api\"\nregions = []\n"),
            &["routes[0].path_prefix", "routes[0].regions"],
        ),
        (
            "a prefix that could be spelled two ways, a bad path_escapes",
            format!("{LISTENER}{REGION}[[routes]]\npath_prefix = \"/a%2Fb/\"\nregions = [\"a\"]\npath_escapes = \"maybe\"\n[[routes]]\npath_prefix = \"/x/../y/\"\nregions = [\"a\"]\n"),
            &["routes[0].path_prefix", "routes[0].path_escapes", "routes[1].path_prefix"],
        ),
        (
            "a bad server path_escapes",
            format!("{LISTENER}{REGION}[server]\npath_escapes = \"keep\"\n"),
            &["server.path_escapes"],
        ),
        (
            "two routes for the same host and prefix",
            format!("{LISTENER}{REGION}[[routes]]\nhost = \"x.com\"\nregions = [\"a\"]\n[[routes]]\nhost = \"X.com\"\nregions = [\"a\"]\n"),
            &["routes[1]"],
        ),
        (
            "limits below their minimum",
            format!("{LISTENER}{REGION}[server]\nmax_header_bytes = 100\nmax_uri_bytes = 10\nmax_connections = 0\n"),
            &["server.max_connections", "server.max_header_bytes", "server.max_uri_bytes"],
        ),
        (
            "zero timeouts",
            format!("{LISTENER}{REGION}[upstream]\nconnect_timeout = \"0s\"\n"),
            &["upstream.connect_timeout"],
        ),
        (
            "tls listener without certificates",
            format!("[[listeners]]\naddress = \"127.0.0.1:0\"\ntls = {{ certificates = [] }}\n{REGION}"),
            &["listeners[0].tls.certificates"],
        ),
        (
            "HTTP/2 windows and frame size outside RFC 9113's bounds",
            format!(
                "[server]\nhttp2_stream_window = 65534\nhttp2_max_frame_size = 16777216\n\
                 [upstream]\nhttp2_connection_window = 2147483648\n{LISTENER}{REGION}"
            ),
            &[
                "server.http2_stream_window",
                "server.http2_max_frame_size",
                "upstream.http2_connection_window",
            ],
        ),
        (
            "HTTP/2 connection window below the stream window",
            format!("[upstream]\nhttp2_stream_window = 1048576\nhttp2_connection_window = 65535\n{LISTENER}{REGION}"),
            &["upstream.http2_connection_window"],
        ),
    ];
    for (name, toml, want) in cases {
        assert_eq!(errors(toml), *want, "case: {name}");
    }
}

#[test]
fn unknown_keys_and_bad_types_are_parse_errors_that_name_the_key() {
    let e = errors(&format!("{LISTENER}{REGION}[server]\nmax_conections = 5\n"));
    assert!(e[0].contains("max_conections"), "{e:?}");
    let e = errors(&format!(
        "{LISTENER}{REGION}[server]\nheader_read_timeout = \"soon\"\n"
    ));
    assert!(e[0].contains("header_read_timeout"), "{e:?}");
}

#[test]
fn the_error_text_lists_every_problem_with_its_path() {
    let err = Config::from_toml(&format!(
        "{LISTENER}[[regions]]\nname = \"a\"\nendpoints = []\n[[routes]]\nregions = [\"b\"]\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("2 errors in policy"), "{err}");
    assert!(
        err.contains("\n  regions[0].endpoints: a region needs at least one endpoint"),
        "{err}"
    );
    assert!(
        err.contains("\n  routes[0].regions[0]: no region named \"b\" (known: a)"),
        "{err}"
    );
}

#[test]
fn the_example_and_demo_policies_are_valid() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/georouter.toml"
    ))
    .unwrap();
    Config::from_toml(&example).unwrap_or_else(|e| panic!("config/georouter.toml: {e}"));
}

/// Country codes are ISO 3166-1: a code no client has would protect nobody, so
/// "UK", "EL" and "XX" are errors, the first two with the code meant.
#[test]
fn country_codes_are_checked_against_iso_3166_with_the_code_meant() {
    let toml = r#"
        [[listeners]]
        address = "127.0.0.1:0"
        [[regions]]
        name = "eu"
        jurisdiction = "eu"
        endpoints = [{ url = "http://127.0.0.1:1" }]
        [[regions]]
        name = "uk"
        jurisdiction = "uk"
        endpoints = [{ url = "http://127.0.0.1:2" }]
        [[jurisdictions]]
        name = "eu"
        countries = ["DE", "EL", "XX"]
        [[jurisdictions]]
        name = "uk"
        countries = ["UK"]
        [[routes]]
        regions = ["eu", "uk"]
        [[routes.rules]]
        countries = ["de", "ZZ"]
        continents = ["XX"]
        regions = ["eu"]
    "#;
    let e = georouter::config::Config::from_toml(toml)
        .unwrap_err()
        .to_string();
    for want in [
        r#"jurisdictions[0].countries[1]: "EL" is not a country code: did you mean "GR""#,
        r#"jurisdictions[0].countries[2]: "XX" is not a country code"#,
        r#"jurisdictions[1].countries[0]: "UK" is not a country code: did you mean "GB""#,
        r#"routes[0].rules[0].countries[1]: "ZZ" is not a country code"#,
        r#"routes[0].rules[0].continents[0]: "XX" is not a continent code"#,
    ] {
        assert!(e.contains(want), "{want}\nin\n{e}");
    }
    assert!(!e.contains(r#""de""#), "lower case is fine: {e}");
}

/// Every mistake at once, each once, at its dotted path: a misspelt key with
/// the key meant, a bad duration with the format, an unknown section; a syntax
/// error keeps its line and column.
#[test]
fn key_and_type_mistakes_are_all_reported_at_their_paths() {
    let toml = r#"
        [server]
        worker = 4
        [health]
        interval = "5 sekonds"
        [healthh]
        x = 1
        [[listeners]]
        address = "127.0.0.1:0"
        [[regions]]
        name = "a"
        endpoint = [{ url = "http://127.0.0.1:1" }]
    "#;
    let e = georouter::config::Config::from_toml(toml)
        .unwrap_err()
        .to_string();
    for want in [
        "4 errors in policy",
        "server.worker: unknown key; did you mean `workers`?",
        r#"health.interval: invalid value: string "5 sekonds", expected a duration; a duration is a number and a unit, e.g. "250ms", "10s""#,
        "healthh: unknown section; did you mean [health]?",
        "regions[0].endpoint: unknown key; did you mean `endpoints`?",
    ] {
        assert!(e.contains(want), "{want}\nin\n{e}");
    }
    assert_eq!(e.matches("worker").count(), 2, "each error once: {e}");
    // Several mistakes in one section, each reported, each once; a misspelt
    // required key is not reported a second time as missing.
    let toml = r#"
        [server]
        worker = 4
        max_conections = 5
        idle_timeout = "5 sekonds"
        [[listeners]]
        address = "127.0.0.1:0"
        [[regions]]
        name = "a"
        endpoint = [{ url = "http://127.0.0.1:1" }]
        weigth = 2
    "#;
    let e = georouter::config::Config::from_toml(toml)
        .unwrap_err()
        .to_string();
    for want in [
        "5 errors in policy",
        "server.worker: unknown key; did you mean `workers`?",
        "server.max_conections: unknown key; did you mean `max_connections`?",
        "server.idle_timeout: invalid value",
        "regions[0].endpoint: unknown key; did you mean `endpoints`?",
        "regions[0].weigth: unknown key",
    ] {
        assert!(e.contains(want), "{want}\nin\n{e}");
    }
    assert!(!e.contains("missing"), "{e}");
    let e = georouter::config::Config::from_toml("[server]\nworkers = [\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 2") && e.contains("workers = ["), "{e}");
}

/// TLS resumption settings: a rotation too short to be of use and ticket keys
/// with tickets off are refused at their paths; an unknown key names the ones
/// meant.
#[test]
fn tls_resumption_settings_are_checked() {
    let tls = |resumption: &str| {
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[listeners.tls.certificates]]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[listeners.tls.resumption]\n{resumption}\n{REGION}"
        )
    };
    assert_eq!(errors(&tls("")), Vec::<String>::new());
    assert_eq!(
        errors(&tls("ticket_rotation = \"30s\"")),
        ["listeners[0].tls.resumption.ticket_rotation"]
    );
    assert_eq!(
        errors(&tls("tickets = false\nticket_keys = \"keys\"")),
        ["listeners[0].tls.resumption.ticket_keys"]
    );
    let e = Config::from_toml(&tls("ticket_key = \"keys\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ticket_keys"), "{e}");
}

/// `run` cannot bind an admin listener on a data listener's port (the same
/// address, or a wildcard one): `check` says so, at `admin.address`.
#[test]
fn an_admin_address_that_takes_a_listeners_port_is_refused() {
    let with = |listen: &str, admin: &str| {
        errors(&format!(
            "[[listeners]]\naddress = \"{listen}\"\n[admin]\naddress = \"{admin}\"\ntoken_env = \"GEOROUTER_TOKEN\"\n{REGION}"
        ))
    };
    assert_eq!(
        with("127.0.0.1:18080", "127.0.0.1:18080"),
        ["admin.address"]
    );
    assert_eq!(with("0.0.0.0:18080", "127.0.0.1:18080"), ["admin.address"]);
    assert_eq!(with("127.0.0.1:18080", "[::]:18080"), ["admin.address"]);
    assert!(with("127.0.0.1:18080", "127.0.0.1:18081").is_empty());
    assert!(
        with("127.0.0.1:0", "127.0.0.1:0").is_empty(),
        "port 0 is any port"
    );
    assert!(with("10.0.0.1:18080", "127.0.0.1:18080").is_empty());
}

/// An admin API other hosts can reach needs a token: without one, anyone on
/// the network could read the policy and explain any client.
#[test]
fn an_admin_address_off_loopback_needs_a_token() {
    let with = |admin: &str| {
        Config::from_toml(&format!(
            "[[listeners]]\naddress = \"127.0.0.1:18080\"\n[admin]\n{admin}\n{REGION}"
        ))
    };
    let e = with("address = \"0.0.0.0:9901\"").unwrap_err().to_string();
    assert!(
        e.contains("admin.address") && e.contains("no admin token") && e.contains("127.0.0.1"),
        "{e}"
    );
    assert!(with("address = \"[::]:9901\"").is_err());
    assert!(with("address = \"0.0.0.0:9901\"\ntoken_file = \"t\"").is_ok());
    assert!(with("address = \"0.0.0.0:9901\"\nread_token_env = \"R\"").is_ok());
    assert!(with("address = \"127.0.0.1:9901\"").is_ok());
    assert!(with("address = \"[::1]:9901\"").is_ok());
}

/// With no `[[routes]]`, a fence error names the missing section and says what
/// the default route does, not a `routes[0]` nobody wrote.
#[test]
fn without_routes_a_fence_error_points_at_the_missing_section() {
    let toml = format!(
        "{LISTENER}[[regions]]\nname = \"eu\"\njurisdiction = \"eu\"\nendpoints = [{{ url = \"http://127.0.0.1:1\" }}]\n\
         [[regions]]\nname = \"us\"\nendpoints = [{{ url = \"http://127.0.0.1:2\" }}]\n\
         [[jurisdictions]]\nname = \"eu\"\nstrict = true\ncountries = [\"DE\"]\n"
    );
    assert_eq!(errors(&toml), ["routes"]);
    let text = Config::from_toml(&toml).unwrap_err().to_string();
    assert!(text.contains("default route"), "{text}");
    assert!(!text.contains("routes[0]"), "{text}");
}

/// A key of the wrong type is one mistake: no "missing" beside it.
#[test]
fn a_wrong_type_is_not_also_reported_missing() {
    let toml = format!(
        "{LISTENER}[[regions]]\nname = 5\nendpoints = [{{ url = \"http://127.0.0.1:1\" }}]\n"
    );
    let text = Config::from_toml(&toml).unwrap_err().to_string();
    assert!(text.contains("regions[0].name: invalid type"), "{text}");
    assert!(!text.contains("missing"), "{text}");
    assert_eq!(errors(&toml), ["regions[0].name"]);
}

/// Each element of an array of tables is read on its own: a mistake in
/// `regions[0]` hides none in `regions[1]` (or in a route after them).
#[test]
fn a_mistake_in_one_element_hides_none_in_the_next() {
    let errors = errors(
        "[[listeners]]\naddress = \"127.0.0.1:8080\"\n\
         [[regions]]\nname = \"a\"\nendpoint = [{ url = \"http://127.0.0.1:1\" }]\n\
         [[regions]]\nname = 5\nendpoints = [{ url = \"http://127.0.0.1:1\" }]\n\
         [[routes]]\nregions = [\"a\"]\n[[routes]]\nregion = [\"a\"]\n",
    );
    assert_eq!(
        errors,
        ["regions[0].endpoint", "regions[1].name", "routes[1].region"],
        "{errors:?}"
    );
}

/// HTTP/3 rides a TLS listener's certificates on a UDP address of its own;
/// 0-RTT needs the single-use session cache.
#[test]
fn http3_settings_are_checked() {
    let tls = |address: &str, extra: &str| {
        format!(
            "[[listeners]]\naddress = \"{address}\"\n[[listeners.tls.certificates]]\ncert = \"c.pem\"\nkey = \"k.pem\"\n{extra}\n"
        )
    };
    let h3 = tls("127.0.0.1:8443", "[listeners.http3]");
    assert_eq!(errors(&format!("{h3}{REGION}")), Vec::<String>::new());
    assert_eq!(
        errors(&format!("{LISTENER}[listeners.http3]\n{REGION}")),
        ["listeners[0].http3"]
    );
    let twice = format!(
        "{h3}{}{REGION}",
        tls(
            "127.0.0.1:9443",
            "[listeners.http3]\naddress = \"127.0.0.1:8443\""
        )
    );
    assert_eq!(errors(&twice), ["listeners[1].http3.address"]);
    let no_cache = tls(
        "127.0.0.1:8443",
        "[listeners.tls.resumption]\nsession_cache = 0\n[listeners.http3]\nearly_data = true",
    );
    assert_eq!(
        errors(&format!("{no_cache}{REGION}")),
        ["listeners[0].http3.early_data"]
    );
    assert_eq!(
        errors(&format!(
            "{}{REGION}",
            tls(
                "127.0.0.1:8443",
                "[listeners.http3]\nalt_svc_max_age = \"0s\""
            )
        )),
        ["listeners[0].http3.alt_svc_max_age"]
    );
}
