//! Headers every answer carries: no MIME sniffing, no framing (clickjacking), no referrer, a
//! Content-Security-Policy the SPA runs under (its own scripts only, its hub on the same
//! origin), and `no-store` on API answers, which are per-user and must not sit in a cache.

use actix_web::{
    Error,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::header::{self, HeaderName, HeaderValue},
    middleware::Next,
};

/// The SPA's policy: scripts and styles from its own origin (Angular puts a few styles inline),
/// fetches and the hub's WebSocket to its own origin, nothing framing it.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; \
     form-action 'self'; frame-ancestors 'none'";

const FIXED: [(HeaderName, &str); 4] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
];

pub async fn security_headers<B: MessageBody + 'static>(req: ServiceRequest, next: Next<B>) -> Result<ServiceResponse<B>, Error> {
    let api = req.path().starts_with("/api/") || req.path() == "/api";
    let mut res = next.call(req).await?;
    let headers = res.headers_mut();
    for (name, value) in FIXED {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    if api {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use actix_web::{App, HttpResponse, middleware::from_fn, test, web};

    use super::*;

    #[actix_web::test]
    async fn every_answer_gets_the_fixed_headers_and_api_answers_are_not_stored() {
        let app = test::init_service(
            App::new()
                .wrap(from_fn(security_headers))
                .route("/api/orders", web::get().to(HttpResponse::Ok))
                .route("/", web::get().to(HttpResponse::Ok)),
        )
        .await;
        let api = test::call_service(&app, test::TestRequest::get().uri("/api/orders").to_request()).await;
        let page = test::call_service(&app, test::TestRequest::get().uri("/").to_request()).await;
        for res in [&api, &page] {
            assert_eq!(res.headers().get("x-content-type-options").unwrap(), "nosniff");
            assert_eq!(res.headers().get("x-frame-options").unwrap(), "DENY");
            assert_eq!(res.headers().get("referrer-policy").unwrap(), "no-referrer");
            assert!(res.headers().get("content-security-policy").unwrap().to_str().unwrap().contains("frame-ancestors 'none'"));
        }
        assert_eq!(api.headers().get("cache-control").unwrap(), "no-store");
        assert!(page.headers().get("cache-control").is_none(), "static files keep their own caching");
    }
}
