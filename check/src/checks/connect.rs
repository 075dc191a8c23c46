//! `connect`, `auth` and `anonymous`.

use super::*;

/// CONNECT with the given credentials (and `auth`): the main connection and the broker's
/// declared limits.
pub(super) async fn connect_main(r: &mut Runner, p: Protocol) -> (Option<Client>, ServerLimits) {
    let timeout = r.o.timeout;
    // CONNECT/CONNACK with the given credentials
    let spec = r.spec(p, "main", true);
    let t = Instant::now();
    let ep = r.endpoint.clone().expect("resolved");
    let first = match r.spare.take() {
        Some(stream) => Client::handshake(stream, &spec, p, timeout).await,
        None => Client::connect(&ep, &spec, p, timeout).await,
    };
    let mut limits = ServerLimits::default();
    let main = match first {
        Ok((c, ack)) if ack.code == 0 => {
            limits = ack.limits.clone();
            let l = &ack.limits;
            let mut detail = format!(
                "accepted in {}; session present: {}",
                ms(ack.elapsed),
                if ack.session_present { "yes" } else { "no" }
            );
            if p == Protocol::V5 {
                detail += &format!(
                    "; receive max {}, max QoS {}, retain {}, max packet {}, topic aliases {}, wildcards {}, shared {}, server keepalive {}",
                    l.receive_max,
                    l.max_qos,
                    if l.retain_available { "yes" } else { "no" },
                    l.max_packet_size.map_or("unlimited".into(), |m| m.to_string()),
                    l.topic_alias_max,
                    if l.wildcard_subscription_available { "yes" } else { "no" },
                    if l.shared_subscription_available { "yes" } else { "no" },
                    l.server_keepalive_secs.map_or("as asked".into(), |k| format!("{k}s")),
                );
            }
            let data = serde_json::json!({ "session_present": ack.session_present, "limits": if p == Protocol::V5 { serde_json::to_value(l).ok() } else { None } });
            r.push("connect", Some(p), Status::Pass, t.elapsed(), detail, None, Some(data));
            if r.selected("auth") {
                match &r.o.username {
                    Some(u) => r.push(
                        "auth",
                        Some(p),
                        Status::Pass,
                        Duration::ZERO,
                        format!("credentials of `{u}` accepted"),
                        None,
                        None,
                    ),
                    None => r.skip("auth", Some(p), "skipped: no credentials given (--username)"),
                }
            }
            Some(c)
        }
        Ok((_, ack)) => {
            let meaning = connack_meaning(p, ack.code);
            let hint = refusal_hint(ack.code, &r.o);
            r.push(
                "connect",
                Some(p),
                Status::Fail,
                t.elapsed(),
                format!("refused: 0x{:02x} {meaning}", ack.code),
                Some(hint.clone()),
                Some(serde_json::json!({ "code": ack.code })),
            );
            r.cause(refusal_cause(ack.code));
            if r.selected("auth") {
                if matches!(ack.code, 4 | 5 | 0x86 | 0x87) {
                    r.push(
                        "auth",
                        Some(p),
                        Status::Fail,
                        Duration::ZERO,
                        format!("refused: {meaning}"),
                        Some(hint),
                        None,
                    );
                    r.cause(refusal_cause(ack.code));
                } else {
                    r.skip("auth", Some(p), "skipped: the connection was refused for another reason");
                }
            }
            None
        }
        Err(e) => {
            r.failed_on("connect", Some(p), t.elapsed(), "", &e);
            if r.selected("auth") {
                r.skip("auth", Some(p), "skipped: CONNECT failed");
            }
            None
        }
    };

    (main, limits)
}

/// Anonymous access: reported, judged only if asked (`--anonymous`).
pub(super) async fn anonymous(r: &mut Runner, p: Protocol) {
    let timeout = r.o.timeout;
    let ep = r.endpoint.clone().expect("resolved");
    let t = Instant::now();
    let spec = r.spec(p, "anon", false);
    let accepted = match Client::connect(&ep, &spec, p, timeout).await {
        Ok((c, ack)) if ack.code == 0 => {
            c.disconnect().await;
            Some(true)
        }
        Ok((_, ack)) if matches!(ack.code, 4 | 5 | 0x86 | 0x87) => Some(false),
        Ok(_) => None,
        Err(_) => None,
    };
    let detail = match accepted {
        Some(true) => "the broker accepts clients without credentials",
        Some(false) => "the broker refuses clients without credentials",
        None => "could not tell (the connection failed, or was refused for another reason)",
    };
    let status = match (r.o.anonymous, accepted) {
        (Anonymous::Report, _) => Status::Info,
        (Anonymous::Allowed, Some(true)) | (Anonymous::Refused, Some(false)) => Status::Pass,
        _ => Status::Fail,
    };
    let hint = (status == Status::Fail).then(|| match r.o.anonymous {
        Anonymous::Refused => {
            "anonymous clients get in: set allow_anonymous false (or the broker's equivalent)".to_string()
        }
        _ => "anonymous clients are refused".to_string(),
    });
    r.push("anonymous", Some(p), status, t.elapsed(), detail, hint, None);
}
