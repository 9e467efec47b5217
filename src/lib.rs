//! edge: an HTTPS edge server whose headline is mutual TLS done right.
//!
//! The pipeline, from text to served bytes:
//!
//! ```text
//! Edgefile (KDL 2.0)
//!   -> config::parse      typed Model with source spans; every problem as FILE:LINE:COLUMN
//!   -> compile::compile   immutable Snapshot: per-site rustls ServerConfig (client verifier
//!                         with trust, CRLs and allow rules), SNI index per listener, route
//!                         tables, handler chains built by the plugin registry
//!   -> server             listeners: TCP (rustls Acceptor picks the site by SNI, then hyper
//!                         h1/h2); every connection holds the Arc<Snapshot> it started with
//!   -> quic               QUIC crypto that picks the site's rustls config by the ClientHello's
//!                         SNI, so per-site client auth refuses inside the QUIC handshake too
//!   -> http::handle       Host/SNI check (421), path normalisation, route, per-route
//!                         client-auth (403), body limit (413), the handler chain
//! ```
//!
//! Pure decisions (does this certificate satisfy this policy, which site does
//! this name reach, which route does this path reach) live in [`policy`] and
//! take plain data, so they are tested without sockets. So does the built-in
//! certificate authority in [`pki`] (issue, renew, revoke, CRL, enrollment
//! tokens, and the SQLite ledger behind a storage trait), which takes the time
//! as an argument.
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod authority;
pub mod ca_cli;
pub mod cli;
pub mod compile;
pub mod config;
pub mod est;
pub mod h3;
pub mod http;
pub mod metrics;
pub mod pki;
pub mod plugins;
pub mod policy;
pub mod quic;
pub mod server;
pub mod tls;
pub mod util;
pub mod workers;
