//! placeholder
use anyhow::Result;
pub fn test() -> Result<()> {
    Ok(())
}
