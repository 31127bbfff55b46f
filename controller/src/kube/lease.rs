//! Leader election on a `coordination.k8s.io/v1` Lease, so that two controller replicas (a
//! rolling update, or replicas > 1) never both reconcile and scale. kube-runtime 5 has no lease
//! helper, so this is the client-go algorithm, small: read the Lease; create it when absent,
//! renew it when ours, take it over when its holder stopped renewing; every write is optimistic
//! (`resourceVersion`), so of two racing replicas exactly one wins. Expiry is judged on this
//! process's clock from when the record last changed, never by comparing wall clocks.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::{Error, Result};

/// Timing of the election. Defaults are kube-controller-manager's `--leader-elect-lease-duration`
/// (15 s), `--leader-elect-renew-deadline` (10 s) and `--leader-elect-retry-period` (2 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a holder's claim lasts without renewal.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down (before others may take over).
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What to do with the Lease as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No Lease exists: create it, held by us.
    Create,
    /// We hold it: bump `renewTime`.
    Renew,
    /// Released or expired: claim it (one more `leaseTransitions`).
    TakeOver,
    /// Someone else holds a live claim.
    Follow { holder: String },
}

/// The part of a Lease that shows its holder is alive; a change restarts the expiry clock.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    transitions: Option<i32>,
}

impl Record {
    fn of(spec: Option<&LeaseSpec>) -> Self {
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renew_time: spec.and_then(|s| s.renew_time.clone()),
            transitions: spec.and_then(|s| s.lease_transitions),
        }
    }
}

/// Decide given the Lease (if any), who we are, and how long ago (on our clock) its record last
/// changed. Pure: the table tests drive every branch.
pub fn decide(
    lease: Option<&Lease>,
    identity: &str,
    unchanged_for: Duration,
    duration: Duration,
) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let record = Record::of(lease.spec.as_ref());
    match record.holder {
        Some(holder) if holder == identity => Decision::Renew,
        None => Decision::TakeOver,
        Some(_) if unchanged_for >= held_for(lease, duration) => Decision::TakeOver,
        Some(holder) => Decision::Follow { holder },
    }
}

/// The claim length the holder wrote, or ours when it wrote none.
fn held_for(lease: &Lease, fallback: Duration) -> Duration {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map_or(fallback, Duration::from_secs)
}

/// A Lease named `name`, held by `identity` from now for `duration`, as first created.
pub fn held_lease(name: &str, identity: &str, duration: Duration) -> Lease {
    let now = MicroTime(Timestamp::now());
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.to_string()),
            lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// One controller replica's side of the election.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    /// The Lease record last read and when (our clock) it was first seen like that.
    observed: Option<(Record, Instant)>,
    /// When we last wrote the Lease successfully as its holder.
    last_renewed: Option<Instant>,
}

impl LeaderElector {
    /// Elect on Lease `name` in the namespace of `api`, as `identity` (the pod name).
    pub fn new(
        api: Api<Lease>,
        name: impl Into<String>,
        identity: impl Into<String>,
        timing: LeaseTiming,
    ) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            timing,
            observed: None,
            last_renewed: None,
        }
    }

    /// Whether this replica leads right now: it renewed within the renew deadline.
    pub fn is_leader(&self) -> bool {
        self.last_renewed
            .is_some_and(|t| t.elapsed() < self.timing.renew_deadline)
    }

    /// One round: read the Lease, then create, renew or take it over when we may.
    /// Returns whether we lead afterwards. A lost write race (409) is not an error: we follow.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let now = Instant::now();
        let lease = self.api.get_opt(&self.name).await?;
        let record = Record::of(lease.as_ref().and_then(|l| l.spec.as_ref()));
        let since = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => now,
        };
        self.observed = Some((record, since));
        let decision = decide(
            lease.as_ref(),
            &self.identity,
            now - since,
            self.timing.lease_duration,
        );
        let written = match (&decision, lease) {
            (Decision::Create, _) => {
                self.api
                    .create(&PostParams::default(), &self.new_lease(None))
                    .await
            }
            (Decision::Renew, Some(lease)) => self.write(lease, false).await,
            (Decision::TakeOver, Some(lease)) => self.write(lease, true).await,
            (Decision::Follow { holder }, _) => {
                tracing::debug!(%holder, lease = %self.name, "following the current leader");
                self.last_renewed = None;
                return Ok(false);
            }
            (_, None) => return Err(Error::MissingField("Lease")),
        };
        match written.map_err(Error::from) {
            Ok(lease) => {
                if !self.is_leader() {
                    tracing::info!(identity = %self.identity, lease = %self.name, "acquired leadership");
                }
                self.observed = Some((Record::of(lease.spec.as_ref()), now));
                self.last_renewed = Some(now);
                Ok(true)
            }
            Err(e) if e.is_conflict() => {
                tracing::info!(lease = %self.name, "another replica wrote the lease first; following");
                self.last_renewed = None;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Give the Lease up (on shutdown) so another replica takes over at once instead of after
    /// the lease duration: empty holder, 1 s duration, as client-go's `ReleaseOnCancel` does.
    pub async fn release(&mut self) -> Result<()> {
        if self.last_renewed.take().is_none() {
            return Ok(());
        }
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let ours =
            lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(self.identity.as_str());
        if !ours {
            return Ok(());
        }
        let now = MicroTime(Timestamp::now());
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now);
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        tracing::info!(lease = %self.name, "released leadership");
        Ok(())
    }

    /// Replace the Lease we read (its `resourceVersion` makes the write conditional).
    async fn write(&self, current: Lease, take_over: bool) -> kube::Result<Lease> {
        let transitions = current
            .spec
            .as_ref()
            .and_then(|s| s.lease_transitions)
            .unwrap_or(0);
        let acquired = current.spec.as_ref().and_then(|s| s.acquire_time.clone());
        let mut lease = self.new_lease(Some(current.metadata));
        if let Some(spec) = lease.spec.as_mut() {
            if take_over {
                spec.lease_transitions = Some(transitions + 1);
            } else {
                spec.lease_transitions = Some(transitions);
                spec.acquire_time = acquired.or(spec.acquire_time.take());
            }
        }
        self.api.replace(&self.name, &PostParams::default(), &lease).await
    }

    /// A Lease held by us from now, keeping `metadata` (and so `resourceVersion`) when given.
    fn new_lease(&self, metadata: Option<ObjectMeta>) -> Lease {
        let mut lease = held_lease(&self.name, &self.identity, self.timing.lease_duration);
        if let Some(metadata) = metadata {
            lease.metadata = metadata;
        }
        lease
    }

    /// Run the election until `shutdown`, publishing leadership on `leading`, then release.
    pub async fn run(mut self, leading: watch::Sender<bool>, shutdown: CancellationToken) {
        loop {
            let lead = match self.try_acquire_or_renew().await {
                Ok(lead) => lead,
                Err(e) => {
                    // Keep leading through short API hiccups until the renew deadline passes.
                    tracing::warn!(error = %e, kind = e.kind(), lease = %self.name, "lease round failed");
                    self.is_leader()
                }
            };
            if *leading.borrow() && !lead {
                tracing::warn!(lease = %self.name, "lost leadership; stopping reconcile and scaling");
            }
            leading.send_if_modified(|l| std::mem::replace(l, lead) != lead);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.timing.retry_period) => {}
            }
        }
        leading.send_replace(false);
        if let Err(e) = self.release().await {
            tracing::warn!(error = %e, lease = %self.name, "could not release the lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, duration_s: Option<i32>) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: duration_s,
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn decisions_cover_absent_own_released_expired_and_live_leases() {
        let d15 = Duration::from_secs(15);
        let cases = [
            (None, 0, Decision::Create),
            (Some(lease(Some("me"), Some(15))), 100, Decision::Renew),
            (Some(lease(None, Some(15))), 0, Decision::TakeOver),
            (Some(lease(Some(""), Some(1))), 0, Decision::TakeOver),
            (
                Some(lease(Some("other"), Some(15))),
                14,
                Decision::Follow {
                    holder: "other".into(),
                },
            ),
            (Some(lease(Some("other"), Some(15))), 15, Decision::TakeOver),
            // The holder's own duration counts, not ours.
            (
                Some(lease(Some("other"), Some(60))),
                30,
                Decision::Follow {
                    holder: "other".into(),
                },
            ),
            (Some(lease(Some("other"), None)), 15, Decision::TakeOver),
        ];
        for (i, (l, secs, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                decide(l.as_ref(), "me", Duration::from_secs(secs), d15),
                want,
                "case {i}"
            );
        }
    }
}
