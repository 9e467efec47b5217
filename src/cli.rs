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
