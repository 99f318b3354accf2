//! `weft`: the command-line client of a weft node (feature `cli`).
//!
//! Submits tasks, reads their state, cancels them, lists them, and shows the node's
//! metrics, over the node's Unix socket (default) or TCP. Exit codes are in
//! [`EXIT_CODES`] and `weft --help`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

use clap::{Parser, Subcommand, ValueEnum};
use weft::service::client::{
    parse_duration, ClientError, RetryOptions, State, SubmitOptions, TaskInfo,
};
use weft::service::{default_socket_path, Client};
use weft::Priority;

/// The exit codes, as `--help` prints them.
const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the task failed (FAILURE) or was revoked (REVOKED)
  2  usage error (bad options, bad --args JSON, bad --url)
  3  node unreachable (connect failed, no socket, an unsafe socket directory, no
     answer in time)
  4  the node refused the request (4xx: unknown task, bad args, bad token, 429 after
     retries...; also 5xx and malformed answers); the reason is on stderr
  5  --wait ran out before the task finished";

const USAGE_ERROR: u8 = 2;
const UNREACHABLE: u8 = 3;
const REFUSED: u8 = 4;
const WAIT_RAN_OUT: u8 = 5;
const TASK_FAILED: u8 = 1;

/// The longest `weft submit --wait` waits unless given `--timeout`.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
#[command(
    name = "weft",
    version,
    about = "Submit, inspect and cancel tasks on a weft node",
    after_help = EXIT_CODES
)]
struct Cli {
    /// The node's Unix socket [default: $XDG_RUNTIME_DIR/weft.sock, else
    /// /tmp/weft-$UID/weft.sock]. Refused if its directory belongs to another user or
    /// others may write to it (the default directory: unless yours with mode 0700)
    #[arg(long, global = true, env = "WEFT_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Talk to the node over TCP instead of the socket: http://host:port
    #[arg(long, global = true, value_name = "URL")]
    url: Option<String>,
    /// Bearer token for a node that requires one
    #[arg(
        long,
        global = true,
        env = "WEFT_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Submit a task; prints its id, or with --wait its result's JSON
    #[command(after_help = EXIT_CODES)]
    Submit {
        /// The registered task name
        name: String,
        /// The task's arguments, as JSON
        #[arg(long, value_name = "JSON", default_value = "null", value_parser = parse_json)]
        args: serde_json::Value,
        /// Run in this lane instead of the task's registered one
        #[arg(long, value_enum)]
        priority: Option<Lane>,
        /// Start no sooner than this from now (2s, 500ms, 1m, plain seconds)
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        delay: Option<Duration>,
        /// Fail an attempt that runs longer than this
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        time_limit: Option<Duration>,
        /// Attempts in all, retries included (the node's default backoff)
        #[arg(long, value_name = "N")]
        max_attempts: Option<u32>,
        /// Wait for the task to finish; print its result's JSON alone on stdout and exit 0
        /// only if it succeeded
        #[arg(long)]
        wait: bool,
        /// How long --wait waits [default: 60s]
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "wait")]
        timeout: Option<Duration>,
    },
    /// Print a task's state as JSON (exit 1 if it failed or was revoked)
    #[command(after_help = EXIT_CODES)]
    Status {
        /// The task id
        id: String,
        /// Long-poll up to this long for the task to finish (exit 5 if it has not)
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        wait: Option<Duration>,
    },
    /// Cancel a task; prints {"id", "revoked", "state"}
    Cancel {
        /// The task id
        id: String,
    },
    /// List recent tasks, newest first
    Tasks {
        /// How many (the node's default is 100, its maximum 1000)
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Print the node's JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// List the task names the node can run
    Registry,
    /// Print the node's metrics (Prometheus text format)
    Metrics,
    /// Check that the node is up
    Health,
    /// Live view of queue depths and throughput, from the node's event stream
    Watch {
        /// Least time between frames (the node sends its figures every second)
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
        interval: Duration,
        /// Print one frame and exit
        #[arg(long)]
        once: bool,
    },
}

/// `--priority` values.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum Lane {
    High,
    Normal,
    Low,
}

impl From<Lane> for Priority {
    fn from(l: Lane) -> Priority {
        match l {
            Lane::High => Priority::High,
            Lane::Normal => Priority::Normal,
            Lane::Low => Priority::Low,
        }
    }
}

fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

/// A failed command: the exit code and what to print on stderr.
struct Failure {
    code: u8,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        let code = if e.is_invalid_input() {
            USAGE_ERROR
        } else if e.is_unreachable() || e.is_timeout() {
            UNREACHABLE
        } else {
            REFUSED
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("weft: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn client(cli: &Cli) -> Result<Client, Failure> {
    let client = match (&cli.url, &cli.socket) {
        (Some(url), _) => Client::tcp(url)?,
        (None, Some(path)) => Client::unix(path),
        (None, None) => Client::unix(default_socket_path()),
    };
    Ok(match cli.token.as_deref() {
        Some(t) if !t.is_empty() => client.with_token(t),
        _ => client,
    })
}

fn run(cli: Cli) -> Result<(), Failure> {
    let client = client(&cli)?;
    match cli.command {
        Command::Submit {
            name,
            args,
            priority,
            delay,
            time_limit,
            max_attempts,
            wait,
            timeout,
        } => {
            let mut opts = SubmitOptions::new();
            if let Some(p) = priority {
                opts = opts.priority(p.into());
            }
            if let Some(d) = delay {
                opts = opts.delay(d);
            }
            if let Some(d) = time_limit {
                opts = opts.time_limit(d);
            }
            if let Some(n) = max_attempts {
                opts = opts.retry(RetryOptions::new().max_attempts(n));
            }
            let task = client.submit(&name, args, opts)?;
            if !wait {
                println!("{}", task.id);
                return Ok(());
            }
            let info = client
                .wait(&task.id, timeout.unwrap_or(DEFAULT_WAIT))
                .map_err(wait_failure)?;
            finished(&info)?;
            let result = info.result.unwrap_or(serde_json::Value::Null);
            println!("{result}");
            Ok(())
        }
        Command::Status { id, wait } => {
            let info = client.status(&id, wait)?;
            print_json(&info);
            match info.state {
                State::Failure | State::Revoked => Err(Failure {
                    code: TASK_FAILED,
                    message: describe_end(&info),
                }),
                s if wait.is_some() && !s.is_finished() => Err(Failure {
                    code: WAIT_RAN_OUT,
                    message: format!("task {id} still {s} after --wait"),
                }),
                _ => Ok(()),
            }
        }
        Command::Cancel { id } => {
            print_json(&client.cancel(&id)?);
            Ok(())
        }
        Command::Tasks { limit, json } => {
            let tasks = client.tasks(limit)?;
            if json {
                print_json(&serde_json::json!({ "tasks": tasks }));
            } else {
                for t in &tasks {
                    println!("{}\t{}\t{}\t{}", t.id, t.name, t.state, t.attempts);
                }
            }
            Ok(())
        }
        Command::Registry => {
            for t in client.registry()? {
                println!("{}\t{:?}", t.name, t.priority);
            }
            Ok(())
        }
        Command::Metrics => {
            print!("{}", client.metrics()?);
            Ok(())
        }
        Command::Health => {
            client.health()?;
            println!("ok");
            Ok(())
        }
        Command::Watch { interval, once } => watch(&client, interval, once),
    }
}

/// A [`Client::wait`] error: a timeout there means `--wait` ran out.
fn wait_failure(e: ClientError) -> Failure {
    if e.is_timeout() {
        Failure {
            code: WAIT_RAN_OUT,
            message: e.to_string(),
        }
    } else {
        e.into()
    }
}

/// Exit 1 for a task that finished without a value.
fn finished(info: &TaskInfo) -> Result<(), Failure> {
    match info.state {
        State::Success => Ok(()),
        _ => Err(Failure {
            code: TASK_FAILED,
            message: describe_end(info),
        }),
    }
}

fn describe_end(info: &TaskInfo) -> String {
    format!(
        "task {} ({}) {}: {}",
        info.id,
        info.name,
        info.state,
        info.error.as_deref().unwrap_or("no reason given")
    )
}

fn print_json<T: serde::Serialize>(value: &T) {
    let text = serde_json::to_string_pretty(value).expect("serializable");
    println!("{text}");
}

// ---- weft watch ----------------------------------------------------------------------

/// The lanes, in the order shown.
const LANES: [&str; 3] = [
    Priority::High.as_str(),
    Priority::Normal.as_str(),
    Priority::Low.as_str(),
];

/// What one frame shows, from a `stats` event of the node's event stream.
struct Frame {
    queued: [f64; 3],
    workers: f64,
    busy: f64,
    in_flight: f64,
    /// Tasks finished (`SUCCESS`, `FAILURE` or `REVOKED`) since the node started.
    completed: f64,
    failed: f64,
    submitted: f64,
    rejected: f64,
    /// Completed and submitted per second since the previous frame.
    rates: Option<(f64, f64)>,
}

impl Frame {
    /// The frame of a `stats` event, with rates against the one before, if any.
    fn new(now: &Value, before: Option<&Value>) -> Frame {
        let n = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
        let completed = |v: &Value| n(v, "succeeded") + n(v, "failed") + n(v, "revoked");
        let rates = before.map(|prev| {
            let secs = ((n(now, "at_ms") - n(prev, "at_ms")) / 1000.0).max(1e-3);
            (
                ((completed(now) - completed(prev)) / secs).max(0.0),
                ((n(now, "submitted") - n(prev, "submitted")) / secs).max(0.0),
            )
        });
        Frame {
            queued: LANES.map(|l| now["queued"][l].as_f64().unwrap_or(0.0)),
            workers: n(now, "workers"),
            busy: n(now, "busy"),
            in_flight: n(now, "in_flight"),
            completed: completed(now),
            failed: n(now, "failed"),
            submitted: n(now, "submitted"),
            rejected: n(now, "rejected"),
            rates,
        }
    }

    /// The plain one-line form, for pipes and `--once`.
    fn line(&self) -> String {
        let rate = |r: Option<f64>| match r {
            Some(r) => format!(" ({r:.1}/s)"),
            None => String::new(),
        };
        format!(
            "queued high={} normal={} low={} | workers {} ({} busy) | in flight {} | submitted {}{} | completed {}{} | failed {} | rejected {}",
            self.queued[0],
            self.queued[1],
            self.queued[2],
            self.workers,
            self.busy,
            self.in_flight,
            self.submitted,
            rate(self.rates.map(|r| r.1)),
            self.completed,
            rate(self.rates.map(|r| r.0)),
            self.failed,
            self.rejected,
        )
    }
}

/// Follows the node's event stream (`GET /v1/events`): a frame per `stats` event, at most
/// one per `interval`; the stream's end (the node stopped) ends the watch.
fn watch(client: &Client, interval: Duration, once: bool) -> Result<(), Failure> {
    let tty = std::io::stdout().is_terminal() && !once;
    let bars = tty.then(Bars::new);
    let mut prev: Option<(Value, Instant)> = None;
    for event in client.events()? {
        let event = event?;
        if event.kind != "stats" {
            continue;
        }
        let now = Instant::now();
        if prev
            .as_ref()
            .is_some_and(|(_, at)| now.duration_since(*at) + Duration::from_millis(50) < interval)
        {
            continue;
        }
        let frame = Frame::new(&event.data, prev.as_ref().map(|(s, _)| s));
        match &bars {
            Some(bars) => bars.draw(&frame),
            None => {
                let mut out = std::io::stdout().lock();
                // A closed pipe ends the watch quietly.
                if writeln!(out, "{}", frame.line()).is_err() || out.flush().is_err() {
                    return Ok(());
                }
            }
        }
        if once {
            return Ok(());
        }
        prev = Some((event.data, now));
    }
    Ok(())
}

/// The terminal view: a bar per lane (scaled to the deepest queue seen) and a status line.
struct Bars {
    lanes: Vec<indicatif::ProgressBar>,
    status: indicatif::ProgressBar,
    _multi: indicatif::MultiProgress,
}

impl Bars {
    fn new() -> Bars {
        let multi = indicatif::MultiProgress::new();
        let style = indicatif::ProgressStyle::with_template("{prefix:>7} [{bar:40}] {pos}")
            .expect("valid template")
            .progress_chars("=> ");
        let lanes = LANES
            .iter()
            .map(|lane| {
                let bar = multi.add(indicatif::ProgressBar::new(1));
                bar.set_style(style.clone());
                bar.set_prefix(*lane);
                bar
            })
            .collect();
        let status = multi.add(indicatif::ProgressBar::new_spinner());
        status.set_style(indicatif::ProgressStyle::with_template("{msg}").expect("valid template"));
        Bars {
            lanes,
            status,
            _multi: multi,
        }
    }

    fn draw(&self, frame: &Frame) {
        for (bar, depth) in self.lanes.iter().zip(frame.queued) {
            let depth = depth.max(0.0) as u64;
            let len = bar.length().unwrap_or(1).max(depth).max(1);
            bar.set_length(len);
            bar.set_position(depth);
        }
        let rates = match frame.rates {
            Some((done, sub)) => format!("{sub:.1} submitted/s, {done:.1} completed/s"),
            None => "measuring...".to_owned(),
        };
        self.status.set_message(format!(
            "workers {} | in flight {} | {rates} | completed {} | failed {} | rejected {}",
            frame.workers, frame.in_flight, frame.completed, frame.failed, frame.rejected
        ));
    }
}

#[cfg(test)]
#[path = "weft/tests.rs"]
mod tests;
