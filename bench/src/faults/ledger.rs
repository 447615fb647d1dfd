//! What happened to every request of a fault run, by id, and the counts a report gives.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The last word on a request after the client asked again by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reask {
    /// The image, bytes verified.
    Image,
    /// An image whose bytes did not match.
    Damaged,
    /// A JSON error with this code (`unknown_request` when the gateway did not know the id).
    Error(String),
    /// The HTTP request itself failed.
    Failed(String),
}

/// One request, from the client's side.
#[derive(Debug, Default)]
pub struct Entry {
    /// The key asked for.
    pub key: String,
    /// When the `accepted` frame came.
    pub accepted: Option<Instant>,
    /// The code of the `error` frame that refused it before acceptance.
    pub refused: Option<String>,
    /// Terminal frames: `Ok(())` for an image whose bytes match, `Err(code)` for an error
    /// (`damaged` for an image whose bytes did not match).
    pub terminals: Vec<Result<(), String>>,
    /// When the first correct image was complete.
    pub ok_at: Option<Instant>,
    /// The client was told the archive copy failed (`archive_error` or `archive_failed`).
    pub archive_failed: bool,
    /// The answer to asking again by id, when the client had to.
    pub reask: Option<Reask>,
}

/// Every request of one run, shared by its clients, and the websockets they could not open.
#[derive(Default)]
pub struct Ledger {
    entries: Mutex<HashMap<String, Entry>>,
    connect_failures: Mutex<BTreeMap<String, usize>>,
}

impl Ledger {
    /// Changes the entry of `id`, creating it if new.
    pub fn with<R>(&self, id: &str, f: impl FnOnce(&mut Entry) -> R) -> R {
        let mut entries = self.entries.lock().expect("ledger lock");
        f(entries.entry(id.to_owned()).or_default())
    }

    /// Counts a websocket that could not be opened, by `reason`.
    pub fn connect_failed(&self, reason: String) {
        *self
            .connect_failures
            .lock()
            .expect("ledger lock")
            .entry(reason)
            .or_default() += 1;
    }

    /// The accepted ids that have no correct image yet.
    pub fn without_image(&self) -> Vec<String> {
        let entries = self.entries.lock().expect("ledger lock");
        let mut ids: Vec<String> = entries
            .iter()
            .filter(|(_, e)| e.accepted.is_some() && e.ok_at.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The counts of the run, with recovery measured from each instant in `events`.
    pub fn report(&self, fault: &str, events: &[(String, Instant)], wall: Duration) -> FaultReport {
        let entries = self.entries.lock().expect("ledger lock");
        let mut r = FaultReport {
            fault: fault.to_owned(),
            wall_s: wall.as_secs_f64(),
            connect_failures: self.connect_failures.lock().expect("ledger lock").clone(),
            ..FaultReport::default()
        };
        for (id, e) in entries.iter() {
            r.sent += 1;
            if let Some(code) = &e.refused {
                *r.refused.entry(code.clone()).or_default() += 1;
            }
            if e.accepted.is_none() {
                continue;
            }
            r.accepted += 1;
            for t in &e.terminals {
                match t {
                    Ok(()) => r.ok += 1,
                    Err(code) => *r.errors.entry(code.clone()).or_default() += 1,
                }
            }
            if e.terminals.len() > 1 {
                r.duplicated_ids.push(id.clone());
            }
            if e.archive_failed {
                r.archive_failed += 1;
            }
            match &e.reask {
                Some(Reask::Image) if e.ok_at.is_none() => r.reask_ok += 1,
                _ => {}
            }
            let ok_in_the_end = e.ok_at.is_some() || e.reask == Some(Reask::Image);
            if !ok_in_the_end {
                r.lost_ids.push(format!("{id} ({})", why_lost(e)));
            }
        }
        r.lost_ids.sort();
        r.duplicated_ids.sort();
        r.lost = r.lost_ids.len();
        r.duplicated = r.duplicated_ids.len();
        for (label, at) in events {
            let first = entries
                .values()
                .filter(|e| e.accepted.is_some_and(|a| a >= *at))
                .filter_map(|e| e.ok_at)
                .min();
            if first.is_none() {
                r.failures.push(format!(
                    "no request accepted after \"{label}\" got its image: never recovered"
                ));
            }
            r.recoveries.push(Recovery {
                event: label.clone(),
                seconds: first.map(|ok| ok.duration_since(*at).as_secs_f64()),
            });
        }
        r
    }
}

fn why_lost(e: &Entry) -> String {
    let frames = match e.terminals.as_slice() {
        [] => "no terminal frame".to_owned(),
        t => t
            .iter()
            .map(|t| match t {
                Ok(()) => "image".to_owned(),
                Err(code) => code.clone(),
            })
            .collect::<Vec<_>>()
            .join(", "),
    };
    match &e.reask {
        None => frames,
        Some(other) => format!("{frames}; re-ask: {other:?}"),
    }
}

/// Time from one fault event to the first correct image of a request accepted after it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Recovery {
    /// What happened (`kill resolver-3`, `nats started again`, …).
    pub event: String,
    /// Seconds; `None` when no request accepted after it got its image.
    pub seconds: Option<f64>,
}

/// The counts of one fault run. `lost` and `duplicated` must be 0.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FaultReport {
    /// The fault's name.
    pub fault: String,
    /// Requests sent.
    pub sent: usize,
    /// Requests that got the `accepted` frame.
    pub accepted: usize,
    /// Requests refused before acceptance, by code.
    pub refused: BTreeMap<String, usize>,
    /// Websockets that could not be opened, by reason: the code of a refused upgrade
    /// (`unauthorized`: no valid token), else its HTTP status, else what the connection met
    /// (`connection refused` while a gateway is down, `timeout`). No request was sent on them.
    pub connect_failures: BTreeMap<String, usize>,
    /// Correct images (bytes verified) on the websocket.
    pub ok: usize,
    /// Terminal error frames of accepted requests, by code (`damaged`: an image whose bytes
    /// did not match).
    pub errors: BTreeMap<String, usize>,
    /// Accepted requests answered by asking again by id (`GET /v1/requests/{id}`).
    pub reask_ok: usize,
    /// Requests whose client was told their archive copy failed.
    pub archive_failed: usize,
    /// Accepted requests with no correct image in the end.
    pub lost: usize,
    /// Requests with more than one terminal frame.
    pub duplicated: usize,
    /// The lost ids, each with what it got.
    pub lost_ids: Vec<String>,
    /// The duplicated ids.
    pub duplicated_ids: Vec<String>,
    /// Recovery after each fault event.
    pub recoveries: Vec<Recovery>,
    /// Why the scenario itself failed, beyond loss and duplication (e.g. a check that the
    /// fault really happened).
    pub failures: Vec<String>,
    /// Wall time of the run, seconds.
    pub wall_s: f64,
}

impl FaultReport {
    /// No loss, no duplication, no failed check.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.failures.is_empty()
    }

    /// The longest recovery, `None` if some event never recovered or there was no event.
    pub fn worst_recovery(&self) -> Option<f64> {
        self.recoveries
            .iter()
            .map(|r| r.seconds)
            .collect::<Option<Vec<f64>>>()
            .and_then(|s| s.into_iter().reduce(f64::max))
    }
}
