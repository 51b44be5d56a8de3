//! `POST /api/dev/token` (only with `--dev-auth`): mints a one-hour HS256 token for a demo user.
//! In production tokens come from the shop's identity provider and this route does not exist.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::orders::parse_json;
use crate::{
    domain::UserId,
    http::{ApiError, Authenticator},
};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequest {
    pub user_id: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub token: String,
}

#[utoipa::path(post, path = "/api/dev/token", tag = "dev", request_body = TokenRequest,
    responses((status = 200, body = TokenResponse), (status = 422, body = crate::http::problem::Problem)))]
pub async fn mint(auth: web::Data<Authenticator>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: TokenRequest = parse_json(&body)?;
    let user = UserId::parse(&req.user_id).map_err(|message| ApiError::Invalid { field: "userId".into(), message })?;
    let token = auth.mint(&user, Duration::from_secs(3600)).ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(TokenResponse { token }))
}
