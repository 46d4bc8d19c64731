//! The command-line interface: the clap definitions and the dispatch to one
//! module per subcommand. Help text teaches by example.

mod agent;
mod attest;
mod audit;
pub(crate) mod client;
mod config;
mod eventlog;
mod gateway;
mod guest;
mod image;
mod launch;
pub(crate) mod measure;
mod policy;

use clap::{Parser, Subcommand};

/// Satchel: a trusted-boot, closed-computing appliance.
///
/// The boot chain is measured into the TPM and its event log; the gateway
/// admits a device only when a fresh quote proves that chain.
#[derive(Debug, Parser)]
#[command(name = "satchel", version, propagate_version = true)]
#[command(
    after_help = "Examples (./scripts/demo.sh runs the whole story on 127.0.0.1):
  # the organisation: an image, and the reference its devices must match
  satchel image build --data gw --image classroom-2026 --layer base-os=./rootfs --layer user-data=./skel
  satchel predict --chain chain.toml --sign-key org.key --out reference.json
  # the branch office: the gateway, and a token for a new device
  satchel gateway serve --data gw --reference reference.json --reference-key org.key.pub
  satchel gateway enroll-token --data gw --device-id laptop-17 --groups group:class-7a
  # the device: measure, enroll, attest, sync, run the agent
  satchel measure --chain chain.toml --log boot.log
  satchel client enroll --gateway https://gw:8443 --ca ca.crt --data client --device-id laptop-17 --token TOKEN
  satchel client attest --gateway https://gw:8443 --ca ca.crt --data client --log boot.log
  satchel client sync pull --gateway https://gw:8443 --ca ca.crt --data client --image classroom-2026 --into ./root
  satchel agent --config /etc/satchel/satchel.toml
  # anyone with the public key: check the audit trail
  satchel audit verify --export audit.jsonl --pubkey audit.key.pub"
)]
pub(crate) struct Cli {
    /// More log output on stderr (-v info, -vv debug); SATCHEL_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Configuration file [default: $SATCHEL_CONFIG, else /etc/satchel/satchel.toml if present]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read TCG firmware event logs: list events, replay PCRs.
    #[command(subcommand)]
    #[command(after_help = "Examples:
  satchel eventlog show /sys/kernel/security/tpm0/binary_bios_measurements
  satchel eventlog replay --json boot.log")]
    Eventlog(eventlog::EventlogCmd),
    /// Measure a boot chain into the TPM and append its events to a log.
    Measure(measure::MeasureArgs),
    /// Predict the PCR values a boot chain will produce, without a TPM.
    Predict(measure::PredictArgs),
    /// Read the TPM's PCRs in every active bank.
    Pcrs(measure::PcrsArgs),
    /// The tamper-evident audit log: append, list, export, checkpoint, prove, verify.
    #[command(subcommand)]
    #[command(after_help = "Examples:
  satchel audit list --db sqlite:/var/lib/satchel-gateway/satchel.db --kind attestation
  satchel audit prove --db sqlite:audit.db --index 17
  satchel audit verify --export audit.jsonl --pubkey audit.key.pub")]
    Audit(audit::AuditCmd),
    /// Make an ed25519 signing key (PKCS#8 PEM) and its public key (KEY.pub).
    Keygen(audit::KeygenArgs),
    /// Remote attestation: attestation keys, quotes, the verifier, EK certificates.
    #[command(subcommand)]
    #[command(after_help = "Examples:
  satchel attest ak --out ak.json
  satchel attest quote --ak ak.json --nonce NONCE --pcrs 0-9,13 --log boot.log --out evidence.json
  satchel attest verify --evidence evidence.json --nonce NONCE --reference reference.json --reference-key org.key.pub")]
    Attest(attest::AttestCmd),
    /// Seal a secret (a disk key) to the current values of some PCRs, or to a policy key.
    Seal(launch::SealArgs),
    /// Sign PCR values with the policy key: the policy a disk key sealed to it needs.
    #[command(subcommand)]
    PcrPolicy(launch::PcrPolicyCmd),
    /// Print a sealed secret, only while its PCRs still hold.
    Unseal(launch::UnsealArgs),
    /// The launch gate: check the boot chain, unseal the disk key, run the guest.
    Launch(launch::LaunchArgs),
    /// The closed-computing policy: check a request, test a table, sign a bundle.
    #[command(subcommand)]
    #[command(after_help = "Examples:
  satchel policy check --policy examples/policy/school.csv --subject device:laptop-17 --url https://en.wikipedia.org/wiki/Rust
  satchel policy test --policy examples/policy/school.csv --cases examples/policy/school-cases.csv
  satchel policy bundle --policy examples/policy/school.csv --sign-key org.key --version 1 --out policy.bundle")]
    Policy(policy::PolicyCmd),
    /// Run a program only if the signed policy bundle allows it.
    Run(policy::RunArgs),
    /// The branch-office gateway.
    #[command(subcommand)]
    #[command(after_help = "Examples:
  satchel gateway serve --config /etc/satchel/gateway.toml
  satchel gateway enroll-token --data /var/lib/satchel-gateway --device-id laptop-17 --groups group:class-7a
  satchel gateway revoke --data /var/lib/satchel-gateway --device-id laptop-17
  satchel gateway admin-cert --data /var/lib/satchel-gateway --name alice --out-dir ./alice")]
    Gateway(gateway::GatewayCmd),
    /// The device side: enroll, attest, sync images with the gateway.
    #[command(subcommand)]
    #[command(after_help = "Examples:
  satchel client enroll --gateway https://gw:8443 --ca ca.crt --data client --device-id laptop-17 --token TOKEN
  satchel client attest --gateway https://gw:8443 --ca ca.crt --data client --log boot.log
  satchel client sync pull --gateway https://gw:8443 --ca ca.crt --data client --image classroom-2026 --into ./root")]
    Client(client::ClientCmd),
    /// Layered push-OS images on the gateway: build, list, show.
    #[command(subcommand)]
    #[command(after_help = "Examples:
  satchel image build --data gw --image classroom-2026 --layer base-os=./rootfs --layer user-data=./skel
  satchel image list --data gw
  satchel image show --data gw classroom-2026")]
    Image(image::ImageCmd),
    /// The guest VM: boot the synced image in qemu, its own boot proved before it runs.
    #[command(subcommand)]
    #[command(after_help = "Examples:
  satchel guest reference --root ./root --state ./ref-guest --sign-key org.key --out guest-reference.json
  satchel launch ... -- satchel guest start --root ./root --user ./home --state ./guest \\
      --reference guest-reference.json --reference-key org.key.pub")]
    Guest(guest::GuestCmd),
    /// The client agent: exec allowlist enforcement, re-attestation, sync, audit spool.
    Agent(Box<agent::AgentArgs>),
    /// The one configuration: what is set, and where each value came from.
    #[command(subcommand)]
    Config(config::ConfigCmd),
    /// Print a shell completion script.
    #[command(after_help = "Examples:
  satchel completions bash > /usr/share/bash-completion/completions/satchel
  satchel completions zsh > /usr/share/zsh/vendor-completions/_satchel
  satchel completions fish > /usr/share/fish/vendor_completions.d/satchel.fish")]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (satchel.1 and one per subcommand) to a directory.
    #[command(after_help = "Examples:
  satchel man --out /usr/share/man/man1 && mandb -q")]
    Man {
        /// The directory to write them to (made if missing).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
}

/// An error that ends the program with a chosen exit status.
#[derive(Debug)]
pub(crate) struct Exit {
    /// The exit status.
    pub(crate) code: u8,
    message: String,
}

impl Exit {
    pub(crate) fn new(code: u8, message: String) -> Exit {
        Exit { code, message }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Run the parsed command.
pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    // Only commands that use the configuration read it, so a broken config
    // file never stops `eventlog` or `predict`.
    let config = cli.config.as_deref();
    match cli.command {
        Command::Eventlog(c) => eventlog::run(c),
        Command::Measure(a) => measure::measure(a, config),
        Command::Predict(a) => measure::predict(a),
        Command::Pcrs(a) => measure::pcrs(a, config),
        Command::Audit(c) => audit::run(c),
        Command::Keygen(a) => audit::keygen(a),
        Command::Attest(c) => attest::run(c, config),
        Command::Seal(a) => launch::seal(a, config),
        Command::PcrPolicy(launch::PcrPolicyCmd::Sign(a)) => launch::sign_policy(a, config),
        Command::Unseal(a) => launch::unseal(a, config),
        Command::Launch(a) => launch::launch(a, config),
        Command::Policy(c) => policy::run(c),
        Command::Run(a) => policy::run_program(a),
        Command::Agent(a) => agent::run(*a, config),
        Command::Gateway(c) => gateway::run(c, config),
        Command::Client(c) => client::run(c, config),
        Command::Image(c) => image::run(c),
        Command::Guest(c) => guest::run(c),
        Command::Config(c) => config::run(c, config),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "satchel", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out } => {
            persist::file::create_dir_all(&out)?;
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &out)?;
            Ok(())
        }
    }
}

/// Write `bytes` to `path` (mode 0644) durably: a crash leaves the old
/// file or the new one, never half of either (see `persist::file`).
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(persist::write_atomic(path, bytes)?)
}

/// [`write_atomic`] for secrets: mode 0600.
pub(crate) fn write_secret(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(persist::write_secret(path, bytes)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_definition_is_consistent() {
        // clap's own checks: unique names, valid groups and requirements.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
