//! What two sdplane roles share: the HTTP wire types of the contract, the app-name rule and
//! the header-only checkpoint detection (the controller lists models with it, the replica loads
//! them with it), kept free of candle so the router and controller build in seconds.

pub mod admin;
pub mod api;
pub mod app_name;
pub mod checkpoint;
pub mod error;

pub use app_name::app_name_for_file;
pub use error::{ErrorBody, ErrorDetail};
