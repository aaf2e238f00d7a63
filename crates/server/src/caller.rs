//! Who asks: the principal a use case acts for and the request that carries it. The HTTP layer
//! builds one from an API key (`extract`); pipelines build one for their author.

use factory_core::Principal;

/// The authenticated caller and the request id, which every governed use case needs together.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// What audit records name the request by (the server's id, then the client's).
    pub request_id: String,
    /// The client's own id, when it sent one: the idempotency key of a retried trigger.
    pub client_request_id: Option<String>,
}
