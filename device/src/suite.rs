//! Suite files in Device Advisor's shape, so suites carry over:
//!
//! ```json
//! {"tests": [{"name": "my_connect", "configuration": {"EXECUTION_TIMEOUT": "120"},
//!             "test": {"id": "MQTT_Connect", "version": "0.0.0"}}]}
//! ```
//!
//! Decisions where Device Advisor's documentation is loose:
//! - configuration values come as strings ("300") or numbers (300): both are accepted;
//! - the file is JSON: the `// optional:` comments and trailing commas of the documentation's
//!   examples are refused with the line, the column and that hint;
//! - a key given twice in one object (the documentation's `MQTT_Publish_User_Property`
//!   example repeats `test`) is refused: which of the two was meant cannot be known;
//! - an unknown test id or configuration key is refused, naming the ones squall knows (a typo
//!   must not silently become a default);
//! - `version` is accepted and kept, whatever it says (squall has one version of each case).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The cases, by Device Advisor's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(non_camel_case_types)]
pub enum CaseId {
    MQTT_Connect,
    MQTT_Client_Puback_QoS1,
    MQTT_Connect_Jitter_Backoff_Retries,
    MQTT_Connect_Exponential_Backoff_Retries,
    MQTT_Reconnect_Backoff_Retries_On_Server_Disconnect,
    MQTT_Reconnect_Backoff_Retries_On_Unstable_Connection,
    MQTT_Publish,
    MQTT_Publish_Retained_Messages,
    MQTT_Publish_User_Property,
    MQTT_Publish_Retry_No_Puback,
    MQTT_Subscribe,
    MQTT_Subscribe_Retry_No_Suback,
    MQTT_No_Ack_PingResp,
    MQTT_Persistent_Session_Happy_Case,
    MQTT_Expired_Persistent_Session,
}

impl CaseId {
    pub const ALL: [CaseId; 15] = [
        CaseId::MQTT_Connect,
        CaseId::MQTT_Client_Puback_QoS1,
        CaseId::MQTT_Connect_Jitter_Backoff_Retries,
        CaseId::MQTT_Connect_Exponential_Backoff_Retries,
        CaseId::MQTT_Reconnect_Backoff_Retries_On_Server_Disconnect,
        CaseId::MQTT_Reconnect_Backoff_Retries_On_Unstable_Connection,
        CaseId::MQTT_Publish,
        CaseId::MQTT_Publish_Retained_Messages,
        CaseId::MQTT_Publish_User_Property,
        CaseId::MQTT_Publish_Retry_No_Puback,
        CaseId::MQTT_Subscribe,
        CaseId::MQTT_Subscribe_Retry_No_Suback,
        CaseId::MQTT_No_Ack_PingResp,
        CaseId::MQTT_Persistent_Session_Happy_Case,
        CaseId::MQTT_Expired_Persistent_Session,
    ];

    pub fn name(&self) -> String {
        format!("{self:?}")
    }

    fn parse(s: &str) -> Option<CaseId> {
        CaseId::ALL.into_iter().find(|c| c.name() == s)
    }

    /// The configuration keys the case reads (beyond `EXECUTION_TIMEOUT`, which all do).
    pub fn keys(&self) -> &'static [&'static str] {
        use CaseId::*;
        match self {
            MQTT_Client_Puback_QoS1 => &["TRIGGER_TOPIC", "PAYLOAD_FOR_PUBLISH_VALIDATION", "PAYLOAD_SIZE"],
            MQTT_Reconnect_Backoff_Retries_On_Server_Disconnect
            | MQTT_Reconnect_Backoff_Retries_On_Unstable_Connection => &["RECONNECTION_ATTEMPTS"],
            MQTT_Publish => &["TOPIC_FOR_PUBLISH_VALIDATION", "PAYLOAD_FOR_PUBLISH_VALIDATION"],
            MQTT_Publish_Retained_Messages => {
                &["TOPIC_FOR_PUBLISH_RETAINED_VALIDATION", "PAYLOAD_FOR_PUBLISH_RETAINED_VALIDATION"]
            }
            MQTT_Publish_User_Property => &["TOPIC_FOR_PUBLISH_VALIDATION", "USER_PROPERTIES"],
            MQTT_Subscribe | MQTT_Subscribe_Retry_No_Suback => &["TOPIC_LIST_FOR_SUBSCRIPTION_VALIDATION"],
            MQTT_Persistent_Session_Happy_Case | MQTT_Expired_Persistent_Session => {
                &["TRIGGER_TOPIC", "PAYLOAD"]
            }
            _ => &[],
        }
    }
}

/// One case of a suite, its configuration checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Case {
    pub name: String,
    pub id: CaseId,
    pub version: String,
    /// `EXECUTION_TIMEOUT` (Device Advisor's default: 300 s).
    pub timeout: Duration,
    pub trigger_topic: Option<String>,
    pub topic: Option<String>,
    pub payload: Option<String>,
    /// `PAYLOAD_SIZE`, in bytes (given in kilobytes, 0–128).
    pub payload_size: Option<usize>,
    /// `RECONNECTION_ATTEMPTS` (5–10, default 5).
    pub attempts: u32,
    pub subscriptions: Vec<String>,
    pub user_properties: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SuiteError(pub String);

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_TIMEOUT_S: u64 = 86_400;
const MAX_CASES: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSuite {
    tests: Vec<FileCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCase {
    name: String,
    #[serde(default)]
    configuration: BTreeMap<String, serde_json::Value>,
    test: FileTest,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTest {
    id: String,
    #[serde(default)]
    version: String,
}

/// Reads a suite file's text.
pub fn parse(text: &str) -> Result<Vec<Case>, SuiteError> {
    let file: FileSuite = serde_json::from_str(text).map_err(|e| {
        let hint = if e.is_syntax() && (text.contains("//") || text.contains(",\n}") || text.contains(", }")) {
            " (a suite file is JSON: remove the `// …` comments and trailing commas of the examples it was copied from)"
        } else {
            ""
        };
        SuiteError(format!("suite file, line {} column {}: {e}{hint}", e.line(), e.column()))
    })?;
    if file.tests.is_empty() {
        return Err(SuiteError("the suite has no tests: give `tests` at least one case".into()));
    }
    if file.tests.len() > MAX_CASES {
        return Err(SuiteError(format!("{} tests in one suite; at most {MAX_CASES}", file.tests.len())));
    }
    file.tests.into_iter().map(case).collect()
}

/// One case of the given id with its defaults (`squall device --case ID`).
pub fn default_case(id: &str) -> Result<Case, SuiteError> {
    case(FileCase {
        name: id.into(),
        configuration: BTreeMap::new(),
        test: FileTest { id: id.into(), version: "0.0.0".into() },
    })
}

fn case(c: FileCase) -> Result<Case, SuiteError> {
    let id = CaseId::parse(&c.test.id).ok_or_else(|| {
        let known: Vec<String> = CaseId::ALL.iter().map(|c| c.name()).collect();
        SuiteError(format!(
            "test `{}`: unknown id `{}`; squall knows {}",
            c.name,
            c.test.id,
            known.join(", ")
        ))
    })?;
    let here = |what: String| SuiteError(format!("test `{}` ({}): {what}", c.name, id.name()));
    for key in c.configuration.keys() {
        if key != "EXECUTION_TIMEOUT" && !id.keys().contains(&key.as_str()) {
            let known =
                std::iter::once("EXECUTION_TIMEOUT").chain(id.keys().iter().copied()).collect::<Vec<_>>();
            return Err(here(format!(
                "unknown configuration key `{key}`; this case reads {}",
                known.join(", ")
            )));
        }
    }
    let text = |key: &str| -> Result<Option<String>, SuiteError> {
        match c.configuration.get(key) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(here(format!("`{key}` must be a string, not {other}"))),
        }
    };
    let number = |key: &str, lo: u64, hi: u64| -> Result<Option<u64>, SuiteError> {
        let Some(s) = text(key)? else { return Ok(None) };
        match s.trim().parse::<u64>() {
            Ok(v) if (lo..=hi).contains(&v) => Ok(Some(v)),
            _ => Err(here(format!("`{key}` = {s:?}: give a whole number from {lo} to {hi}"))),
        }
    };
    let timeout = number("EXECUTION_TIMEOUT", 1, MAX_TIMEOUT_S)?.map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let subscriptions = match c.configuration.get("TOPIC_LIST_FOR_SUBSCRIPTION_VALIDATION") {
        None => Vec::new(),
        Some(serde_json::Value::Array(a)) => {
            a.iter().map(|v| v.as_str().map(str::to_string)).collect::<Option<Vec<_>>>().ok_or_else(|| {
                here(
                    "`TOPIC_LIST_FOR_SUBSCRIPTION_VALIDATION` must be a list of topic filters (strings)"
                        .into(),
                )
            })?
        }
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(other) => {
            return Err(here(format!(
                "`TOPIC_LIST_FOR_SUBSCRIPTION_VALIDATION` must be a list, not {other}"
            )));
        }
    };
    let user_properties = match c.configuration.get("USER_PROPERTIES") {
        None => Vec::new(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|p| Some((p.get("name")?.as_str()?.to_string(), p.get("value")?.as_str()?.to_string())))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| here("`USER_PROPERTIES` must be a list of {\"name\": …, \"value\": …}".into()))?,
        Some(other) => return Err(here(format!("`USER_PROPERTIES` must be a list, not {other}"))),
    };
    Ok(Case {
        name: c.name.clone(),
        id,
        version: c.test.version.clone(),
        timeout,
        trigger_topic: text("TRIGGER_TOPIC")?,
        topic: text("TOPIC_FOR_PUBLISH_VALIDATION")?.or(text("TOPIC_FOR_PUBLISH_RETAINED_VALIDATION")?),
        payload: text("PAYLOAD_FOR_PUBLISH_VALIDATION")?
            .or(text("PAYLOAD_FOR_PUBLISH_RETAINED_VALIDATION")?)
            .or(text("PAYLOAD")?),
        payload_size: number("PAYLOAD_SIZE", 0, 128)?.map(|kb| kb as usize * 1024),
        attempts: number("RECONNECTION_ATTEMPTS", 5, 10)?.map_or(5, |v| v as u32),
        subscriptions,
        user_properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suite_as_device_advisor_writes_it() {
        let s = parse(
            r#"{"tests": [
              {"name": "connect", "configuration": {"EXECUTION_TIMEOUT": "120"},
               "test": {"id": "MQTT_Connect", "version": "0.0.0"}},
              {"name": "puback", "configuration": {"TRIGGER_TOPIC": "myTopic", "PAYLOAD_SIZE": 100, "EXECUTION_TIMEOUT": 300},
               "test": {"id": "MQTT_Client_Puback_QoS1", "version": "0.0.0"}},
              {"name": "unstable", "configuration": {"RECONNECTION_ATTEMPTS": "7"},
               "test": {"id": "MQTT_Reconnect_Backoff_Retries_On_Unstable_Connection", "version": "0.0.0"}},
              {"name": "props", "configuration": {"USER_PROPERTIES": [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]},
               "test": {"id": "MQTT_Publish_User_Property", "version": "0.0.0"}}
            ]}"#,
        )
        .unwrap();
        assert_eq!(s[0].timeout, Duration::from_secs(120));
        assert_eq!((s[1].trigger_topic.as_deref(), s[1].payload_size), (Some("myTopic"), Some(100 * 1024)));
        assert_eq!(s[1].timeout, DEFAULT_TIMEOUT);
        assert_eq!(s[2].attempts, 7);
        // MQTT 5 allows a user property's name to repeat: both are kept, in order
        assert_eq!(s[3].user_properties, [("a".into(), "1".into()), ("a".into(), "2".into())]);
    }

    #[test]
    fn mistakes_are_refused_with_what_to_do() {
        let err = |t: &str| parse(t).unwrap_err().0;
        let copied = "{\"tests\":[{\"name\":\"c\",\"configuration\":{\n// optional:\n\"EXECUTION_TIMEOUT\":\"300\",\n},\"test\":{\"id\":\"MQTT_Connect\"}}]}";
        let e = err(copied);
        assert!(e.contains("line 2") && e.contains("remove the `// …` comments"), "{e}");
        let e = err(r#"{"tests":[{"name":"x","test":{"id":"MQTT_Conect"}}]}"#);
        assert!(e.contains("unknown id `MQTT_Conect`") && e.contains("MQTT_Connect,"), "{e}");
        let e = err(
            r#"{"tests":[{"name":"x","configuration":{"PAYLOAD_SIZE":"129"},"test":{"id":"MQTT_Client_Puback_QoS1"}}]}"#,
        );
        assert!(e.contains("from 0 to 128"), "{e}");
        let e = err(
            r#"{"tests":[{"name":"x","configuration":{"TRIGER_TOPIC":"t"},"test":{"id":"MQTT_Client_Puback_QoS1"}}]}"#,
        );
        assert!(e.contains("unknown configuration key `TRIGER_TOPIC`") && e.contains("TRIGGER_TOPIC"), "{e}");
        let e = err(r#"{"tests":[{"name":"x","test":{"id":"MQTT_Connect"},"test":{"id":"MQTT_Publish"}}]}"#);
        assert!(e.contains("duplicate field `test`"), "{e}");
        let e = err(
            r#"{"tests":[{"name":"x","configuration":{"RECONNECTION_ATTEMPTS":"4"},"test":{"id":"MQTT_Reconnect_Backoff_Retries_On_Server_Disconnect"}}]}"#,
        );
        assert!(e.contains("from 5 to 10"), "{e}");
        assert!(err(r#"{"tests":[]}"#).contains("no tests"));
        assert!(default_case("MQTT_No_Ack_PingResp").is_ok() && default_case("nope").is_err());
    }

    proptest::proptest! {
        /// Any text, or a valid suite with bytes changed: an answer, never a panic.
        #[test]
        fn any_text_gets_an_answer(text in ".{0,400}", at in 0usize..200, byte in 0u8..128) {
            let _ = parse(&text);
            let mut good = r#"{"tests":[{"name":"c","configuration":{"EXECUTION_TIMEOUT":"60","RECONNECTION_ATTEMPTS":6},"test":{"id":"MQTT_Reconnect_Backoff_Retries_On_Server_Disconnect","version":"0.0.0"}}]}"#.as_bytes().to_vec();
            let i = at % good.len();
            good[i] = byte;
            if let Ok(t) = std::str::from_utf8(&good) {
                let _ = parse(t);
            }
        }
    }
}
