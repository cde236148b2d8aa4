//! The HTTP edge: the data-plane and admin listeners ([`server`]), the admin API
//! ([`admin`]) and its bearer token ([`auth`]). Policy (which addresses, which token) comes
//! from the CLI; this layer only serves.

pub mod admin;
pub mod auth;
pub mod server;
