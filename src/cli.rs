//! The command line (clap definitions only).

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// edge: an HTTPS edge server with mutual TLS done right.
#[derive(Debug, Parser)]
#[command(name = "edge", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the sites of an Edgefile.
    Run {
        /// The Edgefile.
        #[arg(long, short = 'c', default_value = "Edgefile")]
        config: PathBuf,
        /// Do not watch the Edgefile and the files it names for changes.
        #[arg(long)]
        no_watch: bool,
    },
    /// Check an Edgefile: print "valid", or every problem as FILE:LINE:COLUMN.
    Validate {
        /// The Edgefile.
        #[arg(long, short = 'c', default_value = "Edgefile")]
        config: PathBuf,
    },
    /// Ask the running server (its admin API) to reload the Edgefile now.
    Reload {
        /// The Edgefile the server runs (its `admin` address is used).
        #[arg(long, short = 'c', default_value = "Edgefile")]
        config: PathBuf,
    },
    /// Operate the built-in certificate authorities (safe while edge runs).
    Ca {
        /// What to do.
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Keep a client certificate fresh: renew it over EST before it expires.
    Agent(AgentArgs),
    /// Rewrite an Edgefile in canonical form (comments kept).
    Fmt {
        /// The Edgefile.
        #[arg(long, short = 'c', default_value = "Edgefile")]
        config: PathBuf,
        /// Write nothing; exit 1 if the file is not in canonical form.
        #[arg(long)]
        check: bool,
    },
}

/// `edge ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// List issued certificates: serial, cn, ou, not-after, status.
    List {
        /// The Edgefile that declares the CA.
        #[arg(long, short = 'c', default_value = "Edgefile")]
        config: PathBuf,
        /// Only this CA.
        #[arg(long)]
        ca: Option<String>,
    },
    /// Issue a client certificate and its key into a folder.
    Issue {
        #[command(flatten)]
        ca: OneCa,
        #[command(flatten)]
        identity: NewIdentity,
        /// DNS subject alternative names.
        #[arg(long)]
        san_dns: Vec<String>,
        /// URI subject alternative names.
        #[arg(long)]
        san_uri: Vec<String>,
        /// Lifetime (90s, 15m, 24h, 30d); the CA's cert-lifetime by default.
        #[arg(long)]
        lifetime: Option<String>,
        /// Folder for CN.crt, CN.key (mode 0600) and ca.crt; created if missing.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a one-time enrollment token for an identity.
    Token {
        #[command(flatten)]
        ca: OneCa,
        #[command(flatten)]
        identity: NewIdentity,
        /// How long the token is valid; the CA's token-lifetime by default.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Revoke a certificate by serial, or every certificate of an identity.
    Revoke {
        #[command(flatten)]
        ca: OneCa,
        /// The serial, as `edge ca list` prints it.
        #[arg(long, conflicts_with = "cn", required_unless_present = "cn")]
        serial: Option<String>,
        /// Revoke every unexpired certificate of this identity and disable it.
        #[arg(long)]
        cn: Option<String>,
        /// unspecified, key-compromise, affiliation-changed, superseded,
        /// cessation-of-operation, privilege-withdrawn.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Print the CA certificate (PEM).
    Root {
        #[command(flatten)]
        ca: OneCa,
    },
}

/// The Edgefile and the one CA a `ca` command acts on.
#[derive(Debug, clap::Args)]
pub struct OneCa {
    /// The Edgefile that declares the CA.
    #[arg(long, short = 'c', default_value = "Edgefile")]
    pub config: PathBuf,
    /// The CA.
    #[arg(long)]
    pub ca: String,
}

/// The identity a certificate or a token is for.
#[derive(Debug, clap::Args)]
pub struct NewIdentity {
    /// The identity's common name.
    #[arg(long)]
    pub cn: String,
    /// Organisational units (repeat for several).
    #[arg(long)]
    pub ou: Vec<String>,
}

/// `edge agent`
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The enrollment site's base URL, e.g. https://pki.localhost:8443
    #[arg(long)]
    pub url: String,
    /// The client certificate to keep fresh (PEM chain).
    #[arg(long)]
    pub cert: PathBuf,
    /// Its private key (PEM); replaced with a new one at every renewal.
    #[arg(long)]
    pub key: PathBuf,
    /// The CA certificate that signs the enrollment site's certificate.
    #[arg(long)]
    pub ca_file: PathBuf,
    /// Renew now, once, and exit (for cron).
    #[arg(long)]
    pub once: bool,
    /// A command to run (with sh -c) after each renewal.
    #[arg(long)]
    pub exec: Option<String>,
}
