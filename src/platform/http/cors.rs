//! CORS as the original traefik applied it: the same headers on every response, and every
//! preflight (`OPTIONS`) answered here, before routing and authentication.

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::EitherBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{Error, HttpResponse};

use crate::config::CorsConfig;

/// The configured policy with its header values built once.
#[derive(Debug)]
pub struct CorsPolicy {
    any_origin: bool,
    origins: Vec<HeaderValue>,
    methods: Option<HeaderValue>,
    headers: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

impl CorsPolicy {
    pub fn new(config: &CorsConfig) -> Result<Self, String> {
        let value = |name: &str, text: &str| {
            HeaderValue::from_str(text)
                .map_err(|_| format!("http.cors.{name}: not a valid header value"))
        };
        let origins = config
            .allowed_origins
            .iter()
            .filter(|o| *o != "*")
            .map(|o| value("allowed_origins", o))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            any_origin: config.allowed_origins.iter().any(|o| o == "*"),
            origins,
            methods: Some(value("allowed_methods", &config.allowed_methods)?)
                .filter(|v| !v.is_empty()),
            headers: Some(value("allowed_headers", &config.allowed_headers)?)
                .filter(|v| !v.is_empty()),
            credentials: config.allow_credentials,
            max_age: HeaderValue::from(config.max_age_secs),
        })
    }

    /// The `Access-Control-Allow-Origin` for a request from `origin`, or `None` to send no
    /// CORS headers at all (an origin that is not allowed).
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match origin {
            // Browsers refuse `*` on credentialed requests, so echo the origin instead.
            Some(origin) if self.any_origin && self.credentials => Some(origin.clone()),
            _ if self.any_origin => Some(HeaderValue::from_static("*")),
            Some(origin) => self.origins.contains(origin).then(|| origin.clone()),
            None => None,
        }
    }

    fn apply(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap, preflight: bool) {
        let echoes_origin = !self.any_origin || self.credentials;
        if echoes_origin {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        let Some(allow_origin) = self.allow_origin(origin) else {
            return;
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(methods) = &self.methods {
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods.clone());
        }
        if let Some(allowed) = &self.headers {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed.clone());
        }
        if preflight {
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        }
    }
}

/// `Cors(None)` passes every request through untouched (`http.cors.enabled = false`).
pub struct Cors(pub Option<Arc<CorsPolicy>>);

impl<S, B> Transform<S, ServiceRequest> for Cors
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = CorsMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(CorsMiddleware {
            service: Rc::new(service),
            policy: self.0.clone(),
        }))
    }
}

pub struct CorsMiddleware<S> {
    service: Rc<S>,
    policy: Option<Arc<CorsPolicy>>,
}

impl<S, B> Service<ServiceRequest> for CorsMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Error>>>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        let Some(policy) = self.policy.clone() else {
            return Box::pin(async move { Ok(service.call(req).await?.map_into_left_body()) });
        };
        let origin = req.headers().get(header::ORIGIN).cloned();
        if req.method() == Method::OPTIONS {
            let mut response = HttpResponse::new(StatusCode::NO_CONTENT);
            policy.apply(origin.as_ref(), response.headers_mut(), true);
            return Box::pin(ready(Ok(req.into_response(response).map_into_right_body())));
        }
        Box::pin(async move {
            let mut res = service.call(req).await?;
            policy.apply(origin.as_ref(), res.headers_mut(), false);
            Ok(res.map_into_left_body())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> CorsPolicy {
        let config = CorsConfig {
            allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            allow_credentials: credentials,
            ..CorsConfig::default()
        };
        CorsPolicy::new(&config).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn origin_decisions() {
        let a = HeaderValue::from_static("https://a.example");
        let any_creds = policy(&["*"], true);
        assert_eq!(any_creds.allow_origin(Some(&a)), Some(a.clone()));
        assert_eq!(
            any_creds.allow_origin(None),
            Some(HeaderValue::from_static("*"))
        );
        let any = policy(&["*"], false);
        assert_eq!(
            any.allow_origin(Some(&a)),
            Some(HeaderValue::from_static("*"))
        );
        let listed = policy(&["https://a.example"], true);
        assert_eq!(listed.allow_origin(Some(&a)), Some(a));
        assert_eq!(
            listed.allow_origin(Some(&HeaderValue::from_static("https://evil.example"))),
            None
        );
        assert_eq!(listed.allow_origin(None), None);
    }
}
