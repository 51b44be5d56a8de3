//! The `contoso` binary: settings, telemetry, then `App` until SIGTERM or SIGINT.

use std::process::ExitCode;

use contoso::{
    app::App,
    config::Settings,
    shutdown::{self, Shutdown},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("contoso: {err}");
            return ExitCode::from(2);
        }
    };
    let roles = settings.roles.to_string();
    let otlp = settings.otlp_endpoint.as_deref().map(|endpoint| telemetry::Otlp { endpoint, roles: &roles });
    let _telemetry = match telemetry::init(settings.log_format, &settings.log_level, otlp) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("contoso: {err:#}");
            return ExitCode::from(2);
        }
    };
    // Reads FAILPOINTS when built with the `failpoints` feature (tests only); a no-op otherwise.
    let _failpoints = fail::FailScenario::setup();
    let shutdown = Shutdown::new(settings.drain_file.clone());
    let res = match App::build(settings, shutdown).await {
        Ok(app) => app.run_until_stopped(shutdown::signal()).await,
        Err(err) => Err(err.context("failed to start")),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = ?err, "contoso exited with an error");
            eprintln!("contoso: {err:#}");
            ExitCode::FAILURE
        }
    }
}
