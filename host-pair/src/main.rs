//! `host-pair`: the operator's pairing service. It serves links: each link
//! is a Shared Buffers region and two sbnet virtio-net functions on
//! vfio-user sockets (QEMU's `vfio-user-pci` or the PMD in host-process
//! mode), with packets switched between the two. One process serves every
//! link of a host (`--config`), or one (`--socket A --socket B`); a control
//! socket adds, removes and reports links while it runs. See
//! `docs/operator-guide.md` and `docs/many-links.md`.
//!
//! Modules: `config` (link specs, the TOML file), `link` (one running
//! link), `service` (links and switch threads), `ctl` (control socket and
//! client), `stats` (counter lines and JSON), `metrics` (Prometheus text).

mod config;
mod ctl;
mod link;
mod metrics;
mod serve;
mod service;
mod stats;

use clap::{Parser, Subcommand};
use config::CtlParams;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "host-pair",
    version,
    about = "Serve sbnet links: each pairs two virtio-net functions over vfio-user, zero-copy between Shared Buffers slots, one copy otherwise.",
    long_about = "Serve sbnet links: each pairs two virtio-net functions over vfio-user, zero-copy between \
                  Shared Buffers slots, one copy otherwise.\n\n\
                  `host-pair serve --socket A --socket B` serves one link; `host-pair serve --config FILE` \
                  serves every link of a TOML file; `host-pair ctl --control PATH ...` lists, reports, adds \
                  and removes links of a running service. See docs/operator-guide.md and docs/many-links.md."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve links and switch packets within each until SIGINT/SIGTERM.
    ///
    /// One link: `--socket A --socket B` (side 0 on A, side 1 on B; the
    /// link is named "default"). Many: `--config FILE` (docs/many-links.md).
    /// Connect QEMU (10.1 or later) with
    /// `-device '{"driver":"vfio-user-pci","socket":{"type":"unix","path":"PATH"}}'`
    /// or a PMD with `sbnet-testpmd --socket PATH`. SIGUSR1 prints the
    /// counters, a line per link and side. See docs/operator-guide.md.
    Serve(serve::ServeArgs),
    /// Talk to a running `host-pair serve --control PATH`: list, stats,
    /// add or remove links. Prints the service's JSON reply; exits 1 when
    /// the service refused the request.
    Ctl(CtlArgs),
}

#[derive(Parser, Debug)]
struct CtlArgs {
    /// The service's control socket (`serve --control PATH`).
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    /// Seconds to wait for the reply.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    op: CtlOp,
}

#[derive(Subcommand, Debug)]
enum CtlOp {
    /// Every link: name, sockets, switch thread, parameters.
    List,
    /// Counters of every link, or of LINK (the objects of --stats-json's `links`).
    Stats {
        /// Only this link.
        link: Option<String>,
    },
    /// Serve a new link. Both sockets are bound before it goes live;
    /// parameters left out take the service's defaults (the config file's
    /// [defaults], or serve's flags).
    Add {
        /// The link's name: 1 to 64 of A-Z a-z 0-9 _ . -
        link: String,
        /// vfio-user socket path; give it twice (side 0, then side 1).
        #[arg(long = "socket", value_name = "PATH", required = true)]
        sockets: Vec<PathBuf>,
        #[command(flatten)]
        params: CtlParams,
    },
    /// Unplug a link: its servers stop, a connected VMM or PMD sees its
    /// socket close; other links are untouched.
    Remove {
        /// The link's name.
        link: String,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SBNET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Serve(a) => serve::serve(a),
        Cmd::Ctl(a) => ctl_main(a),
    };
    if let Err(e) = res {
        eprintln!("host-pair: error: {e:#}");
        std::process::exit(1);
    }
}

fn ctl_main(a: CtlArgs) -> anyhow::Result<()> {
    let req = match a.op {
        CtlOp::List => ctl::Request::List,
        CtlOp::Stats { link } => ctl::Request::Stats { link },
        CtlOp::Add {
            link,
            sockets,
            params,
        } => {
            // The service resolves paths from its own directory: send absolute ones.
            let cwd = std::env::current_dir()?;
            ctl::Request::Add {
                link,
                sockets: sockets.iter().map(|p| cwd.join(p)).collect(),
                params,
            }
        }
        CtlOp::Remove { link } => ctl::Request::Remove { link },
    };
    let reply = ctl::request(&a.control, &req, std::time::Duration::from_secs(a.timeout))?;
    println!("{}", serde_json::to_string_pretty(&reply)?);
    if reply["ok"] != true {
        anyhow::bail!(
            "{}",
            reply["error"]
                .as_str()
                .unwrap_or("the service refused the request")
        );
    }
    Ok(())
}
