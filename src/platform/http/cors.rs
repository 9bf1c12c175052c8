//! CORS as the original traefik applied it: the same headers on every response to a browser
//! (a request with an `Origin`), and preflights answered before routing and authentication
//! (the platform middleware in `request.rs` applies this policy).

use actix_web::http::header::{self, HeaderMap, HeaderValue};

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
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.any_origin {
            // Browsers refuse `*` on credentialed requests, so echo the origin instead.
            return Some(if self.credentials {
                origin.clone()
            } else {
                HeaderValue::from_static("*")
            });
        }
        self.origins.contains(origin).then(|| origin.clone())
    }

    pub fn apply(&self, origin: &HeaderValue, headers: &mut HeaderMap, preflight: bool) {
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
        let evil = HeaderValue::from_static("https://evil.example");
        assert_eq!(policy(&["*"], true).allow_origin(&a), Some(a.clone()));
        let any = policy(&["*"], false);
        assert_eq!(any.allow_origin(&a), Some(HeaderValue::from_static("*")));
        let listed = policy(&["https://a.example"], true);
        assert_eq!(listed.allow_origin(&a), Some(a));
        assert_eq!(listed.allow_origin(&evil), None);
    }
}
