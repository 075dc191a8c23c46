//! DNS, TCP and TLS: whether MQTT can be tried at all.

use super::*;

/// DNS, TCP, TLS. Returns whether MQTT can be tried.
pub(super) async fn network(r: &mut Runner) -> bool {
    let url = r.o.url.clone();
    // DNS
    let t = Instant::now();
    let addrs: Vec<std::net::SocketAddr> =
        match tokio::time::timeout(r.o.timeout, tokio::net::lookup_host((url.host.as_str(), url.port))).await
        {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                r.push(
                    "dns",
                    None,
                    Status::Fail,
                    t.elapsed(),
                    format!("cannot resolve {}: {e}", url.host),
                    Some("check the host name and this machine's DNS".into()),
                    None,
                );
                return false;
            }
            Err(_) => {
                r.push(
                    "dns",
                    None,
                    Status::Fail,
                    t.elapsed(),
                    format!("no answer for {} within {:?}", url.host, r.o.timeout),
                    Some("check this machine's DNS".into()),
                    None,
                );
                return false;
            }
        };
    let Some(addr) = addrs.first().copied() else {
        r.push("dns", None, Status::Fail, t.elapsed(), format!("{} has no address", url.host), None, None);
        return false;
    };
    let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    r.push(
        "dns",
        None,
        Status::Pass,
        t.elapsed(),
        format!("{} → {} ({})", url.host, list.join(", "), ms(t.elapsed())),
        None,
        Some(serde_json::json!({ "addresses": list })),
    );

    // TCP
    let t = Instant::now();
    match tokio::time::timeout(r.o.timeout, transport::connect_tcp(addr, None)).await {
        Ok(Ok(s)) => {
            // the first CONNECT may go over this one: over plain TCP only (TLS and WebSocket
            // connections make their handshakes on a fresh connection)
            if !tls_used(&r.o) && url.ws_path.is_none() {
                r.spare = Some(transport::Stream::Tcp(s));
            }
            r.push(
                "tcp",
                None,
                Status::Pass,
                t.elapsed(),
                format!("connected to {addr} in {}", ms(t.elapsed())),
                None,
                None,
            );
        }
        Ok(Err(e)) => {
            let f = ConnectFailure::from_io(&e);
            let hint = match f {
                ConnectFailure::Refused => {
                    "nothing listens on that port: is the broker running, and is this its port?"
                }
                ConnectFailure::Unreachable => {
                    "no route to the host: check the network, firewalls, the address"
                }
                _ => "check the address and the network",
            };
            r.push("tcp", None, Status::Fail, t.elapsed(), format!("{addr}: {f}"), Some(hint.into()), None);
            return false;
        }
        Err(_) => {
            r.push(
                "tcp",
                None,
                Status::Fail,
                t.elapsed(),
                format!("{addr}: no answer within {:?}", r.o.timeout),
                Some("a firewall dropping packets, or the wrong address".into()),
                None,
            );
            return false;
        }
    }

    // TLS
    let tls_cfg = if tls_used(&r.o) {
        let t = Instant::now();
        match tls_check(r, addr).await {
            Some(cfg) => Some(cfg),
            None => {
                let _ = t;
                return false;
            }
        }
    } else {
        let plain = if url.ws_path.is_some() {
            "plain ws:// (use wss:// or --tls)"
        } else {
            "plain mqtt:// (use mqtts:// or --tls)"
        };
        r.skip("tls", None, &format!("skipped: {plain}"));
        None
    };
    r.endpoint = Some(Endpoint {
        url: url.clone(),
        addr,
        tls: tls_cfg.map(|(c, n)| (tokio_rustls::TlsConnector::from(c), n)),
    });
    true
}

type TlsCfg = (std::sync::Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>);

async fn tls_check(r: &mut Runner, addr: std::net::SocketAddr) -> Option<TlsCfg> {
    let t = Instant::now();
    let built = r.o.tls.read().map_err(tls::TlsError::from).and_then(|m| Ok((tls::client_config(&m)?, m)));
    let (cfg, material) = match built {
        Ok(built) => built,
        Err(e) => {
            r.push(
                "tls",
                None,
                Status::Fail,
                t.elapsed(),
                format!("TLS settings: {e}"),
                Some("check --ca, --cert and --key".into()),
                None,
            );
            return None;
        }
    };
    let name = match tls::server_name(&material, &r.o.url.host) {
        Ok(n) => n,
        Err(e) => {
            r.push("tls", None, Status::Fail, t.elapsed(), e.to_string(), None, None);
            return None;
        }
    };
    let ep = Endpoint {
        url: r.o.url.clone(),
        addr,
        tls: Some((tokio_rustls::TlsConnector::from(cfg.clone()), name.clone())),
    };
    match tokio::time::timeout(r.o.timeout, transport::connect(&ep, None)).await {
        Ok(Ok(stream)) => {
            let s = stream.tls_session().expect("a TLS stream");
            let version = s.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default();
            let suite = s.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())).unwrap_or_default();
            let chain: Vec<crate::cert::CertInfo> =
                s.peer_certificates().unwrap_or(&[]).iter().filter_map(|c| crate::cert::parse(c)).collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let leaf = chain.first().cloned();
            let days_left = leaf.as_ref().map(|c| (c.not_after - now) / 86_400);
            let mut detail = format!("{version}, {suite}");
            if let Some(c) = &leaf {
                detail += &format!(
                    ", certificate {} from {}",
                    c.subject_cn.as_deref().unwrap_or("?"),
                    c.issuer_cn.as_deref().unwrap_or("?")
                );
            }
            if let Some(d) = days_left {
                detail += &format!(", expires in {d} days");
            }
            if r.o.tls.insecure {
                detail += " (not verified: --insecure)";
            }
            let hint = days_left
                .filter(|d| *d < 14)
                .map(|d| format!("the certificate expires in {d} days: renew it"));
            let data = serde_json::json!({ "version": version, "cipher_suite": suite, "chain": chain, "verified": !r.o.tls.insecure });
            r.push("tls", None, Status::Pass, t.elapsed(), detail, hint, Some(data));
            r.spare = Some(stream);
            Some((cfg, name))
        }
        Ok(Err(f)) => {
            let msg = f.to_string();
            let (detail, hint) = if msg.contains("UnknownIssuer") || msg.contains("unknown issuer") {
                (
                    "untrusted certificate: it is not signed by a CA you trust".to_string(),
                    "pass the broker's CA with --ca FILE (or --insecure for a lab broker)".to_string(),
                )
            } else if msg.contains("NotValidForName") || msg.contains("not valid for name") {
                (
                    format!(
                        "the certificate is not valid for `{}`",
                        r.o.tls.server_name.as_deref().unwrap_or(&r.o.url.host)
                    ),
                    "connect with a name the certificate lists, or pass --server-name".to_string(),
                )
            } else if msg.contains("Expired") || msg.contains("expired") {
                ("the certificate has expired".to_string(), "renew the broker's certificate".to_string())
            } else if msg.contains("NotValidYet") {
                (
                    "the certificate is not valid yet".to_string(),
                    "check the broker's and this machine's clocks".to_string(),
                )
            } else {
                (
                    format!("handshake failed: {msg}"),
                    "does the port speak TLS? is a client certificate required (--cert, --key)?".to_string(),
                )
            };
            // describe the certificate anyway, without trusting it
            let mut data = serde_json::json!({ "error": msg });
            let insecure = TlsMaterial { insecure: true, ..material.clone() };
            if let Ok(c) = tls::client_config(&insecure) {
                let ep = Endpoint {
                    url: r.o.url.clone(),
                    addr,
                    tls: Some((tokio_rustls::TlsConnector::from(c), name.clone())),
                };
                if let Ok(Ok(s)) = tokio::time::timeout(r.o.timeout, transport::connect(&ep, None)).await
                    && let Some(sess) = s.tls_session()
                {
                    let chain: Vec<crate::cert::CertInfo> = sess
                        .peer_certificates()
                        .unwrap_or(&[])
                        .iter()
                        .filter_map(|c| crate::cert::parse(c))
                        .collect();
                    data["chain"] = serde_json::to_value(chain).unwrap_or_default();
                }
            }
            r.push("tls", None, Status::Fail, t.elapsed(), detail, Some(hint), Some(data));
            None
        }
        Err(_) => {
            r.push(
                "tls",
                None,
                Status::Fail,
                t.elapsed(),
                format!("no TLS handshake within {:?}", r.o.timeout),
                Some("does the port speak TLS?".into()),
                None,
            );
            None
        }
    }
}
