//! `publish.qos*`, `subscribe.qos*`, `deny` and `latency`: messages on the test prefix.

use super::*;

/// PUBLISH at each QoS up to `--qos`: which succeeded (with the cause of each that did not, on
/// its result). `None`: the connection was lost (the rest is skipped).
pub(super) async fn publish_all(
    r: &mut Runner,
    p: Protocol,
    main: &mut Option<Client>,
    limits: &ServerLimits,
) -> Option<[bool; 3]> {
    let timeout = r.o.timeout;
    let max_qos = r.o.max_qos.min(2);
    let mut publish_ok = [false; 3];
    // MQTT 5: what the broker declares absent is reported as such, not probed (unless required)
    let declared_absent = |q: u8| p == Protocol::V5 && q > limits.max_qos;
    // the QoS at which the broker ended the connection: it takes nothing above
    let mut closed_at: Option<u8> = None;
    for q in 0..=max_qos {
        let name = format!("publish.qos{q}");
        if !r.selected(&name) {
            continue;
        }
        if let Some(c) = closed_at {
            let why = format!("skipped: the broker ended the connection on a QoS {c} PUBLISH");
            r.skip_because(&name, Some(p), why, Cause::QosUnavailable);
            continue;
        }
        let client = main.as_mut().expect("connected or revived");
        if declared_absent(q) && !r.required(&format!("qos{q}")) {
            let why = format!(
                "the broker declares maximum QoS {} (CONNACK); not probed (--require qos{q} judges it)",
                limits.max_qos
            );
            r.skip_because(&name, Some(p), why, Cause::QosUnavailable);
            continue;
        }
        let topic = r.topic(p, &format!("publish/q{q}"));
        let qos = qos_from_u8(q).expect("0..=2");
        let t = Instant::now();
        match client.publish(&topic, b"squall check", qos, false, timeout).await {
            Ok(None) => {
                publish_ok[q as usize] = true;
                r.push(
                    &name,
                    Some(p),
                    Status::Pass,
                    t.elapsed(),
                    "sent (QoS 0 has no acknowledgement)",
                    None,
                    None,
                );
            }
            Ok(Some(a)) if a.code < 0x80 => {
                publish_ok[q as usize] = true;
                let what = if q == 1 { "PUBACK" } else { "PUBREC, PUBREL, PUBCOMP" };
                let note = if a.code == 0x10 { " (no matching subscribers)" } else { "" };
                r.push(
                    &name,
                    Some(p),
                    Status::Pass,
                    t.elapsed(),
                    format!("{what} in {}{note}", ms(a.elapsed)),
                    None,
                    Some(serde_json::json!({ "code": a.code })),
                );
            }
            Ok(Some(a)) => {
                let hint = if a.code == 0x87 {
                    format!("Not authorized: check the broker's ACL for topic {topic}")
                } else {
                    "see the broker's logs".to_string()
                };
                r.push(
                    &name,
                    Some(p),
                    Status::Fail,
                    t.elapsed(),
                    format!("refused: 0x{:02x} {}", a.code, reason_meaning(a.code)),
                    Some(hint),
                    Some(serde_json::json!({ "code": a.code })),
                );
                r.cause(if a.code == 0x87 { Cause::AclDenied } else { Cause::Other });
            }
            Err(e) if q > 0 && lost(&e) => {
                // a close right after a QoS q PUBLISH: the broker refuses that QoS (one probe
                // per connection tells which); the rest goes on over a new connection
                let hint =
                    format!("the broker does not take QoS {q} (mosquitto: max_qos); publish at a lower QoS");
                let detail = format!("the broker ended the connection on a QoS {q} PUBLISH ({e})");
                r.push(&name, Some(p), Status::Fail, t.elapsed(), detail, Some(hint), None);
                r.cause(Cause::QosUnavailable);
                closed_at = Some(q);
                if let Err(e) = revive(r, p, main).await {
                    let why = format!("skipped: the connection was lost and a new one failed: {e}");
                    for c in checks_from("subscribe") {
                        if r.selected(c) {
                            r.skip_because(c, Some(p), why.clone(), error_cause(&e));
                        }
                    }
                    return None;
                }
            }
            Err(e) => {
                r.failed_on(&name, Some(p), t.elapsed(), "", &e);
                if lost(&e) {
                    skip_rest_after_loss(r, p);
                    return None;
                }
            }
        }
    }
    Some(publish_ok)
}

/// SUBSCRIBE at each QoS, and own message back: (whether any was tried, which came back).
/// `None`: the connection was lost (the rest is skipped).
pub(super) async fn subscribe_all(
    r: &mut Runner,
    p: Protocol,
    client: &mut Client,
    limits: &ServerLimits,
    publish_ok: [bool; 3],
) -> Option<(bool, [bool; 3])> {
    let timeout = r.o.timeout;
    let max_qos = r.o.max_qos.min(2);
    let declared_absent = |q: u8| p == Protocol::V5 && q > limits.max_qos;
    let mut publish_cause = [None; 3];
    let mut receive_ok = [false; 3];
    let mut tried_receive = false;
    for (q, c) in publish_cause.iter_mut().enumerate() {
        // what made each publish fail, for the subscribe check it skips
        *c = r
            .results
            .iter()
            .rev()
            .find(|x| x.id == format!("{}.publish.qos{q}", proto_tag(p)))
            .and_then(|x| x.cause);
    }
    for q in 0..=max_qos {
        let name = format!("subscribe.qos{q}");
        if !r.selected(&name) {
            continue;
        }
        if declared_absent(q) && !r.required(&format!("qos{q}")) {
            let why = format!("the broker declares maximum QoS {} (CONNACK); not probed", limits.max_qos);
            r.skip_because(&name, Some(p), why, Cause::QosUnavailable);
            continue;
        }
        if r.selected(&format!("publish.qos{q}")) && !publish_ok[q as usize] {
            let cause = publish_cause[q as usize].unwrap_or(Cause::Other);
            r.skip_because(&name, Some(p), format!("skipped: publishing at QoS {q} failed"), cause);
            continue;
        }
        tried_receive = true;
        let topic = r.topic(p, &format!("subscribe/q{q}"));
        let qos = qos_from_u8(q).expect("0..=2");
        let t = Instant::now();
        let codes = match client.subscribe(&topic, qos, timeout).await {
            Ok(c) => c,
            Err(e) => {
                r.failed_on(&name, Some(p), t.elapsed(), "SUBSCRIBE", &e);
                if lost(&e) {
                    skip_rest_after_loss(r, p);
                    return None;
                }
                continue;
            }
        };
        let granted = codes.first().copied().unwrap_or(0x80);
        if granted >= 0x80 {
            r.push(
                &name,
                Some(p),
                Status::Fail,
                t.elapsed(),
                format!("SUBACK refused: 0x{granted:02x} {}", reason_meaning(granted)),
                Some(format!("Not authorized? check the broker's ACL for topic {topic}")),
                Some(serde_json::json!({ "granted": granted })),
            );
            r.cause(if matches!(granted, 0x80 | 0x87) { Cause::AclDenied } else { Cause::Other });
            continue;
        }
        let payload = format!("own-{q}-{}", r.run);
        if let Err(e) = client.publish(&topic, payload.as_bytes(), qos, false, timeout).await {
            r.failed_on(&name, Some(p), t.elapsed(), "publishing to it", &e);
            continue;
        }
        match client.recv_on(&topic, 1, timeout).await {
            Ok(got) if got.first().is_some_and(|m| m.payload == payload.as_bytes()) => {
                receive_ok[q as usize] = true;
                let m = &got[0];
                let mut detail = format!(
                    "granted QoS {granted} (asked {q}); own message back at QoS {} in {}",
                    u8::from(m.qos),
                    ms(t.elapsed())
                );
                if granted < q {
                    detail += " — the broker downgraded the subscription";
                }
                r.push(&name, Some(p), Status::Pass, t.elapsed(), detail, None, Some(serde_json::json!({ "asked": q, "granted": granted, "received_qos": u8::from(m.qos) })));
            }
            Ok(_) => r.push(
                &name,
                Some(p),
                Status::Fail,
                t.elapsed(),
                format!("granted QoS {granted}, but the message did not come back within {timeout:?}"),
                Some(format!("an ACL may drop messages on {topic} silently")),
                None,
            ),
            Err(e) => {
                r.failed_on(&name, Some(p), t.elapsed(), "", &e);
                continue;
            }
        }
        if !receive_ok[q as usize] {
            r.cause(Cause::NotDelivered);
        }
    }
    Some((tried_receive, receive_ok))
}

/// Round trips: publish, receive own message, `--samples` times.
pub(super) async fn latency(r: &mut Runner, p: Protocol, client: &mut Client, receive_ok: [bool; 3]) {
    let timeout = r.o.timeout;
    if r.selected("subscribe.qos0") && !receive_ok[0] {
        r.skip_because("latency", Some(p), "skipped: receiving own messages failed", Cause::NotDelivered);
    } else {
        let topic = r.topic(p, "latency");
        let t = Instant::now();
        let outcome = async {
            if client.subscribe(&topic, QoS::AtMostOnce, timeout).await?.first().is_none_or(|c| *c >= 0x80) {
                return Err(ClientError::Closed);
            }
            let mut samples = Vec::new();
            for i in 0..r.o.samples {
                let s = Instant::now();
                let payload = format!("rtt-{i}");
                client.publish(&topic, payload.as_bytes(), QoS::AtMostOnce, false, timeout).await?;
                match client.recv_on(&topic, 1, timeout).await?.first() {
                    Some(m) if m.payload == payload.as_bytes() => {
                        samples.push(s.elapsed().as_secs_f64() * 1e3)
                    }
                    _ => return Err(ClientError::Timeout(timeout, "own message")),
                }
            }
            Ok(samples)
        }
        .await;
        match outcome {
            Ok(mut s) if !s.is_empty() => {
                s.sort_by(|a, b| a.total_cmp(b));
                let q = |x: f64| s[((s.len() as f64 * x).ceil() as usize).clamp(1, s.len()) - 1];
                let data = serde_json::json!({ "samples": s.len(), "min_ms": s[0], "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "max_ms": s[s.len() - 1] });
                let detail = format!(
                    "{} round trips: min {:.2} / p50 {:.2} / p90 {:.2} / p99 {:.2} / max {:.2} ms",
                    s.len(),
                    s[0],
                    q(0.5),
                    q(0.9),
                    q(0.99),
                    s[s.len() - 1]
                );
                match r.o.max_latency {
                    Some(bound) if q(0.5) > bound.as_secs_f64() * 1e3 => {
                        let max = bound.as_secs_f64() * 1e3;
                        let over = s.iter().filter(|v| **v > max).count();
                        let detail = format!(
                            "{detail}: median over --max-latency {} ({over} of {} over)",
                            humantime::format_duration(bound),
                            s.len()
                        );
                        let hint = "the broker, or the network to it, is slow to deliver: is it overloaded, far away, or persisting each message?".to_string();
                        r.push("latency", Some(p), Status::Fail, t.elapsed(), detail, Some(hint), Some(data));
                        r.cause(Cause::Slow);
                    }
                    _ => r.push("latency", Some(p), Status::Pass, t.elapsed(), detail, None, Some(data)),
                }
            }
            Ok(_) => r.skip("latency", Some(p), "skipped: --samples 0"),
            Err(e) => {
                r.failed_on("latency", Some(p), t.elapsed(), "", &e);
            }
        }
    }
}

/// `--expect-deny TOPIC`, on a connection of its own: passes when the broker refuses the
/// subscription or the publish there (or closes the connection on it), or grants both but
/// delivers nothing; fails when its own message comes back.
pub(super) async fn deny(r: &mut Runner, p: Protocol, topic: &str) {
    let timeout = r.o.timeout;
    let t = Instant::now();
    let spec = r.spec(p, "deny", true);
    let Some(mut c) = second(r, "deny", p, &spec, t).await else { return };
    let outcome: Result<String, String> = async {
        match c.subscribe(topic, QoS::AtLeastOnce, timeout).await {
            Ok(codes) if codes.first().is_none_or(|g| *g >= 0x80) => {
                let g = codes.first().copied().unwrap_or(0x80);
                return Ok(format!("SUBSCRIBE refused: 0x{g:02x} {}", reason_meaning(g)));
            }
            Err(e) if lost(&e) => return Ok(format!("the broker ended the connection on SUBSCRIBE ({e})")),
            Err(e) => return Err(format!("SUBSCRIBE: {e}")),
            Ok(_) => {}
        }
        let payload = format!("deny-{}", r.run);
        match c.publish(topic, payload.as_bytes(), QoS::AtLeastOnce, false, timeout).await {
            Ok(Some(a)) if a.code >= 0x80 => {
                return Ok(format!("PUBLISH refused: 0x{:02x} {}", a.code, reason_meaning(a.code)));
            }
            Err(e) if lost(&e) => return Ok(format!("the broker ended the connection on PUBLISH ({e})")),
            Err(e) => return Err(format!("PUBLISH: {e}")),
            Ok(_) => {}
        }
        match c.recv_on(topic, 1, timeout.min(Duration::from_secs(2))).await {
            Ok(got) if got.iter().any(|m| m.payload == payload.as_bytes()) => {
                Err("allowed: the subscription was granted and its own message came back".into())
            }
            _ => Ok("subscription granted, but nothing published there is delivered".into()),
        }
    }
    .await;
    c.abort();
    match outcome {
        Ok(how) => {
            r.push("deny", Some(p), Status::Pass, t.elapsed(), format!("{topic}: denied ({how})"), None, None)
        }
        Err(why) => {
            let hint =
                format!("the broker's ACL lets this client use {topic}: check its rules for this user");
            r.push("deny", Some(p), Status::Fail, t.elapsed(), format!("{topic}: {why}"), Some(hint), None);
            r.cause(Cause::NotDenied);
        }
    }
    if let Some(last) = r.results.last_mut() {
        last.id = format!("{}.deny[{topic}]", proto_tag(p));
    }
}
