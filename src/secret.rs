//! `Secret`: a setting's value that must never reach a log line, `--help` or a `Debug`
//! print (passwords in URLs, signing keys). A leaf module, so any layer may hold one without
//! depending on the settings.

use std::{fmt, str::FromStr};

use serde::Deserialize;

/// A value that must never reach a log line or `--help`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}
