//! The route table and the layers every request passes through, outermost first: request id,
//! tracing span, load shedding, timeout and metrics, body size limit, handler.

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use tower_http::request_id::PropagateRequestIdLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::admission::Refusal;
use crate::api::{
    audit, batches, console, datasets, deployments, feedback, jobs, keys, models, openai, ops, pipelines, runs, tenants,
};
use crate::error::ApiError;
use crate::extract::RequestIds;
use crate::metrics::{RequestLabels, RouteLabels};
use crate::state::AppState;
use crate::REQUEST_ID_HEADER;

#[derive(OpenApi)]
#[openapi(
    info(title = "Sovereign AI Factory", description = "The governed control plane of the factory"),
    paths(
        tenants::create, tenants::show, tenants::set_quota, keys::create, keys::revoke,
        audit::checkpoint, audit::public_key, audit::inclusion, audit::consistency, audit::records,
        jobs::enqueue, jobs::list, jobs::show, jobs::cancel,
        datasets::create, datasets::list, datasets::show, datasets::ingest, datasets::manifest,
        datasets::rows, datasets::download, datasets::profile,
        runs::create, runs::show, runs::metrics, runs::cancel,
        models::list, models::show, models::register, models::version, models::signed_manifest, models::file,
        models::verify, models::set_alias, models::bundle, models::import_bundle, models::import_hf, models::import_gguf,
        models::quantize, models::gguf, models::signing_key,
        deployments::create, deployments::list, deployments::show, deployments::update, deployments::delete,
        deployments::inferences, deployments::feedback, deployments::drift, batches::create_from_dataset,
        feedback::create,
        pipelines::put, pipelines::list, pipelines::show, pipelines::runs, pipelines::run, pipelines::trigger,
        ops::healthz, ops::readyz, ops::metrics, ops::sweep_orphans,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// Routes that stream large bodies get the transfer timeout instead of the request timeout.
const INGEST_ROUTE: &str = "/api/v1/datasets/{name}/versions";
const DOWNLOAD_ROUTE: &str = "/api/v1/datasets/{name}/versions/{version}/download";
const MODEL_IMPORT_ROUTE: &str = "/api/v1/models/import";
const HF_IMPORT_ROUTE: &str = "/api/v1/models/{name}/import-hf";
const GGUF_IMPORT_ROUTE: &str = "/api/v1/models/{name}/import-gguf";
const BUNDLE_ROUTE: &str = "/api/v1/models/{name}/versions/{version}/bundle";
const GGUF_EXPORT_ROUTE: &str = "/api/v1/models/{name}/versions/{version}/gguf";
/// Quantizing reads and writes a whole model: as long as moving one.
const QUANTIZE_ROUTE: &str = "/api/v1/models/{name}/versions/{version}/quantize";
/// Batch files: up to `batch.max_file_mb` in, and out again.
const FILES_ROUTE: &str = "/v1/files";
const FILE_CONTENT_ROUTE: &str = "/v1/files/{id}/content";
/// Routes that move whole datasets or models: bounded by the transfer timeout, not the
/// request timeout.
const TRANSFER_ROUTES: &[&str] = &[
    INGEST_ROUTE,
    DOWNLOAD_ROUTE,
    MODEL_IMPORT_ROUTE,
    HF_IMPORT_ROUTE,
    GGUF_IMPORT_ROUTE,
    BUNDLE_ROUTE,
    GGUF_EXPORT_ROUTE,
    QUANTIZE_ROUTE,
    FILES_ROUTE,
    FILE_CONTENT_ROUTE,
];

/// The OpenAPI document of every route, served where the router is built.
async fn openapi() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

/// The routes of this process's roles (`[server] roles`): the control plane and the console
/// for `api`, the OpenAI-compatible API for `gateway`; health, readiness and metrics for all.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.server.request_body_limit_bytes;
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    let roles = state.config.server.roles;
    let mut routes = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics));
    if roles.api {
        routes = routes.merge(control_routes());
    }
    if roles.gateway {
        routes = routes
            .merge(inference_routes(state.config.serving.max_request_bytes))
            .merge(batch_routes(state.config.batch.max_file_bytes));
    }
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let request_id =
                        request.headers().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("request", request_id, method = %request.method(), path = %request.uri().path())
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(middleware::from_fn(identify_request))
        .with_state(state)
}

/// The control plane (`/api/v1`, its OpenAPI document) and the console: the `api` role's.
fn control_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tenants", post(tenants::create))
        .route("/api/v1/tenants/{tenant}", get(tenants::show))
        .route("/api/v1/tenants/{tenant}/quota", put(tenants::set_quota))
        .route("/api/v1/tenants/{tenant}/keys", post(keys::create))
        .route("/api/v1/keys/{id}", delete(keys::revoke))
        .route("/api/v1/tenants/{tenant}/jobs", post(jobs::enqueue).get(jobs::list))
        .route("/api/v1/jobs/{id}", get(jobs::show))
        .route("/api/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/v1/datasets", post(datasets::create).get(datasets::list))
        .route("/api/v1/datasets/{name}", get(datasets::show))
        .route(INGEST_ROUTE, post(datasets::ingest))
        .route("/api/v1/datasets/{name}/versions/{version}", get(datasets::manifest))
        .route("/api/v1/datasets/{name}/versions/{version}/rows", get(datasets::rows))
        .route(DOWNLOAD_ROUTE, get(datasets::download))
        .route("/api/v1/datasets/{name}/versions/{version}/profile", get(datasets::profile))
        .route("/api/v1/runs", post(runs::create))
        .route("/api/v1/runs/{id}", get(runs::show))
        .route("/api/v1/runs/{id}/metrics", get(runs::metrics))
        .route("/api/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/api/v1/models", get(models::list))
        .route("/api/v1/models/signing-key", get(models::signing_key))
        .route(MODEL_IMPORT_ROUTE, post(models::import_bundle))
        .route("/api/v1/models/{name}", get(models::show))
        .route("/api/v1/models/{name}/versions", post(models::register))
        .route(HF_IMPORT_ROUTE, post(models::import_hf))
        .route(GGUF_IMPORT_ROUTE, post(models::import_gguf))
        .route("/api/v1/models/{name}/versions/{version}", get(models::version))
        .route("/api/v1/models/{name}/versions/{version}/manifest", get(models::signed_manifest))
        .route("/api/v1/models/{name}/versions/{version}/files/{path}", get(models::file))
        .route("/api/v1/models/{name}/versions/{version}/verify", post(models::verify))
        .route(BUNDLE_ROUTE, get(models::bundle))
        .route(GGUF_EXPORT_ROUTE, get(models::gguf))
        .route(QUANTIZE_ROUTE, post(models::quantize))
        .route("/api/v1/models/{name}/aliases/{alias}", put(models::set_alias))
        .route("/api/v1/deployments", post(deployments::create).get(deployments::list))
        .route(
            "/api/v1/deployments/{name}",
            get(deployments::show).put(deployments::update).delete(deployments::delete),
        )
        .route("/api/v1/deployments/{name}/inferences", get(deployments::inferences))
        .route("/api/v1/deployments/{name}/feedback", get(deployments::feedback))
        .route("/api/v1/deployments/{name}/drift", get(deployments::drift))
        .route("/api/v1/pipelines", get(pipelines::list))
        .route("/api/v1/pipelines/{name}", get(pipelines::show).put(pipelines::put))
        .route("/api/v1/pipelines/{name}/runs", get(pipelines::runs).post(pipelines::trigger))
        .route("/api/v1/pipelines/{name}/runs/{id}", get(pipelines::run))
        .route("/api/v1/feedback", post(feedback::create))
        .route("/api/v1/deployments/{name}/batches", post(batches::create_from_dataset))
        .route("/api/v1/objects/sweep", post(ops::sweep_orphans))
        .route("/api/v1/audit/checkpoint", get(audit::checkpoint))
        .route("/api/v1/audit/public-key", get(audit::public_key))
        .route("/api/v1/audit/proof/inclusion", get(audit::inclusion))
        .route("/api/v1/audit/proof/consistency", get(audit::consistency))
        .route("/api/v1/audit/records", get(audit::records))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/", get(console::root))
        .route("/console", get(console::overview))
        .route("/console/sign-in", get(console::sign_in_page).post(console::sign_in))
        .route("/console/sign-out", post(console::sign_out))
        .route("/console/datasets", get(console::datasets))
        .route("/console/datasets/{name}", get(console::dataset_page))
        .route("/console/datasets/{name}/versions/{version}", get(console::dataset_version_page))
        .route("/console/jobs", get(console::jobs_page))
        .route("/console/jobs/{id}", get(console::job_page))
        .route("/console/jobs/{id}/cancel", post(console::cancel_job))
        .route("/console/models", get(console::models_page))
        .route("/console/models/{name}", get(console::model_page))
        .route("/console/models/{name}/versions/{version}", get(console::model_version_page))
        .route("/console/models/{name}/aliases/confirm", post(console::confirm_alias))
        .route("/console/models/{name}/aliases", post(console::move_alias))
        .route("/console/deployments", get(console::deployments_page))
        .route("/console/deployments/{name}", get(console::deployment_page))
        .route("/console/pipelines", get(console::pipelines_page))
        .route("/console/pipelines/{name}", get(console::pipeline_page))
        .route("/console/audit", get(console::audit_page))
        .route("/console/audit/records/{index}", get(console::audit_record_page))
        .route("/console/assets/{name}", get(console::asset))
}

/// Gives the request its ids (the server's own and the client's, validated); the header the
/// span and the response carry is the client's id, or the server's when it sent none.
async fn identify_request(mut request: Request, next: Next) -> Response {
    let ids = match RequestIds::new(request.headers().get(REQUEST_ID_HEADER).map(|v| v.as_bytes())) {
        Ok(ids) => ids,
        Err(error) => return error.into_response(),
    };
    if let Ok(value) = axum::http::HeaderValue::from_str(ids.echoed()) {
        request.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    request.extensions_mut().insert(ids);
    next.run(request).await
}

/// The OpenAI-compatible routes, with their own body bound: any key of any role may call them,
/// and a prompt is parsed, templated and tokenized, so its bytes are bounded well below the
/// control plane's.
fn inference_routes(max_request_bytes: usize) -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(openai::models))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .layer(DefaultBodyLimit::max(max_request_bytes))
}

/// The Batch API: a file upload may be as large as `batch.max_file_mb` (plus its form's
/// framing), streamed to the object store, never held whole.
fn batch_routes(max_file_bytes: u64) -> Router<AppState> {
    let upload_limit = usize::try_from(max_file_bytes).unwrap_or(usize::MAX).saturating_add(64 * 1024);
    Router::new()
        .route(
            FILES_ROUTE,
            post(batches::upload_file).get(batches::list_files).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/v1/files/{id}", get(batches::show_file).delete(batches::delete_file))
        .route(FILE_CONTENT_ROUTE, get(batches::file_content))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{id}", get(batches::show))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not accept that method")
}

/// Admits the request (within the server's, its tenant's and, for transfers, the transfer
/// limits; an upload must also keep up the minimum rate), bounds its time, and records its
/// metrics.
async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let transfer = TRANSFER_ROUTES.contains(&route.as_str());
    let secret = crate::extract::bearer_secret(request.headers()).map(str::to_string);
    // The server's slot first, so looking the key up is itself bounded; then the tenant's share.
    let admitted = match state.admission.slot(transfer) {
        Ok(slot) => {
            let tenant = match secret {
                Some(secret) => bearer_tenant(&state, &secret).await,
                None => None,
            };
            slot.for_tenant(tenant.as_deref())
        }
        Err(refusal) => Err(refusal),
    };
    let response = match admitted {
        Err(Refusal::Server) => {
            ApiError::overloaded("the server is at its concurrent request limit; retry shortly", 1).into_response()
        }
        Err(Refusal::Tenant { limit }) => {
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "tenant_in_flight_limit",
                format!("your tenant has {limit} requests of this kind in flight, its share; retry shortly"),
            );
            error.retry_after_secs = Some(1);
            error.into_response()
        }
        Ok(_admitted) => {
            state.metrics.in_flight.inc();
            let timeout = if transfer {
                let server = &state.config.server;
                let body = std::mem::take(request.body_mut());
                *request.body_mut() =
                    crate::admission::at_least(body, server.min_transfer_bytes_per_sec, server.transfer_grace);
                state.config.datasets.transfer_timeout
            } else {
                state.config.server.request_timeout
            };
            // Dropping the handler future on timeout rolls back any open transaction.
            let response = match tokio::time::timeout(timeout, next.run(request)).await {
                Ok(response) => response,
                Err(_) => ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!("the request took longer than {} s and was abandoned", timeout.as_secs()),
                )
                .into_response(),
            };
            state.metrics.in_flight.dec();
            response
        }
    };
    let labels = RequestLabels { route: route.clone(), method, status: response.status().as_u16() };
    state.metrics.requests.get_or_create(&labels).inc();
    state.metrics.request_seconds.get_or_create(&RouteLabels { route }).observe(started.elapsed().as_secs_f64());
    response
}

/// The tenant of a valid API key of a tenant: what its in-flight share is counted against.
/// (The handler authenticates the key again, from the same kept lookup.)
async fn bearer_tenant(state: &AppState, secret: &str) -> Option<String> {
    let key = state.lookups.key(secret).await.ok()??;
    key.tenant.map(|tenant| tenant.to_string())
}
