//! PLACEHOLDER until the users-file branch lands.
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsersError(String);

#[derive(Debug, Default)]
pub struct Users {
    users: HashMap<String, User>,
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|e| UsersError(e.to_string()))?;
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            user: Vec<Entry>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            name: String,
            password: String,
            #[serde(default)]
            sender_domains: Vec<String>,
            messages_per_hour: Option<u32>,
            recipients_per_message_max: Option<u32>,
        }
        let file: File = toml::from_str(&text).map_err(|e| UsersError(e.to_string()))?;
        Ok(Users {
            users: file
                .user
                .into_iter()
                .map(|e| {
                    (
                        e.name.clone(),
                        User {
                            name: e.name,
                            password: e.password,
                            policy: UserPolicy {
                                sender_domains: e.sender_domains,
                                messages_per_hour: e.messages_per_hour,
                                recipients_per_message_max: e.recipients_per_message_max,
                            },
                        },
                    )
                })
                .collect(),
        })
    }
    pub fn empty() -> Users {
        Users::default()
    }
    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }
    pub fn len(&self) -> usize {
        self.users.len()
    }
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub password: String,
    pub policy: UserPolicy,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserPolicy {
    pub sender_domains: Vec<String>,
    pub messages_per_hour: Option<u32>,
    pub recipients_per_message_max: Option<u32>,
}

impl UserPolicy {
    pub fn allows_sender_domain(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.sender_domains.is_empty()
            || self.sender_domains.iter().any(|d| {
                let d = d.to_ascii_lowercase();
                match d.strip_prefix('.') {
                    Some(parent) => domain.ends_with(&d) || domain == parent,
                    None => domain == d,
                }
            })
    }
}
