//! The console: the factory in a browser, served by the binary itself at `/console`. Pages are
//! rendered here from templates compiled into the binary (`console/*.html`, auto-escaped), with
//! the stylesheet, script and icon beside them; nothing is fetched from anywhere else (the
//! Content-Security-Policy says so to the browser). A browser signs in with an API key and gets
//! a session cookie (HttpOnly, SameSite=Strict, Secure behind TLS); every form carries the
//! session's CSRF token; each page calls the same services as the API, as the session's key.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use factory_core::secrets::{encode_hex, random_bytes};
use factory_core::{AccessRequest, Action, Classification, PolicyDecisionPoint, Resource, TenantName};
use factory_store::sessions::Session;
use serde::Deserialize;

use crate::caller::Caller;
use crate::extract::{cookie, RequestIds, SESSION_COOKIE};
use crate::service::sessions;
use crate::service_error::{ErrorKind, ServiceError};
use crate::state::AppState;

/// The sign-in form's own token (double-submitted), so no other site can sign a browser in.
const SIGN_IN_COOKIE: &str = "factory_sign_in";
const SIGN_IN: &str = "/console/sign-in";
/// The most bytes of a sign-in form's key.
const MAX_KEY_BYTES: usize = 256;

/// What a console page may load: only this origin's own files; no frames, no other origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A page of the console's navigation, and the question whose answer shows its link: what the
/// page itself asks (and audits) when it is opened; the link is only a hint.
struct NavItem {
    href: &'static str,
    label: &'static str,
    asks: fn(&TenantName) -> (Action, Resource),
}

/// The tenant's pages, in the navigation between the overview and the audit page (which every
/// key may open).
const PAGES: &[NavItem] = &[
    NavItem {
        href: "/console/datasets",
        label: "Datasets",
        asks: |t| (Action::DatasetRead, Resource::dataset_catalogue(t)),
    },
    NavItem { href: "/console/jobs", label: "Jobs", asks: |t| (Action::JobRead, Resource::job("*", t)) },
    NavItem {
        href: "/console/models",
        label: "Models",
        asks: |t| (Action::ModelRead, Resource::model(t, "*", Classification::Public, None)),
    },
    NavItem {
        href: "/console/deployments",
        label: "Deployments",
        asks: |t| (Action::DeploymentRead, Resource::deployment(t, "*")),
    },
    NavItem {
        href: "/console/pipelines",
        label: "Pipelines",
        asks: |t| (Action::PipelineRead, Resource::pipeline(t, "*")),
    },
];

mod audit_pages;
mod dataset_pages;
mod deployment_pages;
mod lists;
mod model_pages;
mod pipeline_pages;
mod plot;
mod run_pages;

pub use audit_pages::{audit_page, audit_record_page};
pub use dataset_pages::{dataset_page, dataset_version_page};
pub use deployment_pages::deployment_page;
pub use lists::{datasets, deployments_page, jobs_page, models_page, pipelines_page};
pub use model_pages::{confirm_alias, model_page, model_version_page, move_alias};
pub use pipeline_pages::pipeline_page;
pub use run_pages::{cancel_job, job_page};

fn templates() -> &'static minijinja::Environment<'static> {
    static TEMPLATES: OnceLock<minijinja::Environment<'static>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let mut environment = minijinja::Environment::new();
        for (name, source) in [
            ("layout.html", include_str!("console/layout.html")),
            ("sign_in.html", include_str!("console/sign_in.html")),
            ("overview.html", include_str!("console/overview.html")),
            ("table.html", include_str!("console/table.html")),
            ("audit.html", include_str!("console/audit.html")),
            ("refused.html", include_str!("console/refused.html")),
            ("dataset.html", include_str!("console/dataset.html")),
            ("dataset_version.html", include_str!("console/dataset_version.html")),
            ("job.html", include_str!("console/job.html")),
            ("model.html", include_str!("console/model.html")),
            ("model_version.html", include_str!("console/model_version.html")),
            ("confirm.html", include_str!("console/confirm.html")),
            ("deployment.html", include_str!("console/deployment.html")),
            ("pipeline.html", include_str!("console/pipeline.html")),
            ("audit_record.html", include_str!("console/audit_record.html")),
        ] {
            // Compiled in and checked by the tests: a template that does not parse is a bug.
            if let Err(error) = environment.add_template(name, source) {
                tracing::error!(%error, template = name, "a console template does not compile");
            }
        }
        environment
    })
}

/// A page: the template rendered with `context`, and the headers every console page carries.
fn page(status: StatusCode, template: &str, context: minijinja::Value) -> Response {
    let rendered = templates().get_template(template).and_then(|template| template.render(context));
    let (status, body) = match rendered {
        Ok(body) => (status, body),
        Err(error) => {
            tracing::error!(%error, template, "a console page failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page failed to render".to_string())
        }
    };
    let mut response = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    guard_headers(&mut response, "no-store");
    response
}

fn guard_headers(response: &mut Response, cache: &'static str) {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
}

/// A cookie for this console only: not readable by scripts, never sent by another site's
/// request, and only over TLS when the request came over TLS (through a terminating proxy).
fn set_cookie(headers: &HeaderMap, name: &str, value: &str, max_age_secs: i64) -> HeaderValue {
    let secure = headers.get("x-forwarded-proto").is_some_and(|proto| proto.as_bytes() == b"https");
    let secure = if secure { "; Secure" } else { "" };
    let text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}");
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("factory_session=; Max-Age=0"))
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// What every console request brings: the state, its headers (for cookies) and its ids.
pub struct Visit {
    state: AppState,
    headers: HeaderMap,
    ids: Option<RequestIds>,
}

impl axum::extract::FromRequestParts<AppState> for Visit {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let ids = parts.extensions.get::<RequestIds>().cloned();
        Ok(Visit { state: state.clone(), headers: parts.headers.clone(), ids })
    }
}

impl Visit {
    fn request_id(&self) -> String {
        self.ids.as_ref().map(RequestIds::recorded).unwrap_or_else(|| "unknown".to_string())
    }

    /// The signed-in session and the caller it acts as, or the way to the sign-in page.
    async fn signed_in(&self) -> Result<(Session, Caller), Response> {
        let Some(secret) = cookie(&self.headers, SESSION_COOKIE) else {
            return Err(see_other(SIGN_IN));
        };
        let client = self.ids.as_ref().and_then(|ids| ids.client.clone());
        match sessions::resume(&self.state, secret, self.request_id(), client).await {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Err(see_other(SIGN_IN)),
            Err(error) => Err(refused(None, &error)),
        }
    }
}

/// What a page shows: its template and the values it fills in (beside the layout's).
struct Shown {
    template: &'static str,
    context: minijinja::Value,
}

impl Shown {
    fn new(template: &'static str, context: minijinja::Value) -> Self {
        Shown { template, context }
    }
}

impl Visit {
    /// A page for any signed-in key: `show` builds it through the services, as the session's
    /// caller; a refusal is shown as the services refused it.
    async fn signed_page(
        self,
        current: &str,
        show: impl AsyncFnOnce(&AppState, &Caller) -> Result<Shown, ServiceError>,
    ) -> Response {
        let (session, caller) = match self.signed_in().await {
            Ok(found) => found,
            Err(response) => return response,
        };
        let state = &self.state;
        match show(state, &caller).await {
            Ok(shown) => {
                let context = minijinja::context! { ..shown.context, ..frame(state, &session, &caller, current) };
                page(StatusCode::OK, shown.template, context)
            }
            Err(error) => refused(Some((state, &session, &caller)), &error),
        }
    }

    /// A page of the signed-in key's own tenant (a platform key has none to show).
    async fn tenant_page(
        self,
        current: &str,
        show: impl AsyncFnOnce(&AppState, &Caller, &TenantName) -> Result<Shown, ServiceError>,
    ) -> Response {
        self.signed_page(current, async |state, caller| {
            let tenant = tenant_of(caller)?;
            show(state, caller, &tenant).await
        })
        .await
    }

    /// The signed-in session of a form whose token is the session's, or the page that refuses
    /// it.
    async fn signed_form(&self, csrf: &str) -> Result<(Session, Caller), Response> {
        let (session, caller) = self.signed_in().await?;
        if csrf != session.csrf {
            let error = ServiceError::new(ErrorKind::Forbidden, "the form's token does not match the session");
            return Err(refused(Some((&self.state, &session, &caller)), &error));
        }
        Ok((session, caller))
    }

    /// A form's action, for the signed-in key's tenant: the form's token must be the
    /// session's; `act` does it through the services and says where the browser goes next.
    async fn tenant_action(
        self,
        csrf: &str,
        act: impl AsyncFnOnce(&AppState, &Caller, &TenantName) -> Result<String, ServiceError>,
    ) -> Response {
        let (session, caller) = match self.signed_form(csrf).await {
            Ok(found) => found,
            Err(response) => return response,
        };
        let state = &self.state;
        let done = match tenant_of(&caller) {
            Ok(tenant) => act(state, &caller, &tenant).await,
            Err(error) => Err(error),
        };
        match done {
            Ok(next) => see_other(&next),
            Err(error) => refused(Some((state, &session, &caller)), &error),
        }
    }
}

/// The tenant whose objects a page shows: the key's own.
fn tenant_of(caller: &Caller) -> Result<TenantName, ServiceError> {
    caller.principal.tenant.clone().ok_or_else(|| {
        ServiceError::invalid("a platform key sees no tenant's objects here: sign in with a tenant's key")
    })
}

/// A path segment made safe for a link (names are validated, but a link never trusts that).
fn segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~@".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// A time as RFC 3339, which the page's script shows in the reader's zone.
fn when(millis: i64) -> String {
    factory_core::time::millis_to_rfc3339(millis)
}

/// Who is signed in, and the navigation (the pages this key may open), for the layout.
fn frame(state: &AppState, session: &Session, caller: &Caller, current: &str) -> minijinja::Value {
    let link =
        |href: &str, label: &str| minijinja::context! { href => href, label => label, current => href == current };
    let mut nav = vec![link("/console", "Overview")];
    if let Some(tenant) = &caller.principal.tenant {
        for item in PAGES {
            let (action, resource) = (item.asks)(tenant);
            if state.pdp.decide(&AccessRequest::new(&caller.principal, action, resource)).is_allowed() {
                nav.push(link(item.href, item.label));
            }
        }
    }
    nav.push(link("/console/audit", "Audit"));
    let principal = &caller.principal;
    minijinja::context! {
        who => minijinja::context! {
            key => principal.id, role => principal.role.to_string(),
            tenant => principal.tenant.as_ref().map(|tenant| tenant.to_string()),
        },
        nav => nav,
        csrf => session.csrf,
    }
}

/// A refusal as a page: 403 for what the key may not see, the error's own status otherwise.
fn refused(signed: Option<(&AppState, &Session, &Caller)>, error: &ServiceError) -> Response {
    let status = StatusCode::from_u16(error.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let problem = match error.kind {
        ErrorKind::Forbidden => "This key may not see this page.".to_string(),
        _ => error.message.clone(),
    };
    let context = match signed {
        Some((state, session, caller)) => {
            minijinja::context! { problem => problem, ..frame(state, session, caller, "") }
        }
        None => minijinja::context! { problem => problem },
    };
    page(status, "refused.html", context)
}

pub async fn root() -> Response {
    see_other("/console")
}

pub async fn sign_in_page(headers: HeaderMap) -> Response {
    sign_in_form(&headers, None, StatusCode::OK)
}

/// The sign-in form, with a fresh token in its cookie and its hidden field.
fn sign_in_form(headers: &HeaderMap, problem: Option<&str>, status: StatusCode) -> Response {
    let token = encode_hex(&random_bytes());
    let mut response = page(status, "sign_in.html", minijinja::context! { csrf => token, problem => problem });
    response.headers_mut().append(header::SET_COOKIE, set_cookie(headers, SIGN_IN_COOKIE, &token, 3600));
    response
}

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    api_key: String,
    csrf: String,
}

pub async fn sign_in(visit: Visit, Form(form): Form<SignInForm>) -> Response {
    let Visit { state, headers, .. } = &visit;
    if cookie(headers, SIGN_IN_COOKIE) != Some(form.csrf.as_str()) {
        return sign_in_form(headers, Some("The form expired; sign in again."), StatusCode::FORBIDDEN);
    }
    if form.api_key.len() > MAX_KEY_BYTES {
        return sign_in_form(headers, Some("That is not an API key."), StatusCode::BAD_REQUEST);
    }
    match sessions::sign_in(state, &visit.request_id(), form.api_key.trim()).await {
        Ok(recorded) => {
            let lifetime = (recorded.value.session.expires_at - recorded.value.session.created_at) / 1000;
            let mut response = see_other("/console");
            let headers_out = response.headers_mut();
            headers_out
                .append(header::SET_COOKIE, set_cookie(headers, SESSION_COOKIE, &recorded.value.secret, lifetime));
            headers_out.append(header::SET_COOKIE, set_cookie(headers, SIGN_IN_COOKIE, "", 0));
            response
        }
        Err(error) if error.kind == ErrorKind::Unauthenticated => {
            sign_in_form(headers, Some("That key is unknown, revoked or expired."), StatusCode::UNAUTHORIZED)
        }
        Err(error) => refused(None, &error),
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn sign_out(visit: Visit, Form(form): Form<CsrfForm>) -> Response {
    let Visit { state, headers, .. } = &visit;
    let (session, caller) = match visit.signed_form(&form.csrf).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    if let Err(error) = sessions::sign_out(state, &caller, &session).await {
        return refused(Some((state, &session, &caller)), &error);
    }
    let mut response = see_other(SIGN_IN);
    response.headers_mut().append(header::SET_COOKIE, set_cookie(headers, SESSION_COOKIE, "", 0));
    response
}

pub async fn overview(visit: Visit) -> Response {
    let state = &visit.state;
    let (session, caller) = match visit.signed_in().await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let ends = factory_core::time::millis_to_rfc3339(session.expires_at);
    let context = minijinja::context! { session_ends => ends, ..frame(state, &session, &caller, "/console") };
    page(StatusCode::OK, "overview.html", context)
}

/// The console's stylesheet, script and icon, compiled into the binary.
pub async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind): (&'static str, &'static str) = match name.as_str() {
        "console.css" => (include_str!("console/console.css"), "text/css; charset=utf-8"),
        "console.js" => (include_str!("console/console.js"), "text/javascript; charset=utf-8"),
        "icon.svg" => (include_str!("console/icon.svg"), "image/svg+xml"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    let mut response = ([(header::CONTENT_TYPE, kind)], body).into_response();
    guard_headers(&mut response, "public, max-age=3600");
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_template_compiles_and_escapes() {
        let environment = templates();
        for name in [
            "sign_in.html",
            "overview.html",
            "table.html",
            "audit.html",
            "refused.html",
            "dataset.html",
            "dataset_version.html",
            "job.html",
            "model.html",
            "model_version.html",
            "confirm.html",
            "deployment.html",
            "pipeline.html",
            "audit_record.html",
        ] {
            environment.get_template(name).unwrap();
        }
        let audit = environment.get_template("audit.html").unwrap();
        let unreadable = audit.render(minijinja::context! { checkpoint => "c", readable => false }).unwrap();
        assert!(unreadable.contains("may not read"));
        let record = minijinja::context! { index => 7, action => "session.open" };
        let query = minijinja::context! { action => "session.open" };
        let readable = audit.render(
            minijinja::context! { checkpoint => "c", readable => true, records => vec![record], query => query },
        );
        assert!(readable.unwrap().contains("session.open"));
        let rendered = environment
            .get_template("refused.html")
            .unwrap()
            .render(minijinja::context! { problem => "<script>alert(1)</script>" })
            .unwrap();
        assert!(rendered.contains("&lt;script&gt;") && !rendered.contains("<script>alert"));
    }

    #[test]
    fn cookies_are_read_by_name_and_set_strict() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; factory_session=abc; b=2"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
        let set = set_cookie(&headers, SESSION_COOKIE, "abc", 60);
        assert_eq!(set.to_str().unwrap(), "factory_session=abc; Path=/; HttpOnly; SameSite=Strict; Max-Age=60");
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(set_cookie(&headers, SESSION_COOKIE, "abc", 60).to_str().unwrap().ends_with("; Secure"));
    }
}
