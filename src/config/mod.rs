//! Configuration: the options ([`options`]: written once, with their flags, variables and
//! defaults) are merged with precedence flags > environment > TOML file > defaults, then
//! checked once, section by section, into a [`ValidConfig`] whose values are ready to use:
//! each domain module's own settings type (access rules, upstream, cache), parsed networks,
//! the parent's precomputed `Proxy-Authorization`, loaded users and CA. Every problem is
//! reported, one line each, naming the field. Reloading is in [`reload`]; the `CACHE_PEER`
//! grammar in [`peer`].

pub mod options;
pub mod peer;
pub mod reload;
pub mod settings;
pub mod sizing;
mod validate;

pub use options::{Options, Secret, defaults};
pub use settings::{InterceptSettings, Timeouts, ValidConfig};
pub use validate::parse_size;

impl Options {
    /// Checks every field and precomputes what the proxy needs. All problems are returned,
    /// one line each, naming the field.
    pub fn validate(self) -> Result<ValidConfig, Vec<String>> {
        validate::validate(self.with_defaults())
    }
}

/// Merges options (flags and environment, as parsed) with the TOML file, if any, and
/// validates: how the configuration is loaded at start and at every reload.
pub fn load(opts: &Options, file: Option<&std::path::Path>) -> Result<ValidConfig, Vec<String>> {
    let from_file = match file {
        Some(p) => Options::from_file(p)?,
        None => Options::default(),
    };
    opts.clone().or(from_file).validate()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, Command, FromArgMatches};
    use std::net::SocketAddr;
    use std::time::Duration;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Some(256 << 20));
        assert_eq!(parse_size("10G"), Some(10 << 30));
        assert_eq!(parse_size("5MB"), Some(5_000_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn cache_rules_from_toml() {
        let o: Options = toml::from_str(
            "[[cache-rule]]\npattern = '\\.iso$'\nmin = \"1d\"\nignore-client-no-cache = true\n",
        )
        .unwrap();
        let c = o.validate().unwrap();
        let rules = &c.cache.unwrap().rules;
        assert!(
            rules
                .classify("http://h/a.iso")
                .unwrap()
                .ignore_client_no_cache
        );
        let bad: Options = toml::from_str("[[cache-rule]]\npattern = '('\n").unwrap();
        assert!(bad.validate().unwrap_err()[0].contains("cache-rule 1"));
    }

    #[test]
    fn defaults_validate() {
        let c = Options::default().validate().unwrap();
        assert_eq!(
            c.listen,
            vec!["0.0.0.0:3128".parse::<SocketAddr>().unwrap()]
        );
        assert!(c.upstream.peers.is_empty());
        assert_eq!(c.timeouts.shutdown_grace, Duration::from_secs(25));
        assert_eq!(c.access.allow_client.len(), 7);
    }

    #[test]
    fn precedence_higher_wins() {
        let flags = Options {
            connect_timeout: Some("1s".into()),
            ..Default::default()
        };
        let file = Options {
            connect_timeout: Some("9s".into()),
            read_timeout: Some("7s".into()),
            ..Default::default()
        };
        let c = flags.or(file).validate().unwrap();
        assert_eq!(c.upstream.timeouts.connect, Duration::from_secs(1));
        assert_eq!(c.timeouts.read, Duration::from_secs(7));
    }

    #[test]
    fn every_problem_is_reported_by_field() {
        let o = Options {
            listen: Some(vec!["nope".into()]),
            connect_timeout: Some("soon".into()),
            cache_peer: Some("u:hunter2:h:0".parse().unwrap()),
            max_header_size: Some(10),
            log_format: Some("xml".into()),
            allow_client: Some(vec!["10.0.0.0/33".into()]),
            ..Default::default()
        };
        let errs = o.validate().unwrap_err();
        let all = errs.join("\n");
        for field in [
            "listen",
            "connect-timeout",
            "CACHE_PEER",
            "max-header-size",
            "log-format",
            "allow-client",
        ] {
            assert!(all.contains(field), "{field} missing in {all}");
        }
        assert!(!all.contains("hunter2"));
    }

    #[test]
    fn toml_file_uses_flag_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "listen = [\"127.0.0.1:8080\"]\nconnect-timeout = \"3s\"\nmax-connections = 5\n",
        )
        .unwrap();
        let o = Options::from_file(&p).unwrap();
        let c = o.validate().unwrap();
        assert_eq!(c.max_connections, 5);
        std::fs::write(&p, "bogus = 1\n").unwrap();
        let e = Options::from_file(&p).unwrap_err();
        assert!(e[0].contains("bogus"), "{e:?}");
    }

    #[test]
    fn display_masks_secrets() {
        let o = Options {
            cache_peer: Some("bob:hunter2:proxy:3128".parse().unwrap()),
            ..Default::default()
        };
        let shown = o.validate().unwrap().to_string();
        assert!(shown.contains("proxy:3128"));
        assert!(!shown.contains("hunter2"));
    }

    /// Whether an option holds a secret value, by its name: the test below finds new secret
    /// options by themselves, without a list of fields to keep up to date.
    fn sounds_secret(name: &str) -> bool {
        !name.ends_with("-file")
            && ["token", "password", "secret", "cache-peer", "credential"]
                .iter()
                .any(|w| name.contains(w))
    }

    /// Every option is given a distinct marker value (whatever the option; the printing of
    /// the options does not validate them); no secret option's marker appears in what
    /// `check-config` prints, nor in `Debug`.
    #[test]
    fn every_secret_option_is_masked_in_every_rendering() {
        let cmd = Options::augment_args(Command::new("cuttle").no_binary_name(true));
        let mut argv = Vec::new();
        let mut secrets = Vec::new();
        for (i, arg) in cmd.get_arguments().enumerate() {
            let Some(long) = arg.get_long() else { continue };
            // Values that parse for every type an option has (bool, numbers, strings).
            let value = match arg.get_value_parser().type_id() {
                t if t == clap::builder::ValueParser::bool().type_id() => continue,
                _ => format!("{}", 900_001 + i),
            };
            if sounds_secret(long) || arg.is_hide_env_values_set() {
                secrets.push((long.to_string(), value.clone()));
            }
            argv.push(format!("--{long}={value}"));
        }
        assert!(
            secrets.iter().any(|(n, _)| n == "cache-peer") && secrets.len() >= 2,
            "{secrets:?}"
        );
        let matches = cmd.try_get_matches_from(&argv).unwrap();
        let opts = Options::from_arg_matches(&matches).unwrap();
        let shown = format!("{}\n{:?}", opts.to_toml(), opts);
        for (name, marker) in &secrets {
            assert!(!shown.contains(marker.as_str()), "{name} shown: {shown}");
        }
        // The markers of other options are shown: the check sees what is printed.
        assert!(
            shown.contains("900001") || shown.contains("900002"),
            "{shown}"
        );
    }
}
