//! The control plane's instruments, under kube-scheduler's names, registered in the process's registry
//! (the API server serves it at `/metrics`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// `result` is `scheduled`, `unschedulable` or `error`, as kube-scheduler counts an attempt.
type AttemptLabels = [(&'static str, &'static str); 2];

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    schedule_attempts: Family<AttemptLabels, Counter>,
}

impl Metrics {
    /// The instruments, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics::default();
        registry.register(
            "scheduler_schedule_attempts",
            "Number of attempts to schedule pods, by the result. 'unschedulable' means a pod could not be \
             scheduled, while 'error' means an internal scheduler problem.",
            metrics.schedule_attempts.clone(),
        );
        metrics
    }

    pub(crate) fn attempted(&self, result: &'static str) {
        self.schedule_attempts
            .get_or_create(&[("profile", crate::scheduler::SCHEDULER_NAME), ("result", result)])
            .inc();
    }
}
