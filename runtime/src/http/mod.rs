//! The HTTP edge: the data-plane and admin listeners ([`server`]), their TLS ([`tls`]), the
//! admin API ([`admin`]), its authentication ([`auth`]: the bearer token and dashboard
//! sessions) and the dashboard ([`ui`]). Policy (which addresses, which token) comes from the CLI; this
//! layer only serves.

pub mod admin;
pub mod auth;
pub mod server;
pub mod tls;
pub mod ui;
