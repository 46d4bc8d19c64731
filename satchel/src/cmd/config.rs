//! `satchel config show`: the effective configuration and where each value
//! came from: the files (the main one, then `conf.d` snippets), then the
//! `SATCHEL_*` environment variables set now, which beat the files for the
//! flags that read them; a flag given to a command beats both.

use clap::{Args, CommandFactory as _, Subcommand};

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCmd {
    /// Print every configured value and the file or variable it came from.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel config show
  satchel --config /etc/satchel/satchel.toml config show --json

Files first (the main file, then DIR/conf.d/*.toml in name order; a later file wins),
then each SATCHEL_* variable set in the environment with the flags it feeds (it beats
the files). A flag on the command line beats both. Exit 2 if the configuration does
not parse or validate, naming the file.")]
pub(crate) struct ShowArgs {
    /// One JSON object: {"files": [...], "values": {KEY: {"value", "from"}}, "environment": {VAR: {"value", "flags"}}}.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: ConfigCmd, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    match cmd {
        ConfigCmd::Show(a) => show(&a, config),
    }
}

/// Every `SATCHEL_*` variable some flag reads, with those flags
/// (`gateway serve --listen`), from the CLI's own definition.
fn env_flags() -> std::collections::BTreeMap<String, Vec<String>> {
    fn walk(
        cmd: &clap::Command,
        path: &str,
        out: &mut std::collections::BTreeMap<String, Vec<String>>,
    ) {
        for a in cmd.get_arguments() {
            if let (Some(env), Some(long)) = (a.get_env(), a.get_long()) {
                out.entry(env.to_string_lossy().into_owned())
                    .or_default()
                    .push(format!("{path} --{long}").trim().to_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(&super::Cli::command(), "", &mut out);
    out
}

fn show(a: &ShowArgs, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let layers =
        crate::config::Layers::find(config).map_err(|e| super::Exit::new(2, format!("{e:#}")))?;
    layers
        .config()
        .map_err(|e| super::Exit::new(2, format!("{e:#}")))?;
    let values = layers.origins();
    let env: Vec<(String, String, Vec<String>)> = env_flags()
        .into_iter()
        .filter_map(|(var, flags)| {
            let v = std::env::var(&var).ok().filter(|v| !v.is_empty())?;
            Some((var, v, flags))
        })
        .collect();
    if a.json {
        let out = serde_json::json!({
            "files": layers.files,
            "values": values.iter().map(|(k, (v, from))| (k.clone(), serde_json::json!({"value": serde_json::from_str::<serde_json::Value>(v).unwrap_or(serde_json::Value::Null), "from": from}))).collect::<serde_json::Map<_, _>>(),
            "environment": env.iter().map(|(k, v, f)| (k.clone(), serde_json::json!({"value": v, "flags": f}))).collect::<serde_json::Map<_, _>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if layers.files.is_empty() {
        println!(
            "# no configuration file ({} does not exist): defaults, environment and flags only",
            crate::config::DEFAULT_PATH
        );
    }
    for f in &layers.files {
        println!("# read {}", f.display());
    }
    for (k, (v, from)) in &values {
        println!("{k} = {v}    # {from}");
    }
    for (var, v, flags) in &env {
        println!(
            "{var}={v}    # environment: beats the files for {}",
            flags.join(", ")
        );
    }
    Ok(())
}
