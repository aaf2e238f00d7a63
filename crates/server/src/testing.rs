//! A factory opened in-process for the service-level tests: a fresh data directory with SQLite
//! and local objects, and callers made through the governed path (a tenant and an API key
//! created by the platform admin, looked up by their secret as a request would).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use factory_config::{Config, FlagOverrides};
use factory_core::{AccessRequest, Action, Jurisdiction, Resource, Role, TenantName};
use factory_store::Event;

use crate::caller::Caller;
use crate::state::AppState;

pub struct TestFactory {
    pub state: AppState,
    pub admin: Caller,
    /// Removed when the factory is dropped.
    _dir: tempfile::TempDir,
}

impl TestFactory {
    /// Opens a factory whose one site (`local`, every kind) is in the `eu` jurisdiction.
    pub async fn open() -> TestFactory {
        let dir = tempfile::tempdir().unwrap();
        let flags = FlagOverrides {
            data_dir: Some(dir.path().to_path_buf()),
            jurisdiction: Some("eu".to_string()),
            ..FlagOverrides::default()
        };
        let config = Config::load(None, Vec::<(String, String)>::new(), &flags).unwrap();
        let opened = crate::startup::open(config).await.unwrap();
        let secret = opened.new_admin_key.expect("a fresh factory makes its platform admin");
        let key = opened.state.lookups.key(&secret).await.unwrap().unwrap();
        let admin =
            Caller { principal: key.principal(), request_id: "test-admin".to_string(), client_request_id: None };
        TestFactory { state: opened.state, admin, _dir: dir }
    }

    /// A caller with a key of `role` in `tenant`, which is created (allowing `eu`) if it is new.
    pub async fn caller(&self, tenant: &str, role: Role) -> Caller {
        let state = &self.state;
        let name = TenantName::new(tenant).unwrap();
        if state.store.tenant(&name).await.unwrap().is_none() {
            let request = AccessRequest::new(&self.admin.principal, Action::TenantCreate, Resource::platform());
            let mut change = state.store.begin_change(state.pdp.as_ref(), request, "test-tenant").await.unwrap();
            change.create_tenant(&name, &[Jurisdiction::new("eu").unwrap()]).await.unwrap();
            let details = serde_json::json!({ "tenant": tenant });
            change.commit(details.clone(), Event::new("tenant.created", details)).await.unwrap();
        }
        let request = AccessRequest::new(&self.admin.principal, Action::KeyCreate, Resource::tenant(&name))
            .with_context("role", role.as_str());
        let mut change = state.store.begin_change(state.pdp.as_ref(), request, "test-key").await.unwrap();
        let issued = change.create_api_key(Some(&name), role, "service test", None).await.unwrap();
        let details = serde_json::json!({ "key": issued.key.id });
        change.commit(details.clone(), Event::new("key.created", details)).await.unwrap();
        let key = state.lookups.key(&issued.secret).await.unwrap().unwrap();
        Caller { principal: key.principal(), request_id: format!("test-{tenant}-{role}"), client_request_id: None }
    }
}
