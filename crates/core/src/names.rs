//! Validated names and closed vocabularies. Parsing happens once at the edge (config, HTTP,
//! CLI); past it, code holds a `TenantName` or a `Role` and never re-checks a raw string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A value that does not belong to its vocabulary, with the allowed values spelled out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is invalid: {expected}")]
pub struct NameError {
    pub what: &'static str,
    pub value: String,
    pub expected: String,
}

/// Slugs are what tenants, jurisdictions and sites are called in URLs, policies and audit
/// records, so they are restricted to characters that need no escaping anywhere.
fn check_slug(what: &'static str, value: &str, max_len: usize) -> Result<(), NameError> {
    let valid = !value.is_empty()
        && value.len() <= max_len
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && value.as_bytes()[0].is_ascii_alphanumeric();
    if valid {
        Ok(())
    } else {
        Err(NameError {
            what,
            value: value.to_string(),
            expected: format!(
                "expected 1 to {max_len} characters of a-z, 0-9, '-' or '_', starting with a letter or digit"
            ),
        })
    }
}

macro_rules! slug_type {
    ($(#[$meta:meta])* $name:ident, $what:literal, $max:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
                let value = value.into();
                check_slug($what, &value, $max)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(value: &str) -> Result<Self, NameError> {
                Self::new(value)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, NameError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

slug_type!(
    /// The name of a tenant: the unit of isolation for data, models, keys and budgets.
    TenantName,
    "tenant name",
    63
);
slug_type!(
    /// The name of a dataset, unique within its tenant.
    DatasetName,
    "dataset name",
    63
);
slug_type!(
    /// The name of a registered model, unique within its tenant.
    ModelName,
    "model name",
    63
);
slug_type!(
    /// A model alias such as `production`: a moving name for one of its versions.
    AliasName,
    "alias",
    63
);
slug_type!(
    /// The name of a deployment: what OpenAI clients pass as `model`.
    DeploymentName,
    "deployment name",
    63
);
slug_type!(
    /// The name of a pipeline, unique within its tenant.
    PipelineName,
    "pipeline name",
    63
);
slug_type!(
    /// A legal jurisdiction such as `eu`, `de` or `local`. Data, models and sites carry one,
    /// and residency rules compare them.
    Jurisdiction,
    "jurisdiction",
    32
);

macro_rules! closed_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The allowed spellings, for error messages.
            pub fn allowed() -> String {
                [$($text),+].join(", ")
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(value: &str) -> Result<Self, NameError> {
                match value {
                    $($text => Ok($name::$variant),)+
                    _ => Err(NameError {
                        what: $what,
                        value: value.to_string(),
                        expected: format!("expected one of {}", Self::allowed()),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

closed_enum!(
    /// What an API key may do inside its tenant; policies are written against these.
    Role, "role", {
        Admin => "admin",
        Steward => "steward",
        Engineer => "engineer",
        App => "app",
        Auditor => "auditor",
    }
);

closed_enum!(
    /// How sensitive a resource is, ordered from least to most restricted.
    Classification, "classification", {
        Public => "public",
        Internal => "internal",
        Confidential => "confidential",
        Secret => "secret",
    }
);

closed_enum!(
    /// What a site offers: where bytes rest, where jobs run, where models answer.
    SiteKind, "site kind", {
        Storage => "storage",
        Compute => "compute",
        Serving => "serving",
    }
);

impl Classification {
    /// A number that grows with sensitivity, so policies can compare levels.
    pub fn level(self) -> i64 {
        match self {
            Classification::Public => 0,
            Classification::Internal => 1,
            Classification::Confidential => 2,
            Classification::Secret => 3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_reject_what_would_need_escaping() {
        assert!(TenantName::new("acme-gov").is_ok());
        assert!(TenantName::new("").is_err());
        assert!(TenantName::new("Acme").is_err());
        assert!(TenantName::new("a/b").is_err());
        assert!(TenantName::new("-a").is_err());
        assert!(Jurisdiction::new("x".repeat(33)).is_err());
    }

    #[test]
    fn closed_enums_name_their_allowed_values() {
        let error = "gpu".parse::<SiteKind>().expect_err("gpu is not a site kind");
        assert_eq!(error.to_string(), "site kind \"gpu\" is invalid: expected one of storage, compute, serving");
        assert_eq!("auditor".parse::<Role>(), Ok(Role::Auditor));
        assert!(Classification::Secret.level() > Classification::Public.level());
    }
}
