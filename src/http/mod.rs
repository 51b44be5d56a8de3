//! What every HTTP role shares: problem+json errors, JWT authentication and the request
//! middleware (span, metrics, problem fallback). Only this module knows problem+json.

pub mod auth;
pub mod middleware;
pub mod problem;

pub use auth::{Authenticator, Caller};
pub use problem::ApiError;
