//! Readiness bookkeeping shared by the gateway and the resolver: named components, each ready
//! or not with a reason. The process is ready when every component is; `/readyz` reports the
//! first one that is not, so an operator reads why at once.
//!
//! Components are registered in order and kept in that order. A [`Health`] is cheap to clone
//! and every clone sees the same state; [`Health::subscribe`] lets a task wait for a component
//! to change (the resolver stops answering a network's pings while it cannot serve it).

use std::sync::Arc;

use tokio::sync::watch;

/// One component's state: `None` when ready, else why not.
type Entry = (String, Option<String>);

/// The readiness of a process's components.
#[derive(Clone, Debug)]
pub struct Health {
    state: Arc<watch::Sender<Vec<Entry>>>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// No components: ready.
    pub fn new() -> Health {
        Health {
            state: Arc::new(watch::Sender::new(Vec::new())),
        }
    }

    /// Registers `name` (or finds it when already registered), not ready with `reason`.
    pub fn component(&self, name: impl Into<String>, reason: impl Into<String>) -> Component {
        let name = name.into();
        let reason = reason.into();
        self.state
            .send_modify(|list| match list.iter_mut().find(|(n, _)| *n == name) {
                Some(entry) => entry.1 = Some(reason),
                None => list.push((name.clone(), Some(reason))),
            });
        Component {
            health: self.clone(),
            name,
        }
    }

    /// `Ok` when every component is ready, else `name: reason` of the first that is not.
    pub fn check(&self) -> Result<(), String> {
        match self.state.borrow().iter().find(|(_, r)| r.is_some()) {
            Some((name, Some(reason))) => Err(format!("{name}: {reason}")),
            _ => Ok(()),
        }
    }

    /// Whether the component `name` is registered and ready.
    pub fn is_ready(&self, name: &str) -> bool {
        ready_in(&self.state.borrow(), name)
    }

    /// Waits until the component `name` is ready (`true`) or not (`false`).
    pub async fn wait(&self, name: &str, ready: bool) {
        self.wait_all(&[name], ready).await;
    }

    /// Waits until all of `names` are ready (`true`), or until one of them is not (`false`).
    pub async fn wait_all(&self, names: &[&str], ready: bool) {
        let mut rx = self.state.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = rx
            .wait_for(|list| names.iter().all(|n| ready_in(list, n)) == ready)
            .await;
    }

    fn set(&self, name: &str, reason: Option<String>) {
        self.state
            .send_if_modified(|list| match list.iter_mut().find(|(n, _)| n == name) {
                Some(entry) if entry.1 != reason => {
                    entry.1 = reason;
                    true
                }
                _ => false,
            });
    }
}

fn ready_in(list: &[Entry], name: &str) -> bool {
    list.iter().any(|(n, r)| n == name && r.is_none())
}

/// A handle on one registered component.
#[derive(Clone, Debug)]
pub struct Component {
    health: Health,
    name: String,
}

impl Component {
    /// Marks it ready.
    pub fn ready(&self) {
        self.health.set(&self.name, None);
    }

    /// Marks it not ready, saying why.
    pub fn unready(&self, reason: impl Into<String>) {
        self.health.set(&self.name, Some(reason.into()));
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it is ready.
    pub fn is_ready(&self) -> bool {
        self.health.is_ready(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_only_when_every_component_is_and_the_first_reason_is_told() {
        let health = Health::new();
        assert_eq!(health.check(), Ok(()));
        let a = health.component("pull a", "starting");
        let b = health.component("pull b", "starting");
        assert_eq!(health.check(), Err("pull a: starting".into()));
        a.ready();
        assert_eq!(health.check(), Err("pull b: starting".into()));
        b.ready();
        assert_eq!(health.check(), Ok(()));
        a.unready("consumer deleted");
        assert_eq!(health.check(), Err("pull a: consumer deleted".into()));
        assert!(!a.is_ready() && b.is_ready());
        let waiter = tokio::spawn({
            let health = health.clone();
            async move { health.wait("pull a", true).await }
        });
        a.ready();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter sees the change")
            .unwrap();
    }
}
