//! The `--extended` checks: `shared`, `max_payload`, `burst`.

use super::*;

pub(super) async fn shared(r: &mut Runner, p: Protocol, main: &mut Client) {
    let timeout = r.o.timeout;
    let topic = r.topic(p, "shared");
    let filter = format!("$share/squall-{}/{topic}", r.run);
    let t = Instant::now();
    let mut members = Vec::new();
    for i in 0..2 {
        let spec = r.spec(p, &format!("shared{i}"), true);
        let Some(mut c) = second(r, "shared", p, &spec, t).await else { return };
        match c.subscribe(&filter, QoS::AtLeastOnce, timeout).await {
            Ok(codes) if codes.first().is_some_and(|c| *c < 0x80) => members.push(c),
            _ => {
                c.disconnect().await;
                r.push(
                    "shared",
                    Some(p),
                    Status::Fail,
                    t.elapsed(),
                    "the shared subscription was refused",
                    Some("the broker may not support $share subscriptions".into()),
                    None,
                );
                return;
            }
        }
    }
    let n = 10;
    for i in 0..n {
        if main.publish(&topic, format!("s{i}").as_bytes(), QoS::AtLeastOnce, false, timeout).await.is_err() {
            break;
        }
    }
    let mut counts = Vec::new();
    for m in members.iter_mut() {
        counts.push(
            m.recv_on(&topic, n, Duration::from_millis(1000).min(timeout)).await.unwrap_or_default().len(),
        );
    }
    for m in members {
        m.disconnect().await;
    }
    let total: usize = counts.iter().sum();
    let detail = format!("{n} messages to a group of 2: {} and {}", counts[0], counts[1]);
    if total == n {
        r.push(
            "shared",
            Some(p),
            Status::Pass,
            t.elapsed(),
            detail,
            None,
            Some(serde_json::json!({ "counts": counts })),
        );
    } else {
        r.push(
            "shared",
            Some(p),
            Status::Fail,
            t.elapsed(),
            detail,
            Some("each message should reach exactly one member".into()),
            Some(serde_json::json!({ "counts": counts })),
        );
    }
}

/// The largest payload that round-trips, probed 1 KiB to 1 MiB; on MQTT 5 only up to the
/// maximum packet size the broker declares (a larger packet is a protocol error it may close
/// the connection for, MQTT-3.1.2-24).
pub(super) async fn max_payload(r: &mut Runner, p: Protocol, main: &mut Client, limits: &ServerLimits) {
    let timeout = r.o.timeout;
    let topic = r.topic(p, "payload");
    let t = Instant::now();
    if main.subscribe(&topic, QoS::AtLeastOnce, timeout).await.is_err() {
        r.push("max_payload", Some(p), Status::Fail, t.elapsed(), "could not subscribe", None, None);
        return;
    }
    let mut largest = 0usize;
    // a PUBLISH is the payload, the topic and at most ~16 bytes of header and properties
    let declared = limits.max_packet_size.filter(|_| p == Protocol::V5).map(|m| m as usize);
    let fits = |size: usize| declared.is_none_or(|m| size + topic.len() + 16 <= m);
    for size in [1usize << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20].into_iter().filter(|s| fits(*s)) {
        let payload = vec![b'p'; size];
        match main.publish(&topic, &payload, QoS::AtLeastOnce, false, timeout).await {
            Ok(Some(a)) if a.code < 0x80 => {}
            _ => break,
        }
        match main.recv_on(&topic, 1, timeout).await {
            Ok(got) if got.first().is_some_and(|m| m.payload.len() == size) => largest = size,
            _ => break,
        }
    }
    if largest == 0 {
        r.push(
            "max_payload",
            Some(p),
            Status::Fail,
            t.elapsed(),
            "not even a 1 KiB message came back",
            Some("check the broker's maximum packet size".into()),
            None,
        );
    } else {
        let mut detail = if largest == 1 << 20 {
            "1 MiB payloads round-trip (probed up to 1 MiB)".to_string()
        } else {
            format!("the largest payload that round-tripped: {} KiB", largest >> 10)
        };
        if let Some(m) = declared {
            detail += &format!(" (the broker declares a maximum packet size of {m} bytes: probed up to it)");
        }
        r.push(
            "max_payload",
            Some(p),
            Status::Info,
            t.elapsed(),
            detail,
            None,
            Some(serde_json::json!({ "largest_bytes": largest })),
        );
    }
}

pub(super) async fn burst(r: &mut Runner, p: Protocol, main: &mut Client) {
    let timeout = r.o.timeout;
    let topic = r.topic(p, "burst");
    let t = Instant::now();
    let spec = r.spec(p, "burst", true);
    let Some(mut sub) = second(r, "burst", p, &spec, t).await else { return };
    if !sub
        .subscribe(&topic, QoS::AtLeastOnce, timeout)
        .await
        .is_ok_and(|c| c.first().is_some_and(|c| *c < 0x80))
    {
        sub.disconnect().await;
        r.push("burst", Some(p), Status::Fail, t.elapsed(), "could not subscribe", None, None);
        return;
    }
    let n = 1000;
    let mut sent = 0;
    for i in 0..n {
        match main.publish(&topic, format!("b{i}").as_bytes(), QoS::AtLeastOnce, false, timeout).await {
            Ok(Some(a)) if a.code < 0x80 => sent += 1,
            _ => break,
        }
    }
    let got = sub.recv_on(&topic, n, timeout).await.unwrap_or_default().len();
    sub.disconnect().await;
    let detail = format!("{sent} QoS 1 messages acknowledged, {got} received, in {}", ms(t.elapsed()));
    if sent == n && got == n {
        r.push(
            "burst",
            Some(p),
            Status::Pass,
            t.elapsed(),
            detail,
            None,
            Some(serde_json::json!({ "sent": sent, "received": got })),
        );
    } else {
        r.push(
            "burst",
            Some(p),
            Status::Fail,
            t.elapsed(),
            detail,
            Some("the broker dropped messages: check its queue limits (e.g. max_queued_messages)".into()),
            Some(serde_json::json!({ "sent": sent, "received": got })),
        );
    }
}
