//! What every HTTP role shares: problem+json errors, JWT authentication, the request
//! middleware (span, metrics, problem fallback), and the server with its WebSocket upgrades.
//! Only this module knows problem+json.

pub mod auth;
pub mod body_deadline;
pub mod jwks;
pub mod middleware;
pub mod problem;
pub mod rate_limit;
pub mod security_headers;
pub mod server;
pub mod upgrade;

pub use auth::{AuthError, Authenticator, Caller};
pub use problem::ApiError;
