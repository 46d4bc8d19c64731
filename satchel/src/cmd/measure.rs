//! `satchel measure` and `satchel predict` (being written).

use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct MeasureArgs {}
#[derive(Debug, Args)]
pub(crate) struct PredictArgs {}

pub(crate) fn measure(_a: MeasureArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
pub(crate) fn predict(_a: PredictArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
