//! The router's command line (`RouterArgs`, `ProxyArgs`) and the validated `RouterConfig` built
//! from it once at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderValue;

use crate::balance::Balance;
use crate::error::{Error, Result};

/// `sdplane router` configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterArgs {
    /// Address the data plane listens on; port 0 picks a free one (printed as `SDPLANE_LISTENING <addr>`).
    #[arg(long, env = "SDPLANE_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,
    /// Controller's internal API.
    #[arg(long, env = "SDPLANE_CONTROLLER_URL", default_value = "http://127.0.0.1:8001")]
    pub controller_url: String,
    /// Bearer token sent to the controller (the controller's `--admin-token`); none when unset.
    #[arg(long, env = "SDPLANE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Threads serving the data plane. 1 runs it on tokio's single-threaded runtime: on 2 cores
    /// that cost ~30% less CPU per request than the multi-threaded one (no cross-thread
    /// wake-ups; BENCHMARKS.md) and still forwards ~15k requests/s; more spreads it over cores.
    #[arg(long, env = "SDPLANE_ROUTER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

impl RouterArgs {
    /// The tokio runtime the `sdplane router` role runs on (`--threads`).
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = if self.threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(self.threads));
            builder
        };
        builder.enable_all().build()
    }
}

/// How the data plane proxies and answers for cold apps; `sdplane up` flattens this too.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Longest a client's `Prefer: wait=N` may hold a request for a cold app.
    #[arg(long, env = "SDPLANE_MAX_WAIT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub max_wait: Duration,
    /// Smallest `Retry-After` answered while an app starts (whole seconds).
    #[arg(long, env = "SDPLANE_RETRY_AFTER_MIN", default_value = "2s", value_parser = humantime::parse_duration)]
    pub retry_after_min: Duration,
    /// `Retry-After` answered with the 503 of an app whose start failed.
    #[arg(long, env = "SDPLANE_RETRY_AFTER_FAILED", default_value = "30s", value_parser = humantime::parse_duration)]
    pub retry_after_failed: Duration,
    /// Longest wait for a replica's response headers before answering 504.
    #[arg(long, env = "SDPLANE_UPSTREAM_TIMEOUT", default_value = "300s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,
    /// How requests spread across the ready replicas of one app.
    #[arg(long, env = "SDPLANE_BALANCE", value_enum, default_value_t = Balance::RoundRobin)]
    pub balance: Balance,
    /// How often per-app in-flight counts and idle times are reported to the controller.
    #[arg(long, env = "SDPLANE_ACTIVITY_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub activity_interval: Duration,
}

impl Default for ProxyArgs {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(120),
            retry_after_min: Duration::from_secs(2),
            retry_after_failed: Duration::from_secs(30),
            upstream_timeout: Duration::from_secs(300),
            balance: Balance::RoundRobin,
            activity_interval: Duration::from_secs(1),
        }
    }
}

/// Validated router settings (everything but the listen address, which `serve` gets as a socket).
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Base URL of the controller, without a trailing slash.
    pub controller_url: reqwest::Url,
    /// `Authorization` value for controller calls (`Bearer <token>`).
    pub admin_authorization: Option<HeaderValue>,
    /// Cap on `Prefer: wait`.
    pub max_wait: Duration,
    /// Smallest `Retry-After`, whole seconds, at least 1.
    pub retry_after_min_s: u64,
    /// `Retry-After` of a failed app, whole seconds, at least 1.
    pub retry_after_failed_s: u64,
    /// Deadline for a replica's response headers.
    pub upstream_timeout: Duration,
    /// Endpoint choice among ready replicas.
    pub balance: Balance,
    /// Period of activity reports.
    pub activity_interval: Duration,
}

/// Longest accepted `--max-wait`: a held request is an open connection, an hour is plenty.
const MAX_MAX_WAIT: Duration = Duration::from_secs(3600);

impl RouterConfig {
    /// Validate the command line.
    pub fn from_args(args: &RouterArgs) -> Result<Self> {
        Self::new(&args.controller_url, args.admin_token.as_deref(), &args.proxy)
    }

    /// Validate settings given piecewise (as `sdplane up` does, which knows its controller's address).
    pub fn new(controller_url: &str, admin_token: Option<&str>, proxy: &ProxyArgs) -> Result<Self> {
        let url = reqwest::Url::parse(controller_url)
            .map_err(|e| Error::Config(format!("--controller-url {controller_url:?}: {e}")))?;
        if url.scheme() != "http" {
            // This build carries no TLS stack for controller calls; inside a cluster or on
            // loopback plain HTTP is what the controller serves.
            return Err(Error::Config(format!(
                "--controller-url {controller_url:?}: only http:// is supported"
            )));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Error::Config(format!(
                "--controller-url {controller_url:?}: must not carry a query or fragment"
            )));
        }
        let admin_authorization = match admin_token {
            None => None,
            Some("") => return Err(Error::Config("--admin-token is empty".into())),
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    Error::Config("--admin-token holds characters not allowed in an HTTP header".into())
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        if proxy.max_wait > MAX_MAX_WAIT {
            return Err(Error::Config(format!(
                "--max-wait {} is longer than the 1 h the router accepts",
                humantime::format_duration(proxy.max_wait)
            )));
        }
        let whole_seconds = |d: Duration, flag: &str| -> Result<u64> {
            // Retry-After carries whole seconds (RFC 9110 §10.2.3); 0 would invite a busy loop.
            let s = d.as_secs();
            if s == 0 {
                return Err(Error::Config(format!("{flag} must be at least 1s")));
            }
            Ok(s)
        };
        if proxy.upstream_timeout.is_zero() {
            return Err(Error::Config("--upstream-timeout must be more than 0".into()));
        }
        if proxy.activity_interval < Duration::from_millis(50)
            || proxy.activity_interval > Duration::from_secs(60)
        {
            return Err(Error::Config(
                "--activity-interval must lie within 50ms..=60s".into(),
            ));
        }
        Ok(Self {
            controller_url: url,
            admin_authorization,
            max_wait: proxy.max_wait,
            retry_after_min_s: whole_seconds(proxy.retry_after_min, "--retry-after-min")?,
            retry_after_failed_s: whole_seconds(proxy.retry_after_failed, "--retry-after-failed")?,
            upstream_timeout: proxy.upstream_timeout,
            balance: proxy.balance,
            activity_interval: proxy.activity_interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str, token: Option<&str>, proxy: ProxyArgs) -> Result<RouterConfig> {
        RouterConfig::new(url, token, &proxy)
    }

    #[test]
    fn defaults_validate_and_token_becomes_a_sensitive_bearer_header() {
        let c = config("http://127.0.0.1:8001", Some("s3cret"), ProxyArgs::default()).expect("valid");
        let auth = c.admin_authorization.expect("token set");
        assert_eq!(auth.to_str().ok(), Some("Bearer s3cret"));
        assert!(auth.is_sensitive());
        assert_eq!(c.retry_after_min_s, 2);
        assert_eq!(c.max_wait, Duration::from_secs(120));
    }

    #[test]
    fn bad_settings_are_refused_with_the_flag_named() {
        let cases: Vec<(&str, Option<&str>, ProxyArgs, &str)> = vec![
            ("not a url", None, ProxyArgs::default(), "--controller-url"),
            ("https://ctl:8001", None, ProxyArgs::default(), "only http://"),
            ("http://ctl:8001/?x=1", None, ProxyArgs::default(), "query"),
            ("http://ctl:8001", Some(""), ProxyArgs::default(), "--admin-token"),
            (
                "http://ctl:8001",
                Some("a\nb"),
                ProxyArgs::default(),
                "--admin-token",
            ),
            (
                "http://ctl:8001",
                None,
                ProxyArgs {
                    retry_after_min: Duration::from_millis(500),
                    ..ProxyArgs::default()
                },
                "--retry-after-min",
            ),
            (
                "http://ctl:8001",
                None,
                ProxyArgs {
                    max_wait: Duration::from_secs(7200),
                    ..ProxyArgs::default()
                },
                "--max-wait",
            ),
            (
                "http://ctl:8001",
                None,
                ProxyArgs {
                    upstream_timeout: Duration::ZERO,
                    ..ProxyArgs::default()
                },
                "--upstream-timeout",
            ),
        ];
        for (url, token, proxy, needle) in cases {
            let err = config(url, token, proxy).expect_err(needle).to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }
}
