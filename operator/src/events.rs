//! Events on GeoCaches, as `kubectl describe` and `kubectl get events` read them.
//!
//! kube's own `Recorder` folds every Event of one reason into one series that keeps its
//! first message (`RegionCreated (x3) region eu created` for three regions), and it writes
//! `events.k8s.io/v1` Events, which may not carry `firstTimestamp`/`lastTimestamp`: sorted by
//! time, they show `<nil>`. This recorder writes core `v1` Events with both timestamps and
//! a count, and folds an Event into an earlier one only when its type, reason and message
//! are all the same.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::Mutex;

/// The API server keeps Events for an hour by default: a repeat after that starts anew.
const SERIES_TTL: Duration = Duration::from_secs(55 * 60);
/// An Event's message is capped by the API server at 1 KiB.
const MAX_NOTE: usize = 1024;

/// What makes two Events the same occurrence.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    namespace: String,
    name: String,
    warning: bool,
    reason: String,
    note: String,
}

#[derive(Debug, Clone)]
struct Series {
    event: String,
    count: i32,
    last: Instant,
}

/// Publishes Events, folding repeats of the very same Event into a count.
pub struct EventRecorder {
    client: Client,
    component: String,
    instance: String,
    series: Mutex<HashMap<Key, Series>>,
}

/// A bounded message: the first 1024 bytes, cut at a character boundary.
pub fn bounded_note(note: &str) -> String {
    if note.len() <= MAX_NOTE {
        return note.to_string();
    }
    let mut end = MAX_NOTE - '…'.len_utf8();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &note[..end])
}

/// The core/v1 Event of a first occurrence.
pub fn new_event(
    reference: &ObjectReference,
    component: &str,
    instance: &str,
    warning: bool,
    reason: &str,
    note: &str,
    now: Timestamp,
) -> Event {
    let object = reference.name.clone().unwrap_or_else(|| component.to_string());
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{object}.{:x}", now.as_nanosecond())),
            namespace: reference.namespace.clone(),
            ..ObjectMeta::default()
        },
        involved_object: reference.clone(),
        reason: Some(reason.to_string()),
        message: Some(bounded_note(note)),
        type_: Some(if warning { "Warning" } else { "Normal" }.to_string()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        source: Some(EventSource { component: Some(component.to_string()), host: None }),
        reporting_component: Some(component.to_string()),
        reporting_instance: Some(instance.to_string()),
        action: Some("Reconcile".to_string()),
        ..Event::default()
    }
}

impl EventRecorder {
    pub fn new(client: Client, component: &str, instance: Option<String>) -> Self {
        EventRecorder {
            client,
            component: component.to_string(),
            instance: instance.unwrap_or_else(|| component.to_string()),
            series: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes an Event on `reference`; a repeat of the same type, reason and message
    /// (within the Events' lifetime) raises the count and the last timestamp of the first.
    pub async fn publish(
        &self,
        reference: &ObjectReference,
        warning: bool,
        reason: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let namespace = reference.namespace.clone().unwrap_or_else(|| "default".to_string());
        let key = Key {
            uid: reference.uid.clone().unwrap_or_default(),
            namespace: namespace.clone(),
            name: reference.name.clone().unwrap_or_default(),
            warning,
            reason: reason.to_string(),
            note: bounded_note(note),
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let now = Instant::now();
        let earlier = {
            let mut series = self.series.lock().await;
            series.retain(|_, s| now.duration_since(s.last) < SERIES_TTL);
            series.get(&key).cloned()
        };
        if let Some(earlier) = earlier {
            let count = earlier.count.saturating_add(1);
            let patch = serde_json::json!({ "count": count, "lastTimestamp": Time(Timestamp::now()) });
            match api.patch(&earlier.event, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    self.series.lock().await.insert(key, Series { event: earlier.event, count, last: now });
                    return Ok(());
                }
                // Expired meanwhile: publish it as a first occurrence.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = new_event(reference, &self.component, &self.instance, warning, reason, note, Timestamp::now());
        let created = api.create(&PostParams::default(), &event).await?;
        let name = created.metadata.name.unwrap_or_default();
        self.series.lock().await.insert(key, Series { event: name, count: 1, last: now });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_event_has_both_timestamps_a_count_and_its_own_message() {
        let reference = ObjectReference {
            kind: Some("GeoCache".into()),
            name: Some("demo".into()),
            namespace: Some("default".into()),
            ..ObjectReference::default()
        };
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let e = new_event(&reference, "geocache-operator", "op-0", false, "RegionCreated", "region us created", now);
        assert_eq!(e.first_timestamp, Some(Time(now)));
        assert_eq!(e.last_timestamp, Some(Time(now)));
        assert_eq!(e.count, Some(1));
        assert_eq!(e.type_.as_deref(), Some("Normal"));
        assert_eq!(e.message.as_deref(), Some("region us created"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("default"));
        assert!(e.metadata.name.unwrap().starts_with("demo."));
        assert_eq!(e.source.and_then(|s| s.component).as_deref(), Some("geocache-operator"));
    }

    #[test]
    fn a_long_message_is_cut_within_the_api_server_limit() {
        let note = "é".repeat(800);
        let cut = bounded_note(&note);
        assert!(cut.len() <= MAX_NOTE);
        assert!(cut.ends_with('…'));
        assert_eq!(bounded_note("short"), "short");
    }

    #[test]
    fn events_differing_only_in_their_message_are_distinct() {
        let key = |note: &str| Key {
            uid: "u".into(),
            namespace: "default".into(),
            name: "demo".into(),
            warning: false,
            reason: "RegionCreated".into(),
            note: note.into(),
        };
        assert_ne!(key("region eu created"), key("region us created"));
        assert_eq!(key("region eu created"), key("region eu created"));
    }
}
