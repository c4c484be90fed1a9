//! `cuttle warm FILE...`: reads lockfiles and fetches every artifact they pin through a
//! running cuttle, so the next builds find them cached. Each artifact is checked against the
//! lockfile's digest; the run ends with a summary and exits 1 if anything failed (2 for
//! unusable arguments or lockfiles).
//!
//! Two ways to reach cuttle, usable together:
//! - `--proxy http://cuttle:3128`: artifact URLs are fetched through cuttle as a proxy. Plain
//!   http URLs are cached as they are; https URLs go through `CONNECT`, and are cached only
//!   for hosts cuttle intercepts (`--intercept`), whose CA warm must then trust (`--ca-cert`,
//!   e.g. the output of `cuttle ca export`).
//! - `--mirror UPSTREAM=MIRROR`: URLs under the upstream prefix are fetched from the mirror
//!   route instead, e.g. `https://registry.example.org/=http://cuttle:3128/npm/` fetches
//!   `https://registry.example.org/a/-/a-1.0.0.tgz` as `http://cuttle:3128/npm/a/-/a-1.0.0.tgz`.
//!   No CA is involved; an ecosystem whose files live on a second host needs a second pair.
//!
//! A URL no mirror covers goes through the proxy; without `--proxy` it is a failure.

pub mod fetch;
pub mod gosum;
pub mod integrity;
pub mod lockfile;
pub mod progress;
pub mod resolve;

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream;
use parking_lot::Mutex;

use crate::mirror::rewrite::UrlMap;
use fetch::{Artifact, CacheOutcome, Check, FetchOptions, Fetched, Fetcher, redact};
use lockfile::{Item, Kind};
use progress::{Mode, Progress, size};
use resolve::{Indexes, Resolver};

const AFTER_HELP: &str = "\
Lockfiles: package-lock.json / npm-shrinkwrap.json, yarn.lock (v1), pnpm-lock.yaml,
requirements*.txt (with --hash), uv.lock, poetry.lock, Cargo.lock, go.sum. The kind comes from
the file name; write KIND:PATH for other names (KIND: npm, yarn, pnpm, requirements, uv,
poetry, cargo, go).

Reaching cuttle:
  --proxy http://cuttle:3128   fetch each URL through cuttle as a proxy. http URLs are cached;
                               https ones only for hosts cuttle intercepts (--intercept), whose
                               CA warm must trust: --ca-cert ca.pem (cuttle ca export).
  --mirror UP=MIRROR           fetch URLs under UP from the mirror route MIRROR instead, e.g.
                               --mirror https://registry.example.org/=http://cuttle:3128/npm/
Index flags name upstream URLs; --mirror pairs apply to them too.

Exit status: 0 when every artifact was fetched and matched its digest, 1 when any failed,
2 when the arguments or a lockfile cannot be used.";

#[derive(clap::Args, Debug, Clone)]
#[command(after_long_help = AFTER_HELP)]
pub struct Args {
    /// Lockfiles to warm (KIND:PATH to name the kind).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<String>,
    /// The running cuttle as an HTTP proxy, e.g. http://cuttle:3128 (with user:password@ when
    /// it requires proxy authentication).
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// A mirror route: URLs under UPSTREAM are fetched from MIRROR (repeatable).
    #[arg(long = "mirror", value_name = "UPSTREAM=MIRROR")]
    pub mirrors: Vec<String>,
    /// Extra CA certificate (PEM) to trust for https, e.g. cuttle's interception CA.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// npm registry base, for pnpm-lock.yaml (which records versions, not URLs).
    #[arg(long, value_name = "URL")]
    pub npm_registry: Option<String>,
    /// Python simple index base (PEP 503/691), for requirements.txt and poetry.lock.
    /// Default: the requirements file's own --index-url.
    #[arg(long, value_name = "URL")]
    pub pypi_index: Option<String>,
    /// Sparse index (the directory holding config.json) for Cargo.lock packages from a
    /// git-index registry; sparse+ sources use their own URL.
    #[arg(long, value_name = "URL")]
    pub cargo_index: Option<String>,
    /// Go module proxy base, for go.sum.
    #[arg(long, value_name = "URL")]
    pub goproxy: Option<String>,
    /// Artifacts fetched at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Further tries after a network error or a 5xx answer.
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
    /// TCP connect timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Longest wait for data (a response head, or the next bytes of a body).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub read_timeout: Duration,
    /// Progress display on stderr.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: Mode,
    /// Time between plain progress lines.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub progress_interval: Duration,
}

fn err_line(s: &str) {
    let _ = writeln!(std::io::stderr().lock(), "cuttle warm: {s}");
}

/// Runs `cuttle warm` to completion and returns its exit code.
pub fn main(args: Args) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            err_line(&format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(args))
}

/// Reads the lockfiles and checks the flags: the items to warm, or the problems (exit 2).
fn plan(args: &Args) -> Result<Vec<Item>, Vec<String>> {
    let mut problems = Vec::new();
    let mut items = Vec::new();
    for spec in &args.files {
        let (kind, path) = match spec.split_once(':') {
            Some((k, p)) if Kind::from_name(k).is_some() => (Kind::from_name(k), PathBuf::from(p)),
            _ => (
                Kind::detect(std::path::Path::new(spec)),
                PathBuf::from(spec),
            ),
        };
        let Some(kind) = kind else {
            problems.push(format!(
                "{spec}: unknown lockfile kind (name it KIND:PATH, KIND one of {})",
                Kind::NAMES
            ));
            continue;
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        match lockfile::parse(kind, &text) {
            Ok(parsed) => {
                for n in &parsed.notes {
                    err_line(&format!("{}: {n}", path.display()));
                }
                let file_index = args.pypi_index.clone().or(parsed.index_url);
                items.extend(parsed.items.into_iter().map(|mut i| {
                    if let Item::Python { index, .. } = &mut i {
                        if index.is_none() {
                            index.clone_from(&file_index);
                        }
                    }
                    i
                }));
            }
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    if args.proxy.is_none() && args.mirrors.is_empty() {
        problems.push(
            "give --proxy URL (the running cuttle) and/or --mirror UPSTREAM=MIRROR".to_string(),
        );
    }
    problems.extend(resolve::missing(&items, &indexes(args)));
    if problems.is_empty() {
        Ok(items)
    } else {
        Err(problems)
    }
}

fn indexes(args: &Args) -> Indexes {
    Indexes {
        npm_registry: args.npm_registry.clone(),
        pypi_index: args.pypi_index.clone(),
        cargo_index: args.cargo_index.clone(),
        goproxy: args.goproxy.clone(),
    }
}

fn mirrors(specs: &[String]) -> Result<UrlMap, String> {
    let pairs = specs
        .iter()
        .map(|s| {
            s.split_once('=')
                .ok_or_else(|| format!("--mirror {s}: expected UPSTREAM=MIRROR"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    UrlMap::new(pairs).map_err(|e| format!("--mirror: {e}"))
}

enum Outcome {
    Fetched(Artifact, Fetched),
    Failed { count: u64 },
    Duplicate,
}

/// The final tally.
#[derive(Debug, Default)]
struct Summary {
    fetched: u64,
    stored: u64,
    not_stored: u64,
    cached: u64,
    unverified: u64,
    failed: u64,
}

pub async fn run(args: Args) -> ExitCode {
    let items = match plan(&args) {
        Ok(i) => i,
        Err(problems) => {
            for p in problems {
                err_line(&p);
            }
            return ExitCode::from(2);
        }
    };
    let fetcher = match mirrors(&args.mirrors).and_then(|m| {
        Fetcher::new(FetchOptions {
            proxy: args.proxy.as_deref(),
            mirrors: m,
            ca_cert: args.ca_cert.as_deref(),
            connect_timeout: args.connect_timeout,
            read_timeout: args.read_timeout,
            retries: args.retries,
        })
    }) {
        Ok(f) => Arc::new(f),
        Err(e) => {
            err_line(&e);
            return ExitCode::from(2);
        }
    };
    let resolver = Arc::new(Resolver::new(fetcher.clone(), indexes(&args)));
    let total: u64 = items.iter().map(Item::expected).sum();
    let started = Instant::now();
    let progress = Arc::new(Progress::start(
        args.progress,
        args.progress_interval,
        total,
    ));
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let jobs = usize::from(args.jobs);

    let outcomes: Vec<Outcome> = stream::iter(items)
        .map(|item| {
            let r = resolver.clone();
            async move {
                let res = r.resolve(&item).await;
                (item, res)
            }
        })
        .buffer_unordered(jobs)
        .flat_map(|(item, res)| {
            let expected = item.expected();
            let v: Vec<Result<Artifact, (Item, String)>> = match res {
                Ok(arts) => {
                    let n = arts.len() as u64;
                    if n > expected {
                        progress.add_total(n - expected);
                    } else if n < expected {
                        progress.sub_total(expected - n);
                    }
                    arts.into_iter().map(Ok).collect()
                }
                Err(e) => vec![Err((item, e))],
            };
            stream::iter(v)
        })
        .map(|next| {
            let (fetcher, progress, seen) = (fetcher.clone(), progress.clone(), seen.clone());
            async move {
                let a = match next {
                    Ok(a) => a,
                    Err((item, e)) => {
                        let n = item.expected();
                        progress.message(&format!("warm: FAILED {}: {e}", item.label()));
                        progress.done(n, true);
                        return Outcome::Failed { count: n };
                    }
                };
                if !seen.lock().insert(a.url.clone()) {
                    progress.sub_total(1);
                    return Outcome::Duplicate;
                }
                let p2 = progress.clone();
                let on_bytes = move |n: u64| p2.bytes(n);
                match fetcher.artifact(&a, &on_bytes).await {
                    Ok(f) => {
                        progress.done(1, false);
                        Outcome::Fetched(a, f)
                    }
                    Err(e) => {
                        progress.message(&format!(
                            "warm: FAILED {}: {e} ({})",
                            a.label,
                            redact(&a.url)
                        ));
                        progress.done(1, true);
                        Outcome::Failed { count: 1 }
                    }
                }
            }
        })
        .buffer_unordered(jobs)
        .collect()
        .await;

    let mut s = Summary::default();
    for o in &outcomes {
        match o {
            Outcome::Fetched(a, f) => {
                match f.cache {
                    CacheOutcome::Hit => s.cached += 1,
                    CacheOutcome::Stored => {
                        s.fetched += 1;
                        s.stored += 1;
                    }
                    CacheOutcome::NotStored => {
                        s.fetched += 1;
                        s.not_stored += 1;
                    }
                }
                if !f.verified || a.check == Check::Unverified {
                    s.unverified += 1;
                }
            }
            Outcome::Failed { count } => s.failed += count,
            Outcome::Duplicate => {}
        }
    }
    let bytes = progress
        .counters
        .bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    progress.finish();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "warm: {} artifacts: {} fetched ({} stored by cuttle), {} already cached, {} in {:.1}s; {} failed",
        s.fetched + s.cached + s.failed,
        s.fetched,
        s.stored,
        s.cached,
        size(bytes),
        started.elapsed().as_secs_f64(),
        s.failed
    );
    if s.unverified > 0 {
        let _ = writeln!(
            out,
            "warm: {} unverified (the lockfile records no digest for them)",
            s.unverified
        );
    }
    if s.not_stored > 0 {
        let _ = writeln!(
            out,
            "warm: {} fetched but not stored by cuttle (https through a plain CONNECT tunnel is \
             not cached: intercept those hosts, or use a --mirror route)",
            s.not_stored
        );
    }
    if s.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_specs() {
        let m = mirrors(&["https://registry.example.org/=http://cuttle:3128/npm/".into()]).unwrap();
        assert_eq!(
            m.map("https://registry.example.org/a").as_deref(),
            Some("http://cuttle:3128/npm/a")
        );
        assert!(mirrors(&["https://registry.example.org/".into()]).is_err());
        assert!(mirrors(&["nope=http://c/".into()]).is_err());
    }
}
