//! A factory opened in-process for the service-level tests: a fresh data directory with SQLite
//! and local objects, and callers made through the governed path (a tenant and an API key
//! created by the platform admin, looked up by their secret as a request would).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use factory_config::{Config, FlagOverrides};
use factory_core::{Role, TenantName};

use crate::caller::Caller;
use crate::service::{self, keys::NewKey, tenants::NewTenant};
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

    /// A caller with a key of `role` in `tenant`, which is created (allowing `eu`) if it is new;
    /// both through the use cases the API calls, as the platform admin.
    pub async fn caller(&self, tenant: &str, role: Role) -> Caller {
        let state = &self.state;
        let name = TenantName::new(tenant).unwrap();
        if state.store.tenant(&name).await.unwrap().is_none() {
            let new = NewTenant { name: tenant.to_string(), jurisdictions: vec!["eu".to_string()] };
            service::tenants::create(state, &self.admin, new).await.unwrap();
        }
        let new = NewKey { role: role.to_string(), description: "service test".to_string(), expires_at: None };
        let issued = service::keys::create(state, &self.admin, &name, new).await.unwrap().value;
        let key = state.lookups.key(&issued.secret).await.unwrap().unwrap();
        Caller { principal: key.principal(), request_id: format!("test-{tenant}-{role}"), client_request_id: None }
    }
}
