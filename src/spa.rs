//! Serves the built SPA at `/` (roles `all` and `accept`) when a build is present: static files,
//! and `index.html` for the SPA's own routes when a browser asks for a page. Anything else that
//! matched no route stays a problem+json 404.

use std::path::{Path, PathBuf};

use actix_files::{Files, NamedFile};
use actix_web::{
    dev::{ServiceRequest, ServiceResponse, fn_service},
    http::{StatusCode, header::ACCEPT},
    web,
};

use crate::http::problem::Problem;

/// Where a build may be, relative to the working directory: the Angular output in the repo, or
/// the image's copy (docker/Dockerfile puts the build at `frontend/dist`).
const CANDIDATES: [&str; 2] = ["frontend/dist/frontend/browser", "frontend/dist"];

pub fn find() -> Option<PathBuf> {
    CANDIDATES.iter().map(PathBuf::from).find(|dir| dir.join("index.html").is_file())
}

pub fn configure(cfg: &mut web::ServiceConfig, dir: &Path) {
    let index = dir.join("index.html");
    let root = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    // A symlink inside the build must not serve a file from outside it.
    let inside = move |path: &Path, _: &actix_web::dev::RequestHead| root.join(path).canonicalize().is_ok_and(|p| p.starts_with(&root));
    cfg.service(Files::new("/", dir).index_file("index.html").path_filter(inside).default_handler(fn_service(
        move |req: ServiceRequest| {
            let index = index.clone();
            async move {
                let (req, _) = req.into_parts();
                let wants_page = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/html"));
                let is_app_route = !["/api", "/hubs", "/health", "/metrics"].iter().any(|p| req.path().starts_with(p));
                let res = if wants_page && is_app_route {
                    match NamedFile::open_async(&index).await {
                        Ok(file) => file.into_response(&req),
                        Err(_) => Problem::new(StatusCode::NOT_FOUND, "no such resource").response(),
                    }
                } else {
                    Problem::new(StatusCode::NOT_FOUND, "no such resource").response()
                };
                Ok(ServiceResponse::new(req, res))
            }
        },
    )));
}

#[cfg(test)]
mod tests {
    use actix_web::{App, test};

    use super::*;

    #[actix_web::test]
    async fn files_deep_links_and_api_misses() {
        let dir = std::env::temp_dir().join(format!("contoso-spa-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), "<html>shop</html>").unwrap();
        std::fs::write(dir.join("main.js"), "console.log(1)").unwrap();
        let app = test::init_service(App::new().configure(|cfg| configure(cfg, &dir))).await;
        let get = |path: &str, accept: &str| test::TestRequest::get().uri(path).insert_header((ACCEPT, accept.to_owned())).to_request();

        let res = test::call_service(&app, get("/", "text/html")).await;
        assert_eq!(res.status(), 200);
        assert_eq!(test::read_body(res).await, "<html>shop</html>");
        let res = test::call_service(&app, get("/main.js", "*/*")).await;
        assert_eq!(test::read_body(res).await, "console.log(1)");
        let deep = test::call_service(&app, get("/orders/123", "text/html,application/xhtml+xml")).await;
        assert_eq!(deep.status(), 200, "the SPA's own routes get index.html");
        assert_eq!(test::read_body(deep).await, "<html>shop</html>");
        for (path, accept) in [("/api/nope", "text/html"), ("/orders/123", "application/json"), ("/hubs/x", "text/html")] {
            let res = test::call_service(&app, get(path, accept)).await;
            assert_eq!(res.status(), 404, "{path}");
            assert_eq!(res.headers().get("content-type").unwrap(), "application/problem+json");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[actix_web::test]
    async fn a_symlink_out_of_the_build_serves_nothing() {
        let base = std::env::temp_dir().join(format!("contoso-spa-{}", uuid::Uuid::new_v4()));
        let dir = base.join("build");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), "<html>shop</html>").unwrap();
        std::fs::write(dir.join("app.js"), "ok").unwrap();
        std::fs::write(base.join("secret.txt"), "do not serve").unwrap();
        std::os::unix::fs::symlink(base.join("secret.txt"), dir.join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(dir.join("app.js"), dir.join("alias.js")).unwrap();
        let app = test::init_service(App::new().configure(|cfg| configure(cfg, &dir))).await;
        let leak = test::call_service(&app, test::TestRequest::get().uri("/leak.txt").to_request()).await;
        assert_eq!(leak.status(), 404);
        assert_ne!(test::read_body(leak).await, "do not serve");
        let alias = test::call_service(&app, test::TestRequest::get().uri("/alias.js").to_request()).await;
        assert_eq!(test::read_body(alias).await, "ok", "a link that stays inside the build still works");
        std::fs::remove_dir_all(base).unwrap();
    }
}
