//! What lets factory processes on several machines act as one factory: rate limits and money
//! budgets that every gateway replica decides against together (Redis), and the outbox's events
//! published to NATS JetStream, from which messages can also start pipelines.

pub mod jetstream;
pub mod shared_limits;
