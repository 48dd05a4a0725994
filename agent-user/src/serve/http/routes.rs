//! The paths, authentication and the answers.
use std::{convert::Infallible, sync::Arc};

use agent_core::config::web::{self, Verdict};
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE},
};

use crate::serve::http::{Server, site::Site};

pub async fn handle(
    req: Request<Incoming>,
    site: Arc<Site>,
    server: Arc<Server>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = route(req, &site, server).await;
    for (name, value) in &site.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    Ok(response)
}

async fn route(req: Request<Incoming>, site: &Site, server: Arc<Server>) -> Response<Full<Bytes>> {
    // As exporter-toolkit: with users configured, every path needs them.
    if !site.users.is_empty() && !authenticated(&req, site, &server).await {
        let mut r = reply(StatusCode::UNAUTHORIZED, "text/plain", "Unauthorized\n".into());
        let challenge = format!("Basic realm=\"{}\"", web::REALM);
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            r.headers_mut().insert(WWW_AUTHENTICATE, v);
        }
        return r;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET and HEAD\n".into(),
        );
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => match &*server.metrics.get(&server.endpoints.metrics).await {
            Ok(text) => reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text.clone()),
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n").into()),
        },
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if (server.endpoints.ready)() => reply(StatusCode::OK, "text/plain", "ready\n".into()),
        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n".into()),
        "/api/targets" => match &*server.targets.get(&server.endpoints.targets).await {
            Ok(json) => reply(StatusCode::OK, "application/json", json.clone()),
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n").into()),
        },
        "/" => reply(
            StatusCode::OK,
            "text/html",
            "<html><body><h1>refusal-agent</h1><a href=\"/metrics\">/metrics</a> <a href=\"/api/targets\">/api/targets</a></body></html>\n".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Checks `Authorization: Basic` against the configured users: a cached success costs an HMAC,
/// anything else one bcrypt on the blocking pool, at most [`BCRYPTS`] at once.
async fn authenticated(req: &Request<Incoming>, site: &Site, server: &Arc<Server>) -> bool {
    let Some((user, password)) =
        (req.headers().get(AUTHORIZATION)).and_then(|v| web::parse_basic_authorization(v.as_bytes()))
    else {
        return false;
    };
    if web::verify_cached(&site.users, &server.auth_cache, &user, &password) == Verdict::Allowed {
        return true;
    }
    let permit = server.bcrypts.clone().acquire_owned().await.ok();
    let (users, server) = (site.users.clone(), server.clone());
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        web::verify_slow(&users, &server.auth_cache, &user, &password)
    })
    .await
    .is_ok_and(|v| v == Verdict::Allowed)
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
