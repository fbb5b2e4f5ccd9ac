//! The edge sections of a policy: `[server]`, `[client]`, `[[listeners]]`,
//! `[admin]` and `[upstream]`, each validated with every error at its path.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::{
    raw, AdminSettings, Capacity, CertificateSpec, ClientSettings, Http2Tuning, Http3Spec, Invalid,
    ListenerSpec, Resumption, ServerSettings, TlsSpec, UpstreamSettings,
};

/// Checks the HTTP/2 settings of `section` against RFC 9113's bounds: a window
/// from 65535 (the initial one) to 2^31-1 (6.9.1), a frame size from 16384 to
/// 2^24-1 (4.2).
fn check_http2(section: &str, t: &Http2Tuning, errs: &mut Invalid) {
    const WINDOWS: std::ops::RangeInclusive<u32> = 65_535..=(1 << 31) - 1;
    const FRAMES: std::ops::RangeInclusive<u32> = 16_384..=(1 << 24) - 1;
    for (key, value, range) in [
        ("http2_stream_window", t.stream_window, WINDOWS),
        ("http2_connection_window", t.connection_window, WINDOWS),
        ("http2_max_frame_size", t.max_frame_size, FRAMES),
    ] {
        if !range.contains(&value) {
            errs.push(
                format!("{section}.{key}"),
                format!(
                    "{value} is outside {} to {} (RFC 9113)",
                    range.start(),
                    range.end()
                ),
            );
        }
    }
    if t.connection_window < t.stream_window && WINDOWS.contains(&t.connection_window) {
        errs.push(
            format!("{section}.http2_connection_window"),
            format!(
                "{} is below http2_stream_window ({}): one stream could not use its window; raise it",
                t.connection_window, t.stream_window
            ),
        );
    }
}

pub(super) fn server(s: raw::RawServer, errs: &mut Invalid) -> ServerSettings {
    if s.max_connections == 0 {
        errs.push("server.max_connections", "must be at least 1");
    }
    if s.max_header_bytes < 8192 {
        errs.push(
            "server.max_header_bytes",
            format!("{} is below the minimum of 8192", s.max_header_bytes),
        );
    }
    if s.max_headers == 0 {
        errs.push("server.max_headers", "must be at least 1");
    }
    if s.max_uri_bytes < 64 {
        errs.push(
            "server.max_uri_bytes",
            format!("{} is below the minimum of 64", s.max_uri_bytes),
        );
    }
    if s.http2_max_concurrent_streams == 0 {
        errs.push("server.http2_max_concurrent_streams", "must be at least 1");
    }
    for (name, d) in [
        ("server.header_read_timeout", s.header_read_timeout),
        ("server.idle_timeout", s.idle_timeout),
    ] {
        if d.is_zero() {
            errs.push(name, "must be longer than 0s");
        }
    }
    let http2 = Http2Tuning {
        stream_window: s.http2_stream_window,
        connection_window: s.http2_connection_window,
        max_frame_size: s.http2_max_frame_size,
        adaptive_window: s.http2_adaptive_window,
    };
    check_http2("server", &http2, errs);
    let log_json = match s.log_format.as_str() {
        "text" => false,
        "json" => true,
        other => {
            errs.push(
                "server.log_format",
                format!("{other:?} is not a log format: use \"text\" or \"json\""),
            );
            false
        }
    };
    let path_escapes = crate::path::PathEscapes::parse(&s.path_escapes).unwrap_or_else(|| {
        errs.push(
            "server.path_escapes",
            format!(
                "{:?} is not a choice: use \"reject\" (400) or \"decode\"",
                s.path_escapes
            ),
        );
        crate::path::PathEscapes::Reject
    });
    if s.reject_encoded_slashes.is_some() {
        tracing::warn!(
            "server.reject_encoded_slashes is ignored: paths with %2F, backslashes, ';' or encoded dot-segments are refused unless path_escapes = \"decode\"; remove the key"
        );
    }
    ServerSettings {
        log_json,
        path_escapes,
        workers: s.workers,
        max_connections: s.max_connections,
        header_read_timeout: s.header_read_timeout,
        idle_timeout: s.idle_timeout,
        max_header_bytes: s.max_header_bytes,
        max_headers: s.max_headers,
        max_uri_bytes: s.max_uri_bytes,
        max_body_bytes: s.max_body_bytes,
        http2_max_concurrent_streams: s.http2_max_concurrent_streams,
        http2_max_control_frames: s.http2_max_control_frames,
        http2,
        shutdown_grace: s.shutdown_grace,
        preserve_host: s.preserve_host,
        region_header: s.region_header,
        allow_trace: s.allow_trace,
        access_log: s.access_log,
    }
}

pub(super) fn client(c: raw::RawClient, errs: &mut Invalid) -> ClientSettings {
    let trusted_proxies = c
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let parsed = s
                .parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => Some(net.trunc()),
                Err(_) => {
                    errs.push(
                        format!("client.trusted_proxies[{i}]"),
                        format!(
                            "{s:?} is not a CIDR or an IP address (e.g. \"10.0.0.0/8\", \"::1\")"
                        ),
                    );
                    None
                }
            }
        })
        .collect();
    let replace_forwarded = match c.forwarded.as_deref() {
        None | Some("append") => false,
        Some("replace") => true,
        Some(other) => {
            errs.push(
                "client.forwarded",
                format!("{other:?} is not \"append\" or \"replace\""),
            );
            false
        }
    };
    ClientSettings {
        trusted_proxies,
        replace_forwarded,
        max_connections_per_ip: c.max_connections_per_ip,
    }
}

fn socket_addr(path: &str, value: &str, errs: &mut Invalid) -> SocketAddr {
    value.parse().unwrap_or_else(|_| {
        errs.push(
            path,
            format!("{value:?} is not an IP:port address (e.g. \"0.0.0.0:8080\", \"[::]:443\")"),
        );
        SocketAddr::from(([0, 0, 0, 0], 0))
    })
}

pub(super) fn listeners(raw: Vec<raw::RawListener>, errs: &mut Invalid) -> Vec<ListenerSpec> {
    if raw.is_empty() {
        errs.push(
            "listeners",
            "no listener: add [[listeners]] with address = \"0.0.0.0:8080\"",
        );
    }
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    let mut udp = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, l)| {
            let path = format!("listeners[{i}]");
            let address = socket_addr(&format!("{path}.address"), &l.address, errs);
            if !addrs.insert(address) {
                errs.push(
                    format!("{path}.address"),
                    format!("{address} is used by another listener"),
                );
            }
            let name = l.name.unwrap_or_else(|| l.address.clone());
            if !names.insert(name.clone()) {
                errs.push(
                    format!("{path}.name"),
                    format!("{name:?} is used by another listener"),
                );
            }
            let tls = l.tls.map(|t| {
                if t.certificates.is_empty() {
                    errs.push(
                        format!("{path}.tls.certificates"),
                        "a TLS listener needs at least one certificate",
                    );
                }
                let r = t.resumption;
                if r.ticket_rotation < Duration::from_secs(60) {
                    errs.push(
                        format!("{path}.tls.resumption.ticket_rotation"),
                        format!(
                            "{:?} is under a minute; keys that short-lived make most tickets useless (e.g. \"6h\")",
                            r.ticket_rotation
                        ),
                    );
                }
                if r.ticket_keys.is_some() && !r.tickets {
                    errs.push(
                        format!("{path}.tls.resumption.ticket_keys"),
                        "set, but tickets = false: remove one of them",
                    );
                }
                let resumption = Resumption {
                    session_cache: r.session_cache,
                    tickets: r.tickets,
                    ticket_keys: r.ticket_keys,
                    ticket_rotation: r.ticket_rotation,
                };
                let certificates = t
                    .certificates
                    .into_iter()
                    .enumerate()
                    .map(|(j, c)| {
                        let names = c
                            .server_names
                            .iter()
                            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                            .collect();
                        for (k, n) in c.server_names.iter().enumerate() {
                            if n.is_empty() || n.contains(['/', ':', ' ']) {
                                errs.push(
                                    format!("{path}.tls.certificates[{j}].server_names[{k}]"),
                                    format!("{n:?} is not a DNS name"),
                                );
                            }
                        }
                        CertificateSpec {
                            cert: c.cert,
                            key: c.key,
                            server_names: names,
                        }
                    })
                    .collect();
                TlsSpec {
                    certificates,
                    resumption,
                }
            });
            let http3 = l
                .http3
                .map(|h| http3(&path, address, h, tls.as_ref(), &mut udp, errs));
            ListenerSpec {
                name,
                address,
                tls,
                proxy_protocol: l.proxy_protocol,
                http3,
            }
        })
        .collect()
}

/// A listener's HTTP/3 endpoint: on a TLS listener only, on a UDP address of
/// its own (by default the listener's, over UDP).
fn http3(
    path: &str,
    tcp: SocketAddr,
    raw: raw::RawHttp3,
    tls: Option<&TlsSpec>,
    udp: &mut HashSet<SocketAddr>,
    errs: &mut Invalid,
) -> Http3Spec {
    let path = format!("{path}.http3");
    if tls.is_some_and(|t| t.resumption.session_cache == 0) && raw.early_data {
        errs.push(
            format!("{path}.early_data"),
            "0-RTT needs the session cache (each ticket good for one early flight): set tls.resumption.session_cache above 0, or early_data = false",
        );
    }
    if tls.is_none() {
        errs.push(
            path.clone(),
            "HTTP/3 needs the listener's certificates: add [listeners.tls] (QUIC is always encrypted)",
        );
    }
    let address = match &raw.address {
        Some(a) => socket_addr(&format!("{path}.address"), a, errs),
        None => tcp,
    };
    if !udp.insert(address) {
        errs.push(
            format!("{path}.address"),
            format!("{address} (UDP) is used by another listener's HTTP/3"),
        );
    }
    if raw.alt_svc_max_age.as_secs() == 0 {
        errs.push(
            format!("{path}.alt_svc_max_age"),
            "0 tells clients to forget HTTP/3 at once: set a positive max-age (e.g. \"24h\")",
        );
    }
    Http3Spec {
        address,
        alt_svc_max_age: raw.alt_svc_max_age,
        early_data: raw.early_data,
        retry_threshold: raw.retry_threshold,
    }
}

/// Two sockets that cannot both be bound: one port (not 0), and one address
/// or either the wildcard (`0.0.0.0`, `[::]`).
fn overlap(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The admin listener needs an address no data listener takes (`run` would
/// fail to bind it).
pub(super) fn admin_clashes(admin: &AdminSettings, listeners: &[ListenerSpec], errs: &mut Invalid) {
    for (i, l) in listeners.iter().enumerate() {
        if overlap(admin.address, l.address) {
            errs.push(
                "admin.address",
                format!(
                    "{} takes the port of listeners[{i}].address ({}): the admin API needs an address of its own (e.g. \"127.0.0.1:9901\")",
                    admin.address, l.address
                ),
            );
        }
    }
}

pub(super) fn admin(a: raw::RawAdmin, errs: &mut Invalid) -> AdminSettings {
    let tokens = tokens(a.tokens, errs);
    let parsed = a.address.parse::<SocketAddr>().is_ok();
    let address = socket_addr("admin.address", &a.address, errs);
    let any_token = !tokens.is_empty()
        || a.token_file.is_some()
        || a.token_env.is_some()
        || a.read_token_file.is_some()
        || a.read_token_env.is_some();
    if parsed && !address.ip().is_loopback() && !any_token {
        errs.push(
            "admin.address",
            format!(
                "{address} is reachable from other hosts, and no admin token is set: anyone who reaches it could read the policy and explain any client; set admin.token_file (or token_env, or [[admin.tokens]]), or listen on 127.0.0.1"
            ),
        );
    }
    AdminSettings {
        tokens,
        address,
        token_file: a.token_file,
        token_env: a.token_env,
        read_token_file: a.read_token_file,
        read_token_env: a.read_token_env,
        state_file: a.state_file,
        hosts: a
            .hosts
            .iter()
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .collect(),
    }
}

/// `[[admin.tokens]]`: unique names, one secret source each, an access.
fn tokens(raw: Vec<raw::RawToken>, errs: &mut Invalid) -> Vec<super::TokenSpec> {
    let mut names = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, t)| {
            let path = format!("admin.tokens[{i}]");
            let valid = !t.name.is_empty()
                && t.name.len() <= 64
                && t.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
            if !valid {
                errs.push(
                    format!("{path}.name"),
                    format!("{:?}: a name of 1 to 64 letters, digits, '-', '_', '.' or '@' (who acts, e.g. \"oncall\" or \"ci-deploy\")", t.name),
                );
            } else if !names.insert(t.name.clone()) {
                errs.push(format!("{path}.name"), format!("{:?} names another token too", t.name));
            }
            if t.file.is_some() == t.env.is_some() {
                errs.push(path.clone(), "set exactly one of file (a file holding the token) or env (an environment variable)");
            }
            let write = match t.access.as_deref() {
                None | Some("write") => true,
                Some("read") => false,
                Some(other) => {
                    errs.push(format!("{path}.access"), format!("{other:?}: use \"write\" (every call) or \"read\" (read-only calls)"));
                    true
                }
            };
            super::TokenSpec {
                name: t.name,
                file: t.file,
                env: t.env,
                write,
            }
        })
        .collect()
}

pub(super) fn upstream(u: raw::RawUpstream, errs: &mut Invalid) -> UpstreamSettings {
    for (name, d) in [
        ("upstream.connect_timeout", u.connect_timeout),
        ("upstream.response_timeout", u.response_timeout),
        ("upstream.request_body_timeout", u.request_body_timeout),
    ] {
        if d.is_zero() {
            errs.push(name, "must be longer than 0s");
        }
    }
    const TRY_TIMEOUT: Duration = Duration::from_secs(5);
    let try_timeout = u
        .try_timeout
        .unwrap_or(if u.response_timeout > TRY_TIMEOUT {
            TRY_TIMEOUT
        } else {
            Duration::ZERO
        });
    if !try_timeout.is_zero() && try_timeout >= u.response_timeout {
        errs.push(
            "upstream.try_timeout",
            format!(
                "{} is not below upstream.response_timeout ({}): make it shorter, or \"0s\" to turn it off",
                humantime::format_duration(try_timeout),
                humantime::format_duration(u.response_timeout)
            ),
        );
    }
    let http2 = Http2Tuning {
        stream_window: u.http2_stream_window,
        connection_window: u.http2_connection_window,
        max_frame_size: u.http2_max_frame_size,
        adaptive_window: u.http2_adaptive_window,
    };
    check_http2("upstream", &http2, errs);
    let capacity = Capacity {
        max_in_flight: u.max_in_flight,
        max_queue: u.max_queue,
        queue_timeout: u.queue_timeout,
    };
    check_capacity("upstream", &capacity, errs);
    UpstreamSettings {
        capacity,
        connect_timeout: u.connect_timeout,
        response_timeout: u.response_timeout,
        try_timeout,
        request_body_timeout: u.request_body_timeout,
        pool_idle_timeout: u.pool_idle_timeout,
        pool_max_idle_per_endpoint: u.pool_max_idle_per_endpoint,
        http2,
    }
}

/// Capacity that can serve: at least one request per endpoint.
pub(super) fn check_capacity(at: &str, c: &Capacity, errs: &mut Invalid) {
    if c.max_in_flight == 0 {
        errs.push(
            format!("{at}.max_in_flight"),
            "must be at least 1 (drain the region to send it nothing)",
        );
    }
    if c.max_queue > 0 && c.queue_timeout.is_zero() {
        errs.push(
            format!("{at}.queue_timeout"),
            "must be longer than 0s when max_queue is above 0 (max_queue = 0 turns queueing off)",
        );
    }
}
