//! Errors of the Kubernetes backend: API calls, invalid SDApp specs, leadership.

/// Result of the Kubernetes backend.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong between the controller and the Kubernetes API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server answered with an error or could not be reached.
    #[error("kubernetes API: {0}")]
    Api(#[from] kube::Error),
    /// An SDApp spec that cannot become a Deployment (bad model path, replica bounds, quantities).
    #[error("invalid SDApp spec: {0}")]
    InvalidSpec(String),
    /// The app name is not a DNS label produced by the app-name rule.
    #[error("invalid app name `{0}`")]
    InvalidName(String),
    /// No SDApp of that name exists in the namespace.
    #[error("app `{0}` not found")]
    NotFound(String),
    /// The autoscaler asked to scale an app that has no SDApp object.
    #[error("app `{0}` has no SDApp object; create it with POST /v1/apps or `kubectl apply`")]
    NoSdApp(String),
    /// An SDApp of that name already exists.
    #[error("app `{0}` already exists")]
    AlreadyExists(String),
    /// This controller does not hold the leader Lease, so it must not scale.
    #[error("this controller is not the leader; another replica owns scaling")]
    NotLeader,
    /// An object came back from the API server without a field it must have.
    #[error("object is missing {0}")]
    MissingField(&'static str),
    /// Kubernetes configuration (in-cluster or kubeconfig) could not be loaded.
    #[error("kubernetes config: {0}")]
    Config(String),
}

impl Error {
    /// Short stable name for logs, metrics and JSON error bodies.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Api(_) => "kube_api",
            Self::InvalidSpec(_) => "invalid_spec",
            Self::InvalidName(_) => "invalid_app_name",
            Self::NotFound(_) => "app_not_found",
            Self::AlreadyExists(_) => "app_exists",
            Self::NoSdApp(_) => "no_sdapp",
            Self::NotLeader => "not_leader",
            Self::MissingField(_) => "missing_field",
            Self::Config(_) => "kube_config",
        }
    }

    /// Whether the API server said the object does not exist (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_)) || api_status(self) == Some(404)
    }

    /// Whether the API server refused a write because the object changed meanwhile (HTTP 409).
    pub fn is_conflict(&self) -> bool {
        api_status(self) == Some(409)
    }
}

/// The HTTP status of an API-server error answer, if this is one.
fn api_status(e: &Error) -> Option<u16> {
    match e {
        Error::Api(kube::Error::Api(status)) => Some(status.code),
        _ => None,
    }
}
