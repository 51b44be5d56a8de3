//! The roles this binary can play and the set `--role` names (`accept,notify`, `all`): parsing,
//! display and the rule that `all` is the three roles together.

use std::{collections::BTreeSet, fmt, str::FromStr};

/// A role this binary can play (CONTRACT §1). `all` is a spelling of the three together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Accept,
    Process,
    Notify,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Accept, Role::Process, Role::Notify];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Accept => "accept",
            Role::Process => "process",
            Role::Notify => "notify",
        }
    }
}

/// The set of roles one process plays, parsed from `accept,notify` or `all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSet {
    roles: BTreeSet<Role>,
    /// `all` was asked for: embedded defaults apply where URLs are not given (CONTRACT §1).
    pub all: bool,
}

impl RoleSet {
    pub fn contains(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn iter(&self) -> impl Iterator<Item = Role> + '_ {
        self.roles.iter().copied()
    }
}

impl fmt::Display for RoleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.all {
            return f.write_str("all");
        }
        let names: Vec<_> = self.iter().map(Role::as_str).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for RoleSet {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let mut roles = BTreeSet::new();
        let mut all = false;
        for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "accept" => roles.insert(Role::Accept),
                "process" => roles.insert(Role::Process),
                "notify" => roles.insert(Role::Notify),
                "all" => {
                    all = true;
                    roles.extend(Role::ALL);
                    true
                }
                other => return Err(format!("unknown role '{other}': valid roles are accept, process, notify, all")),
            };
        }
        if roles.is_empty() {
            return Err("no role given: valid roles are accept, process, notify, all".into());
        }
        Ok(Self { roles, all })
    }
}
