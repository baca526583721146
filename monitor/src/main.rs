//! The `walspool` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use walspool_monitor::cli::{self, DumpOptions, Schema};
use walspool_monitor::collect::is_wal_dir;
use walspool_monitor::demo::{self, DemoOptions, SinkMode};
use walspool_monitor::fleet::{self, Output, ThresholdArgs};
use walspool_monitor::fmt::parse_duration;
use walspool_monitor::tui::{self, TopOptions};

#[derive(Debug, Parser)]
#[command(
    name = "walspool",
    version,
    about = "Watch, inspect and try out walspool write-ahead logs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a small embedded service (appends, a flaky sink, archival) and watch it.
    Demo {
        /// The WAL directory (default: ./walspool-demo).
        #[arg(long, default_value = "walspool-demo")]
        dir: PathBuf,
        /// Records appended per second.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Print status lines instead of opening the dashboard.
        #[arg(long)]
        headless: bool,
        /// Stop after this long (e.g. 5s, 2m; headless only).
        #[arg(long = "for", value_parser = parse_duration)]
        run_for: Option<Duration>,
        /// Segment size in bytes (at least 4096).
        #[arg(long, default_value_t = 256 * 1024)]
        segment_size: u64,
        /// Bound on the WAL's bytes (at least twice the segment size).
        #[arg(long)]
        max_bytes: Option<u64>,
        /// At --max-bytes, drop the oldest segments (counted as dropped) instead of blocking.
        #[arg(long)]
        drop_oldest: bool,
        /// How the sink behaves.
        #[arg(long, value_enum, default_value_t = SinkMode::Flaky)]
        sink: SinkMode,
        /// Share of failed deliveries for the flaky sink, in percent.
        #[arg(long, default_value_t = 10)]
        fail_percent: u32,
        /// Archive directory (default: DIR-archive); --no-archive turns archival off.
        #[arg(long)]
        archive_dir: Option<PathBuf>,
        /// Do not archive sealed segments.
        #[arg(long)]
        no_archive: bool,
        /// Dashboard refresh interval.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        refresh: Duration,
    },
    /// Live dashboard of every WAL under one or more roots (or of WAL directories).
    Top {
        /// Roots searched for WAL directories, or WAL directories themselves.
        #[arg(required = true)]
        roots: Vec<PathBuf>,
        /// Refresh interval.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        refresh: Duration,
        /// How often the roots are searched again for WALs that appeared or went away.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        rescan: Duration,
        #[command(flatten)]
        thresholds: ThresholdArgs,
    },
    /// Print the figures of a WAL, or of every WAL under a root, once. Exits 1 when a
    /// threshold is crossed, 2 when nothing could be read.
    Status {
        /// A WAL directory, or a root searched for WAL directories.
        dir: PathBuf,
        /// JSON, keyed by metric name (for a root: one object per WAL).
        #[arg(long)]
        json: bool,
        /// Prometheus text exposition of every WAL, labelled wal="<name>" (the
        /// node_exporter textfile-collector convention).
        #[arg(long, conflicts_with = "json")]
        prometheus: bool,
        /// Rates are measured over this long (two reads of every WAL).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        sample: Duration,
        #[command(flatten)]
        thresholds: ThresholdArgs,
    },
    /// Print records: sequence, timestamp, size, payload preview.
    Dump {
        /// The WAL directory.
        dir: PathBuf,
        /// First sequence number.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// At most this many records.
        #[arg(long)]
        limit: Option<usize>,
        /// JSON lines.
        #[arg(long)]
        json: bool,
        /// Decode payloads as this postcard type.
        #[arg(long = "as", value_enum, default_value_t = Schema::Hex)]
        schema: Schema,
        /// Bytes of hex preview.
        #[arg(long, default_value_t = 16)]
        preview: usize,
        /// List the dead letters of this consumer (raw bytes, schema version, reason)
        /// instead of the records.
        #[arg(long = "dead-letters", value_name = "CONSUMER")]
        dead_letters: Option<String>,
    },
    /// Rebuild a WAL directory from its archive (s3://bucket/prefix, file:///path).
    Restore {
        /// Archive URL, as given to the archiver.
        #[arg(long)]
        from: String,
        /// Directory to create (must be empty or absent).
        #[arg(long)]
        to: PathBuf,
        /// Which WAL, when the archive holds several.
        #[arg(long)]
        wal_id: Option<String>,
        /// S3 endpoint (e.g. http://127.0.0.1:5055 for a local server); else AWS_ENDPOINT_URL.
        #[arg(long)]
        endpoint: Option<String>,
        /// Allow plain http:// to the endpoint.
        #[arg(long)]
        allow_http: bool,
    },
    /// Check every frame CRC, sequence continuity, headers and footers.
    Verify {
        /// The WAL directory.
        dir: PathBuf,
        /// HMAC key file(s) of a chained WAL: checks every record's MAC and the chain
        /// across segments. Give every key the WAL used (old and new after a rotation).
        #[arg(long = "key-file")]
        key_files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    let code = match cli.cmd {
        Cmd::Demo {
            dir,
            rate,
            headless,
            run_for,
            segment_size,
            max_bytes,
            drop_oldest,
            sink,
            fail_percent,
            archive_dir,
            no_archive,
            refresh,
        } => {
            drop(out);
            let archive_dir = if no_archive {
                None
            } else {
                Some(archive_dir.unwrap_or_else(|| {
                    let mut s = dir.clone().into_os_string();
                    s.push("-archive");
                    PathBuf::from(s)
                }))
            };
            demo::run(DemoOptions {
                dir,
                rate,
                headless,
                run_for,
                segment_size,
                max_bytes,
                drop_oldest,
                sink,
                fail_percent,
                archive_dir,
                refresh,
            })
            .unwrap_or_else(|e| {
                eprintln!("walspool demo: {e}");
                2
            })
        }
        Cmd::Top {
            roots,
            refresh,
            rescan,
            thresholds,
        } => {
            drop(out);
            match thresholds.resolve() {
                Err(e) => {
                    eprintln!("walspool top: {e}");
                    2
                }
                Ok(settings) => {
                    let opts = TopOptions {
                        roots,
                        depth: settings.depth,
                        refresh,
                        rescan,
                        thresholds: settings.thresholds,
                    };
                    match tui::run_top(opts) {
                        Ok(()) => 0,
                        Err(e) => {
                            eprintln!("walspool top: {e}");
                            1
                        }
                    }
                }
            }
        }
        Cmd::Status {
            dir,
            json,
            prometheus,
            sample,
            thresholds,
        } => match thresholds.resolve() {
            Err(e) => {
                eprintln!("walspool status: {e}");
                2
            }
            Ok(settings) if prometheus || !is_wal_dir(&dir) => {
                let output = if prometheus {
                    Output::Prometheus
                } else if json {
                    Output::Json
                } else {
                    Output::Text
                };
                fleet::status_fleet(&dir, &settings, output, sample, &mut out).unwrap_or(2)
            }
            Ok(settings) => cli::status(&dir, json, &settings.thresholds, &mut out).unwrap_or(2),
        },
        Cmd::Dump {
            dir,
            from,
            limit,
            json,
            schema,
            preview,
            dead_letters,
        } => cli::dump(
            &dir,
            &DumpOptions {
                from,
                limit,
                json,
                schema,
                preview,
                dead_letters,
            },
            &mut out,
        )
        .unwrap_or(1),
        Cmd::Restore {
            from,
            to,
            wal_id,
            endpoint,
            allow_http,
        } => cli::restore(&from, &to, wal_id, endpoint, allow_http, &mut out).unwrap_or(1),
        Cmd::Verify { dir, key_files } => cli::verify(&dir, &key_files, &mut out).unwrap_or(1),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}
