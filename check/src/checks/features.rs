//! `retained`, `will` and `session`, each on connections of its own where it needs them.

use super::*;

/// Retained messages, on a connection of its own (a broker that refuses them by closing the
/// connection takes nothing else down with it).
pub(super) async fn retained(r: &mut Runner, p: Protocol, limits: &ServerLimits) {
    let timeout = r.o.timeout;
    let topic = r.topic(p, "retained");
    let payload = format!("retained-{}", r.run);
    let t = Instant::now();
    let qos = qos_from_u8(r.o.max_qos.min(1)).expect("0..=1");
    const DISABLED: &str =
        "retained messages are disabled on this broker (mosquitto: retain_available false)";
    if p == Protocol::V5 && !limits.retain_available {
        let why = "the broker declares retained messages unavailable (CONNACK retain available = no)";
        if r.required("retained") {
            r.push("retained", Some(p), Status::Fail, t.elapsed(), why, Some(DISABLED.into()), None);
            r.cause(Cause::RetainUnavailable);
        } else {
            let why = format!("{why}; not probed (--require retained judges it)");
            r.skip_because("retained", Some(p), why, Cause::RetainUnavailable);
        }
        return;
    }
    let spec = r.spec(p, "retained-set", true);
    let Some(mut main) = second(r, "retained", p, &spec, t).await else { return };
    let main = &mut main;
    if let Err(e) = main.publish(&topic, payload.as_bytes(), qos, true, timeout).await {
        let (detail, hint, cause) = if lost(&e) {
            (
                format!("the broker ended the connection on a retained PUBLISH ({e})"),
                DISABLED.to_string(),
                Cause::RetainUnavailable,
            )
        } else {
            (format!("setting it: {e}"), client_hint(&e), error_cause(&e))
        };
        r.push("retained", Some(p), Status::Fail, t.elapsed(), detail, Some(hint), None);
        r.cause(cause);
        return;
    }
    let spec = r.spec(p, "retained", true);
    let Some(mut other) = second(r, "retained", p, &spec, t).await else {
        let _ = main.publish(&topic, b"", qos, true, timeout).await;
        return;
    };
    // a QoS 0 retained PUBLISH has no answer: a broker that refuses it closes the connection
    let alive = main.ping(timeout.min(Duration::from_secs(2))).await.is_ok();
    let got = match other.subscribe(&topic, qos, timeout).await {
        Ok(_) => other.recv_on(&topic, 1, timeout).await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    // clear it, whatever happened, and check that it is gone
    let cleared = main.publish(&topic, b"", qos, true, timeout).await.is_ok();
    let still = if cleared {
        match other.subscribe(&topic, qos, timeout).await {
            Ok(_) => {
                other.recv_on(&topic, 1, Duration::from_millis(500).min(timeout)).await.unwrap_or_default()
            }
            Err(_) => Vec::new(),
        }
    } else {
        Vec::new()
    };
    other.disconnect().await;
    // the clearing publish itself reaches current subscribers; only the old payload counts
    let still: Vec<_> = still.into_iter().filter(|m| m.payload == payload.as_bytes()).collect();
    match got.first() {
        Some(m) if m.payload == payload.as_bytes() && m.retain && still.is_empty() && cleared => r.push(
            "retained",
            Some(p),
            Status::Pass,
            t.elapsed(),
            "set, received by a new subscriber with the retain flag, cleared",
            None,
            None,
        ),
        Some(m) if m.payload == payload.as_bytes() && !m.retain => r.push(
            "retained",
            Some(p),
            Status::Fail,
            t.elapsed(),
            "delivered to a new subscriber without the retain flag",
            Some("the broker mishandles retained messages".into()),
            None,
        ),
        Some(_) if !still.is_empty() => r.push(
            "retained",
            Some(p),
            Status::Fail,
            t.elapsed(),
            "an empty retained publish did not clear it",
            Some("the broker should delete a retained message on an empty payload".into()),
            None,
        ),
        _ if !alive => {
            r.push(
                "retained",
                Some(p),
                Status::Fail,
                t.elapsed(),
                "the broker ended the connection on a retained PUBLISH",
                Some(DISABLED.into()),
                None,
            );
            r.cause(Cause::RetainUnavailable);
        }
        _ => {
            r.push(
                "retained",
                Some(p),
                Status::Fail,
                t.elapsed(),
                format!("accepted, but a new subscriber did not receive it within {timeout:?}"),
                Some("the broker does not keep retained messages for new subscribers".into()),
                None,
            );
            r.cause(Cause::RetainNotKept);
        }
    }
}

/// A QoS 1 will with this payload on this topic.
fn will_on(topic: &str, payload: &str) -> Will {
    Will {
        topic: ByteString::from(topic),
        payload: payload.as_bytes().to_vec().into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        delay_secs: 0,
    }
}

pub(super) async fn will(r: &mut Runner, p: Protocol, observer: &mut Client) {
    let timeout = r.o.timeout;
    let topic = r.topic(p, "will");
    let t = Instant::now();
    if let Err(e) = observer.subscribe(&topic, QoS::AtLeastOnce, timeout).await {
        r.failed_on("will", Some(p), t.elapsed(), "subscribing to the will topic", &e);
        return;
    }
    // an abrupt close must deliver the will, within keepalive bounds
    let keepalive = 2u16;
    let mut spec = r.spec(p, "will", true);
    spec.keepalive_secs = keepalive;
    let payload = format!("will-{}", r.run);
    spec.will = Some(will_on(&topic, &payload));
    let Some((dying, ack)) = second_with_ack(r, "will", p, &spec, t).await else { return };
    // MQTT 5: the broker may impose its own keepalive (CONNACK server keepalive); the will is
    // due 1.5 × that after the close
    let keepalive = ack.limits.server_keepalive_secs.filter(|_| p == Protocol::V5).unwrap_or(keepalive);
    let closed = Instant::now();
    dying.abort();
    let bound = timeout.max(Duration::from_millis(keepalive as u64 * 1500 + 1000));
    let got = observer.recv_on(&topic, 1, bound).await.unwrap_or_default();
    match got.first() {
        Some(m) if m.payload == payload.as_bytes() => r.push(
            "will",
            Some(p),
            Status::Pass,
            t.elapsed(),
            format!("delivered {} after the connection was closed abruptly", ms(closed.elapsed())),
            None,
            None,
        ),
        _ => r.push(
            "will",
            Some(p),
            Status::Fail,
            t.elapsed(),
            format!("not delivered within {bound:?} of an abrupt close"),
            Some("the broker does not publish wills, or an ACL drops the will topic".into()),
            None,
        ),
    }
    if r.results.last().is_some_and(|c| c.status == Status::Fail) {
        r.cause(Cause::WillNotPublished);
    }
    // and a clean DISCONNECT must not
    let t = Instant::now();
    let mut spec = r.spec(p, "will-clean", true);
    let payload = format!("will-clean-{}", r.run);
    spec.will = Some(will_on(&topic, &payload));
    let Some(leaving) = second(r, "will.clean_disconnect", p, &spec, t).await else { return };
    leaving.disconnect().await;
    let got = observer.recv_on(&topic, 1, Duration::from_millis(1500).min(timeout)).await.unwrap_or_default();
    if got.iter().any(|m| m.payload == payload.as_bytes()) {
        r.push(
            "will.clean_disconnect",
            Some(p),
            Status::Fail,
            t.elapsed(),
            "the will was published after a clean DISCONNECT",
            Some("the broker breaks MQTT: a clean DISCONNECT discards the will".into()),
            None,
        );
        r.cause(Cause::WillOnCleanDisconnect);
    } else {
        r.push(
            "will.clean_disconnect",
            Some(p),
            Status::Pass,
            t.elapsed(),
            "no will after a clean DISCONNECT",
            None,
            None,
        );
    }
}

pub(super) async fn session(r: &mut Runner, p: Protocol, main: &mut Client) {
    let timeout = r.o.timeout;
    let topic = r.topic(p, "session");
    let t = Instant::now();
    let mut spec = r.spec(p, "session", true);
    spec.clean_start = false;
    spec.session_expiry_secs = if p == Protocol::V5 { 300 } else { 0 };
    let Some(mut s) = second(r, "session", p, &spec, t).await else { return };
    let sub = s.subscribe(&topic, QoS::AtLeastOnce, timeout).await;
    s.disconnect().await;
    if !sub.as_ref().is_ok_and(|c| c.first().is_some_and(|c| *c < 0x80)) {
        r.push(
            "session",
            Some(p),
            Status::Fail,
            t.elapsed(),
            "could not subscribe at QoS 1",
            Some(format!("check the broker's ACL for topic {topic}")),
            None,
        );
        r.cause(Cause::AclDenied);
        return;
    }
    let payload = format!("queued-{}", r.run);
    if let Err(e) = main.publish(&topic, payload.as_bytes(), QoS::AtLeastOnce, false, timeout).await {
        r.failed_on("session", Some(p), t.elapsed(), "publishing while it was away", &e);
        return;
    }
    match r.open(p, &spec).await {
        Ok((mut back, ack)) => {
            let got = back.recv_on(&topic, 1, timeout).await.unwrap_or_default();
            back.disconnect().await;
            // leave no session behind
            let mut clean = spec.clone();
            clean.clean_start = true;
            if let Ok((c, _)) = r.open(p, &clean).await {
                c.disconnect().await;
            }
            let delivered = got.first().is_some_and(|m| m.payload == payload.as_bytes());
            match (ack.session_present, delivered) {
                (true, true) => r.push(
                    "session",
                    Some(p),
                    Status::Pass,
                    t.elapsed(),
                    "resumed with session present; the QoS 1 message queued while offline was delivered",
                    None,
                    None,
                ),
                (false, _) => r.push(
                    "session",
                    Some(p),
                    Status::Fail,
                    t.elapsed(),
                    "CONNACK said session present = no",
                    Some("the broker does not keep persistent sessions (or expired it at once)".into()),
                    None,
                ),
                (true, false) => r.push(
                    "session",
                    Some(p),
                    Status::Fail,
                    t.elapsed(),
                    "session present, but the message queued while offline never came",
                    Some("the broker does not queue QoS 1 messages for offline sessions".into()),
                    None,
                ),
            }
            if r.results.last().is_some_and(|c| c.status == Status::Fail) {
                r.cause(Cause::SessionNotKept);
            }
        }
        Err(e) => {
            r.failed_on("session", Some(p), t.elapsed(), "reconnecting", &e);
        }
    }
}
