//! Everything a request handler can reach, opened once at start.

use std::sync::Arc;

use factory_authz::CedarAuthorizer;
use factory_config::Config;
use factory_objects::ContentStore;
use factory_store::{CheckpointIssuer, Store};

use crate::metrics::{MeteredDecisionPoint, Metrics};

pub type DecisionPoint = MeteredDecisionPoint<CedarAuthorizer>;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub pdp: Arc<DecisionPoint>,
    pub objects: Arc<ContentStore>,
    pub checkpoints: Arc<CheckpointIssuer>,
    pub metrics: Arc<Metrics>,
    /// Job kinds with a handler in this process; enqueueing any other kind is refused.
    pub job_kinds: Arc<Vec<String>>,
    /// Requests handled at once; past it, new requests get 503 with Retry-After.
    pub in_flight: Arc<tokio::sync::Semaphore>,
}
